#!/usr/bin/env bash
# smoke.sh — the load tests as a test: every scenario of loadtest/run.sh for
# two to three seconds (--quick --runs 1), checking only that each one ran and
# that the invariants held afterwards (every sale's audit `consistent`,
# `sold <= stock_total`, every 202 an order, the stampede's 1 000 units never
# oversold, the worker bench fully confirmed), and the peer scenario
# (`--peer`) against a second flashsale started here. No timing is asserted.
#
#   loadtest/smoke.sh            # < 90 s once the binaries are built
#
# It installs nothing and fails loudly when a tool is missing (oha and k6:
# `loadtest/run.sh --install-only`; Redis: scripts/setup.sh). It uses the
# debug binaries (`cargo build --workspace --bins`, which scripts/test.sh has
# built already); LT_BUILD_PROFILE=release uses target/release instead.
# Results: loadtest/results/smoke-<timestamp>/ (summary.md, results.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=loadtest/smoke.sh

[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
for d in "$HOME/.local/bin" "$HOME/.pyenv/shims"; do [ -d "$d" ] && PATH="$PATH:$d"; done
export PATH
missing=()
for t in oha k6 redis-server redis-sentinel redis-cli redis-benchmark python3 cargo curl; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if ((${#missing[@]})); then
  printf '%s: FAILED: missing tool(s): %s\n' "$PROG" "${missing[*]}" >&2
  printf '%s: install oha and k6 with: loadtest/run.sh --install-only; Redis with scripts/setup.sh\n' "$PROG" >&2
  exit 1
fi
k6 version >/dev/null 2>&1 || { echo "$PROG: FAILED: k6 is on PATH but does not run" >&2; exit 1; }

mkdir -p loadtest/results
out="loadtest/results/smoke-$(date +%Y%m%d-%H%M%S)"
start=$SECONDS

# The peer scenario (`--peer URL`) against a second flashsale of its own (its
# own Sentinel group, server and worker): the comparison runs end to end and
# the peer's sales are audited through its HTTP API. Stopped by PID on exit.
bin="target/${LT_BUILD_PROFILE:-debug}"
peer_dir=$(mktemp -d /tmp/flashsale-smoke-peer.XXXXXX)
peer_pids=()
stop_peer() {
  for p in "${peer_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${peer_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bash scripts/redis-group.sh stop --dir "$peer_dir/redis" >/dev/null 2>&1 || true
  rm -rf "$peer_dir"
}
trap stop_peer EXIT
read -r peer_base peer_port < <(python3 - <<'PY'
import random, socket
def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False
while True:
    b = random.randrange(20000, 30000, 20)
    if all(free(b + i) for i in (0, 1, 2, 10, 11, 12)):
        break
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(b, s.getsockname()[1])
PY
)
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
peer_pw="peer-$(hex 12)"
REDIS_GROUP_PASSWORD=$peer_pw bash scripts/redis-group.sh start --dir "$peer_dir/redis" \
  --base-port "$peer_base" >"$peer_dir/group.log" 2>&1 \
  || { cat "$peer_dir/group.log" >&2; echo "$PROG: FAILED: the peer's Redis group did not start" >&2; exit 1; }
printf 'FLASHSALE_JWT_SECRET=%s\nFLASHSALE_ADMIN_TOKEN=%s\n' "$(hex 32)" "$(hex 24)" >"$peer_dir/peer.env"
peer_sentinels="127.0.0.1:$((peer_base + 10)),127.0.0.1:$((peer_base + 11)),127.0.0.1:$((peer_base + 12))"
(
  set -a
  . "$peer_dir/peer.env"
  set +a
  export FLASHSALE_REDIS_SENTINELS=$peer_sentinels FLASHSALE_REDIS_PASSWORD=$peer_pw
  export FLASHSALE_LISTEN=127.0.0.1:$peer_port FLASHSALE_STATIC_DIR=static
  export FLASHSALE_RATE_LIMIT_PER_SHOPPER=0 FLASHSALE_RATE_LIMIT_PER_IP=0
  exec "$bin/flashsale" serve
) >"$peer_dir/serve.log" 2>&1 &
peer_pids+=($!)
FLASHSALE_REDIS_SENTINELS=$peer_sentinels FLASHSALE_REDIS_PASSWORD=$peer_pw \
  "$bin/flashsale-worker" >"$peer_dir/worker.log" 2>&1 &
peer_pids+=($!)
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$peer_port/readyz" >/dev/null 2>&1 && break
  sleep 0.25
done
curl -sf "http://127.0.0.1:$peer_port/readyz" >/dev/null \
  || { tail -n 20 "$peer_dir/serve.log" >&2; echo "$PROG: FAILED: the peer server never became ready" >&2; exit 1; }

set +e
LT_NO_INSTALL=1 LT_BUILD_PROFILE=${LT_BUILD_PROFILE:-debug} \
  timeout --kill-after=20 600 loadtest/run.sh --quick --runs 1 --out "$out" \
  --peer "http://127.0.0.1:$peer_port" --peer-env "$peer_dir/peer.env" --peer-pid "${peer_pids[0]}" \
  >"$out.log" 2>&1
rc=$?
set -e
[ -f "$out/results.json" ] || { tail -n 40 "$out.log" >&2; echo "$PROG: FAILED: no results (exit $rc)" >&2; exit 1; }

python3 - "$out/results.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
runs = data["results"].get("1") or data["results"].get(1) or {}
want = ["redis_benchmark_c50", "redis_benchmark_c256", "fcall_c50_wait0", "fcall_c50_wait2",
        "fcall_c256_wait0", "fcall_c256_wait2", "bare_get", "bare_post", "bare_post_live_rate",
        "live_all", "live_noack", "live_all_solo", "live_noack_solo",
        "openloop_25", "openloop_50", "openloop_75", "openloop_k6_50", "openloop_50_solo",
        "stampede", "soldout", "product_page", "product_json", "mixed_loadgen", "mixed_k6",
        "workers_1", "workers_2", "workers_4",
        "peer_live", "peer_openloop_50", "peer_stampede", "peer_soldout", "peer_product_json"]
problems = []
for name in want:
    m = runs.get(name)
    if m is None:
        problems.append(f"{name}: did not run")
    elif not m.get("rps"):
        problems.append(f"{name}: no successful request")
st = runs.get("stampede", {})
if st and (st.get("status", {}).get("202", 0) > 1000 or (st.get("sold") or 0) > 1000):
    problems.append(f"stampede oversold: {st.get('status')} sold {st.get('sold')}")
inv = data["invariants"]
if not any(i["note"].startswith("peer_") for i in inv):
    problems.append("no sale of the peer audited")
if len(inv) < 8:
    problems.append(f"only {len(inv)} sales audited")
problems += [f"invariants of {i['sku']}: {i['why']} {i['audit']}" for i in inv if not i["ok"]]
problems += data["failures"]
if problems:
    print("smoke: FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"smoke: {len(want)} measurements ran, {len(inv)} sales audited, every invariant held")
PY
[ "$rc" -eq 0 ] || { tail -n 40 "$out.log" >&2; echo "$PROG: FAILED: run.sh exited $rc" >&2; exit 1; }
echo "$PROG: OK in $((SECONDS - start)) s ($out)"
