#!/bin/sh
# Entry of a Redis Cluster node container (image redis:7.2-bookworm) of
# docker-compose.cluster.yml.
#   CLUSTER_ANNOUNCE_IP  this node's fixed address on the compose network
# The password comes from the secret file /run/secrets/redis_password.
# runtime.conf is rewritten at every start; the node's place in the cluster
# (its role, the other nodes, the epochs) is /data/nodes.conf, which Redis
# writes itself and which stays in the node's volume. The settings every
# node shares are deploy/redis/redis-shipped.conf and then
# redis-cluster-shipped.conf, included last, in that order. (The paths can be
# moved with FLASHSALE_ETC, FLASHSALE_SHIPPED, REDIS_DATA and
# REDIS_PASSWORD_FILE: deploy/check.sh runs this script outside a container
# that way.)
set -eu
etc=${FLASHSALE_ETC:-/usr/local/etc/flashsale}
shipped=${FLASHSALE_SHIPPED:-/usr/local/etc/flashsale-shipped}
data=${REDIS_DATA:-/data}
pw=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
case $pw in *[!A-Za-z0-9._-]*|'') echo "redis password: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
for f in redis-shipped.conf redis-cluster-shipped.conf; do
    [ -r "$shipped/$f" ] || { echo "$shipped/$f missing (mount deploy/redis)" >&2; exit 1; }
done
umask 077
{
    echo "include $etc/redis.conf"
    echo "dir $data"
    echo "requirepass $pw"
    echo "masterauth $pw"
    echo "cluster-config-file $data/nodes.conf"
    echo "cluster-announce-ip ${CLUSTER_ANNOUNCE_IP:?}"
    echo "include $shipped/redis-shipped.conf"
    echo "include $shipped/redis-cluster-shipped.conf"
} >"$data/runtime.conf"
# The image's entrypoint fixes the ownership of /data and drops to user redis.
exec docker-entrypoint.sh redis-server "$data/runtime.conf"
