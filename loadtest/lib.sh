# shellcheck shell=bash
# lib.sh — shared by loadtest/pages.sh, loadtest/overload.sh and loadtest/worker-ledger.sh (sourced).
# The caller defines ROOT (the repository) and log().

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_group DIR FIRST_PORT: starts a Sentinel group (scripts/redis-group.sh,
# random password) in DIR on a range of 13 free ports between FIRST_PORT and
# FIRST_PORT + 2000, and sources its env (FLASHSALE_REDIS_*). Stop it with
# `scripts/redis-group.sh stop --dir DIR`.
start_group() {
  local dir=$1 first=$2 base='' p i ok password
  for _ in $(seq 1 50); do
    p=$(( (RANDOM % 2000) + first ))
    ok=1
    for i in $(seq 0 12); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$((p + i))") 2>/dev/null; then ok=0; break; fi
    done
    [ $ok = 1 ] && { base=$p; break; }
  done
  [ -n "$base" ] || { log "no free port range"; return 1; }
  password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  log "starting a Redis Sentinel group on 127.0.0.1:$base.. in $dir"
  bash "$ROOT/scripts/redis-group.sh" start --dir "$dir" --base-port "$base" \
    --password "$password" >/dev/null || return 1
  # shellcheck disable=SC1091
  . "$dir/env"
}
