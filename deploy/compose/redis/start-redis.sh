#!/bin/sh
# Entry of a Redis data node container (image redis:7.2-bookworm).
#   REDIS_ANNOUNCE   this node's name on the compose network (redis1, ...)
#   REDIS_REPLICAOF  "redis1 6379" for the initial replicas; empty for the master
# The password comes from the secret file /run/secrets/redis_password.
# runtime.conf is rewritten at every start, so a restarted node comes back
# in its initial role; the Sentinels reconfigure it within seconds.
set -eu
pw=$(cat /run/secrets/redis_password)
case $pw in *[!A-Za-z0-9._-]*|'') echo "redis password: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
umask 077
{
    echo "include /usr/local/etc/flashsale/redis.conf"
    echo "requirepass $pw"
    echo "masterauth $pw"
    echo "replica-announce-ip ${REDIS_ANNOUNCE:?}"
    if [ -n "${REDIS_REPLICAOF:-}" ]; then echo "replicaof $REDIS_REPLICAOF"; fi
} >/data/runtime.conf
# The image's entrypoint fixes the ownership of /data and drops to user redis.
exec docker-entrypoint.sh redis-server /data/runtime.conf
