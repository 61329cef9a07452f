#!/usr/bin/env bash
# failover.sh — the failover matrix: every Sentinel scenario (`all`, the
# default) or the ones named (`cluster-all`: the five Redis Cluster
# scenarios, cluster-kill-primary, cluster-stop-primary, cluster-planned,
# cluster-reshard, cluster-kill-replica; `harder-all`: the eight harder
# faults, partition-master-minority, partition-app-from-sentinels,
# partition-replica, lagging-promotion, sentinels-restarted,
# fork-during-sale, master-full, restart-master-fast — the partitions need root, iproute2 and
# nftables, installed here), N runs each (default 20), release
# build, on the Redis and Sentinel (or Redis Cluster) settings deploy/ ships
# (the harness names any timing override in every line and the hold of each
# mode in its header). One summary line per run, then the matrix per
# scenario: runs, failed runs, invariant violations, unconfirmed promises,
# 503 answers, the longest time from `+switch-master` (in a cluster: the
# sale's slot's new primary) to the next 202, the most Redis link installs
# of one process per switch, and the order ledger's audit (promised orders
# missing there / doubled / differing from Redis). Each run has its own
# ledger, the test kit's PostgreSQL, unless `-- --no-ledger` (then the
# ledger's own scenarios, ledger-outage and worker-killed-after-commit, are
# left out). Exits non-zero if any run broke a bound (see `failover
# --help`). Every run's logs and the summary are kept under
# loadtest/results/failover-<timestamp>/.
#
#   loadtest/failover.sh [--runs N] [--scenario NAME ...] [-- HARNESS ARGS ...]
#   loadtest/failover.sh --runs 2 --scenario cluster-all
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20
scenarios=()
extra=()
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --scenario) scenarios+=(--scenario "$2"); shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: loadtest/failover.sh [--runs N] [--scenario NAME ...] [-- HARNESS ARGS ...]" >&2; exit 2 ;;
  esac
done
((${#scenarios[@]})) || scenarios=(--scenario all)
# PostgreSQL's server binaries for the ledger (off PATH, found by the kit).
scripts/setup.sh postgresql netns
cargo build --release --locked --workspace --bins
out=loadtest/results/failover-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
status=0
"${CARGO_TARGET_DIR:-target}/release/failover" "${scenarios[@]}" --runs "$runs" --logs "$out/logs" \
  "${extra[@]}" | tee "$out/summary.txt" || status=$?
echo "failover.sh: summary in $out/summary.txt"
exit "$status"
