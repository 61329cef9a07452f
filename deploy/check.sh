#!/usr/bin/env bash
# deploy/check.sh: the checks of the deployment side (deploy/).
#
#   bash deploy/check.sh            # everything
#   KEEP=1 bash deploy/check.sh     # keep the temp dir (path is printed)
#
# 1. nginx: render the template, `nginx -t`, then run it for real on a free
#    loopback port in front of a small fake upstream and check with curl:
#    pages and assets from disk with their Cache-Control, proxying with
#    X-Forwarded-*/X-Real-IP over upstream keepalive, 413/429/503 JSON bodies
#    (with CORS headers for a listed origin on /api only), /admin only from
#    the allowed addresses (403 problem JSON for the others), the pages' CSP
#    the app's own, a burst of payment callbacks from an address whose
#    purchases are limited passed on (their own zone past its burst).
# 2. systemd: `systemd-analyze verify` of every unit in a temp root (with stub
#    executables where ExecStart points; the cluster node's template unit
#    too), `systemd-analyze security` exposure threshold, and proof that a
#    broken unit fails the same check.
# 3. ansible: --syntax-check, ansible-lint (production profile), an encrypted
#    vault, a --check run and a REAL run of site.yml into a throw-away prefix
#    (deploy_manage_system=false), the rendered files and their modes, the
#    nginx site as ansible renders it == as render.sh renders it (with an
#    /admin allow-list and CORS origins of its own); the flashsale role's
#    shopper-token key sources: none or two stop the run at its assert, a PEM
#    public key and then a JWKS from the controller are installed and named,
#    the HS256 credential gone and unset by a drop-in systemd accepts; the
#    ledger URL and the payment secret as credentials (or taken away), a
#    payment window without its secret (and the reverse, a bad ledger URL)
#    stopped by the role's assert.
# 4. Redis group: the redis.conf/sentinel.conf that ansible rendered are
#    started for real (3 data nodes + 3 Sentinels on free loopback ports, as
#    user nobody): the Sentinels agree on the master and see 2 replicas and
#    each other; WAIT 2 works; a second ansible run against the live group
#    changes nothing; a SENTINEL FAILOVER completes; a third run keeps the
#    Sentinels' learned state and follows the new master. The same with
#    redis_tls and redis_acl (certificates made with openssl): the role's
#    asserts, a real run, the group formed over TLS only with the users of
#    deploy/redis/ (the app's refused FLUSHALL, CONFIG, KEYS, other keys; no
#    ACL denial of what the group itself needs), the app's TLS variables,
#    credentials and the workers' drop-in, an idempotent second run, a
#    SENTINEL FAILOVER.
# 5. Redis Cluster: the playbook with redis_mode=cluster, three hosts on
#    127.0.0.1-3 with two nodes each: its asserts (--check), a real run
#    without the creation (the node configs, the unit, the app's
#    FLASHSALE_REDIS_CLUSTER and hold), the six nodes started from the
#    rendered configs, a run that creates the cluster (cluster_state:ok, the
#    first ports primaries, each replica on another address, CONFIG GET as
#    shipped, WAIT 1 on every shard), the runbook's import of the Sentinel
#    group's keys (redis-cli --cluster import --cluster-copy), a CLUSTER
#    FAILOVER and a run that changes nothing, with a --check run beside it.
# 6. docker compose: `docker-compose config` accepts the files (and rejects
#    broken ones); the topology is complete, nginx at the fixed address the
#    apps trust as their proxy, /admin open to the network's gateway (the
#    host) only, nginx given the apps' CORS origins, the ledger for the
#    workers and the payment settings for the apps (docker-compose.payment.yml);
#    the cluster variant (docker-compose.cluster.yml): six nodes at fixed
#    addresses, cluster-init, the apps on the cluster, every other service
#    as docker-compose.yml's; the containers' Redis scripts (a data node, a
#    Sentinel, six cluster nodes and the cluster's creation) and the
#    ledger's start-postgres.sh run outside a container; with
#    docker-compose.secure.yml on top, TLS nodes with the ACL users and the
#    apps and workers as theirs, and the data node's and Sentinel's scripts
#    with TLS and the users, outside a container too (a TLS-only node). (`docker build`
#    needs a Docker engine, which this machine does not have.)
# 7. the ledger's PostgreSQL: the ansible role postgresql for real, on a
#    throw-away cluster the role creates under a prefix (Debian's
#    pg_createcluster with PG_CLUSTER_CONF_ROOT, a free loopback port; the
#    system's clusters compared before and after): it answers on its address
#    only, the URL's role logs in with its password from a worker and an
#    operator address while a stranger, a wrong password, the superuser and
#    another database are refused; a second run changes nothing; the backup
#    unit's command, run as its user, writes a dump pg_restore --list reads
#    and prunes old ones, the dump restores into a new database that is
#    then swapped in (deploy/README.md's restore); a new password in the
#    URL replaces the old one, and a changed setting and client restart the
#    running server and admit the client; plus a --check run.
#
# Installs what it needs (apt-get, pip) and fails loudly when it cannot.
# Every process it starts is killed by PID on exit. Last line:
# "N passed, M failed"; exit status 1 when anything failed.
set -euo pipefail
export LC_ALL=C.UTF-8

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")
START=$SECONDS
T=$(mktemp -d /tmp/flashsale-deploy-check.XXXXXX)
chmod 0755 "$T"
PIDS=()
PASS=0
FAIL=0
FINISHED=0

# tree PID: the PID and those of its descendants (a background function
# call is a subshell whose child is the real process).
tree() {
    local child
    echo "$1"
    for child in $(pgrep -P "$1" 2>/dev/null); do tree "$child"; done
}
cleanup() {
    local rc=$?
    local pid st all=()
    for pid in "${PIDS[@]}"; do all+=($(tree "$pid")); done
    for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Give them 5 s to stop gracefully (Redis saves on SIGTERM), then KILL.
    for _ in $(seq 25); do
        local alive=0
        for pid in "${all[@]}"; do
            st=$(ps -o stat= -p "$pid" 2>/dev/null) && [[ $st != Z* ]] && alive=1
        done
        [ "$alive" = 1 ] || break
        sleep 0.2
    done
    for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
    if [ "$FINISHED" != 1 ]; then
        echo "check.sh: aborted (exit $rc) after $((SECONDS - START))s" >&2
        echo "$PASS passed, $((FAIL + 1)) failed"
        exit 1
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "check.sh: FATAL: $*" >&2; exit 1; }
section() { printf '\n== %s (at %ss)\n' "$1" "$((SECONDS - START))"; }

# check NAME CMD...: runs CMD in a subshell with errexit; shows its output
# only when it fails, with the command that failed.
check() {
    local name=$1; shift
    local log=$T/check.$((PASS + FAIL)).log rc t0=$SECONDS
    set +e
    ( set -eEuo pipefail; trap 'echo "check.sh: failed: $BASH_COMMAND (line $LINENO)"' ERR; "$@" ) >"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        PASS=$((PASS + 1)); echo "ok   $name [$((SECONDS - t0))s]"
    else
        FAIL=$((FAIL + 1)); echo "FAIL $name (exit $rc) [$((SECONDS - t0))s]"; tail -n 40 "$log" | sed 's/^/     | /'
    fi
}
# Assertion helpers for use inside checks.
expect_eq() { [ "$1" = "$2" ] || { echo "expected [$2], got [$1] ${3:-}"; return 1; }; }
expect_has() { grep -qiE -- "$2" <<<"$1" || { echo "expected /$2/ in:"; echo "$1"; return 1; }; }
expect_not() { ! grep -qiE -- "$2" <<<"$1" || { echo "did not expect /$2/ in:"; echo "$1"; return 1; }; }
# not CMD...: succeeds when CMD fails. Inside a check, write this rather than
# `! CMD`: errexit ignores the status of a negated command, so a `! CMD`
# that is not a check's last command could never fail it.
not() { if "$@"; then return 1; fi; }
# wait_until SECONDS CMD...: polls CMD every 0.3 s.
wait_until() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    until "$@" >"$T/wait.out" 2>&1; do
        [ "$SECONDS" -lt "$end" ] || { echo "timed out after ${limit}s: $*"; cat "$T/wait.out"; return 1; }
        sleep 0.3
    done
}
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }
# free_cluster_ports N IP...: N ports, each free on every IP given together
# with its cluster bus port (port + 10000), from 20000-29999.
free_cluster_ports() {
    python3 - "$@" <<'EOF'
import random, socket, sys
n, ips = int(sys.argv[1]), sys.argv[2:]
def free(port):
    for ip in ips:
        s = socket.socket()
        try:
            s.bind((ip, port))
        except OSError:
            return False
        finally:
            s.close()
    return True
out = []
while len(out) < n:
    p = random.randint(20000, 29999)
    if all(abs(p - q) not in (0, 10000) for q in out) and free(p) and free(p + 10000):
        out.append(p)
print(" ".join(map(str, out)))
EOF
}

# The shipped settings (deploy/redis/), as the running processes report them.
# shipped_redis [FILE...]: "option<TAB>value" per setting of redis-shipped.conf
# (or of the files given, a later one's value winning, as with the includes),
# the value as CONFIG GET answers it (quotes off, sizes in bytes).
shipped_redis() {
    python3 - "${@:-$DEPLOY/redis/redis-shipped.conf}" <<'EOF'
import re, sys
units = {"k": 1000, "kb": 1024, "m": 10**6, "mb": 1024**2, "g": 10**9, "gb": 1024**3}
out = {}
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        toks = [t.strip('"') for t in value.split() if t.strip('"')]
        if len(toks) == 1:
            m = re.fullmatch(r"(\d+)(k|kb|m|mb|g|gb)", toks[0].lower())
            if m:
                toks = [str(int(m.group(1)) * units[m.group(2)])]
        out[key.lower()] = " ".join(toks)
for key, value in out.items():
    print(f"{key}\t{value}")
EOF
}
# shipped_cluster: what a cluster node runs, redis-shipped.conf and then
# redis-cluster-shipped.conf over it.
shipped_cluster() { shipped_redis "$DEPLOY/redis/redis-shipped.conf" "$DEPLOY/redis/redis-cluster-shipped.conf"; }
# shipped_sentinel: "key<TAB>value" per line of sentinel-shipped.properties.
shipped_sentinel() {
    grep -E '^[a-z-]+=[0-9]+$' "$DEPLOY/redis/sentinel-shipped.properties" | tr '=' '\t'
}
# data_node_is_shipped PORT PASSWORD: CONFIG GET of every shipped option.
data_node_is_shipped() {
    local port=$1 pw=$2 k v got bad=0 n=0
    while IFS=$'\t' read -r k v; do
        got=$(REDISCLI_AUTH=$pw timeout 5 redis-cli --no-auth-warning -h 127.0.0.1 -p "$port" CONFIG GET "$k" | sed -n 2p)
        n=$((n + 1))
        [ "$got" = "$v" ] || { echo "data node $port: $k is [$got], shipped [$v]"; bad=1; }
    done < <(shipped_redis)
    [ "$n" -gt 5 ] || { echo "only $n shipped options read"; return 1; }
    [ "$bad" = 1 ] || echo "data node $port: $n options as shipped"
    return $bad
}
# cluster_node_is_shipped HOST PORT PASSWORD: CONFIG GET of every option a
# cluster node is shipped with.
cluster_node_is_shipped() {
    local host=$1 port=$2 pw=$3 k v got bad=0 n=0
    while IFS=$'\t' read -r k v; do
        got=$(REDISCLI_AUTH=$pw timeout 5 redis-cli --no-auth-warning -h "$host" -p "$port" CONFIG GET "$k" | sed -n 2p)
        n=$((n + 1))
        [ "$got" = "$v" ] || { echo "cluster node $host:$port: $k is [$got], shipped [$v]"; bad=1; }
    done < <(shipped_cluster)
    [ "$n" -gt 15 ] || { echo "only $n shipped options read"; return 1; }
    [ "$bad" = 1 ] || echo "cluster node $host:$port: $n options as shipped"
    return $bad
}
# sentinel_is_shipped PORT: SENTINEL MASTER mymaster shows every shipped tunable.
sentinel_is_shipped() {
    local port=$1 k v got live bad=0 n=0
    live=$(timeout 5 redis-cli -h 127.0.0.1 -p "$port" SENTINEL master mymaster)
    while IFS=$'\t' read -r k v; do
        got=$(grep -A1 -x -- "$k" <<<"$live" | sed -n 2p)
        n=$((n + 1))
        [ "$got" = "$v" ] || { echo "sentinel $port: $k is [$got], shipped [$v]"; bad=1; }
    done < <(shipped_sentinel)
    [ "$n" -ge 3 ] || { echo "only $n shipped tunables read"; return 1; }
    [ "$bad" = 1 ] || echo "sentinel $port: $n tunables as shipped"
    return $bad
}

# ---------------------------------------------------------------------------
section "tools"
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
command -v curl >/dev/null || need_apt+=(curl)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v timeout >/dev/null || need_apt+=(coreutils)
command -v pgrep >/dev/null || need_apt+=(procps)
command -v openssl >/dev/null || need_apt+=(openssl)
# The compose ledger's start script is run with Debian's PostgreSQL.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
command -v psql >/dev/null || need_apt+=(postgresql-client)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "installing with apt-get: ${need_apt[*]}"
    # Debian's postinst would start nginx/redis on their default ports; a
    # policy-rc.d that says no keeps them down (removed again if we made it).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >"$T/apt.log" 2>&1 \
        || { tail -n 20 "$T/apt.log"; die "apt-get install ${need_apt[*]} failed"; }
    [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
fi
for t in nginx redis-server redis-cli curl systemd-analyze docker-compose setpriv timeout pgrep python3 psql openssl; do
    command -v "$t" >/dev/null || die "$t is not available and could not be installed"
done
PG_BIN=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 | xargs -r dirname)
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] || die "PostgreSQL's server (initdb, postgres) is not available and could not be installed"

# ansible-core and ansible-lint: those of python3 if they are in the tested
# range, else a venv of our own (kept between runs; pip of Debian's system
# Python is externally managed).
ansible_ok() {
    "$1" - <<'EOF'
from importlib.metadata import version
def v(p): return tuple(int(x) for x in version(p).split(".")[:2])
assert (2, 16) <= v("ansible-core") < (2, 20), version("ansible-core")
assert (25, 0) <= v("ansible-lint") < (27, 0), version("ansible-lint")
EOF
}
PY=$(python3 -c 'import sys; print(sys.executable)')
PYBIN=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if ! ansible_ok "$PY" >/dev/null 2>&1 || ! [ -x "$PYBIN/ansible-playbook" ] || ! [ -x "$PYBIN/ansible-lint" ]; then
    VENV=${FLASHSALE_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/flashsale-deploy-venv}
    if ! { [ -x "$VENV/bin/python" ] && ansible_ok "$VENV/bin/python" >/dev/null 2>&1; }; then
        echo "installing ansible-core and ansible-lint with pip into $VENV"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
                || die "python3-venv could not be installed"
            rm -rf "$VENV"; python3 -m venv "$VENV" || die "python3 -m venv failed"
        fi
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'ansible-core>=2.16,<2.20' 'ansible-lint>=25.0,<27' \
            >"$T/pip.log" 2>&1 || { tail -n 20 "$T/pip.log"; die "pip install ansible-core ansible-lint failed"; }
    fi
    PY=$VENV/bin/python
    PYBIN=$VENV/bin
fi
ansible_ok "$PY" || die "ansible-core/ansible-lint not in the tested version range"
export PATH="$PYBIN:$PATH"
for t in ansible-playbook ansible-lint ansible-vault; do
    [ -x "$PYBIN/$t" ] || die "$t missing after pip install"
done
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///'), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'),"\
     "$(systemd-analyze --version | sed -n 1p), docker-compose $(docker-compose version --short 2>/dev/null),"\
     "$("$PYBIN/ansible-playbook" --version 2>/dev/null | sed -n 1p), ansible-lint $("$PY" -c 'from importlib.metadata import version; print(version("ansible-lint"))')"

# ---------------------------------------------------------------------------
section "nginx"
read -r NGX UP1 UP2 <<<"$(free_ports 3)"
N=$T/nginx
mkdir -p "$N"/{pages/p,static,tmp}
echo '<html><body>index-from-disk</body></html>' >"$N/pages/index.html"
echo '<html><body>sku1-from-disk</body></html>' >"$N/pages/p/SKU1.html"
echo 'body{color:red}' >"$N/static/app.0123abcd.css"
echo 'body{color:blue}' >"$N/static/plain.css"
chmod -R a+rX "$N"

render_test_site() {
    FLASHSALE_NGINX_LISTEN="127.0.0.1:$NGX" FLASHSALE_UPSTREAMS="127.0.0.1:$UP1,127.0.0.1:$UP2" \
    FLASHSALE_PAGES_DIR="$N/pages" FLASHSALE_STATIC_DIR="$N/static" \
    FLASHSALE_PURCHASE_RATE=1r/s FLASHSALE_PURCHASE_BURST=3 FLASHSALE_MAX_BODY=16k \
    FLASHSALE_PAYMENT_CALLBACK_RATE=1r/s FLASHSALE_PAYMENT_CALLBACK_BURST=40 \
    FLASHSALE_CORS_ORIGINS=https://shop.example \
        "$DEPLOY/nginx/render.sh" "$@"
}
# The Content-Security-Policy the app sends with its pages (src/web/middleware.rs).
app_csp() {
    grep -o '"default-src [^"]*"' "$REPO/src/web/middleware.rs" | tr -d '"' | sort -u
}
check_csp_as_the_app() {
    local app; app=$(app_csp)
    [ -n "$app" ] && [ "$(wc -l <<<"$app")" = 1 ] || { echo "the app's CSP: [$app]"; return 1; }
    expect_has "$app" "img-src 'self' data: https:;"
    # Every CSP the template sets is the app's, word for word.
    local ours; ours=$(grep -o 'Content-Security-Policy "[^"]*"' "$DEPLOY/nginx/flashsale.conf.tmpl")
    expect_eq "$(wc -l <<<"$ours")" 2 "CSP lines in the template (/ and /p/)"
    expect_eq "$(sort -u <<<"$ours")" "Content-Security-Policy \"$app\"" "the template's CSP"
}
check "the template's Content-Security-Policy is the app's (images: 'self' data: https:)" check_csp_as_the_app
write_nginx_conf() { # $1 = the site file to include
    cat <<EOF
worker_processes 1;
pid $N/nginx.pid;
error_log $N/error.log warn;
$( [ "$(id -u)" = 0 ] && echo "user root root;" )
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log $N/access.log;
    client_body_temp_path $N/tmp/body;
    proxy_temp_path $N/tmp/proxy;
    fastcgi_temp_path $N/tmp/fastcgi;
    uwsgi_temp_path $N/tmp/uwsgi;
    scgi_temp_path $N/tmp/scgi;
    include $1;
}
EOF
}
check "render.sh renders the template" render_test_site --out "$N/flashsale.conf"
check "render.sh refuses a value that would break out of a directive" \
    bash -c "! FLASHSALE_PAGES_DIR='/x; evil' '$DEPLOY/nginx/render.sh' >/dev/null 2>&1"
check_example_current() {
    diff <(tail -n +2 "$DEPLOY/nginx/flashsale.conf") <(env -u FLASHSALE_UPSTREAMS "$DEPLOY/nginx/render.sh")
}
check "the rendered example deploy/nginx/flashsale.conf is up to date" check_example_current
write_nginx_conf "$N/flashsale.conf" >"$N/nginx.conf"
check "nginx -t accepts the rendered site" nginx -t -q -p "$N/" -e "$N/error.log" -c "$N/nginx.conf"
check_nginx_rejects_broken() {
    sed 's/proxy_pass http:\/\/flashsale_app;/proxy_pass http:\/\/no_such_upstream;/' "$N/flashsale.conf" >"$N/broken.conf"
    write_nginx_conf "$N/broken.conf" >"$N/broken-nginx.conf"
    not nginx -t -q -p "$N/" -e "$N/broken-error.log" -c "$N/broken-nginx.conf"
}
check "nginx -t rejects a broken site (the check is real)" check_nginx_rejects_broken

# A fake `flashsale serve`: HTTP/1.1 with keepalive, echoes what it received.
cat >"$N/upstream.py" <<'EOF'
import http.server, json, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({
            "path": self.path, "method": self.command, "version": self.request_version,
            "peer_port": self.client_address[1],
            "x_forwarded_for": self.headers.get("X-Forwarded-For"),
            "x_real_ip": self.headers.get("X-Real-IP"),
            "x_forwarded_proto": self.headers.get("X-Forwarded-Proto"),
            "connection": self.headers.get("Connection"),
        }).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", "fake")
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self): self.reply(200)
    def do_POST(self): self.reply(202 if self.path.endswith("/purchase") else 200)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Bursts of concurrent requests (the payment callbacks) open new
    # connections at once: socketserver's default backlog of 5 would drop some.
    request_queue_size = 128
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
"$PY" "$N/upstream.py" "$UP1" >"$N/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
nginx -p "$N/" -e "$N/error.log" -c "$N/nginx.conf" -g 'daemon off;' >"$N/nginx.out" 2>&1 &
PIDS+=("$!")
wait_until 10 port_open "$UP1" || die "fake upstream did not start"
wait_until 10 port_open "$NGX" || { cat "$N/error.log" "$N/nginx.out" >&2 || true; die "nginx did not start"; }
BASE="http://127.0.0.1:$NGX"
# fetch URL [curl args...] -> "STATUS\n<headers>\n\n<body>"
fetch() { local u=$1; shift; curl -sS -m 10 -D - -o "$T/body" -H 'Expect:' "$@" "$BASE$u"; echo; cat "$T/body"; }

check_page_index() {
    local r; r=$(fetch /)
    expect_has "$r" '^HTTP/1.1 200'
    expect_has "$r" 'index-from-disk'
    expect_has "$r" '^cache-control: public, max-age=5, must-revalidate'
    expect_has "$r" '^etag: '
    expect_not "$r" '^x-upstream:'
    expect_eq "$(grep -i '^content-security-policy:' <<<"$r" | cut -d' ' -f2- | tr -d '\r')" "$(app_csp)" "CSP of /"
    expect_has "$r" '^x-frame-options: DENY'
    expect_has "$r" '^referrer-policy: same-origin'
}
check "GET / is index.html from disk, short cache + revalidation, the app's security headers" check_page_index
check_page_sku() {
    local r; r=$(fetch /p/SKU1)
    expect_has "$r" '^HTTP/1.1 200'
    expect_has "$r" 'sku1-from-disk'
    expect_has "$r" '^cache-control: public, max-age=5, must-revalidate'
    expect_eq "$(grep -i '^content-security-policy:' <<<"$r" | cut -d' ' -f2- | tr -d '\r')" "$(app_csp)" "CSP of /p/SKU1"
    expect_has "$r" '^x-frame-options: DENY'
    local etag; etag=$(grep -i '^etag:' <<<"$r" | cut -d' ' -f2- | tr -d '\r')
    r=$(fetch /p/SKU1 -H "If-None-Match: $etag")
    expect_has "$r" '^HTTP/1.1 304'
}
check "GET /p/SKU1 is p/SKU1.html from disk; revalidation answers 304" check_page_sku
check_page_fallback() {
    local r; r=$(fetch /p/NOT-RENDERED)
    expect_has "$r" '^x-upstream: fake'
    expect_has "$r" '"path": "/p/NOT-RENDERED"'
    # The app's own headers only: nginx adds none after the fallback.
    expect_not "$r" '^content-security-policy:'
}
check "an unrendered page falls back to the app" check_page_fallback
check_static() {
    local r; r=$(fetch /static/app.0123abcd.css)
    expect_has "$r" '^HTTP/1.1 200'
    expect_has "$r" '^cache-control: public, max-age=31536000, immutable'
    expect_has "$r" 'color:red'
    r=$(fetch '/static/plain.css?v=9f8e7d6c')
    expect_has "$r" '^cache-control: public, max-age=31536000, immutable'
    r=$(fetch /static/plain.css)
    expect_has "$r" '^cache-control: public, max-age=300, must-revalidate'
    r=$(fetch /static/missing.0123abcd.js)
    expect_has "$r" '^x-upstream: fake'
}
check "/static/: fingerprinted assets immutable for a year, others revalidated, missing ones from the app" check_static
check_proxy() {
    local r; r=$(fetch /api/products -H 'X-Forwarded-For: 203.0.113.7')
    expect_has "$r" '^HTTP/1.1 200'
    expect_has "$r" '"x_forwarded_for": "203.0.113.7, 127.0.0.1"'
    expect_has "$r" '"x_real_ip": "127.0.0.1"'
    expect_has "$r" '"x_forwarded_proto": "http"'
    expect_has "$r" '"version": "HTTP/1.1"'
    expect_has "$r" '"connection": null'
    for u in /healthz /readyz /admin/sales/x/audit; do
        r=$(fetch "$u"); expect_has "$r" '^x-upstream: fake'
    done
}
check "/api, /admin, /healthz, /readyz proxied over HTTP/1.1 with X-Forwarded-For/-Proto, X-Real-IP" check_proxy
check_admin_denied() {
    # render.sh's default allow-list is 127.0.0.1/32 and ::1/128: another
    # loopback address is someone else.
    local r u
    for u in /admin/sales /admin '/%61dmin/sales' /api/../admin/sales; do
        r=$(fetch "$u" --path-as-is --interface 127.0.0.2 -H 'Origin: https://shop.example')
        expect_has "$r" '^HTTP/1.1 403'
        expect_has "$r" '^content-type: application/problem\+json'
        expect_has "$r" '"type":"urn:flashsale:error:forbidden","title":"Forbidden","status":403,"error":"forbidden","message":"[^"]+"'
        expect_not "$r" '^x-upstream:'
        expect_not "$r" '^access-control-allow-origin:'
    done
    r=$(fetch /api/products --interface 127.0.0.2)
    expect_has "$r" '^x-upstream: fake'
    r=$(fetch /admin/sales)
    expect_has "$r" '^x-upstream: fake'
}
check "/admin from an address not allowed: 403 problem JSON, never proxied (also /admin, %-escaped, dot segments); /api unaffected" check_admin_denied
check_keepalive() {
    local i ports=""
    for i in 1 2 3 4 5 6 7 8; do
        ports+="$(curl -sS -m 10 "$BASE/api/products" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["peer_port"])') "
    done
    local distinct; distinct=$(tr ' ' '\n' <<<"$ports" | sed '/^$/d' | sort -u | wc -l)
    echo "upstream connections used for 8 requests: $distinct ($ports)"
    [ "$distinct" -le 2 ]
}
check "upstream connections are kept alive (keepalive)" check_keepalive
check_metrics_hidden() {
    local r; r=$(fetch /metrics)
    expect_has "$r" '^HTTP/1.1 404'
    expect_not "$r" '^x-upstream:'
}
check "/metrics is not exposed through the front" check_metrics_hidden
check_413() {
    head -c 20000 /dev/zero | tr '\0' 'x' >"$T/big"
    local r; r=$(fetch /api/sales/SKU1/purchase -X POST -H 'Content-Type: application/json' --data-binary @"$T/big")
    expect_has "$r" '^HTTP/1.1 413'
    expect_has "$r" '^content-type: application/problem\+json'
    expect_has "$r" '"error":"payload_too_large"'
}
check "an oversize body is 413 with a JSON body" check_413
check_429() {
    sleep 1.2   # let the 1r/s bucket drain
    local i codes="" r
    for i in 1 2 3 4 5 6 7 8; do
        codes+="$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
            --data '{"qty":1}' "$BASE/api/sales/SKU1/purchase") "
    done
    echo "purchase burst: $codes"
    expect_has "$codes" '^202 '
    expect_has "$codes" '429'
    r=$(fetch /api/sales/SKU1/purchase -X POST --data '{"qty":1}')
    expect_has "$r" '^HTTP/1.1 429'
    expect_has "$r" '^retry-after: 1'
    expect_has "$r" '^content-type: application/problem\+json'
    expect_has "$r" '"error":"rate_limited","message":"[^"]+"'
    expect_not "$r" '^access-control-allow-origin:'
    # A listed origin can read it (and Retry-After); another cannot.
    r=$(fetch /api/sales/SKU1/purchase -X POST --data '{"qty":1}' -H 'Origin: https://shop.example')
    expect_has "$r" '^HTTP/1.1 429'
    expect_has "$r" '^access-control-allow-origin: https://shop.example'
    expect_has "$r" '^access-control-allow-credentials: true'
    expect_has "$r" '^access-control-expose-headers: Retry-After'
    expect_has "$r" '^vary: Origin'
    r=$(fetch /api/sales/SKU1/purchase -X POST --data '{"qty":1}' -H 'Origin: https://evil.example')
    expect_has "$r" '^HTTP/1.1 429'
    expect_not "$r" '^access-control-'
    # Only POST purchases are limited.
    r=$(fetch /api/sales/SKU1/purchase)
    expect_has "$r" '^x-upstream: fake'
    r=$(fetch /api/products)
    expect_has "$r" '^HTTP/1.1 200'
}
check "a burst of purchases is limited per address: 429 JSON with Retry-After: 1, CORS headers for a listed origin only" check_429
check_payment_callbacks() {
    # The purchase limit of this address is exhausted (check above)...
    local r codes
    r=$(fetch /api/sales/SKU1/purchase -X POST --data '{"qty":1}')
    expect_has "$r" '^HTTP/1.1 429'
    # ...and a burst of 40 callbacks from the same address, 20 at once,
    # reaches the app: the payment location has its own zone (burst 40 here).
    codes=$(seq 40 | xargs -P 20 -I{} curl -sS -m 10 -o /dev/null -w '%{http_code}\n' -X POST \
        -H 'Authorization: Bearer provider-secret' -H 'Content-Type: application/json' \
        --data '{"payment_id":"pay_{}","amount_cents":1999}' "$BASE/api/orders/order{}/payment" | sort | uniq -c | tr -s ' ')
    echo "40 callbacks at once: $codes"
    expect_eq "$codes" " 40 200" "the burst of callbacks"
    r=$(fetch /api/orders/order1/payment -X POST --data '{"payment_id":"pay_1","amount_cents":1999}' \
        -H 'X-Forwarded-For: 203.0.113.9')
    expect_has "$r" '^x-upstream: fake'
    expect_has "$r" '"path": "/api/orders/order1/payment"'
    expect_has "$r" '"x_forwarded_for": "203.0.113.9, 127.0.0.1"'
    # Past its own (generous) burst, the callbacks' zone answers 429 JSON
    # that names them; purchases are still limited by theirs alone.
    local i got=""
    for i in 1 2 3 4 5 6; do
        r=$(fetch /api/orders/order1/payment -X POST --data '{}')
        if grep -q '^HTTP/1.1 429' <<<"$r"; then got=$r; break; fi
    done
    [ -n "$got" ] || { echo "no 429 after the callbacks' burst"; return 1; }
    expect_has "$got" '"error":"rate_limited","message":"too many payment callbacks from this address; retry in a second"'
    expect_has "$got" '^retry-after: 1'
    # (A burst that took over a second on a busy machine has given the
    # purchase zone a token back: the first refusal is the one to read.)
    for i in 1 2 3 4 5 6; do
        r=$(fetch /api/sales/SKU1/purchase -X POST --data '{"qty":1}')
        if grep -q '^HTTP/1.1 429' <<<"$r"; then break; fi
    done
    expect_has "$r" '"message":"too many purchase attempts from this address; retry in a second"'
    # Only POST callbacks are counted, and nothing else under /api/orders/.
    r=$(fetch /api/orders/order1/payment)
    expect_has "$r" '^x-upstream: fake'
    r=$(fetch /api/orders/order1/cancel -X POST --data '{}')
    expect_has "$r" '^x-upstream: fake'
}
check "payment callbacks (POST /api/orders/{id}/payment): a burst from one address passes while its purchases are limited; their own zone past its burst" check_payment_callbacks

kill "$UPSTREAM_PID"; wait "$UPSTREAM_PID" 2>/dev/null || true
wait_until 5 bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$UP1) 2>/dev/null"
check_503() {
    local r; r=$(fetch /api/products)
    expect_has "$r" '^HTTP/1.1 503'
    expect_has "$r" '^content-type: application/problem\+json'
    expect_has "$r" '^retry-after: [0-9]'
    expect_has "$r" '"error":"unavailable","message":"[^"]+"'
    expect_not "$r" '^access-control-allow-origin:'
    r=$(fetch /api/products -H 'Origin: https://SHOP.example')
    expect_has "$r" '^HTTP/1.1 503'
    expect_has "$r" '^access-control-allow-origin: https://SHOP.example'
    expect_has "$r" '^access-control-expose-headers: Retry-After'
    r=$(fetch /p/NOT-RENDERED -H 'Origin: https://shop.example')
    expect_has "$r" '^HTTP/1.1 503'
    expect_not "$r" '^access-control-'
    r=$(fetch /readyz)
    expect_has "$r" '"error":"unavailable"'
    r=$(fetch /)
    expect_has "$r" '^HTTP/1.1 200'
    expect_has "$r" 'index-from-disk'
}
check "no instance reachable: /api answers 503 JSON with Retry-After (CORS for a listed origin, on /api only), pages still served" check_503
check "nginx logged no [emerg]/[alert]" bash -c "! grep -E '\[(emerg|alert|crit)\]' '$N/error.log'"

# ---------------------------------------------------------------------------
section "systemd"
R=$T/sysroot
mkdir -p "$R/usr/lib/systemd" "$R/etc/systemd/system" "$R/usr/local/bin" "$R/usr/bin"
cp -r /usr/lib/systemd/system "$R/usr/lib/systemd/"
for b in usr/local/bin/flashsale usr/local/bin/flashsale-worker usr/bin/redis-server; do
    printf '#!/bin/sh\nexit 0\n' >"$R/$b"; chmod 0755 "$R/$b"
done
cp "$DEPLOY"/systemd/*.service "$DEPLOY"/systemd/*.target "$DEPLOY"/systemd/*.timer "$R/etc/systemd/system/"
# verify_unit UNIT: fails on any message (systemd-analyze exits 0 on mere warnings).
verify_unit() {
    local out
    out=$(cd "$R" && systemd-analyze verify --root="$R" --man=no "$1" 2>&1) || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
}
UNITS="flashsale@8081.service flashsale-worker@9101.service flashsale-render.service flashsale-render.timer flashsale.target flashsale-redis.service flashsale-sentinel.service flashsale-redis-cluster@6379.service"
for u in $UNITS; do
    check "systemd-analyze verify $u" verify_unit "$u"
done
security_ok() {
    local u out
    for u in flashsale@8081.service flashsale-worker@9101.service flashsale-render.service flashsale-redis.service flashsale-sentinel.service flashsale-redis-cluster@6379.service; do
        out=$(systemd-analyze security --offline=yes --root="$R" --threshold=25 "$u" 2>&1 | tail -n 1)
        echo "$out"
        systemd-analyze security --offline=yes --root="$R" --threshold=25 "$u" >/dev/null 2>&1
    done
}
check "systemd-analyze security: exposure <= 2.5 for every service" security_ok
units_declare() {
    local f
    for f in "$DEPLOY"/systemd/*.service; do
        case $f in *render.service) continue ;; esac
        for key in 'Restart=on-failure' 'LimitNOFILE=65536' 'NoNewPrivileges=yes' 'ProtectSystem=strict' \
                   'PrivateTmp=yes' 'ProtectHome=yes' 'KillSignal=SIGTERM' 'TimeoutStopSec=' '^User='; do
            grep -qE "^${key#^}" "$f" || { echo "$f lacks $key"; return 1; }
        done
    done
}
check "every long-running unit has restart, limits, hardening, graceful stop, a user" units_declare
broken_units_fail() {
    sed 's/^LimitNOFILE=65536/LimitNOFILE=lots/' "$R/etc/systemd/system/flashsale@.service" >"$R/etc/systemd/system/broken-a@.service"
    sed 's/^Restart=on-failure/Restart=sometimes/' "$R/etc/systemd/system/flashsale-redis.service" >"$R/etc/systemd/system/broken-b.service"
    sed 's|/usr/local/bin/flashsale-worker|/usr/local/bin/flashsale-wroker|' "$R/etc/systemd/system/flashsale-worker@.service" >"$R/etc/systemd/system/broken-c@.service"
    not verify_unit broken-a@1.service
    not verify_unit broken-b.service
    not verify_unit broken-c@1.service
}
check "a broken unit (bad value, bad key value, missing binary) fails verify (the check is real)" broken_units_fail

# ---------------------------------------------------------------------------
section "ansible"
A=$DEPLOY/ansible
export ANSIBLE_CONFIG=$A/ansible.cfg ANSIBLE_PIPELINING=1 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export ANSIBLE_LOCAL_TEMP=$T/ansible-tmp ANSIBLE_REMOTE_TEMP=$T/ansible-tmp
check "ansible-playbook --syntax-check site.yml" \
    bash -c "cd '$A' && ansible-playbook -i inventory.example.ini --syntax-check site.yml"
# ansible-lint runs in the background beside the playbook runs below (its
# result is checked after them): the machine has 2 cores and this is the
# longest section.
(cd "$A" && ANSIBLE_LINT_NODEPS=1 timeout 150 ansible-lint --offline --nocolor --profile production) >"$T/lint.out" 2>&1 &
LINT_PID=$!
PIDS+=("$LINT_PID")

read -r RP1 RP2 RP3 SP1 SP2 SP3 <<<"$(free_ports 6)"
AT=$T/ans
mkdir -p "$AT/inv/group_vars/all" "$AT/bin" "$AT/static" "$AT/templates"
for b in flashsale flashsale-worker; do printf '#!/bin/sh\necho stub\n' >"$AT/bin/$b"; chmod 0755 "$AT/bin/$b"; done
echo 'body{}' >"$AT/static/app.0123abcd.css"
echo '<html>{{ title }}</html>' >"$AT/templates/index.html"
REDIS_PW=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
JWT=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
ADMIN=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
LEDGER_URL=postgres://flashsale:$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')@192.0.2.31:5432/flashsale
PAYMENT_TOKEN=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
# The app's CORS origins as an operator may write them (case, a default
# port, a trailing slash): the env file passes them on, both nginx renderers
# read them alike.
CORS_ORIGINS='https://Shop.example:443/,http://localhost:3000'
# write_inventory NAME PREFIX
write_inventory() {
    local p=$2
    cat >"$AT/inv/$1.ini" <<EOF
[redis]
redis1 redis_announce_host=127.0.0.1 redis_port=$RP1 redis_sentinel_port=$SP1 deploy_prefix=$p/redis1
redis2 redis_announce_host=127.0.0.1 redis_port=$RP2 redis_sentinel_port=$SP2 deploy_prefix=$p/redis2
redis3 redis_announce_host=127.0.0.1 redis_port=$RP3 redis_sentinel_port=$SP3 deploy_prefix=$p/redis3

[redis:vars]
redis_initial_master=redis1
redis_maxmemory=64mb

[app]
app1 deploy_prefix=$p/app1 flashsale_serve_ports="[18081, 18082]" flashsale_ended_listed_s=600

[worker]
app1 flashsale_worker_ports="[19101, 19102]"

[web]
app1 nginx_listen=127.0.0.1:18080 nginx_admin_allow="['10.1.2.0/24', '192.0.2.7', '::1']" nginx_payment_callback_rate=300r/s nginx_payment_callback_burst=3000

[all:vars]
ansible_connection=local
ansible_python_interpreter=$PY
ansible_become=false
deploy_manage_system=false
flashsale_binary_dir=$AT/bin
flashsale_static_src=$AT/static/
flashsale_templates_src=$AT/templates/
flashsale_cors_origins=$CORS_ORIGINS
EOF
}
write_inventory real "$AT/root"
write_inventory dry "$AT/dryroot"
mkdir -p "$AT/root" "$AT/dryroot"
for h in redis1 redis2 redis3 app1; do mkdir -p "$AT/root/$h/etc" "$AT/root/$h/var/lib"; done
chmod -R 0755 "$AT"
# The vault: the example with real values, encrypted like in production.
sed -e "s/^vault_redis_password: .*/vault_redis_password: $REDIS_PW/" \
    -e "s/^vault_flashsale_jwt_secret: .*/vault_flashsale_jwt_secret: $JWT/" \
    -e "s/^vault_flashsale_admin_token: .*/vault_flashsale_admin_token: $ADMIN/" \
    -e "s|^vault_flashsale_ledger_url: .*|vault_flashsale_ledger_url: $LEDGER_URL|" \
    "$A/group_vars/all/vault.yml.example" >"$AT/inv/group_vars/all/vault.yml"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$AT/vault-pass"
check_vault() {
    ansible-vault encrypt --vault-password-file "$AT/vault-pass" "$AT/inv/group_vars/all/vault.yml"
    head -1 "$AT/inv/group_vars/all/vault.yml" | grep -q '^\$ANSIBLE_VAULT;'
    not grep -q "$REDIS_PW" "$AT/inv/group_vars/all/vault.yml"
    not grep -q "$LEDGER_URL" "$AT/inv/group_vars/all/vault.yml"
}
check "vault.yml.example becomes an encrypted vault (ansible-vault)" check_vault
cp "$AT/inv/group_vars/all/vault.yml" "$T/vault.yml.saved"

# run_playbook NAME INVENTORY [args...]: log in $AT/NAME.log
run_playbook() {
    local name=$1 inv=$2; shift 2
    (cd "$A" && timeout 150 ansible-playbook -i "$AT/inv/$inv.ini" --vault-password-file "$AT/vault-pass" \
        -e redis_serial=3 site.yml "$@") >"$AT/$name.log" 2>&1
    local rc=$?
    echo "ansible run '$name': exit $rc; $(grep -cE '^changed:' "$AT/$name.log" || true) changed results"
    sed -n '/PLAY RECAP/,$p' "$AT/$name.log"
    return $rc
}
recap_changed_zero() { # every host changed=0, failed=0
    local recap; recap=$(sed -n '/PLAY RECAP/,$p' "$AT/$1.log" | grep -E 'ok=')
    [ "$(wc -l <<<"$recap")" -eq 4 ] || { echo "recap: $recap"; return 1; }
    not grep -vE 'changed=0 +unreachable=0 +failed=0' <<<"$recap"
}
# The --check run (into its own empty prefix) runs beside the real run.
run_playbook dry dry --check --limit redis1,app1 >"$AT/dry.out" 2>&1 &
DRY_PID=$!
PIDS+=("$DRY_PID")
check "ansible-playbook (real run) into the throw-away prefix" run_playbook first real
DRY_RC=0; wait "$DRY_PID" || DRY_RC=$?
LINT_RC=0; wait "$LINT_PID" || LINT_RC=$?
check_dry_run() {
    # Limited to one data node and the app host: every role, half the time.
    cat "$AT/dry.out"
    [ "$DRY_RC" = 0 ]
    # Check mode writes nothing...
    [ -z "$(find "$AT/dryroot" -mindepth 1 -print -quit)" ] || { find "$AT/dryroot"; return 1; }
    # ...and reports what it would change.
    grep -q 'changed: \[redis1\]' "$AT/dry.log"
    grep -q 'changed: \[app1\]' "$AT/dry.log"
}
check "ansible-playbook --check into an empty prefix: passes, reports changes, writes nothing" check_dry_run
check "ansible-lint --profile production" bash -c "cat '$T/lint.out'; [ '$LINT_RC' = 0 ]"
P=$AT/root
check_files() {
    mode() { stat -c '%a' "$1"; }
    expect_eq "$(mode "$P/app1/etc/flashsale/flashsale.env")" 600 flashsale.env
    for c in redis_password jwt_secret admin_token ledger_url; do
        expect_eq "$(mode "$P/app1/etc/flashsale/credentials/$c")" 600 "$c"
    done
    expect_eq "$(mode "$P/app1/etc/flashsale/credentials")" 700 credentials/
    expect_eq "$(cat "$P/app1/etc/flashsale/credentials/redis_password")" "$REDIS_PW"
    expect_eq "$(cat "$P/app1/etc/flashsale/credentials/jwt_secret")" "$JWT"
    not grep -q "$REDIS_PW" "$P/app1/etc/flashsale/flashsale.env"
    grep -qx "FLASHSALE_REDIS_SENTINELS=127.0.0.1:$SP1,127.0.0.1:$SP2,127.0.0.1:$SP3" "$P/app1/etc/flashsale/flashsale.env"
    # nginx on the same host: the app believes the X-Forwarded-For of loopback peers.
    grep -qx "FLASHSALE_TRUSTED_PROXIES=127.0.0.0/8,::1/128" "$P/app1/etc/flashsale/flashsale.env"
    grep -qx "FLASHSALE_CORS_ORIGINS=$CORS_ORIGINS" "$P/app1/etc/flashsale/flashsale.env"
    # The HS256 secret is the key source: the unit's credential, no key file,
    # a drop-in that changes nothing.
    not grep -q '^FLASHSALE_JWT_' "$P/app1/etc/flashsale/flashsale.env"
    expect_eq "$(mode "$P/app1/etc/systemd/system/flashsale@.service.d/jwt-key.conf")" 644 jwt-key.conf
    expect_eq "$(grep -v '^#' "$P/app1/etc/systemd/system/flashsale@.service.d/jwt-key.conf")" '[Service]' jwt-key.conf
    # The ledger from the vault: the workers' credential (the unit names
    # it), in no environment; the drop-in changes nothing.
    expect_eq "$(cat "$P/app1/etc/flashsale/credentials/ledger_url")" "$LEDGER_URL"
    not grep -q "$LEDGER_URL" "$P/app1/etc/flashsale/flashsale.env"
    not grep -q '^FLASHSALE_LEDGER' "$P/app1/etc/flashsale/flashsale.env"
    grep -qx 'LoadCredential=ledger_url:/etc/flashsale/credentials/ledger_url' "$P/app1/etc/systemd/system/flashsale-worker@.service"
    expect_eq "$(grep -v '^#' "$P/app1/etc/systemd/system/flashsale-worker@.service.d/ledger.conf")" '[Service]' ledger.conf
    expect_eq "$(mode "$P/app1/etc/systemd/system/flashsale-worker@.service.d/ledger.conf")" 644 ledger.conf
    # No payment step: window 0, no secret, a drop-in that hands none over.
    grep -qx 'FLASHSALE_PAYMENT_WINDOW_S=0' "$P/app1/etc/flashsale/flashsale.env"
    [ ! -e "$P/app1/etc/flashsale/credentials/payment_token" ]
    expect_eq "$(grep -v '^#' "$P/app1/etc/systemd/system/flashsale@.service.d/payment.conf")" '[Service]' payment.conf
    grep -qx 'FLASHSALE_ENDED_LISTED_S=600' "$P/app1/etc/flashsale/flashsale.env"
    for i in 1 2 3; do
        expect_eq "$(mode "$P/redis$i/etc/flashsale-redis/redis.conf")" 640 "redis$i redis.conf"
        expect_eq "$(mode "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf")" 600 "redis$i sentinel.conf"
        grep -q "^requirepass \"$REDIS_PW\"" "$P/redis$i/etc/flashsale-redis/redis.conf"
        # The shipped data-node settings: a copy of deploy/redis/'s, included.
        cmp "$DEPLOY/redis/redis-shipped.conf" "$P/redis$i/etc/flashsale-redis/redis-shipped.conf"
        expect_eq "$(mode "$P/redis$i/etc/flashsale-redis/redis-shipped.conf")" 640 "redis$i redis-shipped.conf"
        grep -qx "include $P/redis$i/etc/flashsale-redis/redis-shipped.conf" "$P/redis$i/etc/flashsale-redis/redis.conf"
        grep -q "^sentinel monitor mymaster 127.0.0.1 $RP1 2" "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf"
        cmp "$DEPLOY/systemd/flashsale-redis.service" "$P/redis$i/etc/systemd/system/flashsale-redis.service"
    done
    not grep -q '^replicaof' "$P/redis1/etc/flashsale-redis/replication.conf"
    grep -qx "replicaof 127.0.0.1 $RP1" "$P/redis2/etc/flashsale-redis/replication.conf"
    for u in flashsale@.service flashsale-worker@.service flashsale.target flashsale-render.service flashsale-render.timer; do
        cmp "$DEPLOY/systemd/$u" "$P/app1/etc/systemd/system/$u"
    done
    [ -x "$P/app1/usr/local/bin/flashsale" ] && [ -x "$P/app1/usr/local/bin/flashsale-worker" ]
    [ -f "$P/app1/usr/share/flashsale/static/app.0123abcd.css" ]
    expect_eq "$(readlink "$P/app1/etc/nginx/sites-enabled/flashsale.conf")" ../sites-available/flashsale.conf
}
check "rendered files: modes (env/credentials 0600), secrets only in credentials, topology, units" check_files
check_nginx_same() {
    FLASHSALE_NGINX_LISTEN=127.0.0.1:18080 FLASHSALE_UPSTREAMS=127.0.0.1:18081,127.0.0.1:18082 \
    FLASHSALE_PAGES_DIR="$P/app1/var/lib/flashsale/pages" FLASHSALE_STATIC_DIR="$P/app1/usr/share/flashsale/static" \
    FLASHSALE_ADMIN_ALLOW='10.1.2.0/24,192.0.2.7,::1' FLASHSALE_CORS_ORIGINS="$CORS_ORIGINS" \
    FLASHSALE_PAYMENT_CALLBACK_RATE=300r/s FLASHSALE_PAYMENT_CALLBACK_BURST=3000 \
        "$DEPLOY/nginx/render.sh" --out "$T/nginx-by-render-sh.conf"
    diff "$T/nginx-by-render-sh.conf" "$P/app1/etc/nginx/sites-available/flashsale.conf"
    grep -qx '        allow 192.0.2.7;' "$T/nginx-by-render-sh.conf"
    grep -qx '    "https://shop.example" $http_origin;' "$T/nginx-by-render-sh.conf"
    # The payment callbacks' zone and location, with the role's values.
    grep -qx 'limit_req_zone $flashsale_payment_key zone=flashsale_payment:1m rate=300r/s;' "$T/nginx-by-render-sh.conf"
    grep -F -A1 -x '    location ~ ^/api/orders/[^/]+/payment$ {' "$T/nginx-by-render-sh.conf" \
        | grep -qx '        limit_req zone=flashsale_payment burst=3000 nodelay;'
    # The pages' CSP as the app's.
    expect_eq "$(grep -Fc "add_header Content-Security-Policy \"$(app_csp)\" always;" "$T/nginx-by-render-sh.conf")" 2 "CSP lines"
    write_nginx_conf "$P/app1/etc/nginx/sites-available/flashsale.conf" >"$T/nginx-ansible.conf"
    nginx -t -q -p "$N/" -e "$N/error.log" -c "$T/nginx-ansible.conf"
}
check "the nginx site rendered by ansible == render.sh's (allow-list, CORS origins too), and nginx -t accepts it" check_nginx_same

# Shopper-token keys from the controller, into a prefix of their own (app1
# only): the role's assert first (check mode, nothing written), then a PEM
# public key, then a JWKS in its place.
K=$AT/keys
KP=$AT/keyroot/app1
mkdir -p "$K" "$KP/etc" "$KP/var/lib"
printf -- '-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcheck-sh-test-key\n-----END PUBLIC KEY-----\n' >"$K/jwt-public.pem"
printf '{"keys":[{"kty":"EC","crv":"P-256","kid":"check-sh","x":"AA","y":"AA"}]}\n' >"$K/jwks.json"
# Without the web group: the nginx role has nothing to do with the keys.
write_inventory keys "$AT/keyroot"
sed -i '/^\[web\]$/,/^$/d' "$AT/inv/keys.ini"
chmod -R a+rX "$AT/keys" "$AT/inv"
check_key_asserts() {
    local rc1=0 rc2=0 rc3=0 rc4=0 rc5=0
    run_playbook nokey dry --check --limit app1 -e flashsale_jwt_secret= >"$AT/nokey.out" 2>&1 &
    local p1=$!
    run_playbook twokeys dry --check --limit app1 -e flashsale_jwt_public_key_src="$K/jwt-public.pem" >"$AT/twokeys.out" 2>&1 &
    local p2=$!
    run_playbook extraenv dry --check --limit app1 \
        -e '{"flashsale_extra_env": {"FLASHSALE_JWT_AUDIENCE": "x", "FLASHSALE_WAIT_TIMEOUT_MS": 250}}' >"$AT/extraenv.out" 2>&1 &
    local p3=$!
    # A payment window without the provider's secret.
    run_playbook window dry --check --limit app1 -e flashsale_payment_window_s=900 >"$AT/window.out" 2>&1 &
    local p4=$!
    # The secret without a window, a ledger URL that is not one, an
    # ended-sale listing out of range: all named at once.
    run_playbook settings dry --check --limit app1 -e flashsale_payment_token=provider-secret \
        -e flashsale_ledger_url=mysql://fs:hunter2@db.example/ledger -e flashsale_ended_listed_s=99999999 >"$AT/settings.out" 2>&1 &
    local p5=$!
    wait "$p1" || rc1=$?
    wait "$p2" || rc2=$?
    wait "$p3" || rc3=$?
    wait "$p4" || rc4=$?
    wait "$p5" || rc5=$?
    cat "$AT/nokey.out" "$AT/twokeys.out" "$AT/extraenv.out" "$AT/window.out" "$AT/settings.out"
    [ "$rc1" != 0 ] && [ "$rc2" != 0 ] && [ "$rc3" != 0 ] && [ "$rc4" != 0 ] && [ "$rc5" != 0 ]
    grep -q 'Choose exactly one source of shopper-token keys: .*set now: none of them\.' "$AT/nokey.log"
    grep -q 'set now: flashsale_jwt_secret and flashsale_jwt_public_key_src\.' "$AT/twokeys.log"
    grep -q 'Set FLASHSALE_JWT_AUDIENCE with the role' "$AT/extraenv.log"
    grep -q 'flashsale_payment_window_s is set but flashsale_payment_token (vault_flashsale_payment_token) is not' "$AT/window.log"
    grep -q 'flashsale_payment_token (vault_flashsale_payment_token) is set but flashsale_payment_window_s is 0' "$AT/settings.log"
    grep -q 'flashsale_ledger_url (vault_flashsale_ledger_url) must be a postgres://user:password@host:port/database URL' "$AT/settings.log"
    grep -q 'flashsale_ended_listed_s must be 0 to 31536000 seconds' "$AT/settings.log"
    not grep -q hunter2 "$AT/settings.log"
    # Each stopped at its assert: the key sources' is the role's first task,
    # flashsale_extra_env's the second, the payment, ledger and listing
    # settings' the third.
    local f n
    for f in nokey twokeys extraenv window settings; do
        case $f in extraenv) n=1 ;; window | settings) n=2 ;; *) n=0 ;; esac
        expect_eq "$(grep -cE '^(ok|changed): \[app1\]' "$AT/$f.log" || true)" "$n" "$f: tasks run before the assert"
    done
    [ -z "$(find "$AT/dryroot" -mindepth 1 -print -quit)" ]
}
check "the flashsale role's asserts stop a run with no key source, two, a key setting in flashsale_extra_env, a payment window without its secret or the secret without a window, a bad ledger URL (not shown)" check_key_asserts
# A PEM public key, then a JWKS in its place: two real runs, in the
# background beside the Redis group's section (mostly waiting), checked
# after it; the state after the first is kept in key-pem/.
key_runs() {
    # With it: the payment step on, no ledger.
    run_playbook pem keys --limit app1 -e flashsale_jwt_secret= -e flashsale_jwt_public_key_src="$K/jwt-public.pem" \
        -e flashsale_jwt_issuer=https://login.shop.example -e flashsale_jwt_audience=flashsale \
        -e flashsale_payment_window_s=900 -e flashsale_payment_token="$PAYMENT_TOKEN" -e flashsale_ledger_url= || return 1
    mkdir -p "$AT/key-pem" && cp -a "$KP/etc" "$AT/key-pem/"
    run_playbook jwks keys --limit app1 -e flashsale_jwt_secret= -e flashsale_jwt_jwks_src="$K/jwks.json"
}
key_runs >"$AT/key-runs.out" 2>&1 &
KEYS_PID=$!
PIDS+=("$KEYS_PID")
check_key_files() {
    cat "$AT/key-runs.out"
    [ "$KEYS_RC" = 0 ]
    local at=$AT/key-pem env drop
    env=$at/etc/flashsale/flashsale.env drop=$at/etc/systemd/system/flashsale@.service.d/jwt-key.conf
    cmp "$K/jwt-public.pem" "$at/etc/flashsale/jwt-public.pem"
    expect_eq "$(stat -c '%a %U' "$at/etc/flashsale/jwt-public.pem")" "644 $(id -un)" jwt-public.pem
    grep -qx 'FLASHSALE_JWT_PUBLIC_KEY_FILE=/etc/flashsale/jwt-public.pem' "$env"
    grep -qx 'FLASHSALE_JWT_ISSUER=https://login.shop.example' "$env"
    grep -qx 'FLASHSALE_JWT_AUDIENCE=flashsale' "$env"
    not grep -q '^FLASHSALE_JWT_JWKS_FILE=' "$env"
    # No HS256 credential, and the unit's variable for it unset.
    [ ! -e "$at/etc/flashsale/credentials/jwt_secret" ]
    [ -s "$at/etc/flashsale/credentials/redis_password" ] && [ -s "$at/etc/flashsale/credentials/admin_token" ]
    grep -qx 'UnsetEnvironment=FLASHSALE_JWT_SECRET_FILE' "$drop"
    grep -qx 'SetCredential=jwt_secret:unused' "$drop"
    # The payment step: the window in flashsale.env, the secret a credential
    # the drop-in hands over; no ledger: no URL, the workers' drop-in takes
    # the unit's credential away.
    grep -qx 'FLASHSALE_PAYMENT_WINDOW_S=900' "$env"
    expect_eq "$(cat "$at/etc/flashsale/credentials/payment_token")" "$PAYMENT_TOKEN"
    expect_eq "$(stat -c '%a' "$at/etc/flashsale/credentials/payment_token")" 600 payment_token
    not grep -rq "$PAYMENT_TOKEN" "$env" "$at/etc/systemd"
    local pay=$at/etc/systemd/system/flashsale@.service.d/payment.conf
    local led=$at/etc/systemd/system/flashsale-worker@.service.d/ledger.conf
    grep -qx 'LoadCredential=payment_token:/etc/flashsale/credentials/payment_token' "$pay"
    grep -qx 'Environment=FLASHSALE_PAYMENT_TOKEN_FILE=%d/payment_token' "$pay"
    [ ! -e "$at/etc/flashsale/credentials/ledger_url" ]
    grep -qx 'UnsetEnvironment=FLASHSALE_LEDGER_URL_FILE' "$led"
    grep -qx 'SetCredential=ledger_url:unused' "$led"
    # systemd takes the units with those drop-ins without a word.
    mkdir -p "$R/etc/systemd/system/flashsale@.service.d" "$R/etc/systemd/system/flashsale-worker@.service.d"
    cp "$drop" "$pay" "$R/etc/systemd/system/flashsale@.service.d/"
    cp "$led" "$R/etc/systemd/system/flashsale-worker@.service.d/"
    verify_unit flashsale@8081.service
    verify_unit flashsale-worker@9101.service
    rm -rf "$R/etc/systemd/system/flashsale@.service.d" "$R/etc/systemd/system/flashsale-worker@.service.d"
    # A JWKS in place of the key: the key file and its settings go.
    env=$KP/etc/flashsale/flashsale.env drop=$KP/etc/systemd/system/flashsale@.service.d/jwt-key.conf
    cmp "$K/jwks.json" "$KP/etc/flashsale/jwks.json"
    expect_eq "$(stat -c '%a' "$KP/etc/flashsale/jwks.json")" 644 jwks.json
    grep -qx 'FLASHSALE_JWT_JWKS_FILE=/etc/flashsale/jwks.json' "$env"
    not grep -qE '^FLASHSALE_JWT_(PUBLIC_KEY_FILE|ISSUER|AUDIENCE)=' "$env"
    [ ! -e "$KP/etc/flashsale/jwt-public.pem" ]
    [ ! -e "$KP/etc/flashsale/credentials/jwt_secret" ]
    grep -qx 'UnsetEnvironment=FLASHSALE_JWT_SECRET_FILE' "$drop"
    # The defaults again: no payment step (its secret removed), the ledger
    # from the vault back.
    grep -qx 'FLASHSALE_PAYMENT_WINDOW_S=0' "$env"
    [ ! -e "$KP/etc/flashsale/credentials/payment_token" ]
    expect_eq "$(grep -v '^#' "$KP/etc/systemd/system/flashsale@.service.d/payment.conf")" '[Service]' payment.conf
    expect_eq "$(cat "$KP/etc/flashsale/credentials/ledger_url")" "$LEDGER_URL"
    expect_eq "$(grep -v '^#' "$KP/etc/systemd/system/flashsale-worker@.service.d/ledger.conf")" '[Service]' ledger.conf
}

# ---------------------------------------------------------------------------
section "redis group from the rendered configs"
# As in production, the data nodes may not write their redis.conf (root-owned,
# group-readable): run them as nobody with the files group nogroup.
for i in 1 2 3; do
    chgrp -R nogroup "$P/redis$i/etc/flashsale-redis"
    chown -R nobody:nogroup "$P/redis$i/var/lib/flashsale-redis" "$P/redis$i/var/lib/flashsale-sentinel"
done
# exec: started with &, the subshell becomes setpriv, which becomes redis, so $! is redis.
as_nobody() { exec setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
for i in 1 2 3; do
    as_nobody redis-server "$P/redis$i/etc/flashsale-redis/redis.conf" >"$T/redis$i.log" 2>&1 &
    PIDS+=("$!")
done
for i in 1 2 3; do
    as_nobody redis-server "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf" --sentinel >"$T/sentinel$i.log" 2>&1 &
    PIDS+=("$!")
done
for p in $RP1 $RP2 $RP3 $SP1 $SP2 $SP3; do
    wait_until 15 port_open "$p" || { tail -n 5 "$T"/redis*.log "$T"/sentinel*.log >&2; die "redis/sentinel on port $p did not start"; }
done
rcli() { REDISCLI_AUTH=$REDIS_PW timeout 5 redis-cli -h 127.0.0.1 "$@"; }
sc() { timeout 5 redis-cli -h 127.0.0.1 -p "$@"; }
# group_formed MASTER_PORT: every Sentinel names it, sees 2 healthy replicas
# and the 2 other Sentinels; the master has 2 connected replicas.
group_formed() {
    local m=$1 s out
    for s in $SP1 $SP2 $SP3; do
        out=$(sc "$s" SENTINEL get-master-addr-by-name mymaster | tr '\n' ' ')
        [ "$out" = "127.0.0.1 $m " ] || { echo "sentinel $s names master [$out]"; return 1; }
        out=$(sc "$s" SENTINEL replicas mymaster | grep -A1 -x flags | grep -cx 'slave' || true)
        [ "$out" = 2 ] || { echo "sentinel $s sees $out healthy replicas"; return 1; }
        out=$(sc "$s" SENTINEL sentinels mymaster | grep -A1 -x flags | grep -cx 'sentinel' || true)
        [ "$out" = 2 ] || { echo "sentinel $s sees $out other sentinels"; return 1; }
        out=$(sc "$s" SENTINEL ckquorum mymaster)
        [[ "$out" == "OK 3 usable"* ]] || { echo "sentinel $s ckquorum: $out"; return 1; }
    done
    out=$(rcli -p "$m" INFO replication | tr -d '\r')
    grep -qx 'connected_slaves:2' <<<"$out" || { echo "master $m: $out"; return 1; }
    [ "$(grep -cE '^slave[0-9]+:.*state=online' <<<"$out")" = 2 ] || { echo "master $m: $out"; return 1; }
}
show_group() {
    local s
    for s in $SP1 $SP2 $SP3; do
        echo "sentinel $s: master $(sc "$s" SENTINEL get-master-addr-by-name mymaster | tr '\n' ' ')," \
             "replicas: $(sc "$s" SENTINEL replicas mymaster | grep -A1 -x flags | grep -vx -- 'flags\|--' | tr '\n' ' ')"
    done
}
check_group() {
    wait_until 40 group_formed "$RP1" || { show_group; return 1; }
    show_group
    rcli -p "$RP1" SET fs:deploy-check ok >/dev/null
    expect_eq "$(rcli -p "$RP1" WAIT 2 2000)" 2 "WAIT 2"
    expect_eq "$(rcli -p "$RP2" GET fs:deploy-check)" ok "replica read"
}
check "3 data nodes + 3 Sentinels form a group: all agree on the master, see 2 replicas, quorum OK, WAIT 2" check_group
check_ansible_shipped() {
    local bad=0 p
    for p in $RP1 $RP2 $RP3; do data_node_is_shipped "$p" "$REDIS_PW" || bad=1; done
    for p in $SP1 $SP2 $SP3; do sentinel_is_shipped "$p" || bad=1; done
    return $bad
}
check "the ansible-rendered group runs deploy/redis/ (CONFIG GET, SENTINEL MASTER)" check_ansible_shipped
check_second_run() {
    run_playbook second real
    recap_changed_zero second
    grep -q 'from the sentinels' "$AT/second.log"
}
check "ansible run against the live group is idempotent (changed=0 everywhere)" check_second_run
md5sum "$P"/redis*/etc/flashsale-redis/redis.conf >"$T/redis-conf.md5"
failover_done() {
    local s
    for s in $SP1 $SP2 $SP3; do
        local addr; addr=$(sc "$s" SENTINEL get-master-addr-by-name mymaster | tr '\n' ' ')
        [ "$addr" != "127.0.0.1 $RP1 " ] || return 1
        [ "$addr" = "$(sc "$SP1" SENTINEL get-master-addr-by-name mymaster | tr '\n' ' ')" ] || return 1
    done
    NEW=$(sc "$SP1" SENTINEL get-master-addr-by-name mymaster | sed -n 2p)
    group_formed "$NEW"
}
check_failover() {
    expect_eq "$(sc "$SP2" SENTINEL FAILOVER mymaster)" OK
    wait_until 45 failover_done || { show_group; return 1; }
    show_group
    NEW=$(sc "$SP1" SENTINEL get-master-addr-by-name mymaster | sed -n 2p)
    echo "$NEW" >"$T/new-master"
    expect_eq "$(rcli -p "$NEW" GET fs:deploy-check)" ok "data survived"
    # Sentinel wrote what it learned into its own file...
    local i
    for i in 1 2 3; do
        grep -q "^sentinel monitor mymaster 127.0.0.1 $NEW 2" "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf"
        [ "$(grep -c '^sentinel known-replica mymaster' "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf")" = 2 ]
    done
    # ...while the data nodes' managed redis.conf stayed as ansible wrote it
    # (their CONFIG REWRITE after REPLICAOF is refused: read-only).
    md5sum -c --quiet "$T/redis-conf.md5"
}
check "SENTINEL FAILOVER: a new master with 2 replicas; Sentinels record it; redis.conf untouched" check_failover
check_third_run() {
    NEW=$(cat "$T/new-master")
    local before; before=$(cat "$P"/redis*/var/lib/flashsale-sentinel/sentinel.conf | md5sum)
    run_playbook third real --limit redis -e redis_sentinel_down_after_ms=4000
    local i
    for i in 1 2 3; do
        # The learned state is still there (the file was not re-rendered)...
        grep -q "^sentinel monitor mymaster 127.0.0.1 $NEW 2" "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf"
        grep -q "^sentinel known-replica mymaster" "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf"
        grep -Eq "^sentinel current-epoch [1-9]" "$P/redis$i/var/lib/flashsale-sentinel/sentinel.conf"
        # ...and the changed tunable reached the running Sentinels (SENTINEL SET).
        local live; live=$(sc "$(eval echo "\$SP$i")" SENTINEL master mymaster)
        grep -A1 -x down-after-milliseconds <<<"$live" | tail -n 1 | grep -x 4000
    done
    grep -q 'Apply changed settings to the running Sentinel' "$AT/third.log"
    # replication.conf follows the new master; redis.conf (restart trigger) did not change.
    md5sum -c --quiet "$T/redis-conf.md5"
    for i in 1 2 3; do
        local port; port=$(eval echo "\$RP$i")
        if [ "$port" = "$NEW" ]; then
            not grep -q '^replicaof' "$P/redis$i/etc/flashsale-redis/replication.conf"
        else
            grep -qx "replicaof 127.0.0.1 $NEW" "$P/redis$i/etc/flashsale-redis/replication.conf"
        fi
    done
    group_formed "$NEW"
    echo "sentinel.conf before/after: $before / $(cat "$P"/redis*/var/lib/flashsale-sentinel/sentinel.conf | md5sum)"
}
check "ansible run after the failover keeps the Sentinels' state, SETs a changed tunable, follows the master" check_third_run
KEYS_RC=0; wait "$KEYS_PID" || KEYS_RC=$?
check "a PEM public key, then a JWKS, from the controller: installed 0644 root, named in flashsale.env, no HS256 credential, unset by a drop-in systemd accepts; the payment secret and the ledger URL as credentials, or taken away, likewise" check_key_files

# ---------------------------------------------------------------------------
section "redis group with TLS and ACL users (redis_tls, redis_acl)"
# The playbook with redis_tls and redis_acl for real into a prefix of its
# own: certificates made with openssl, the users' passwords as extra vars;
# the six rendered processes started as nobody; the group forms over TLS
# only, the users of deploy/redis/ are there and the app's cannot do what it
# must not; the app's variables, credentials and the workers' drop-in; a
# second run (which asks the Sentinels over TLS) changes nothing; a
# SENTINEL FAILOVER completes with no ACL denial anywhere.
read -r XRP1 XRP2 XRP3 XSP1 XSP2 XSP3 <<<"$(free_ports 6)"
X=$AT/secure
XP=$X/root
mkdir -p "$X/tls" "$XP"
for h in redis1 redis2 redis3 app1; do mkdir -p "$XP/$h/etc" "$XP/$h/var/lib"; done
make_secure_certs() {
    local d=$X/tls ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
    openssl req -x509 -new -nodes "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.crt" -days 2 -subj "/CN=check CA"
    openssl req -new -nodes "${ec[@]}" -keyout "$d/node.key" -out "$d/node.csr" -subj "/CN=redis node"
    openssl x509 -req -in "$d/node.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -out "$d/node.crt" -days 2 \
        -extfile <(printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n')
    openssl req -new -nodes "${ec[@]}" -keyout "$d/client.key" -out "$d/client.csr" -subj "/CN=flashsale"
    openssl x509 -req -in "$d/client.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -out "$d/client.crt" -days 2 \
        -extfile <(printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n')
    chmod 0644 "$d"/*
}
check "openssl: a CA, a node certificate for 127.0.0.1, a client certificate" make_secure_certs
RP1=$XRP1 RP2=$XRP2 RP3=$XRP3 SP1=$XSP1 SP2=$XSP2 SP3=$XSP3 write_inventory secure "$XP"
# As extra vars: an inventory's group vars rank below group_vars/all, where
# the defaults are (an operator sets them there, or per host).
{
    echo "redis_tls: true"
    echo "redis_acl: true"
    echo "redis_tls_ca_src: $X/tls/ca.crt"
    echo "redis_tls_cert_src: $X/tls/node.crt"
    echo "redis_tls_key_src: $X/tls/node.key"
    echo "flashsale_redis_tls_cert_src: $X/tls/client.crt"
    echo "flashsale_redis_tls_key_src: $X/tls/client.key"
} >"$X/secure.yml"
declare -A XPW=()
for u in flashsale-app flashsale-worker flashsale-replica flashsale-sentinel flashsale-watch flashsale-peer; do
    XPW[$u]=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
done
XSENT_PW=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
{
    echo "vault_sentinel_password: $XSENT_PW"
    echo "vault_redis_user_passwords:"
    for u in "${!XPW[@]}"; do echo "  $u: ${XPW[$u]}"; done
} >"$X/users.yml"
chmod -R a+rX "$X"
check_secure_asserts() {
    # redis_acl without the users' passwords, redis_tls without its files:
    # stopped at the role's asserts.
    not run_playbook secure-noacl secure --limit redis1 --check -e @"$X/secure.yml"
    grep -q 'no password for ACL user flashsale-app in vault_redis_user_passwords' "$AT/secure-noacl.log"
    not run_playbook secure-nofiles secure --limit redis1 --check -e @"$X/secure.yml" -e @"$X/users.yml" -e redis_tls_key_src=
    grep -q 'redis_tls needs redis_tls_ca_src, redis_tls_cert_src and redis_tls_key_src' "$AT/secure-nofiles.log"
}
check "redis_acl without the users' passwords, redis_tls without its files: stopped by the role's asserts" check_secure_asserts
check "ansible-playbook with redis_tls and redis_acl (real run)" run_playbook secure1 secure -e @"$X/secure.yml" -e @"$X/users.yml"
for i in 1 2 3; do
    chgrp -R nogroup "$XP/redis$i/etc/flashsale-redis"
    chown -R nobody:nogroup "$XP/redis$i/var/lib/flashsale-redis" "$XP/redis$i/var/lib/flashsale-sentinel"
done
for i in 1 2 3; do
    as_nobody redis-server "$XP/redis$i/etc/flashsale-redis/redis.conf" >"$T/xredis$i.log" 2>&1 &
    PIDS+=("$!")
done
for i in 1 2 3; do
    as_nobody redis-server "$XP/redis$i/var/lib/flashsale-sentinel/sentinel.conf" --sentinel >"$T/xsentinel$i.log" 2>&1 &
    PIDS+=("$!")
done
for p in $XRP1 $XRP2 $XRP3 $XSP1 $XSP2 $XSP3; do
    wait_until 15 port_open "$p" || { tail -n 5 "$T"/xredis*.log "$T"/xsentinel*.log >&2; die "TLS redis/sentinel on port $p did not start"; }
done
XTLS=(--tls --cacert "$X/tls/ca.crt" --cert "$X/tls/client.crt" --key "$X/tls/client.key")
# xcli USER PASSWORD PORT ARGS...: redis-cli over TLS as USER.
xcli() {
    local user=$1 pw=$2; shift 2
    REDISCLI_AUTH=$pw timeout 5 redis-cli --no-auth-warning "${XTLS[@]}" --user "$user" -h 127.0.0.1 -p "$@"
}
# The operator's `default` users: the data nodes' and the Sentinels' passwords.
xrc() { xcli default "$REDIS_PW" "$@"; }
xsc() { xcli default "$XSENT_PW" "$@"; }
secure_group_formed() {
    local m=$1 s out
    for s in $XSP1 $XSP2 $XSP3; do
        out=$(xsc "$s" SENTINEL get-master-addr-by-name mymaster | tr '\n' ' ')
        [ "$out" = "127.0.0.1 $m " ] || { echo "sentinel $s names master [$out]"; return 1; }
        out=$(xsc "$s" SENTINEL ckquorum mymaster)
        [[ "$out" == "OK 3 usable"* ]] || { echo "sentinel $s ckquorum: $out"; return 1; }
        out=$(xsc "$s" SENTINEL replicas mymaster | grep -A1 -x flags | grep -cx 'slave' || true)
        [ "$out" = 2 ] || { echo "sentinel $s sees $out healthy replicas"; return 1; }
    done
    out=$(xrc "$m" INFO replication | tr -d '\r')
    [ "$(grep -cE '^slave[0-9]+:.*state=online' <<<"$out")" = 2 ] || { echo "master $m: $out"; return 1; }
}
# no_acl_denials: ACL LOG is empty on every node (nothing a user of
# deploy/redis/ needed was refused, no failed login).
no_acl_denials() {
    local p log bad=0
    for p in $XRP1 $XRP2 $XRP3 $XSP1 $XSP2 $XSP3; do
        if [ "$p" -eq "$XSP1" ] || [ "$p" -eq "$XSP2" ] || [ "$p" -eq "$XSP3" ]; then
            log=$(xsc "$p" ACL LOG)
        else
            log=$(xrc "$p" ACL LOG)
        fi
        [ -z "$(tr -d '[:space:]' <<<"$log")" ] || { echo "ACL LOG of $p:"; echo "$log"; bad=1; }
    done
    return $bad
}
check_secure_group() {
    wait_until 40 secure_group_formed "$XRP1"
    # TLS only: a plain connection gets no answer.
    not timeout 3 redis-cli -h 127.0.0.1 -p "$XRP1" PING
    # Replicas log in as the replication user; no password in clear text.
    grep -qx 'masteruser flashsale-replica' "$XP/redis2/etc/flashsale-redis/redis.conf"
    not grep -q "${XPW[flashsale-app]}" "$XP/redis1/etc/flashsale-redis/redis.conf"
    no_acl_denials
}
check "the group forms over TLS only (3 Sentinels, quorum, 2 replicas online), no ACL denial" check_secure_group
check_secure_users() {
    local out cmd
    expect_eq "$(xcli flashsale-app "${XPW[flashsale-app]}" "$XRP1" SET fs:deploy-check ok)" OK "app user in its prefix"
    expect_eq "$(xcli flashsale-worker "${XPW[flashsale-worker]}" "$XRP1" WAIT 2 2000)" 2 "WAIT 2 as the worker"
    for cmd in FLUSHALL "CONFIG SET appendonly no" "KEYS x" "SET other:key 1" "FUNCTION FLUSH"; do
        # shellcheck disable=SC2086
        out=$(xcli flashsale-app "${XPW[flashsale-app]}" "$XRP1" $cmd 2>&1 || true)
        expect_has "$out" NOPERM
    done
    out=$(xcli flashsale-watch "${XPW[flashsale-watch]}" "$XSP1" SENTINEL master mymaster)
    expect_has "$out" "^flags$"
    out=$(xcli flashsale-watch "${XPW[flashsale-watch]}" "$XSP1" SENTINEL FAILOVER mymaster 2>&1 || true)
    expect_has "$out" NOPERM
    # Those refusals are in ACL LOG; the failover below must add none.
    expect_has "$(xrc "$XRP1" ACL LOG)" "flashsale-app"
    xrc "$XRP1" ACL LOG RESET >/dev/null
    xsc "$XSP1" ACL LOG RESET >/dev/null
}
check "the users of deploy/redis/: the app's may touch its prefix, not FLUSHALL/CONFIG/KEYS/other keys; the watcher may ask, not fail over" check_secure_users
check_secure_files() {
    local env=$XP/app1/etc/flashsale/flashsale.env d=$XP/app1/etc/systemd/system/flashsale-worker@.service.d
    grep -qx 'FLASHSALE_REDIS_TLS=true' "$env"
    grep -qx 'FLASHSALE_REDIS_TLS_CA_FILE=/etc/flashsale/tls/ca.crt' "$env"
    grep -qx 'FLASHSALE_REDIS_TLS_KEY_FILE=/etc/flashsale/tls/client.key' "$env"
    grep -qx 'FLASHSALE_REDIS_USERNAME=flashsale-app' "$env"
    grep -qx 'FLASHSALE_SENTINEL_USERNAME=flashsale-watch' "$env"
    expect_eq "$(cat "$XP/app1/etc/flashsale/credentials/redis_password")" "${XPW[flashsale-app]}"
    expect_eq "$(cat "$XP/app1/etc/flashsale/credentials/redis_worker_password")" "${XPW[flashsale-worker]}"
    expect_eq "$(stat -c '%a' "$XP/app1/etc/flashsale/tls/client.key")" 640 client.key
    grep -qx 'Environment=FLASHSALE_REDIS_USERNAME=flashsale-worker' "$d/redis-user.conf"
    grep -qx 'Environment=FLASHSALE_REDIS_PASSWORD_FILE=%d/redis_worker_password' "$d/redis-user.conf"
    # Without redis_acl the drop-in changes nothing and no worker credential is written.
    expect_eq "$(grep -v '^#' "$P/app1/etc/systemd/system/flashsale-worker@.service.d/redis-user.conf")" '[Service]' redis-user.conf
    [ ! -e "$P/app1/etc/flashsale/credentials/redis_worker_password" ]
    not grep -q '^FLASHSALE_REDIS_TLS' "$P/app1/etc/flashsale/flashsale.env"
}
check "the app's TLS files and users: flashsale.env, credentials, the workers' drop-in (and none of it without them)" check_secure_files
check_secure_second_run() {
    run_playbook secure2 secure -e @"$X/secure.yml" -e @"$X/users.yml"
    recap_changed_zero secure2
    grep -q 'from the sentinels' "$AT/secure2.log"
}
check "a second run against the TLS group asks its Sentinels over TLS and changes nothing" check_secure_second_run
secure_failover_done() {
    local n
    n=$(xsc "$XSP1" SENTINEL get-master-addr-by-name mymaster | sed -n 2p)
    [ -n "$n" ] && [ "$n" != "$XRP1" ] && secure_group_formed "$n"
}
check_secure_failover() {
    expect_eq "$(xsc "$XSP2" SENTINEL FAILOVER mymaster)" OK
    wait_until 45 secure_failover_done
    local n; n=$(xsc "$XSP1" SENTINEL get-master-addr-by-name mymaster | sed -n 2p)
    expect_eq "$(xcli flashsale-app "${XPW[flashsale-app]}" "$n" GET fs:deploy-check)" ok "data survived"
    no_acl_denials
}
check "SENTINEL FAILOVER over TLS with the ACL users: a new master, 2 replicas, no ACL denial anywhere" check_secure_failover

# ---------------------------------------------------------------------------
section "redis cluster from the rendered configs (redis_mode=cluster)"
# The playbook in cluster mode: three hosts on three loopback addresses
# (127.0.0.1-3, so that "a replica on another host than its primary" means
# what it means in production: redis-cli places replicas by address), two
# nodes each, and app1. A real run without the creation (the nodes are then
# started here from the rendered configs, as nobody, as in production where
# systemd starts them before the creation), a second run that creates the
# cluster, a planned failover, a third run that changes nothing; a --check
# run beside it, and the asserts. Then the runbook's import of the Sentinel
# group's keys into the cluster, with the group of the section above.
read -r CA1 CA2 CB1 CB2 CC1 CC2 <<<"$(free_cluster_ports 6 127.0.0.1 127.0.0.2 127.0.0.3)"
CP=$AT/croot
CDRY=$AT/cdryroot
# The six nodes, "HOST ADDRESS PORT", the hosts' first ports (the primaries
# to be) first: the order of redis_cluster_nodes.
CNODES="redis1 127.0.0.1 $CA1
redis2 127.0.0.2 $CB1
redis3 127.0.0.3 $CC1
redis1 127.0.0.1 $CA2
redis2 127.0.0.2 $CB2
redis3 127.0.0.3 $CC2"
CSEEDS=$(awk '{ printf "%s%s:%s", (NR > 1 ? "," : ""), $2, $3 }' <<<"$CNODES")
# write_cluster_inventory NAME PREFIX [ADDRESS OF redis2]
write_cluster_inventory() {
    local p=$2 a2=${3:-127.0.0.2}
    cat >"$AT/inv/$1.ini" <<EOF
[redis]
redis1 redis_announce_host=127.0.0.1 redis_cluster_ports="[$CA1, $CA2]" deploy_prefix=$p/redis1
redis2 redis_announce_host=$a2 redis_cluster_ports="[$CB1, $CB2]" deploy_prefix=$p/redis2
redis3 redis_announce_host=127.0.0.3 redis_cluster_ports="[$CC1, $CC2]" deploy_prefix=$p/redis3

[redis:vars]
redis_maxmemory=64mb
redis_cluster_wait_s=20

[app]
app1 deploy_prefix=$p/app1 flashsale_serve_ports="[18081, 18082]"

[worker]
app1 flashsale_worker_ports="[19101, 19102]"

[all:vars]
ansible_connection=local
ansible_python_interpreter=$PY
ansible_become=false
deploy_manage_system=false
flashsale_binary_dir=$AT/bin
flashsale_static_src=$AT/static/
flashsale_templates_src=$AT/templates/
redis_mode=cluster
EOF
}
write_cluster_inventory cluster "$CP"
write_cluster_inventory cdry "$CDRY"
# Two hosts, sharing one address.
write_cluster_inventory cbad "$CDRY" 127.0.0.1
sed -i '/^redis3 /d' "$AT/inv/cbad.ini"
mkdir -p "$CDRY"
for h in redis1 redis2 redis3 app1; do mkdir -p "$CP/$h/etc" "$CP/$h/var/lib"; done
chmod -R 0755 "$AT/inv" "$CP" "$CDRY"
# ccli ADDRESS PORT CMD...: a command to one cluster node.
ccli() { local a=$1 p=$2; shift 2; REDISCLI_AUTH=$REDIS_PW timeout 5 redis-cli --no-auth-warning -h "$a" -p "$p" "$@"; }
# The asserts, in --check runs beside the first real run.
cluster_asserts() {
    local rc1=0 rc2=0 rc3=0 rc4=0 rc5=0
    # Two hosts on one address, and a single port: the redis role's assert.
    run_playbook cbad cbad --check --limit redis1 -e '{"redis_cluster_ports": [7000]}' >"$AT/cbad.out" 2>&1 &
    local p1=$!
    # A mode that does not exist: both roles' asserts (one run each: a play
    # whose every host failed ends the run), the app's with a hold that is
    # not a number.
    run_playbook cmode cdry --check --limit redis1 -e redis_mode=bogus >"$AT/cmode.out" 2>&1 &
    local p2=$!
    run_playbook cmodeapp cdry --check --limit app1 -e redis_mode=bogus -e flashsale_failover_wait_ms=soon >"$AT/cmodeapp.out" 2>&1 &
    local p5=$!
    # The Sentinel group's hold in cluster mode.
    run_playbook chold cdry --check --limit app1 -e flashsale_failover_wait_ms=8000 >"$AT/chold.out" 2>&1 &
    local p3=$!
    # The Redis target in flashsale_extra_env.
    run_playbook cextra cdry --check --limit app1 \
        -e '{"flashsale_extra_env": {"FLASHSALE_REDIS_CLUSTER": "192.0.2.1:6379", "FLASHSALE_FAILOVER_WAIT_MS": 12000}}' >"$AT/cextra.out" 2>&1 &
    local p4=$!
    wait "$p1" || rc1=$?
    wait "$p2" || rc2=$?
    wait "$p3" || rc3=$?
    wait "$p4" || rc4=$?
    wait "$p5" || rc5=$?
    echo "$rc1 $rc2 $rc3 $rc4 $rc5" >"$AT/cluster-asserts.rc"
}
cluster_asserts >"$AT/cluster-asserts.out" 2>&1 &
CASSERTS_PID=$!
PIDS+=("$CASSERTS_PID")
check "ansible-playbook, redis_mode=cluster (real run into a prefix of its own, without the creation: --skip-tags redis-cluster-create)" \
    run_playbook cfirst cluster --skip-tags redis-cluster-create
wait "$CASSERTS_PID" || true
check_cluster_asserts() {
    cat "$AT/cluster-asserts.out" "$AT/cbad.out" "$AT/cmode.out" "$AT/cmodeapp.out" "$AT/chold.out" "$AT/cextra.out"
    local rc; rc=$(cat "$AT/cluster-asserts.rc")
    # shellcheck disable=SC2086 # five numbers
    set -- $rc
    [ "$1" != 0 ] && [ "$2" != 0 ] && [ "$3" != 0 ] && [ "$4" != 0 ] && [ "$5" != 0 ] || { echo "exit statuses: $rc"; return 1; }
    grep -q 'cluster mode needs at least 3 hosts in group redis' "$AT/cbad.log"
    grep -q 'redis_cluster_ports must be two different ports' "$AT/cbad.log"
    grep -q 'every host of group redis needs two cluster ports' "$AT/cbad.log"
    grep -q 'every host of group redis needs an address of its own (redis_announce_host)' "$AT/cbad.log"
    grep -q '^fatal: \[redis1\]: FAILED! .*redis_mode must be sentinel or cluster, not bogus' "$AT/cmode.log"
    grep -q '^fatal: \[app1\]: FAILED! .*redis_mode must be sentinel or cluster, not bogus' "$AT/cmodeapp.log"
    grep -q 'flashsale_failover_wait_ms must be empty (for the default of the app) or 0 to 60000 ms' "$AT/cmodeapp.log"
    grep -q 'cluster mode: flashsale_failover_wait_ms must be at least 10000 ms' "$AT/chold.log"
    grep -q 'Set FLASHSALE_REDIS_CLUSTER, FLASHSALE_FAILOVER_WAIT_MS with the role' "$AT/cextra.log"
    # The redis role stops at its first task, the flashsale role's checks
    # at theirs (the second, the third); nothing is written.
    expect_eq "$(grep -cE '^(ok|changed): \[redis1\]' "$AT/cbad.log" || true)" 0 "cbad: tasks before the assert"
    expect_eq "$(grep -cE '^(ok|changed): \[redis1\]' "$AT/cmode.log" || true)" 0 "cmode: tasks before the assert"
    expect_eq "$(grep -cE '^(ok|changed): \[app1\]' "$AT/chold.log" || true)" 2 "chold: tasks before the assert"
    expect_eq "$(grep -cE '^(ok|changed): \[app1\]' "$AT/cextra.log" || true)" 1 "cextra: tasks before the assert"
    [ -z "$(find "$CDRY" -mindepth 1 -print -quit)" ] || { find "$CDRY"; return 1; }
}
check "cluster mode's asserts stop a run with fewer than 3 hosts, one address for two, one port, a mode that does not exist (both roles), a hold that is not a number or below 10 s, the Redis target or the hold in flashsale_extra_env" check_cluster_asserts
check_cluster_files() {
    mode() { stat -c '%a' "$1"; }
    local h a p conf e
    while read -r h a p; do
        conf=$CP/$h/etc/flashsale-redis/cluster-$p.conf
        expect_eq "$(mode "$conf")" 640 "$conf"
        grep -qx "port $p" "$conf"
        grep -qx "bind $( [ "$a" = 127.0.0.1 ] && echo 127.0.0.1 || echo "$a 127.0.0.1")" "$conf"
        grep -qx "cluster-announce-ip $a" "$conf"
        grep -qx "cluster-port $((p + 10000))" "$conf"
        grep -qx "cluster-config-file $CP/$h/var/lib/flashsale-redis-cluster/$p/nodes.conf" "$conf"
        grep -qx "dir $CP/$h/var/lib/flashsale-redis-cluster/$p" "$conf"
        grep -q "^requirepass \"$REDIS_PW\"" "$conf"
        not grep -qE '^(replicaof|slaveof) ' "$conf"
        # The shipped files, included last, in this order.
        expect_eq "$(grep '^include ' "$conf" | tr '\n' ' ')" \
            "include $CP/$h/etc/flashsale-redis/redis-shipped.conf include $CP/$h/etc/flashsale-redis/redis-cluster-shipped.conf " "includes"
        expect_eq "$(tail -n 1 "$conf")" "include $CP/$h/etc/flashsale-redis/redis-cluster-shipped.conf" "last line"
        expect_eq "$(mode "$CP/$h/var/lib/flashsale-redis-cluster/$p")" 750 "data dir"
    done <<<"$CNODES"
    for h in redis1 redis2 redis3; do
        cmp "$DEPLOY/redis/redis-shipped.conf" "$CP/$h/etc/flashsale-redis/redis-shipped.conf"
        cmp "$DEPLOY/redis/redis-cluster-shipped.conf" "$CP/$h/etc/flashsale-redis/redis-cluster-shipped.conf"
        cmp "$DEPLOY/systemd/flashsale-redis-cluster@.service" "$CP/$h/etc/systemd/system/flashsale-redis-cluster@.service"
        # Nothing of the Sentinel group.
        for f in etc/flashsale-redis/redis.conf etc/flashsale-redis/replication.conf var/lib/flashsale-sentinel \
                 etc/systemd/system/flashsale-redis.service etc/systemd/system/flashsale-sentinel.service; do
            [ ! -e "$CP/$h/$f" ] || { echo "$h has $f"; return 1; }
        done
    done
    # The app and the workers: every node as a seed, the cluster's hold, no Sentinels.
    e=$CP/app1/etc/flashsale/flashsale.env
    expect_eq "$(mode "$e")" 600 flashsale.env
    grep -qx "FLASHSALE_REDIS_CLUSTER=$CSEEDS" "$e"
    grep -qx 'FLASHSALE_FAILOVER_WAIT_MS=12000' "$e"
    grep -qx 'FLASHSALE_REPLICA_ACKS=all' "$e"
    not grep -qE '^FLASHSALE_(REDIS_SENTINELS|REDIS_MASTER_NAME|SENTINEL_PASSWORD|REDIS_URL)=' "$e"
    not grep -q "$REDIS_PW" "$e"
    not grep -q 'redis-cli --cluster create' "$AT/cfirst.log"
    # The Sentinel mode's env file of the section above has no hold line:
    # the app's own default there.
    not grep -q '^FLASHSALE_FAILOVER_WAIT_MS' "$P/app1/etc/flashsale/flashsale.env"
}
check "cluster mode's files: two node configs per host (port, bus port + 10000, announce address, nodes.conf in the node's directory, the shipped files included last, no replicaof), the unit, nothing of the Sentinel group; the app's FLASHSALE_REDIS_CLUSTER (all six) and hold 12000" check_cluster_files
# Started as in production: as the redis user (nobody here), the configs
# root-owned and group-readable, each node's directory its own.
for h in redis1 redis2 redis3; do
    chgrp -R nogroup "$CP/$h/etc/flashsale-redis"
    chown -R nobody:nogroup "$CP/$h/var/lib/flashsale-redis-cluster"
done
while read -r h a p; do
    as_nobody redis-server "$CP/$h/etc/flashsale-redis/cluster-$p.conf" >"$T/cluster-$p.log" 2>&1 &
    PIDS+=("$!")
done <<<"$CNODES"
while read -r h a p; do
    wait_until 15 port_open "$p" "$a" || { tail -n 5 "$T"/cluster-*.log >&2; die "cluster node $a:$p did not start"; }
done <<<"$CNODES"
# cluster_ok: every node says cluster_state:ok, knows 6 nodes, all slots ok.
cluster_ok() {
    local h a p info
    while read -r h a p; do
        info=$(ccli "$a" "$p" CLUSTER INFO | tr -d '\r')
        grep -qx 'cluster_state:ok' <<<"$info" && grep -qx 'cluster_known_nodes:6' <<<"$info" \
            && grep -qx 'cluster_slots_ok:16384' <<<"$info" || { echo "$a:$p: $info"; return 1; }
    done <<<"$CNODES"
}
# cluster_layout: "PRIMARY REPLICA" per shard (addresses), from CLUSTER NODES.
cluster_layout() {
    ccli 127.0.0.1 "$CA1" CLUSTER NODES | tr -d '\r' | awk '
        { sub(/@.*/, "", $2); addr[$1] = $2 }
        $3 ~ /master/ && $9 != "" { primary[$1] = 1 }
        $3 ~ /slave/ { of[$1] = $4 }
        END { for (r in of) if (of[r] in primary) print addr[of[r]], addr[r] }' | sort
}
check_cluster_created() {
    run_playbook ccreate cluster
    grep -A1 'Run redis-cli --cluster create' "$AT/ccreate.log" | grep -q 'changed: \[redis1\]'
    not grep -q '\[29;1m' "$AT/ccreate.log"
    wait_until 20 cluster_ok
    local layout; layout=$(cluster_layout)
    echo "$layout"
    # The hosts' first ports are the primaries; each has one replica, on
    # another address (host) than its own.
    expect_eq "$(awk '{print $1}' <<<"$layout" | tr '\n' ' ')" "127.0.0.1:$CA1 127.0.0.2:$CB1 127.0.0.3:$CC1 " "primaries"
    expect_eq "$(wc -l <<<"$layout")" 3 "shards with a replica"
    expect_eq "$(awk '{ split($1, a, ":"); split($2, b, ":"); if (a[1] == b[1]) print }' <<<"$layout")" "" \
        "replicas on their primary's host"
    grep -q 'Check the shards' "$AT/ccreate.log"
    local h a p bad=0
    while read -r h a p; do cluster_node_is_shipped "$a" "$p" "$REDIS_PW" || bad=1; done <<<"$CNODES"
    return $bad
}
check "the playbook creates the cluster from the running nodes: cluster_state:ok everywhere, the first ports primaries, each replica on another host; every node runs deploy/redis/ (CONFIG GET)" check_cluster_created
# key_in PRIMARY_PORT: a key whose slot the primary on 127.0.0.x:PORT owns.
key_in() {
    local a=$1 p=$2 ranges n slot r
    ranges=$(ccli "$a" "$p" CLUSTER NODES | tr -d '\r' | awk '$3 ~ /myself/ { for (i = 9; i <= NF; i++) print $i }')
    for n in $(seq 0 300); do
        slot=$(ccli "$a" "$p" CLUSTER KEYSLOT "deploy-check:{$n}")
        for r in $ranges; do
            if [ "$slot" -ge "${r%-*}" ] && [ "$slot" -le "${r#*-}" ]; then echo "deploy-check:{$n}"; return 0; fi
        done
    done
    return 1
}
check_cluster_writes() {
    # On each shard: a write its replica acknowledges (WAIT 1) and serves.
    local primary replica key
    while read -r primary replica; do
        key=$(key_in "${primary%:*}" "${primary#*:}")
        expect_eq "$(ccli "${primary%:*}" "${primary#*:}" SET "$key" ok)" OK "SET on $primary"
        expect_eq "$(ccli "${primary%:*}" "${primary#*:}" WAIT 1 2000)" 1 "WAIT 1 on $primary"
        expect_eq "$(printf 'READONLY\nGET %s\n' "$key" | ccli "${replica%:*}" "${replica#*:}" | tail -n 1)" ok "read on $replica"
    done < <(cluster_layout)
}
check "each shard's primary takes a write its replica acknowledges (WAIT 1) and serves (READONLY)" check_cluster_writes
check_cluster_import() {
    # The runbook's import: the Sentinel group's master (this run's group,
    # same password) into the cluster, keys shaped as the app's, copied.
    local src; src=$(cat "$T/new-master")
    local k
    rcli -p "$src" HSET 'ck:{tv-1}:sale' name TV units 10 >/dev/null
    rcli -p "$src" SET 'ck:{tv-1}:units' 7 EX 3600 >/dev/null
    rcli -p "$src" XADD 'ck:{tv-1}:stream' '*' order o1 >/dev/null
    rcli -p "$src" XGROUP CREATE 'ck:{tv-1}:stream' workers 0 >/dev/null
    rcli -p "$src" HSET 'ck:{tv-1}:order:o1' status queued qty 1 >/dev/null
    rcli -p "$src" HSET 'ck:{tv-2}:order:o2' status confirmed qty 2 >/dev/null
    rcli -p "$src" ZADD ck:sales 1 tv-1 2 tv-2 >/dev/null
    local before; before=$(rcli -p "$src" DBSIZE)
    printf '%s\n' "$REDIS_PW" >"$T/import-password"
    TERM=dumb REDISCLI_AUTH=$REDIS_PW timeout 60 redis-cli --no-auth-warning --cluster import "127.0.0.1:$CA1" \
        --cluster-from "127.0.0.1:$src" --cluster-from-askpass --cluster-copy <"$T/import-password" >"$T/import.log" 2>&1 \
        || { cat "$T/import.log"; return 1; }
    rm -f "$T/import-password"
    grep -E '^\*\*\* Importing|^Migrating' "$T/import.log"
    not grep -q "$REDIS_PW" "$T/import.log"
    # Every key in the cluster, as it was (type, TTL, the stream's group);
    # the source untouched (copied, not moved).
    cc() { ccli 127.0.0.1 "$CA1" -c "$@"; }
    for k in 'ck:{tv-1}:sale:hash' 'ck:{tv-1}:units:string' 'ck:{tv-1}:stream:stream' 'ck:{tv-1}:order:o1:hash' \
             'ck:{tv-2}:order:o2:hash' 'ck:sales:zset'; do
        expect_eq "$(cc TYPE "${k%:*}")" "${k##*:}" "${k%:*}"
    done
    expect_eq "$(cc HGET 'ck:{tv-2}:order:o2' qty)" 2 "an order's field"
    [ "$(cc TTL 'ck:{tv-1}:units')" -gt 3000 ]
    expect_eq "$(cc XINFO GROUPS 'ck:{tv-1}:stream' | sed -n 2p)" workers "the stream's consumer group"
    expect_eq "$(rcli -p "$src" DBSIZE)" "$before" "keys left on the source"
    # A sale's keys share a slot (the {sku} hash tag), so one shard holds the sale.
    expect_eq "$(for k in sale units stream order:o1; do cc CLUSTER KEYSLOT "ck:{tv-1}:$k"; done | sort -u | wc -l)" 1 "slots of tv-1's keys"
}
check "the runbook's import (redis-cli --cluster import --cluster-copy, the source's password on stdin) copies app-shaped keys from the Sentinel group's master into the cluster: types, TTL, the stream's group, a sale's keys in one slot; the source keeps them" check_cluster_import
md5sum "$CP"/redis*/etc/flashsale-redis/cluster-*.conf >"$T/cluster-conf.md5"
check_cluster_failover() {
    # A planned failover of the first shard: its replica takes over.
    local replica; replica=$(cluster_layout | awk -v p="127.0.0.1:$CA1" '$1 == p { print $2 }')
    [ -n "$replica" ]
    role_is() { [ "$(ccli "$1" "$2" ROLE | head -n 1)" = "$3" ]; }
    expect_eq "$(ccli "${replica%:*}" "${replica#*:}" CLUSTER FAILOVER)" OK
    wait_until 20 role_is "${replica%:*}" "${replica#*:}" master
    wait_until 20 role_is 127.0.0.1 "$CA1" slave
    wait_until 20 cluster_ok
    cluster_layout
    # The --check run (its own empty prefix) beside the third real run:
    # both ask the live cluster.
    run_playbook cdry cdry --check --limit redis1,app1 >"$AT/cdry.out" 2>&1 &
    local dry=$! dry_rc=0
    run_playbook cagain cluster
    wait "$dry" || dry_rc=$?
    recap_changed_zero cagain
    grep -q 'cluster_state:ok on 6, not in a cluster yet 0, not answering none: the cluster is there, nothing to create' "$AT/cagain.log"
    # The configs name no role: the failover left them as they were.
    md5sum -c --quiet "$T/cluster-conf.md5"
    cat "$AT/cdry.out"
    [ "$dry_rc" = 0 ]
    [ -z "$(find "$CDRY" -mindepth 1 -print -quit)" ] || { find "$CDRY"; return 1; }
    grep -q 'changed: \[redis1\]' "$AT/cdry.log"
    grep -q 'changed: \[app1\]' "$AT/cdry.log"
    grep -q 'the cluster is there, nothing to create' "$AT/cdry.log"
}
check "after a planned failover (CLUSTER FAILOVER), the playbook again changes nothing (changed=0 everywhere; the cluster is there) and leaves the configs; a --check run into an empty prefix writes nothing" check_cluster_failover

# ---------------------------------------------------------------------------
section "docker compose"
C=$DEPLOY/compose
export FLASHSALE_SECRETS_DIR=$T/secrets
check "docker-compose config accepts deploy/compose/docker-compose.yml" \
    bash -c "cd '$C' && docker-compose -f docker-compose.yml config -q"
check_topology() {
    local services; services=$(cd "$C" && docker-compose -f docker-compose.yml config --services | sort | tr '\n' ' ')
    expect_eq "$services" "app1 app2 nginx postgres redis1 redis2 redis3 render sentinel1 sentinel2 sentinel3 worker1 worker2 "
    local cfg; cfg=$(cd "$C" && docker-compose -f docker-compose.yml config)
    expect_has "$cfg" 'FLASHSALE_REDIS_SENTINELS: sentinel1:26379,sentinel2:26379,sentinel3:26379'
    expect_has "$cfg" 'REDIS_REPLICAOF: redis1 6379'
    # The apps trust nginx's fixed address, inside the declared subnet and
    # outside the range the other containers get theirs from.
    local nginx_ip; nginx_ip=$(grep -oE 'ipv4_address: [0-9.]+' <<<"$cfg" | awk '{print $2}')
    expect_eq "$(grep -c 'ipv4_address:' <<<"$cfg")" 1 "one fixed address"
    expect_eq "$(grep -c "FLASHSALE_TRUSTED_PROXIES: $nginx_ip/32\$" <<<"$cfg")" 2 "app1 and app2 trust nginx"
    # /admin through nginx: only from the declared gateway (the Docker host).
    local gw; gw=$(grep -oE 'gateway: [0-9.]+' <<<"$cfg" | awk '{print $2}')
    expect_eq "$(grep -c 'FLASHSALE_ADMIN_ALLOW:' <<<"$cfg")" 1 "nginx alone has an allow-list"
    expect_has "$cfg" "FLASHSALE_ADMIN_ALLOW: $gw/32\$"
    python3 - "$nginx_ip" "$(grep -oE 'subnet: [0-9./]+' <<<"$cfg" | awk '{print $2}')" \
        "$(grep -oE 'ip_range: [0-9./]+' <<<"$cfg" | awk '{print $2}')" "$gw" <<'EOF'
import ipaddress, sys
ip, subnet, pool = ipaddress.ip_address(sys.argv[1]), ipaddress.ip_network(sys.argv[2]), ipaddress.ip_network(sys.argv[3])
gw = ipaddress.ip_address(sys.argv[4])
assert ip in subnet and pool.subnet_of(subnet) and ip not in pool, (ip, subnet, pool)
assert gw in subnet and gw not in pool and gw != ip, (gw, subnet, pool, ip)
EOF
    # nginx reads the apps' CORS origins from the same variable.
    expect_eq "$(grep -c 'FLASHSALE_CORS_ORIGINS: https://a.example,https://b.example$' <<<"$(cd "$C" && \
        FLASHSALE_CORS_ORIGINS=https://a.example,https://b.example docker-compose -f docker-compose.yml config)")" 3 \
        "app1, app2 and nginx get FLASHSALE_CORS_ORIGINS"
    # The ledger: both workers get its URL as a secret file and wait for it;
    # it admits the declared subnet alone.
    expect_eq "$(grep -c 'FLASHSALE_LEDGER_URL_FILE: /run/secrets/ledger_url$' <<<"$cfg")" 2 "worker1 and worker2 get the ledger"
    expect_eq "$(grep -c 'FLASHSALE_LEDGER_URL' <<<"$cfg")" 2 "nothing else gets the ledger"
    expect_has "$cfg" "LEDGER_ALLOW: $(grep -oE 'subnet: [0-9./]+' <<<"$cfg" | awk '{print $2}')\$"
    # svc NAME [CONFIG]: that service's block of a `config` output.
    svc() { sed -n "/^  $1:\$/,/^  [a-z0-9]*:\$/p" <<<"${2:-$cfg}"; }
    local w; w=$(svc worker1)
    expect_has "$w" '^      postgres:'
    expect_has "$w" 'source: ledger_url'
    local pg; pg=$(svc postgres)
    expect_has "$pg" 'target: ledger'
    expect_has "$pg" 'source: ledger_url'
    expect_has "$pg" 'ledger-data:/var/lib/postgresql/data'
    expect_has "$pg" 'pg_isready'
    # The payment window reaches both apps (0, off, unless set) and nothing
    # else; FLASHSALE_ENDED_LISTED_S reaches the apps and the render.
    expect_eq "$(grep -c "FLASHSALE_PAYMENT_WINDOW_S: '0'$" <<<"$cfg")" 2 "app1 and app2 get the window"
    expect_eq "$(grep -c 'FLASHSALE_PAYMENT' <<<"$cfg")" 2 "nothing else gets payment settings"
    local more; more=$(cd "$C" && FLASHSALE_PAYMENT_WINDOW_S=900 FLASHSALE_ENDED_LISTED_S=60 docker-compose -f docker-compose.yml config)
    expect_eq "$(grep -c "FLASHSALE_PAYMENT_WINDOW_S: '900'$" <<<"$more")" 2 "a window set reaches app1 and app2"
    for w in app1 app2 render; do
        expect_has "$(svc "$w" "$more")" "FLASHSALE_ENDED_LISTED_S: '60'\$"
    done
    # The payment override: refused without a window; with one, both apps
    # get the provider's secret as a file, nothing else does.
    if (cd "$C" && env -u FLASHSALE_PAYMENT_WINDOW_S docker-compose -f docker-compose.yml -f docker-compose.payment.yml config -q) 2>"$T/payment-compose.err"; then
        echo "the payment override was accepted without a window"; return 1
    fi
    grep -q 'the payment step needs FLASHSALE_PAYMENT_WINDOW_S' "$T/payment-compose.err"
    local pay; pay=$(cd "$C" && FLASHSALE_PAYMENT_WINDOW_S=900 docker-compose -f docker-compose.yml -f docker-compose.payment.yml config)
    expect_eq "$(grep -c 'FLASHSALE_PAYMENT_TOKEN_FILE: /run/secrets/payment_token$' <<<"$pay")" 2 "app1 and app2 get the payment secret"
    expect_eq "$(grep -c 'source: payment_token$' <<<"$pay")" 2 "only app1 and app2 mount it"
    expect_eq "$(grep -c "FLASHSALE_PAYMENT_WINDOW_S: '900'$" <<<"$pay")" 2 "with its window"
    for w in app1 app2; do
        expect_eq "$(svc "$w" "$pay" | grep -cE 'source: (admin_token|jwt_secret|redis_password|payment_token)$')" 4 "$w keeps its secrets"
    done
    grep -q '^FROM debian:bookworm-slim AS ledger' "$C/Dockerfile"
    grep -q 'postgresql-15' "$C/Dockerfile"
    grep -q '^STOPSIGNAL SIGINT' "$C/Dockerfile"
    sh -n "$C/ledger/start-postgres.sh"
    grep -q '^sentinel resolve-hostnames yes' "$C/redis/sentinel.conf.tmpl"
    grep -q '^sentinel announce-hostnames yes' "$C/redis/sentinel.conf.tmpl"
    grep -q 'replica-announce-ip' "$C/redis/start-redis.sh"
    grep -q '^FROM rust:1-bookworm AS builder' "$C/Dockerfile"
    grep -q 'cargo build --release --locked' "$C/Dockerfile"
    grep -q '^FROM debian:bookworm-slim AS runtime' "$C/Dockerfile"
    grep -q '^USER flashsale' "$C/Dockerfile"
    sh -n "$C/redis/start-redis.sh" && sh -n "$C/redis/start-sentinel.sh" && sh -n "$C/nginx-render.sh"
}
check "compose topology: 3 redis, 3 sentinels, 2 apps, 2 workers, render, nginx (at the fixed address the apps trust; /admin from the gateway only; the apps' CORS origins), the ledger for the workers, the payment settings for the apps; hostnames for Sentinel" check_topology
check_compose_rejects() {
    sed 's/^    stop_grace_period: 15s$/    stop_grace_perod: 15s/' "$C/docker-compose.yml" >"$C/.broken-compose.yml"
    local rc=0
    (cd "$C" && docker-compose -f .broken-compose.yml config -q) || rc=$?
    rm -f "$C/.broken-compose.yml"
    [ "$rc" -ne 0 ]
}
check "docker-compose config rejects a broken file (the check is real)" check_compose_rejects
check "docker-compose config accepts deploy/compose/docker-compose.cluster.yml" \
    bash -c "cd '$C' && docker-compose -f docker-compose.cluster.yml config -q"
# compose_yaml FILE...: `docker-compose config` of those files, as JSON.
compose_json() {
    (cd "$C" && docker-compose "${@/#/-f}" config) | "$PY" -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))'
}
check_cluster_topology() {
    compose_json docker-compose.cluster.yml >"$T/cluster-compose.json"
    compose_json docker-compose.yml >"$T/sentinel-compose.json"
    FLASHSALE_PAYMENT_WINDOW_S=900 compose_json docker-compose.cluster.yml docker-compose.payment.yml >"$T/cluster-payment.json"
    "$PY" - "$T/cluster-compose.json" "$T/sentinel-compose.json" "$T/cluster-payment.json" "$DEPLOY/redis" <<'EOF'
import ipaddress, json, sys
cl, se, pay = (json.load(open(p)) for p in sys.argv[1:4])
shipped = sys.argv[4]
bad = []
def need(ok, what):
    if not ok:
        bad.append(what)
S = cl["services"]
nodes = [f"cluster{i}" for i in range(1, 7)]
need(sorted(S) == sorted(nodes + ["cluster-init", "app1", "app2", "worker1", "worker2", "postgres", "render", "nginx"]),
     f"services: {sorted(S)}")
net = cl["networks"]["backend"]["ipam"]["config"][0]
subnet, pool = ipaddress.ip_network(net["subnet"]), ipaddress.ip_network(net["ip_range"])
gw = ipaddress.ip_address(net["gateway"])
nginx_ip = ipaddress.ip_address(S["nginx"]["networks"]["backend"]["ipv4_address"])
ips = []
for n in nodes:
    s = S[n]
    ip = s["networks"]["backend"]["ipv4_address"]
    ips.append(ip)
    a = ipaddress.ip_address(ip)
    need(a in subnet and a not in pool and a not in (gw, nginx_ip), f"{n}: address {ip} (subnet {subnet}, pool {pool})")
    need(s["environment"].get("CLUSTER_ANNOUNCE_IP") == ip, f"{n} announces {s['environment'].get('CLUSTER_ANNOUNCE_IP')}, has {ip}")
    need(s["command"] == ["sh", "/usr/local/etc/flashsale/start-cluster-node.sh"], f"{n}: command {s['command']}")
    need(f"{shipped}:/usr/local/etc/flashsale-shipped:ro" in s["volumes"], f"{n} mounts deploy/redis: {s['volumes']}")
    need(f"{n}-data:/data:rw" in s["volumes"] or f"{n}-data:/data" in s["volumes"], f"{n}: its own volume: {s['volumes']}")
need(len(set(ips)) == 6, f"node addresses {ips}")
init = S["cluster-init"]
need(init["environment"]["CLUSTER_NODES"].split() == [f"{ip}:6379" for ip in ips], f"CLUSTER_NODES {init['environment']['CLUSTER_NODES']}")
need(init["depends_on"] == {n: {"condition": "service_healthy"} for n in nodes}, f"cluster-init waits for {init['depends_on']}")
need(init.get("restart") == "no", "cluster-init restarts")
seeds = ",".join(f"{n}:6379" for n in nodes)
for name in ["app1", "app2", "worker1", "worker2", "render"]:
    env = S[name]["environment"]
    need(env.get("FLASHSALE_REDIS_CLUSTER") == seeds, f"{name}: FLASHSALE_REDIS_CLUSTER {env.get('FLASHSALE_REDIS_CLUSTER')}")
    need(str(env.get("FLASHSALE_FAILOVER_WAIT_MS")) == "12000", f"{name}: hold {env.get('FLASHSALE_FAILOVER_WAIT_MS')}")
    need(not {"FLASHSALE_REDIS_SENTINELS", "FLASHSALE_REDIS_MASTER_NAME"} & set(env), f"{name} names Sentinels")
    need(S[name]["depends_on"].get("cluster-init") == {"condition": "service_completed_successfully"},
         f"{name} waits for {S[name]['depends_on']}")
for name in ["postgres", "nginx"] + nodes:
    need(not any(k.startswith("FLASHSALE_REDIS") for k in S[name].get("environment", {})), f"{name} gets Redis settings")
# Everything but Redis is docker-compose.yml's, service for service.
redis_env = {"FLASHSALE_REDIS_SENTINELS", "FLASHSALE_REDIS_MASTER_NAME", "FLASHSALE_REDIS_CLUSTER", "FLASHSALE_FAILOVER_WAIT_MS"}
def shared(svc):
    svc = json.loads(json.dumps(svc))
    env = svc.get("environment")
    if isinstance(env, dict):
        svc["environment"] = {k: v for k, v in env.items() if k not in redis_env}
    if "depends_on" in svc:
        svc["depends_on"] = {k: v for k, v in svc["depends_on"].items() if not k.startswith(("sentinel", "cluster"))}
    return svc
for name in ["app1", "app2", "worker1", "worker2", "render", "nginx", "postgres"]:
    need(shared(S[name]) == shared(se["services"][name]), f"{name} differs from docker-compose.yml's:\n{shared(S[name])}\n{shared(se['services'][name])}")
need(cl["networks"] == se["networks"], "the network differs from docker-compose.yml's")
need(cl["secrets"] == se["secrets"], "the secrets differ from docker-compose.yml's")
need({"ledger-data", "pages"} <= set(cl["volumes"]), f"volumes {sorted(cl['volumes'])}")
# docker-compose.payment.yml on top: both apps get the secret, with the cluster.
for name in ["app1", "app2"]:
    env = pay["services"][name]["environment"]
    need(env.get("FLASHSALE_PAYMENT_TOKEN_FILE") == "/run/secrets/payment_token" and str(env.get("FLASHSALE_PAYMENT_WINDOW_S")) == "900",
         f"{name} with the payment override: {env}")
    need(env.get("FLASHSALE_REDIS_CLUSTER") == seeds, f"{name} with the payment override: {env}")
    need(sorted(x["source"] for x in pay["services"][name]["secrets"]) == ["admin_token", "jwt_secret", "payment_token", "redis_password"],
         f"{name} secrets with the payment override")
print("\n".join(bad) if bad else f"cluster compose: {len(S)} services, nodes at {', '.join(ips)}")
sys.exit(1 if bad else 0)
EOF
    sh -n "$C/redis/start-cluster-node.sh" && sh -n "$C/redis/create-cluster.sh"
}
check "compose cluster variant: 6 nodes (fixed addresses in the subnet outside the pool, each announcing its own, deploy/redis/ mounted), cluster-init after all six, apps, workers and render with FLASHSALE_REDIS_CLUSTER and hold 12000 after it; every other service, the network and the secrets as docker-compose.yml's; the payment override on top" check_cluster_topology
check_cluster_compose_rejects() {
    sed 's/condition: service_completed_successfully/condition: service_finished/' "$C/docker-compose.cluster.yml" >"$C/.broken-cluster.yml"
    local rc=0
    (cd "$C" && docker-compose -f .broken-cluster.yml config -q) || rc=$?
    rm -f "$C/.broken-cluster.yml"
    [ "$rc" -ne 0 ]
}
check "docker-compose config rejects a broken cluster file (the check is real)" check_cluster_compose_rejects
# The containers' start scripts, outside a container: paths moved with their
# variables, and a docker-entrypoint.sh that runs the server on a loopback
# port (the data node) or only says what it would start (the Sentinel, whose
# file names the other containers).
CR=$T/compose-run
mkdir -p "$CR/bin" "$CR/redis1" "$CR/sentinel1" "$CR/shipped-changed"
cat >"$CR/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
case " $* " in *" --sentinel "*) echo "would start: $*"; exit 0 ;; esac
exec "$@" --port "$CHECK_PORT" --bind 127.0.0.1
EOF
chmod 0755 "$CR/bin/docker-entrypoint.sh"
printf '%s\n' "$REDIS_PW" >"$CR/redis_password"
read -r CRP CSP <<<"$(free_ports 2)"
compose_env() {
    env PATH="$CR/bin:$PATH" FLASHSALE_ETC="$C/redis" FLASHSALE_SHIPPED="${SHIPPED_DIR:-$DEPLOY/redis}" \
        REDIS_DATA="$CR/redis1" SENTINEL_DATA="$CR/sentinel1" REDIS_PASSWORD_FILE="$CR/redis_password" \
        REDIS_ANNOUNCE=127.0.0.1 SENTINEL_ANNOUNCE=sentinel1 CHECK_PORT="$CRP" "$@"
}
compose_env sh "$C/redis/start-redis.sh" >"$CR/redis1.log" 2>&1 &
PIDS+=("$!")
check_compose_data_node() {
    wait_until 15 port_open "$CRP" || { cat "$CR/redis1.log"; return 1; }
    grep -E "^(include|dir) " "$CR/redis1/runtime.conf"
    data_node_is_shipped "$CRP" "$REDIS_PW"
    # The compose file's own sizing stays its own.
    expect_eq "$(REDISCLI_AUTH=$REDIS_PW redis-cli --no-auth-warning -p "$CRP" CONFIG GET maxmemory | sed -n 2p)" \
        $((512 * 1024 * 1024)) maxmemory
}
check "compose: start-redis.sh starts a data node that runs deploy/redis/ (CONFIG GET)" check_compose_data_node
check_compose_sentinel() {
    compose_env sh "$C/redis/start-sentinel.sh"
    local f=$CR/sentinel1/sentinel.conf k v
    grep -qx 'sentinel announce-ip sentinel1' "$f"
    not grep -q '@@' "$f"
    while IFS=$'\t' read -r k v; do
        expect_eq "$(grep -c "^sentinel $k mymaster " "$f")" 1 "$k lines"
        grep -qx "sentinel $k mymaster $v" "$f"
    done < <(shipped_sentinel)
    # Started for real from a loopback copy (the file names the containers).
    sed -e "s/^sentinel monitor mymaster redis1 6379 /sentinel monitor mymaster 127.0.0.1 $CRP /" \
        -e 's/^sentinel announce-ip sentinel1$/sentinel announce-ip 127.0.0.1/' \
        -e "s|^dir /data\$|dir $CR/sentinel1|" "$f" >"$CR/sentinel-loopback.conf"
    redis-server "$CR/sentinel-loopback.conf" --sentinel --port "$CSP" --bind 127.0.0.1 --daemonize yes \
        --pidfile "$CR/sentinel.pid" --logfile "$CR/sentinel.log"
    # It daemonized: stopped by its pidfile when this check ends, however.
    trap 'kill "$(cat "$CR/sentinel.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
    wait_until 10 port_open "$CSP" || { cat "$CR/sentinel.log"; return 1; }
    sentinel_is_shipped "$CSP"
    # A restart with a changed tunable replaces its line and keeps the rest.
    cp "$DEPLOY/redis/"* "$CR/shipped-changed/"
    sed -i 's/^failover-timeout=.*/failover-timeout=12345/' "$CR/shipped-changed/sentinel-shipped.properties"
    echo "sentinel known-replica mymaster redis2 6379" >>"$f"
    SHIPPED_DIR=$CR/shipped-changed compose_env sh "$C/redis/start-sentinel.sh"
    expect_eq "$(grep -c '^sentinel failover-timeout mymaster ' "$f")" 1 "failover-timeout lines"
    grep -qx 'sentinel failover-timeout mymaster 12345' "$f"
    grep -qx 'sentinel known-replica mymaster redis2 6379' "$f"
}
check "compose: start-sentinel.sh writes deploy/redis/'s tunables (a Sentinel started from them reports them; a restart replaces them)" check_compose_sentinel
check_secure_compose() {
    local cfg; cfg=$(compose_json docker-compose.yml docker-compose.secure.yml)
    "$PY" - "$cfg" <<'EOF'
import json, sys
s = json.loads(sys.argv[1])["services"]
for n in ["redis1", "redis2", "redis3", "sentinel1", "sentinel2", "sentinel3"]:
    e = s[n]["environment"]
    assert e["REDIS_TLS_DIR"] == "/usr/local/etc/flashsale-tls" and e["REDIS_USERS_DIR"] == "/run/secrets", n
    assert "--tls" in " ".join(s[n]["healthcheck"]["test"]), n
    assert any("flashsale-tls" in str(v) for v in s[n]["volumes"]), n
users = {"app1": "flashsale-app", "app2": "flashsale-app", "render": "flashsale-app",
         "worker1": "flashsale-worker", "worker2": "flashsale-worker"}
for n, u in users.items():
    e = s[n]["environment"]
    assert e["FLASHSALE_REDIS_TLS"] == "true", n
    assert e["FLASHSALE_REDIS_USERNAME"] == u, n
    assert e["FLASHSALE_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_user_" + u, n
    assert e["FLASHSALE_SENTINEL_USERNAME"] == "flashsale-watch", n
    secrets = {x["source"] if isinstance(x, dict) else x for x in s[n]["secrets"]}
    assert {"redis_user_" + u, "redis_user_flashsale-watch", "redis_password"} <= secrets, (n, secrets)
assert {"jwt_secret", "admin_token"} <= {x["source"] if isinstance(x, dict) else x for x in s["app1"]["secrets"]}
assert "ledger_url" in {x["source"] if isinstance(x, dict) else x for x in s["worker1"]["secrets"]}
print("secure compose: 6 TLS nodes with the users, apps/render as flashsale-app, workers as flashsale-worker")
EOF
}
check "compose: docker-compose.secure.yml on top: TLS nodes with the ACL users, the apps and workers as their own users over TLS" check_secure_compose
# start-redis.sh / start-sentinel.sh with TLS and the users, outside a
# container, with the certificates of the ansible section.
CRX=$T/compose-secure
mkdir -p "$CRX/bin" "$CRX/redis1" "$CRX/sentinel1" "$CRX/users"
cat >"$CRX/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
case " $* " in *" --sentinel "*) echo "would start: $*"; exit 0 ;; esac
exec "$@" --tls-port "$CHECK_PORT" --bind 127.0.0.1
EOF
chmod 0755 "$CRX/bin/docker-entrypoint.sh"
for u in "${!XPW[@]}"; do printf '%s\n' "${XPW[$u]}" >"$CRX/users/redis_user_$u"; done
read -r CXP <<<"$(free_ports 1)"
compose_secure_env() {
    env PATH="$CRX/bin:$PATH" FLASHSALE_ETC="$C/redis" FLASHSALE_SHIPPED="$DEPLOY/redis" \
        REDIS_DATA="$CRX/redis1" SENTINEL_DATA="$CRX/sentinel1" REDIS_PASSWORD_FILE="$CR/redis_password" \
        REDIS_ANNOUNCE=127.0.0.1 SENTINEL_ANNOUNCE=sentinel1 CHECK_PORT="$CXP" \
        REDIS_TLS_DIR="$X/tls" REDIS_USERS_DIR="$CRX/users" "$@"
}
compose_secure_env sh "$C/redis/start-redis.sh" >"$CRX/redis1.log" 2>&1 &
PIDS+=("$!")
check_compose_secure_node() {
    wait_until 15 port_open "$CXP" || { cat "$CRX/redis1.log"; return 1; }
    local out
    not timeout 3 redis-cli -h 127.0.0.1 -p "$CXP" PING
    # (A lone master refuses writes: min-replicas-to-write. A read will do.)
    expect_eq "$(xcli flashsale-app "${XPW[flashsale-app]}" "$CXP" EXISTS fs:compose-check)" 0 "app user in its prefix"
    out=$(xcli flashsale-app "${XPW[flashsale-app]}" "$CXP" FLUSHALL 2>&1 || true)
    expect_has "$out" NOPERM
    out=$(xcli default "$REDIS_PW" "$CXP" ACL USERS | tr '\n' ' ')
    expect_eq "$out" "default flashsale-app flashsale-replica flashsale-sentinel flashsale-worker " "ACL USERS"
    grep -qx 'masteruser flashsale-replica' "$CRX/redis1/runtime.conf"
    data_node_is_shipped_tls
}
# The shipped settings hold over TLS too (CONFIG GET as default).
data_node_is_shipped_tls() {
    local k v got bad=0
    while IFS=$'\t' read -r k v; do
        got=$(xcli default "$REDIS_PW" "$CXP" CONFIG GET "$k" | sed -n 2p)
        [ "$got" = "$v" ] || { echo "TLS data node: $k is [$got], shipped [$v]"; bad=1; }
    done < <(shipped_redis)
    return $bad
}
check "compose: start-redis.sh with REDIS_TLS_DIR and REDIS_USERS_DIR: TLS only, the users of deploy/redis/users.acl, the shipped settings" check_compose_secure_node
check_compose_secure_sentinel() {
    compose_secure_env sh "$C/redis/start-sentinel.sh"
    local f=$CRX/sentinel1/sentinel.conf
    grep -qx 'tls-port 26379' "$f"
    grep -qx 'port 0' "$f"
    grep -q '^user flashsale-watch reset on >' "$f"
    grep -qx "sentinel auth-user mymaster flashsale-sentinel" "$f"
    grep -qx "sentinel sentinel-user flashsale-peer" "$f"
    # A second start replaces the lines instead of adding to them.
    compose_secure_env sh "$C/redis/start-sentinel.sh"
    expect_eq "$(grep -c '^user flashsale-watch ' "$f")" 1 "user lines"
    expect_eq "$(grep -c '^tls-port ' "$f")" 1 "tls-port lines"
    expect_eq "$(grep -c '^sentinel auth-pass mymaster ' "$f")" 1 "auth-pass lines"
    # Without them again: plain port, the data nodes' password.
    env -u REDIS_TLS_DIR -u REDIS_USERS_DIR PATH="$CRX/bin:$PATH" FLASHSALE_ETC="$C/redis" FLASHSALE_SHIPPED="$DEPLOY/redis" \
        SENTINEL_DATA="$CRX/sentinel1" REDIS_PASSWORD_FILE="$CR/redis_password" SENTINEL_ANNOUNCE=sentinel1 \
        sh "$C/redis/start-sentinel.sh"
    grep -qx 'port 26379' "$f"
    not grep -q '^tls-\|^user ' "$f"
    grep -qx "sentinel auth-pass mymaster $REDIS_PW" "$f"
}
check "compose: start-sentinel.sh with TLS and the users writes tls-port, the users of sentinel-users.acl, auth-user; a restart replaces them" check_compose_secure_sentinel
# The cluster's containers, outside a container: start-cluster-node.sh for
# six nodes, each on its own loopback address (127.0.0.21-26, as the
# containers have their own), and create-cluster.sh (cluster-init) with them.
CCR=$T/compose-cluster
mkdir -p "$CCR/bin"
cat >"$CCR/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
exec "$@" --port "$CHECK_PORT" --bind "$CLUSTER_ANNOUNCE_IP"
EOF
chmod 0755 "$CCR/bin/docker-entrypoint.sh"
read -r -a CCP <<<"$(free_cluster_ports 6 127.0.0.21 127.0.0.22 127.0.0.23 127.0.0.24 127.0.0.25 127.0.0.26)"
CCNODES=""
for i in 1 2 3 4 5 6; do
    mkdir -p "$CCR/cluster$i"
    env PATH="$CCR/bin:$PATH" FLASHSALE_ETC="$C/redis" FLASHSALE_SHIPPED="$DEPLOY/redis" REDIS_DATA="$CCR/cluster$i" \
        REDIS_PASSWORD_FILE="$CR/redis_password" CLUSTER_ANNOUNCE_IP="127.0.0.2$i" CHECK_PORT="${CCP[$((i - 1))]}" \
        sh "$C/redis/start-cluster-node.sh" >"$CCR/cluster$i.log" 2>&1 &
    PIDS+=("$!")
    CCNODES+="${CCNODES:+ }127.0.0.2$i:${CCP[$((i - 1))]}"
done
create_cluster() {
    env REDIS_PASSWORD_FILE="$CR/redis_password" CLUSTER_NODES="${1:-$CCNODES}" CLUSTER_WAIT_S="${2:-20}" \
        sh "$C/redis/create-cluster.sh"
}
check_compose_cluster() {
    local n info out rc=0
    for n in $CCNODES; do
        wait_until 15 port_open "${n#*:}" "${n%:*}" || { cat "$CCR"/cluster*.log; return 1; }
    done
    expect_eq "$(grep -E '^(include|cluster-)' "$CCR/cluster1/runtime.conf" | tr '\n' ' ')" \
        "include $C/redis/redis.conf cluster-config-file $CCR/cluster1/nodes.conf cluster-announce-ip 127.0.0.21 include $DEPLOY/redis/redis-shipped.conf include $DEPLOY/redis/redis-cluster-shipped.conf " "runtime.conf"
    for n in $CCNODES; do cluster_node_is_shipped "${n%:*}" "${n#*:}" "$REDIS_PW"; done
    # The compose file's own sizing stays its own.
    expect_eq "$(ccli 127.0.0.21 "${CCP[0]}" CONFIG GET maxmemory | sed -n 2p)" $((512 * 1024 * 1024)) maxmemory
    # One node that does not answer: nothing is done.
    out=$(create_cluster "${CCNODES%% *} 127.0.0.1:$(free_ports 1)" 1 2>&1) || rc=$?
    echo "$out"
    expect_eq "$rc" 1 "exit status with a node that does not answer"
    expect_has "$out" 'does not answer after 1s: nothing done'
    expect_eq "$(ccli 127.0.0.21 "${CCP[0]}" CLUSTER INFO | tr -d '\r' | grep '^cluster_known_nodes:')" cluster_known_nodes:1 "still alone"
    # Created: every node ok, cluster1-3 the primaries.
    out=$(create_cluster 2>&1)
    echo "$out"
    expect_has "$out" '^cluster created: cluster_state:ok on all 6 nodes$'
    not grep -q "$REDIS_PW" <<<"$out"
    not grep -q '\[29;1m' <<<"$out"
    for n in $CCNODES; do
        info=$(ccli "${n%:*}" "${n#*:}" CLUSTER INFO | tr -d '\r')
        grep -qx 'cluster_state:ok' <<<"$info" && grep -qx 'cluster_known_nodes:6' <<<"$info"
    done
    local i
    for i in 1 2 3; do expect_eq "$(ccli "127.0.0.2$i" "${CCP[$((i - 1))]}" ROLE | head -n 1)" master "cluster$i"; done
    for i in 4 5 6; do expect_eq "$(ccli "127.0.0.2$i" "${CCP[$((i - 1))]}" ROLE | head -n 1)" slave "cluster$i"; done
    # The next `up`: the cluster is there, nothing changes.
    out=$(create_cluster 2>&1)
    echo "$out"
    expect_eq "$out" "cluster_state:ok on 6 of 6 nodes: the cluster is there, nothing to create"
}
check "compose: start-cluster-node.sh starts six nodes that run deploy/redis/ (CONFIG GET); create-cluster.sh refuses while a node does not answer, creates the cluster (cluster1-3 primaries), and the next time changes nothing" check_compose_cluster
# The ledger container's start script, outside a container: as the user
# postgres (initdb and postgres refuse root; nobody without the package's
# user), paths moved by its variables, on a loopback port. The server it
# starts is what the workers' URL names.
LG=$T/compose-ledger
mkdir -p "$LG/data" "$LG/sock"
PG_USER=postgres
id "$PG_USER" >/dev/null 2>&1 || PG_USER=nobody
cp "$C/ledger/start-postgres.sh" "$LG/start-postgres.sh"
chown "$PG_USER" "$LG/data" "$LG/sock"
chmod 0700 "$LG/data"
read -r LGP <<<"$(free_ports 1)"
LG_PW=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
ledger_url() { echo "postgres://flashsale:$1@127.0.0.1:$LGP/flashsale"; }
ledger_url "$LG_PW" >"$LG/ledger_url"
chmod 0644 "$LG/ledger_url"
as_pg() { setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --clear-groups "$@"; }
# exec: $! is the script, which becomes the server.
start_ledger() {
    exec setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --clear-groups \
        env PGDATA="$LG/data" POSTGRES_BIN="$PG_BIN" LEDGER_SOCKET_DIR="$LG/sock" LEDGER_PORT="$LGP" \
        LEDGER_ALLOW=127.0.0.1/32 LEDGER_URL_FILE="$LG/ledger_url" sh "$LG/start-postgres.sh"
}
start_ledger >"$LG/start.log" 2>&1 &
PIDS+=("$!")
# lq URL SQL: one query over TCP, unaligned output.
lq() { PGCONNECT_TIMEOUT=5 timeout 10 psql "$1" -X -A -t -v ON_ERROR_STOP=1 -c "$2"; }
check_compose_ledger() {
    # Stopped when this check ends, however (it restarts the server).
    trap 'as_pg "$PG_BIN/pg_ctl" -D "$LG/data" -m fast -w stop >/dev/null 2>&1 || true' EXIT
    wait_until 30 port_open "$LGP" || { cat "$LG/start.log"; return 1; }
    local url; url=$(cat "$LG/ledger_url")
    # The URL's role, not a superuser, owns the URL's database and may
    # create the schema there (as the worker's migrations do).
    expect_eq "$(lq "$url" 'SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user')" 'flashsale|f'
    expect_eq "$(lq "$url" 'SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()')" flashsale
    lq "$url" 'CREATE TABLE deploy_check (id int PRIMARY KEY); INSERT INTO deploy_check VALUES (1)'
    # Nothing else is admitted over the network: another database, the
    # superuser, a wrong password.
    not lq "postgres://flashsale:$LG_PW@127.0.0.1:$LGP/postgres" 'SELECT 1'
    not lq "postgres://postgres:$LG_PW@127.0.0.1:$LGP/flashsale" 'SELECT 1'
    not lq "$(ledger_url wrong-password)" 'SELECT 1'
    grep -qx "host flashsale flashsale 127.0.0.1/32 scram-sha-256" "$LG/data/pg_hba.conf"
    expect_eq "$(grep -vc '^#' "$LG/data/pg_hba.conf")" 2 "pg_hba.conf lines"
    # A new URL in the secret and a restart: the new password, the old one
    # refused, the data kept.
    as_pg "$PG_BIN/pg_ctl" -D "$LG/data" -m fast -w stop >/dev/null
    local new; new=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    ledger_url "$new" >"$LG/ledger_url"
    start_ledger >"$LG/restart.log" 2>&1 &
    wait_until 30 port_open "$LGP" || { cat "$LG/restart.log"; return 1; }
    expect_eq "$(lq "$(ledger_url "$new")" 'SELECT count(*) FROM deploy_check')" 1 "rows after the restart"
    not lq "$url" 'SELECT 1'
    # A URL it cannot use: refused at start, without showing it.
    as_pg "$PG_BIN/pg_ctl" -D "$LG/data" -m fast -w stop >/dev/null
    echo "mysql://flashsale:$new@127.0.0.1:$LGP/flashsale" >"$LG/ledger_url"
    local rc=0
    (start_ledger) >"$LG/bad.log" 2>&1 || rc=$?
    cat "$LG/bad.log"
    expect_eq "$rc" 1 "exit status with a bad URL"
    grep -q '^ledger_url: not postgres://USER:PASSWORD@HOST:PORT/DATABASE' "$LG/bad.log"
    not grep -q "$new" "$LG/bad.log"
    not port_open "$LGP"
}
check "compose: the ledger's start-postgres.sh creates what the workers' URL names (its role, owning its database; nothing else admitted), follows a new password, refuses a bad URL unshown" check_compose_ledger
echo "note: docker build / docker compose up need a Docker engine; none runs here"

# ---------------------------------------------------------------------------
section "ledger's PostgreSQL (ansible role postgresql, real runs)"
# The role for real against this machine, without touching a PostgreSQL of
# anyone else's: the cluster is a throw-away one the role creates itself
# (pg_createcluster, as for a host without one) with its configuration,
# data, socket, PID file, log, backups, script and units all under a prefix
# in the temp dir (PG_CLUSTER_CONF_ROOT points Debian's tools there; they
# then leave systemd, apt and the system's clusters alone), listening on
# 127.0.0.1 on a free port. The system's clusters are compared before and
# after. A --check run into an empty prefix beside the first real run.
LP=$AT/ledgerroot
LDRY=$AT/ledgerdry
mkdir -p "$LP" "$LDRY"
chmod 0755 "$LP" "$LDRY"
read -r LDP LOPS LSTRANGER <<<"$(free_ports 3)"
LD_PW1=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
LD_PW2=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
ld_url() { echo "postgres://flashsale:$1@127.0.0.1:$LDP/flashsale"; }
# The URL reaches the role as in production: the vault's variable (here
# given as extra vars, in a 0600 file) through group_vars/all.
for n in 1 2; do
    pw=$(eval echo "\$LD_PW$n")
    (umask 077; echo "vault_flashsale_ledger_url: $(ld_url "$pw")" >"$AT/ledger-url-$n.yml")
done
# The newest PostgreSQL installed (15 on Debian 12), as the role's version.
LPG=$PG_BIN
LPGV=$(basename "$(dirname "$PG_BIN")")
# The workers at 127.0.0.1 (psql here), an operator at 127.0.0.2 (through a
# relay that connects from that address).
cat >"$AT/inv/ledger.ini" <<EOF
[ledger]
ledger1 postgresql_version=$LPGV postgresql_cluster=deploy_check postgresql_backup_keep_days=2

[worker]
worker1 ledger_client_address=127.0.0.1

[operator]
ops1 ledger_client_address=127.0.0.2

[all:vars]
ansible_connection=local
ansible_python_interpreter=$PY
ansible_become=false
deploy_manage_system=false
EOF
LSOCK=$LP/var/run/postgresql
LCONF=$LP/etc/postgresql/$LPGV/deploy_check
LDATA=$LP/var/lib/postgresql/$LPGV/deploy_check
pg_in_prefix() { env PG_CLUSTER_CONF_ROOT="$LP/etc/postgresql" "$@"; }
as_postgres() { runuser -u postgres -- "$@"; }
# The system's clusters and their configuration, as they were.
system_clusters() { env -u PG_CLUSTER_CONF_ROOT pg_lsclusters -h 2>&1; find /etc/postgresql /var/run/postgresql -maxdepth 3 2>/dev/null | sort; }
system_clusters >"$T/system-clusters.before"
# relay PORT SOURCE: connections to 127.0.0.1:PORT go on to the ledger from SOURCE.
cat >"$AT/relay.py" <<'EOF'
import socket, sys, threading
port, source, target = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
while True:
    c, _ = srv.accept()
    u = socket.socket()
    u.bind((source, 0))
    u.connect(("127.0.0.1", target))
    for a, b in ((c, u), (u, c)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
EOF
"$PY" "$AT/relay.py" "$LOPS" 127.0.0.2 "$LDP" >"$AT/relay-ops.log" 2>&1 &
PIDS+=("$!")
"$PY" "$AT/relay.py" "$LSTRANGER" 127.0.0.9 "$LDP" >"$AT/relay-stranger.log" 2>&1 &
PIDS+=("$!")

run_playbook ledgerdry ledger --check --limit ledger -e deploy_prefix="$LDRY" -e @"$AT/ledger-url-1.yml" >"$AT/ledgerdry.out" 2>&1 &
LDRY_PID=$!
PIDS+=("$LDRY_PID")
check_ledger_first_run() {
    run_playbook ledger1 ledger --limit ledger -e deploy_prefix="$LP" -e @"$AT/ledger-url-1.yml"
    grep -q 'create the role flashsale; create the database flashsale owned by flashsale' "$AT/ledger1.log"
    not grep -q "$LD_PW1" "$AT/ledger1.log"
}
check "the postgresql role (real run): creates a throw-away cluster in the prefix, its role and database" check_ledger_first_run
# Stopped by PID on exit, whatever happens below.
if LD_PID=$(head -n 1 "$LDATA/postmaster.pid" 2>/dev/null) && [[ $LD_PID =~ ^[0-9]+$ ]]; then PIDS+=("$LD_PID"); fi
LDRY_RC=0; wait "$LDRY_PID" || LDRY_RC=$?
check_ledger_dry() {
    cat "$AT/ledgerdry.out"
    [ "$LDRY_RC" = 0 ]
    [ -z "$(find "$LDRY" -mindepth 1 -print -quit)" ] || { find "$LDRY"; return 1; }
    grep -q 'changed: \[ledger1\]' "$AT/ledgerdry.log"
}
check "the postgresql role --check into an empty prefix: passes, reports changes, writes nothing" check_ledger_dry
# lq URL SQL: one query over TCP; lsock DB SQL: as the superuser on the socket.
lsock() { as_postgres "$LPG/psql" -X -A -t -v ON_ERROR_STOP=1 -h "$LSOCK" -p "$LDP" -d "$1" -c "$2"; }
# shellcheck disable=SC2016 # $$…$$ are SQL dollar quotes
check_ledger_serves() {
    # It answers on the private address of the URL (127.0.0.1 here), and
    # only there (not on 127.0.0.2, as it would on a wildcard address).
    "$LPG/pg_isready" -h 127.0.0.1 -p "$LDP"
    not bash -c "(exec 3<>/dev/tcp/127.0.0.2/$LDP) 2>/dev/null"
    grep -qx "listen_addresses = '127.0.0.1'" "$LCONF/conf.d/flashsale-ledger.conf"
    grep -qx "port = $LDP" "$LCONF/conf.d/flashsale-ledger.conf"
    expect_eq "$(lsock postgres 'SHOW password_encryption')" scram-sha-256 password_encryption
    # The URL's role: not a superuser, owning the URL's database, able to
    # create tables (as the workers' migrations do).
    local url; url=$(ld_url "$LD_PW1")
    expect_eq "$(lq "$url" 'SELECT current_user, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user')" 'flashsale|f|f|f'
    expect_eq "$(lq "$url" 'SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()')" flashsale
    lq "$url" 'CREATE TABLE deploy_check (id int PRIMARY KEY, note text); INSERT INTO deploy_check VALUES (1, $$one$$), (2, $$two$$)'
    # The operator host (127.0.0.2) too; nobody else: another host, a wrong
    # password, the superuser, another database.
    expect_eq "$(lq "postgres://flashsale:$LD_PW1@127.0.0.1:$LOPS/flashsale" 'SELECT inet_client_addr()')" 127.0.0.2 "the operator's address"
    local err
    err=$(lq "postgres://flashsale:$LD_PW1@127.0.0.1:$LSTRANGER/flashsale" 'SELECT 1' 2>&1) && { echo "a stranger got in"; return 1; }
    expect_has "$err" 'no pg_hba.conf entry for host "127.0.0.9"'
    err=$(lq "$(ld_url wrong-password)" 'SELECT 1' 2>&1) && { echo "a wrong password got in"; return 1; }
    expect_has "$err" 'password authentication failed for user "flashsale"'
    not lq "postgres://postgres:$LD_PW1@127.0.0.1:$LDP/flashsale" 'SELECT 1'
    not lq "postgres://flashsale:$LD_PW1@127.0.0.1:$LDP/postgres" 'SELECT 1'
    expect_eq "$(grep -v '^#' "$LCONF/pg_hba.conf")" "local   all       postgres  peer
host    flashsale  flashsale  127.0.0.1/32  scram-sha-256
host    flashsale  flashsale  127.0.0.2/32  scram-sha-256" pg_hba.conf
    expect_eq "$(stat -c '%a %U' "$LCONF/pg_hba.conf")" "640 postgres" "pg_hba.conf mode"
}
check "the ledger answers on 127.0.0.1 only; the URL's role logs in with its password (from a worker and an operator host), a stranger, a wrong password, the superuser, another database do not" check_ledger_serves
check_ledger_second_run() {
    run_playbook ledger2 ledger --limit ledger -e deploy_prefix="$LP" -e @"$AT/ledger-url-1.yml"
    grep -qE '^ledger1 +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$AT/ledger2.log"
}
check "the postgresql role again: changed=0 (the password checked against its SCRAM verifier, not set again)" check_ledger_second_run
LUNIT=$LP/etc/systemd/system/flashsale-ledger-backup.service
LBAK=$LP/var/backups/flashsale-ledger
# shellcheck disable=SC2016 # $$…$$ are SQL dollar quotes
check_ledger_backup() {
    # The unit as systemd would run it: its ExecStart as its User.
    local user cmd; user=$(sed -n 's/^User=//p' "$LUNIT") cmd=$(sed -n 's/^ExecStart=//p' "$LUNIT")
    expect_eq "$user" postgres "the backup's user"
    expect_eq "$cmd" "$LP/usr/local/sbin/flashsale-ledger-backup" "the backup's ExecStart"
    # Dumps older than the 2 days kept go once a new one is good; a
    # stale partial dump of an interrupted run goes too; the others stay.
    as_postgres touch -d '3 days ago' "$LBAK/flashsale-20200101T000000Z.dump"
    as_postgres touch -d '1 day ago' "$LBAK/flashsale-20200102T000000Z.dump"
    as_postgres touch "$LBAK/flashsale-20200103T000000Z.dump.partial"
    local out; out=$(runuser -u "$user" -- "$cmd")
    echo "$out"
    expect_has "$out" "^removed $LBAK/flashsale-20200101T000000Z.dump\$"
    [ ! -e "$LBAK/flashsale-20200101T000000Z.dump" ] && [ -e "$LBAK/flashsale-20200102T000000Z.dump" ]
    [ ! -e "$LBAK/flashsale-20200103T000000Z.dump.partial" ]
    local dump; dump=$(find "$LBAK" -name 'flashsale-*Z.dump' ! -name 'flashsale-2020*')
    expect_has "$dump" "/flashsale-[0-9]{8}T[0-9]{6}Z\.dump$"
    expect_eq "$(wc -l <<<"$dump")" 1 "new dumps"
    expect_eq "$(stat -c '%a %U' "$dump")" "600 postgres" "the dump's mode"
    expect_eq "$(stat -c '%a %U' "$LBAK")" "700 postgres" "the backup directory's mode"
    # Custom format, and readable: pg_restore --list names the table and its data.
    expect_eq "$(head -c 5 "$dump")" PGDMP "custom format"
    local list; list=$("$LPG/pg_restore" --list "$dump")
    expect_has "$list" 'TABLE public deploy_check flashsale$'
    expect_has "$list" 'TABLE DATA public deploy_check flashsale$'
    # The restore of deploy/README.md: a new database owned by the ledger's
    # role, the dump restored into it in one transaction, as the superuser.
    as_postgres "$LPG/createdb" -h "$LSOCK" -p "$LDP" -O flashsale flashsale_restored
    as_postgres "$LPG/pg_restore" -h "$LSOCK" -p "$LDP" --exit-on-error --single-transaction -d flashsale_restored "$dump"
    expect_eq "$(lsock flashsale_restored 'SELECT count(*), string_agg(note, $$,$$ ORDER BY id) FROM deploy_check')" '2|one,two' "restored rows"
    expect_eq "$(lsock flashsale_restored 'SELECT tableowner FROM pg_tables WHERE tablename = $$deploy_check$$')" flashsale "restored owner"
    # ...and swapped in for the live one (no session in either), which the
    # URL's role then reads.
    lq "$(ld_url "$LD_PW1")" 'INSERT INTO deploy_check VALUES (3, $$after the dump$$)'
    lsock postgres 'ALTER DATABASE flashsale RENAME TO flashsale_broken'
    lsock postgres 'ALTER DATABASE flashsale_restored RENAME TO flashsale'
    expect_eq "$(lq "$(ld_url "$LD_PW1")" 'SELECT count(*) FROM deploy_check')" 2 "rows through the URL after the swap"
    # The unit and its timer, as systemd reads them (paths out of the prefix).
    local u
    for u in flashsale-ledger-backup.service flashsale-ledger-backup.timer; do
        sed "s|$LP||g" "$LP/etc/systemd/system/$u" >"$R/etc/systemd/system/$u"
    done
    mkdir -p "$R/usr/local/sbin"
    printf '#!/bin/sh\nexit 0\n' >"$R/usr/local/sbin/flashsale-ledger-backup"
    chmod 0755 "$R/usr/local/sbin/flashsale-ledger-backup"
    grep -qx 'OnCalendar=\*-\*-\* 03:15:00' "$R/etc/systemd/system/flashsale-ledger-backup.timer"
    grep -qx 'Persistent=true' "$R/etc/systemd/system/flashsale-ledger-backup.timer"
    verify_unit flashsale-ledger-backup.service
    verify_unit flashsale-ledger-backup.timer
    systemd-analyze security --offline=yes --root="$R" --threshold=25 flashsale-ledger-backup.service | tail -n 1
}
check "the backup (the unit's ExecStart as its User): a custom-format dump pg_restore --list reads, old dumps pruned, restored into a new database and swapped in; the unit and timer verified" check_ledger_backup
check_ledger_rotation() {
    # With it, a changed server setting and one more client address (the
    # stranger's, refused above): the running server is restarted, its new
    # pg_hba.conf in force.
    local before; before=$(head -n 1 "$LDATA/postmaster.pid")
    run_playbook ledger3 ledger --limit ledger -e deploy_prefix="$LP" -e @"$AT/ledger-url-2.yml" \
        -e postgresql_max_connections=50 -e '{"postgresql_client_addresses": ["127.0.0.9"]}'
    grep -q 'set the password of flashsale' "$AT/ledger3.log"
    not grep -q "$LD_PW2" "$AT/ledger3.log"
    expect_eq "$(lq "$(ld_url "$LD_PW2")" 'SELECT count(*) FROM deploy_check')" 2 "rows, with the new password"
    not lq "$(ld_url "$LD_PW1")" 'SELECT 1'
    grep -q 'RUNNING HANDLER \[postgresql : Restart postgresql\]' "$AT/ledger3.log"
    [ "$(head -n 1 "$LDATA/postmaster.pid")" != "$before" ] || { echo "not restarted (pid $before)"; return 1; }
    expect_eq "$(lsock postgres 'SHOW max_connections')" 50 max_connections
    expect_eq "$(lq "postgres://flashsale:$LD_PW2@127.0.0.1:$LSTRANGER/flashsale" 'SELECT inet_client_addr()')" 127.0.0.9 "the new client's address"
}
check "a new password in the ledger URL (never shown), a changed setting and a new client: the role sets the password (the new one logs in, the old one no more), restarts the running server, admits the client" check_ledger_rotation
# Restarted: the new server's PID is the one to stop on exit.
if LD_PID=$(head -n 1 "$LDATA/postmaster.pid" 2>/dev/null) && [[ $LD_PID =~ ^[0-9]+$ ]]; then PIDS+=("$LD_PID"); fi
check_ledger_stop() {
    pg_in_prefix pg_ctlcluster "$LPGV" deploy_check stop
    not port_open "$LDP"
    system_clusters >"$T/system-clusters.after"
    diff "$T/system-clusters.before" "$T/system-clusters.after"
    cat "$T/system-clusters.after"
}
check "the throw-away cluster stops; the system's clusters and /etc/postgresql are as they were" check_ledger_stop
# Stopped: its PID is no longer ours to kill on exit.
if [ -n "${LD_PID:-}" ] && ! port_open "$LDP"; then
    keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$LD_PID" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
fi

# ---------------------------------------------------------------------------
section "done"
FINISHED=1
echo "check.sh took $((SECONDS - START))s"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
