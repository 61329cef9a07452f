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
    sed -e "s/@@ANNOUNCE@@/${SENTINEL_ANNOUNCE:?}/" -e "s/@@REDIS_PASSWORD@@/$pw/" \
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
mv "$data/sentinel.conf.new" "$data/sentinel.conf"
exec docker-entrypoint.sh redis-server "$data/sentinel.conf" --sentinel
