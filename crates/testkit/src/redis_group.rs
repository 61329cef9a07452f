//! A throw-away Redis Sentinel group for integration tests: the Rust twin of
//! `scripts/redis-group.sh`.
//!
//! [`RedisGroup::start`] picks free ports, makes a fresh temp dir and runs the
//! very same script the demo uses (`redis-group.sh start --dir … --base-port …`),
//! so tests and demo share one code path: 1 master (`redis-0`), 2 replicas and
//! 3 Sentinels with quorum 2, all on 127.0.0.1 — or, with
//! [`GroupOptions::hosts`], each node on its own host of a
//! [`crate::netns::Net`], so that a test can cut the network between them.
//!
//! Settings: the script gives every node the settings `deploy/` ships
//! (`deploy/redis/redis-shipped.conf`, `deploy/redis/sentinel-shipped.properties`;
//! `tests/it/settings.rs` proves it on the running processes).
//! [`GroupOptions::default`] changes none of them. The one timing override,
//! [`GroupOptions::down_after_override_ms`], is named by the script in its
//! output and in `group.state`, and [`RedisGroup::timing_override`] returns it
//! so that a harness can print it next to its results.
//!
//! The group owns every process it started (the PIDs in its pidfiles, and the
//! ones [`RedisGroup::restart`] spawns) and its temp dir. It can kill, freeze,
//! thaw and restart single nodes, trigger failovers and wait for the group to
//! settle. Dropping it SIGKILLs its processes (after a SIGCONT, for frozen ones)
//! and removes the temp dir, also while a test panics. It never touches a
//! process whose command line does not name its own temp dir.
//!
//! With [`GroupOptions::tls`] every node speaks TLS only (the script makes
//! a CA, node and client certificates: [`RedisGroup::tls_files`]); with
//! [`GroupOptions::acl`] the nodes have the ACL users of
//! `deploy/redis/users.acl` and `sentinel-users.acl`
//! ([`RedisGroup::user_password`]). The group's own probes use the
//! `default` user (the group password, on the Sentinels too with `acl`)
//! and the product's own client builder ([`flashsale::redis::client`]).
//!
//! Port layout (B = base port): redis-N on B+N, sentinel-N on B+10+N (N = 0..3).
//! Run-dir layout: see `scripts/redis-group.sh` (`redis-N/redis.{conf,pid,log}`,
//! `sentinel-N/sentinel.{conf,pid,log}`, `group.state`).
//!
//! Timings on the shipped settings (`down-after-milliseconds` 3000, Redis 7.0,
//! 2 shared cores, ~5 000 writes/s): `start` ≈ 2.7 s; `SENTINEL FAILOVER` →
//! new master named ≈ 1.1 s, accepting writes ≈ 1.2–1.3 s; kill -9 of the
//! master → new master accepting writes ≈ 4.3 s. A surviving or restarted old
//! master is only turned into a replica ≈ 10 s after the switch (Sentinel waits
//! 4 × 2 s before it reconfigures a node that wrongly claims to be master), so
//! `wait_converged` after a failover needs a timeout of 20–30 s.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::procs::{live_cmdline, on_path, send_signal};
use flashsale::config::{Access, ClientCert, Secret, Tls};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

/// How the group is configured. Every Redis and Sentinel setting is the
/// shipped one unless an override below is set.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// TIMING OVERRIDE: `sentinel down-after-milliseconds` instead of the
    /// shipped value (`redis-group.sh --down-after`). `None` (the default): as
    /// shipped. A group started with one reports it ([`RedisGroup::timing_override`]).
    pub down_after_override_ms: Option<u64>,
    /// `requirepass` / `masterauth` of the data nodes (Sentinels have none).
    pub password: String,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    /// Where each node runs, in the order redis-0..2, sentinel-0..2: its
    /// host of a [`crate::netns::Net`] (`redis-group.sh --hosts --netns`).
    /// `None` (the default): all on 127.0.0.1 in this namespace.
    pub hosts: Option<Vec<crate::netns::Host>>,
    /// TLS only, with certificates made for the group (`redis-group.sh --tls`).
    pub tls: bool,
    /// The ACL users of `deploy/redis/` (`redis-group.sh --acl`).
    pub acl: bool,
    /// With `acl`: the key prefix the app's and worker's users may touch.
    pub key_prefix: String,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            down_after_override_ms: None,
            password: "test-pass".to_owned(),
            master_name: "mymaster".to_owned(),
            hosts: None,
            tls: false,
            acl: false,
            key_prefix: "fs".to_owned(),
        }
    }
}

/// The PEM files of a TLS group (`RUN_DIR/tls/`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The CA and client files that `scripts/redis-certs.sh` writes into a
    /// test group's or cluster's `tls/` directory.
    pub fn in_dir(dir: &Path) -> Self {
        let d = dir.join("tls");
        Self {
            ca: d.join("ca.crt"),
            cert: d.join("client.crt"),
            key: d.join("client.key"),
        }
    }

    /// The files read, as the product's TLS settings hold them.
    pub fn load(&self) -> std::sync::Arc<Tls> {
        let read = |p: &Path| {
            std::fs::read(p).unwrap_or_else(|e| panic!("testkit: read {}: {e}", p.display()))
        };
        std::sync::Arc::new(Tls {
            ca: Some(read(&self.ca)),
            client: Some(ClientCert::new(read(&self.cert), read(&self.key))),
        })
    }
}

/// One process of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// Data node `redis-N`, N in 0..3 (0 is the initial master).
    Redis(usize),
    /// Sentinel `sentinel-N`, N in 0..3.
    Sentinel(usize),
}

impl Node {
    const ALL: [Node; 6] = [
        Node::Redis(0),
        Node::Redis(1),
        Node::Redis(2),
        Node::Sentinel(0),
        Node::Sentinel(1),
        Node::Sentinel(2),
    ];

    fn slot(self) -> usize {
        match self {
            Node::Redis(i) => {
                assert!(i < 3, "Node::Redis({i}): index must be 0..3");
                i
            }
            Node::Sentinel(i) => {
                assert!(i < 3, "Node::Sentinel({i}): index must be 0..3");
                3 + i
            }
        }
    }

    /// Name of the node's directory in the run dir (as the script lays it out).
    fn dir_name(self) -> String {
        match self {
            Node::Redis(i) => format!("redis-{i}"),
            Node::Sentinel(i) => format!("sentinel-{i}"),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Node::Redis(_) => "redis",
            Node::Sentinel(_) => "sentinel",
        }
    }
}

/// Per-node state the group tracks.
#[derive(Debug, Clone, Copy, Default)]
struct NodeState {
    /// PID of the running process; `None` after [`RedisGroup::kill9`].
    pid: Option<i32>,
    /// Frozen by [`RedisGroup::sigstop`].
    stopped: bool,
}

/// A running Redis Sentinel group in a temp dir. See the module docs.
pub struct RedisGroup {
    dir: PathBuf,
    base_port: u16,
    opts: GroupOptions,
    nodes: Mutex<[NodeState; 6]>,
    /// Every PID this group ever ran (for Drop, in case of restarts).
    all_pids: Mutex<Vec<i32>>,
}

/// Ports of one group: B..B+3 and B+10..B+13.
const PORT_OFFSETS: [u16; 6] = [0, 1, 2, 10, 11, 12];
/// Base ports are drawn from here: below Linux's default ephemeral range
/// (32768–60999), so that a client socket's local port cannot take a port a
/// killed node must re-bind on restart.
const BASE_PORT_RANGE: (u16, u16) = (20000, 32700);
/// Timeout of the group's own queries to a node (a SIGSTOPped node never answers).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Bases already handed out in this test process (tests run in parallel).
static RESERVED_BASES: Mutex<Vec<u16>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn random_u64() -> u64 {
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

/// A base port whose six ports are free right now and not used by another
/// group of this process.
fn pick_base_port() -> u16 {
    let (lo, hi) = BASE_PORT_RANGE;
    for _ in 0..500 {
        let base = lo + (random_u64() % u64::from(hi - lo)) as u16;
        let mut reserved = RESERVED_BASES.lock().unwrap_or_else(|e| e.into_inner());
        if reserved.iter().any(|&b| b.abs_diff(base) < 13) {
            continue;
        }
        if ports_free(base) {
            reserved.push(base);
            return base;
        }
    }
    panic!("redis_group: found no base port with 6 free ports in {lo}..{hi} after 500 tries");
}

fn release_base_port(base: u16) {
    let mut reserved = RESERVED_BASES.lock().unwrap_or_else(|e| e.into_inner());
    reserved.retain(|&b| b != base);
}

fn fresh_temp_dir() -> PathBuf {
    let root = std::env::temp_dir();
    for _ in 0..100 {
        let dir = root.join(format!(
            "flashsale-redis-group-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                return dir.canonicalize().unwrap_or_else(|e| {
                    panic!("redis_group: canonicalize {}: {e}", dir.display())
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("redis_group: cannot create temp dir {}: {e}", dir.display()),
        }
    }
    panic!(
        "redis_group: could not create a fresh temp dir under {}",
        root.display()
    );
}

/// `scripts/redis-group.sh` of the repository: next to the manifest of the
/// crate that includes this module (the root crate, or `loadtest/`'s parent).
fn script_path() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|d| d.join("scripts/redis-group.sh"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| manifest.join("scripts/redis-group.sh"))
}

/// Percent-encodes a password for a `redis://` URL (the load tests use it too).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix(':'))
}

/// The most common value and how often it occurs.
fn majority(ports: &[u16]) -> Option<(u16, usize)> {
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for &p in ports {
        *counts.entry(p).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(p, n)| (n, std::cmp::Reverse(p)))
}

impl RedisGroup {
    /// Starts a fresh group with `scripts/redis-group.sh start` on free ports in
    /// a new temp dir. Returns once every Sentinel sees the master, both replicas
    /// and the two other Sentinels. Panics with the script's output if redis is
    /// not installed, ports cannot be found, or the group does not converge.
    pub async fn start(opts: GroupOptions) -> RedisGroup {
        for bin in ["redis-server", "redis-sentinel", "redis-cli"] {
            assert!(
                on_path(bin),
                "redis_group: `{bin}` not found on PATH; install it with \
                 `apt-get install -y redis-server redis-sentinel redis-tools` \
                 (or run `scripts/redis-group.sh start` once, which installs them)"
            );
        }
        let script = script_path();
        assert!(
            script.is_file(),
            "redis_group: {} not found",
            script.display()
        );
        assert!(
            !opts.tls || on_path("openssl"),
            "redis_group: a TLS group needs `openssl` on PATH (scripts/setup.sh tls)"
        );

        let mut last_err = String::new();
        for attempt in 1..=4 {
            let base_port = pick_base_port();
            let dir = fresh_temp_dir();
            // From here on Drop cleans up, whatever happens.
            let mut group = RedisGroup {
                dir,
                base_port,
                opts: opts.clone(),
                nodes: Mutex::new([NodeState::default(); 6]),
                all_pids: Mutex::new(Vec::new()),
            };
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script)
                .arg("start")
                .arg("--dir")
                .arg(&group.dir)
                .arg("--base-port")
                .arg(base_port.to_string());
            if let Some(ms) = opts.down_after_override_ms {
                cmd.arg("--down-after").arg(ms.to_string());
            }
            if opts.tls {
                cmd.arg("--tls");
            }
            if opts.acl {
                cmd.arg("--acl").arg("--key-prefix").arg(&opts.key_prefix);
            }
            if let Some(hosts) = &opts.hosts {
                assert_eq!(hosts.len(), 6, "redis_group: hosts needs 6 entries");
                let join = |f: fn(&crate::netns::Host) -> &str| {
                    hosts.iter().map(f).collect::<Vec<_>>().join(",")
                };
                cmd.arg("--hosts")
                    .arg(join(|h| &h.ip))
                    .arg("--netns")
                    .arg(join(|h| &h.netns));
            }
            let out = cmd
                .env_remove("REDIS_GROUP_DOWN_AFTER_MS")
                .env_remove("REDIS_GROUP_TLS")
                .env_remove("REDIS_GROUP_ACL")
                .arg("--master-name")
                .arg(&opts.master_name)
                .arg("--wait-secs")
                .arg("30")
                .env("REDIS_GROUP_PASSWORD", &opts.password)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap_or_else(|e| panic!("redis_group: cannot run {}: {e}", script.display()));
            if out.status.success() {
                group.read_all_pidfiles();
                if let Some(o) = group.timing_override() {
                    eprintln!("redis_group: TIMING OVERRIDE {o}");
                }
                return group;
            }
            last_err = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Pick up whatever did start, so Drop kills it.
            group.read_all_pidfiles();
            drop(group);
            let port_clash = last_err.contains("in use");
            if !port_clash {
                break;
            }
            eprintln!("redis_group: attempt {attempt}: port clash, retrying on other ports");
        }
        panic!("redis_group: `redis-group.sh start` failed:\n{last_err}");
    }

    /// The run dir of this group (configs, logs, data of every node).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The timing override this group runs with, as `redis-group.sh` recorded
    /// it in `group.state` (e.g. `down-after-milliseconds=1000 (shipped 3000)`);
    /// `None` when every setting is the shipped one. Harnesses print it with
    /// their results.
    pub fn timing_override(&self) -> Option<String> {
        let state = std::fs::read_to_string(self.dir.join("group.state")).unwrap_or_else(|e| {
            panic!(
                "redis_group: cannot read {}: {e}",
                self.dir.join("group.state").display()
            )
        });
        state
            .lines()
            .find_map(|l| l.strip_prefix("timing_override="))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// `host:port` of the three Sentinels.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        (0..3)
            .map(|i| format!("{}:{}", self.host(Node::Sentinel(i)), self.sentinel_port(i)))
            .collect()
    }

    /// The address NODE binds and is known by.
    pub fn host(&self, node: Node) -> &str {
        match &self.opts.hosts {
            Some(h) => &h[node.slot()].ip,
            None => "127.0.0.1",
        }
    }

    /// The network namespace NODE runs in (`None`: this one).
    pub fn netns(&self, node: Node) -> Option<&str> {
        self.opts
            .hosts
            .as_ref()
            .map(|h| h[node.slot()].netns.as_str())
    }

    /// The address of the node listening on PORT.
    pub fn host_of_port(&self, port: u16) -> &str {
        Node::ALL
            .into_iter()
            .find(|&n| self.node_port(n) == port)
            .map_or("127.0.0.1", |n| self.host(n))
    }

    /// The Sentinels, comma-joined, as `FLASHSALE_REDIS_SENTINELS` wants them.
    pub fn sentinels_env(&self) -> String {
        self.sentinel_addrs().join(",")
    }

    pub fn password(&self) -> &str {
        &self.opts.password
    }

    /// The certificates of a TLS group (`None`: the group is plain TCP).
    pub fn tls_files(&self) -> Option<TlsFiles> {
        self.opts.tls.then(|| TlsFiles::in_dir(&self.dir))
    }

    /// The password of ACL user `name` (`redis-group.sh --acl` wrote them
    /// to `RUN_DIR/users`). Panics when the group has no such user.
    pub fn user_password(&self, name: &str) -> String {
        let path = self.dir.join("users");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("redis_group: read {}: {e}", path.display()));
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("redis_group: no ACL user {name} (started with acl?)"))
            .to_owned()
    }

    /// How to reach this group's nodes as `default` (TLS with the client
    /// certificate when the group has TLS).
    fn access(&self, node: Node) -> Access {
        let tls = self.tls_files().map(|f| f.load());
        let password = match node {
            Node::Redis(_) => Some(Secret::new(self.opts.password.clone())),
            Node::Sentinel(_) if self.opts.acl => Some(Secret::new(self.opts.password.clone())),
            Node::Sentinel(_) => None,
        };
        Access {
            username: None,
            password,
            tls,
        }
    }

    /// A client for `host:port` with `access`, built the way the product
    /// builds its own (for a test's connection as an ACL user, say).
    pub fn client_as(&self, port: u16, access: &Access) -> Client {
        flashsale::redis::client(self.host_of_port(port), port, 0, access)
            .expect("redis_group: client")
    }

    /// [`Access`] of ACL user `name` to this group's data nodes or
    /// Sentinels (TLS as the group has it).
    pub fn user_access(&self, name: &str, sentinel: bool) -> Access {
        let node = if sentinel {
            Node::Sentinel(0)
        } else {
            Node::Redis(0)
        };
        Access {
            username: Some(name.to_owned()),
            password: Some(Secret::new(self.user_password(name))),
            ..self.access(node)
        }
    }

    pub fn master_name(&self) -> &str {
        &self.opts.master_name
    }

    /// Port of data node `redis-i`.
    pub fn redis_port(&self, i: usize) -> u16 {
        assert!(i < 3, "redis_port({i}): index must be 0..3");
        self.base_port + i as u16
    }

    /// Port of `sentinel-i`.
    pub fn sentinel_port(&self, i: usize) -> u16 {
        assert!(i < 3, "sentinel_port({i}): index must be 0..3");
        self.base_port + 10 + i as u16
    }

    fn node_port(&self, node: Node) -> u16 {
        match node {
            Node::Redis(i) => self.redis_port(i),
            Node::Sentinel(i) => self.sentinel_port(i),
        }
    }

    /// NODE's config file (Sentinel rewrites its own).
    pub fn conf_path(&self, node: Node) -> PathBuf {
        self.dir
            .join(node.dir_name())
            .join(format!("{}.conf", node.kind()))
    }

    fn pidfile_path(&self, node: Node) -> PathBuf {
        self.dir
            .join(node.dir_name())
            .join(format!("{}.pid", node.kind()))
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, [NodeState; 6]> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if PID is a live (non-zombie) redis process of this group.
    fn pid_is_ours(&self, pid: i32) -> bool {
        let dir = format!("{}/", self.dir.display());
        live_cmdline(pid).is_some_and(|cmd| cmd.contains("redis") && cmd.contains(&dir))
    }

    /// The PID in NODE's pidfile, if it names a live process of this group.
    fn read_pidfile(&self, node: Node) -> Option<i32> {
        let text = std::fs::read_to_string(self.pidfile_path(node)).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        self.pid_is_ours(pid).then_some(pid)
    }

    fn read_all_pidfiles(&mut self) {
        for node in Node::ALL {
            let pid = self.read_pidfile(node);
            self.lock_nodes()[node.slot()].pid = pid;
            if let Some(pid) = pid {
                self.all_pids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(pid);
            }
        }
    }

    /// PID of NODE, `None` if it was killed with [`RedisGroup::kill9`].
    pub fn pid(&self, node: Node) -> Option<i32> {
        self.lock_nodes()[node.slot()].pid
    }

    /// Live and not frozen, as far as this group knows.
    fn is_up(&self, node: Node) -> bool {
        let st = self.lock_nodes()[node.slot()];
        st.pid.is_some() && !st.stopped
    }

    /// SIGKILLs NODE (SIGCONT first if frozen) and waits until it is gone.
    pub fn kill9(&mut self, node: Node) {
        let Some(pid) = self.pid(node) else {
            return;
        };
        if self.pid_is_ours(pid) {
            send_signal("CONT", &[pid]);
            send_signal("KILL", &[pid]);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.pid_is_ours(pid) {
                assert!(
                    Instant::now() < deadline,
                    "redis_group: {node:?} (pid {pid}) still alive 5 s after SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut nodes = self.lock_nodes();
        nodes[node.slot()] = NodeState::default();
    }

    /// Freezes NODE with SIGSTOP (it keeps its sockets but answers nothing).
    pub fn sigstop(&self, node: Node) {
        let pid = self
            .pid(node)
            .unwrap_or_else(|| panic!("redis_group: sigstop({node:?}): node is not running"));
        assert!(
            self.pid_is_ours(pid),
            "redis_group: sigstop({node:?}): pid {pid} is gone"
        );
        send_signal("STOP", &[pid]);
        self.lock_nodes()[node.slot()].stopped = true;
    }

    /// Thaws NODE with SIGCONT.
    pub fn sigcont(&self, node: Node) {
        let pid = self
            .pid(node)
            .unwrap_or_else(|| panic!("redis_group: sigcont({node:?}): node is not running"));
        send_signal("CONT", &[pid]);
        self.lock_nodes()[node.slot()].stopped = false;
    }

    /// Starts NODE again from its config (which Sentinel may have rewritten,
    /// e.g. with a new `replicaof`), waits until it answers PING and records
    /// its new PID. Panics if the node is still running.
    pub async fn restart(&mut self, node: Node) {
        if let Some(pid) = self.pid(node) {
            assert!(
                !self.pid_is_ours(pid),
                "redis_group: restart({node:?}): still running as pid {pid}; kill9 it first"
            );
        }
        let conf = self.conf_path(node);
        let pidfile = self.pidfile_path(node);
        let _ = std::fs::remove_file(&pidfile);
        let bin = match node {
            Node::Redis(_) => "redis-server",
            Node::Sentinel(_) => "redis-sentinel",
        };
        // daemonize yes: the command returns once the server forked.
        let mut cmd = match self.netns(node) {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => tokio::process::Command::new(bin),
        };
        let out = cmd
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("redis_group: cannot run {bin}: {e}"));
        assert!(
            out.status.success(),
            "redis_group: `{bin} {}` failed: {}{}",
            conf.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = self.node_port(node);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = self.read_pidfile(node)
                && self.ping(node, port).await
            {
                self.lock_nodes()[node.slot()] = NodeState {
                    pid: Some(pid),
                    stopped: false,
                };
                self.all_pids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(pid);
                return;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(
                    self.dir
                        .join(node.dir_name())
                        .join(format!("{}.log", node.kind())),
                )
                .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "redis_group: restart({node:?}) did not answer PING within 10 s; log tail:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ping(&self, node: Node, port: u16) -> bool {
        let Some(mut con) = self.try_connect(node, port).await else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                PROBE_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut con)
            )
            .await,
            Ok(Ok(ref s)) if s == "PONG"
        )
    }

    fn client_for(&self, node: Node, port: u16) -> Client {
        self.client_as(port, &self.access(node))
    }

    /// A short-timeout connection for the group's own probes.
    async fn try_connect(&self, node: Node, port: u16) -> Option<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(Some(PROBE_TIMEOUT));
        let client = self.client_for(node, port);
        tokio::time::timeout(
            PROBE_TIMEOUT * 2,
            client.get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        .ok()?
        .ok()
    }

    /// An authenticated connection to the data node on PORT (connect timeout
    /// 2 s, response timeout 10 s, so that e.g. `WAIT` does not time out).
    pub async fn client(&self, port: u16) -> MultiplexedConnection {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.client_for(Node::Redis(0), port)
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "redis_group: cannot connect to {}:{port}: {e}",
                    self.host_of_port(port)
                )
            })
    }

    /// Asks one Sentinel where the master is.
    async fn sentinel_master_port(&self, i: usize) -> Option<u16> {
        let mut con = self
            .try_connect(Node::Sentinel(i), self.sentinel_port(i))
            .await?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.opts.master_name)
            .query_async(&mut con)
            .await
            .ok()?;
        addr.map(|(_, port)| port)
    }

    /// Answers of all Sentinels that are up (and answer).
    async fn sentinel_master_ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for i in 0..3 {
            if self.is_up(Node::Sentinel(i))
                && let Some(p) = self.sentinel_master_port(i).await
            {
                ports.push(p);
            }
        }
        ports
    }

    /// The master port as the Sentinels report it (the majority answer of the
    /// live Sentinels). Polls for up to 10 s if none answers, then panics.
    pub async fn master_port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((port, _)) = majority(&self.sentinel_master_ports().await) {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "redis_group: no Sentinel answered GET-MASTER-ADDR-BY-NAME within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index (0..3) of the data node the Sentinels report as master.
    pub async fn master_index(&self) -> usize {
        let port = self.master_port().await;
        (0..3)
            .find(|&i| self.redis_port(i) == port)
            .unwrap_or_else(|| panic!("redis_group: Sentinels report unknown master port {port}"))
    }

    /// `SENTINEL FAILOVER <name>` on the first live Sentinel that accepts it.
    /// Retries for up to 15 s while Sentinels answer e.g. `-NOGOODSLAVE` or
    /// `-INPROG` (right after a previous failover), then panics.
    pub async fn sentinel_failover(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::from("no Sentinel up");
        loop {
            for i in 0..3 {
                if !self.is_up(Node::Sentinel(i)) {
                    continue;
                }
                let Some(mut con) = self
                    .try_connect(Node::Sentinel(i), self.sentinel_port(i))
                    .await
                else {
                    last = format!("sentinel-{i}: no connection");
                    continue;
                };
                match redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(&self.opts.master_name)
                    .query_async::<String>(&mut con)
                    .await
                {
                    Ok(_) => return,
                    Err(e) => last = format!("sentinel-{i}: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis_group: SENTINEL FAILOVER not accepted within 15 s; last answer: {last}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the Sentinels (a majority of the live ones that answer, at
    /// least 2 if 2 answer) report a master other than OLD_PORT; returns it.
    pub async fn wait_master_change(&self, old_port: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            let answers = self.sentinel_master_ports().await;
            if let Some((port, n)) = majority(&answers)
                && port != old_port
                && n >= answers.len().min(2)
                && n * 2 > answers.len()
            {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "redis_group: master still not changed from port {old_port} after {timeout:?} \
                 (Sentinels answer {answers:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One check of [`RedisGroup::wait_converged`]; `Err` says what is missing.
    async fn converged(&self) -> Result<u16, String> {
        let live_sentinels: Vec<usize> =
            (0..3).filter(|&i| self.is_up(Node::Sentinel(i))).collect();
        if live_sentinels.is_empty() {
            return Err("no Sentinel is up".into());
        }
        let mut master = None;
        for &i in &live_sentinels {
            let mut con = self
                .try_connect(Node::Sentinel(i), self.sentinel_port(i))
                .await
                .ok_or(format!("sentinel-{i} does not answer"))?;
            let fields: HashMap<String, String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&self.opts.master_name)
                .query_async(&mut con)
                .await
                .map_err(|e| format!("sentinel-{i}: SENTINEL MASTER: {e}"))?;
            let flags = fields.get("flags").map(String::as_str).unwrap_or("");
            if flags != "master" {
                return Err(format!("sentinel-{i} sees master flags {flags:?}"));
            }
            let port: u16 = fields
                .get("port")
                .and_then(|p| p.parse().ok())
                .ok_or(format!("sentinel-{i}: no master port"))?;
            match master {
                None => master = Some(port),
                Some(p) if p != port => {
                    return Err(format!("Sentinels disagree: {p} vs {port} (sentinel-{i})"));
                }
                Some(_) => {}
            }
        }
        let master_port = master.ok_or("no master")?;
        let master_idx = (0..3)
            .find(|&i| self.redis_port(i) == master_port)
            .ok_or(format!("unknown master port {master_port}"))?;
        if !self.is_up(Node::Redis(master_idx)) {
            return Err(format!("master redis-{master_idx} is down"));
        }
        let mut con = self
            .try_connect(Node::Redis(master_idx), master_port)
            .await
            .ok_or(format!("master redis-{master_idx} does not answer"))?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut con)
            .await
            .map_err(|e| format!("master INFO: {e}"))?;
        if info_field(&info, "role") != Some("master") {
            return Err(format!("redis-{master_idx} is not (yet) a master"));
        }
        let live_replicas: Vec<usize> = (0..3)
            .filter(|&i| i != master_idx && self.is_up(Node::Redis(i)))
            .collect();
        for &r in &live_replicas {
            let port = self.redis_port(r);
            let mut con = self
                .try_connect(Node::Redis(r), port)
                .await
                .ok_or(format!("replica redis-{r} does not answer"))?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await
                .map_err(|e| format!("redis-{r} INFO: {e}"))?;
            let ok = info_field(&info, "role") == Some("slave")
                && info_field(&info, "master_port") == Some(&master_port.to_string())
                && info_field(&info, "master_link_status") == Some("up");
            if !ok {
                return Err(format!(
                    "redis-{r} is not (yet) a synced replica of {master_port}"
                ));
            }
        }
        let online = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count();
        if online < live_replicas.len() {
            return Err(format!(
                "master has {online} online replicas, expected {}",
                live_replicas.len()
            ));
        }
        Ok(master_port)
    }

    /// Waits until every live Sentinel reports the same master (flags exactly
    /// `master`), that node is a master, and every live data node is its
    /// replica with the link up. Panics with what is missing after TIMEOUT.
    pub async fn wait_converged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.converged().await {
                Ok(_) => return,
                Err(why) => assert!(
                    Instant::now() < deadline,
                    "redis_group: group not converged after {timeout:?}: {why}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RedisGroup {
    fn drop(&mut self) {
        // Everything we ever started plus whatever the pidfiles name now,
        // but only processes whose command line names our dir.
        let mut pids: Vec<i32> = self
            .all_pids
            .lock()
            .map(|v| v.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        for node in Node::ALL {
            if let Some(pid) = self.read_pidfile(node) {
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
