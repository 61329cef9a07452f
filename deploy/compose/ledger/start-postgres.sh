#!/bin/sh
# Entry of the ledger container (target `ledger` of deploy/compose/Dockerfile:
# Debian's PostgreSQL 15), run as user postgres.
#   LEDGER_ALLOW  CIDRs (comma-separated) the workers connect from: the
#                 compose network
# The role, its password and the database are the ones the workers' ledger
# URL names (the secret ledger_url, postgres://USER:PASSWORD@HOST:PORT/DB),
# so the two cannot differ. An empty data directory is initialised first.
# At every start, through a server on the local socket only: the role is
# created or its password set again (a new URL in the secret is a password
# rotation), and the database is created, owned by the role (the workers
# create their schema in it). Then pg_hba.conf is written (the superuser on
# the local socket only; the URL's role to its database from LEDGER_ALLOW,
# scram-sha-256; nothing else) and the server started for the network. The
# URL is never printed. (The paths can be moved with PGDATA, LEDGER_URL_FILE,
# POSTGRES_BIN, LEDGER_SOCKET_DIR and LEDGER_PORT: deploy/check.sh runs this
# script outside a container that way.)
set -eu
data=${PGDATA:-/var/lib/postgresql/data}
bin=${POSTGRES_BIN:-/usr/lib/postgresql/15/bin}
sock=${LEDGER_SOCKET_DIR:-/var/run/postgresql}
port=${LEDGER_PORT:-5432}
allow=${LEDGER_ALLOW:-}
case $allow in *[!0-9a-fA-F.:/,]* | '') echo "LEDGER_ALLOW: CIDRs, comma-separated" >&2; exit 1 ;; esac
case $port in *[!0-9]* | '') echo "LEDGER_PORT: a port number" >&2; exit 1 ;; esac
url=$(cat "${LEDGER_URL_FILE:-/run/secrets/ledger_url}")
# USER PASSWORD DATABASE, each of characters that need no quoting or
# percent-encoding anywhere they end up (the host is not this server's
# business: the workers' URL may name another PostgreSQL).
parts=$(printf '%s\n' "$url" | sed -n \
    's#^postgres\(ql\)\{0,1\}://\([a-z_][a-z0-9_]*\):\([A-Za-z0-9._-]\{1,\}\)@[^/@]\{1,\}/\([a-z_][a-z0-9_]*\)$#\2 \3 \4#p')
if [ -z "$parts" ]; then
    echo "ledger_url: not postgres://USER:PASSWORD@HOST:PORT/DATABASE with USER and DATABASE of" \
         "[a-z0-9_] and PASSWORD of [A-Za-z0-9._-] (the value is not shown)" >&2
    exit 1
fi
# shellcheck disable=SC2086 # three words, checked above
set -- $parts
user=$1 pw=$2 db=$3
umask 077
if [ ! -s "$data/PG_VERSION" ]; then
    "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C --auth-local=peer --auth-host=reject >/dev/null
fi
{
    echo "# Written by start-postgres.sh at every start."
    echo "local all postgres peer"
    for cidr in $(echo "$allow" | tr ',' ' '); do
        echo "host $db $user $cidr scram-sha-256"
    done
} >"$data/pg_hba.conf"
"$bin/pg_ctl" -D "$data" -w -t 60 -l "$data/bootstrap.log" \
    -o "-c listen_addresses= -k $sock -p $port" start >/dev/null \
    || { cat "$data/bootstrap.log" >&2; exit 1; }
# On stdin, not in argv: the password never shows in the process list.
if ! "$bin/psql" -X -q -h "$sock" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
\set user '$user'
\set pw '$pw'
\set db '$db'
SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'user', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
then
    "$bin/pg_ctl" -D "$data" -w -m fast stop >/dev/null
    exit 1
fi
"$bin/pg_ctl" -D "$data" -w -m fast stop >/dev/null
exec "$bin/postgres" -D "$data" -k "$sock" -p "$port" -c listen_addresses='*' -c password_encryption=scram-sha-256
