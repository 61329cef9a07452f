#!/usr/bin/env bash
# redis-group.sh — run a local Redis Sentinel group for flashsale development
# and tests: 1 master, 2 replicas, 3 Sentinels (quorum 2), on 127.0.0.1 (or the addresses --hosts gives).
#
# Usage:
#   scripts/redis-group.sh start|stop|status|env [options]
#
# Options (each may also come from the environment variable in brackets):
#   --dir RUN_DIR        run directory          [REDIS_GROUP_DIR]         ./run/redis-group
#   --base-port N        first port             [REDIS_GROUP_BASE_PORT]   26400
#   --down-after MS      TIMING OVERRIDE of the Sentinels' down-after-milliseconds
#                        [REDIS_GROUP_DOWN_AFTER_MS]   default: the shipped value
#   --password PW        data-node password     [REDIS_GROUP_PASSWORD]    flashsale-dev
#   --master-name NAME   monitored master name  [REDIS_GROUP_MASTER_NAME] mymaster
#   --wait-secs N        convergence timeout    [REDIS_GROUP_WAIT_SECS]   30
#   --hosts A,B,C,D,E,F  one address per node, in the order redis-0..2,
#                        sentinel-0..2               [REDIS_GROUP_HOSTS]  all 127.0.0.1
#   --netns N0,...,N5    run each node in that network namespace (ip netns exec),
#                        same order; needs --hosts  [REDIS_GROUP_NETNS]  none
#   --tls                TLS only, on the same ports  [REDIS_GROUP_TLS=1]  off
#   --acl                the ACL users of deploy/redis/ [REDIS_GROUP_ACL=1]  off
#   --key-prefix P       key prefix the app's and worker's users may touch
#                        (with --acl)           [REDIS_GROUP_KEY_PREFIX]  fs
#
# --tls: openssl makes, in RUN_DIR/tls/, a CA (ca.crt), a certificate for
# every node address (server.crt/.key; replicas and Sentinels present it as
# their client certificate too) and a client certificate (client.crt/.key).
# Every node listens with TLS only (port 0, tls-port = the port above) and
# asks clients for a certificate; replication and the Sentinels' own
# connections use TLS (tls-replication yes).
#
# --acl: the users of deploy/redis/users.acl (data nodes) and
# deploy/redis/sentinel-users.acl (Sentinels), each with a fresh random
# password written to RUN_DIR/users (name=password, 0600); replicas
# authenticate as the replication user (masteruser), the Sentinels as the
# Sentinel user (sentinel auth-user) and to each other as the peer user
# (sentinel sentinel-user). The default user keeps --password on the data
# nodes and gets it on the Sentinels too (the operator's and the tests'
# account).
#
# --hosts and --netns are for tests that cut the network between nodes (each
# node its own host on a bridge, made by the caller); every node binds only
# its own address and is named by it to the others.
#
# The default password "flashsale-dev" is for local development ONLY.
#
# Settings: the group runs the settings that deploy/ ships, from the same files:
#   deploy/redis/redis-shipped.conf           every data node `include`s it (by absolute path)
#   deploy/redis/sentinel-shipped.properties  every Sentinel gets `sentinel <key> <master> <value>`
# Only the addresses, paths, password and master name are this script's own.
# --down-after is the one timing override: when it differs from the shipped
# value, start prints "TIMING OVERRIDE down-after-milliseconds=N (shipped M)"
# and records it in RUN_DIR/group.state (timing_override=...). Anything measured
# on such a group is not a measurement of the shipped settings.
#
# Port layout (B = base port):
#   redis-0 (initial master)  B        sentinel-0  B+10
#   redis-1 (replica)         B+1      sentinel-1  B+11
#   redis-2 (replica)         B+2      sentinel-2  B+12
#
# Run directory layout:
#   RUN_DIR/group.state                  ports/name/timing override of the running group (0600)
#   RUN_DIR/env                          FLASHSALE_REDIS_* exports (0600, holds the password)
#   RUN_DIR/users                        --acl: name=password of each ACL user (0600)
#   RUN_DIR/tls/                         --tls: ca.crt, server.crt/.key, client.crt/.key
#   RUN_DIR/redis-N/redis.conf           config, pidfile redis.pid, logfile redis.log, data (AOF)
#   RUN_DIR/sentinel-N/sentinel.conf     config (rewritten by Sentinel), sentinel.pid, sentinel.log
#
# Commands:
#   start   install redis if missing, write configs, start all six processes, wait
#           until every Sentinel sees the master, 2 healthy replicas and 2 other
#           Sentinels, write RUN_DIR/env and print a summary. Refuses if the group
#           in RUN_DIR is already running or a port is taken. Configs are rewritten
#           on every start (redis-0 is master again); AOF data in the node dirs is kept.
#   stop    TERM (then KILL after 10 s) exactly the PIDs in RUN_DIR's pidfiles, after
#           checking /proc/PID/cmdline still names a redis process on that port.
#           Removes the pidfiles. Idempotent.
#   status  per node: port, pid, alive, role (Sentinels: the master they see).
#           Exit status 0 if all six are alive, 3 otherwise.
#   env     print RUN_DIR/env (source it: `. RUN_DIR/env` or `eval "$(... env)"`).
#
# The password is never printed; it is only written into configs and RUN_DIR/env,
# all mode 0600. redis-cli gets it through REDISCLI_AUTH, never on a command line.
set -euo pipefail

PROG=${0##*/}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------- options ---

CMD=""
RUN_DIR=${REDIS_GROUP_DIR:-./run/redis-group}
BASE_PORT=${REDIS_GROUP_BASE_PORT:-26400}
# Empty: the shipped value (deploy/redis/sentinel-shipped.properties).
DOWN_AFTER=${REDIS_GROUP_DOWN_AFTER_MS:-}
PASSWORD=${REDIS_GROUP_PASSWORD:-flashsale-dev}
MASTER_NAME=${REDIS_GROUP_MASTER_NAME:-mymaster}
WAIT_SECS=${REDIS_GROUP_WAIT_SECS:-30}
HOSTS=${REDIS_GROUP_HOSTS:-}
NETNS=${REDIS_GROUP_NETNS:-}
TLS=${REDIS_GROUP_TLS:-0}
ACL=${REDIS_GROUP_ACL:-0}
KEY_PREFIX=${REDIS_GROUP_KEY_PREFIX:-fs}

need_arg() {
  [[ $# -ge 2 ]] || die "option $1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case $1 in
    start | stop | status | env)
      [[ -z $CMD ]] || die "only one command allowed (got '$CMD' and '$1')"
      CMD=$1
      shift
      ;;
    --dir) need_arg "$@"; RUN_DIR=$2; shift 2 ;;
    --dir=*) RUN_DIR=${1#*=}; shift ;;
    --base-port) need_arg "$@"; BASE_PORT=$2; shift 2 ;;
    --base-port=*) BASE_PORT=${1#*=}; shift ;;
    --down-after) need_arg "$@"; DOWN_AFTER=$2; shift 2 ;;
    --down-after=*) DOWN_AFTER=${1#*=}; shift ;;
    --password) need_arg "$@"; PASSWORD=$2; shift 2 ;;
    --password=*) PASSWORD=${1#*=}; shift ;;
    --master-name) need_arg "$@"; MASTER_NAME=$2; shift 2 ;;
    --master-name=*) MASTER_NAME=${1#*=}; shift ;;
    --wait-secs) need_arg "$@"; WAIT_SECS=$2; shift 2 ;;
    --wait-secs=*) WAIT_SECS=${1#*=}; shift ;;
    --hosts) need_arg "$@"; HOSTS=$2; shift 2 ;;
    --hosts=*) HOSTS=${1#*=}; shift ;;
    --netns) need_arg "$@"; NETNS=$2; shift 2 ;;
    --netns=*) NETNS=${1#*=}; shift ;;
    --tls) TLS=1; shift ;;
    --acl) ACL=1; shift ;;
    --key-prefix) need_arg "$@"; KEY_PREFIX=$2; shift 2 ;;
    --key-prefix=*) KEY_PREFIX=${1#*=}; shift ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ -n $CMD ]] || { usage >&2; die "missing command (start|stop|status|env)"; }
[[ -n $RUN_DIR ]] || die "--dir must not be empty"

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ------------------------------------------------------- shipped settings ---

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SHIPPED_REDIS_CONF=$REPO_ROOT/deploy/redis/redis-shipped.conf
SHIPPED_SENTINEL=$REPO_ROOT/deploy/redis/sentinel-shipped.properties
SHIPPED_USERS=$REPO_ROOT/deploy/redis/users.acl
SHIPPED_SENTINEL_USERS=$REPO_ROOT/deploy/redis/sentinel-users.acl
# Keys and values of the Sentinel tunables, in file order.
SENTINEL_KEYS=()
declare -A SENTINEL_VALUES=()
TIMING_OVERRIDE=""

load_shipped_settings() {
  [[ -r $SHIPPED_REDIS_CONF ]] || die "$SHIPPED_REDIS_CONF not found (the shipped data-node settings)"
  [[ -r $SHIPPED_SENTINEL ]] || die "$SHIPPED_SENTINEL not found (the shipped Sentinel tunables)"
  local line k v
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line =~ ^([a-z-]+)=([0-9]+)$ ]] || die "$SHIPPED_SENTINEL: not a key=number line: '$line'"
    k=${BASH_REMATCH[1]}
    v=${BASH_REMATCH[2]}
    [[ -z ${SENTINEL_VALUES[$k]+set} ]] || die "$SHIPPED_SENTINEL: $k given twice"
    SENTINEL_KEYS+=("$k")
    SENTINEL_VALUES[$k]=$((10#$v))
  done <"$SHIPPED_SENTINEL"
  [[ -n ${SENTINEL_VALUES[down-after-milliseconds]+set} ]] ||
    die "$SHIPPED_SENTINEL: down-after-milliseconds missing"
}

validate_start_options() {
  load_shipped_settings
  is_uint "$BASE_PORT" || die "--base-port must be a number"
  local shipped_down_after=${SENTINEL_VALUES[down-after-milliseconds]}
  [[ -n $DOWN_AFTER ]] || DOWN_AFTER=$shipped_down_after
  is_uint "$DOWN_AFTER" || die "--down-after must be a number of milliseconds"
  is_uint "$WAIT_SECS" || die "--wait-secs must be a number of seconds"
  BASE_PORT=$((10#$BASE_PORT))
  DOWN_AFTER=$((10#$DOWN_AFTER))
  WAIT_SECS=$((10#$WAIT_SECS))
  ((BASE_PORT >= 1024 && BASE_PORT + 12 <= 65535)) || die "--base-port must be in 1024..65523"
  ((DOWN_AFTER >= 100)) || die "--down-after must be at least 100 ms"
  if ((DOWN_AFTER != shipped_down_after)); then
    TIMING_OVERRIDE="down-after-milliseconds=$DOWN_AFTER (shipped $shipped_down_after)"
  fi
  ((WAIT_SECS >= 1)) || die "--wait-secs must be at least 1"
  [[ $MASTER_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--master-name must be [A-Za-z0-9_.-]+"
  [[ $TLS == 0 || $TLS == 1 ]] || die "REDIS_GROUP_TLS must be 0 or 1"
  [[ $ACL == 0 || $ACL == 1 ]] || die "REDIS_GROUP_ACL must be 0 or 1"
  [[ $KEY_PREFIX =~ ^[A-Za-z0-9_-]+$ ]] || die "--key-prefix must be [A-Za-z0-9_-]+"
  if ((ACL)); then
    [[ -r $SHIPPED_USERS ]] || die "$SHIPPED_USERS not found (the ACL users of the data nodes)"
    [[ -r $SHIPPED_SENTINEL_USERS ]] || die "$SHIPPED_SENTINEL_USERS not found (the ACL users of the Sentinels)"
  fi
  if ((TLS)); then
    command -v openssl >/dev/null 2>&1 || die "--tls needs openssl (apt-get install -y openssl)"
  fi
  # Kept simple so it can be written into redis configs and shell files verbatim.
  [[ -n $PASSWORD ]] || die "--password must not be empty"
  [[ $PASSWORD =~ ^[A-Za-z0-9_.,:@%+=/~^!?*#-]+$ ]] ||
    die "--password may only contain letters, digits and _.,:@%+=/~^!?*#-"
  parse_layout
}

# Per-node addresses and namespaces (--hosts, --netns), checked.
NODE_HOSTS=()
NODE_NETNS=()
parse_layout() {
  NODE_HOSTS=()
  NODE_NETNS=()
  if [[ -n $HOSTS ]]; then
    IFS=, read -r -a NODE_HOSTS <<<"$HOSTS"
    ((${#NODE_HOSTS[@]} == 6)) || die "--hosts needs 6 addresses (redis-0..2, sentinel-0..2)"
    local h
    for h in "${NODE_HOSTS[@]}"; do
      [[ $h =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "--hosts: '$h' is not an IPv4 address"
    done
  fi
  if [[ -n $NETNS ]]; then
    [[ -n $HOSTS ]] || die "--netns needs --hosts (each namespace's own address)"
    IFS=, read -r -a NODE_NETNS <<<"$NETNS"
    ((${#NODE_NETNS[@]} == 6)) || die "--netns needs 6 namespaces (redis-0..2, sentinel-0..2)"
    command -v ip >/dev/null 2>&1 || die "--netns needs ip (Debian's iproute2)"
  fi
}

# Absolute run dir (created on start; other commands need it to exist).
abs_dir() {
  (cd "$1" && pwd -P)
}

# ------------------------------------------------------------ node layout ---

NODES=(redis-0 redis-1 redis-2 sentinel-0 sentinel-1 sentinel-2)

node_port() {
  local node=$1 idx=${1##*-}
  case $node in
    redis-*) echo $((BASE_PORT + idx)) ;;
    sentinel-*) echo $((BASE_PORT + 10 + idx)) ;;
  esac
}

node_kind() {
  case $1 in
    redis-*) echo redis ;;
    sentinel-*) echo sentinel ;;
  esac
}

# Position of a node in --hosts/--netns: redis-N is N, sentinel-N is 3+N.
node_index() {
  case $1 in
    redis-*) echo "${1##*-}" ;;
    sentinel-*) echo $((3 + ${1##*-})) ;;
  esac
}

# The address a node binds and is known by.
node_host() {
  if ((${#NODE_HOSTS[@]})); then
    echo "${NODE_HOSTS[$(node_index "$1")]}"
  else
    echo 127.0.0.1
  fi
}

node_dir() { echo "$RUN_DIR/$1"; }
node_conf() { echo "$RUN_DIR/$1/$(node_kind "$1").conf"; }
node_pidfile() { echo "$RUN_DIR/$1/$(node_kind "$1").pid"; }
node_logfile() { echo "$RUN_DIR/$1/$(node_kind "$1").log"; }

# Load BASE_PORT/MASTER_NAME/... of an existing group (written by start).
load_state() {
  local f="$RUN_DIR/group.state" line k v
  [[ -f $f ]] || return 1
  while IFS= read -r line; do
    k=${line%%=*}
    v=${line#*=}
    case $k in
      base_port) BASE_PORT=$v ;;
      master_name) MASTER_NAME=$v ;;
      down_after_ms) DOWN_AFTER=$v ;;
      timing_override) TIMING_OVERRIDE=$v ;;
      password) PASSWORD=$v ;;
      hosts) HOSTS=$v ;;
      netns) NETNS=$v ;;
      tls) TLS=$v ;;
      acl) ACL=$v ;;
      key_prefix) KEY_PREFIX=$v ;;
    esac
  done <"$f"
  parse_layout
  return 0
}

# ------------------------------------------------------------- processes ---

read_pid() {
  local f pid
  f=$(node_pidfile "$1")
  [[ -f $f ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid ]] || return 1
  echo "$pid"
}

# True if PID is alive and its cmdline names a redis process of this group on
# PORT. The configs set proc-title-template so that the title reads
# "redis-server 127.0.0.1:PORT /RUN_DIR/redis-N/redis.conf" (pgrep -f RUN_DIR works).
pid_is_ours() {
  local pid=$1 port=$2 cmd
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *redis-server* || $cmd == *redis-sentinel* ]] || return 1
  [[ $cmd == *":$port "* && $cmd == *"$RUN_DIR/"* ]] || return 1
  # A zombie or dying process has no cmdline worth trusting.
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

node_alive() {
  local pid
  pid=$(read_pid "$1") || return 1
  pid_is_ours "$pid" "$(node_port "$1")"
}

# Whether HOST:PORT takes connections.
port_in_use() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# The host of the node on PORT (redis-cli calls are made by port).
port_host() {
  local node
  for node in "${NODES[@]}"; do
    if [[ $(node_port "$node") == "$1" ]]; then
      node_host "$node"
      return
    fi
  done
  echo 127.0.0.1
}

# redis-cli's TLS options (with --tls: the client certificate of RUN_DIR/tls).
tls_cli_args() {
  if ((TLS)); then
    printf '%s\n' --tls --cacert "$RUN_DIR/tls/ca.crt" --cert "$RUN_DIR/tls/client.crt" --key "$RUN_DIR/tls/client.key"
  fi
}

# redis-cli against a data node (authenticated via env, bounded by timeout).
rcli() {
  local port=$1
  shift
  local -a t
  mapfile -t t < <(tls_cli_args)
  REDISCLI_AUTH=$PASSWORD timeout 3 redis-cli --no-auth-warning "${t[@]}" -h "$(port_host "$port")" -p "$port" "$@"
}

# redis-cli against a Sentinel (no password on Sentinels, except with --acl:
# then the default user has --password there too).
scli() {
  local port=$1
  shift
  local -a t auth=()
  mapfile -t t < <(tls_cli_args)
  if ((ACL)); then
    auth=(env "REDISCLI_AUTH=$PASSWORD")
  fi
  "${auth[@]}" timeout 3 redis-cli --no-auth-warning "${t[@]}" -h "$(port_host "$port")" -p "$port" "$@"
}

# ------------------------------------------------------------- TLS, users ---

# shellcheck source=scripts/redis-certs.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis-certs.sh"

make_certs() { make_redis_certs "$RUN_DIR/tls" "${NODE_HOSTS[@]}"; }

# The TLS lines of a node's config (TLS only: no plain port).
tls_conf() { redis_tls_conf "$RUN_DIR/tls" "$1"; }

declare -A USER_PW=()
# A fresh password for every user of the users files, in RUN_DIR/users.
make_passwords() {
  local f name
  : >"$RUN_DIR/users"
  chmod 600 "$RUN_DIR/users"
  for f in "$SHIPPED_USERS" "$SHIPPED_SENTINEL_USERS"; do
    while read -r name; do
      [[ -n ${USER_PW[$name]+set} ]] && continue
      USER_PW[$name]=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
      echo "$name=${USER_PW[$name]}" >>"$RUN_DIR/users"
    done < <(awk '$1 == "user" { print $2 }' "$f")
  done
}

load_passwords() {
  local line
  [[ -f $RUN_DIR/users ]] || return 0
  while IFS= read -r line; do
    USER_PW[${line%%=*}]=${line#*=}
  done <"$RUN_DIR/users"
}

# `user NAME RULES…` lines of a users file as config lines: each user reset,
# switched on, given its password; {prefix} becomes the key prefix.
render_users() {
  local name rules
  while read -r _ name rules; do
    rules=${rules//\{prefix\}/$KEY_PREFIX}
    echo "user $name reset on >${USER_PW[$name]} $rules"
  done < <(grep -E '^user ' "$1")
}

# ------------------------------------------------------------------ start ---

ensure_redis_installed() {
  local missing=0 b
  for b in redis-server redis-sentinel redis-cli; do
    command -v "$b" >/dev/null 2>&1 || missing=1
  done
  ((missing)) || return 0
  log "redis-server/redis-sentinel/redis-cli missing; installing with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install redis-server, redis-sentinel and redis-tools yourself"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install redis-server redis-sentinel redis-tools yourself"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update ||
    die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-sentinel redis-tools ||
    die "apt-get install redis-server redis-sentinel redis-tools failed"
  for b in redis-server redis-sentinel redis-cli; do
    command -v "$b" >/dev/null 2>&1 || die "$b still missing after apt-get install"
  done
}

write_redis_conf() {
  local node=$1 port dir
  port=$(node_port "$node")
  dir=$(node_dir "$node")
  {
    echo "# generated by $PROG — rewritten on every start"
    echo "# This node's own lines; every other setting is the shipped one (include below)."
    echo "port $port"
    echo "bind $(node_host "$node")"
    echo "protected-mode no"
    echo "dir \"$dir\""
    echo "daemonize yes"
    echo "pidfile \"$(node_pidfile "$node")\""
    echo "logfile \"$(node_logfile "$node")\""
    echo "proc-title-template \"{title} {listen-addr} {server-mode} {config-file}\""
    echo "requirepass \"$PASSWORD\""
    if ((ACL)); then
      echo "# the ACL users (${SHIPPED_USERS#"$REPO_ROOT"/}); replicas log in as the replication user"
      render_users "$SHIPPED_USERS"
      echo "masteruser flashsale-replica"
      echo "masterauth \"${USER_PW[flashsale-replica]}\""
    else
      echo "masterauth \"$PASSWORD\""
    fi
    if ((TLS)); then
      tls_conf "$port"
    fi
    echo "include \"$SHIPPED_REDIS_CONF\""
    if [[ $node != redis-0 ]]; then
      echo "replicaof $(node_host redis-0) $(node_port redis-0)"
    fi
  } >"$(node_conf "$node")"
}

write_sentinel_conf() {
  local node=$1 port dir k v
  port=$(node_port "$node")
  dir=$(node_dir "$node")
  {
    echo "# generated by $PROG — rewritten on every start (Sentinel also rewrites it)"
    echo "port $port"
    echo "bind $(node_host "$node")"
    echo "protected-mode no"
    echo "dir \"$dir\""
    echo "daemonize yes"
    echo "pidfile \"$(node_pidfile "$node")\""
    echo "logfile \"$(node_logfile "$node")\""
    echo "proc-title-template \"{title} {listen-addr} {server-mode} {config-file}\""
    echo "sentinel resolve-hostnames no"
    echo "sentinel monitor $MASTER_NAME $(node_host redis-0) $(node_port redis-0) 2"
    if ((TLS)); then
      tls_conf "$port"
    fi
    if ((ACL)); then
      echo "# the ACL users (${SHIPPED_SENTINEL_USERS#"$REPO_ROOT"/}); the data nodes are"
      echo "# watched as the Sentinel user, the other Sentinels asked as the peer user"
      echo "requirepass \"$PASSWORD\""
      render_users "$SHIPPED_SENTINEL_USERS"
      echo "sentinel sentinel-user flashsale-peer"
      echo "sentinel sentinel-pass \"${USER_PW[flashsale-peer]}\""
      echo "sentinel auth-user $MASTER_NAME flashsale-sentinel"
      echo "sentinel auth-pass $MASTER_NAME \"${USER_PW[flashsale-sentinel]}\""
    else
      echo "sentinel auth-pass $MASTER_NAME \"$PASSWORD\""
    fi
    echo "# the shipped tunables (${SHIPPED_SENTINEL#"$REPO_ROOT"/})"
    for k in "${SENTINEL_KEYS[@]}"; do
      v=${SENTINEL_VALUES[$k]}
      if [[ $k == down-after-milliseconds && $v != "$DOWN_AFTER" ]]; then
        echo "# TIMING OVERRIDE (shipped $v)"
        v=$DOWN_AFTER
      fi
      echo "sentinel $k $MASTER_NAME $v"
    done
  } >"$(node_conf "$node")"
}

# Print the last lines of a node's log to stderr (on failure).
show_log_tail() {
  local f
  f=$(node_logfile "$1")
  if [[ -f $f ]]; then
    log "last lines of $f:"
    tail -n 15 "$f" >&2 || true
  fi
}

start_node() {
  local node=$1 conf
  local -a in_ns=()
  conf=$(node_conf "$node")
  rm -f "$(node_pidfile "$node")"
  if ((${#NODE_NETNS[@]})); then
    in_ns=(ip netns exec "${NODE_NETNS[$(node_index "$node")]}")
  fi
  case $(node_kind "$node") in
    redis) "${in_ns[@]}" redis-server "$conf" || { show_log_tail "$node"; die "redis-server $conf failed"; } ;;
    sentinel) "${in_ns[@]}" redis-sentinel "$conf" || { show_log_tail "$node"; die "redis-sentinel $conf failed"; } ;;
  esac
}

# Wait until NODE has written its pidfile and answers PING.
wait_node_up() {
  local node=$1 port i reply
  port=$(node_port "$node")
  for ((i = 0; i < 100; i++)); do
    if node_alive "$node"; then
      if [[ $(node_kind "$node") == redis ]]; then
        reply=$(rcli "$port" PING 2>/dev/null) || reply=""
      else
        reply=$(scli "$port" PING 2>/dev/null) || reply=""
      fi
      [[ $reply == PONG ]] && return 0
    fi
    sleep 0.1
  done
  show_log_tail "$node"
  die "$node (port $port) did not come up within 10 s"
}

# value of FIELD in "field:value" INFO output on stdin
info_field() {
  tr -d '\r' | awk -F: -v k="$1" '$1 == k { print $2; exit }'
}

# Master has both replicas online and both replicas report a live link.
replication_ready() {
  local n
  n=$(rcli "$(node_port redis-0)" INFO replication 2>/dev/null | info_field connected_slaves) || return 1
  [[ $n == 2 ]] || return 1
  for node in redis-1 redis-2; do
    [[ $(rcli "$(node_port "$node")" INFO replication 2>/dev/null | info_field master_link_status) == up ]] ||
      return 1
  done
}

# One Sentinel sees: master with flags "master", 2 replicas flagged exactly
# "slave", and 2 other Sentinels.
sentinel_ready() {
  local port=$1 out flags nslaves nsent replicas rflags count=0
  out=$(scli "$port" SENTINEL MASTER "$MASTER_NAME" 2>/dev/null) || return 1
  flags=$(awk 'prev == "flags" { print; exit } { prev = $0 }' <<<"$out")
  nslaves=$(awk 'prev == "num-slaves" { print; exit } { prev = $0 }' <<<"$out")
  nsent=$(awk 'prev == "num-other-sentinels" { print; exit } { prev = $0 }' <<<"$out")
  [[ $flags == master && $nslaves == 2 && $nsent == 2 ]] || return 1
  replicas=$(scli "$port" SENTINEL REPLICAS "$MASTER_NAME" 2>/dev/null) || return 1
  while IFS= read -r rflags; do
    [[ $rflags == slave ]] || return 1
    count=$((count + 1))
  done < <(awk 'prev == "flags" { print } { prev = $0 }' <<<"$replicas")
  [[ $count == 2 ]]
}

group_ready() {
  local s
  for s in sentinel-0 sentinel-1 sentinel-2; do
    sentinel_ready "$(node_port "$s")" || return 1
  done
}

# Poll CHECK (a function name) until it succeeds or WAIT_SECS pass.
wait_for() {
  local check=$1 deadline
  deadline=$((SECONDS + WAIT_SECS))
  until "$check"; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 0.2
  done
}

any_node_alive() {
  local node
  for node in "${NODES[@]}"; do
    node_alive "$node" && return 0
  done
  return 1
}

cmd_start() {
  validate_start_options
  ensure_redis_installed
  command -v timeout >/dev/null 2>&1 || die "coreutils 'timeout' is required"

  mkdir -p "$RUN_DIR" || die "cannot create $RUN_DIR"
  RUN_DIR=$(abs_dir "$RUN_DIR")

  # Refuse if a group from this dir is running (with the ports it was started on).
  (
    if load_state; then
      if any_node_alive; then
        die "the group in $RUN_DIR is already running (use '$PROG stop --dir $RUN_DIR')"
      fi
    fi
  )

  if [[ -n $TIMING_OVERRIDE ]]; then
    log "TIMING OVERRIDE $TIMING_OVERRIDE"
  fi

  local node port
  for node in "${NODES[@]}"; do
    port=$(node_port "$node")
    if port_in_use "$(node_host "$node")" "$port"; then
      die "port $port ($node) is already in use on $(node_host "$node"); choose another --base-port"
    fi
  done

  umask 077
  for node in "${NODES[@]}"; do
    mkdir -p "$(node_dir "$node")"
    rm -f "$(node_pidfile "$node")"
  done
  rm -f "$RUN_DIR/env"
  {
    echo "base_port=$BASE_PORT"
    echo "master_name=$MASTER_NAME"
    echo "down_after_ms=$DOWN_AFTER"
    echo "timing_override=$TIMING_OVERRIDE"
    echo "password=$PASSWORD"
    echo "hosts=$HOSTS"
    echo "netns=$NETNS"
    echo "tls=$TLS"
    echo "acl=$ACL"
    echo "key_prefix=$KEY_PREFIX"
  } >"$RUN_DIR/group.state"
  chmod 600 "$RUN_DIR/group.state"

  rm -f "$RUN_DIR/users"
  if ((TLS)); then
    make_certs
  fi
  if ((ACL)); then
    make_passwords
  fi
  for node in redis-0 redis-1 redis-2; do
    write_redis_conf "$node"
  done
  for node in sentinel-0 sentinel-1 sentinel-2; do
    write_sentinel_conf "$node"
  done

  # On any failure from here on, do not leave half a group running.
  trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started"; cmd_stop_quiet; fi' EXIT

  # Data nodes first, then wait for replication, so that each Sentinel's first
  # INFO of the master already lists both replicas (else discovery takes ~10 s).
  for node in redis-0 redis-1 redis-2; do
    start_node "$node"
  done
  for node in redis-0 redis-1 redis-2; do
    wait_node_up "$node"
  done
  if ! wait_for replication_ready; then
    show_log_tail redis-1
    die "replicas did not attach to the master within ${WAIT_SECS} s"
  fi

  for node in sentinel-0 sentinel-1 sentinel-2; do
    start_node "$node"
  done
  for node in sentinel-0 sentinel-1 sentinel-2; do
    wait_node_up "$node"
  done
  local t0=$SECONDS
  if ! wait_for group_ready; then
    for node in sentinel-0 sentinel-1 sentinel-2; do
      show_log_tail "$node"
    done
    die "Sentinels did not converge within ${WAIT_SECS} s (master, 2 replicas, 2 other sentinels each)"
  fi

  local sentinels
  sentinels="$(node_host sentinel-0):$(node_port sentinel-0),$(node_host sentinel-1):$(node_port sentinel-1),$(node_host sentinel-2):$(node_port sentinel-2)"
  {
    echo "# flashsale local Redis Sentinel group ($RUN_DIR) — dev only"
    echo "export FLASHSALE_REDIS_SENTINELS=$sentinels"
    echo "export FLASHSALE_REDIS_MASTER_NAME=$MASTER_NAME"
    if ((ACL)); then
      echo "# the app's users (flashsale-worker has its own: see $RUN_DIR/users)"
      echo "export FLASHSALE_REDIS_USERNAME=flashsale-app"
      echo "export FLASHSALE_REDIS_PASSWORD='${USER_PW[flashsale-app]}'"
      echo "export FLASHSALE_SENTINEL_USERNAME=flashsale-watch"
      echo "export FLASHSALE_SENTINEL_PASSWORD='${USER_PW[flashsale-watch]}'"
    else
      echo "export FLASHSALE_REDIS_PASSWORD='$PASSWORD'"
    fi
    if ((TLS)); then
      echo "export FLASHSALE_REDIS_TLS=true"
      echo "export FLASHSALE_REDIS_TLS_CA_FILE=$RUN_DIR/tls/ca.crt"
      echo "export FLASHSALE_REDIS_TLS_CERT_FILE=$RUN_DIR/tls/client.crt"
      echo "export FLASHSALE_REDIS_TLS_KEY_FILE=$RUN_DIR/tls/client.key"
    fi
  } >"$RUN_DIR/env"
  chmod 600 "$RUN_DIR/env"
  trap - EXIT

  echo "redis group '$MASTER_NAME' running in $RUN_DIR (sentinels converged in $((SECONDS - t0)) s)"
  if [[ -n $TIMING_OVERRIDE ]]; then
    echo "  TIMING OVERRIDE $TIMING_OVERRIDE"
  else
    echo "  settings: as shipped (${SHIPPED_REDIS_CONF#"$REPO_ROOT"/}, ${SHIPPED_SENTINEL#"$REPO_ROOT"/})"
  fi
  for node in "${NODES[@]}"; do
    printf '  %-11s %s:%-5s pid %s\n' "$node" "$(node_host "$node")" "$(node_port "$node")" "$(read_pid "$node")"
  done
  echo "  FLASHSALE_REDIS_SENTINELS=$sentinels"
  echo "  environment (incl. password): . $RUN_DIR/env"
  if [[ $PASSWORD == flashsale-dev ]]; then
    echo "  note: the default password is for local development only"
  fi
}

# ------------------------------------------------------------------- stop ---

# TERM the given nodes' PIDs, wait up to 10 s, then KILL survivors.
stop_nodes() {
  local node pid port i
  local -a pids=() ports=() names=()
  for node in "$@"; do
    pid=$(read_pid "$node") || { rm -f "$(node_pidfile "$node")"; continue; }
    port=$(node_port "$node")
    if pid_is_ours "$pid" "$port"; then
      kill -CONT "$pid" 2>/dev/null || true # a SIGSTOPped node cannot handle TERM
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      ports+=("$port")
      names+=("$node")
    elif [[ -d /proc/$pid ]]; then
      log "$node: pid $pid is not a redis process on port $port any more; not touching it"
    fi
  done
  for ((i = 0; i < 100; i++)); do
    local alive=0 j
    for j in "${!pids[@]}"; do
      pid_is_ours "${pids[$j]}" "${ports[$j]}" && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for j in "${!pids[@]}"; do
    if pid_is_ours "${pids[$j]}" "${ports[$j]}"; then
      log "${names[$j]}: pid ${pids[$j]} ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "${pids[$j]}" 2>/dev/null || true
    fi
  done
  for node in "$@"; do
    rm -f "$(node_pidfile "$node")"
  done
}

cmd_stop_quiet() {
  # Sentinels first, so they do not fail over while the data nodes go down.
  stop_nodes sentinel-0 sentinel-1 sentinel-2
  stop_nodes redis-1 redis-2 redis-0
}

cmd_stop() {
  if [[ ! -d $RUN_DIR ]]; then
    echo "nothing to stop: $RUN_DIR does not exist"
    return 0
  fi
  RUN_DIR=$(abs_dir "$RUN_DIR")
  load_state || true
  cmd_stop_quiet
  echo "redis group in $RUN_DIR stopped"
}

# ----------------------------------------------------------------- status ---

cmd_status() {
  [[ -d $RUN_DIR ]] || die "$RUN_DIR does not exist (group never started?)"
  RUN_DIR=$(abs_dir "$RUN_DIR")
  load_state || die "$RUN_DIR/group.state missing (group never started?)"
  local node port pid alive role all=0 out
  printf '%-11s %-6s %-8s %-6s %s\n' NODE PORT PID ALIVE ROLE
  for node in "${NODES[@]}"; do
    port=$(node_port "$node")
    pid=$(read_pid "$node") || pid=-
    role=-
    if [[ $pid != - ]] && pid_is_ours "$pid" "$port"; then
      alive=yes
      if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == T ]]; then
        role="frozen (SIGSTOP)"
      elif [[ $(node_kind "$node") == redis ]]; then
        out=$(rcli "$port" ROLE 2>/dev/null) || out=""
        role=$(head -n 1 <<<"$out")
        case $role in
          slave) role="replica of $(sed -n '2p;3p' <<<"$out" | paste -sd: -) ($(sed -n '4p' <<<"$out"))" ;;
          master) role="master, $((($(wc -l <<<"$out") - 2) / 3)) replica(s)" ;;
          "") role="no answer" ;;
        esac
      else
        out=$(scli "$port" SENTINEL GET-MASTER-ADDR-BY-NAME "$MASTER_NAME" 2>/dev/null) || out=""
        if [[ -n $out ]]; then
          role="sentinel, sees master $(paste -sd: - <<<"$out")"
        else
          role="sentinel, no answer"
        fi
      fi
    else
      alive=no
      all=3
    fi
    printf '%-11s %-6s %-8s %-6s %s\n' "$node" "$port" "$pid" "$alive" "$role"
  done
  if [[ -n $TIMING_OVERRIDE ]]; then
    echo "TIMING OVERRIDE $TIMING_OVERRIDE"
  fi
  return "$all"
}

# -------------------------------------------------------------------- env ---

cmd_env() {
  [[ -f $RUN_DIR/env ]] || die "$RUN_DIR/env not found (start the group first)"
  cat "$RUN_DIR/env"
}

case $CMD in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
esac
