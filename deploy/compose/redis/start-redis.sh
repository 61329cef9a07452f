#!/bin/sh
# Entry of a Redis data node container (image redis:7.2-bookworm).
#   REDIS_ANNOUNCE   this node's name on the compose network (redis1, ...)
#   REDIS_REPLICAOF  "redis1 6379" for the initial replicas; empty for the master
# The password comes from the secret file /run/secrets/redis_password.
# runtime.conf is rewritten at every start, so a restarted node comes back
# in its initial role; the Sentinels reconfigure it within seconds.
# The settings every data node shares are deploy/redis/redis-shipped.conf,
# included last. (The paths can be moved with FLASHSALE_ETC,
# FLASHSALE_SHIPPED, REDIS_DATA and REDIS_PASSWORD_FILE: deploy/check.sh runs
# this script outside a container that way.)
set -eu
etc=${FLASHSALE_ETC:-/usr/local/etc/flashsale}
shipped=${FLASHSALE_SHIPPED:-/usr/local/etc/flashsale-shipped}
data=${REDIS_DATA:-/data}
pw=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
case $pw in *[!A-Za-z0-9._-]*|'') echo "redis password: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
[ -r "$shipped/redis-shipped.conf" ] || { echo "$shipped/redis-shipped.conf missing (mount deploy/redis)" >&2; exit 1; }
umask 077
{
    echo "include $etc/redis.conf"
    echo "dir $data"
    echo "requirepass $pw"
    echo "masterauth $pw"
    echo "replica-announce-ip ${REDIS_ANNOUNCE:?}"
    echo "include $shipped/redis-shipped.conf"
    if [ -n "${REDIS_REPLICAOF:-}" ]; then echo "replicaof $REDIS_REPLICAOF"; fi
} >"$data/runtime.conf"
# The image's entrypoint fixes the ownership of /data and drops to user redis.
exec docker-entrypoint.sh redis-server "$data/runtime.conf"
