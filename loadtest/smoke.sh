#!/usr/bin/env bash
# smoke.sh — the load tests as a test: every scenario of loadtest/run.sh for
# two to three seconds (--quick --runs 1), checking only that each one ran and
# that the invariants held afterwards (every sale's audit `consistent`,
# `sold <= stock_total`, every 202 an order, the stampede's 1 000 units never
# oversold, the worker bench fully confirmed). No timing is asserted.
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
for t in oha k6 redis-server redis-sentinel redis-cli redis-benchmark python3 cargo; do
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
set +e
LT_NO_INSTALL=1 LT_BUILD_PROFILE=${LT_BUILD_PROFILE:-debug} \
  timeout --kill-after=20 600 loadtest/run.sh --quick --runs 1 --out "$out" >"$out.log" 2>&1
rc=$?
set -e
[ -f "$out/results.json" ] || { tail -n 40 "$out.log" >&2; echo "$PROG: FAILED: no results (exit $rc)" >&2; exit 1; }

python3 - "$out/results.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
runs = data["results"].get("1") or data["results"].get(1) or {}
want = ["redis_benchmark_c50", "redis_benchmark_c256", "fcall_c50_wait0", "fcall_c50_wait2",
        "fcall_c256_wait0", "fcall_c256_wait2", "bare_get", "bare_post", "live_all", "live_noack", "live_all_solo", "live_noack_solo",
        "openloop_25", "openloop_50", "openloop_75", "openloop_k6_50",
        "stampede", "soldout", "product_page", "product_json", "mixed_loadgen", "mixed_k6",
        "workers_1", "workers_2", "workers_4"]
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
