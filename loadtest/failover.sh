#!/usr/bin/env bash
# failover.sh — the failover matrix of issue 4: every scenario, N runs each
# (default 20), release build, one summary line per run; exits non-zero on
# any invariant violation. Logs of failed runs are kept under
# loadtest/results/failover-<timestamp>/.
#
#   loadtest/failover.sh [--runs N] [--scenario NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20
scenarios=()
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --scenario) scenarios+=(--scenario "$2"); shift 2 ;;
    *) echo "usage: loadtest/failover.sh [--runs N] [--scenario NAME ...]" >&2; exit 2 ;;
  esac
done
((${#scenarios[@]})) || scenarios=(--scenario all)
scripts/setup.sh
cargo build --release --locked --workspace --bins
out=loadtest/results/failover-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
"${CARGO_TARGET_DIR:-target}/release/failover" "${scenarios[@]}" --runs "$runs" --logs "$out/logs" | tee "$out/summary.txt"
