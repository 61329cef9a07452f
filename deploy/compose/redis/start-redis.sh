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
# TLS and ACL users (docker-compose.secure.yml):
#   REDIS_TLS_DIR    a directory with ca.crt, node.crt, node.key: TLS only,
#                    on 6379, replication over TLS, clients must present a
#                    certificate of that CA
#   REDIS_USERS_DIR  a directory with redis_user_NAME files (one password
#                    each): the users of deploy/redis/users.acl, keys under
#                    REDIS_KEY_PREFIX (default fs); replicas log in as
#                    flashsale-replica
# The default user keeps the password of redis_password (the operator's).
set -eu
etc=${FLASHSALE_ETC:-/usr/local/etc/flashsale}
shipped=${FLASHSALE_SHIPPED:-/usr/local/etc/flashsale-shipped}
data=${REDIS_DATA:-/data}
pw=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
case $pw in *[!A-Za-z0-9._-]*|'') echo "redis password: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
[ -r "$shipped/redis-shipped.conf" ] || { echo "$shipped/redis-shipped.conf missing (mount deploy/redis)" >&2; exit 1; }
# user_password NAME: the password of ACL user NAME from REDIS_USERS_DIR.
user_password() {
    upw=$(cat "$REDIS_USERS_DIR/redis_user_$1" 2>/dev/null) || { echo "no password file redis_user_$1 in $REDIS_USERS_DIR" >&2; exit 1; }
    case $upw in *[!A-Za-z0-9._-]*|'') echo "redis_user_$1: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
    echo "$upw"
}
umask 077
{
    echo "include $etc/redis.conf"
    echo "dir $data"
    echo "requirepass $pw"
    if [ -n "${REDIS_USERS_DIR:-}" ]; then
        [ -r "$shipped/users.acl" ] || { echo "$shipped/users.acl missing (mount deploy/redis)" >&2; exit 1; }
        grep '^user ' "$shipped/users.acl" | while read -r _ name rules; do
            echo "user $name reset on >$(user_password "$name") $(echo "$rules" | sed "s/{prefix}/${REDIS_KEY_PREFIX:-fs}/g")"
        done
        echo "masteruser flashsale-replica"
        echo "masterauth $(user_password flashsale-replica)"
    else
        echo "masterauth $pw"
    fi
    if [ -n "${REDIS_TLS_DIR:-}" ]; then
        echo "port 0"
        echo "tls-port 6379"
        echo "tls-cert-file $REDIS_TLS_DIR/node.crt"
        echo "tls-key-file $REDIS_TLS_DIR/node.key"
        echo "tls-ca-cert-file $REDIS_TLS_DIR/ca.crt"
        echo "tls-auth-clients yes"
        echo "tls-replication yes"
    fi
    echo "replica-announce-ip ${REDIS_ANNOUNCE:?}"
    echo "include $shipped/redis-shipped.conf"
    if [ -n "${REDIS_REPLICAOF:-}" ]; then echo "replicaof $REDIS_REPLICAOF"; fi
} >"$data/runtime.conf"
# The image's entrypoint fixes the ownership of /data and drops to user redis.
exec docker-entrypoint.sh redis-server "$data/runtime.conf"
