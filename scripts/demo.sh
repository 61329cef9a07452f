#!/usr/bin/env bash
# demo.sh — a local flash sale: a Redis Sentinel group (1 master, 2 replicas,
# 3 Sentinels), `flashsale serve` with the development login, one worker, and
# a demo sale that opens 30 s after start. Ctrl-C stops everything it started
# (by PID). Run as root on a fresh Debian machine: it installs what is missing.
#
#   scripts/demo.sh [--port 8080] [--dir ./run/demo]
set -euo pipefail
cd "$(dirname "$0")/.."

port=8080 dir=./run/demo
while (($#)); do
  case $1 in
    --port) port=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "usage: scripts/demo.sh [--port N] [--dir DIR]" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release"

mkdir -p "$dir"
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/redis-group.sh stop --dir "$dir/redis" || true
}
trap cleanup EXIT INT TERM

scripts/redis-group.sh start --dir "$dir/redis"
# shellcheck disable=SC1091
. "$dir/redis/env"
export FLASHSALE_JWT_SECRET FLASHSALE_ADMIN_TOKEN
FLASHSALE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
FLASHSALE_ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLASHSALE_LISTEN=127.0.0.1:$port FLASHSALE_COOKIE_SECURE=false FLASHSALE_DEV_LOGIN=true

"$bin/flashsale-worker" >"$dir/worker.log" 2>&1 & pids+=($!)
"$bin/flashsale" serve >"$dir/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { tail -n 20 "$dir/serve.log"; exit 1; }

starts=$(date -u -d '+30 seconds' +%FT%TZ)
ends=$(date -u -d '+1 hour' +%FT%TZ)
curl -fsS -X POST "http://127.0.0.1:$port/admin/sales" \
  -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d "{\"sku\":\"demo-tv\",\"name\":\"55-inch TV\",\"description\":\"Ten units at half price.\",\"price_cents\":29900,\"stock\":10,\"starts_at\":\"$starts\",\"ends_at\":\"$ends\",\"per_user_limit\":1}" \
  >/dev/null || echo "demo sale exists already (kept from an earlier run)"

umask 077
cat >"$dir/demo.env" <<ENV
export FLASHSALE_JWT_SECRET=$FLASHSALE_JWT_SECRET
export FLASHSALE_ADMIN_TOKEN=$FLASHSALE_ADMIN_TOKEN
ENV
cat <<MSG

flashsale demo is running (logs in $dir; its secrets in $dir/demo.env, mode 0600):
  shop           http://127.0.0.1:$port/
  sign in        http://127.0.0.1:$port/dev/login   (development login, any name)
  product page   http://127.0.0.1:$port/p/demo-tv   (opens at $starts)
  buy from a shell:
    . $dir/demo.env
    T=\$($bin/flashsale token --user alice)
    curl -X POST -H "Authorization: Bearer \$T" -d '{"qty":1}' http://127.0.0.1:$port/api/sales/demo-tv/purchase
  audit          curl -H "Authorization: Bearer \$FLASHSALE_ADMIN_TOKEN" http://127.0.0.1:$port/admin/sales/demo-tv/audit
  a failover     redis-cli -p 26410 SENTINEL FAILOVER mymaster   (Sentinels have no password here)
Press Ctrl-C to stop.
MSG
wait
