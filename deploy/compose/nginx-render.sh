#!/bin/sh
# /docker-entrypoint.d/40-flashsale.sh of the web image: renders the flashsale
# site from deploy/nginx/flashsale.conf.tmpl with the container's FLASHSALE_*
# variables before the image's entrypoint starts nginx.
set -eu
rm -f /etc/nginx/conf.d/default.conf
exec /opt/flashsale/nginx/render.sh --out /etc/nginx/conf.d/flashsale.conf
