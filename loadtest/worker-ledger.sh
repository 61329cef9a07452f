#!/usr/bin/env bash
# worker-ledger.sh — orders per second through flashsale-worker without and
# with the order ledger (FLASHSALE_LEDGER_URL: the test kit's throw-away
# PostgreSQL), per batch size: worker_bench --ledger both, every measurement
# interleaved (without, then with), on a Sentinel group of its own (the
# shipped settings, automatic AOF rewrites off for the run as in lt.py: a
# rewrite forks and copies the data set on the same two cores). Each run's
# JSON and log go to loadtest/results/worker-ledger-<timestamp>/; the
# Markdown tables are at the end of each log.
#
#   loadtest/worker-ledger.sh [--runs N] [--workers 1,2] [--batch 64,128,512] [--orders 50000]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { printf 'worker-ledger.sh: %s\n' "$*" >&2; }
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh
runs=3 workers=1,2 batch=64,128,512 orders=50000
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --orders) orders=$2; shift 2 ;;
    *) echo "usage: loadtest/worker-ledger.sh [--runs N] [--workers LIST] [--batch LIST] [--orders N]" >&2; exit 2 ;;
  esac
done
scripts/setup.sh postgresql
cargo build --release --locked --workspace --bins
bin=${CARGO_TARGET_DIR:-target}/release
out=loadtest/results/worker-ledger-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'bash scripts/redis-group.sh stop --dir "$tmp/group" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
start_group "$tmp/group" 27000
# Data nodes are on the Sentinels' base port - 10 .. - 8.
first_sentinel=${FLASHSALE_REDIS_SENTINELS%%,*}
base=$(( ${first_sentinel##*:} - 10 ))
for p in "$base" $((base + 1)) $((base + 2)); do
  redis-cli -p "$p" -a "$FLASHSALE_REDIS_PASSWORD" --no-auth-warning \
    CONFIG SET auto-aof-rewrite-percentage 0 >/dev/null
done
status=0
for r in $(seq 1 "$runs"); do
  log "run $r of $runs"
  "$bin/worker_bench" --worker-bin "$bin/flashsale-worker" --workers "$workers" \
    --batch "$batch" --orders "$orders" --ledger both --prefix wb \
    --out "$out/r$r.json" >/dev/null 2> >(tee "$out/r$r.log" >&2) || status=$?
  for p in "$base" $((base + 1)) $((base + 2)); do
    redis-cli -p "$p" -a "$FLASHSALE_REDIS_PASSWORD" --no-auth-warning BGREWRITEAOF >/dev/null || true
  done
  sleep 5
done
log "results in $out"
exit "$status"
