#!/usr/bin/env bash
# test.sh — the whole test suite, as CI runs it: installs what is missing,
# checks formatting and lints, runs the unit and integration tests (real
# Redis Sentinel groups on loopback), and the deployment checks.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
for tool in redis-server redis-sentinel redis-cli nginx; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing" >&2; exit 1; }
done

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked --bins
if [ -x deploy/check.sh ]; then
  deploy/check.sh
fi
# The failover harness, short form: a killed master and a planned switch
# under load, audited for the four invariants (full matrix: loadtest/failover.sh).
./target/debug/failover --scenario kill-master --scenario planned --runs 1 \
  --stock 600 --shoppers 1500 --arrival-rate 500
cargo test --locked -- --test-threads 2
