#!/usr/bin/env bash
# redis-cluster.sh — run a local Redis Cluster for flashsale development and
# tests: 3 primaries (1 or 2 with --primaries), each with 1 replica, all on
# 127.0.0.1.
#
# Usage:
#   scripts/redis-cluster.sh start|stop|status|env [options]
#
# Options (each may also come from the environment variable in brackets):
#   --dir RUN_DIR        run directory          [REDIS_CLUSTER_DIR]         ./run/redis-cluster
#   --base-port N        first port             [REDIS_CLUSTER_BASE_PORT]   26500
#   --node-timeout MS    TIMING OVERRIDE of cluster-node-timeout
#                        [REDIS_CLUSTER_NODE_TIMEOUT_MS]   default: the shipped value
#   --password PW        node password          [REDIS_CLUSTER_PASSWORD]    flashsale-dev
#   --wait-secs N        convergence timeout    [REDIS_CLUSTER_WAIT_SECS]   30
#   --primaries N        primaries: 1, 2 or 3, each with one replica     3
#                        (no environment variable: the test kit's clusters
#                        always have 3)
#   --tls                TLS only, on the same ports, the cluster bus and
#                        replication too (tls-cluster, tls-replication); the
#                        certificates are made with openssl in RUN_DIR/tls
#                        (scripts/redis-certs.sh: ca.crt, server.crt/.key,
#                        client.crt/.key)   [REDIS_CLUSTER_TLS=1]   off
#
# The default password "flashsale-dev" is for local development ONLY.
#
# Settings: the cluster runs the settings that deploy/ ships, from the same files:
#   deploy/redis/redis-shipped.conf          every node `include`s it first (by absolute path)
#   deploy/redis/redis-cluster-shipped.conf  then this one, whose values win
# Only the addresses, ports, paths and password are this script's own.
# --node-timeout is the one timing override: when it differs from the shipped
# value, start prints "TIMING OVERRIDE cluster-node-timeout=N (shipped M)"
# and records it in RUN_DIR/cluster.state (timing_override=...). Anything
# measured on such a cluster is not a measurement of the shipped settings.
#
# Port layout (B = base port, P = primaries):
#   redis-N (N = 0..2P-1)  B+N, its cluster bus B+10+N (cluster-port)
# With 3 primaries `redis-cli --cluster create` picks which three are
# primaries and which primary each replica follows. It refuses fewer than 3
# primaries, so with 1 or 2 the script builds the cluster itself: redis-0..
# redis-(P-1) are the primaries, each assigned an equal share of the 16384
# slots (CLUSTER ADDSLOTSRANGE; 1 primary: 0-16383, 2: 0-8191 and
# 8192-16383), every node meets redis-0 (CLUSTER MEET), and redis-(P+i)
# follows redis-i (CLUSTER REPLICATE). `status` shows the roles, failovers
# change them.
#
# Run directory layout:
#   RUN_DIR/cluster.state                ports/timing override of the cluster (0600);
#                                        primaries=P when P is not 3
#   RUN_DIR/env                          FLASHSALE_REDIS_CLUSTER/_PASSWORD exports (0600, holds the password;
#                                        with --tls the FLASHSALE_REDIS_TLS* ones too)
#   RUN_DIR/tls/                         --tls: the certificates
#   RUN_DIR/create.log                   output of `redis-cli --cluster create` (3 primaries)
#                                        or of the script's CLUSTER commands (1 or 2)
#   RUN_DIR/redis-N/redis.conf           config, pidfile redis.pid, logfile redis.log,
#                                        cluster state nodes.conf, data (AOF)
#
# Commands:
#   start   install redis if missing, write configs, start the 2P nodes (six by
#           default), create the cluster (`redis-cli --cluster create …
#           --cluster-replicas 1`; with 1 or 2 primaries see "Port layout"), wait
#           until every node reports cluster_state:ok with all 16384 slots, and
#           CLUSTER SHARDS shows P shards, each with its primary and one
#           replica online (each primary's WAIT 1 answered), write RUN_DIR/env and
#           print a summary. If the cluster in RUN_DIR is already running, says so
#           and exits 0; refuses if only part of it runs or a port is taken.
#           Configs are rewritten on every start; a cluster created before in
#           RUN_DIR starts again from its nodes.conf and AOF (same data, the
#           roles it had), so it keeps its base port and its number of primaries.
#   stop    TERM (then KILL after 10 s) exactly the PIDs in RUN_DIR's pidfiles, after
#           checking /proc/PID/cmdline still names a redis process on that port.
#           Removes the pidfiles. Idempotent.
#   status  per node: port, pid, alive, role (primary with its slots, or the
#           primary it replicates), cluster_state. Exit status 0 if all 2P
#           nodes are alive, 3 otherwise.
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
RUN_DIR=${REDIS_CLUSTER_DIR:-./run/redis-cluster}
BASE_PORT=${REDIS_CLUSTER_BASE_PORT:-26500}
# Empty: the shipped value (deploy/redis/redis-cluster-shipped.conf).
NODE_TIMEOUT=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-}
PASSWORD=${REDIS_CLUSTER_PASSWORD:-flashsale-dev}
WAIT_SECS=${REDIS_CLUSTER_WAIT_SECS:-30}
PRIMARIES=3
TLS=${REDIS_CLUSTER_TLS:-0}

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
    --node-timeout) need_arg "$@"; NODE_TIMEOUT=$2; shift 2 ;;
    --node-timeout=*) NODE_TIMEOUT=${1#*=}; shift ;;
    --password) need_arg "$@"; PASSWORD=$2; shift 2 ;;
    --password=*) PASSWORD=${1#*=}; shift ;;
    --wait-secs) need_arg "$@"; WAIT_SECS=$2; shift 2 ;;
    --wait-secs=*) WAIT_SECS=${1#*=}; shift ;;
    --primaries) need_arg "$@"; PRIMARIES=$2; shift 2 ;;
    --primaries=*) PRIMARIES=${1#*=}; shift ;;
    --tls) TLS=1; shift ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ -n $CMD ]] || { usage >&2; die "missing command (start|stop|status|env)"; }
[[ -n $RUN_DIR ]] || die "--dir must not be empty"
[[ $PRIMARIES =~ ^[123]$ ]] || die "--primaries must be 1, 2 or 3"

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ------------------------------------------------------- shipped settings ---

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SHIPPED_REDIS_CONF=$REPO_ROOT/deploy/redis/redis-shipped.conf
SHIPPED_CLUSTER_CONF=$REPO_ROOT/deploy/redis/redis-cluster-shipped.conf
SHIPPED_NODE_TIMEOUT=""
TIMING_OVERRIDE=""
# Set by load_state: the cluster in RUN_DIR was created (nodes.conf holds it).
CREATED=0

load_shipped_settings() {
  [[ -r $SHIPPED_REDIS_CONF ]] || die "$SHIPPED_REDIS_CONF not found (the shipped data-node settings)"
  [[ -r $SHIPPED_CLUSTER_CONF ]] || die "$SHIPPED_CLUSTER_CONF not found (the shipped cluster settings)"
  SHIPPED_NODE_TIMEOUT=$(awk '$1 == "cluster-node-timeout" { print $2 }' "$SHIPPED_CLUSTER_CONF")
  [[ $SHIPPED_NODE_TIMEOUT =~ ^[0-9]+$ ]] ||
    die "$SHIPPED_CLUSTER_CONF: cluster-node-timeout missing, given twice or not a number"
  [[ $(awk '$1 == "cluster-enabled" { print $2 }' "$SHIPPED_CLUSTER_CONF") == yes ]] ||
    die "$SHIPPED_CLUSTER_CONF: cluster-enabled yes missing"
}

validate_start_options() {
  load_shipped_settings
  [[ $TLS == 0 || $TLS == 1 ]] || die "REDIS_CLUSTER_TLS must be 0 or 1"
  if ((TLS)); then
    command -v openssl >/dev/null 2>&1 || die "--tls needs openssl (apt-get install -y openssl)"
  fi
  is_uint "$BASE_PORT" || die "--base-port must be a number"
  [[ -n $NODE_TIMEOUT ]] || NODE_TIMEOUT=$SHIPPED_NODE_TIMEOUT
  is_uint "$NODE_TIMEOUT" || die "--node-timeout must be a number of milliseconds"
  is_uint "$WAIT_SECS" || die "--wait-secs must be a number of seconds"
  BASE_PORT=$((10#$BASE_PORT))
  NODE_TIMEOUT=$((10#$NODE_TIMEOUT))
  WAIT_SECS=$((10#$WAIT_SECS))
  ((BASE_PORT >= 1024 && BASE_PORT + 15 <= 65535)) || die "--base-port must be in 1024..65520"
  ((NODE_TIMEOUT >= 100)) || die "--node-timeout must be at least 100 ms"
  if ((NODE_TIMEOUT != SHIPPED_NODE_TIMEOUT)); then
    TIMING_OVERRIDE="cluster-node-timeout=$NODE_TIMEOUT (shipped $SHIPPED_NODE_TIMEOUT)"
  fi
  ((WAIT_SECS >= 1)) || die "--wait-secs must be at least 1"
  # Kept simple so it can be written into redis configs and shell files verbatim.
  [[ -n $PASSWORD ]] || die "--password must not be empty"
  [[ $PASSWORD =~ ^[A-Za-z0-9_.,:@%+=/~^!?*#-]+$ ]] ||
    die "--password may only contain letters, digits and _.,:@%+=/~^!?*#-"
}

# Absolute run dir (created on start; other commands need it to exist).
abs_dir() {
  (cd "$1" && pwd -P)
}

# ------------------------------------------------------------ node layout ---

NODES=()
# NODES: redis-0 .. redis-(2P-1); the first P are the primaries a cluster of
# 1 or 2 primaries is built with (and the replica of redis-i is redis-(P+i)).
set_nodes() {
  local i
  NODES=()
  for ((i = 0; i < 2 * PRIMARIES; i++)); do
    NODES+=("redis-$i")
  done
}
set_nodes

node_port() { echo $((BASE_PORT + ${1##*-})); }
node_bus_port() { echo $((BASE_PORT + 10 + ${1##*-})); }
node_dir() { echo "$RUN_DIR/$1"; }
node_conf() { echo "$RUN_DIR/$1/redis.conf"; }
node_pidfile() { echo "$RUN_DIR/$1/redis.pid"; }
node_logfile() { echo "$RUN_DIR/$1/redis.log"; }

# Load BASE_PORT/NODE_TIMEOUT/... of an existing cluster (written by start).
# A state without primaries= is a cluster of 3.
load_state() {
  local f="$RUN_DIR/cluster.state" line k v
  [[ -f $f ]] || return 1
  PRIMARIES=3
  while IFS= read -r line; do
    k=${line%%=*}
    v=${line#*=}
    case $k in
      base_port) BASE_PORT=$v ;;
      node_timeout_ms) NODE_TIMEOUT=$v ;;
      timing_override) TIMING_OVERRIDE=$v ;;
      password) PASSWORD=$v ;;
      created) CREATED=$v ;;
      primaries) PRIMARIES=$v ;;
      tls) TLS=$v ;;
    esac
  done <"$f"
  [[ $PRIMARIES =~ ^[123]$ ]] || die "$f: primaries=$PRIMARIES is not 1, 2 or 3"
  set_nodes
  return 0
}

write_state() {
  {
    echo "base_port=$BASE_PORT"
    echo "node_timeout_ms=$NODE_TIMEOUT"
    echo "timing_override=$TIMING_OVERRIDE"
    echo "password=$PASSWORD"
    echo "created=$CREATED"
    if ((PRIMARIES != 3)); then
      echo "primaries=$PRIMARIES"
    fi
    echo "tls=$TLS"
  } >"$RUN_DIR/cluster.state"
  chmod 600 "$RUN_DIR/cluster.state"
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

# True if PID is alive and its cmdline names a redis process of this cluster on
# PORT. The configs set proc-title-template so that the title reads
# "redis-server 127.0.0.1:PORT [cluster] /RUN_DIR/redis-N/redis.conf".
pid_is_ours() {
  local pid=$1 port=$2 cmd
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *redis-server* ]] || return 1
  [[ $cmd == *":$port "* && $cmd == *"$RUN_DIR/"* ]] || return 1
  # A zombie or dying process has no cmdline worth trusting.
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

node_alive() {
  local pid
  pid=$(read_pid "$1") || return 1
  pid_is_ours "$pid" "$(node_port "$1")"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# shellcheck source=scripts/redis-certs.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis-certs.sh"

# redis-cli's TLS options (with --tls: the client certificate of RUN_DIR/tls).
TLS_CLI=()
set_tls_cli() {
  TLS_CLI=()
  if ((TLS)); then
    TLS_CLI=(--tls --cacert "$RUN_DIR/tls/ca.crt" --cert "$RUN_DIR/tls/client.crt" --key "$RUN_DIR/tls/client.key")
  fi
}

# redis-cli against a node (authenticated via env, bounded by timeout).
rcli() {
  local port=$1
  shift
  set_tls_cli
  REDISCLI_AUTH=$PASSWORD timeout 3 redis-cli --no-auth-warning "${TLS_CLI[@]}" -h 127.0.0.1 -p "$port" "$@"
}

# ------------------------------------------------------------------ start ---

ensure_redis_installed() {
  local missing=0 b
  for b in redis-server redis-cli; do
    command -v "$b" >/dev/null 2>&1 || missing=1
  done
  ((missing)) || return 0
  log "redis-server/redis-cli missing; installing with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install redis-server and redis-tools yourself"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install redis-server redis-tools yourself"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update ||
    die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools ||
    die "apt-get install redis-server redis-tools failed"
  for b in redis-server redis-cli; do
    command -v "$b" >/dev/null 2>&1 || die "$b still missing after apt-get install"
  done
}

write_redis_conf() {
  local node=$1 port dir
  port=$(node_port "$node")
  dir=$(node_dir "$node")
  {
    echo "# generated by $PROG — rewritten on every start"
    echo "# This node's own lines; every other setting is the shipped one (includes below)."
    echo "port $port"
    echo "bind 127.0.0.1"
    echo "protected-mode no"
    echo "dir \"$dir\""
    echo "daemonize yes"
    echo "pidfile \"$(node_pidfile "$node")\""
    echo "logfile \"$(node_logfile "$node")\""
    echo "proc-title-template \"{title} {listen-addr} {server-mode} {config-file}\""
    echo "requirepass \"$PASSWORD\""
    echo "masterauth \"$PASSWORD\""
    echo "cluster-config-file \"$dir/nodes.conf\""
    echo "cluster-port $(node_bus_port "$node")"
    if ((TLS)); then
      redis_tls_conf "$RUN_DIR/tls" "$port"
      echo "tls-cluster yes"
    fi
    echo "include \"$SHIPPED_REDIS_CONF\""
    echo "include \"$SHIPPED_CLUSTER_CONF\""
    if [[ -n $TIMING_OVERRIDE ]]; then
      echo "# TIMING OVERRIDE (shipped $SHIPPED_NODE_TIMEOUT)"
      echo "cluster-node-timeout $NODE_TIMEOUT"
    fi
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
  conf=$(node_conf "$node")
  rm -f "$(node_pidfile "$node")"
  redis-server "$conf" || { show_log_tail "$node"; die "redis-server $conf failed"; }
}

# Wait until NODE has written its pidfile and answers PING.
wait_node_up() {
  local node=$1 port i reply
  port=$(node_port "$node")
  for ((i = 0; i < 100; i++)); do
    if node_alive "$node"; then
      reply=$(rcli "$port" PING 2>/dev/null) || reply=""
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

# CLUSTER SHARDS (as redis-cli prints it: one value per line) on stdin ->
# "SHARDS SLOTS BAD": shards that own slots, the slots they own, and how many
# of them lack an online primary or an online replica.
shards_summary() {
  awk '
    function flush_node() {
      if (role == "") return
      if (health == "online" && role == "master") masters[shard]++
      if (health == "online" && role == "replica") replicas[shard]++
      role = ""; health = ""
    }
    $0 == "slots" && key == "" { flush_node(); shard++; mode = "slots"; have_lo = 0; next }
    $0 == "nodes" && mode == "slots" { mode = "nodes"; next }
    mode == "slots" {
      if (have_lo) { slots[shard] += $0 - lo + 1; have_lo = 0 } else { lo = $0; have_lo = 1 }
      next
    }
    mode == "nodes" {
      if (key == "") { key = $0; if (key == "id") flush_node(); next }
      if (key == "role") role = $0
      if (key == "health") health = $0
      key = ""
    }
    END {
      flush_node()
      for (s = 1; s <= shard; s++) {
        if (slots[s] == 0) continue
        n++; total += slots[s]
        if (masters[s] != 1 || replicas[s] < 1) bad++
      }
      printf "%d %d %d\n", n, total, bad
    }'
}

# CLUSTER SHARDS calls a replica whose replication offset is 0 "loading",
# and a fresh cluster's offsets stay 0 until its first write (or the
# primaries' replication PING, up to 10 s later). A primary at offset 0 gets
# one SET + DEL of a probe key in its own slots, so its replica's offset
# moves; a cluster that has taken any write is not touched.
nudge_replication() {
  local port=$1 offset ranges key slot n r lo hi
  offset=$(rcli "$port" INFO replication 2>/dev/null | info_field master_repl_offset) || return 0
  [[ $offset == 0 ]] || return 0
  # This node's slot ranges ("0-5460 7000"), without migration markers.
  ranges=$(rcli "$port" CLUSTER NODES 2>/dev/null |
    awk '$3 ~ /myself/ { for (i = 9; i <= NF; i++) if ($i !~ /^\[/) print $i }') || return 0
  [[ -n $ranges ]] || return 0
  for ((n = 0; n < 300; n++)); do
    key="redis-cluster.sh:probe:$n"
    slot=$(rcli "$port" CLUSTER KEYSLOT "$key" 2>/dev/null) || return 0
    for r in $ranges; do
      lo=${r%-*}
      hi=${r#*-}
      if ((slot >= lo && slot <= hi)); then
        rcli "$port" SET "$key" 1 >/dev/null 2>&1 || true
        rcli "$port" DEL "$key" >/dev/null 2>&1 || true
        return 0
      fi
    done
  done
}

# Why the cluster is not ready yet (empty when it is): on every node
# cluster_state:ok, all 2P nodes known, 16384 slots ok, its CLUSTER SHARDS P
# shards covering all slots, each with an online primary and an online
# replica; every primary's WAIT 1 answered by its replica.
CLUSTER_WHY=""
cluster_ready() {
  local node port info role acks shards
  for node in "${NODES[@]}"; do
    port=$(node_port "$node")
    role=$(rcli "$port" ROLE 2>/dev/null | head -n 1) || role=""
    if [[ $role == master ]]; then
      nudge_replication "$port"
      acks=$(rcli "$port" WAIT 1 200 2>/dev/null) || acks=""
      if ! [[ $acks =~ ^[0-9]+$ ]] || ((acks < 1)); then
        CLUSTER_WHY="$node: no replica acknowledges (WAIT 1)"
        return 1
      fi
    fi
  done
  for node in "${NODES[@]}"; do
    port=$(node_port "$node")
    info=$(rcli "$port" CLUSTER INFO 2>/dev/null) || info=""
    [[ $(info_field cluster_state <<<"$info") == ok ]] || { CLUSTER_WHY="$node: cluster_state not ok"; return 1; }
    [[ $(info_field cluster_known_nodes <<<"$info") == "${#NODES[@]}" ]] || { CLUSTER_WHY="$node: does not know all ${#NODES[@]} nodes"; return 1; }
    [[ $(info_field cluster_slots_ok <<<"$info") == 16384 ]] || { CLUSTER_WHY="$node: not all 16384 slots ok"; return 1; }
    shards=$(rcli "$port" CLUSTER SHARDS 2>/dev/null | shards_summary) || shards=""
    [[ $shards == "$PRIMARIES 16384 0" ]] ||
      { CLUSTER_WHY="$node: CLUSTER SHARDS (shards, slots, shards without online primary+replica): ${shards:-no answer}"; return 1; }
  done
  CLUSTER_WHY=""
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

alive_count() {
  local node n=0
  for node in "${NODES[@]}"; do
    if node_alive "$node"; then n=$((n + 1)); fi
  done
  echo "$n"
}

seeds() {
  local node out=()
  for node in "${NODES[@]}"; do
    out+=("127.0.0.1:$(node_port "$node")")
  done
  (IFS=,; echo "${out[*]}")
}

print_summary() {
  local node
  if [[ -n $TIMING_OVERRIDE ]]; then
    echo "  TIMING OVERRIDE $TIMING_OVERRIDE"
  else
    echo "  settings: as shipped (${SHIPPED_REDIS_CONF#"$REPO_ROOT"/}, then ${SHIPPED_CLUSTER_CONF#"$REPO_ROOT"/})"
  fi
  for node in "${NODES[@]}"; do
    printf '  %-8s 127.0.0.1:%-5s pid %-8s %s\n' "$node" "$(node_port "$node")" "$(read_pid "$node" || echo -)" "$(node_role "$node")"
  done
  echo "  FLASHSALE_REDIS_CLUSTER=$(seeds)"
  echo "  environment (incl. password): . $RUN_DIR/env"
  if [[ $PASSWORD == flashsale-dev ]]; then
    echo "  note: the default password is for local development only"
  fi
}

# One CLUSTER command on the node on PORT, logged with its reply (stdout:
# RUN_DIR/create.log); fails unless the reply is OK.
cluster_cmd() {
  local port=$1 reply
  shift
  reply=$(rcli "$port" CLUSTER "$@" 2>&1) || reply="${reply:-no answer}"
  echo "127.0.0.1:$port CLUSTER $* -> $reply"
  [[ $reply == OK ]]
}

# Every node knows all 2P nodes (after CLUSTER MEET).
all_nodes_met() {
  local node n
  for node in "${NODES[@]}"; do
    n=$(rcli "$(node_port "$node")" CLUSTER INFO 2>/dev/null | info_field cluster_known_nodes) || n=""
    [[ $n == "${#NODES[@]}" ]] || return 1
  done
}

# A cluster of 1 or 2 primaries (redis-cli --cluster create needs 3): the
# script does what create does. Primaries redis-0..redis-(P-1), each a
# config epoch of its own and an equal share of the slots; every other node
# meets redis-0; once all know each other, redis-(P+i) replicates redis-i.
# Output (every command and its reply) goes to stdout: RUN_DIR/create.log.
create_small_cluster() {
  local i lo hi port id meet_port meet_bus deadline
  for ((i = 0; i < PRIMARIES; i++)); do
    port=$(node_port "redis-$i")
    lo=$((i * 16384 / PRIMARIES))
    hi=$(((i + 1) * 16384 / PRIMARIES - 1))
    cluster_cmd "$port" SET-CONFIG-EPOCH $((i + 1)) || return 1
    cluster_cmd "$port" ADDSLOTSRANGE "$lo" "$hi" || return 1
  done
  meet_port=$(node_port redis-0)
  meet_bus=$(node_bus_port redis-0)
  for ((i = 1; i < ${#NODES[@]}; i++)); do
    cluster_cmd "$(node_port "redis-$i")" MEET 127.0.0.1 "$meet_port" "$meet_bus" || return 1
  done
  if ! wait_for all_nodes_met; then
    echo "not every node knows all ${#NODES[@]} nodes within ${WAIT_SECS} s"
    return 1
  fi
  for ((i = 0; i < PRIMARIES; i++)); do
    id=$(rcli "$(node_port "redis-$i")" CLUSTER MYID 2>/dev/null) || id=""
    [[ $id =~ ^[0-9a-f]{40}$ ]] || { echo "redis-$i: CLUSTER MYID gave '${id}'"; return 1; }
    # Right after the meeting a node may not have this id's role yet: retried.
    deadline=$((SECONDS + WAIT_SECS))
    until cluster_cmd "$(node_port "redis-$((PRIMARIES + i))")" REPLICATE "$id"; do
      ((SECONDS < deadline)) || return 1
      sleep 0.2
    done
  done
}

cmd_start() {
  validate_start_options
  ensure_redis_installed
  command -v timeout >/dev/null 2>&1 || die "coreutils 'timeout' is required"

  mkdir -p "$RUN_DIR" || die "cannot create $RUN_DIR"
  RUN_DIR=$(abs_dir "$RUN_DIR")

  # The cluster of this dir (with the ports and timing it was started on).
  local req_base=$BASE_PORT req_override=$TIMING_OVERRIDE req_timeout=$NODE_TIMEOUT req_password=$PASSWORD
  local req_primaries=$PRIMARIES req_tls=$TLS
  if load_state; then
    local alive
    alive=$(alive_count)
    if ((alive == ${#NODES[@]})); then
      echo "redis cluster in $RUN_DIR is already running; nothing to do"
      if [[ $BASE_PORT != "$req_base" || $TIMING_OVERRIDE != "$req_override" ]]; then
        echo "  (this call's --base-port/--node-timeout are ignored: stop it first to change them)"
      fi
      if ((PRIMARIES != req_primaries)); then
        echo "  (it was started with --primaries $PRIMARIES; this call's --primaries $req_primaries is ignored)"
      fi
      print_summary
      return 0
    fi
    ((alive == 0)) ||
      die "the cluster in $RUN_DIR is partly running ($alive of ${#NODES[@]} nodes; see '$PROG status --dir $RUN_DIR'); stop it first"
    if ((CREATED)) && [[ $BASE_PORT != "$req_base" ]]; then
      die "the cluster in $RUN_DIR was created on base port $BASE_PORT (its nodes.conf names those ports); start it with --base-port $BASE_PORT, or remove $RUN_DIR for a new one"
    fi
    if ((CREATED && TLS != req_tls)); then
      die "the cluster in $RUN_DIR was created $( ((TLS)) && echo with || echo without) --tls; start it so, or remove $RUN_DIR for a new one"
    fi
    if ((CREATED && PRIMARIES != req_primaries)); then
      die "the cluster in $RUN_DIR was created with --primaries $PRIMARIES; start it with --primaries $PRIMARIES, or remove $RUN_DIR for a new one"
    fi
  fi
  BASE_PORT=$req_base
  TIMING_OVERRIDE=$req_override
  NODE_TIMEOUT=$req_timeout
  PASSWORD=$req_password
  PRIMARIES=$req_primaries
  TLS=$req_tls
  set_nodes

  if [[ -n $TIMING_OVERRIDE ]]; then
    log "TIMING OVERRIDE $TIMING_OVERRIDE"
  fi

  local node port
  for node in "${NODES[@]}"; do
    for port in "$(node_port "$node")" "$(node_bus_port "$node")"; do
      if port_in_use "$port"; then
        die "port $port ($node) is already in use on 127.0.0.1; choose another --base-port"
      fi
    done
  done

  umask 077
  for node in "${NODES[@]}"; do
    mkdir -p "$(node_dir "$node")"
    rm -f "$(node_pidfile "$node")"
    if ((!CREATED)); then
      # A cluster is created from empty nodes: drop what a failed start left.
      rm -rf "$(node_dir "$node")/nodes.conf" "$(node_dir "$node")/appendonlydir" "$(node_dir "$node")/dump.rdb"
    fi
  done
  rm -f "$RUN_DIR/env"
  write_state
  if ((TLS)) && [[ ! -f $RUN_DIR/tls/ca.crt ]]; then
    make_redis_certs "$RUN_DIR/tls"
  fi

  for node in "${NODES[@]}"; do
    write_redis_conf "$node"
  done

  # On any failure from here on, do not leave half a cluster running.
  trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started"; cmd_stop_quiet; fi' EXIT

  local t0=$SECONDS
  for node in "${NODES[@]}"; do
    start_node "$node"
  done
  for node in "${NODES[@]}"; do
    wait_node_up "$node"
  done

  if ((!CREATED && PRIMARIES == 3)); then
    local addrs=()
    for node in "${NODES[@]}"; do
      addrs+=("127.0.0.1:$(node_port "$node")")
    done
    set_tls_cli
    if ! REDISCLI_AUTH=$PASSWORD timeout "$WAIT_SECS" redis-cli --no-auth-warning "${TLS_CLI[@]}" \
      --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
      >"$RUN_DIR/create.log" 2>&1; then
      log "last lines of $RUN_DIR/create.log:"
      tail -n 20 "$RUN_DIR/create.log" >&2 || true
      die "redis-cli --cluster create failed"
    fi
    CREATED=1
    write_state
  elif ((!CREATED)); then
    if ! create_small_cluster >"$RUN_DIR/create.log" 2>&1; then
      log "last lines of $RUN_DIR/create.log:"
      tail -n 20 "$RUN_DIR/create.log" >&2 || true
      die "creating the cluster of $PRIMARIES primaries failed"
    fi
    CREATED=1
    write_state
  fi

  if ! wait_for cluster_ready; then
    for node in "${NODES[@]}"; do
      show_log_tail "$node"
    done
    die "cluster not ready within ${WAIT_SECS} s: $CLUSTER_WHY"
  fi

  {
    echo "# flashsale local Redis Cluster ($RUN_DIR) — dev only"
    echo "export FLASHSALE_REDIS_CLUSTER=$(seeds)"
    echo "export FLASHSALE_REDIS_PASSWORD='$PASSWORD'"
    if ((TLS)); then
      echo "export FLASHSALE_REDIS_TLS=true"
      echo "export FLASHSALE_REDIS_TLS_CA_FILE=$RUN_DIR/tls/ca.crt"
      echo "export FLASHSALE_REDIS_TLS_CERT_FILE=$RUN_DIR/tls/client.crt"
      echo "export FLASHSALE_REDIS_TLS_KEY_FILE=$RUN_DIR/tls/client.key"
    fi
  } >"$RUN_DIR/env"
  chmod 600 "$RUN_DIR/env"
  trap - EXIT

  echo "redis cluster running in $RUN_DIR (ready in $((SECONDS - t0)) s)"
  print_summary
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
  # All at once: no node outlives the others long enough to start a failover.
  stop_nodes "${NODES[@]}"
}

cmd_stop() {
  if [[ ! -d $RUN_DIR ]]; then
    echo "nothing to stop: $RUN_DIR does not exist"
    return 0
  fi
  RUN_DIR=$(abs_dir "$RUN_DIR")
  load_state || true
  cmd_stop_quiet
  echo "redis cluster in $RUN_DIR stopped"
}

# ----------------------------------------------------------------- status ---

# One node's role as it reports it: "primary, slots 0-5460", "replica of
# 127.0.0.1:PORT (link up)", plus its cluster_state.
node_role() {
  local node=$1 port pid out role state slots
  port=$(node_port "$node")
  pid=$(read_pid "$node") || { echo "-"; return; }
  pid_is_ours "$pid" "$port" || { echo "-"; return; }
  if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == T ]]; then
    echo "frozen (SIGSTOP)"
    return
  fi
  out=$(rcli "$port" ROLE 2>/dev/null) || out=""
  role=$(head -n 1 <<<"$out")
  case $role in
    master)
      slots=$(rcli "$port" CLUSTER NODES 2>/dev/null |
        awk '$3 ~ /myself/ { s = ""; for (i = 9; i <= NF; i++) s = s (s == "" ? "" : ",") $i; print s }') || slots=""
      role="primary, slots ${slots:-none}"
      ;;
    slave)
      role="replica of $(sed -n '2p;3p' <<<"$out" | paste -sd: -) (link $(info_field master_link_status < <(rcli "$port" INFO replication 2>/dev/null)))"
      ;;
    "")
      echo "no answer"
      return
      ;;
  esac
  state=$(rcli "$port" CLUSTER INFO 2>/dev/null | info_field cluster_state) || state=""
  echo "$role, cluster_state:${state:-?}"
}

cmd_status() {
  [[ -d $RUN_DIR ]] || die "$RUN_DIR does not exist (cluster never started?)"
  RUN_DIR=$(abs_dir "$RUN_DIR")
  load_state || die "$RUN_DIR/cluster.state missing (cluster never started?)"
  local node port pid alive all=0
  printf '%-8s %-6s %-8s %-6s %s\n' NODE PORT PID ALIVE ROLE
  for node in "${NODES[@]}"; do
    port=$(node_port "$node")
    pid=$(read_pid "$node") || pid=-
    if [[ $pid != - ]] && pid_is_ours "$pid" "$port"; then
      alive=yes
    else
      alive=no
      all=3
    fi
    printf '%-8s %-6s %-8s %-6s %s\n' "$node" "$port" "$pid" "$alive" "$(node_role "$node")"
  done
  if [[ -n $TIMING_OVERRIDE ]]; then
    echo "TIMING OVERRIDE $TIMING_OVERRIDE"
  fi
  return "$all"
}

# -------------------------------------------------------------------- env ---

cmd_env() {
  [[ -f $RUN_DIR/env ]] || die "$RUN_DIR/env not found (start the cluster first)"
  cat "$RUN_DIR/env"
}

case $CMD in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
esac
