#!/bin/sh
# Entry of a Sentinel container (image redis:7.2-bookworm).
#   SENTINEL_ANNOUNCE  this Sentinel's name on the compose network
# Writes /data/sentinel.conf from the template only if it does not exist:
# the file is Sentinel's own state afterwards (see sentinel.conf.tmpl).
# The tunables are the shipped ones (deploy/redis/sentinel-shipped.properties,
# mounted at /usr/local/etc/flashsale-shipped): at every start their lines
# are replaced in the file, so a changed value reaches an existing Sentinel
# on its next restart and its learned state stays. (The paths can be moved
# with FLASHSALE_ETC, FLASHSALE_SHIPPED, SENTINEL_DATA and
# REDIS_PASSWORD_FILE: deploy/check.sh runs this script outside a container
# that way.)
# TLS and ACL users (docker-compose.secure.yml), as start-redis.sh:
# REDIS_TLS_DIR (TLS only on 26379, to the data nodes too) and
# REDIS_USERS_DIR (the users of deploy/redis/sentinel-users.acl; the data
# nodes watched as flashsale-sentinel, the other Sentinels asked as
# flashsale-peer; the default user gets redis_password). Their lines are
# replaced at every start, like the tunables.
set -eu
etc=${FLASHSALE_ETC:-/usr/local/etc/flashsale}
shipped=${FLASHSALE_SHIPPED:-/usr/local/etc/flashsale-shipped}
data=${SENTINEL_DATA:-/data}
master=mymaster # as in sentinel.conf.tmpl
pw=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
case $pw in *[!A-Za-z0-9._-]*|'') echo "redis password: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
props=$shipped/sentinel-shipped.properties
[ -r "$props" ] || { echo "$props missing (mount deploy/redis)" >&2; exit 1; }
umask 077
if [ ! -s "$data/sentinel.conf" ]; then
    sed -e "s/@@ANNOUNCE@@/${SENTINEL_ANNOUNCE:?}/" \
        "$etc/sentinel.conf.tmpl" >"$data/sentinel.conf"
fi
cp "$data/sentinel.conf" "$data/sentinel.conf.new"
while IFS= read -r line || [ -n "$line" ]; do
    case $line in '' | '#'*) continue ;; esac
    key=${line%%=*}
    value=${line#*=}
    case $key$value in *[!a-z0-9-]* | '') echo "$props: bad line: $line" >&2; exit 1 ;; esac
    sed -i -e "/^sentinel $key $master /d" "$data/sentinel.conf.new"
    echo "sentinel $key $master $value" >>"$data/sentinel.conf.new"
done <"$props"
# The TLS and ACL lines: those of an earlier start out, this start's in.
sed -i -e '/^port /d' -e '/^tls-/d' -e '/^user /d' -e '/^requirepass /d' \
    -e '/^sentinel sentinel-user /d' -e '/^sentinel sentinel-pass /d' \
    -e "/^sentinel auth-user $master /d" -e "/^sentinel auth-pass $master /d" "$data/sentinel.conf.new"
user_password() {
    upw=$(cat "$REDIS_USERS_DIR/redis_user_$1" 2>/dev/null) || { echo "no password file redis_user_$1 in $REDIS_USERS_DIR" >&2; exit 1; }
    case $upw in *[!A-Za-z0-9._-]*|'') echo "redis_user_$1: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
    echo "$upw"
}
{
    if [ -n "${REDIS_TLS_DIR:-}" ]; then
        echo "port 0"
        echo "tls-port 26379"
        echo "tls-cert-file $REDIS_TLS_DIR/node.crt"
        echo "tls-key-file $REDIS_TLS_DIR/node.key"
        echo "tls-ca-cert-file $REDIS_TLS_DIR/ca.crt"
        echo "tls-auth-clients yes"
        echo "tls-replication yes"
    else
        echo "port 26379"
    fi
    if [ -n "${REDIS_USERS_DIR:-}" ]; then
        [ -r "$shipped/sentinel-users.acl" ] || { echo "$shipped/sentinel-users.acl missing (mount deploy/redis)" >&2; exit 1; }
        echo "requirepass $pw"
        grep '^user ' "$shipped/sentinel-users.acl" | while read -r _ name rules; do
            echo "user $name reset on >$(user_password "$name") $rules"
        done
        echo "sentinel sentinel-user flashsale-peer"
        echo "sentinel sentinel-pass $(user_password flashsale-peer)"
        echo "sentinel auth-user $master flashsale-sentinel"
        echo "sentinel auth-pass $master $(user_password flashsale-sentinel)"
    else
        echo "sentinel auth-pass $master $pw"
    fi
} >>"$data/sentinel.conf.new"
mv "$data/sentinel.conf.new" "$data/sentinel.conf"
exec docker-entrypoint.sh redis-server "$data/sentinel.conf" --sentinel
