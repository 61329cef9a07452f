#!/usr/bin/env python3
"""lt.py — the orchestrator behind `loadtest/run.sh` (Python stdlib only).

run.sh installs the tools and builds the binaries, then runs this script,
which:

1. starts a Redis Sentinel group with `scripts/redis-group.sh` (free ports,
   the shipped settings, a random password) in <results>/redis,
2. starts `flashsale serve` twice — acknowledgement on (`FLASHSALE_REPLICA_ACKS=all`)
   and off (`=0`) — one `flashsale-worker`, and the bare axum baseline
   (`bare`), rate limits off, a random admin token; with `--ledger` the
   worker records every order in an order ledger (`FLASHSALE_LEDGER_URL`: a
   throw-away PostgreSQL started by `pg_scratch`, the test kit's server),
3. mints shopper tokens in bulk (`flashsale token --users N --prefix u`),
4. runs the scenarios `--runs` times (the baselines last in every run, so
   each figure has the ceiling of its own run and the keys the baseline
   adds do not slow the measurement after it), checking the invariants of every
   sale afterwards (audit `consistent`, `sold <= stock_total`, and for the
   stampede: exactly as many 202 as units sold); `openloop` sends purchases
   at 25/50/75 % of the live sale's maximum rate in an open loop (loadgen
   `--rate`, latency from each request's intended send time; k6
   `constant-arrival-rate` at 50 %),
5. writes <results>/summary.md (medians, ratios to the ceilings, CPU seconds
   per process from /proc/PID/stat), results.json, raw outputs under raw/,
   and latency.svg (plot.py),
6. stops every process it started, by PID (also on Ctrl-C / SIGTERM).

Exit status: 0 when every scenario ran and every invariant held, 1 otherwise.
Timings are reported, never asserted.
"""

import argparse
import datetime
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, str(HERE))
import plot  # noqa: E402  (loadtest/plot.py)

BINARIES = ["flashsale", "flashsale-worker", "bare", "loadgen", "fcall_bench", "worker_bench", "bench_sale",
            "pg_scratch"]
# The baseline goes last in every run: redis-benchmark and fcall_bench add
# ~1.5 million keys (random users and orders) in a minute, and the live sale
# measured right after them ran at half speed for its first seconds (4 600 →
# 8 600 purchases/s over 10 s, in every run, while runs without the baseline
# before them were flat at 9 500–11 500/s). Last, its aftermath falls on the
# cleanup and AOF rewrite between runs instead of on a measurement.
# The open loop right after the live sale, whose maximum rate it reuses.
ALL_SCENARIOS = ["live", "openloop", "stampede", "soldout", "browse", "mixed", "workers", "baseline"]
CONNS = 256
# The open loop's loads, in % of the live sale's maximum purchase rate, and
# the one k6 runs too.
OPENLOOP_PCTS = (25, 50, 75)
OPENLOOP_K6_PCT = 50
# The Python seeds' stack on this kind of machine: purchases/s,
# sold-out answers/s, product JSON/s. Flashsale should do ≥ 10× these.
SEEDS = {"purchase": 2900, "soldout": 5300, "product_json": 5700}


T0 = time.monotonic()


def log(msg):
    print(f"lt: [{time.monotonic() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


# ------------------------------------------------------------------ RESP ---

class RespError(Exception):
    pass


class Resp:
    """A minimal RESP2 client (enough for INFO, SENTINEL, SCAN, UNLINK)."""

    def __init__(self, host, port, password=None, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")
        if password:
            self.call("AUTH", password)

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))

    def read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            return self.f.read(n + 2)[:-2].decode("utf-8", "replace")
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise RespError(f"unexpected reply {line!r}")

    def call(self, *args):
        self.send(*args)
        return self.read()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# Commands flashsale.lua calls (INFO commandstats counts them, and FCALL's time includes them).
IN_FUNCTIONS = {"exists", "hmget", "get", "hget", "time", "hincrby", "hsetnx", "rpush", "hset", "set",
                "xadd", "xack", "xrange", "pexpire"}


def parse_commandstats(text):
    """{command: {calls, usec}} from INFO commandstats."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, rest = line[len("cmdstat_"):].split(":", 1)
        f = dict(kv.split("=", 1) for kv in rest.strip().split(","))
        out[name] = {"calls": int(f["calls"]), "usec": int(f["usec"])}
    return out


def info_fields(text):
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


# ------------------------------------------------------------- processes ---

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a live process, in seconds (None when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid):
    """PIDs whose parent is pid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def proc_comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def machine_busy_seconds():
    """CPU seconds all CPUs spent busy (not idle or iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class LagSampler(threading.Thread):
    """Reads a sale's `orders` and `confirmed` every 250 ms while a
    measurement runs: whether the worker keeps up with the purchases."""

    def __init__(self, conn, sku):
        super().__init__(daemon=True)
        self.conn, self.sku = conn, sku
        self.samples = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                o, c = self.conn.call("HMGET", f"fs:{{{self.sku}}}:sale", "orders", "confirmed")
                self.samples.append((time.monotonic(), int(o or 0), int(c or 0)))
            except (OSError, RespError):
                pass
            self.done.wait(0.25)

    def stop(self):
        """The lag figures: purchases and confirmations per second over the
        second half of the measurement (the first half holds the worker's
        discovery of the new sale, up to 1 s), the largest backlog."""
        self.done.set()
        self.join(5)
        self.conn.close()
        s = [x for x in self.samples if x[1] > 0]
        if len(s) < 4:
            return {}
        t0, t1 = s[0][0], s[-1][0]
        mid = min(s, key=lambda x: abs(x[0] - (t0 + t1) / 2))
        last = s[-1]
        dt = max(last[0] - mid[0], 1e-3)
        return {"orders_per_s_2nd_half": round((last[1] - mid[1]) / dt),
                "confirmed_per_s_2nd_half": round((last[2] - mid[2]) / dt),
                "backlog_mid": mid[1] - mid[2], "backlog_max": max(o - c for _, o, c in s)}


class Procs:
    """Every long-running process this script started, stopped by PID."""

    def __init__(self):
        self.children = {}

    def start(self, name, cmd, env, logfile):
        out = open(logfile, "ab")
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, cwd=REPO)
        out.close()
        self.children[name] = p
        log(f"started {name} (pid {p.pid})")
        return p

    def pid(self, name):
        p = self.children.get(name)
        return p.pid if p and p.poll() is None else None

    def check_alive(self):
        for name, p in self.children.items():
            if p.poll() is not None:
                raise Failure(f"{name} (pid {p.pid}) exited with {p.returncode}; see its log")

    def signal(self, name, sig):
        p = self.children.get(name)
        if p is not None and p.poll() is None:
            p.send_signal(sig)

    def stop(self, name, timeout=15):
        p = self.children.pop(name, None)
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {p.pid}) ignored SIGTERM for {timeout} s; SIGKILL")
            p.kill()
            return p.wait()

    def stop_all(self):
        # The order ledger last: the worker may still be writing to it.
        for name in sorted(self.children, key=lambda n: n == "ledger"):
            self.stop(name)


def run_child(cmd, logfile, timeout, env=None):
    """Runs a bounded child; returns (exit code, its CPU seconds, wall seconds)."""
    t0 = time.monotonic()
    with open(logfile, "ab") as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=env, cwd=REPO)
    deadline = t0 + timeout
    status, ru = None, None
    try:
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if time.monotonic() > deadline:
                log(f"{cmd[0]} ran over {timeout} s; killing pid {p.pid}")
                p.send_signal(signal.SIGTERM)
                time.sleep(2)
                p.kill()
                _, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
    except BaseException:
        if status is None:
            p.kill()
            os.wait4(p.pid, 0)
        raise
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime, time.monotonic() - t0


# ------------------------------------------------------------------ HTTP ---

def http_call(port, method, path, body=None, headers=None, timeout=15):
    """One HTTP/1.1 call to 127.0.0.1:`port`, or to `port` = (host, port)."""
    host, port = port if isinstance(port, tuple) else ("127.0.0.1", port)
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        h = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        try:
            j = json.loads(raw) if raw else None
        except ValueError:
            j = raw.decode("utf-8", "replace")
        return r.status, j
    finally:
        c.close()


def rfc3339(ms):
    dt = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms():
    return int(time.time() * 1000)


def port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pick_base_port():
    for _ in range(500):
        base = random.randint(20000, 32700)
        if all(port_free(base + off) for off in (0, 1, 2, 10, 11, 12)):
            return base
    raise Failure("no free base port for the Redis group")


def strip_bin_dir(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--bin-dir":
            skip = True
        elif not a.startswith("--bin-dir="):
            out.append(a)
    return out


def git_describe():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ------------------------------------------------------------- the bench ---

class Peer:
    """A second implementation of the HTTP contract, given by URL
    (`--peer`), with the two secrets it was started with (`--peer-env`: the
    contract's `FLASHSALE_JWT_SECRET` and `FLASHSALE_ADMIN_TOKEN`, as
    `NAME=value` lines) and, optionally, the PIDs whose CPU is its own
    (`--peer-pid`, children included)."""

    def __init__(self, url, env_file, pids):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname or u.path not in ("", "/"):
            raise SystemExit(f"lt: --peer {url!r}: give http://HOST:PORT")
        self.url = f"http://{u.hostname}:{u.port or 80}"
        self.addr = (u.hostname, u.port or 80)
        env = {}
        for line in Path(env_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip().strip('"').strip("'")
        for k in ("FLASHSALE_JWT_SECRET", "FLASHSALE_ADMIN_TOKEN"):
            if not env.get(k):
                raise SystemExit(f"lt: --peer-env {env_file}: no {k}=… line")
        self.jwt_secret = env["FLASHSALE_JWT_SECRET"]
        self.admin_token = env["FLASHSALE_ADMIN_TOKEN"]
        self.pids = [int(p) for p in pids.split(",") if p.strip()] if pids else []
        self.tokens = None

    def cpu_seconds(self):
        if not self.pids:
            return None
        return sum(cpu_seconds(p) or 0 for pid in self.pids for p in [pid] + children_of(pid))


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.ledger_url = None
        self.ledger_pid = None
        src_bin = Path(args.bin_dir).resolve()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = Path(args.out).resolve() if args.out else HERE / "results" / stamp
        self.raw = self.out / "raw"
        self.logs = self.out / "logs"
        for d in (self.raw, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        # Pin the binaries: other builds may replace target/ during a run.
        # Hard links keep the inodes of this build (no copy), removed at the end.
        self.bin = self.out / "bin"
        self.bin.mkdir(exist_ok=True)
        for name in BINARIES:
            src, dst = src_bin / name, self.bin / name
            if not src.is_file():
                raise SystemExit(f"lt: {src} missing (cargo build --release --workspace)")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        self.procs = Procs()
        self.group_dir = self.out / "redis"
        self.group_started = False
        self.password = "lt-" + secrets.token_hex(12)
        self.jwt_secret = secrets.token_hex(32)
        self.admin_token = secrets.token_hex(24)
        self.failures = []
        self.results = {}  # run -> name -> measurement
        self.invariants = []  # (run, sku, audit, ok, note)
        self.k6 = not args.no_k6
        q = self.quick
        self.dur = 2.0 if q else 10.0          # live sale, mixed
        self.dur_short = 2.0 if q else 5.0     # single-URL oha runs, fcall_bench
        self.dur_stampede = 3.0 if q else 10.0
        self.rb_requests = 20_000 if q else 150_000
        self.n_tokens = 20_000 if q else 200_000
        self.wb_orders = 2_000 if q else 50_000
        self.run_skus = []
        self.rb_skus = []
        self.peer = Peer(args.peer, args.peer_env, args.peer_pid) if args.peer else None

    # --- environment ---------------------------------------------------

    def base_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        env.update({
            "FLASHSALE_REDIS_SENTINELS": self.sentinels,
            "FLASHSALE_REDIS_MASTER_NAME": "mymaster",
            "FLASHSALE_REDIS_PASSWORD": self.password,
        })
        return env

    def server_env(self, port, acks):
        env = self.base_env()
        env.update({
            "FLASHSALE_JWT_SECRET": self.jwt_secret,
            "FLASHSALE_ADMIN_TOKEN": self.admin_token,
            "FLASHSALE_RATE_LIMIT_PER_SHOPPER": "0",
            "FLASHSALE_RATE_LIMIT_PER_IP": "0",
            "FLASHSALE_STATIC_DIR": str(REPO / "static"),
            "FLASHSALE_LISTEN": f"127.0.0.1:{port}",
            "FLASHSALE_REPLICA_ACKS": acks,
        })
        return env

    # --- set-up --------------------------------------------------------

    def start_group(self):
        base = pick_base_port()
        self.base_port = base
        cmd = ["bash", str(REPO / "scripts/redis-group.sh"), "start", "--dir", str(self.group_dir),
               "--base-port", str(base)]
        env = dict(os.environ, REDIS_GROUP_PASSWORD=self.password)
        self.group_started = True
        r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=90)
        (self.logs / "redis-group.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise Failure(f"redis-group.sh start failed:\n{r.stdout}{r.stderr}")
        self.sentinels = ",".join(f"127.0.0.1:{base + 10 + i}" for i in range(3))
        self.redis_pids = {}
        for i in range(3):
            self.redis_pids[base + i] = int((self.group_dir / f"redis-{i}/redis.pid").read_text().strip())
        self.sentinel_pids = [int((self.group_dir / f"sentinel-{i}/sentinel.pid").read_text().strip())
                              for i in range(3)]
        log(f"redis group on ports {base}..{base + 12} ({self.group_dir})")

    def data_nodes(self):
        return [Resp("127.0.0.1", self.base_port + i, self.password, timeout=10) for i in range(3)]

    def no_auto_rewrite(self):
        """Automatic AOF rewrites fork and copy the whole data set on the
        same two cores; turned off for the run and done between runs
        (`settle_aof`), so none lands inside a measurement."""
        for r in self.data_nodes():
            try:
                r.call("CONFIG", "SET", "auto-aof-rewrite-percentage", "0")
                # Diagnostic only (changes no behaviour): the latency monitor
                # records events of 10 ms and more instead of the shipped
                # 100 ms, so the open loop can name what stalled it.
                r.call("CONFIG", "SET", "latency-monitor-threshold", str(LATENCY_MONITOR_MS))
            finally:
                r.close()

    def settle_aof(self, secs=180):
        """Rewrites every data node's AOF and waits until all are done."""
        nodes = self.data_nodes()
        try:
            for r in nodes:
                try:
                    r.call("BGREWRITEAOF")
                except RespError:
                    pass  # one already in progress or scheduled
            deadline = time.monotonic() + secs
            while time.monotonic() < deadline:
                busy = False
                for r in nodes:
                    info = r.call("INFO", "persistence")
                    busy |= "aof_rewrite_in_progress:1" in info or "aof_rewrite_scheduled:1" in info
                if not busy:
                    return
                time.sleep(0.5)
            log("AOF rewrites still running after the wait; going on")
        finally:
            for r in nodes:
                r.close()

    def redis_marks(self, reset=False):
        """Each data node's counters of what can stall it (forks, delayed
        AOF fsyncs); with `reset`, its latency monitor is emptied too, so
        `redis_events` shows what happened during one measurement only."""
        marks = {}
        for i, r in enumerate(self.data_nodes()):
            try:
                if reset:
                    r.call("LATENCY", "RESET")
                info = info_fields(r.call("INFO", "all"))
                marks[i] = {k: int(info.get(k, 0) or 0) for k in
                            ("total_forks", "aof_delayed_fsync")}
            finally:
                r.close()
        return marks

    def redis_events(self, before):
        """Per data node (by port): forks and delayed AOF fsyncs since
        `before`, and the latency monitor's events over its threshold
        (`LATENCY LATEST`: event, latest ms, max ms)."""
        after = self.redis_marks()
        out = {}
        for i, r in enumerate(self.data_nodes()):
            try:
                latest = r.call("LATENCY", "LATEST") or []
            finally:
                r.close()
            node = {k: after[i][k] - before[i][k] for k in after[i] if after[i][k] - before[i][k]}
            events = {str(e[0]): [int(e[2]), int(e[3])] for e in latest}
            if events:
                node["latency_ms"] = events
            if node:
                out[str(self.base_port + i)] = node
        return out

    def wait_quiet(self, secs=60, ops=None):
        """Waits until the master is quiet (`instantaneous_ops_per_sec` below
        `ops` twice, 0.5 s apart): the previous measurement's wake (the
        worker confirming and trimming its orders) must not run during a
        latency-sensitive one. Returns the seconds waited."""
        t0 = time.monotonic()
        quiet = 0
        while time.monotonic() - t0 < secs:
            r = self.redis()
            try:
                now = int(info_fields(r.call("INFO", "stats")).get("instantaneous_ops_per_sec", 0))
            finally:
                r.close()
            quiet = quiet + 1 if now < (ops or QUIET_OPS) else 0
            if quiet >= 2:
                break
            time.sleep(0.5)
        else:
            log(f"the master was still busy after {secs} s; going on")
        return round(time.monotonic() - t0, 2)

    def stop_group(self):
        if self.group_started:
            subprocess.run(["bash", str(REPO / "scripts/redis-group.sh"), "stop", "--dir",
                            str(self.group_dir)], cwd=REPO, capture_output=True, timeout=60)
            self.group_started = False

    def master(self):
        for i in range(3):
            try:
                s = Resp("127.0.0.1", self.base_port + 10 + i, timeout=3)
                host, port = s.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
                s.close()
                return host, int(port)
            except (OSError, RespError, TypeError, ValueError):
                continue
        raise Failure("no Sentinel names a master")

    def redis(self, timeout=10.0):
        host, port = self.master()
        return Resp(host, port, self.password, timeout=timeout)

    def wait_ready(self, port, name, secs=30):
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            self.procs.check_alive()
            try:
                st, _ = http_call(port, "GET", "/readyz", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise Failure(f"{name} on port {port} not ready within {secs} s")

    def start_ledger(self):
        """--ledger: the test kit's throw-away PostgreSQL (pg_scratch, which
        stops it and removes its data on SIGTERM), for the worker's
        FLASHSALE_LEDGER_URL."""
        url_file = self.out / "ledger-url"
        self.procs.start("ledger", [str(self.bin / "pg_scratch"), "--url-file", str(url_file)],
                         dict(os.environ), self.logs / "ledger.log")
        deadline = time.monotonic() + 60
        while not url_file.exists():
            self.procs.check_alive()
            if time.monotonic() > deadline:
                raise Failure("pg_scratch wrote no URL within 60 s; see logs/ledger.log")
            time.sleep(0.1)
        self.ledger_url = url_file.read_text().strip()
        url_file.unlink()
        # The postmaster: pg_scratch's child (its backends are its children).
        me = self.procs.pid("ledger")
        self.ledger_pid = next((p for p in children_of(me) if proc_comm(p) == "postgres"), None)
        log(f"order ledger: PostgreSQL (postmaster pid {self.ledger_pid})")

    def start_services(self):
        self.port_all = free_port()
        self.port_noack = free_port()
        self.port_bare = free_port()
        serve = str(self.bin / "flashsale")
        self.procs.start("server", [serve, "serve"], self.server_env(self.port_all, "all"),
                         self.logs / "server.log")
        self.procs.start("server_noack", [serve, "serve"], self.server_env(self.port_noack, "0"),
                         self.logs / "server-noack.log")
        worker_env = self.base_env()
        if self.ledger_url:
            worker_env["FLASHSALE_LEDGER_URL"] = self.ledger_url
        if self.args.worker_batch:
            worker_env["FLASHSALE_WORKER_BATCH"] = str(self.args.worker_batch)
        self.procs.start("worker", [str(self.bin / "flashsale-worker")], worker_env,
                         self.logs / "worker.log")
        self.procs.start("bare", [str(self.bin / "bare"), "--listen", f"127.0.0.1:{self.port_bare}"],
                         dict(os.environ), self.logs / "bare.log")
        self.wait_ready(self.port_all, "flashsale serve (acks all)")
        self.wait_ready(self.port_noack, "flashsale serve (acks 0)")
        self.scraper = Scraper([self.port_all, self.port_noack], SCRAPE_EVERY_S)
        deadline = time.monotonic() + 15
        while True:
            try:
                st, _ = http_call(self.port_bare, "GET", "/", timeout=2)
                if st == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failure("bare did not answer within 15 s")
            time.sleep(0.1)

    def mint_tokens(self):
        self.tokens = self.out / "tokens.txt"
        env = dict(os.environ, FLASHSALE_JWT_SECRET=self.jwt_secret)
        t0 = time.monotonic()
        r = subprocess.run([str(self.bin / "flashsale"), "token", "--users", str(self.n_tokens),
                            "--prefix", "u", "--out", str(self.tokens)], env=env, capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            raise Failure(f"flashsale token failed: {r.stderr}")
        # A small pool for k6 (SharedArray parse time) and a shopper who never buys.
        lines = self.tokens.read_text().splitlines()
        self.tokens_k6 = self.out / "tokens-k6.txt"
        self.tokens_k6.write_text("\n".join(lines[:20_000]) + "\n")
        r = subprocess.run([str(self.bin / "flashsale"), "token", "--user", "prober"], env=env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Failure(f"flashsale token failed: {r.stderr}")
        self.prober = r.stdout.strip()
        r = subprocess.run([str(self.bin / "flashsale"), "token", "--user", "first-buyer"], env=env,
                           capture_output=True, text=True, timeout=60)
        self.first_buyer = r.stdout.strip()
        log(f"minted {len(lines)} shopper tokens in {time.monotonic() - t0:.1f} s")
        if self.peer:
            # The same shoppers, signed with the peer's secret.
            self.peer.tokens = self.out / "tokens-peer.txt"
            env = dict(os.environ, FLASHSALE_JWT_SECRET=self.peer.jwt_secret)
            r = subprocess.run([str(self.bin / "flashsale"), "token", "--users", str(self.n_tokens),
                                "--prefix", "u", "--out", str(self.peer.tokens)], env=env,
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise Failure(f"flashsale token (peer) failed: {r.stderr}")
            for who in ("prober", "first-buyer"):
                r = subprocess.run([str(self.bin / "flashsale"), "token", "--user", who], env=env,
                                   capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise Failure(f"flashsale token (peer) failed: {r.stderr}")
                setattr(self.peer, who.replace("-", "_"), r.stdout.strip())

    # --- sales ----------------------------------------------------------

    def create_sale(self, sku, stock, limit, starts_ms=None, ends_ms=None, track=True, peer=None):
        """Through `POST /admin/sales` of our WAIT-on server, or of the peer."""
        starts_ms = starts_ms if starts_ms is not None else now_ms() - 60_000
        ends_ms = ends_ms if ends_ms is not None else now_ms() + 6 * 3600_000
        st, j = http_call(peer.addr if peer else self.port_all, "POST", "/admin/sales", {
            "sku": sku, "name": f"Load test {sku}", "description": "created by loadtest/lt.py",
            "price_cents": 1999, "stock": stock, "starts_at": rfc3339(starts_ms),
            "ends_at": rfc3339(ends_ms), "per_user_limit": limit,
        }, {"Authorization": f"Bearer {peer.admin_token if peer else self.admin_token}"})
        if st != 201:
            raise Failure(f"creating sale {sku}{' on the peer' if peer else ''}: {st} {j}")
        if track and not peer:
            self.run_skus.append(sku)
        return sku

    def audit(self, sku, peer=None):
        st, j = http_call(peer.addr if peer else self.port_all, "GET", f"/admin/sales/{sku}/audit", None,
                          {"Authorization": f"Bearer {peer.admin_token if peer else self.admin_token}"})
        if st != 200:
            raise Failure(f"audit of {sku}{' on the peer' if peer else ''}: {st} {j}")
        return j

    def check_sale(self, run, sku, accepted=None, exact=False, note="", peer=None):
        """Invariants after a scenario: consistent, sold <= stock, and the 202s
        all exist (== sold when nothing else bought). A peer's audit is
        its `GET /admin/sales/{sku}/audit` (the contract's)."""
        a = self.audit(sku, peer)
        ok = bool(a.get("consistent")) and a["sold"] <= a["stock_total"] \
            and a["stock_left"] + a["sold"] == a["stock_total"]
        why = []
        if not a.get("consistent"):
            why.append("audit not consistent")
        if a["sold"] > a["stock_total"]:
            why.append("oversold")
        if accepted is not None:
            if exact and a["orders"] != accepted:
                ok = False
                why.append(f"{accepted} answered 202 but {a['orders']} orders exist")
            elif a["orders"] < accepted:
                ok = False
                why.append(f"{accepted} answered 202 but only {a['orders']} orders exist")
        self.invariants.append({"run": run, "sku": sku, "audit": a, "ok": ok,
                                "note": note, "why": why, "accepted": accepted})
        if not ok:
            self.failures.append(f"run {run}: invariants of {sku} broken: {', '.join(why)} ({a})")
        return a

    def wait_confirmed(self, skus, secs=90):
        """Waits until the worker confirmed every order of the given sales."""
        deadline = time.monotonic() + secs
        r = self.redis()
        try:
            pending = list(skus)
            while pending and time.monotonic() < deadline:
                still = []
                for sku in pending:
                    orders, confirmed = r.call("HMGET", f"fs:{{{sku}}}:sale", "orders", "confirmed")
                    if int(orders or 0) > int(confirmed or 0):
                        still.append(sku)
                pending = still
                if pending:
                    time.sleep(0.2)
            return pending
        finally:
            r.close()

    def cleanup_sales(self, skus):
        """Removes the sales' keys (but the stream, which the worker keeps
        reading) once the worker has confirmed them, to keep Redis small."""
        left = self.wait_confirmed(skus)
        if left:
            log(f"worker still confirming {left}; keeping their keys")
        r = self.redis(timeout=60)
        try:
            for sku in skus:
                if sku in left:
                    continue
                cursor = "0"
                while True:
                    cursor, keys = r.call("SCAN", cursor, "MATCH", f"fs:{{{sku}}}:*", "COUNT", 5000)
                    keys = [k for k in keys if not k.endswith(":stream")]
                    if keys:
                        r.call("UNLINK", *keys)
                    if cursor == "0":
                        break
                r.call("ZREM", "fs:sales", sku)
        finally:
            r.close()

    def cleanup_prefix(self, prefix, skus):
        """Removes every key of the benchmark sales (no worker reads them)."""
        r = self.redis(timeout=60)
        try:
            for sku in skus:
                cursor = "0"
                while True:
                    cursor, keys = r.call("SCAN", cursor, "MATCH", f"{prefix}:{{{sku}}}:*", "COUNT", 5000)
                    if keys:
                        r.call("UNLINK", *keys)
                    if cursor == "0":
                        break
                r.call("ZREM", f"{prefix}:sales", sku)
        finally:
            r.close()

    # --- measurement ------------------------------------------------------

    def cpu_snapshot(self):
        snap = {}
        for name in ("server", "server_noack", "worker", "bare"):
            pid = self.procs.pid(name)
            snap[name] = cpu_seconds(pid) if pid else None
        master = self.master()[1]
        snap["redis_master"] = cpu_seconds(self.redis_pids.get(master, -1))
        snap["redis_replicas"] = sum(cpu_seconds(p) or 0 for port, p in self.redis_pids.items()
                                     if port != master)
        snap["sentinels"] = sum(cpu_seconds(p) or 0 for p in self.sentinel_pids)
        if self.peer and self.peer.pids:
            snap["peer"] = self.peer.cpu_seconds()
        if self.ledger_pid:
            # The postmaster and its backends (those still running).
            snap["ledger"] = sum(cpu_seconds(p) or 0
                                 for p in [self.ledger_pid] + children_of(self.ledger_pid))
        snap["_machine"] = machine_busy_seconds()
        snap["_t"] = time.monotonic()
        return snap

    @staticmethod
    def cpu_delta(before, after, gen_cpu):
        """CPU seconds per process over a measurement, and the CPU the rest of
        the machine (other users' processes) took meanwhile, in cores."""
        cpu = {k: round(after[k] - before[k], 2) for k in before
               if not k.startswith("_") and after.get(k) is not None and before.get(k) is not None}
        cpu["generator"] = round(gen_cpu, 2)
        ours = sum(cpu.values())
        wall = max(after["_t"] - before["_t"], 1e-3)
        cpu["others_cores"] = round(max(after["_machine"] - before["_machine"] - ours, 0) / wall, 2)
        return cpu

    def generate(self, run, name, cmd, timeout, parse, meta=None, rss_pid=None):
        """Runs one load generator with CPU snapshots around it."""
        self.procs.check_alive()
        logfile = self.raw / f"r{run}-{name}.log"
        before = self.cpu_snapshot()
        sampler = RssSampler(rss_pid) if rss_pid else None
        perf = self.perf_start(run, name)
        rc, gen_cpu, wall = run_child(cmd, logfile, timeout)
        self.perf_stop(perf)
        if sampler:
            sampler.stop()
        after = self.cpu_snapshot()
        cpu = self.cpu_delta(before, after, gen_cpu)
        if rc != 0:
            raise Failure(f"{name}: {cmd[0]} exited {rc}; see {logfile}")
        m = parse()
        m.update(meta or {})
        m["cpu_s"] = cpu
        m["wall_s"] = round(wall, 2)
        if sampler:
            m["rss_peak_mb"] = round(sampler.peak_kb / 1024, 1)
        self.results.setdefault(run, {})[name] = m
        log(f"run {run} {name}: {m.get('rps', 0):.0f} req/s, p50 {fmt_ms(m.get('p50'))}, "
            f"p99 {fmt_ms(m.get('p99'))}, status {m.get('status')}")
        return m

    def perf_start(self, run, name):
        """With --perf: samples the process under test (first run only)."""
        if not self.args.perf or run != 1:
            return None
        proc = "server_noack" if name.startswith("live_noack") else ("bare" if name.startswith("bare") else "server")
        pid = self.procs.pid(proc)
        if not pid or name.startswith(("redis_benchmark", "fcall", "workers")):
            return None
        data = self.raw / f"perf-{name}.data"
        p = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "--call-graph",
                              "dwarf,16384", "-p", str(pid), "-o", str(data)],
                             stdout=subprocess.DEVNULL, stderr=open(self.raw / f"perf-{name}.log", "ab"))
        time.sleep(0.3)
        return (p, data, name)

    def perf_stop(self, perf):
        if perf is None:
            return
        p, data, name = perf
        p.send_signal(signal.SIGINT)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        out = self.raw / f"perf-{name}.txt"
        with open(out, "w") as f:
            for args in (["--no-children", "--sort", "dso,symbol"], ["--children", "--sort", "symbol"]):
                f.write(f"### perf report {' '.join(args)} -g none\n")
                f.flush()
                subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none",
                                "--percent-limit", "0.5"] + args, stdout=f, stderr=subprocess.DEVNULL,
                               timeout=600)
        if not self.args.keep_bin:
            data.unlink(missing_ok=True)
        log(f"perf profile of {name}: {out}")

    def loadgen(self, run, name, reqs, duration, tokens=None, start_at=None, target=None, meta=None,
                conns=CONNS, rss_pid=None, url=None):
        out = self.raw / f"r{run}-{name}.json"
        cmd = [str(self.bin / "loadgen"), "--target", url or f"http://127.0.0.1:{target or self.port_all}",
               "-c", str(conns), "-z", str(duration), "--out", str(out), "--label", name]
        for r in reqs:
            cmd += ["--req", r]
        if tokens:
            cmd += ["--tokens", str(tokens)]
        if start_at:
            cmd += ["--start-at-ms", str(start_at)]
        return self.generate(run, name, cmd, duration + 90, lambda: parse_loadgen(out), meta, rss_pid)

    def oha(self, run, name, path, port, method="GET", token=None, duration=None, meta=None, url=None,
            rate=None):
        out = self.raw / f"r{run}-{name}.json"
        duration = duration or self.dur_short
        cmd = ["oha", "--no-tui", "--output-format", "json", "-o", str(out), "-c", str(CONNS),
               "-z", f"{duration}s", "-w"]
        if rate:
            cmd += ["-q", f"{rate:.0f}"]
        if method != "GET":
            cmd += ["-m", method, "-d", '{"qty":1}', "-T", "application/json"]
        if token:
            cmd += ["-H", f"Authorization: Bearer {token}"]
        cmd.append(f"{url or f'http://127.0.0.1:{port}'}{path}")
        return self.generate(run, name, cmd, duration + 60, lambda: parse_oha(out), meta)

    # --- scenarios -------------------------------------------------------

    def sku(self, kind, run):
        return f"{kind}-r{run}-{secrets.token_hex(3)}"

    def sc_baseline(self, run):
        # The benchmark sale lives under its own key prefix (`rb`), so no
        # worker reads its stream: redis-benchmark fills KEYS and ARGV with
        # independent random numbers, so its orders cannot be confirmed, and
        # the ceiling is the Function alone. Same Function, same master.
        sku = self.sku("bench", run)
        host, port = self.master()
        # The sale, its audit and the purchase command come from the
        # Function library's typed face (bench_sale), never spelled here.
        self.bench_sale("create", "--sku", sku)
        self.rb_skus.append(sku)
        purchase = self.bench_sale("purchase-command", "--sku", sku).split("\n")[:-1]
        for c in (50, CONNS):
            name = f"redis_benchmark_c{c}"
            out = self.raw / f"r{run}-{name}.csv"
            cmd = ["redis-benchmark", "-h", host, "-p", str(port), "-a", self.password, "-c", str(c),
                   "-n", str(self.rb_requests), "-r", "2000000000", "--csv", *purchase]

            def parse(out=out, c=c):
                return parse_redis_benchmark(out)
            self.generate_to_file(run, name, cmd, out, 300, parse, {"tool": "redis-benchmark", "conns": c,
                                                                   "requests": self.rb_requests})
        for c in (50, CONNS):
            for wait in (0, 2):
                name = f"fcall_c{c}_wait{wait}"
                out = self.raw / f"r{run}-{name}.json"
                cmd = [str(self.bin / "fcall_bench"), "--sku", sku, "--prefix", "rb", "-c", str(c), "-z",
                       str(self.dur_short), "--wait", str(wait), "--out", str(out)]
                self.generate_env(run, name, cmd, out, self.dur_short + 60, {"tool": "fcall_bench",
                                                                             "conns": c})
        self.oha(run, "bare_get", "/api/products/bare", self.port_bare, meta={"tool": "oha", "conns": CONNS})
        self.oha(run, "bare_post", "/api/sales/bare/purchase", self.port_bare, method="POST",
                 token=self.prober, meta={"tool": "oha", "conns": CONNS})
        live = self.results.get(run, {}).get("live_all")
        if live and live.get("rps"):
            # The same bare POST at the live sale's rate (oha -q): a server's
            # CPU per answer falls as its rate rises (fewer wake-ups, fuller
            # epoll batches), so this is the like-for-like ceiling of a purchase.
            self.oha(run, "bare_post_live_rate", "/api/sales/bare/purchase", self.port_bare, method="POST",
                     token=self.prober, rate=live["rps"],
                     meta={"tool": "oha", "conns": CONNS, "target_rps": live["rps"]})
        audit = json.loads(self.bench_sale("audit", "--sku", sku))
        ok = audit["consistent"] and audit["sold"] <= audit["stock_total"]
        self.invariants.append({"run": run, "sku": f"rb:{sku}", "audit": audit, "ok": ok,
                                "note": "redis-benchmark + fcall_bench", "why": [] if ok else ["audit"],
                                "accepted": None})
        if not ok:
            self.failures.append(f"run {run}: benchmark sale {sku}: {audit}")

    def bench_sale(self, *args):
        """Runs bench_sale on the benchmark's key prefix (`rb`); its stdout."""
        env = dict(self.base_env(), FLASHSALE_KEY_PREFIX="rb")
        r = subprocess.run([str(self.bin / "bench_sale"), *args], env=env, capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise Failure(f"bench_sale {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def generate_to_file(self, run, name, cmd, out, timeout, parse, meta):
        # redis-benchmark writes its CSV to stdout: run it with stdout to `out`.
        self.procs.check_alive()
        before = self.cpu_snapshot()
        t0 = time.monotonic()
        with open(out, "wb") as f:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=open(self.raw / f"r{run}-{name}.log", "ab"), cwd=REPO)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                _, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        after = self.cpu_snapshot()
        if p.returncode != 0:
            raise Failure(f"{name}: {cmd[0]} exited {p.returncode}")
        m = parse()
        m.update(meta)
        m["cpu_s"] = self.cpu_delta(before, after, ru.ru_utime + ru.ru_stime)
        m["wall_s"] = round(time.monotonic() - t0, 2)
        self.results.setdefault(run, {})[name] = m
        log(f"run {run} {name}: {m['rps']:.0f} calls/s, p50 {fmt_ms(m.get('p50'))}, p99 {fmt_ms(m.get('p99'))}")

    def generate_env(self, run, name, cmd, out, timeout, meta):
        """A generator that needs the group's environment (fcall_bench)."""
        self.procs.check_alive()
        logfile = self.raw / f"r{run}-{name}.log"
        before = self.cpu_snapshot()
        rc, gen_cpu, wall = run_child(cmd, logfile, timeout, env=self.base_env())
        after = self.cpu_snapshot()
        if rc != 0:
            raise Failure(f"{name}: exited {rc}; see {logfile}")
        j = json.loads(out.read_text())
        lat = j["latency"]
        m = {"rps": j["rps"], "requests": j["calls"], "p50": lat["p50_ms"], "p99": lat["p99_ms"],
             "p999": lat["p999_ms"], "max": lat["max_ms"], "status": {"ok": j["calls"]},
             "errors": {"errors": j["errors"], "not_created": j["not_created"]}}
        m.update(meta)
        m["cpu_s"] = self.cpu_delta(before, after, gen_cpu)
        m["wall_s"] = round(wall, 2)
        self.results.setdefault(run, {})[name] = m
        log(f"run {run} {name}: {m['rps']:.0f} calls/s, p50 {fmt_ms(m['p50'])}, p99 {fmt_ms(m['p99'])}")

    def sc_live(self, run):
        # With the worker confirming as orders come in (the real system), and
        # with the worker paused (SIGSTOP; it catches up afterwards): the
        # purchase path alone, comparable with redis-benchmark's Function alone.
        for name, port in (("live_all", self.port_all), ("live_noack", self.port_noack),
                           ("live_all_solo", self.port_all), ("live_noack_solo", self.port_noack)):
            solo = name.endswith("_solo")
            if solo:
                self.procs.signal("worker", signal.SIGSTOP)
            try:
                self.live_one(run, name, port)
            finally:
                if solo:
                    self.procs.signal("worker", signal.SIGCONT)
            # Let the worker catch up before the next measurement, so its
            # backlog does not run during someone else's figures; how long
            # that takes says whether it kept up.
            t0 = time.monotonic()
            left = self.wait_confirmed([self.run_skus[-1]], secs=120)
            m = self.results.get(run, {}).get(name)
            if m is not None and not left:
                m["worker_caught_up_s"] = round(time.monotonic() - t0, 2)
            if left:
                log(f"worker still confirming {left} after 120 s")

    def live_one(self, run, name, port):
        sku = self.create_sale(self.sku("live", run), 100_000_000, 1_000_000)
        time.sleep(0.3)  # past the other instance's catalog cache
        # Where Redis spends its time: INFO commandstats of the master
        # (reset before), and the group-commit rounds (INCR fs:ack each).
        r = self.redis()
        try:
            r.call("CONFIG", "RESETSTAT")
            rounds0 = int(r.call("GET", "fs:ack") or 0)
        finally:
            r.close()
        lag = LagSampler(self.redis(), sku)
        lag.start()
        try:
            m = self.loadgen(run, name, [f"1:POST:/api/sales/{sku}/purchase"], self.dur,
                             tokens=self.tokens, target=port,
                             meta={"tool": "loadgen", "conns": CONNS, "sku": sku,
                                   "acks": "all" if port == self.port_all else "0"})
        finally:
            m_lag = lag.stop()
        m["worker_lag"] = m_lag
        r = self.redis()
        try:
            orders, confirmed = r.call("HMGET", f"fs:{{{sku}}}:sale", "orders", "confirmed")
            m["worker_backlog_end"] = int(orders or 0) - int(confirmed or 0)
            rounds = int(r.call("GET", "fs:ack") or 0) - rounds0
            stats = parse_commandstats(r.call("INFO", "commandstats"))
        finally:
            r.close()
        n = m["status"].get("202", 0)
        m["ack_rounds"] = rounds
        m["purchases_per_round"] = n / rounds if rounds else None
        m["redis_commandstats"] = stats
        # Commands the Functions call are counted inside FCALL's time too.
        top = sum(v["usec"] for c, v in stats.items() if c not in IN_FUNCTIONS)
        m["redis_master_busy_us_per_purchase"] = top / n if n else None
        self.check_sale(run, sku, accepted=n, note=name)

    def sc_openloop(self, run):
        """Open-loop purchases (latency from each request's intended send
        time) at 25, 50 and 75 % of the live sale's maximum rate (WAIT on),
        loadgen; k6's constant-arrival-rate at 50 %. The maximum is the
        `live` scenario's figure of this run, or measured the same way."""
        live = self.results.get(run, {}).get("live_all")
        if live is not None:
            max_rps, source = live["rps"], "live_all"
        else:
            self.live_one(run, "openloop_max", self.port_all)
            self.wait_confirmed([self.run_skus[-1]], secs=120)
            max_rps, source = self.results[run]["openloop_max"]["rps"], "openloop_max"
        if not max_rps:
            raise Failure(f"openloop: no maximum rate ({source} measured {max_rps})")
        # The 50 % load once more with the worker paused (SIGSTOP, as in
        # `live_all_solo`): what the worker's own Redis work (reads, confirms,
        # trims, all replicated) adds to the purchases' tail.
        loads = [(pct, f"openloop_{pct}") for pct in OPENLOOP_PCTS] + [(OPENLOOP_K6_PCT,
                                                                       f"openloop_{OPENLOOP_K6_PCT}_solo")]
        for pct, name in loads:
            solo = name.endswith("_solo")
            rate = max_rps * pct / 100
            sku = self.create_sale(self.sku("openloop", run), 100_000_000, 1_000_000)
            time.sleep(0.3)  # past the other instance's catalog cache
            out = self.raw / f"r{run}-{name}.json"
            cmd = [str(self.bin / "loadgen"), "--target", f"http://127.0.0.1:{self.port_all}",
                   "-c", str(CONNS), "-z", str(self.dur), "--rate", f"{rate:.1f}",
                   "--seed", str(run * 1000 + pct), "--req", f"1:POST:/api/sales/{sku}/purchase",
                   "--tokens", str(self.tokens), "--out", str(out), "--label", name]
            meta = {"tool": "loadgen", "conns": CONNS, "sku": sku, "pct_of_max": pct,
                    "target_rps": rate, "max_rps": max_rps, "max_from": source}
            meta["quiet_wait_s"] = self.wait_quiet()
            meta["worker_paused"] = solo
            marks = self.redis_marks(reset=True)
            if solo:
                self.procs.signal("worker", signal.SIGSTOP)
            try:
                m = self.generate(run, name, cmd, self.dur + 90, lambda out=out: parse_loadgen(out), meta)
            finally:
                if solo:
                    self.procs.signal("worker", signal.SIGCONT)
            m["redis_events"] = self.redis_events(marks)
            m["stalls"] = stalls(m.get("timeline"))
            scrapes = getattr(getattr(self, "scraper", None), "times", [])
            for st in m["stalls"]:
                # A scrape of either server that began within 300 ms before the slot.
                st["scrape_ms_before"] = next((st["unix_ms"] - t for _, t, _ in reversed(scrapes)
                                               if 0 <= st["unix_ms"] - t <= 300), None)
            if m["stalls"]:
                log(f"run {run} {name}: stalls (100 ms slots with an answer > {STALL_MS} ms): "
                    + ", ".join(f"{s['at']} {s['max_ms']:.0f} ms"
                                + (f" (a /metrics scrape {s['scrape_ms_before']} ms before)"
                                   if s.get("scrape_ms_before") is not None else "")
                                for s in m["stalls"][:8]))
            if any(m["redis_events"].values()):
                log(f"run {run} {name}: redis {m['redis_events']}")
            self.check_sale(run, sku, accepted=m["status"].get("202", 0), note=name)
            # The worker's backlog must not run during the next load.
            self.wait_confirmed([sku], secs=120)
        if self.k6:
            pct = OPENLOOP_K6_PCT
            rate = max_rps * pct / 100
            name = f"openloop_k6_{pct}"
            sku = self.create_sale(self.sku("openloop", run), 100_000_000, 1_000_000)
            time.sleep(0.3)
            out = self.raw / f"r{run}-{name}.json"
            cmd = ["k6", "run", "--quiet", "--no-color", "-e", f"BASE=http://127.0.0.1:{self.port_all}",
                   "-e", f"SKU={sku}", "-e", f"TOKENS={self.tokens_k6}", "-e", f"VUS={CONNS}",
                   "-e", f"RATE={max(1, round(rate))}", "-e", f"DURATION={int(self.dur)}s",
                   "-e", f"SUMMARY={out}", str(HERE / "k6/openloop.js")]
            meta = {"tool": "k6", "conns": CONNS, "sku": sku, "pct_of_max": pct,
                    "target_rps": max(1, round(rate)), "max_rps": max_rps, "max_from": source}
            m = self.generate(run, name, cmd, self.dur + 120, lambda: parse_k6(out), meta)
            self.check_sale(run, sku, accepted=m["status"].get("202", 0), note=name)
            self.wait_confirmed([sku], secs=120)

    def sc_stampede(self, run):
        r = self.redis()
        mem_before = int(info_fields(r.call("INFO", "memory"))["used_memory"])
        r.close()
        quiet_s = self.wait_quiet()
        opens = (now_ms() // 1000 + 3) * 1000  # the next whole second at least 2 s ahead
        sku = self.create_sale(self.sku("stampede", run), 1000, 1, starts_ms=opens)
        m = self.loadgen(run, "stampede", [f"1:POST:/api/sales/{sku}/purchase"], self.dur_stampede,
                         tokens=self.tokens, start_at=opens, rss_pid=self.procs.pid("server"),
                         meta={"tool": "loadgen", "conns": CONNS, "sku": sku, "opens_ms": opens})
        m["quiet_wait_s"] = quiet_s
        n202 = m["status"].get("202", 0)
        bs = m.get("by_status", {})
        m["sold_out_after_ms"] = bs.get("202", {}).get("last_ms")
        m["first_410_ms"] = bs.get("410", {}).get("first_ms")
        # The sold-out path: 410s per second in the whole seconds after the last 202.
        per = bs.get("410", {}).get("per_second", [])
        last202 = (m["sold_out_after_ms"] or 0) / 1000
        full = [n for i, n in enumerate(per) if i >= int(last202) + 1 and i + 1 <= self.dur_stampede]
        m["soldout_rps"] = sum(full) / len(full) if full else None
        m["soldout_p50"] = bs.get("410", {}).get("p50_ms")
        m["soldout_p99"] = bs.get("410", {}).get("p99_ms")
        a = self.check_sale(run, sku, accepted=n202, exact=True, note="stampede")
        if a["sold"] > 1000 or n202 > 1000:
            self.failures.append(f"run {run}: stampede sold {a['sold']} / answered {n202} 202 for 1000 units")
        m["sold"] = a["sold"]
        time.sleep(1.0)
        self.wait_confirmed([sku], secs=30)
        r = self.redis(timeout=30)
        try:
            mem_after = int(info_fields(r.call("INFO", "memory"))["used_memory"])
            keys_bytes, n_keys = self.sale_memory(r, sku)
        finally:
            r.close()
        # used_memory moves with everything else on the master (other
        # streams being trimmed, buffers): the sum of MEMORY USAGE over the
        # sale's own keys, once the worker has confirmed and trimmed, is the
        # figure to trust.
        m["redis_used_memory_delta_per_unit"] = (mem_after - mem_before) / a["sold"] if a["sold"] else None
        m["redis_bytes_per_unit"] = keys_bytes / a["sold"] if a["sold"] else None
        m["redis_sale_keys"] = n_keys

    def sc_peer(self, run):
        """The peer (`--peer URL`): the same measurements as ours, in the
        same run, with the same tools, connections, durations and shoppers;
        its invariants from its own audit endpoint."""
        p = self.peer
        if p is None:
            raise Failure("peer: no --peer URL given")
        meta = {"tool": "loadgen", "conns": CONNS, "peer": p.url}
        # Live sale, closed loop (our `live_all`).
        sku = self.create_sale(self.sku("peer-live", run), 100_000_000, 1_000_000, peer=p)
        time.sleep(0.3)
        m = self.loadgen(run, "peer_live", [f"1:POST:/api/sales/{sku}/purchase"], self.dur,
                         tokens=p.tokens, url=p.url, meta=dict(meta, sku=sku))
        self.check_sale(run, sku, accepted=m["status"].get("202", 0), note="peer_live", peer=p)
        # Open loop at 50 % of our own maximum of this run (the same offered load).
        ours = self.results.get(run, {}).get("live_all") or self.results.get(run, {}).get("openloop_max")
        if ours and ours.get("rps"):
            rate = ours["rps"] * OPENLOOP_K6_PCT / 100
            sku = self.create_sale(self.sku("peer-open", run), 100_000_000, 1_000_000, peer=p)
            time.sleep(0.3)
            out = self.raw / f"r{run}-peer_openloop_50.json"
            cmd = [str(self.bin / "loadgen"), "--target", p.url, "-c", str(CONNS), "-z", str(self.dur),
                   "--rate", f"{rate:.1f}", "--seed", str(run * 1000 + 50),
                   "--req", f"1:POST:/api/sales/{sku}/purchase", "--tokens", str(p.tokens),
                   "--out", str(out), "--label", "peer_openloop_50"]
            m = self.generate(run, "peer_openloop_50", cmd, self.dur + 90, lambda: parse_loadgen(out),
                              dict(meta, sku=sku, pct_of_max=50, target_rps=rate, max_rps=ours["rps"]))
            self.check_sale(run, sku, accepted=m["status"].get("202", 0), note="peer_openloop_50", peer=p)
        # Stampede: 1 000 units, limit 1, from a whole second.
        opens = (now_ms() // 1000 + 3) * 1000
        sku = self.create_sale(self.sku("peer-stampede", run), 1000, 1, starts_ms=opens, peer=p)
        m = self.loadgen(run, "peer_stampede", [f"1:POST:/api/sales/{sku}/purchase"], self.dur_stampede,
                         tokens=p.tokens, start_at=opens, url=p.url, meta=dict(meta, sku=sku, opens_ms=opens))
        n202 = m["status"].get("202", 0)
        m["sold_out_after_ms"] = m.get("by_status", {}).get("202", {}).get("last_ms")
        a = self.check_sale(run, sku, accepted=n202, exact=True, note="peer_stampede", peer=p)
        m["sold"] = a["sold"]
        if a["sold"] > 1000 or n202 > 1000:
            self.failures.append(f"run {run}: the peer's stampede sold {a['sold']} / answered {n202} 202 "
                                 "for 1000 units")
        # Sold out (one non-buyer, oha) and the product JSON.
        sku = self.create_sale(self.sku("peer-soldout", run), 1, 1, peer=p)
        time.sleep(0.3)
        st, j = http_call(p.addr, "POST", f"/api/sales/{sku}/purchase", {"qty": 1},
                          {"Authorization": f"Bearer {p.first_buyer}"})
        if st != 202:
            raise Failure(f"peer soldout: the one unit was not sold: {st} {j}")
        st, j = http_call(p.addr, "POST", f"/api/sales/{sku}/purchase", {"qty": 1},
                          {"Authorization": f"Bearer {p.prober}"})
        if st != 410:
            raise Failure(f"peer soldout: expected 410, got {st} {j}")
        self.oha(run, "peer_soldout", f"/api/sales/{sku}/purchase", None, method="POST", token=p.prober,
                 url=p.url, meta={"tool": "oha", "conns": CONNS, "sku": sku, "peer": p.url})
        self.check_sale(run, sku, accepted=1, exact=True, note="peer_soldout", peer=p)
        self.oha(run, "peer_product_json", f"/api/products/{sku}", None, url=p.url,
                 meta={"tool": "oha", "conns": CONNS, "peer": p.url})

    def sale_memory(self, r, sku):
        """Sum of MEMORY USAGE (SAMPLES 0: exact) over every key of one sale."""
        keys, cursor = [], "0"
        while True:
            cursor, found = r.call("SCAN", cursor, "MATCH", f"fs:{{{sku}}}:*", "COUNT", 5000)
            keys += found
            if cursor == "0":
                break
        total = 0
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            for k in chunk:
                r.send("MEMORY", "USAGE", k, "SAMPLES", "0")
            for _ in chunk:
                total += r.read() or 0
        return total, len(keys)

    def sc_soldout(self, run):
        sku = self.create_sale(self.sku("soldout", run), 1, 1)
        time.sleep(0.3)
        st, j = http_call(self.port_all, "POST", f"/api/sales/{sku}/purchase", {"qty": 1},
                          {"Authorization": f"Bearer {self.first_buyer}"})
        if st != 202:
            raise Failure(f"soldout: the one unit was not sold: {st} {j}")
        # The first 410 makes the server load the buyers and answer locally.
        for _ in range(50):
            st, j = http_call(self.port_all, "POST", f"/api/sales/{sku}/purchase", {"qty": 1},
                              {"Authorization": f"Bearer {self.prober}"})
            if st != 410:
                raise Failure(f"soldout: expected 410, got {st} {j}")
            time.sleep(0.05)
        self.oha(run, "soldout", f"/api/sales/{sku}/purchase", self.port_all, method="POST",
                 token=self.prober, meta={"tool": "oha", "conns": CONNS, "sku": sku})
        self.check_sale(run, sku, accepted=1, exact=True, note="soldout")

    def sc_browse(self, run):
        sku = self.browse_sku
        self.oha(run, "product_page", f"/p/{sku}", self.port_all, meta={"tool": "oha", "conns": CONNS})
        self.oha(run, "product_json", f"/api/products/{sku}", self.port_all,
                 meta={"tool": "oha", "conns": CONNS})

    def sc_mixed(self, run):
        sku = self.create_sale(self.sku("mixed", run), 100_000_000, 1_000_000)
        time.sleep(0.3)
        reqs = [f"45:GET:/p/{sku}", f"45:GET:/api/products/{sku}", f"10:POST:/api/sales/{sku}/purchase"]
        lg = self.loadgen(run, "mixed_loadgen", reqs, self.dur, tokens=self.tokens,
                          meta={"tool": "loadgen", "conns": CONNS, "sku": sku})
        accepted = lg["status"].get("202", 0)
        if self.k6:
            out = self.raw / f"r{run}-mixed_k6.json"
            cmd = ["k6", "run", "--quiet", "--no-color", "-e", f"BASE=http://127.0.0.1:{self.port_all}",
                   "-e", f"SKU={sku}", "-e", f"TOKENS={self.tokens_k6}", "-e", f"VUS={CONNS}",
                   "-e", f"DURATION={int(self.dur)}s", "-e", f"SUMMARY={out}", str(HERE / "k6/mixed.js")]
            k6m = self.generate(run, "mixed_k6", cmd, self.dur + 120, lambda: parse_k6(out),
                                {"tool": "k6", "conns": CONNS, "sku": sku})
            accepted += k6m["status"].get("202", 0)
        self.check_sale(run, sku, accepted=accepted, note="mixed")

    def sc_workers(self, run):
        out = self.raw / f"r{run}-workers.json"
        logdir = self.logs / f"workers-r{run}"
        logdir.mkdir(exist_ok=True)
        cmd = [str(self.bin / "worker_bench"), "--worker-bin", str(self.bin / "flashsale-worker"),
               "--workers", "1,2,4", "--orders", str(self.wb_orders), "--prefix", "wb",
               "--log-dir", str(logdir), "--out", str(out)]
        self.procs.check_alive()
        before = self.cpu_snapshot()
        rc, gen_cpu, wall = run_child(cmd, self.raw / f"r{run}-workers.log", 900, env=self.base_env())
        after = self.cpu_snapshot()
        j = json.loads(out.read_text()) if out.exists() else {"results": []}
        for r in j["results"]:
            k = r["workers"]
            name = f"workers_{k}"
            if "error" in r:
                self.failures.append(f"run {run}: worker bench with {k}: {r['error']}")
                continue
            self.results.setdefault(run, {})[name] = {
                "tool": "worker_bench", "rps": r["rate"], "rate_from_spawn": r["rate_from_spawn"],
                "requests": r["orders"], "worker_cpu_s": r["worker_cpu_s"], "audit": r["audit"],
                "status": {"confirmed": r["audit"]["confirmed"]}, "exit_codes": r["exit_codes"],
                "cpu_s": {"worker": r["worker_cpu_s"]},
            }
            good = r["audit"]["consistent"] and r["audit"]["confirmed"] == r["orders"] \
                and r["audit"]["stream_pending"] == 0 and all(c == 0 for c in r["exit_codes"])
            self.invariants.append({"run": run, "sku": f"worker bench ×{k}", "audit": r["audit"],
                                    "ok": good, "note": "worker_bench", "why": [] if good else ["see raw"],
                                    "accepted": r["orders"]})
            if not good:
                self.failures.append(f"run {run}: worker bench ×{k}: audit {r['audit']} exits {r['exit_codes']}")
            log(f"run {run} workers ×{k}: {r['rate']:.0f} orders/s")
        if rc != 0:
            self.failures.append(f"run {run}: worker_bench exited {rc}")
        _ = (before, after, gen_cpu, wall)

    # --- driver ---------------------------------------------------------

    def run(self):
        scen = self.args.scenarios or ALL_SCENARIOS
        self.meta = {
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["loadtest/run.sh"] + strip_bin_dir(self.args.argv)),
            "scenarios": scen, "runs": self.args.runs, "quick": self.quick,
            "nproc": os.cpu_count(), "loadavg_before": os.getloadavg(),
            "kernel": os.uname().release, "binaries": str(self.args.bin_dir),
            "commit": git_describe(),
            "durations_s": {"live/mixed": self.dur, "single-URL": self.dur_short,
                            "stampede": self.dur_stampede},
            "connections": CONNS, "tokens": self.n_tokens, "metrics_scrape_every_s": SCRAPE_EVERY_S,
            "redis_benchmark_requests": self.rb_requests, "worker_bench_orders": self.wb_orders,
        }
        log(f"results in {self.out}")
        self.meta["ledger"] = bool(self.args.ledger)
        self.meta["worker_batch"] = self.args.worker_batch
        self.start_group()
        self.no_auto_rewrite()
        self.meta["overrides"] = {
            "auto-aof-rewrite-percentage": "0 (every node's AOF is rewritten between runs instead)",
            "latency-monitor-threshold": f"{LATENCY_MONITOR_MS} (diagnostic only; shipped: 100)",
        }
        if self.args.ledger:
            self.start_ledger()
        self.start_services()
        self.mint_tokens()
        self.browse_sku = self.create_sale("browse-" + secrets.token_hex(3), 1000, 1, track=False)
        for run in range(1, self.args.runs + 1):
            self.run_skus = []
            self.rb_skus = []
            for s in scen:
                log(f"run {run}/{self.args.runs}: {s}")
                try:
                    getattr(self, f"sc_{s}")(run)
                except Failure as e:
                    self.failures.append(f"run {run}: {s}: {e}")
                    log(f"FAILED: {e}")
                    self.procs.check_alive()
            self.cleanup_sales(self.run_skus)
            self.cleanup_prefix("rb", self.rb_skus)
            self.settle_aof()
        rss = {n: rss_kb(self.procs.pid(n)) for n in ("server", "server_noack", "worker")}
        self.meta["rss_end_kb"] = rss
        self.meta["loadavg_after"] = os.getloadavg()
        self.meta["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    def write(self):
        data = {"meta": getattr(self, "meta", {}), "results": self.results,
                "openloop": openloop_table(self.results),
                "invariants": self.invariants, "failures": self.failures}
        (self.out / "results.json").write_text(json.dumps(data, indent=2))
        summary = render_summary(data)
        (self.out / "summary.md").write_text(summary)
        try:
            plot.write_svg(data, self.out / "latency.svg")
        except Exception as e:  # a plot must not hide the figures
            log(f"plot failed: {e}")
        return summary


# Like Prometheus would: the servers' latency histograms keep every sample
# until /metrics is rendered, so an unscraped server grows by ~18 bytes per
# request (see loadtest/README.md).
SCRAPE_EVERY_S = 15.0


class Scraper:
    """GETs /metrics of each server every few seconds in a thread."""

    def __init__(self, ports, every):
        self.ports, self.every = ports, every
        self.times = []
        self.done = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.done.wait(self.every):
            for p in self.ports:
                t0 = now_ms()
                try:
                    http_call(p, "GET", "/metrics", timeout=5)
                except OSError:
                    pass
                # When each scrape ran (to line stalls up with): port, start, ms.
                self.times.append((p, t0, now_ms() - t0))

    def stop(self):
        self.done.set()
        self.t.join(10)


class RssSampler:
    """Peak VmRSS of one process, sampled every 50 ms in a thread."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_kb = rss_kb(pid) or 0
        self.done = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.done.wait(0.05):
            v = rss_kb(self.pid)
            if v:
                self.peak_kb = max(self.peak_kb, v)

    def stop(self):
        self.done.set()
        self.t.join()


# ---------------------------------------------------------------- parsing ---

def fmt_ms(v):
    return "—" if v is None else f"{v:.2f} ms"


def parse_loadgen(path):
    j = json.loads(Path(path).read_text())
    lat = j["latency"]
    errors = {k: v for k, v in j["errors"].items() if k != "samples" and v}
    m = {"rps": j["rps"], "requests": j["requests"], "p50": lat["p50_ms"], "p90": lat.get("p90_ms"),
         "p99": lat["p99_ms"], "p999": lat["p999_ms"], "max": lat["max_ms"], "status": j["status"],
         "errors": errors, "by_status": j["by_status"], "histogram_ms": j["histogram_ms"],
         "elapsed_s": j["elapsed_s"], "timeline": j.get("timeline")}
    ol = j.get("open_loop")
    if ol:
        # Open loop: the percentiles above are from the intended send time.
        m.update({"open_loop": ol, "dropped": ol["dropped"], "offered_rps": ol["offered_rps"],
                  "sent_rps": ol["sent_rps"],
                  "service_p50": ol["service"]["p50_ms"], "service_p99": ol["service"]["p99_ms"],
                  "service_p999": ol["service"]["p999_ms"],
                  "schedule_lag_p99": ol["schedule_lag"]["p99_ms"]})
    return m


STALL_MS = 50
QUIET_OPS = 500
LATENCY_MONITOR_MS = 10


def stalls(timeline):
    """The open loop's 100 ms slots in which an answer took over
    `STALL_MS` from its intended send time: wall-clock time (UTC), the
    slowest answer, how many answered."""
    if not timeline:
        return []
    t0, slot = timeline["start_unix_ms"], timeline["slot_ms"]
    out = []
    for i, mx in enumerate(timeline["max_ms"]):
        if mx > STALL_MS:
            at = t0 + i * slot
            stamp = time.strftime("%H:%M:%S", time.gmtime(at / 1000)) + f".{at % 1000 // 100}"
            out.append({"at": stamp, "unix_ms": at, "max_ms": mx, "answers": timeline["answers"][i],
                        "over_10ms": timeline["over_10ms"][i]})
    return out


def parse_oha(path):
    j = json.loads(Path(path).read_text())
    s = j["summary"]
    p = j.get("latencyPercentiles", {})
    sec = lambda k: None if p.get(k) is None else p[k] * 1000  # noqa: E731
    status = {str(k): v for k, v in j.get("statusCodeDistribution", {}).items()}
    return {"rps": s["requestsPerSec"], "requests": sum(status.values()), "p50": sec("p50"),
            "p99": sec("p99"), "p999": sec("p99.9"), "max": (s.get("slowest") or 0) * 1000,
            "status": status, "errors": j.get("errorDistribution", {}),
            "percentiles_ms": {k: v * 1000 for k, v in p.items() if v is not None},
            "oha_histogram": j.get("responseTimeHistogram", {})}


def parse_k6(path):
    j = json.loads(Path(path).read_text())
    mt = j["metrics"]
    d = mt["http_req_duration"]["values"]
    reqs = mt["http_reqs"]["values"]
    status = {}
    for k, v in mt.items():
        if k.startswith("status_") and v["values"].get("count"):
            status[k[len("status_"):]] = v["values"]["count"]
    # Only an open loop (constant-arrival-rate) drops iterations; k6 lists
    # the metric only once one was dropped.
    dropped = mt.get("dropped_iterations", {}).get("values", {}).get("count", 0)
    return {"rps": reqs["rate"], "requests": reqs["count"], "p50": d.get("med"), "p90": d.get("p(90)"),
            "p99": d.get("p(99)"), "p999": d.get("p(99.9)"), "max": d.get("max"), "status": status,
            "errors": {}, "dropped": dropped, "sent_rps": reqs["rate"],
            "service_p50": d.get("med"), "service_p99": d.get("p(99)"), "service_p999": d.get("p(99.9)"),
            "percentiles_ms": {"p50": d.get("med"), "p90": d.get("p(90)"), "p99": d.get("p(99)"),
                               "p99.9": d.get("p(99.9)")}}


def parse_redis_benchmark(path):
    rows = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if len(rows) < 2:
        raise Failure(f"redis-benchmark wrote no result ({path})")
    head = [h.strip('"') for h in rows[0].split('","')]
    vals = [v.strip('"') for v in rows[-1].split('","')]
    r = dict(zip(head, vals))
    f = lambda k: float(r[k]) if k in r else None  # noqa: E731
    return {"rps": f("rps"), "p50": f("p50_latency_ms"), "p99": f("p99_latency_ms"), "p999": None,
            "max": f("max_latency_ms"), "status": {"ok": None}, "errors": {},
            "percentiles_ms": {"p0": f("min_latency_ms"), "p50": f("p50_latency_ms"),
                               "p95": f("p95_latency_ms"), "p99": f("p99_latency_ms")}}


# ---------------------------------------------------------------- summary ---

EXPECTED = {
    "live_all": {"202"}, "live_noack": {"202"}, "live_all_solo": {"202"}, "live_noack_solo": {"202"}, "stampede": {"202", "409", "410"}, "soldout": {"410"},
    "product_page": {"200"}, "product_json": {"200"}, "mixed_loadgen": {"200", "202"},
    "mixed_k6": {"200", "202"}, "bare_get": {"200"}, "bare_post": {"410"}, "bare_post_live_rate": {"410"},
    "openloop_max": {"202"}, "openloop_25": {"202"}, "openloop_50": {"202"}, "openloop_75": {"202"},
    "openloop_k6_50": {"202"}, "openloop_50_solo": {"202"},
    "peer_live": {"202"}, "peer_openloop_50": {"202"}, "peer_stampede": {"202", "409", "410"},
    "peer_soldout": {"410"}, "peer_product_json": {"200"},
}

ORDER = [
    ("redis_benchmark_c50", "redis-benchmark FCALL fs_purchase, 50 conns (ceiling, no WAIT)"),
    ("redis_benchmark_c256", "redis-benchmark FCALL fs_purchase, 256 conns (ceiling, no WAIT)"),
    ("fcall_c50_wait0", "Rust client FCALL, 50 conns, no WAIT"),
    ("fcall_c50_wait2", "Rust client FCALL + WAIT 2 per call, 50 conns"),
    ("fcall_c256_wait0", "Rust client FCALL, 256 conns, no WAIT"),
    ("fcall_c256_wait2", "Rust client FCALL + WAIT 2 per call, 256 conns"),
    ("bare_get", "bare axum GET (ceiling of browse)"),
    ("bare_post", "bare axum POST → 410 (ceiling of sold out)"),
    ("bare_post_live_rate", "bare axum POST → 410 at the live sale's rate (oha -q)"),
    ("live_all", "live sale, acks all (WAIT on)"),
    ("live_noack", "live sale, acks 0 (WAIT off)"),
    ("live_all_solo", "live sale, acks all, worker paused (purchase path alone)"),
    ("live_noack_solo", "live sale, acks 0, worker paused (purchase path alone)"),
    ("openloop_max", "open loop: the live sale's maximum (closed loop, acks all)"),
    ("openloop_25", "open loop 25 % of the maximum (loadgen; latency from the intended time)"),
    ("openloop_50", "open loop 50 % of the maximum (loadgen; latency from the intended time)"),
    ("openloop_75", "open loop 75 % of the maximum (loadgen; latency from the intended time)"),
    ("openloop_k6_50", "open loop 50 % of the maximum (k6 constant-arrival-rate; from the actual send)"),
    ("openloop_50_solo", "open loop 50 % of the maximum, worker paused (loadgen)"),
    ("stampede", "stampede: 1 000 units, distinct shoppers"),
    ("soldout", "sold-out path (oha, one shopper)"),
    ("product_page", "product page HTML /p/{sku}"),
    ("product_json", "product JSON /api/products/{sku}"),
    ("mixed_loadgen", "mixed 45/45/10 (loadgen)"),
    ("mixed_k6", "mixed 45/45/10 (k6)"),
    ("workers_1", "worker bench: 1 worker (orders confirmed/s)"),
    ("workers_2", "worker bench: 2 workers"),
    ("workers_4", "worker bench: 4 workers"),
    ("peer_live", "peer: live sale, 256 conns"),
    ("peer_openloop_50", "peer: open loop at 50 % of our maximum"),
    ("peer_stampede", "peer: stampede, 1 000 units"),
    ("peer_soldout", "peer: sold out (oha)"),
    ("peer_product_json", "peer: product JSON (oha)"),
]

# name -> (ceiling, target ratio or None, label)
RATIOS = [
    ("live_all", "redis_benchmark_c256", 0.7, "live sale (WAIT on) / redis-benchmark FCALL c256"),
    ("live_all", "redis_benchmark_c50", None, "live sale (WAIT on) / redis-benchmark FCALL c50"),
    ("live_all", "live_noack", 0.9, "live sale WAIT on / WAIT off"),
    ("live_noack", "redis_benchmark_c256", None, "live sale (WAIT off) / redis-benchmark FCALL c256"),
    ("live_all_solo", "redis_benchmark_c256", 0.7,
     "purchase path alone (worker paused), WAIT on / redis-benchmark FCALL c256"),
    ("live_all_solo", "live_noack_solo", 0.9, "purchase path alone (worker paused): WAIT on / WAIT off"),
    ("fcall_c50_wait2", "fcall_c50_wait0", None, "Rust client: FCALL+WAIT 2 / FCALL, c50"),
    ("soldout", "bare_post", 0.8, "sold out (oha) / bare axum POST"),
    ("stampede:soldout_rps", "bare_post", None, "stampede after sell-out (410/s) / bare axum POST"),
    ("product_json", "bare_get", 0.6, "product JSON / bare axum GET"),
    ("product_page", "bare_get", None, "product page HTML / bare axum GET"),
    ("mixed_loadgen", "bare_get", None, "mixed (loadgen) / bare axum GET"),
    ("workers_2", "workers_1", None, "2 workers / 1 worker"),
    ("workers_4", "workers_1", None, "4 workers / 1 worker"),
]


def value(m, key):
    if m is None:
        return None
    if ":" in key:
        return m.get(key.split(":", 1)[1])
    return m.get("rps")


def per_run(results, name, field="rps"):
    out = []
    for run in sorted(results, key=int):
        m = results[run].get(name)
        if m is not None and m.get(field) is not None:
            out.append(m[field])
    return out


def fmt_num(v, digits=0):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}"


def openloop_table(results):
    """The open loop at each load: medians over the runs of the achieved
    rate and of the percentiles (loadgen: from the intended send time, the
    service time beside; k6: from the actual send), dropped summed."""
    results = {str(k): v for k, v in results.items()}
    runs = sorted(results, key=int)
    rows = []
    names = [f"openloop_{p}" for p in OPENLOOP_PCTS] + [f"openloop_k6_{OPENLOOP_K6_PCT}",
                                                        f"openloop_{OPENLOOP_K6_PCT}_solo"]
    for name in sorted(names, key=lambda n: (int(n.split("_")[-2] if n.endswith("_solo") else n.split("_")[-1]),
                                             "k6" in n, n.endswith("_solo"))):
        ms = [results[r][name] for r in runs if name in results[r]]
        if not ms:
            continue
        rows.append({
            "measurement": name, "tool": ms[0].get("tool"), "pct_of_max": ms[0].get("pct_of_max"),
            "latency_from": "actual send" if ms[0].get("tool") == "k6" else "intended send time",
            "runs": len(ms),
            **{k: med([m.get(k) for m in ms]) for k in (
                "max_rps", "target_rps", "sent_rps", "rps", "p50", "p90", "p99", "p999", "max", "service_p50",
                "service_p99", "service_p999")},
            "dropped": sum(m.get("dropped") or 0 for m in ms),
            "others_cores": med([m.get("cpu_s", {}).get("others_cores") for m in ms]),
        })
    return rows


def cpu_us_per(m, proc, count=None):
    """CPU µs of `proc` per request (or per `count`) of one measurement."""
    if not m:
        return None
    c = (m.get("cpu_s") or {}).get(proc)
    n = count if count is not None else m.get("requests")
    return c / n * 1e6 if c is not None and n else None


def goals_section(results, runs):
    """The speed-per-CPU goals, each a figure or ratio of one run, then the
    median over the runs."""
    rows = []

    def row(label, vals, goal, ok, digits=2):
        vals = [v for v in vals if v is not None]
        if vals:
            mv = med(vals)
            met = "" if not goal else ("yes" if ok(mv) else "**no**")
            rows.append(f"| {label} | {fmt_num(mv, digits)} | {' '.join(fmt_num(v, digits) for v in vals)} | "
                        f"{goal} | {met} |")

    def per_run(f):
        return [f(results[r]) for r in runs]

    def server_ratio(res):
        a = cpu_us_per(res.get("live_all"), "server")
        b = cpu_us_per(res.get("bare_post"), "bare")
        return a / b if a and b else None

    def master_ratio(res):
        live = res.get("live_all")
        a = cpu_us_per(live, "redis_master", (live or {}).get("status", {}).get("202"))
        b = cpu_us_per(res.get("redis_benchmark_c256"), "redis_master")
        return a / b if a and b else None

    row("server CPU per WAIT-on purchase / bare axum POST's CPU per answer", per_run(server_ratio),
        "≤ 2", lambda v: v <= 2)
    def server_ratio_same_rate(res):
        a = cpu_us_per(res.get("live_all"), "server")
        b = cpu_us_per(res.get("bare_post_live_rate"), "bare")
        return a / b if a and b else None

    row("server CPU per WAIT-on purchase / bare axum POST's CPU per answer at the live sale's rate",
        per_run(server_ratio_same_rate), "≤ 2", lambda v: v <= 2)
    row("server CPU µs per WAIT-on purchase", per_run(lambda res: cpu_us_per(res.get("live_all"), "server")),
        "", lambda v: True, 1)
    row("bare axum POST: CPU µs per answer", per_run(lambda res: cpu_us_per(res.get("bare_post"), "bare")),
        "", lambda v: True, 1)
    row("bare axum POST at the live sale's rate: CPU µs per answer",
        per_run(lambda res: cpu_us_per(res.get("bare_post_live_rate"), "bare")), "", lambda v: True, 1)
    row("master CPU per sold unit (live sale, worker running) / per redis-benchmark FCALL (c256)",
        per_run(master_ratio), "≤ 1.2", lambda v: v <= 1.2)
    row("master CPU µs per sold unit (live sale, worker running)",
        per_run(lambda res: cpu_us_per(res.get("live_all"), "redis_master",
                                       (res.get("live_all") or {}).get("status", {}).get("202"))),
        "", lambda v: True, 1)
    row("master CPU µs per redis-benchmark FCALL (c256)",
        per_run(lambda res: cpu_us_per(res.get("redis_benchmark_c256"), "redis_master")), "", lambda v: True, 1)
    for pct in OPENLOOP_PCTS:
        row(f"open loop at {pct} % of the maximum: p99 from the intended send time, ms",
            per_run(lambda res: (res.get(f"openloop_{pct}") or {}).get("p99")),
            "≤ 10" if pct == 50 else "", (lambda v: v <= 10) if pct == 50 else (lambda v: True))
    row(f"open loop at {OPENLOOP_K6_PCT} %, worker paused: p99 from the intended send time, ms",
        per_run(lambda res: (res.get(f"openloop_{OPENLOOP_K6_PCT}_solo") or {}).get("p99")), "", lambda v: True)
    row("stampede: sold out after the opening, ms", per_run(lambda res: (res.get("stampede") or {})
                                                             .get("sold_out_after_ms")), "≤ 150",
        lambda v: v <= 150, 0)
    if not rows:
        return []
    return ["## Speed-per-CPU goals (median of the per-run figures)", "",
            "| figure | median | per run | goal | met |", "|---|---:|---|---|---|"] + rows + [""]


PEER_PAIRS = [
    # (ours, the peer's, field, what, higher is better)
    ("live_all", "peer_live", "rps", "live sale, closed loop, 256 conns: purchases/s", True),
    ("openloop_50", "peer_openloop_50", "p99", "open loop at 50 % of our maximum: p99 ms", False),
    ("stampede", "peer_stampede", "sold_out_after_ms", "stampede: sold out after, ms", False),
    ("soldout", "peer_soldout", "rps", "sold out (oha): answers/s", True),
    ("product_json", "peer_product_json", "rps", "product JSON (oha): answers/s", True),
]


def peer_section(results, runs):
    """Ours against the peer (`--peer`), each ratio within one run."""
    if not any(k.startswith("peer_") for r in runs for k in results[r]):
        return []
    peer = next(m.get("peer") for r in runs for k, m in results[r].items() if k.startswith("peer_"))
    lines = [f"## Against the peer ({peer}), same run, same tools", "",
             "| measurement | ours | peer | ours / peer (per run) | better |", "|---|---:|---:|---|---|"]
    for ours, theirs, field, label, higher in PEER_PAIRS:
        a = [(results[r].get(ours) or {}).get(field) for r in runs]
        b = [(results[r].get(theirs) or {}).get(field) for r in runs]
        ratios = [x / y for x, y in zip(a, b) if x is not None and y]
        if not ratios:
            continue
        mr = med(ratios)
        better = "ours" if (mr > 1) == higher and mr != 1 else "peer"
        lines.append(f"| {label} | {fmt_num(med([x for x in a if x is not None]), 2)} | "
                     f"{fmt_num(med([y for y in b if y is not None]), 2)} | {fmt_num(mr, 2)} "
                     f"({' '.join(fmt_num(v, 2) for v in ratios)}) | {better} |")
    for ours, theirs, label in (("live_all", "peer_live", "CPU µs per purchase"),
                                ("soldout", "peer_soldout", "CPU µs per sold-out answer")):
        a = [cpu_us_per(results[r].get(ours), "server") for r in runs]
        b = [cpu_us_per(results[r].get(theirs), "peer") for r in runs]
        ratios = [x / y for x, y in zip(a, b) if x is not None and y]
        if ratios:
            lines.append(f"| {label} (server vs the peer's `--peer-pid` processes) | "
                         f"{fmt_num(med([x for x in a if x is not None]), 1)} | "
                         f"{fmt_num(med([y for y in b if y is not None]), 1)} | {fmt_num(med(ratios), 2)} | "
                         f"{'ours' if med(ratios) < 1 else 'peer'} |")
    return lines + [""]


def render_summary(data):
    meta, results, inv = data["meta"], data["results"], data["invariants"]
    results = {str(k): v for k, v in results.items()}
    runs = sorted(results, key=int)
    lines = [f"# flashsale load test — {meta.get('started', '?')}", ""]
    lines += [f"Command: `{meta.get('command', '')}` at commit {meta.get('commit', '?')} — {meta.get('runs')} run(s), "
              f"{'quick' if meta.get('quick') else 'full'}; {meta.get('connections')} connections; "
              f"durations {meta.get('durations_s')}; {meta.get('nproc')} CPUs; load average before "
              f"{tuple(round(x, 2) for x in meta.get('loadavg_before', ()))}, after "
              f"{tuple(round(x, 2) for x in meta.get('loadavg_after', ()) or ())}."
              + (" The worker records every order in an order ledger (PostgreSQL, `--ledger`)."
                 if meta.get("ledger") else "")
              + (f" The worker reads batches of {meta['worker_batch']} (`--worker-batch`)."
                 if meta.get("worker_batch") else ""), ""]
    if meta.get("overrides"):
        lines += ["Settings of the Redis nodes that differ from the shipped ones for this run: "
                  + "; ".join(f"`{k}` {v}" for k, v in meta["overrides"].items()) + ".", ""]
    lines += ["Medians over the runs (each percentile is the median of the runs' percentiles). "
              "CPU seconds per process during the measurement, from /proc/PID/stat "
              "(generator: the load tool itself, from wait4). \"Others' CPU\": what the rest of the "
              "machine (other users' processes) used meanwhile, in cores, from /proc/stat — on a "
              "2-core machine anything above ~0.2 means the figure is disturbed.", ""]
    lines += ["| measurement | tool | req/s | p50 ms | p99 ms | p99.9 ms | statuses (sum over runs) | errors | "
              "CPU s: server · redis master · replicas · sentinels · worker · "
              + ("ledger · " if meta.get("ledger") else "") + "generator | others' CPU (cores) |",
              "|---|---|---:|---:|---:|---:|---|---|---|---:|"]
    for name, label in ORDER:
        ms = [results[r][name] for r in runs if name in results[r]]
        if not ms:
            continue
        status = {}
        errors = {}
        for m in ms:
            for k, v in (m.get("status") or {}).items():
                if v is not None:
                    status[k] = status.get(k, 0) + v
            for k, v in (m.get("errors") or {}).items():
                if v:
                    errors[k] = errors.get(k, 0) + (v if isinstance(v, (int, float)) else 1)
            exp = EXPECTED.get(name)
            if exp:
                for k, v in (m.get("status") or {}).items():
                    if k not in exp and v:
                        errors[k] = errors.get(k, 0) + v
        cpu = {}
        keys = ("server", "redis_master", "redis_replicas", "sentinels", "worker") \
            + (("ledger",) if meta.get("ledger") else ()) + ("generator",)
        for key in keys:
            vals = []
            for m in ms:
                c = m.get("cpu_s", {})
                if key == "server":
                    v = c.get("server_noack") if name.startswith("live_noack") else (
                        c.get("bare") if name.startswith("bare") else c.get("server"))
                else:
                    v = c.get(key)
                vals.append(v)
            cpu[key] = med(vals)
        cpu_s = " · ".join(fmt_num(cpu[k], 1) for k in cpu)
        others = fmt_num(med([m.get("cpu_s", {}).get("others_cores") for m in ms]), 2)
        st = ", ".join(f"{k}: {v}" for k, v in sorted(status.items())) or "—"
        er = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "none"
        lines.append(f"| {label} | {ms[0].get('tool', '')} | {fmt_num(med([m.get('rps') for m in ms]))} | "
                     f"{fmt_num(med([m.get('p50') for m in ms]), 2)} | {fmt_num(med([m.get('p99') for m in ms]), 2)} | "
                     f"{fmt_num(med([m.get('p999') for m in ms]), 2)} | {st} | {er} | {cpu_s} | {others} |")
    lines.append("")

    # Ratios, computed within each run, then the median.
    lines += ["## Ratios to the ceilings (median of the per-run ratios)", "",
              "| ratio | median | per run | target | met |", "|---|---:|---|---:|---|"]
    ratios = {}
    for num, den, target, label in RATIOS:
        vals = []
        for r in runs:
            a = value(results[r].get(num.split(":")[0]), num)
            b = value(results[r].get(den), den)
            if a is not None and b:
                vals.append(a / b)
        if not vals:
            continue
        mv = med(vals)
        ratios[label] = mv
        met = "—" if target is None else ("yes" if mv >= target else "**no**")
        lines.append(f"| {label} | {mv:.2f} | {' '.join(f'{v:.2f}' for v in vals)} | "
                     f"{'' if target is None else f'≥ {target}'} | {met} |")
    lines.append("")

    lines += goals_section(results, runs)
    lines += peer_section(results, runs)

    # The load-test targets that are not ratios.
    live = [results[r].get("live_all") for r in runs if results[r].get("live_all")]
    st = [results[r].get("stampede") for r in runs if results[r].get("stampede")]
    lines += ["## Other targets and figures", "", "| figure | median | per run | target |", "|---|---:|---|---|"]

    def row(label, vals, target="", digits=1):
        vals = [v for v in vals if v is not None]
        if vals:
            lines.append(f"| {label} | {fmt_num(med(vals), digits)} | "
                         f"{' '.join(fmt_num(v, digits) for v in vals)} | {target} |")

    row("live sale (WAIT on) p99 at 256 connections, ms", [m.get("p99") for m in live], "≤ 10 ms", 2)
    row("purchase path alone (worker paused, WAIT on) p99, ms",
        [results[r]["live_all_solo"].get("p99") for r in runs if results[r].get("live_all_solo")], "≤ 10 ms", 2)
    row("stampede: time to sell out (last 202 after the opening second), ms",
        [m.get("sold_out_after_ms") for m in st], "", 0)
    row("stampede: first 410 after opening, ms", [m.get("first_410_ms") for m in st], "", 0)
    row("stampede: units sold (of 1 000)", [m.get("sold") for m in st], "= 202 answers", 0)
    row("stampede: 410/s after the sell-out", [m.get("soldout_rps") for m in st], "", 0)
    row("stampede: 410 p99, ms", [m.get("soldout_p99") for m in st], "", 2)
    row("server RSS peak under the stampede, MB", [m.get("rss_peak_mb") for m in st], "< 100 MB", 1)
    row("Redis memory per sold unit: MEMORY USAGE of the sale's keys / units, bytes",
        [m.get("redis_bytes_per_unit") for m in st], "reported", 0)
    row("Redis used_memory delta over the stampede / units (noisy), bytes",
        [m.get("redis_used_memory_delta_per_unit") for m in st], "", 0)
    for name, seed_key in (("live_all", "purchase"), ("soldout", "soldout"), ("product_json", "product_json")):
        vals = per_run(results, name)
        if vals:
            row(f"{name} / Python seeds ({SEEDS[seed_key]}/s)", [v / SEEDS[seed_key] for v in vals], "≥ 10×", 1)
    row("live sale (WAIT on), 2nd half: purchases per second",
        [(m.get("worker_lag") or {}).get("orders_per_s_2nd_half") for m in live], "", 0)
    row("live sale (WAIT on), 2nd half: orders confirmed per second (the worker keeps up when ≥ the line above)",
        [(m.get("worker_lag") or {}).get("confirmed_per_s_2nd_half") for m in live], "", 0)
    row("live sale (WAIT on): largest backlog (orders not confirmed yet)",
        [(m.get("worker_lag") or {}).get("backlog_max") for m in live], "", 0)
    row("live sale (WAIT on): orders not confirmed yet when it ends (worker backlog)",
        [m.get("worker_backlog_end") for m in live], "", 0)
    row("live sale (WAIT on): worker caught up after its end, s",
        [m.get("worker_caught_up_s") for m in live], "", 2)
    row("live sale (WAIT on): WAIT rounds per second", [m.get("ack_rounds") / m["elapsed_s"] for m in live
                                                          if m.get("ack_rounds") and m.get("elapsed_s")], "", 0)
    row("live sale (WAIT on): purchases per WAIT round (group commit)", [m.get("purchases_per_round") for m in live], "", 1)
    row("live sale (WAIT on): Redis master command time per purchase (commandstats), µs",
        [m.get("redis_master_busy_us_per_purchase") for m in live], "", 1)
    noack = [results[r].get("live_noack") for r in runs if results[r].get("live_noack")]
    row("live sale (WAIT off): Redis master command time per purchase (commandstats), µs",
        [m.get("redis_master_busy_us_per_purchase") for m in noack], "", 1)
    for name in ("server", "redis_master"):
        vals = []
        for m in live:
            c = m.get("cpu_s", {}).get(name)
            if c is not None and m.get("requests"):
                vals.append(c / m["requests"] * 1e6)
        row(f"live sale (WAIT on): {name} CPU µs per purchase", vals, "", 1)
    lines.append("")

    # Where the master's time goes during the live sale.
    for name in ("live_all", "live_noack", "live_all_solo", "live_noack_solo"):
        ms = [results[r].get(name) for r in runs if results[r].get(name, {}).get("redis_commandstats")]
        if not ms:
            continue
        cmds = {}
        for m in ms:
            n = m["status"].get("202", 0) or 1
            for c, v in m["redis_commandstats"].items():
                cmds.setdefault(c, []).append((v["calls"] / n, v["usec"] / n))
        top = sorted(cmds.items(), key=lambda kv: -med([u for _, u in kv[1]]))[:10]
        lines += [f"Redis master, {name}: INFO commandstats per purchase (medians; FCALL counts "
                  "fs_purchase and the worker's fs_confirm_batch; their inner commands are listed too)", "",
                  "| command | calls per purchase | µs per purchase |", "|---|---:|---:|"]
        for c, v in top:
            lines.append(f"| {c} | {med([a for a, _ in v]):.3f} | {med([u for _, u in v]):.2f} |")
        lines.append("")

    # The open loop: latency from the intended send time at each load.
    ol = openloop_table(results)
    if ol:
        lines += ["## Open loop: purchases at a fixed rate (acks all)", "",
                  "Poisson arrivals at a % of the live sale's maximum purchase rate of the same run "
                  "(loadgen `--rate`, 256 connections at most); latency from each request's *intended* "
                  "send time, so waiting for a connection counts; the service time (from the actual send) "
                  "beside it. k6 (`constant-arrival-rate`, 256 VUs at most) measures from the actual send; "
                  "what queues there shows as dropped iterations. Sent: arrivals per second of the schedule "
                  "that were not dropped (k6: requests per second); answered: answers over the time until the "
                  "last one. Medians over the runs; dropped: the sum.", "",
                  "| load | tool | max req/s | target req/s | sent req/s | answered req/s | p50 ms | p99 ms | "
                  "p99.9 ms | service p50 ms | service p99 ms | dropped | others' CPU (cores) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in ol:
            paused = ", worker paused" if row["measurement"].endswith("_solo") else ""
            lines.append(f"| {row['pct_of_max']} %{paused} | {row['tool']} | {fmt_num(row['max_rps'])} | "
                         f"{fmt_num(row['target_rps'])} | {fmt_num(row['sent_rps'])} | {fmt_num(row['rps'])} | "
                         f"{fmt_num(row['p50'], 2)} | "
                         f"{fmt_num(row['p99'], 2)} | {fmt_num(row['p999'], 2)} | "
                         f"{fmt_num(row['service_p50'], 2)} | {fmt_num(row['service_p99'], 2)} | "
                         f"{row['dropped']} | {fmt_num(row['others_cores'], 2)} |")
        lines.append("")

    # Per-run req/s, to see the noise.
    lines += ["## req/s per run", "", "| measurement | " + " | ".join(f"run {r}" for r in runs) + " |",
              "|---|" + "---:|" * len(runs)]
    for name, _ in ORDER:
        if any(name in results[r] for r in runs):
            lines.append(f"| {name} | " + " | ".join(fmt_num(results[r].get(name, {}).get("rps")) for r in runs) + " |")
    lines.append("")

    lines += ["## Invariants after every scenario", ""]
    bad = [i for i in inv if not i["ok"]]
    lines.append(f"{len(inv)} sales checked (audit `consistent`, `sold <= stock_total`, "
                 f"`stock_left + sold == stock_total`, every 202 an order): "
                 f"{'all held' if not bad else f'{len(bad)} FAILED'}.")
    for i in bad:
        lines.append(f"- run {i['run']} {i['sku']} ({i['note']}): {', '.join(i['why'])}: {i['audit']}")
    lines.append("")
    if data["failures"]:
        lines += ["## Failures", ""] + [f"- {f}" for f in data["failures"]] + [""]
    lines += ["Raw outputs: `raw/` (loadgen/oha/k6 JSON, redis-benchmark CSV), logs: `logs/`, "
              "plot: `latency.svg`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------- main ---

def main():
    ap = argparse.ArgumentParser(prog="loadtest/run.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", default=[], metavar="scenario",
                    help=f"scenarios to run (default: all of {', '.join(ALL_SCENARIOS)})")
    ap.add_argument("--runs", type=int, default=5, help="runs of every scenario (medians over them)")
    ap.add_argument("--quick", action="store_true", help="a few seconds per scenario (smoke run)")
    ap.add_argument("--out", help="results directory (default loadtest/results/<timestamp>)")
    ap.add_argument("--bin-dir", default=str(REPO / "target/release"), help="where the binaries are")
    ap.add_argument("--no-k6", action="store_true", help="skip the k6 measurements")
    ap.add_argument("--ledger", action="store_true",
                    help="the worker records every order in an order ledger (a throw-away PostgreSQL)")
    ap.add_argument("--worker-batch", type=int,
                    help="the worker's FLASHSALE_WORKER_BATCH (default: its own, 512)")
    ap.add_argument("--perf", action="store_true",
                    help="perf record the server during each HTTP measurement of run 1 (raw/perf-*.txt)")
    ap.add_argument("--keep-bin", action="store_true",
                    help="keep the pinned binaries in <results>/bin (for perf report afterwards)")
    ap.add_argument("--peer", metavar="URL",
                    help="also measure a second implementation of the HTTP contract at URL (scenario peer)")
    ap.add_argument("--peer-env", metavar="FILE",
                    help="the peer's FLASHSALE_JWT_SECRET and FLASHSALE_ADMIN_TOKEN (NAME=value lines)")
    ap.add_argument("--peer-pid", metavar="PID[,PID…]",
                    help="the peer's processes, whose CPU (children included) is reported")
    ap.add_argument("--summary-from", help="re-render summary.md and latency.svg of a results dir")
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    args.argv = argv
    if args.summary_from:
        d = Path(args.summary_from)
        data = json.loads((d / "results.json").read_text())
        (d / "summary.md").write_text(render_summary(data))
        plot.write_svg(data, d / "latency.svg")
        print((d / "summary.md").read_text())
        return 0
    if args.peer and not args.peer_env:
        ap.error("--peer needs --peer-env FILE (the peer's JWT secret and admin token)")
    if "peer" in args.scenarios and not args.peer:
        ap.error("scenario peer needs --peer URL")
    if args.peer and "peer" not in args.scenarios:
        # The peer is measured in every run, after our own scenarios.
        args.scenarios = (args.scenarios or list(ALL_SCENARIOS)) + ["peer"]
    for sc in args.scenarios:
        if sc not in ALL_SCENARIOS + ["peer"]:
            ap.error(f"unknown scenario {sc!r} (choose from {', '.join(ALL_SCENARIOS)})")
    if not 1 <= args.runs <= 50:
        ap.error("--runs must be 1..50")
    bench = Bench(args)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    ok = False
    try:
        bench.run()
        ok = not bench.failures
    except Failure as e:
        bench.failures.append(str(e))
        log(f"error: {e}")
    except KeyboardInterrupt as e:
        bench.failures.append(f"interrupted ({e})")
        log("interrupted; stopping everything")
    finally:
        if getattr(bench, "scraper", None):
            bench.scraper.stop()
        bench.procs.stop_all()
        bench.stop_group()
        summary = bench.write()
        if not args.keep_bin:
            # Large and of no use afterwards: pinned binaries, token files, AOF data.
            shutil.rmtree(bench.bin, ignore_errors=True)
            for f in ("tokens.txt", "tokens-k6.txt"):
                (bench.out / f).unlink(missing_ok=True)
            for d in bench.group_dir.glob("redis-*/appendonlydir"):
                shutil.rmtree(d, ignore_errors=True)
    print(summary)
    print(f"results: {bench.out}", file=sys.stderr)
    if bench.failures:
        print("lt: FAILED:\n  " + "\n  ".join(bench.failures), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
