#!/bin/sh
# Entry of a Sentinel container (image redis:7.2-bookworm).
#   SENTINEL_ANNOUNCE  this Sentinel's name on the compose network
# Writes /data/sentinel.conf from the template only if it does not exist:
# the file is Sentinel's own state afterwards (see sentinel.conf.tmpl).
set -eu
pw=$(cat /run/secrets/redis_password)
case $pw in *[!A-Za-z0-9._-]*|'') echo "redis password: use [A-Za-z0-9._-] only" >&2; exit 1 ;; esac
if [ ! -s /data/sentinel.conf ]; then
    umask 077
    sed -e "s/@@ANNOUNCE@@/${SENTINEL_ANNOUNCE:?}/" -e "s/@@REDIS_PASSWORD@@/$pw/" \
        /usr/local/etc/flashsale/sentinel.conf.tmpl >/data/sentinel.conf
fi
exec docker-entrypoint.sh redis-server /data/sentinel.conf --sentinel
