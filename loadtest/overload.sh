#!/usr/bin/env bash
# overload.sh — the overload benchmark: `flashsale serve` with a small
# FLASHSALE_MAX_IN_FLIGHT under far more concurrent purchases than that.
#
# Shows that overload is shed, not queued: the requests past the limit get a
# fast 503 `unavailable` (+ Retry-After), and the server's memory stays flat
# however many clients pile on. For each concurrency level it starts a fresh
# server (so the peak RSS, VmHWM from /proc, is that level's), runs oha for a
# fixed time with one shopper token posting purchases (a retry storm from a
# bot: every request needs the Function and a WAIT, so slots are busy), and
# reports per status the count and latency p50/p99/max (oha's per-request
# SQLite log), the server's RSS before and at peak, and the sale's audit
# (the orders must equal the 202s, and the audit must be consistent).
#
# Usage:
#   loadtest/overload.sh [--levels "250 1000 2000"] [--duration 10s]
#                        [--max-in-flight 16] [--out DIR]
#
# Needs: redis-server/redis-sentinel (scripts/redis-group.sh installs them),
# oha (`cargo install oha --locked` when missing), sqlite3, curl. Starts a
# Redis Sentinel group on free ports under DIR and stops exactly the PIDs it
# started. Timings are reported, never asserted. Results: DIR/summary.md.
set -euo pipefail

LEVELS="250 1000 2000"
DURATION=10s
MAX_IN_FLIGHT=16
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/target/overload"

while [ $# -gt 0 ]; do
  case "$1" in
    --levels) LEVELS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --max-in-flight) MAX_IN_FLIGHT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "overload.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { printf 'overload.sh: %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  case "$1" in
    oha) log "installing oha (cargo install oha --locked)"; cargo install oha --locked >&2 ;;
    sqlite3|curl) log "installing $1"; apt-get install -y "$1" >/dev/null ;;
  esac
  command -v "$1" >/dev/null 2>&1 || { log "missing $1"; exit 1; }
}
need curl
need sqlite3
need oha

cd "$ROOT"
cargo build --release --bins >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/flashsale"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"

GROUP_DIR="$OUT/redis"
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  bash "$ROOT/scripts/redis-group.sh" stop --dir "$GROUP_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

start_group "$GROUP_DIR" 30000

export FLASHSALE_JWT_SECRET
FLASHSALE_JWT_SECRET=$(head -c 32 /dev/urandom | base64)
ADMIN=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
export FLASHSALE_RATE_LIMIT_PER_SHOPPER=0 FLASHSALE_RATE_LIMIT_PER_IP=0
export FLASHSALE_MAX_IN_FLIGHT=$MAX_IN_FLIGHT RUST_LOG=warn
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

SUMMARY="$OUT/summary.md"
{
  echo "# overload: FLASHSALE_MAX_IN_FLIGHT=$MAX_IN_FLIGHT, $DURATION per level"
  echo
  echo "$(date -u +%FT%TZ), $(nproc) cores, $(uname -r); oha $(oha --version | awk '{print $2}')"
  echo "one shopper token posting {\"qty\":1} to one live sale; replica acks: all (2 replicas)"
  echo
  echo "| clients | status | count | p50 ms | p99 ms | max ms | server RSS before → peak (MiB) | orders = 202s, consistent |"
  echo "|---:|---:|---:|---:|---:|---:|---|---|"
} >"$SUMMARY"

for level in $LEVELS; do
  port=$(free_port)
  sku="ovl$level$RANDOM"
  FLASHSALE_LISTEN="127.0.0.1:$port" FLASHSALE_ADMIN_TOKEN=$ADMIN \
    FLASHSALE_KEY_PREFIX="ovl$RANDOM" "$BIN" serve >"$OUT/serve-$level.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  now=$(date -u +%s)
  starts=$(date -u -d "@$((now - 5))" +%FT%TZ)
  ends=$(date -u -d "@$((now + 3600))" +%FT%TZ)
  curl -fsS -o /dev/null -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
    -d "{\"sku\":\"$sku\",\"name\":\"Overload\",\"price_cents\":100,\"stock\":100000000,\"starts_at\":\"$starts\",\"ends_at\":\"$ends\",\"per_user_limit\":1000000}" \
    "http://127.0.0.1:$port/admin/sales"
  token=$("$BIN" token --user "bot$level")
  before=$(rss_kb "$SERVER_PID" VmRSS)
  db="$OUT/oha-$level.db"
  rm -f "$db"
  log "level $level: oha -c $level -z $DURATION against max_in_flight $MAX_IN_FLIGHT"
  oha --no-tui -w -c "$level" -z "$DURATION" -m POST \
    -H "authorization: Bearer $token" -H 'content-type: application/json' -d '{"qty":1}' \
    --output-format json --db-url "$db" \
    "http://127.0.0.1:$port/api/sales/$sku/purchase" >"$OUT/oha-$level.json"
  peak=$(rss_kb "$SERVER_PID" VmHWM)
  audit=$(curl -fsS -H "authorization: Bearer $ADMIN" "http://127.0.0.1:$port/admin/sales/$sku/audit")
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  orders=$(printf '%s' "$audit" | python3 -c 'import json,sys; print(json.load(sys.stdin)["orders"])')
  consistent=$(printf '%s' "$audit" | python3 -c 'import json,sys; print(json.load(sys.stdin)["consistent"])')
  accepted=$(sqlite3 "$db" "select count(*) from oha where status = 202")
  mem="$(awk -v a="$before" -v b="$peak" 'BEGIN { printf "%.1f → %.1f", a/1024, b/1024 }')"
  check="$orders = $accepted, $consistent"
  for status in $(sqlite3 "$db" "select distinct status from oha order by status"); do
    n=$(sqlite3 "$db" "select count(*) from oha where status = $status")
    # Nearest-rank percentile (oha stores seconds).
    pct() {
      sqlite3 "$db" "select printf('%.2f', duration * 1000) from oha where status = $status
                     order by duration limit 1 offset $(( (n * $1 + 99) / 100 - 1 ))"
    }
    echo "| $level | $status | $n | $(pct 50) | $(pct 99) | $(pct 100) | $mem | $check |" >>"$SUMMARY"
  done
done

echo >>"$SUMMARY"
echo "raw: $OUT/oha-<level>.json, $OUT/oha-<level>.db (table oha), $OUT/serve-<level>.log" >>"$SUMMARY"
cat "$SUMMARY"
