#!/bin/sh
# The one-shot `cluster-init` of docker-compose.cluster.yml (image
# redis:7.2-bookworm): creates the cluster once, from nodes that all run.
#   CLUSTER_NODES   the nodes as IP:PORT (addresses: the nodes meet each
#                   other at what they are given), space-separated, the
#                   three that become primaries first
#   CLUSTER_WAIT_S  how long to wait for the nodes, then for the new cluster
#                   (60)
# Every node empty (it knows only itself, no slot): redis-cli --cluster
# create ... --cluster-replicas 1, then wait for cluster_state:ok on every
# node; exit 0. cluster_state:ok on a node: the cluster is there, exit 0
# without touching it. Anything else (a node that does not answer, a half
# made or failed cluster): exit 1, nothing done. The password comes from
# /run/secrets/redis_password (REDIS_PASSWORD_FILE), handed to redis-cli in
# REDISCLI_AUTH, never on a command line.
set -eu
pw=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
export REDISCLI_AUTH="$pw"
wait_s=${CLUSTER_WAIT_S:-60}
nodes=${CLUSTER_NODES:?}
cli() { node=$1; shift; timeout 5 redis-cli --no-auth-warning -h "${node%:*}" -p "${node##*:}" "$@"; }
info() { cli "$1" CLUSTER INFO 2>/dev/null | tr -d '\r'; }
total=0
for n in $nodes; do
    total=$((total + 1))
    i=0
    until [ "$(cli "$n" PING 2>/dev/null)" = PONG ]; do
        i=$((i + 1))
        [ "$i" -le "$wait_s" ] || { echo "$n does not answer after ${wait_s}s: nothing done" >&2; exit 1; }
        sleep 1
    done
done
ok=0 fresh=0
for n in $nodes; do
    s=$(info "$n")
    if printf '%s\n' "$s" | grep -qx 'cluster_state:ok'; then ok=$((ok + 1)); fi
    if printf '%s\n' "$s" | grep -qx 'cluster_known_nodes:1' && printf '%s\n' "$s" | grep -qx 'cluster_slots_assigned:0'; then
        fresh=$((fresh + 1))
    fi
done
if [ "$ok" -gt 0 ]; then
    echo "cluster_state:ok on $ok of $total nodes: the cluster is there, nothing to create"
    exit 0
fi
if [ "$fresh" -ne "$total" ]; then
    echo "no node reports cluster_state:ok, and only $fresh of $total nodes are empty: nothing done;" \
        "look with redis-cli --cluster check (deploy/README.md, \"Sentinel or Cluster\")" >&2
    exit 1
fi
# shellcheck disable=SC2086 # one argument per node
TERM=dumb timeout "$wait_s" redis-cli --no-auth-warning --cluster create $nodes --cluster-replicas 1 --cluster-yes
for n in $nodes; do
    i=0
    until info "$n" | grep -qx 'cluster_state:ok'; do
        i=$((i + 1))
        [ "$i" -le "$wait_s" ] || { echo "$n: no cluster_state:ok after ${wait_s}s" >&2; exit 1; }
        sleep 1
    done
done
echo "cluster created: cluster_state:ok on all $total nodes"
cli "${nodes%% *}" CLUSTER NODES | tr -d '\r' | awk '{ sub(/@.*/, "", $2); print "  " $2, $3, $9 }'
