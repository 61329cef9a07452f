#!/usr/bin/env bash
# pages.sh — the page benchmark: requests per second for one product
# page (/p/<sku>) served
#   (a) from disk by nginx (the file `flashsale render` wrote),
#   (b) by `flashsale serve` directly,
#   (c) through nginx to the app (same nginx config, no rendered file, so
#       `try_files` falls back to the upstream),
# measured with oha one after the other in one run, on the same machine, and
# printed as ratios to (b).
#
# Usage:
#   loadtest/pages.sh [--duration 10s] [--connections 64] [--warmup 2s]
#                     [--instances 1] [--out DIR]
#
# --instances N runs N `flashsale serve` processes behind nginx for (c);
# (b) always measures the first one alone.
#
# Release build. nginx uses deploy/nginx/flashsale.conf.tmpl rendered by
# deploy/nginx/render.sh (worker_processes auto), each nginx in its own temp
# prefix. Needs nginx, redis (scripts/redis-group.sh installs it), curl,
# python3, and oha (`cargo install oha --locked` when missing). Stops exactly
# the PIDs it started. Bounded: about 3 × (warmup + duration) + ~30 s setup.
# Results: DIR/summary.md and DIR/oha-{a,b,c}.json (default
# target/pages-bench). Figures are reported, never asserted.
set -euo pipefail

DURATION=10s
CONNECTIONS=64
WARMUP=2s
INSTANCES=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/target/pages-bench"

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --instances) INSTANCES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pages.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case $INSTANCES in ''|*[!0-9]*|0) echo "pages.sh: --instances must be a positive number" >&2; exit 2 ;; esac

log() { printf 'pages.sh: %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  case "$1" in
    oha) log "installing oha (cargo install oha --locked)"; cargo install oha --locked >&2 ;;
    nginx|curl) log "installing $1"
      # Debian's postinst would start nginx on port 80: not wanted here.
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null
      rm -f /usr/sbin/policy-rc.d ;;
  esac
  command -v "$1" >/dev/null 2>&1 || { log "missing $1"; exit 1; }
}
PATH=$PATH:/usr/sbin:/sbin
need curl
need nginx
need oha
command -v python3 >/dev/null || { log "missing python3"; exit 1; }

cd "$ROOT"
log "cargo build --release --bins"
cargo build --release --bins >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/flashsale"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"

GROUP_DIR="$OUT/redis"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  bash "$ROOT/scripts/redis-group.sh" stop --dir "$GROUP_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

rm -rf "$GROUP_DIR"
start_group "$GROUP_DIR" 32000

export FLASHSALE_JWT_SECRET FLASHSALE_KEY_PREFIX
FLASHSALE_JWT_SECRET=$(head -c 32 /dev/urandom | base64)
FLASHSALE_KEY_PREFIX="pages$RANDOM"
ADMIN=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
export FLASHSALE_STATIC_DIR="$ROOT/static" RUST_LOG=warn
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

UPSTREAMS=()
for i in $(seq 1 "$INSTANCES"); do
  port=$(free_port)
  FLASHSALE_LISTEN="127.0.0.1:$port" FLASHSALE_ADMIN_TOKEN=$ADMIN \
    "$BIN" serve >"$OUT/serve-$i.log" 2>&1 &
  PIDS+=($!)
  UPSTREAMS+=("127.0.0.1:$port")
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { log "instance $i not ready"; cat "$OUT/serve-$i.log" >&2; exit 1; }
done
APP="http://${UPSTREAMS[0]}"

sku="bench$RANDOM"
now=$(date -u +%s)
starts=$(date -u -d "@$((now + 3600))" +%FT%TZ)
ends=$(date -u -d "@$((now + 7200))" +%FT%TZ)
curl -fsS -o /dev/null -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d "{\"sku\":\"$sku\",\"name\":\"Benchmark kettle\",\"description\":\"A product page as every shopper gets it.\",\"price_cents\":4999,\"stock\":100,\"starts_at\":\"$starts\",\"ends_at\":\"$ends\",\"per_user_limit\":1}" \
  "$APP/admin/sales"

PAGES="$OUT/pages"
EMPTY="$OUT/pages-empty"
rm -rf "$PAGES" "$EMPTY"
mkdir -p "$EMPTY"
"$BIN" render --out "$PAGES" >&2
[ -f "$PAGES/p/$sku.html" ] || { log "render wrote no p/$sku.html"; exit 1; }

# start_nginx NAME PAGES_DIR: sets NGINX_PORT (no subshell: its PID must
# reach PIDS for the cleanup)
start_nginx() {
  local pages=$2 dir="$OUT/nginx-$1" port
  port=$(free_port)
  rm -rf "$dir"
  mkdir -p "$dir"
  FLASHSALE_NGINX_LISTEN="127.0.0.1:$port" FLASHSALE_UPSTREAMS=$(IFS=,; echo "${UPSTREAMS[*]}") \
    FLASHSALE_PAGES_DIR="$pages" FLASHSALE_STATIC_DIR="$ROOT/static" \
    bash "$ROOT/deploy/nginx/render.sh" --out "$dir/flashsale.conf"
  local user=""
  [ "$(id -u)" = 0 ] && user="user root;"
  cat >"$dir/nginx.conf" <<EOF
$user
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  include $dir/flashsale.conf;
}
EOF
  nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" -t -q
  nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' </dev/null >"$dir/stdout.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    sleep 0.05
  done
  NGINX_PORT=$port
}
start_nginx disk "$PAGES"
DISK_PORT=$NGINX_PORT
start_nginx proxy "$EMPTY"
PROXY_PORT=$NGINX_PORT

A="http://127.0.0.1:$DISK_PORT/p/$sku"
B="$APP/p/$sku"
C="http://127.0.0.1:$PROXY_PORT/p/$sku"
# Same page everywhere (byte for byte), and (a) really from disk, (c) from the app.
body() { curl -fsS "$1"; }
if [ "$(body "$A")" != "$(body "$B")" ] || [ "$(body "$B")" != "$(body "$C")" ]; then
  log "the three URLs do not serve the same page"; exit 1
fi
# nginx's static module answers a file with `Accept-Ranges: bytes`; the app
# never does (both send the same security headers, so those cannot tell).
curl -fsS -D - -o /dev/null "$A" | grep -qi '^accept-ranges: bytes' || { log "(a) did not come from disk"; exit 1; }
curl -fsS -D - -o /dev/null "$C" | grep -qi '^accept-ranges' && { log "(c) did not come from the app"; exit 1; }
size=$(body "$B" | wc -c)

run() { # run LABEL URL
  log "($1) warm-up $WARMUP, then oha -c $CONNECTIONS -z $DURATION $2"
  oha --no-tui -c "$CONNECTIONS" -z "$WARMUP" --output-format json "$2" >/dev/null
  oha --no-tui -w -c "$CONNECTIONS" -z "$DURATION" --output-format json "$2" >"$OUT/oha-$1.json"
}
run a "$A"
run b "$B"
run c "$C"

SUMMARY="$OUT/summary.md"
python3 - "$OUT" "$DURATION" "$CONNECTIONS" "$INSTANCES" "$size" "$(nproc)" "$(oha --version | awk '{print $2}')" "$(nginx -v 2>&1 | sed 's|.*/||')" >"$SUMMARY" <<'EOF'
import json, sys, time
out, duration, conns, instances, size, cores, oha, nginx = sys.argv[1:]
rows = []
for key, what in [("a", "nginx, rendered file from disk"), ("b", "flashsale serve directly"), ("c", "nginx → flashsale serve")]:
    d = json.load(open(f"{out}/oha-{key}.json"))
    codes = d.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    total = sum(codes.values()) + sum(d.get("errorDistribution", {}).values())
    secs = d["summary"]["total"]
    p = d.get("latencyPercentiles", {})
    rows.append((key, what, ok / secs, ok, total - ok, (p.get("p50") or 0) * 1e3, (p.get("p99") or 0) * 1e3))
base = rows[1][2] or 1
print(f"# product page: requests per second ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})")
print()
print(f"{cores} cores shared by oha, nginx (worker_processes auto) and {instances} flashsale serve; "
      f"release build; oha {oha}, nginx {nginx}; {conns} connections (keep-alive), {duration} each after a warm-up; "
      f"page {size} bytes, identical in all three.")
print()
print("| | served by | 200/s | vs (b) | p50 ms | p99 ms | 200s | other |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for key, what, rps, ok, bad, p50, p99 in rows:
    print(f"| ({key}) | {what} | {rps:,.0f} | {rps / base:.2f}× | {p50:.2f} | {p99:.2f} | {ok} | {bad} |")
print()
print(f"ratios: (a)/(b) = {rows[0][2] / base:.2f}, (c)/(b) = {rows[2][2] / base:.2f}, (a)/(c) = {rows[0][2] / (rows[2][2] or 1):.2f}")
print(f"raw: {out}/oha-{{a,b,c}}.json")
EOF
cat "$SUMMARY"
