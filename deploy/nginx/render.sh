#!/usr/bin/env bash
# Renders flashsale.conf.tmpl (beside this script) to stdout or to --out FILE.
#
#   FLASHSALE_UPSTREAMS=127.0.0.1:8081,127.0.0.1:8082 \
#   FLASHSALE_PAGES_DIR=/var/lib/flashsale/pages \
#   deploy/nginx/render.sh --out /etc/nginx/sites-available/flashsale.conf
#
# Variables (defaults in brackets):
#   FLASHSALE_NGINX_LISTEN      [80]            listen address or port
#   FLASHSALE_NGINX_SERVER_NAME [_]
#   FLASHSALE_UPSTREAMS         [127.0.0.1:8081,127.0.0.1:8082]  app instances, comma-separated
#   FLASHSALE_PAGES_DIR         [/var/lib/flashsale/pages]
#   FLASHSALE_STATIC_DIR        [/usr/share/flashsale/static]
#   FLASHSALE_MAX_BODY          [16k]
#   FLASHSALE_PURCHASE_RATE     [5r/s]          per client address
#   FLASHSALE_PURCHASE_BURST    [10]
#   FLASHSALE_PAYMENT_CALLBACK_RATE  [200r/s]   payment callbacks per provider address
#   FLASHSALE_PAYMENT_CALLBACK_BURST [2000]
#   FLASHSALE_PAGE_MAX_AGE      [5]             seconds
#   FLASHSALE_ADMIN_ALLOW       [127.0.0.1/32,::1/128]  who may use /admin: addresses or
#                               CIDRs, comma-separated, or `all`; `none`: nobody (nginx
#                               answers everyone else 403 problem JSON)
#   FLASHSALE_CORS_ORIGINS      []              the app's variable: nginx's own errors on /api
#                               carry CORS headers for these origins
# Needs only bash and sed (it also runs in the nginx container image).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmpl=${FLASHSALE_NGINX_TEMPLATE:-$here/flashsale.conf.tmpl}
out=-
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "render.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

listen=${FLASHSALE_NGINX_LISTEN:-80}
server_name=${FLASHSALE_NGINX_SERVER_NAME:-_}
upstreams=${FLASHSALE_UPSTREAMS:-127.0.0.1:8081,127.0.0.1:8082}
pages=${FLASHSALE_PAGES_DIR:-/var/lib/flashsale/pages}
static=${FLASHSALE_STATIC_DIR:-/usr/share/flashsale/static}
max_body=${FLASHSALE_MAX_BODY:-16k}
rate=${FLASHSALE_PURCHASE_RATE:-5r/s}
burst=${FLASHSALE_PURCHASE_BURST:-10}
pay_rate=${FLASHSALE_PAYMENT_CALLBACK_RATE:-200r/s}
pay_burst=${FLASHSALE_PAYMENT_CALLBACK_BURST:-2000}
max_age=${FLASHSALE_PAGE_MAX_AGE:-5}
admin_allow=${FLASHSALE_ADMIN_ALLOW:-127.0.0.1/32,::1/128}
cors=${FLASHSALE_CORS_ORIGINS:-}

fail() { echo "render.sh: $*" >&2; exit 2; }
# Values end up inside nginx directives: refuse anything that could break out.
for v in "$listen" "$server_name" "$upstreams" "$pages" "$static" "$max_body" "$rate" "$burst" "$pay_rate" "$pay_burst" "$max_age"; do
    case $v in
        *[\;\{\}\'\"\\\|\&\$\#]*|*' '*|'') fail "refusing value '$v' (empty, or has a space or one of ;{}'\"\\|&\$#)" ;;
    esac
done
case $pages in /*) ;; *) fail "FLASHSALE_PAGES_DIR must be absolute" ;; esac
case $static in /*) ;; *) fail "FLASHSALE_STATIC_DIR must be absolute" ;; esac
static=${static%/}

servers=""
IFS=',' read -r -a list <<<"$upstreams"
for u in "${list[@]}"; do
    [ -n "$u" ] || continue
    case $u in *:[0-9]*) ;; *) fail "upstream '$u' is not host:port" ;; esac
    servers+="    server $u max_fails=2 fail_timeout=5s;\\n"
done
[ -n "$servers" ] || fail "FLASHSALE_UPSTREAMS names no instance"

trim() { local v=$1; v=${v#"${v%%[![:space:]]*}"}; printf '%s' "${v%"${v##*[![:space:]]}"}"; }

# /admin: one `allow` per entry (nginx then denies everyone else).
allows=""
if [ "$(trim "$admin_allow")" != none ]; then
    IFS=',' read -r -a list <<<"$admin_allow"
    for a in "${list[@]}"; do
        a=$(trim "$a")
        [ -n "$a" ] || continue
        [[ $a =~ ^(all|[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(/[0-9]{1,3})?)$ ]] \
            || fail "FLASHSALE_ADMIN_ALLOW: '$a' is not an address, a CIDR or all"
        case $allows in *" allow $a;\\n"*) continue ;; esac
        allows+="        allow $a;\\n"
    done
fi
[ -n "$allows" ] || allows="        # no address listed: nobody"

# The app's CORS origins, as the app reads them: comma-separated, case
# ignored, one trailing / and the scheme's default port dropped.
origins=""
IFS=',' read -r -a list <<<"$cors"
for o in "${list[@]}"; do
    o=$(trim "$o")
    [ -n "$o" ] || continue
    o=${o,,}
    o=${o%/}
    case $o in https://*:443) o=${o%:443} ;; http://*:80) o=${o%:80} ;; esac
    [[ $o =~ ^https?://([a-z0-9][a-z0-9.-]*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$ ]] \
        || fail "FLASHSALE_CORS_ORIGINS: '$o' is not an origin like https://shop.example"
    case $origins in *"\"$o\""*) continue ;; esac
    origins+="    \"$o\" \$http_origin;\\n"
done
[ -n "$origins" ] || origins="    # no origin listed"

rendered=$(sed \
    -e "/^[[:space:]]*#/!s|@@UPSTREAM_SERVERS@@|${servers%\\n}|" \
    -e "/^[[:space:]]*#/!s|@@LISTEN@@|$listen|g" \
    -e "/^[[:space:]]*#/!s|@@SERVER_NAME@@|$server_name|g" \
    -e "/^[[:space:]]*#/!s|@@PAGES_DIR@@|$pages|g" \
    -e "/^[[:space:]]*#/!s|@@STATIC_DIR@@|$static|g" \
    -e "/^[[:space:]]*#/!s|@@MAX_BODY@@|$max_body|g" \
    -e "/^[[:space:]]*#/!s|@@PURCHASE_RATE@@|$rate|g" \
    -e "/^[[:space:]]*#/!s|@@PURCHASE_BURST@@|$burst|g" \
    -e "/^[[:space:]]*#/!s|@@PAYMENT_CALLBACK_RATE@@|$pay_rate|g" \
    -e "/^[[:space:]]*#/!s|@@PAYMENT_CALLBACK_BURST@@|$pay_burst|g" \
    -e "/^[[:space:]]*#/!s|@@PAGE_MAX_AGE@@|$max_age|g" \
    -e "/^[[:space:]]*#/!s|@@ADMIN_ALLOW@@|${allows%\\n}|" \
    -e "/^[[:space:]]*#/!s|@@CORS_ORIGINS@@|${origins%\\n}|" \
    "$tmpl")
# Every placeholder outside the comment header must be filled.
if grep -v '^#' <<<"$rendered" | grep -q '@@[A-Z_]*@@'; then
    fail "placeholders left: $(grep -v '^#' <<<"$rendered" | grep -o '@@[A-Z_]*@@' | sort -u | tr '\n' ' ')"
fi
if [ "$out" = - ]; then
    printf '%s\n' "$rendered"
else
    tmp=$(mktemp "$out.XXXXXX")
    printf '%s\n' "$rendered" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$out"
fi
