#!/usr/bin/env bash
# demo.sh — a local flash sale: a Redis Sentinel group (1 master, 2 replicas,
# 3 Sentinels), the order ledger (a PostgreSQL of the demo's own),
# `flashsale serve` with the development login and a payment step (orders
# wait 30 s for their payment), one worker recording orders in the ledger,
# and a demo sale that opens 30 s after the walk-through. The walk-through
# (about 40 s) runs a sale of its own: six shoppers buy its five units, the
# payment provider pays three orders, two expire and their units return, the
# sixth shopper buys one of them and pays; then the ledger's view of it
# (`flashsale audit` with the ledger, `flashsale orders export`). Ctrl-C
# stops everything it started (by PID). Run as root on a fresh Debian
# machine: it installs what is missing (PostgreSQL included).
#
#   scripts/demo.sh [--port 8080] [--dir ./run/demo] [--ledger-port 26420] [--cluster]
#
# --cluster runs the same on a Redis Cluster instead (3 primaries with one
# replica each, scripts/redis-cluster.sh on the shipped cluster settings,
# 127.0.0.1:26500..26505): the sales land on the shards their slots name,
# the worker runs one worker per shard, and the walk-through says which
# shard holds its sale.
#
# The ledger's data stays in DIR/ledger between runs, like the Redis group's
# in DIR/redis; its server runs as the user postgres when started by root
# (initdb and postgres refuse root), on 127.0.0.1:LEDGER_PORT, and the
# worker's metrics on 127.0.0.1:LEDGER_PORT+1.
set -euo pipefail
cd "$(dirname "$0")/.."

port=8080 dir=./run/demo ledger_port=26420 redis_script=scripts/redis-group.sh redis_dir=redis
while (($#)); do
  case $1 in
    --port) port=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --ledger-port) ledger_port=$2; shift 2 ;;
    --cluster) redis_script=scripts/redis-cluster.sh redis_dir=redis-cluster; shift ;;
    *) echo "usage: scripts/demo.sh [--port N] [--dir DIR] [--ledger-port N] [--cluster]" >&2; exit 2 ;;
  esac
done
window=30 metrics_port=$((ledger_port + 1))

scripts/setup.sh postgresql
cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release"
pg_bin=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 | xargs dirname)

mkdir -p "$dir"
# The ledger's directory: DIR/ledger, or, when the server's user cannot reach
# DIR (a checkout under /root, 0700), a directory in /var/tmp it links to.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "demo.sh: no user postgres (Debian's postgresql package makes it)" >&2; exit 1; }
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
if [ ! -e "$dir/ledger" ]; then
  mkdir "$dir/ledger"
  [ "$(id -u)" -ne 0 ] || chown postgres: "$dir/ledger"
  if ! as_pg test -w "$dir/ledger"; then
    rmdir "$dir/ledger"
    ln -s "$(mktemp -d /var/tmp/flashsale-demo-ledger.XXXXXX)" "$dir/ledger"
    chown postgres: "$dir/ledger/"
  fi
fi
ledger=$(readlink -f "$dir/ledger")
chmod 0700 "$ledger"

# The server's PID (postmaster.pid), when it is a postgres of this data dir.
ledger_pid() {
  local pid
  pid=$(head -n 1 "$ledger/data/postmaster.pid" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "postgres -D $ledger/data " || return 1
  echo "$pid"
}
# Fast shutdown (SIGINT: clients are disconnected), then SIGQUIT after 10 s.
stop_ledger() {
  local pid
  pid=$(ledger_pid) || return 0
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "demo.sh: the ledger (pid $pid) ignored SIGINT for 10 s; sending SIGQUIT" >&2
  kill -QUIT "$pid" 2>/dev/null || true
}

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  stop_ledger || true
  "$redis_script" stop --dir "$dir/$redis_dir" || true
}
trap cleanup EXIT INT TERM

for p in "$ledger_port" "$metrics_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "demo.sh: port $p is taken (an earlier demo still running? or use --ledger-port)" >&2; exit 1
  fi
done
"$redis_script" start --dir "$dir/$redis_dir"
# shellcheck disable=SC1091
. "$dir/$redis_dir/env"

# The ledger: initdb once; at every start the superuser only on the socket
# (in the ledger's 0700 directory), the role flashsale only over TCP from
# 127.0.0.1 to its database, with a new password (scram-sha-256).
if [ ! -s "$ledger/data/PG_VERSION" ]; then
  as_pg "$pg_bin/initdb" -D "$ledger/data" -U postgres -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >"$ledger/initdb.log" 2>&1 \
    || { tail -n 20 "$ledger/initdb.log"; exit 1; }
fi
cat >"$ledger/data/pg_hba.conf" <<HBA
# Written by scripts/demo.sh at every start.
local all       postgres                trust
host  flashsale flashsale 127.0.0.1/32 scram-sha-256
HBA
as_pg "$pg_bin/pg_ctl" -D "$ledger/data" -l "$ledger/postgres.log" -w -t 30 \
  -o "-c listen_addresses=127.0.0.1 -p $ledger_port -k '$ledger'" start >/dev/null \
  || { tail -n 20 "$ledger/postgres.log"; exit 1; }
ledger_pw=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
as_pg "$pg_bin/psql" -X -q -h "$ledger" -p "$ledger_port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
\set pw '$ledger_pw'
SELECT 'CREATE ROLE flashsale' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'flashsale') \gexec
ALTER ROLE flashsale WITH LOGIN NOSUPERUSER PASSWORD :'pw';
SELECT 'CREATE DATABASE flashsale OWNER flashsale' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'flashsale') \gexec
SQL
export FLASHSALE_LEDGER_URL=postgres://flashsale:$ledger_pw@127.0.0.1:$ledger_port/flashsale
"$bin/flashsale" ledger migrate

export FLASHSALE_JWT_SECRET FLASHSALE_ADMIN_TOKEN FLASHSALE_PAYMENT_TOKEN
FLASHSALE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
FLASHSALE_ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
FLASHSALE_PAYMENT_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLASHSALE_LISTEN=127.0.0.1:$port FLASHSALE_COOKIE_SECURE=false FLASHSALE_DEV_LOGIN=true

FLASHSALE_WORKER_METRICS=127.0.0.1:$metrics_port "$bin/flashsale-worker" >"$dir/worker.log" 2>&1 & pids+=($!)
# serve never connects to the ledger: only the worker gets its URL.
env -u FLASHSALE_LEDGER_URL FLASHSALE_PAYMENT_WINDOW_S="$window" \
  "$bin/flashsale" serve >"$dir/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { tail -n 20 "$dir/serve.log"; exit 1; }

# ---- the walk-through: a sale of its own (a new one every run) -------------
base=http://127.0.0.1:$port
wsku=demo-buds-$(date -u +%H%M%S)
say() { printf '\n== %s\n' "$*"; }
# post USER PATH BODY [AUTH]: "STATUS BODY" of a POST (a shopper's token unless AUTH)
post() {
  local auth=${4:-$("$bin/flashsale" token --user "$1")}
  curl -sS -m 10 -X POST -H "Authorization: Bearer $auth" -H 'Content-Type: application/json' \
    -d "$3" -w ' %{http_code}' "$base$2" | sed -E 's/^(.*) ([0-9]{3})$/\2 \1/'
}
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }
curl -fsS -X POST "$base/admin/sales" \
  -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d "{\"sku\":\"$wsku\",\"name\":\"Earbuds (walk-through)\",\"description\":\"Five units for the demo's walk-through.\",\"price_cents\":4900,\"stock\":5,\"starts_at\":\"$(date -u +%FT%TZ)\",\"ends_at\":\"$(date -u -d '+10 minutes' +%FT%TZ)\",\"per_user_limit\":1}" \
  >/dev/null
say "walk-through: sale $wsku, 5 units at 49.00, orders must be paid within $window s"
if [ "$redis_dir" = redis-cluster ]; then
  seed_port=$(cut -d, -f1 <<<"$FLASHSALE_REDIS_CLUSTER" | cut -d: -f2)
  rc() { redis-cli -h 127.0.0.1 -p "$seed_port" -a "$FLASHSALE_REDIS_PASSWORD" --no-auth-warning "$@"; }
  slot=$(rc CLUSTER KEYSLOT "$wsku")
  owner=$(rc CLUSTER NODES | awk -v s="$slot" '$3 ~ /master/ { for (i = 9; i <= NF; i++) {
    n = split($i, r, "-"); if (n == 1) r[2] = r[1]; if (s + 0 >= r[1] + 0 && s + 0 <= r[2] + 0) print $2 } }' | cut -d@ -f1)
  say "  its keys are in slot $slot, on the shard whose primary is ${owner:-?}"
fi
declare -A order
for u in ann ben cat dan eve fay; do
  r=$(post "$u" "/api/sales/$wsku/purchase" '{"qty":1}')
  printf '  %-4s buys:   %s\n' "$u" "$r"
  order[$u]=$(field order_id <<<"$r")
done
say "the payment provider pays ann, ben and cat (POST /api/orders/{id}/payment, its bearer secret)"
for u in ann ben cat; do
  r=$(post "$u" "/api/orders/${order[$u]}/payment" "{\"payment_id\":\"pay-$u-$wsku\",\"amount_cents\":4900}" "$FLASHSALE_PAYMENT_TOKEN")
  printf '  %-4s pays:   %s %s\n' "$u" "${r%% *}" "$(field status <<<"$r")"
done
say "dan and eve never pay: at pay_by the worker expires their orders and the 2 units return"
status_of() {
  curl -sS -m 10 -H "Authorization: Bearer $("$bin/flashsale" token --user "$1")" "$base/api/orders/$2" | field status
}
printf '  waiting'
for _ in $(seq $((window + 20))); do
  [ "$(status_of eve "${order[eve]}")" = expired ] && break
  printf '.'; sleep 1
done
echo
for u in dan eve; do printf '  %-4s order:  %s\n' "$u" "$(status_of "$u" "${order[$u]}")"; done
printf '  stock left: %s\n' "$(curl -sS -m 10 "$base/api/products/$wsku" | field stock_left)"
say "fay, refused while it was sold out, buys again and pays"
r=$(post fay "/api/sales/$wsku/purchase" '{"qty":1}')
printf '  %-4s buys:   %s\n' fay "$r"
order[fay]=$(field order_id <<<"$r")
r=$(post fay "/api/orders/${order[fay]}/payment" "{\"payment_id\":\"pay-fay-$wsku\",\"amount_cents\":4900}" "$FLASHSALE_PAYMENT_TOKEN")
printf '  %-4s pays:   %s %s\n' fay "${r%% *}" "$(field status <<<"$r")"
say "the ledger (PostgreSQL): flashsale audit --sku $wsku, with FLASHSALE_LEDGER_URL"
# Until the worker has recorded every order and every end: exit 0
# (consistent), nothing pending in the ledger, nothing awaiting payment.
settled() {
  python3 -c 'import json, sys
l = json.loads(sys.stdin.read())["ledger"]
sys.exit(0 if l["consistent"] and l["pending"] == 0 and l["awaiting_payment"] == 0 else 1)'
}
for _ in $(seq 50); do
  out=$("$bin/flashsale" audit --sku "$wsku" 2>"$dir/audit.log") && settled <<<"$out" && break
  sleep 0.2
done
python3 -c 'import json, sys
a = json.loads(sys.stdin.read())
r, l = a["audit"], a["ledger"]
print("  Redis:  stock_left %s, sold %s, paid %s, expired %s, returned %s, consistent %s" % (
    r["stock_left"], r["sold"], r["paid"], r["expired"], r["returned"], str(r["consistent"]).lower()))
print("  ledger: %s orders, %s recorded, %s pending, %s awaiting payment, %s missing, consistent %s" % (
    l["orders"], l["recorded"], l["pending"], l["awaiting_payment"],
    l["totals"]["missing_in_ledger"], str(l["consistent"]).lower()))' <<<"$out" || echo "$out"
say "flashsale orders export --sku $wsku --format csv (columns user_id, status, amount_cents, paid_at, payment_id, expired_at)"
"$bin/flashsale" orders export --sku "$wsku" --format csv 2>/dev/null | head -n 8 | cut -d, -f3,5,6,10-12 | sed 's/^/  /'
printf '  worker metrics: %s\n' "$(curl -sS -m 5 "http://127.0.0.1:$metrics_port/metrics" \
  | grep -E '^flashsale_ledger_(up|errors_total|recorded_total) ' | tr '\n' ' ')"

# ---- the demo sale, for the browser ------------------------------------------
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
export FLASHSALE_PAYMENT_TOKEN=$FLASHSALE_PAYMENT_TOKEN
export FLASHSALE_LEDGER_URL=$FLASHSALE_LEDGER_URL
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
  pay it (the payment provider's callback), within $window s of the purchase or it expires:
    curl -X POST -H "Authorization: Bearer \$FLASHSALE_PAYMENT_TOKEN" -d '{"payment_id":"pay-1","amount_cents":29900}' \\
      http://127.0.0.1:$port/api/orders/ORDER_ID/payment
  audit          curl -H "Authorization: Bearer \$FLASHSALE_ADMIN_TOKEN" http://127.0.0.1:$port/admin/sales/demo-tv/audit
  the ledger     . $dir/$redis_dir/env; . $dir/demo.env
                 $bin/flashsale audit --sku demo-tv            (Redis against the ledger)
                 $bin/flashsale orders export --sku demo-tv --format csv
                 psql "\$FLASHSALE_LEDGER_URL" -c 'SELECT sku, status, count(*) FROM orders GROUP BY 1, 2'
  worker metrics http://127.0.0.1:$metrics_port/metrics   (flashsale_ledger_up, flashsale_ledger_errors_total)
  a failover     $(if [ "$redis_dir" = redis-cluster ]; then echo "scripts/redis-cluster.sh status --dir $dir/$redis_dir, then"; echo '                 redis-cli -p <a replica port> -a "$FLASHSALE_REDIS_PASSWORD" CLUSTER FAILOVER'; else echo "redis-cli -p 26410 SENTINEL FAILOVER mymaster   (Sentinels have no password here)"; fi)
Press Ctrl-C to stop.
MSG
wait
