//! A throw-away Redis Cluster for integration tests: the Rust twin of
//! `scripts/redis-cluster.sh`, as [`crate::redis_group`] is of
//! `scripts/redis-group.sh`.
//!
//! [`RedisCluster::start`] picks free ports, makes a fresh temp dir and runs
//! the very same script the developer uses (`redis-cluster.sh start --dir …
//! --base-port …`): six nodes on 127.0.0.1, `redis-cli --cluster create …
//! --cluster-replicas 1`, so three primaries with one replica each. It
//! returns once every node reports `cluster_state:ok` and every primary has
//! its replica online.
//!
//! Settings: the script gives every node the settings `deploy/` ships
//! (`deploy/redis/redis-shipped.conf`, then
//! `deploy/redis/redis-cluster-shipped.conf`; `tests/it/cluster_kit.rs`
//! proves it on the running processes). [`ClusterOptions::default`] changes
//! none of them. The one timing override,
//! [`ClusterOptions::node_timeout_override_ms`], is named by the script in its
//! output and in `cluster.state`, and [`RedisCluster::timing_override`]
//! returns it so that a harness can print it next to its results.
//!
//! Nodes are named by their port (`nodes()`: B..B+6, cluster bus B+10+N).
//! Which of them are primaries is the cluster's business: ask
//! [`RedisCluster::shards`], [`RedisCluster::primaries`],
//! [`RedisCluster::replicas`] (from `CLUSTER SHARDS`), or
//! [`RedisCluster::primary_of_key`].
//!
//! The cluster owns every process it started (the PIDs in its pidfiles, and
//! the ones [`RedisCluster::restart`] starts) and its temp dir. It can kill,
//! freeze, thaw and restart single nodes, fail a replica over, move a slot
//! with its keys and wait for the cluster to settle. Dropping it SIGKILLs its
//! processes (after a SIGCONT, for frozen ones) and removes the temp dir, also
//! while a test panics; a watchdog process stops them (`redis-cluster.sh
//! stop`) if this process dies without unwinding. It never touches a process
//! whose command line does not name its own temp dir.
//!
//! With [`ClusterOptions::tls`] every node speaks TLS only (clients, the
//! cluster bus, replication); the cluster's own probes then connect with
//! its client certificate, through the product's client builder
//! ([`flashsale::redis::client`]), as they do without.
//!
//! Timings on the shipped settings (`cluster-node-timeout` 5000, Redis 7.0,
//! 2 shared cores): `start` ≈ 4–6 s; `CLUSTER FAILOVER` on a replica → it
//! is primary within milliseconds; kill -9 of a primary → its replica is primary
//! after 7.1–8.7 s (the node timeout, ≈ 1–1.5 s until the majority of
//! primaries agree it failed, then an election delayed by 0.5–1 s); a
//! restarted node rejoins as a replica within ≈ 1–3 s.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

use crate::procs::{live_cmdline, on_path, send_signal};
use crate::redis_group::TlsFiles;
use flashsale::config::{Access, Secret};

/// How the cluster is configured. Every Redis setting is the shipped one
/// unless an override below is set.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// TIMING OVERRIDE: `cluster-node-timeout` instead of the shipped value
    /// (`redis-cluster.sh --node-timeout`). `None` (the default): as shipped.
    /// A cluster started with one reports it ([`RedisCluster::timing_override`]).
    pub node_timeout_override_ms: Option<u64>,
    /// `requirepass` / `masterauth` of every node.
    pub password: String,
    /// TLS only, the cluster bus and replication too, with certificates
    /// made for the cluster (`redis-cluster.sh --tls`;
    /// [`RedisCluster::tls_files`]).
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            node_timeout_override_ms: None,
            password: "test-pass".to_owned(),
            tls: false,
        }
    }
}

/// One node of a shard as `CLUSTER SHARDS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardNode {
    pub port: u16,
    pub id: String,
    /// `role` is `master`.
    pub primary: bool,
    /// `online`, `fail` or `loading` (a replica whose replication offset is 0).
    pub health: String,
    pub offset: u64,
}

/// One shard as `CLUSTER SHARDS` reports it (a failed primary that lost its
/// slots is a shard of its own, without slots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Inclusive slot ranges.
    pub slots: Vec<(u16, u16)>,
    pub nodes: Vec<ShardNode>,
}

impl Shard {
    /// The shard's primary, if it is not failed.
    pub fn primary(&self) -> Option<u16> {
        self.nodes
            .iter()
            .find(|n| n.primary && n.health != "fail")
            .map(|n| n.port)
    }

    /// Its replicas whose health is `online`.
    pub fn online_replicas(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| !n.primary && n.health == "online")
            .map(|n| n.port)
            .collect()
    }

    /// How many slots it owns.
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
            .sum()
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

/// Per-node state the cluster tracks.
#[derive(Debug, Clone, Copy, Default)]
struct NodeState {
    /// PID of the running process; `None` after [`RedisCluster::kill`].
    pid: Option<i32>,
    /// Frozen by [`RedisCluster::stop_process`].
    stopped: bool,
}

/// Number of nodes: 3 primaries, 3 replicas.
const NODES: usize = 6;
/// Ports of one cluster: B..B+6 (clients) and B+10..B+16 (cluster bus).
const PORT_OFFSETS: [u16; 12] = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15];
/// Base ports are drawn from here, as the Sentinel groups' are: below Linux's
/// default ephemeral range (32768–60999), so that a client socket's local port
/// cannot take a port a killed node must re-bind on restart.
const BASE_PORT_RANGE: (u16, u16) = (20000, 32700);
/// Timeout of the cluster's own queries to a node (a SIGSTOPped node never answers).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Keys moved by one `MIGRATE` in [`RedisCluster::migrate_slot`].
const MIGRATE_BATCH: usize = 100;

/// Bases already handed out in this test process (tests run in parallel).
static RESERVED_BASES: Mutex<Vec<u16>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    RandomState::new().hash_one((
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    ))
}

fn ports_free(base: u16) -> bool {
    PORT_OFFSETS
        .iter()
        .all(|off| TcpListener::bind(("127.0.0.1", base + off)).is_ok())
}

/// A base port whose twelve ports (nodes and cluster bus) are free right now
/// and not handed out to another cluster of this process. Also for tests that
/// run `scripts/redis-cluster.sh` themselves; [`release_base_port`] gives it back.
pub fn pick_base_port() -> u16 {
    let (lo, hi) = BASE_PORT_RANGE;
    for _ in 0..500 {
        let base = lo + (random_u64() % u64::from(hi - lo)) as u16;
        let mut reserved = RESERVED_BASES.lock().unwrap_or_else(|e| e.into_inner());
        if reserved.iter().any(|&b| b.abs_diff(base) < 16) {
            continue;
        }
        if ports_free(base) {
            reserved.push(base);
            return base;
        }
    }
    panic!("redis_cluster: found no base port with 12 free ports in {lo}..{hi} after 500 tries");
}

/// Gives back a base port from [`pick_base_port`].
pub fn release_base_port(base: u16) {
    let mut reserved = RESERVED_BASES.lock().unwrap_or_else(|e| e.into_inner());
    reserved.retain(|&b| b != base);
}

/// A new, empty directory under the system's temp dir (canonical path).
pub fn fresh_temp_dir(prefix: &str) -> PathBuf {
    let root = std::env::temp_dir();
    for _ in 0..100 {
        let dir = root.join(format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                return dir.canonicalize().unwrap_or_else(|e| {
                    panic!("redis_cluster: canonicalize {}: {e}", dir.display())
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!(
                "redis_cluster: cannot create temp dir {}: {e}",
                dir.display()
            ),
        }
    }
    panic!(
        "redis_cluster: could not create a fresh temp dir under {}",
        root.display()
    );
}

/// `scripts/redis-cluster.sh` of the repository: next to the manifest of the
/// crate that includes this module (the root crate, or `loadtest/`'s parent).
pub fn script_path() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|d| d.join("scripts/redis-cluster.sh"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| manifest.join("scripts/redis-cluster.sh"))
}

fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix(':'))
}

fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn value_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => value_str(other)?.parse().ok(),
    }
}

/// A RESP2 flat key/value array or a RESP3 map as (key, value) pairs.
fn value_pairs(v: &Value) -> Option<Vec<(String, &Value)>> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .map(|kv| match kv {
                [k, v] => Some((value_str(k)?, v)),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| Some((value_str(k)?, v)))
            .collect(),
        _ => None,
    }
}

/// The reply of `CLUSTER SHARDS`.
fn parse_shards(reply: &Value) -> Result<Vec<Shard>, String> {
    let Value::Array(shards) = reply else {
        return Err(format!("CLUSTER SHARDS: not an array: {reply:?}"));
    };
    let mut out = Vec::new();
    for shard in shards {
        let fields = value_pairs(shard).ok_or("CLUSTER SHARDS: a shard is not a map")?;
        let mut slots = Vec::new();
        let mut nodes = Vec::new();
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("slots", Value::Array(bounds)) => {
                    for pair in bounds.chunks(2) {
                        let [lo, hi] = pair else {
                            return Err("CLUSTER SHARDS: odd slot bounds".into());
                        };
                        let lo = value_int(lo).ok_or("CLUSTER SHARDS: slot bound")?;
                        let hi = value_int(hi).ok_or("CLUSTER SHARDS: slot bound")?;
                        slots.push((lo as u16, hi as u16));
                    }
                }
                ("nodes", Value::Array(list)) => {
                    for node in list {
                        let f: HashMap<String, &Value> = value_pairs(node)
                            .ok_or("CLUSTER SHARDS: a node is not a map")?
                            .into_iter()
                            .collect();
                        let get = |k: &str| f.get(k).and_then(|v| value_str(v));
                        nodes.push(ShardNode {
                            port: get("port")
                                .and_then(|p| p.parse().ok())
                                .ok_or("CLUSTER SHARDS: node without port")?,
                            id: get("id").unwrap_or_default(),
                            primary: get("role").as_deref() == Some("master"),
                            health: get("health").unwrap_or_default(),
                            offset: get("replication-offset")
                                .and_then(|o| o.parse().ok())
                                .unwrap_or(0),
                        });
                    }
                }
                _ => {}
            }
        }
        out.push(Shard { slots, nodes });
    }
    Ok(out)
}

/// Whether SHARDS describe a whole, healthy cluster: slot-owning shards
/// cover 16384 slots, each with an online primary and an online replica.
fn shards_healthy(shards: &[Shard]) -> Result<(), String> {
    let owning: Vec<&Shard> = shards.iter().filter(|s| !s.slots.is_empty()).collect();
    let slots: u32 = owning.iter().map(|s| s.slot_count()).sum();
    if slots != 16384 {
        return Err(format!("the shards own {slots} slots, not 16384"));
    }
    for s in owning {
        let Some(primary) = s.primary() else {
            return Err(format!("shard {:?} has no live primary", s.slots));
        };
        if s.online_replicas().is_empty() {
            return Err(format!(
                "primary {primary} (slots {:?}) has no online replica",
                s.slots
            ));
        }
    }
    Ok(())
}

/// A running Redis Cluster in a temp dir. See the module docs.
pub struct RedisCluster {
    dir: PathBuf,
    base_port: u16,
    opts: ClusterOptions,
    nodes: Mutex<[NodeState; NODES]>,
    /// Every PID this cluster ever ran (for Drop, in case of restarts).
    all_pids: Mutex<Vec<i32>>,
}

impl RedisCluster {
    /// Starts a fresh cluster with `scripts/redis-cluster.sh start` on free
    /// ports in a new temp dir. Returns once every node reports
    /// `cluster_state:ok` and each of the three primaries has its replica
    /// online. Panics with the script's output if redis is not installed,
    /// ports cannot be found, or the cluster does not become ready.
    pub async fn start(opts: ClusterOptions) -> RedisCluster {
        for bin in ["redis-server", "redis-cli"] {
            assert!(
                on_path(bin),
                "redis_cluster: `{bin}` not found on PATH; install it with \
                 `apt-get install -y redis-server redis-tools` \
                 (or run `scripts/redis-cluster.sh start` once, which installs them)"
            );
        }
        let script = script_path();
        assert!(
            script.is_file(),
            "redis_cluster: {} not found",
            script.display()
        );

        let mut last_err = String::new();
        for attempt in 1..=4 {
            let base_port = pick_base_port();
            // From here on Drop cleans up, whatever happens; the watchdog if
            // this process dies without unwinding.
            let mut cluster = RedisCluster {
                dir: fresh_temp_dir("flashsale-redis-cluster"),
                base_port,
                opts: opts.clone(),
                nodes: Mutex::new([NodeState::default(); NODES]),
                all_pids: Mutex::new(Vec::new()),
            };
            cluster.watchdog();
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script)
                .arg("start")
                .arg("--dir")
                .arg(&cluster.dir)
                .arg("--base-port")
                .arg(base_port.to_string());
            if let Some(ms) = opts.node_timeout_override_ms {
                cmd.arg("--node-timeout").arg(ms.to_string());
            }
            if opts.tls {
                cmd.arg("--tls");
            }
            let out = cmd
                .env_remove("REDIS_CLUSTER_NODE_TIMEOUT_MS")
                .env_remove("REDIS_CLUSTER_TLS")
                .arg("--wait-secs")
                .arg("30")
                .env("REDIS_CLUSTER_PASSWORD", &opts.password)
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap_or_else(|e| panic!("redis_cluster: cannot run {}: {e}", script.display()));
            if out.status.success() {
                cluster.read_all_pidfiles();
                if let Some(o) = cluster.timing_override() {
                    eprintln!("redis_cluster: TIMING OVERRIDE {o}");
                }
                return cluster;
            }
            last_err = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Pick up whatever did start, so Drop kills it.
            cluster.read_all_pidfiles();
            drop(cluster);
            let port_clash = last_err.contains("in use");
            if !port_clash {
                break;
            }
            eprintln!("redis_cluster: attempt {attempt}: port clash, retrying on other ports");
        }
        panic!("redis_cluster: `redis-cluster.sh start` failed:\n{last_err}");
    }

    /// Stops every node with `redis-cluster.sh stop` (SIGTERM: each node
    /// finishes its AOF) and removes the temp dir.
    pub async fn stop(self) {
        let out = tokio::process::Command::new("bash")
            .arg(script_path())
            .arg("stop")
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("redis_cluster: cannot run redis-cluster.sh stop: {e}"));
        assert!(
            out.status.success(),
            "redis_cluster: `redis-cluster.sh stop` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Drop: nothing of ours is left to kill; it removes the dir.
    }

    /// A shell that outlives a test process killed without unwinding: once
    /// this process is gone, it stops the cluster by its pidfiles
    /// (`redis-cluster.sh stop`, which checks every PID's command line) and
    /// removes the dir. It ends by itself when Drop removed the dir.
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null && [ -d '{dir}' ]; do sleep 1; done; \
             [ -d '{dir}' ] || exit 0; \
             bash '{script}' stop --dir '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display(),
            script = script_path().display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis_cluster: watchdog");
        // Not waited for on purpose: it must outlive this process.
        std::mem::forget(child);
    }

    /// The run dir of this cluster (configs, logs, nodes.conf, data of every node).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_field(&self, key: &str) -> Option<String> {
        let path = self.dir.join("cluster.state");
        let state = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("redis_cluster: cannot read {}: {e}", path.display()));
        state
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// The timing override this cluster runs with, as `redis-cluster.sh`
    /// recorded it in `cluster.state` (e.g. `cluster-node-timeout=2000
    /// (shipped 5000)`); `None` when every setting is the shipped one.
    /// Harnesses print it with their results.
    pub fn timing_override(&self) -> Option<String> {
        self.state_field("timing_override")
    }

    /// The `cluster-node-timeout` in force (the shipped value unless
    /// overridden), as the script recorded it.
    pub fn node_timeout(&self) -> Duration {
        let ms: u64 = self
            .state_field("node_timeout_ms")
            .and_then(|v| v.parse().ok())
            .expect("redis_cluster: cluster.state has no node_timeout_ms");
        Duration::from_millis(ms)
    }

    pub fn password(&self) -> &str {
        &self.opts.password
    }

    /// Ports of the six nodes, in node order (`redis-0` … `redis-5`).
    pub fn nodes(&self) -> Vec<u16> {
        (0..NODES as u16).map(|i| self.base_port + i).collect()
    }

    /// Every node as `127.0.0.1:port`, comma-joined (`FLASHSALE_REDIS_CLUSTER`,
    /// as `redis-cluster.sh env` writes it).
    pub fn seeds_env(&self) -> String {
        self.nodes()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn index(&self, port: u16) -> usize {
        let i = port.wrapping_sub(self.base_port) as usize;
        assert!(
            port >= self.base_port && i < NODES,
            "redis_cluster: port {port} is not a node of this cluster ({:?})",
            self.nodes()
        );
        i
    }

    fn node_file(&self, port: u16, name: &str) -> PathBuf {
        self.dir
            .join(format!("redis-{}", self.index(port)))
            .join(name)
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, [NodeState; NODES]> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if PID is a live (non-zombie) redis process of this cluster.
    fn pid_is_ours(&self, pid: i32) -> bool {
        let dir = format!("{}/", self.dir.display());
        live_cmdline(pid).is_some_and(|cmd| cmd.contains("redis") && cmd.contains(&dir))
    }

    /// The PID in the pidfile of the node on PORT, if it names a live process
    /// of this cluster.
    fn read_pidfile(&self, port: u16) -> Option<i32> {
        let text = std::fs::read_to_string(self.node_file(port, "redis.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        self.pid_is_ours(pid).then_some(pid)
    }

    fn read_all_pidfiles(&mut self) {
        for port in self.nodes() {
            let pid = self.read_pidfile(port);
            self.lock_nodes()[self.index(port)].pid = pid;
            if let Some(pid) = pid {
                self.remember_pid(pid);
            }
        }
    }

    fn remember_pid(&self, pid: i32) {
        let mut all = self.all_pids.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains(&pid) {
            all.push(pid);
        }
    }

    /// PID of the node on PORT, `None` if it was killed with [`RedisCluster::kill`].
    pub fn pid(&self, port: u16) -> Option<i32> {
        self.lock_nodes()[self.index(port)].pid
    }

    /// Live and not frozen, as far as this cluster knows.
    pub fn is_up(&self, port: u16) -> bool {
        let st = self.lock_nodes()[self.index(port)];
        st.pid.is_some() && !st.stopped
    }

    fn live_nodes(&self) -> Vec<u16> {
        self.nodes()
            .into_iter()
            .filter(|&p| self.is_up(p))
            .collect()
    }

    /// SIGKILLs the node on PORT (SIGCONT first if frozen) and waits until it
    /// is gone.
    pub fn kill(&self, port: u16) {
        let Some(pid) = self.pid(port) else {
            return;
        };
        if self.pid_is_ours(pid) {
            send_signal("CONT", &[pid]);
            send_signal("KILL", &[pid]);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.pid_is_ours(pid) {
                assert!(
                    Instant::now() < deadline,
                    "redis_cluster: node {port} (pid {pid}) still alive 5 s after SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.lock_nodes()[self.index(port)] = NodeState::default();
    }

    /// Freezes the node on PORT with SIGSTOP (it keeps its sockets but
    /// answers nothing, to clients and to the cluster bus).
    pub fn stop_process(&self, port: u16) {
        let pid = self
            .pid(port)
            .unwrap_or_else(|| panic!("redis_cluster: stop_process({port}): node is not running"));
        assert!(
            self.pid_is_ours(pid),
            "redis_cluster: stop_process({port}): pid {pid} is gone"
        );
        send_signal("STOP", &[pid]);
        self.lock_nodes()[self.index(port)].stopped = true;
    }

    /// Thaws the node on PORT with SIGCONT.
    pub fn cont(&self, port: u16) {
        let pid = self
            .pid(port)
            .unwrap_or_else(|| panic!("redis_cluster: cont({port}): node is not running"));
        send_signal("CONT", &[pid]);
        self.lock_nodes()[self.index(port)].stopped = false;
    }

    /// Starts the node on PORT again from its config and its `nodes.conf`
    /// (it rejoins the cluster with the role the others give it: a killed
    /// primary whose replica was promoted comes back as that one's replica),
    /// waits until it answers PING and records its new PID. Panics if the
    /// node is still running.
    pub async fn restart(&self, port: u16) {
        if let Some(pid) = self.pid(port) {
            assert!(
                !self.pid_is_ours(pid),
                "redis_cluster: restart({port}): still running as pid {pid}; kill it first"
            );
        }
        let conf = self.node_file(port, "redis.conf");
        let _ = std::fs::remove_file(self.node_file(port, "redis.pid"));
        // daemonize yes: the command returns once the server forked.
        let out = tokio::process::Command::new("redis-server")
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("redis_cluster: cannot run redis-server: {e}"));
        assert!(
            out.status.success(),
            "redis_cluster: `redis-server {}` failed: {}{}",
            conf.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = self.read_pidfile(port) {
                // Recorded at once, so Drop kills it even if it never answers.
                self.lock_nodes()[self.index(port)] = NodeState {
                    pid: Some(pid),
                    stopped: false,
                };
                self.remember_pid(pid);
                if self.ping(port).await {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis_cluster: restart({port}) did not answer PING within 10 s; log tail:\n{}",
                    self.log_tail(port)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the log of the node on PORT.
    pub fn log_tail(&self, port: u16) -> String {
        let log = std::fs::read_to_string(self.node_file(port, "redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn client_for(&self, port: u16) -> Client {
        flashsale::redis::client("127.0.0.1", port, 0, &self.access())
            .expect("redis_cluster: client")
    }

    /// The certificates of a TLS cluster (`None`: plain TCP).
    pub fn tls_files(&self) -> Option<TlsFiles> {
        self.opts.tls.then(|| TlsFiles::in_dir(&self.dir))
    }

    /// How to reach the nodes: `default` with the password, and with a TLS
    /// cluster its CA and client certificate.
    pub fn access(&self) -> Access {
        let tls = self.tls_files().map(|f| f.load());
        Access {
            username: None,
            password: Some(Secret::new(self.opts.password.clone())),
            tls,
        }
    }

    /// A short-timeout connection for the cluster's own probes.
    async fn try_connect(&self, port: u16) -> Option<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(Some(PROBE_TIMEOUT));
        tokio::time::timeout(
            PROBE_TIMEOUT * 2,
            self.client_for(port)
                .get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        .ok()?
        .ok()
    }

    /// One command on a probe connection; `Err` says what went wrong.
    async fn query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let mut con = self
            .try_connect(port)
            .await
            .ok_or(format!("node {port} does not answer"))?;
        cmd.query_async(&mut con)
            .await
            .map_err(|e| format!("node {port}: {e}"))
    }

    async fn ping(&self, port: u16) -> bool {
        matches!(self.query::<String>(port, &redis::cmd("PING")).await, Ok(ref s) if s == "PONG")
    }

    /// An authenticated connection to the node on PORT (connect timeout 2 s,
    /// response timeout 10 s, so that e.g. `WAIT` does not time out). A plain
    /// node connection: a key of another node's slot answers `MOVED`.
    pub async fn client(&self, port: u16) -> MultiplexedConnection {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.client_for(port)
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap_or_else(|e| panic!("redis_cluster: cannot connect to 127.0.0.1:{port}: {e}"))
    }

    /// `CLUSTER SHARDS` as the node on PORT sees it.
    pub async fn shards_from(&self, port: u16) -> Result<Vec<Shard>, String> {
        let reply: Value = self
            .query(port, redis::cmd("CLUSTER").arg("SHARDS"))
            .await?;
        parse_shards(&reply)
    }

    /// `CLUSTER SHARDS` as the first live node that answers sees it. Polls
    /// for up to 10 s if none answers, then panics.
    pub async fn shards(&self) -> Vec<Shard> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut last = String::from("no node is up");
            for port in self.live_nodes() {
                match self.shards_from(port).await {
                    Ok(s) => return s,
                    Err(e) => last = e,
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis_cluster: no node answered CLUSTER SHARDS within 10 s: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ports of the live primaries that own slots, in the order of their
    /// first slot.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut shards: Vec<Shard> = self
            .shards()
            .await
            .into_iter()
            .filter(|s| !s.slots.is_empty())
            .collect();
        shards.sort_by_key(|s| s.slots.iter().map(|r| r.0).min());
        shards.iter().filter_map(Shard::primary).collect()
    }

    /// Ports of the replicas that are not failed, in the order of their
    /// primaries' first slot.
    pub async fn replicas(&self) -> Vec<u16> {
        let mut shards = self.shards().await;
        shards.sort_by_key(|s| s.slots.iter().map(|r| r.0).min());
        shards
            .iter()
            .flat_map(|s| s.nodes.iter())
            .filter(|n| !n.primary && n.health != "fail")
            .map(|n| n.port)
            .collect()
    }

    /// Ports of the replicas of PRIMARY that are not failed.
    pub async fn replicas_of(&self, primary: u16) -> Vec<u16> {
        self.shards()
            .await
            .iter()
            .filter(|s| s.primary() == Some(primary))
            .flat_map(|s| s.nodes.iter())
            .filter(|n| !n.primary && n.health != "fail")
            .map(|n| n.port)
            .collect()
    }

    /// The primary that owns SLOT (panics if none does).
    pub async fn primary_of_slot(&self, slot: u16) -> u16 {
        let shards = self.shards().await;
        shards
            .iter()
            .find(|s| s.owns(slot))
            .and_then(Shard::primary)
            .unwrap_or_else(|| {
                panic!("redis_cluster: no live primary owns slot {slot}: {shards:?}")
            })
    }

    /// `CLUSTER KEYSLOT key`, asked of a live node.
    pub async fn keyslot(&self, key: &str) -> u16 {
        for port in self.live_nodes() {
            if let Ok(slot) = self
                .query::<u16>(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
                .await
            {
                return slot;
            }
        }
        panic!("redis_cluster: no node answered CLUSTER KEYSLOT {key:?}");
    }

    /// The primary that owns KEY's slot.
    pub async fn primary_of_key(&self, key: &str) -> u16 {
        let slot = self.keyslot(key).await;
        self.primary_of_slot(slot).await
    }

    /// `ROLE` of the node on PORT says `master`.
    pub async fn is_primary(&self, port: u16) -> bool {
        let role: Result<Value, String> = self.query(port, &redis::cmd("ROLE")).await;
        matches!(role, Ok(Value::Array(ref items))
            if items.first().and_then(value_str).as_deref() == Some("master"))
    }

    /// Waits until the node on PORT says it is a primary (`ROLE`) and its own
    /// `CLUSTER SHARDS` gives it slots; returns how long that took. Panics
    /// after TIMEOUT.
    pub async fn wait_primary(&self, port: u16, timeout: Duration) -> Duration {
        self.primary_within(port, timeout)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "redis_cluster: node {port} not a primary with slots after {timeout:?}; log tail:\n{}",
                    self.log_tail(port)
                )
            })
    }

    /// [`RedisCluster::wait_primary`] for a harness that reports rather
    /// than panics: how long it took, `None` when the node was not a primary
    /// with slots within TIMEOUT.
    pub async fn primary_within(&self, port: u16, timeout: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        loop {
            if self.is_primary(port).await
                && let Ok(shards) = self.shards_from(port).await
                && shards
                    .iter()
                    .any(|s| !s.slots.is_empty() && s.primary() == Some(port))
            {
                return Some(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many replicas the node on PORT serves whose sync is done
    /// (`INFO replication`: `slaveN:…,state=online,…`): those a `WAIT` there
    /// can count on now.
    pub async fn attached_replicas(&self, port: u16) -> Result<usize, String> {
        let info: String = self
            .query(port, redis::cmd("INFO").arg("replication"))
            .await?;
        Ok(info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count())
    }

    /// Sends `CLUSTER FAILOVER` to the replica on PORT and returns at once
    /// (the switch follows; [`RedisCluster::primary_within`] waits for it).
    pub async fn request_failover(&self, replica_port: u16) -> Result<(), String> {
        let reply: String = self
            .query(replica_port, redis::cmd("CLUSTER").arg("FAILOVER"))
            .await?;
        if reply == "OK" {
            Ok(())
        } else {
            Err(format!(
                "CLUSTER FAILOVER on {replica_port} answered {reply}"
            ))
        }
    }

    /// `CLUSTER FAILOVER` on the replica on PORT (a coordinated switch: its
    /// primary stops writes until the replica has caught up), then waits
    /// until it is the primary of its slots; returns how long that took.
    pub async fn failover(&self, replica_port: u16) -> Duration {
        let t0 = Instant::now();
        self.request_failover(replica_port)
            .await
            .unwrap_or_else(|e| panic!("redis_cluster: {e}"));
        self.wait_primary(replica_port, Duration::from_secs(15))
            .await;
        t0.elapsed()
    }

    async fn myid(&self, port: u16) -> String {
        self.query(port, redis::cmd("CLUSTER").arg("MYID"))
            .await
            .unwrap_or_else(|e| panic!("redis_cluster: CLUSTER MYID: {e}"))
    }

    /// Moves SLOT with its keys to the primary on TO, the documented way:
    /// `CLUSTER SETSLOT slot IMPORTING` on the target, `MIGRATING` on the
    /// owner, `MIGRATE` of the slot's keys in batches until it has none, then
    /// `CLUSTER SETSLOT slot NODE` on the target, the owner and every other
    /// primary. Waits until every live node names the target as the slot's
    /// owner. Panics on an error (a key that exists on the target, a node
    /// down).
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.primary_of_slot(slot).await;
        if from == to {
            return;
        }
        assert!(
            self.is_primary(to).await,
            "redis_cluster: migrate_slot({slot}, {to}): {to} is not a primary"
        );
        let from_id = self.myid(from).await;
        let to_id = self.myid(to).await;
        let must = |what: &str, r: Result<String, String>| {
            r.unwrap_or_else(|e| panic!("redis_cluster: migrate_slot({slot}): {what}: {e}"))
        };
        must(
            "SETSLOT IMPORTING",
            self.query(
                to,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("IMPORTING")
                    .arg(&from_id),
            )
            .await,
        );
        must(
            "SETSLOT MIGRATING",
            self.query(
                from,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("MIGRATING")
                    .arg(&to_id),
            )
            .await,
        );
        let mut source = self.client(from).await;
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(MIGRATE_BATCH)
                .query_async(&mut source)
                .await
                .unwrap_or_else(|e| panic!("redis_cluster: GETKEYSINSLOT {slot}: {e}"));
            if keys.is_empty() {
                break;
            }
            let reply: Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("AUTH")
                .arg(&self.opts.password)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await
                .unwrap_or_else(|e| panic!("redis_cluster: MIGRATE slot {slot} to {to}: {e}"));
            assert!(
                matches!(reply, Value::Okay) || value_str(&reply).as_deref() == Some("OK"),
                "redis_cluster: MIGRATE slot {slot} to {to}: {reply:?}"
            );
        }
        // The target first, so that the owner's redirections never point
        // to a node that does not take the slot yet; then the owner; then
        // the other primaries (the gossip would tell them anyway).
        let mut order = vec![to, from];
        order.extend(
            self.primaries()
                .await
                .into_iter()
                .filter(|p| *p != to && *p != from),
        );
        for port in order {
            must(
                "SETSLOT NODE",
                self.query(
                    port,
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id),
                )
                .await,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut pending = Vec::new();
            for port in self.live_nodes() {
                let owner = self.shards_from(port).await.ok().and_then(|shards| {
                    shards
                        .iter()
                        .find(|s| s.owns(slot))
                        .and_then(Shard::primary)
                });
                if owner != Some(to) {
                    pending.push(format!("{port} sees {owner:?}"));
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis_cluster: slot {slot} moved to {to}, but after 15 s: {}",
                pending.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Why not every live node reports `cluster_state:ok` (empty when they do).
    async fn not_ok(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for port in self.live_nodes() {
            match self
                .query::<String>(port, redis::cmd("CLUSTER").arg("INFO"))
                .await
            {
                Ok(info) if info_field(&info, "cluster_state") == Some("ok") => {}
                Ok(info) => bad.push(format!(
                    "{port}: cluster_state:{}",
                    info_field(&info, "cluster_state").unwrap_or("?")
                )),
                Err(e) => bad.push(e),
            }
        }
        bad
    }

    /// Waits until every live node (not killed, not frozen) reports
    /// `cluster_state:ok`. Panics with what is missing after TIMEOUT.
    pub async fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let bad = self.not_ok().await;
            if bad.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis_cluster: not ok after {timeout:?}: {}",
                bad.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the cluster is whole again: every live node reports
    /// `cluster_state:ok` and sees, in its `CLUSTER SHARDS`, all 16384 slots
    /// owned by live primaries, each with an online replica (a replica is
    /// `loading` until its replication offset moves: write something first).
    /// Panics with what is missing after TIMEOUT.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut bad = self.not_ok().await;
            if bad.is_empty() {
                for port in self.live_nodes() {
                    if let Err(e) = self
                        .shards_from(port)
                        .await
                        .and_then(|s| shards_healthy(&s))
                    {
                        bad.push(format!("{port}: {e}"));
                    }
                }
            }
            if bad.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis_cluster: not healthy after {timeout:?}: {}",
                bad.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Everything we ever started plus whatever the pidfiles name now,
        // but only processes whose command line names our dir.
        let mut pids: Vec<i32> = self
            .all_pids
            .lock()
            .map(|v| v.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        for port in self.nodes() {
            if let Some(pid) = self.read_pidfile(port) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|&pid| self.pid_is_ours(pid));
        send_signal("CONT", &pids);
        send_signal("KILL", &pids);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&pid| self.pid_is_ours(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        release_base_port(self.base_port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk("abc"),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(42),
            bulk("health"),
            bulk(health),
        ])
    }

    #[test]
    fn cluster_shards_replies_parse() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![
                    Value::Int(0),
                    Value::Int(99),
                    Value::Int(200),
                    Value::Int(16383),
                ]),
                bulk("nodes"),
                Value::Array(vec![
                    node(7000, "master", "online"),
                    node(7003, "replica", "online"),
                ]),
            ]),
            Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![Value::Int(100), Value::Int(199)]),
                bulk("nodes"),
                Value::Array(vec![
                    node(7001, "master", "online"),
                    node(7004, "replica", "loading"),
                ]),
            ]),
            // A failed primary that lost its slots.
            Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![]),
                bulk("nodes"),
                Value::Array(vec![node(7002, "master", "fail")]),
            ]),
        ]);
        let shards = parse_shards(&reply).expect("parses");
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0].slots, vec![(0, 99), (200, 16383)]);
        assert_eq!(shards[0].primary(), Some(7000));
        assert_eq!(shards[0].online_replicas(), vec![7003]);
        assert_eq!(shards[0].slot_count() + shards[1].slot_count(), 16384);
        assert!(shards[1].owns(150) && !shards[1].owns(200));
        assert_eq!(shards[2].primary(), None);
        assert_eq!(
            shards_healthy(&shards).unwrap_err(),
            "primary 7001 (slots [(100, 199)]) has no online replica"
        );
    }
}
