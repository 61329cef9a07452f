#!/usr/bin/env bash
# cluster-capacity.sh — purchases per second and CPU per purchase of every
# component, on a Redis Cluster of 1, 2 and 3 primaries (each with one
# replica), in one command: the figures behind docs/CAPACITY.md.
#
#   loadtest/cluster-capacity.sh [--runs N] [--duration S] [--sales N] [--conns N]
#                                [--configs LIST] [--out DIR] [--bin-dir DIR]
#
# Configurations (--configs, comma-separated; default: all, in this order):
#   cluster-1p  --sales sales (default 12) on a cluster of 1 primary + 1 replica
#   cluster-2p  the same on 2 primaries + 2 replicas (the sales spread by slot: 6 + 6)
#   cluster-3p  the same on 3 primaries + 3 replicas (4 + 4 + 4)
#   hot-1p      ONE sale on 1 primary + 1 replica: all the load on one sale,
#               the limit of one sale on one shard
#   sentinel    --sales sales on a Sentinel group (scripts/redis-group.sh:
#               1 master, 2 replicas, 3 Sentinels; FLASHSALE_REPLICA_ACKS=all
#               is WAIT 2 there, WAIT 1 on a cluster shard)
#   cluster-1p-c16, cluster-3p-c16, cluster-1p-c4, cluster-3p-c4
#               cluster-1p and cluster-3p with 16 or 4 connections instead
#               of --conns: few purchases in flight per shard, so few share
#               a WAIT round (with 4 on 3 shards, about one: the cost of a
#               purchase that shares its round with no other)
#
# Every run of every configuration starts from nothing: a fresh cluster
# (scripts/redis-cluster.sh start --primaries P, the shipped settings, a
# random password, free ports) or Sentinel group, one `flashsale serve`
# (FLASHSALE_REPLICA_ACKS=all, rate limits off, as loadtest/lt.py runs it)
# and one `flashsale-worker`, release builds pinned for the run. Automatic
# AOF rewrites are turned off on every data node for the run, as lt.py does
# (a rewrite forks and copies the data set on the same cores); nothing else
# differs from the shipped settings. The sales (stock 100 000 000, limit
# 1 000 000 per shopper) get SKUs chosen by their hash slot (CLUSTER
# KEYSLOT of the sale's key), so that each shard holds the same number;
# after creating them the script asks every primary which sales' keys it
# holds (EXISTS there, no redirection) and stops unless each is on the
# shard its slot names; after the run it reports how many purchases each
# shard took. Then loadgen (loadtest/src/bin/loadgen.rs, unchanged: one
# --req per sale, equal weights, so every request picks a sale at random;
# --conns connections, 256 by default, each with one request in flight;
# every purchase the next of 200 000 shopper tokens) warms up for 3 s, the
# worker catches up, and loadgen runs --duration seconds (default 20). CPU
# of the server, the worker, every primary, every replica, the Sentinels
# and loadgen is utime+stime from /proc/PID/stat before and after
# (loadgen's from its rusage), divided by the purchases (202s) of those
# seconds; the rest of the machine's busy time (/proc/stat) is reported as
# other users' cores. The load average (/proc/loadavg) is recorded at the
# start and the end of every measurement, and every primary's INFO
# commandstats (reset before) gives the purchases per WAIT round. After
# it, every sale's audit (GET /admin/sales/{sku}/audit) must be
# consistent, not oversold, and hold at least as many orders as 202s were
# answered. The RESP client, process and HTTP helpers are lt.py's
# (imported).
#
# --runs N (default 5): the configurations are measured round-robin, run 1
# of each, then run 2 of each, … (so a slow minute of a shared machine does
# not fall on one configuration only); the table has medians of the runs.
#
# --bin-dir DIR: run the binaries in DIR (flashsale, flashsale-worker,
# loadgen), e.g. a release build of a clean export of a commit, instead of
# building the working tree with `cargo build --release`.
#
# Output: the table on stdout; loadtest/results/cluster-capacity-<UTC time>/
# (or --out): summary.md (the table, every run's line, the spread checks),
# results.json (every figure of every run), raw/ (loadgen JSON of every
# warm-up and measurement), logs/ (server, worker, loadgen, the cluster's
# create.log and node logs). Every process it starts is stopped by PID on
# exit, Ctrl-C or SIGTERM. Exit status 0 when every run ran and every audit
# held; timings are reported, never asserted.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$ROOT"
PROG=loadtest/cluster-capacity.sh
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

for a in "$@"; do
  case $a in
    -h | --help) sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
  esac
done

bin_dir=""
prev=""
for a in "$@"; do
  case $a in
    --bin-dir=*) bin_dir=${a#*=} ;;
  esac
  [[ $prev == --bin-dir ]] && bin_dir=$a
  prev=$a
done

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
for t in redis-server redis-sentinel redis-cli python3; do
  command -v "$t" >/dev/null 2>&1 || die "$t is missing (scripts/setup.sh installs Redis)"
done
if [[ -z $bin_dir ]]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is missing (scripts/setup.sh installs Rust)"
  # Only what it runs: the service, the worker and loadgen.
  cargo build --release -p flashsale --bins -p flashsale-loadtest --bin loadgen >&2 ||
    die "cargo build --release -p flashsale --bins -p flashsale-loadtest --bin loadgen failed"
  bin_dir=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
[[ -d $bin_dir ]] || die "--bin-dir $bin_dir is not a directory"

export CC_ROOT=$ROOT CC_BIN_DIR=$bin_dir
exec python3 - "$@" <<'PY'
import argparse
import datetime
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
REPO = Path(os.environ["CC_ROOT"])
sys.path.insert(0, str(REPO / "loadtest"))
# The load tests' helpers: RESP client, processes by PID, bounded children
# with their rusage, HTTP calls, free ports, machine busy time.
import lt  # noqa: E402
from lt import Failure, RespError, Resp, http_call, log  # noqa: E402

BINARIES = ["flashsale", "flashsale-worker", "loadgen"]
CONFIGS = {
    "cluster-1p": {"mode": "cluster", "primaries": 1, "hot": False},
    "cluster-2p": {"mode": "cluster", "primaries": 2, "hot": False},
    "cluster-3p": {"mode": "cluster", "primaries": 3, "hot": False},
    "hot-1p": {"mode": "cluster", "primaries": 1, "hot": True},
    "sentinel": {"mode": "sentinel", "primaries": 1, "hot": False},
    "cluster-1p-c16": {"mode": "cluster", "primaries": 1, "hot": False, "conns": 16},
    "cluster-3p-c16": {"mode": "cluster", "primaries": 3, "hot": False, "conns": 16},
    "cluster-1p-c4": {"mode": "cluster", "primaries": 1, "hot": False, "conns": 4},
    "cluster-3p-c4": {"mode": "cluster", "primaries": 3, "hot": False, "conns": 4},
}
WARMUP_S = 3.0
N_TOKENS = 200_000
STOCK = 100_000_000
LIMIT = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """(utime+stime, cutime+cstime) of a live process in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return ((int(rest[11]) + int(rest[12])) / CLK_TCK, (int(rest[13]) + int(rest[14])) / CLK_TCK)
    except (OSError, IndexError, ValueError):
        return None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Capacity:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out = Path(args.out).resolve() if args.out else REPO / "loadtest/results" / f"cluster-capacity-{stamp}"
        self.raw, self.logs = self.out / "raw", self.out / "logs"
        for d in (self.raw, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        # Pinned binaries (hard links): a concurrent cargo build cannot swap them mid-run.
        self.bin = self.out / "bin"
        self.bin.mkdir(exist_ok=True)
        src = Path(os.environ["CC_BIN_DIR"]).resolve()
        self.bin_note = (f"from {src}" if args.bin_dir else
                         "cargo build --release of the working tree")
        for name in BINARIES:
            if not (src / name).is_file():
                raise SystemExit(f"{src / name} missing (cargo build --release)")
            try:
                os.link(src / name, self.bin / name)
            except OSError:
                shutil.copy2(src / name, self.bin / name)
        self.work = self.out / "redis"  # run dirs of the clusters and groups (data removed at the end)
        self.jwt_secret = secrets.token_hex(32)
        self.runs = []        # one dict per measurement
        self.failures = []
        self.procs = None
        self.store = None     # the running cluster or group: (kind, dir)

    # --- shopper tokens ---------------------------------------------------

    def mint_tokens(self):
        self.tokens = self.out / "tokens.txt"
        t0 = time.monotonic()
        r = subprocess.run([str(self.bin / "flashsale"), "token", "--users", str(N_TOKENS), "--prefix", "u",
                            "--out", str(self.tokens)], env=dict(os.environ, FLASHSALE_JWT_SECRET=self.jwt_secret),
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise Failure(f"flashsale token failed: {r.stderr}")
        log(f"minted {N_TOKENS} shopper tokens in {time.monotonic() - t0:.1f} s")

    # --- the data store ---------------------------------------------------

    def free_base(self, offsets):
        for _ in range(500):
            base = random.randint(20000, 32700)
            if all(lt.port_free(base + o) for o in offsets):
                return base
        raise Failure("no free port range")

    def start_cluster(self, name, primaries):
        d = self.work / name
        base = self.free_base([i for i in range(2 * primaries)] + [10 + i for i in range(2 * primaries)])
        cmd = ["bash", str(REPO / "scripts/redis-cluster.sh"), "start", "--dir", str(d), "--base-port", str(base),
               "--primaries", str(primaries)]
        self.store = ("cluster", d)
        r = subprocess.run(cmd, env=dict(os.environ, REDIS_CLUSTER_PASSWORD=self.password), cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        (self.logs / f"{name}-redis-cluster.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise Failure(f"redis-cluster.sh start failed:\n{r.stdout}{r.stderr}")
        nodes = []
        for i in range(2 * primaries):
            pid = int((d / f"redis-{i}/redis.pid").read_text().strip())
            nodes.append({"name": f"redis-{i}", "port": base + i, "pid": pid})
        self.redis_env = {"FLASHSALE_REDIS_CLUSTER": ",".join(f"127.0.0.1:{n['port']}" for n in nodes),
                          "FLASHSALE_REDIS_PASSWORD": self.password}
        self.sentinel_pids = []
        self.describe_nodes(nodes)
        return nodes

    def start_group(self, name):
        d = self.work / name
        base = self.free_base([0, 1, 2, 10, 11, 12])
        cmd = ["bash", str(REPO / "scripts/redis-group.sh"), "start", "--dir", str(d), "--base-port", str(base)]
        self.store = ("group", d)
        r = subprocess.run(cmd, env=dict(os.environ, REDIS_GROUP_PASSWORD=self.password), cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        (self.logs / f"{name}-redis-group.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise Failure(f"redis-group.sh start failed:\n{r.stdout}{r.stderr}")
        nodes = [{"name": f"redis-{i}", "port": base + i,
                  "pid": int((d / f"redis-{i}/redis.pid").read_text().strip())} for i in range(3)]
        self.sentinel_pids = [int((d / f"sentinel-{i}/sentinel.pid").read_text().strip()) for i in range(3)]
        self.redis_env = {"FLASHSALE_REDIS_SENTINELS": ",".join(f"127.0.0.1:{base + 10 + i}" for i in range(3)),
                          "FLASHSALE_REDIS_MASTER_NAME": "mymaster", "FLASHSALE_REDIS_PASSWORD": self.password}
        self.describe_nodes(nodes)
        return nodes

    def node(self, port, timeout=10):
        return Resp("127.0.0.1", port, self.password, timeout=timeout)

    def describe_nodes(self, nodes):
        """Each node's role (ROLE) and, on a cluster primary, its slot ranges."""
        for n in nodes:
            r = self.node(n["port"])
            try:
                role = r.call("ROLE")
                n["role"] = "primary" if role[0] == "master" else "replica"
                n["primary_port"] = None if role[0] == "master" else int(role[2])
                n["slots"] = []
                if n["role"] == "primary" and self.store[0] == "cluster":
                    for line in r.call("CLUSTER", "NODES").splitlines():
                        f = line.split()
                        if "myself" in f[2].split(","):
                            for s in f[8:]:
                                if s.startswith("["):
                                    continue
                                lo, _, hi = s.partition("-")
                                n["slots"].append((int(lo), int(hi or lo)))
                # As lt.py: no automatic AOF rewrite inside a measurement.
                r.call("CONFIG", "SET", "auto-aof-rewrite-percentage", "0")
            finally:
                r.close()

    def stop_store(self):
        if self.store is None:
            return
        kind, d = self.store
        script = "redis-cluster.sh" if kind == "cluster" else "redis-group.sh"
        subprocess.run(["bash", str(REPO / "scripts" / script), "stop", "--dir", str(d)], cwd=REPO,
                       capture_output=True, timeout=60)
        # Keep the logs; drop the data.
        for p in list(d.glob("redis-*/appendonlydir")) + list(d.glob("redis-*/dump.rdb")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        self.store = None

    # --- flashsale ----------------------------------------------------------

    def start_services(self, name):
        self.port = lt.free_port()
        self.admin_token = secrets.token_hex(24)
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        base.update(self.redis_env)
        server_env = dict(base, FLASHSALE_JWT_SECRET=self.jwt_secret, FLASHSALE_ADMIN_TOKEN=self.admin_token,
                          FLASHSALE_RATE_LIMIT_PER_SHOPPER="0", FLASHSALE_RATE_LIMIT_PER_IP="0",
                          FLASHSALE_STATIC_DIR=str(REPO / "static"), FLASHSALE_LISTEN=f"127.0.0.1:{self.port}",
                          FLASHSALE_REPLICA_ACKS="all")
        self.procs = lt.Procs()
        self.procs.start("server", [str(self.bin / "flashsale"), "serve"], server_env, self.logs / f"{name}-server.log")
        self.procs.start("worker", [str(self.bin / "flashsale-worker")], base, self.logs / f"{name}-worker.log")
        deadline = time.monotonic() + 30
        while True:
            self.procs.check_alive()
            try:
                if http_call(self.port, "GET", "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failure(f"flashsale serve not ready within 30 s; see logs/{name}-server.log")
            time.sleep(0.2)

    def stop_services(self):
        if self.procs is not None:
            self.procs.stop_all()
            self.procs = None

    def admin(self, method, path, body=None):
        return http_call(self.port, method, path, body, {"Authorization": f"Bearer {self.admin_token}"})

    # --- sales ----------------------------------------------------------------

    def pick_skus(self, name, nodes, count):
        """SKUs whose sale keys spread evenly over the primaries (by hash slot)."""
        primaries = [n for n in nodes if n["role"] == "primary"]
        quota = {n["port"]: count // len(primaries) + (1 if i < count % len(primaries) else 0)
                 for i, n in enumerate(primaries)}
        chosen, k = [], 0
        r = self.node(primaries[0]["port"])
        try:
            while len(chosen) < count:
                sku = f"{name}-{k}"
                k += 1
                if self.store[0] == "cluster":
                    slot = int(r.call("CLUSTER", "KEYSLOT", f"fs:{{{sku}}}:sale"))
                    owner = next(n["port"] for n in primaries if any(lo <= slot <= hi for lo, hi in n["slots"]))
                else:
                    slot, owner = None, primaries[0]["port"]
                if quota[owner] > 0:
                    quota[owner] -= 1
                    chosen.append({"sku": sku, "slot": slot, "planned": owner})
                if k > 100_000:
                    raise Failure("no SKUs found for an even spread")
        finally:
            r.close()
        return chosen

    def create_sales(self, sales):
        now = lt.now_ms()
        for s in sales:
            st, j = self.admin("POST", "/admin/sales", {
                "sku": s["sku"], "name": f"Capacity {s['sku']}", "description": "loadtest/cluster-capacity.sh",
                "price_cents": 1999, "stock": STOCK, "starts_at": lt.rfc3339(now - 60_000),
                "ends_at": lt.rfc3339(now + 6 * 3600_000), "per_user_limit": LIMIT})
            if st != 201:
                raise Failure(f"creating sale {s['sku']}: {st} {j}")

    def locate_sales(self, nodes, sales):
        """Asks every primary whether it holds each sale's key (a cluster node
        that does not own the slot answers MOVED): the spread as it is."""
        for s in sales:
            s["holder"] = []
        for n in (n for n in nodes if n["role"] == "primary"):
            r = self.node(n["port"])
            try:
                for s in sales:
                    try:
                        if int(r.call("EXISTS", f"fs:{{{s['sku']}}}:sale")) == 1:
                            s["holder"].append(n["port"])
                    except RespError:
                        pass  # MOVED: not this shard's slot
            finally:
                r.close()
        bad = [s["sku"] for s in sales if s["holder"] != [s["planned"]]]
        if bad:
            raise Failure(f"sales not on the shard their slot names: {bad}")

    def sale_counts(self, sales):
        """{sku: (orders, confirmed)} from each sale's hash on its primary."""
        out = {}
        for s in sales:
            r = self.node(s["holder"][0])
            try:
                o, c = r.call("HMGET", f"fs:{{{s['sku']}}}:sale", "orders", "confirmed")
                out[s["sku"]] = (int(o or 0), int(c or 0))
            finally:
                r.close()
        return out

    def wait_caught_up(self, sales, secs=120):
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs:
            counts = self.sale_counts(sales)
            if all(o == c for o, c in counts.values()):
                return round(time.monotonic() - t0, 2)
            time.sleep(0.2)
        return None

    # --- one measurement ------------------------------------------------------

    def reset_stats(self, nodes):
        for n in (n for n in nodes if n["role"] == "primary"):
            r = self.node(n["port"])
            try:
                r.call("CONFIG", "RESETSTAT")
            finally:
                r.close()

    def command_stats(self, nodes):
        """INFO commandstats of every primary since reset_stats: where its time went."""
        out = {}
        for n in (n for n in nodes if n["role"] == "primary"):
            r = self.node(n["port"])
            try:
                out[n["name"]] = lt.parse_commandstats(r.call("INFO", "commandstats"))
            finally:
                r.close()
        return out

    def snapshot(self, nodes):
        snap = {"server": proc_cpu(self.procs.pid("server")), "worker": proc_cpu(self.procs.pid("worker"))}
        for n in nodes:
            snap[n["name"]] = proc_cpu(n["pid"])
        snap["sentinels"] = None
        if self.sentinel_pids:
            cpus = [proc_cpu(p) for p in self.sentinel_pids]
            snap["sentinels"] = (sum(c[0] for c in cpus if c), sum(c[1] for c in cpus if c))
        snap["_machine"] = lt.machine_busy_seconds()
        snap["_t"] = time.monotonic()
        return snap

    def loadgen(self, name, sales, duration, label, conns):
        out = self.raw / f"{name}-{label}.json"
        cmd = [str(self.bin / "loadgen"), "--target", f"http://127.0.0.1:{self.port}", "-c", str(conns),
               "-z", str(duration), "--tokens", str(self.tokens), "--out", str(out), "--label", f"{name}-{label}"]
        for s in sales:
            cmd += ["--req", f"1:POST:/api/sales/{s['sku']}/purchase"]
        rc, cpu, wall = lt.run_child(cmd, self.logs / f"{name}-loadgen.log", duration + 90)
        if rc != 0:
            raise Failure(f"loadgen exited {rc}; see logs/{name}-loadgen.log")
        return json.loads(out.read_text()), cpu, wall

    def measure(self, config, run):
        c = CONFIGS[config]
        name = f"{config}-r{run}"
        self.password = "cc-" + secrets.token_hex(12)
        log(f"{name}: starting ({'Sentinel group' if c['mode'] == 'sentinel' else str(c['primaries']) + ' primaries'})")
        if c["mode"] == "cluster":
            nodes = self.start_cluster(name, c["primaries"])
        else:
            nodes = self.start_group(name)
        self.start_services(name)
        sales = self.pick_skus(name, nodes, 1 if c["hot"] else self.args.sales)
        self.create_sales(sales)
        self.locate_sales(nodes, sales)
        time.sleep(1.5)  # the worker discovers new sales within 1 s
        conns = c.get("conns", self.args.conns)
        warm, _, _ = self.loadgen(name, sales, WARMUP_S, "warmup", conns)
        caught_up_before = self.wait_caught_up(sales)
        self.procs.check_alive()

        m = {"config": config, "run": run, "mode": c["mode"], "primaries": c["primaries"], "sales": len(sales),
             "conns": conns, "duration_s": self.args.duration}
        m["loadavg_start"] = loadavg()
        self.reset_stats(nodes)
        counts0 = self.sale_counts(sales)
        before = self.snapshot(nodes)
        lg, lg_cpu, wall = self.loadgen(name, sales, self.args.duration, "measure", conns)
        after = self.snapshot(nodes)
        counts1 = self.sale_counts(sales)
        stats = self.command_stats(nodes)
        m["loadavg_end"] = loadavg()
        self.procs.check_alive()

        status = {k: int(v) for k, v in lg["status"].items()}
        n202 = status.get("202", 0)
        elapsed = lg["elapsed_s"]
        m.update({"elapsed_s": round(elapsed, 3), "requests": lg["requests"], "status": status,
                  "purchases": n202, "purchases_per_s": round(n202 / elapsed, 1),
                  "n503": status.get("503", 0),
                  "other_status": sum(v for k, v in status.items() if k not in ("202", "503")),
                  "io_errors": lg["errors"]["io"], "timeouts": lg["errors"]["timeout"],
                  "connect_errors": lg["errors"]["connect"],
                  "p50_ms": lg["by_status"].get("202", {}).get("p50_ms"),
                  "p99_ms": lg["by_status"].get("202", {}).get("p99_ms"),
                  "p50_all_ms": lg["latency"]["p50_ms"], "p99_all_ms": lg["latency"]["p99_ms"],
                  "warmup_202": int(warm["status"].get("202", 0)), "worker_caught_up_before_s": caught_up_before})
        backlog_end = sum(counts1[s["sku"]][0] - counts1[s["sku"]][1] for s in sales)
        m["worker_backlog_end"] = backlog_end
        m["worker_confirmed_per_s"] = round(sum(counts1[k][1] - counts0[k][1] for k in counts1) / elapsed, 1)

        # CPU seconds per process over the measurement, and µs per purchase.
        wall_s = max(after["_t"] - before["_t"], 1e-3)
        cpu, child_cpu = {}, {}
        for k in before:
            if k.startswith("_") or before[k] is None or after[k] is None:
                continue
            cpu[k] = round(after[k][0] - before[k][0], 3)
            child_cpu[k] = round(after[k][1] - before[k][1], 3)
        cpu["loadgen"] = round(lg_cpu, 3)
        m["cpu_s"] = cpu
        m["child_cpu_s"] = {k: v for k, v in child_cpu.items() if v}  # fork children reaped (BGSAVE, rewrites)
        ours = sum(cpu.values()) + sum(child_cpu.values())
        m["machine_busy_cores"] = round((after["_machine"] - before["_machine"]) / wall_s, 2)
        m["others_cores"] = round(max(after["_machine"] - before["_machine"] - ours, 0) / wall_s, 2)
        per = (lambda s: round(s * 1e6 / n202, 2) if n202 else None)
        m["cpu_us_per_purchase"] = {k: per(v) for k, v in cpu.items()}
        shards = []
        for n in nodes:
            if n["role"] != "primary":
                continue
            mine = [s for s in sales if s["holder"][0] == n["port"]]
            bought = sum(counts1[s["sku"]][0] - counts0[s["sku"]][0] for s in mine)
            replicas = [r for r in nodes if r["role"] == "replica" and r["primary_port"] == n["port"]]
            st = stats[n["name"]]
            waits = st.get("wait", {}).get("calls", 0)
            # Commands the Functions call are counted inside FCALL's time too (lt.IN_FUNCTIONS).
            busy_us = sum(v["usec"] for k, v in st.items() if k not in lt.IN_FUNCTIONS)
            shards.append({
                "primary": n["name"], "port": n["port"], "slots": n["slots"], "sales": [s["sku"] for s in mine],
                "slots_of_sales": [s["slot"] for s in mine], "purchases": bought,
                "primary_cpu_s": cpu[n["name"]],
                "primary_us_per_own_purchase": round(cpu[n["name"]] * 1e6 / bought, 2) if bought else None,
                "wait_calls": waits, "purchases_per_wait": round(bought / waits, 1) if waits else None,
                "commands_us_per_own_purchase": round(busy_us / bought, 2) if bought else None,
                "commandstats": st,
                "replicas": [r["name"] for r in replicas],
                "replica_cpu_s": [cpu[r["name"]] for r in replicas],
                "replica_us_per_own_purchase": [round(cpu[r["name"]] * 1e6 / bought, 2) if bought else None
                                                for r in replicas]})
        m["shards"] = shards
        prim = [n["name"] for n in nodes if n["role"] == "primary"]
        repl = [n["name"] for n in nodes if n["role"] == "replica"]
        m["cpu_us_per_purchase"]["primaries"] = per(sum(cpu[p] for p in prim))
        m["cpu_us_per_purchase"]["replicas"] = per(sum(cpu[p] for p in repl))
        m["cpu_us_per_purchase"]["total"] = per(sum(cpu.values()))
        m["nodes"] = [{k: n[k] for k in ("name", "port", "role", "primary_port", "slots")} for n in nodes]

        # Audit: every sale consistent, not oversold, every 202 an order.
        self.wait_caught_up(sales)
        orders, audits = 0, {}
        for s in sales:
            st, a = self.admin("GET", f"/admin/sales/{s['sku']}/audit")
            if st != 200:
                raise Failure(f"audit of {s['sku']}: {st} {a}")
            audits[s["sku"]] = a
            orders += a["orders"]
            if not (a.get("consistent") and a["sold"] <= a["stock_total"]
                    and a["stock_left"] + a["sold"] == a["stock_total"]):
                self.failures.append(f"{name}: audit of {s['sku']} broken: {a}")
        answered = n202 + m["warmup_202"]
        m["audit"] = {"orders": orders, "answered_202": answered, "ok": orders >= answered and not any(
            f.startswith(f"{name}:") for f in self.failures)}
        if orders < answered:
            self.failures.append(f"{name}: {answered} purchases answered 202 but {orders} orders exist")
        m["audits"] = audits
        self.runs.append(m)
        (self.raw / f"{name}-result.json").write_text(json.dumps(m, indent=1))
        up = m["cpu_us_per_purchase"]
        log(f"{name}: {m['purchases_per_s']:.0f} purchases/s, 503 {m['n503']}, p50 {m['p50_ms']} ms, "
            f"p99 {m['p99_ms']} ms; CPU µs/purchase server {up['server']} worker {up['worker']} "
            f"primaries {up['primaries']} replicas {up['replicas']} loadgen {up['loadgen']}; "
            f"others {m['others_cores']} cores; load {m['loadavg_start']} -> {m['loadavg_end']}; "
            f"per shard {[s['purchases'] for s in shards]}")
        self.stop_services()
        self.stop_store()

    # --- report -----------------------------------------------------------------

    def row(self, config):
        rs = [m for m in self.runs if m["config"] == config]
        if not rs:
            return None
        med = lambda f: median([f(m) for m in rs])  # noqa: E731
        up = lambda k: med(lambda m: m["cpu_us_per_purchase"].get(k))  # noqa: E731
        nodes = rs[0]["nodes"]
        prim = [n["name"] for n in nodes if n["role"] == "primary"]
        each_p = [med(lambda m, i=i: m["shards"][i]["primary_us_per_own_purchase"]) for i in range(len(prim))]
        each_r = [med(lambda m, i=i, j=j: m["shards"][i]["replica_us_per_own_purchase"][j])
                  for i in range(len(prim)) for j in range(len(rs[0]["shards"][i]["replicas"]))]
        return {"config": config, "runs": len(rs), "sales": rs[0]["sales"], "shards": len(prim),
                "conns": rs[0]["conns"],
                "purchases_per_s": med(lambda m: m["purchases_per_s"]),
                "range": (min(m["purchases_per_s"] for m in rs), max(m["purchases_per_s"] for m in rs)),
                "n503": med(lambda m: m["n503"]),
                "errors": med(lambda m: m["other_status"] + m["io_errors"] + m["timeouts"] + m["connect_errors"]),
                "p50": med(lambda m: m["p50_ms"]), "p99": med(lambda m: m["p99_ms"]),
                "server": up("server"), "worker": up("worker"), "primaries": up("primaries"),
                "replicas": up("replicas"), "each_primary": each_p, "each_replica": each_r,
                "sentinels": up("sentinels"), "loadgen": up("loadgen"), "total": up("total"),
                "others": med(lambda m: m["others_cores"]), "busy": med(lambda m: m["machine_busy_cores"]),
                "purchases_per_wait": [med(lambda m, i=i: m["shards"][i]["purchases_per_wait"])
                                       for i in range(len(prim))],
                "commands_us": [med(lambda m, i=i: m["shards"][i]["commands_us_per_own_purchase"])
                                for i in range(len(prim))],
                "load": [f"{m['loadavg_start'].split()[0]}→{m['loadavg_end'].split()[0]}" for m in rs],
                "share": [med(lambda m, i=i: m["shards"][i]["purchases"] / max(m["purchases"], 1) * 100)
                          for i in range(len(prim))]}

    def render(self):
        f1 = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
        f0 = lambda v: "—" if v is None else f"{v:,.0f}".replace(",", " ")  # noqa: E731
        lines = ["# Cluster capacity", "",
                 f"{self.started} – {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
                 f"commit {self.commit} at the start; {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
                 f"shared with other users; {self.redis_version}.",
                 f"`{self.command}`: {self.args.runs} runs per configuration (round-robin), "
                 f"{self.args.duration:g} s each after a {WARMUP_S:g}-s warm-up, loadgen with the "
                 f"connections of the table (each one request in flight); medians of the runs (purchases/s: "
                 f"the range in brackets).",
                 f"Binaries: {self.bin_note}.",
                 "CPU: µs of CPU (utime+stime) per purchase answered 202 over the measured seconds; per shard: "
                 "that primary's (replica's) CPU over the purchases of its own sales.", "",
                 "| configuration | sales | shards | conns | purchases/s | 503 | other errors | p50 ms | p99 ms "
                 "| server | worker | primaries (each) | replicas (each) | Sentinels | loadgen | all | "
                 "machine busy / others' cores | load avg start→end per run |",
                 "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|"]
        rows = [self.row(c) for c in self.configs]
        for r in rows:
            if r is None:
                continue
            each = lambda xs: " / ".join(f1(x) for x in xs)  # noqa: E731
            lines.append(
                f"| {r['config']} | {r['sales']} | {r['shards']} | {r['conns']} | **{f0(r['purchases_per_s'])}** "
                f"({f0(r['range'][0])}–{f0(r['range'][1])}) | {f0(r['n503'])} | {f0(r['errors'])} | {f1(r['p50'])} "
                f"| {f1(r['p99'])} | {f1(r['server'])} | {f1(r['worker'])} | {f1(r['primaries'])} ({each(r['each_primary'])}) "
                f"| {f1(r['replicas'])} ({each(r['each_replica'])}) | {f1(r['sentinels'])} | {f1(r['loadgen'])} "
                f"| {f1(r['total'])} | {r['busy']:.2f} / {r['others']:.2f} | {', '.join(r['load'])} |")
        lines += ["", "Per shard (medians; each primary in turn): share of the run's purchases · purchases per "
                  "WAIT round (its purchases / WAIT calls) · command time in Redis per purchase (INFO "
                  "commandstats, µs):", ""]
        lines += [f"- {r['config']}: " + "; ".join(
            f"{x:.1f} % · {f1(w)} · {f1(u)}" for x, w, u in zip(r["share"], r["purchases_per_wait"], r["commands_us"]))
            for r in rows if r]
        lines += [""]
        lines += ["## Every run", "",
                  "| run | purchases/s | 503 | p50 / p99 ms | CPU µs/purchase server · worker · primaries · replicas "
                  "· loadgen | per shard: sales, purchases, primary µs/own purchase | backlog at end | others' "
                  "cores | load avg start → end | audit |", "|---|---:|---:|---|---|---|---:|---:|---|---|"]
        for m in self.runs:
            up = m["cpu_us_per_purchase"]
            shard = "; ".join(f"{s['primary']}: {len(s['sales'])}, {s['purchases']}, {f1(s['primary_us_per_own_purchase'])}"
                              for s in m["shards"])
            lines.append(f"| {m['config']}-r{m['run']} | {m['purchases_per_s']:.0f} | {m['n503']} | "
                         f"{f1(m['p50_ms'])} / {f1(m['p99_ms'])} | {f1(up['server'])} · {f1(up['worker'])} · "
                         f"{f1(up['primaries'])} · {f1(up['replicas'])} · {f1(up['loadgen'])} | {shard} | "
                         f"{m['worker_backlog_end']} | {m['others_cores']:.2f} | {m['loadavg_start']} → "
                         f"{m['loadavg_end']} | {'ok' if m['audit']['ok'] else 'FAILED'} ({m['audit']['orders']} "
                         f"orders ≥ {m['audit']['answered_202']} 202s) |")
        child = [(m["config"], m["run"], m["child_cpu_s"]) for m in self.runs if m["child_cpu_s"]]
        lines += ["", "Fork children's CPU (cutime+cstime: BGSAVE, AOF rewrite), not in the figures above: "
                  + ("; ".join(f"{c}-r{r}: {v}" for c, r, v in child) if child else "none in any measurement."), ""]
        if self.failures:
            lines += ["FAILURES:", ""] + [f"- {f}" for f in self.failures] + [""]
        return "\n".join(lines)

    def write(self):
        summary = self.render()
        (self.out / "summary.md").write_text(summary + "\n")
        (self.out / "results.json").write_text(json.dumps({
            "command": self.command, "started": self.started, "commit": self.commit, "binaries": self.bin_note,
            "cores": os.cpu_count(), "redis": self.redis_version, "warmup_s": WARMUP_S,
            "args": vars(self.args), "runs": self.runs, "failures": self.failures,
            "rows": [self.row(c) for c in self.configs]}, indent=1))
        return summary

    def run(self):
        self.started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.command = ("loadtest/cluster-capacity.sh " + " ".join(sys.argv[1:])).strip()
        self.commit = lt.git_describe()
        self.redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                            text=True).stdout.split(" sha=")[0].strip()
        self.configs = self.args.configs
        self.mint_tokens()
        for run in range(1, self.args.runs + 1):
            for config in self.configs:
                try:
                    self.measure(config, run)
                except Failure as e:
                    self.failures.append(f"{config}-r{run}: {e}")
                    log(f"{config}-r{run}: error: {e}")
                finally:
                    self.stop_services()
                    self.stop_store()


def main():
    ap = argparse.ArgumentParser(prog="loadtest/cluster-capacity.sh")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--sales", type=int, default=12)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out")
    ap.add_argument("--bin-dir", help="prebuilt binaries (read by the shell part)")
    args = ap.parse_args()
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in args.configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r} (choose from {', '.join(CONFIGS)})")
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 300 or not 1 <= args.sales <= 240:
        ap.error("--runs 1..20, --duration 1..300, --sales 1..240")
    cap = Capacity(args)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        cap.run()
    except KeyboardInterrupt as e:
        cap.failures.append(f"interrupted ({e})")
        log("interrupted; stopping everything")
    finally:
        cap.stop_services()
        cap.stop_store()
        summary = cap.write() if hasattr(cap, "configs") else ""
        shutil.rmtree(cap.bin, ignore_errors=True)
        (cap.out / "tokens.txt").unlink(missing_ok=True)
    print(summary)
    print(f"results: {cap.out}", file=sys.stderr)
    if cap.failures:
        print("cluster-capacity: FAILED:\n  " + "\n  ".join(cap.failures), file=sys.stderr)
        return 1
    return 0


sys.exit(main())
PY
