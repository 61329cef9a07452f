//! The failover harness: sells a sale through one injected fault, on the
//! Redis and Sentinel settings that deploy/ ships, and checks every run
//! against the contract and against fixed bounds.
//!
//! Each run starts its own Sentinel group (`GroupOptions::default()`: the
//! shipped settings, unless the test kit reports a timing override, which
//! every line then names), its own order ledger (the test kit's throw-away
//! PostgreSQL; `--no-ledger` runs without one, as the matrix was measured
//! before the ledger existed), two `flashsale serve` instances and two
//! `flashsale-worker`s (their own defaults, metrics on a free port,
//! `FLASHSALE_LEDGER_URL` pointing at the ledger), creates
//! a sale, and drives it with thousands of distinct shoppers who behave like
//! the page script: one Idempotency-Key per shopper, backoff and retry on 503
//! or a dropped connection, the other server when one is gone. Every 503 is
//! counted, retried or not. When about a third of the stock is sold it
//! injects one fault, lets the sale finish and the workers drain, then audits
//! from Redis and through the API.
//!
//! A run fails (and the harness exits non-zero) when any of these breaks:
//! - the invariants: no oversell, nobody above the limit, no order id
//!   promised twice, every promised order exists, the audit is consistent;
//! - every order answered 202 or 409 reaches `confirmed` (read from the
//!   master after the workers drain, with a bounded wait);
//! - no answer is 503 when the master switch completed within the hold
//!   (`FLASHSALE_FAILOVER_WAIT_MS`), nor when no data node failed at all
//!   (`kill-worker-server`, `ledger-outage`, `worker-killed-after-commit`);
//!   `kill-replica-sentinel` only reports them;
//! - `planned`: the first 202 answered after the first `+switch-master`
//!   comes within `--resume-bound-ms` of it (unless the sale sold out before);
//! - each server and worker installs at most `--link-installs-bound` Redis
//!   links per switch (`flashsale_redis_link_installs_total`, read from their
//!   metrics before the fault and after the drain; a process that does not
//!   export it counts 0, and the line says so);
//! - with the ledger (after the drain): every promised order is in the
//!   ledger exactly once (no order id twice, no shopper with two orders:
//!   the test kit's `ledger_promises`), and `flashsale audit --sku` with
//!   `FLASHSALE_LEDGER_URL` finds its `ledger` part consistent (Redis and
//!   the ledger hold the same orders, users, quantities and statuses) with
//!   nothing `pending`; the line's `ledger=` says rows, missing, doubled
//!   (ids twice, shoppers twice, the audit's `duplicated`) and differing
//!   (the audit's other totals);
//! - `ledger-outage` (PostgreSQL stopped `--outage-s`, 30 s, while the
//!   shoppers arrive slowly enough that about a third of the stock sells
//!   then and a third after): purchases are answered 202 while it is down
//!   (and no 503), the sale's `confirmed` count does not move from 1 s
//!   after the stop to the start and every order answered in that time is
//!   still `queued`, some worker says `flashsale_ledger_up 0`, and 202s
//!   are answered after it is back (unless the sale sold out before);
//! - `worker-killed-after-commit`: worker-0 runs with the worker's fault
//!   hook `FLASHSALE_WORKER_FAULT=exit-after-ledger-commit:N`
//!   (`--fault-commit`, 3; `src/worker/ledger.rs`: it aborts right after
//!   its N-th ledger commit, before that batch's `fs_confirm_batch`; the
//!   header and the scenario's lines name it). It must die by SIGABRT with
//!   entries pending whose orders are all `queued` in Redis and all in the
//!   ledger (`window=`); it is started again (a new consumer name, as a
//!   restart under systemd), and the others take its entries over once
//!   idle (`--claim-idle-ms`, 10 s) — the ledger write again changes
//!   nothing (`ON CONFLICT DO NOTHING`), then Redis confirms them.
//!
//! One summary line per run, ending in `result=ok` or `result=FAIL: <reasons>`,
//! and a matrix per scenario at the end.
//!
//! ```text
//! cargo run --release -p flashsale-loadtest --bin failover -- \
//!     --scenario all --runs 20
//! cargo run --release -p flashsale-loadtest --bin failover -- \
//!     --scenario kill-master --runs 5 --no-ledger
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use flashsale::config::Secret;
use flashsale::ledger::{Ledger, LedgerSettings};
use flashsale::redis::Keys;
use flashsale_loadtest::bench::cpu_seconds;
use flashsale_loadtest::redis_group::{GroupOptions, Node, RedisGroup};
use flashsale_testkit::metrics::counter_sum;
use flashsale_testkit::metrics::metric_value;
use flashsale_testkit::orders::{
    ledger_promises, order_statuses, reached_confirmed, unconfirmed_after,
};
use flashsale_testkit::postgres::Postgres;
use flashsale_testkit::procs::redis_env;
use flashsale_testkit::switch::SwitchWatch;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// kill -9 of the master process.
    KillMaster,
    /// SIGSTOP of the master for 8 s, then SIGCONT.
    StopMaster,
    /// SENTINEL FAILOVER (planned switch; the old master stays alive).
    Planned,
    /// kill -9 of one replica, then of one Sentinel.
    KillReplicaSentinel,
    /// kill -9 of a worker and of one server instance.
    KillWorkerServer,
    /// kill -9 of the master, then restart it once the switch is done.
    RestartOldMaster,
    /// PostgreSQL (the order ledger) stopped for --outage-s mid-sale, then
    /// started again; the sale goes on throughout (needs the ledger).
    LedgerOutage,
    /// A worker dies (abort) between its ledger commit and the Redis
    /// confirmation of that batch, through the worker's fault hook
    /// FLASHSALE_WORKER_FAULT; it is restarted (needs the ledger).
    WorkerKilledAfterCommit,
    /// Every scenario above, in turn.
    All,
}

const ALL: [Scenario; 8] = [
    Scenario::KillMaster,
    Scenario::StopMaster,
    Scenario::Planned,
    Scenario::KillReplicaSentinel,
    Scenario::KillWorkerServer,
    Scenario::RestartOldMaster,
    Scenario::LedgerOutage,
    Scenario::WorkerKilledAfterCommit,
];

impl Scenario {
    /// Whether the fault makes the Sentinels switch masters.
    fn switches(self) -> bool {
        matches!(
            self,
            Scenario::KillMaster
                | Scenario::StopMaster
                | Scenario::Planned
                | Scenario::RestartOldMaster
        )
    }

    /// Whether the fault is the ledger's or needs it.
    fn needs_ledger(self) -> bool {
        matches!(
            self,
            Scenario::LedgerOutage | Scenario::WorkerKilledAfterCommit
        )
    }

    /// Whether no Redis data node fails: then no purchase may be answered 503.
    fn redis_untouched(self) -> bool {
        matches!(
            self,
            Scenario::KillWorkerServer | Scenario::LedgerOutage | Scenario::WorkerKilledAfterCommit
        )
    }
}

#[derive(Parser, Debug)]
#[command(
    about = "Sell through an injected fault and check the invariants and the failover bounds",
    long_about = "Sell through an injected fault and check the invariants and the failover bounds.\n\n\
        Runs on the Redis and Sentinel settings deploy/ ships (the test kit's default group); \
        a timing override, if the kit reports one, is named in every line. A run fails on: \
        an invariant violation; a 202/409 order that does not reach `confirmed`; any 503 when \
        the switch completed within the hold (FLASHSALE_FAILOVER_WAIT_MS) or no data node \
        failed; in `planned`, a first 202 later than --resume-bound-ms after `+switch-master`; \
        more than --link-installs-bound Redis link installs per process per switch; with the \
        order ledger (on unless --no-ledger: a throw-away PostgreSQL, the workers' \
        FLASHSALE_LEDGER_URL), a promised order missing from the ledger or in it twice, or any \
        difference `flashsale audit` finds between the ledger and Redis; in `ledger-outage`, an \
        order confirmed while PostgreSQL is down or no purchase answered meanwhile; in \
        `worker-killed-after-commit`, a worker that did not die between a ledger commit and its \
        confirmation (its pending orders queued in Redis and already in the ledger)."
)]
struct Args {
    /// Scenarios to run (repeatable).
    #[arg(long, value_enum, required = true)]
    scenario: Vec<Scenario>,
    /// Runs per scenario.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Units in the sale.
    #[arg(long, default_value_t = 1500)]
    stock: i64,
    /// Distinct shoppers.
    #[arg(long, default_value_t = 4000)]
    shoppers: usize,
    /// Shoppers buying at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// New shoppers per second (spreads the sale so the fault lands mid-sale).
    #[arg(long, default_value_t = 1000)]
    arrival_rate: u64,
    /// Longest time from the first `+switch-master` to the next 202 answer
    /// (`planned` fails beyond it).
    #[arg(long, default_value_t = 1000)]
    resume_bound_ms: u64,
    /// Most Redis link installs per process per master switch.
    #[arg(long, default_value_t = 10)]
    link_installs_bound: u64,
    /// How long the workers get, after the last shopper, to confirm every promise.
    #[arg(long, default_value_t = 45)]
    drain_timeout_s: u64,
    /// Directory of the flashsale binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep each run's logs here (default: a temp dir, removed on success).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Run without the order ledger: no PostgreSQL, the workers confirm in
    /// Redis alone (as the matrix was measured before the ledger existed);
    /// the ledger's own scenarios refuse it.
    #[arg(long)]
    no_ledger: bool,
    /// How long `ledger-outage` keeps PostgreSQL stopped, in seconds.
    #[arg(long, default_value_t = 30)]
    outage_s: u64,
    /// `worker-killed-after-commit`: worker-0 aborts right after this many
    /// of its ledger commits (FLASHSALE_WORKER_FAULT=exit-after-ledger-commit:N).
    #[arg(long, default_value_t = 3)]
    fault_commit: u64,
}

/// The Redis settings of the servers and workers as the product parses them
/// from this environment (which they inherit): the hold is theirs.
#[derive(Parser, Debug)]
struct ProductRedis {
    #[command(flatten)]
    redis: flashsale::config::RedisArgs,
}

const JWT: &str = "harness-jwt-secret-0123456789";
const ADMIN: &str = "harness-admin-token";
const SKU: &str = "harness-sale";
const LINK_INSTALLS: &str = "flashsale_redis_link_installs_total";
/// The worker's fault hook (`src/worker/ledger.rs`): test only, and every
/// line of a run that sets it says so.
const FAULT_VAR: &str = "FLASHSALE_WORKER_FAULT";

/// What the group runs: "shipped settings", or the timing override the
/// test kit reports.
fn settings_label(group: &RedisGroup) -> String {
    match group.timing_override() {
        None => "shipped settings".to_owned(),
        Some(o) => format!("TIMING OVERRIDE {o}"),
    }
}

/// A child process that dies with the harness.
struct Proc {
    child: Child,
    name: String,
    /// Where its Prometheus metrics are served.
    metrics_url: String,
    /// Started again by the harness after its fault (its counters start
    /// over).
    restarted: bool,
}

impl Proc {
    fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }
    fn kill9(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Cluster {
    group: RedisGroup,
    /// The order ledger (`None`: --no-ledger).
    pg: Option<Postgres>,
    servers: Vec<(String, Proc)>,
    workers: Vec<Proc>,
    bin_dir: PathBuf,
    logs: PathBuf,
    /// PIDs of the servers and workers this run started, one a line, for
    /// the watchdog (a restarted worker is added).
    pid_file: PathBuf,
    watchdog: std::process::Child,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A normal end: the group's and PostgreSQL's own Drop and
        // kill_on_drop clean up.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// What every server and worker of a run is given.
fn service_env(c: &mut Command, group: &RedisGroup) {
    redis_env(c, group, "fs")
        .env("FLASHSALE_JWT_SECRET", JWT)
        .env("FLASHSALE_ADMIN_TOKEN", ADMIN)
        .env("FLASHSALE_RATE_LIMIT_PER_SHOPPER", "0")
        .env("FLASHSALE_RATE_LIMIT_PER_IP", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
}

impl Cluster {
    /// `fault`: the worker fault hook's value for worker-0, if any.
    async fn start(bin_dir: &Path, logs: &Path, ledger: bool, fault: Option<&str>) -> Cluster {
        let group = RedisGroup::start(GroupOptions::default()).await;
        std::fs::create_dir_all(logs).expect("log dir");
        let pg = if ledger {
            Some(Postgres::init().await)
        } else {
            None
        };
        let mut servers = Vec::new();
        for i in 0..2 {
            let port = free_port();
            let log = std::fs::File::create(logs.join(format!("serve-{i}.log"))).expect("log");
            let mut c = Command::new(bin_dir.join("flashsale"));
            service_env(&mut c, &group);
            c.arg("serve")
                .env("FLASHSALE_LISTEN", format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            let child = c.spawn().expect("spawn flashsale serve");
            let base = format!("http://127.0.0.1:{port}");
            servers.push((
                base.clone(),
                Proc {
                    child,
                    name: format!("serve-{i}"),
                    metrics_url: format!("{base}/metrics"),
                    restarted: false,
                },
            ));
        }
        let pid_file = logs.join("pids");
        // If the harness itself is killed, Drop never runs: a watchdog stops
        // what this run started, by PID, once the harness is gone.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-group.sh");
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; for p in $(cat '{pids}' 2>/dev/null); do grep -qs flashsale /proc/$p/cmdline && kill -9 $p; done; bash '{script}' stop --dir '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
            me = std::process::id(),
            pids = pid_file.display(),
            script = script.display(),
            dir = group.dir().display(),
        );
        let watchdog = std::process::Command::new("sh")
            .arg("-c")
            .arg(watchdog)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the watchdog");
        let mut cluster = Cluster {
            group,
            pg,
            servers,
            workers: Vec::new(),
            bin_dir: bin_dir.to_owned(),
            logs: logs.to_owned(),
            pid_file,
            watchdog,
        };
        for (_, p) in &cluster.servers {
            cluster.note_pid(p);
        }
        for i in 0..2 {
            let w = cluster.spawn_worker(i, if i == 0 { fault } else { None });
            cluster.workers.push(w);
        }
        let http = reqwest::Client::new();
        for (base, p) in &cluster.servers {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                    && r.status().is_success()
                {
                    break;
                }
                assert!(Instant::now() < deadline, "{} did not become ready", p.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for w in &cluster.workers {
            wait_metrics(&http, w).await;
        }
        cluster
    }

    /// Adds a process to the watchdog's list.
    fn note_pid(&self, p: &Proc) {
        use std::io::Write;
        if let Some(pid) = p.pid()
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.pid_file)
        {
            let _ = writeln!(f, "{pid}");
        }
    }

    /// Starts `flashsale-worker` number `i` (its own defaults, metrics on a
    /// free port, the ledger when there is one; `fault`: the value of the
    /// worker's fault hook). Its log is appended to, so a restart keeps
    /// what the first one wrote.
    fn spawn_worker(&self, i: usize, fault: Option<&str>) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("worker-{i}.log")))
            .expect("log");
        let port = free_port();
        let mut c = Command::new(self.bin_dir.join("flashsale-worker"));
        service_env(&mut c, &self.group);
        if let Some(pg) = &self.pg {
            c.env("FLASHSALE_LEDGER_URL", pg.url());
        }
        if let Some(f) = fault {
            c.env(FAULT_VAR, f);
        }
        c.args(["--metrics", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let p = Proc {
            child: c.spawn().expect("spawn flashsale-worker"),
            name: format!("worker-{i}"),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            restarted: false,
        };
        self.note_pid(&p);
        p
    }

    fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.servers
            .iter()
            .map(|(_, p)| p)
            .chain(self.workers.iter())
    }
}

/// Waits until a worker serves its metrics (it is connected and running).
async fn wait_metrics(http: &reqwest::Client, w: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(&w.metrics_url).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{} does not serve its metrics",
            w.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One process's link-install counter: `Err` when its metrics cannot be read
/// (the process is gone), `Ok(None)` when it does not export the counter.
async fn link_installs(http: &reqwest::Client, p: &Proc) -> Result<Option<u64>, ()> {
    let r = http
        .get(&p.metrics_url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|_| ())?;
    let text = r.text().await.map_err(|_| ())?;
    Ok(counter_sum(&text, LINK_INSTALLS).map(|v| v as u64))
}

/// What the shoppers saw.
#[derive(Default)]
struct Observed {
    /// shopper → (final status, order id)
    finals: HashMap<usize, (u16, Option<String>)>,
    requests: u64,
    n503: u64,
    transport_errors: u64,
    /// First failure (503 or transport) after the fault, and first success after that.
    first_failure: Option<Instant>,
    first_success_after_failure: Option<Instant>,
    failed_shoppers: u64,
    /// Every 202 answered, when, with its order id.
    answered_202: Vec<(Instant, String)>,
}

struct Shared {
    servers: Vec<String>,
    http: reqwest::Client,
    tokens: Vec<String>,
    accepted: AtomicI64,
    fault_at: std::sync::Mutex<Option<Instant>>,
    /// Every distinct `+switch-master`, when it was first heard.
    switches: SwitchWatch,
    first_ok_after_switch: std::sync::Mutex<Option<Instant>>,
    /// When the first 410 `sold_out` was answered.
    first_sold_out: std::sync::Mutex<Option<Instant>>,
    observed: Mutex<Observed>,
    dead_server: AtomicU64,
    /// New shoppers per second now (a scenario may slow the sale down).
    pace: AtomicU64,
}

impl Shared {
    fn first_switch(&self) -> Option<Instant> {
        self.switches.first()
    }
}

fn mint(user: &str) -> String {
    flashsale::web::auth::mint(&flashsale::config::Secret::new(JWT), user, 3600).expect("mint")
}

async fn shopper(shared: Arc<Shared>, i: usize) {
    let key = format!("h-{i}-{}", uuid::Uuid::new_v4().simple());
    let mut server = i % shared.servers.len();
    let mut attempt = 0u32;
    loop {
        if shared.dead_server.load(Ordering::SeqCst) == server as u64 + 1 {
            server = (server + 1) % shared.servers.len();
        }
        let url = format!("{}/api/sales/{SKU}/purchase", shared.servers[server]);
        let sent = Instant::now();
        let r = shared
            .http
            .post(&url)
            .bearer_auth(&shared.tokens[i])
            .header("idempotency-key", &key)
            .json(&json!({"qty": 1}))
            .send()
            .await;
        let (status, body) = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        };
        let done = Instant::now();
        {
            let mut o = shared.observed.lock().await;
            o.requests += 1;
            let fault = *shared.fault_at.lock().expect("lock");
            match status {
                503 | 0 => {
                    if status == 503 {
                        o.n503 += 1;
                    } else {
                        o.transport_errors += 1;
                    }
                    if fault.is_some_and(|f| sent >= f) && o.first_failure.is_none() {
                        o.first_failure = Some(done);
                    }
                }
                202 if o.first_failure.is_some() && o.first_success_after_failure.is_none() => {
                    o.first_success_after_failure = Some(done);
                }
                _ => {}
            }
        }
        if status == 202 {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            if let Some(sw) = shared.first_switch()
                && done >= sw
            {
                let mut first = shared.first_ok_after_switch.lock().expect("lock");
                if first.is_none_or(|f| done < f) {
                    *first = Some(done);
                }
            }
        }
        if status == 410 && body["error"] == "sold_out" {
            let mut first = shared.first_sold_out.lock().expect("lock");
            if first.is_none_or(|f| done < f) {
                *first = Some(done);
            }
        }
        if status == 0 || status >= 500 {
            if status == 0 {
                // The server may be gone: use the other one from now on.
                server = (server + 1) % shared.servers.len();
            }
            attempt += 1;
            if attempt <= 12 {
                let backoff = 50u64 * (1 << attempt.min(5));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                continue;
            }
            let mut o = shared.observed.lock().await;
            o.failed_shoppers += 1;
        }
        let id = body["order_id"].as_str().map(str::to_owned);
        let mut o = shared.observed.lock().await;
        if let (202, Some(id)) = (status, &id) {
            o.answered_202.push((done, id.clone()));
        }
        o.finals.insert(i, (status, id));
        return;
    }
}

/// What a fault left for the run's line and checks.
#[derive(Default)]
struct Fault {
    /// Said in the run's line (empty for the Redis faults).
    text: String,
    /// `ledger-outage`: when PostgreSQL answered again.
    ledger_back: Option<Instant>,
}

/// Injects the scenario's fault. Failures of the fault's own checks go to
/// `violations` (the contract broke) or `reasons` (the run did not do what
/// it should); an error means the fault could not be injected.
async fn inject(
    scenario: Scenario,
    cluster: &mut Cluster,
    shared: &Shared,
    args: &Args,
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> Result<Fault, String> {
    let g = &mut cluster.group;
    match scenario {
        Scenario::KillMaster | Scenario::RestartOldMaster => {
            let m = g.master_index().await;
            g.kill9(Node::Redis(m));
        }
        Scenario::StopMaster => {
            let m = g.master_index().await;
            g.sigstop(Node::Redis(m));
            tokio::time::sleep(Duration::from_secs(8)).await;
            g.sigcont(Node::Redis(m));
        }
        Scenario::Planned => g.sentinel_failover().await,
        Scenario::KillReplicaSentinel => {
            let m = g.master_index().await;
            let r = (m + 1) % 3;
            g.kill9(Node::Redis(r));
            tokio::time::sleep(Duration::from_secs(2)).await;
            g.kill9(Node::Sentinel(1));
        }
        Scenario::KillWorkerServer => {
            cluster.workers[0].kill9();
            shared.dead_server.store(1, Ordering::SeqCst);
            cluster.servers[0].1.kill9();
        }
        Scenario::LedgerOutage => {
            return ledger_outage(cluster, shared, args, violations, reasons).await;
        }
        Scenario::WorkerKilledAfterCommit => {
            return worker_killed_after_commit(cluster, shared, args, reasons).await;
        }
        Scenario::All => unreachable!(),
    }
    Ok(Fault::default())
}

/// One field of the sale's hash on the current master (0 when absent).
async fn sale_field(group: &RedisGroup, field: &str) -> Result<i64, String> {
    let mut c = group.client(group.master_port().await).await;
    let v: Option<i64> = redis::cmd("HGET")
        .arg(format!("fs:{{{SKU}}}:sale"))
        .arg(field)
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(v.unwrap_or(0))
}

/// `ledger-outage`: PostgreSQL stopped (a fast shutdown: every connection
/// dropped, the port closed) for `--outage-s`, then started again on the
/// same data and port. While it is down the shoppers arrive slowly enough
/// that about a third of the stock sells then and a third is left for
/// after. Checked: purchases are answered while it is down (the 503 bound
/// of a run where no Redis node fails applies throughout); from 1 s after
/// the stop (a batch committed just before it may still be confirmed) to
/// the start, the sale's `confirmed` count does not move and every order
/// answered 202 in that time is still `queued`; at least one worker says
/// `flashsale_ledger_up 0` meanwhile.
async fn ledger_outage(
    cluster: &mut Cluster,
    shared: &Shared,
    args: &Args,
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> Result<Fault, String> {
    let outage = Duration::from_secs(args.outage_s.max(2));
    let settle = Duration::from_secs(1);
    let slow = (args.stock.max(3) as u64 / 3 / outage.as_secs()).clamp(1, args.arrival_rate.max(1));
    shared.pace.store(slow, Ordering::SeqCst);
    let pg = cluster.pg.as_mut().ok_or("no ledger to stop")?;
    pg.stop().await;
    let down_at = Instant::now();
    tokio::time::sleep(settle).await;
    let confirmed_from = sale_field(&cluster.group, "confirmed").await?;
    tokio::time::sleep_until((down_at + outage / 2).into()).await;
    let mut ups = Vec::new();
    for w in &cluster.workers {
        let up = match shared.http.get(&w.metrics_url).send().await {
            Ok(r) => r
                .text()
                .await
                .ok()
                .and_then(|t| metric_value(&t, "flashsale_ledger_up")),
            Err(_) => None,
        };
        ups.push(up.map_or_else(|| "-".to_owned(), |v| v.to_string()));
    }
    tokio::time::sleep_until((down_at + outage).into()).await;
    let confirmed_to = sale_field(&cluster.group, "confirmed").await?;
    let now = Instant::now();
    let answered: Vec<String> = {
        let o = shared.observed.lock().await;
        o.answered_202
            .iter()
            .filter(|(t, _)| *t >= down_at + settle && *t <= now)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let statuses = order_statuses(&cluster.group, "fs", &answered)
        .await
        .map_err(|e| e.to_string())?;
    let not_queued = statuses
        .iter()
        .filter(|s| s.as_deref() != Some("queued"))
        .count();
    let pg = cluster.pg.as_mut().ok_or("no ledger to start")?;
    pg.start().await;
    let back = Instant::now();
    shared
        .pace
        .store(args.arrival_rate.max(1), Ordering::SeqCst);
    let answered_while_down = shared
        .observed
        .lock()
        .await
        .answered_202
        .iter()
        .filter(|(t, _)| *t >= down_at && *t <= back)
        .count();
    if confirmed_to != confirmed_from {
        violations.push(format!(
            "{} orders confirmed while the ledger was down",
            confirmed_to - confirmed_from
        ));
    }
    if not_queued > 0 {
        violations.push(format!(
            "{not_queued} of the {} orders answered while the ledger was down are not queued",
            answered.len()
        ));
    }
    if answered_while_down == 0 {
        reasons.push("no purchase answered 202 while the ledger was down".into());
    }
    // How long the workers take to confirm what was answered while the
    // ledger was down, once it is back (the sale goes on meanwhile).
    let caught_up = unconfirmed_after(&cluster.group, "fs", &answered, Duration::from_secs(30))
        .await
        .is_empty()
        .then(|| back.elapsed().as_millis());
    if !ups.iter().any(|u| u == "0") {
        reasons.push(format!(
            "no worker said flashsale_ledger_up 0 while the ledger was down ({})",
            ups.join(",")
        ));
    }
    Ok(Fault {
        text: format!(
            "ledger_down_ms={} answered_202_while_down={answered_while_down} confirmed_while_down={} checked_queued={}/{} ledger_up_mid_outage={} confirmed_after_back_ms={}",
            back.duration_since(down_at).as_millis(),
            confirmed_to - confirmed_from,
            answered.len() - not_queued,
            answered.len(),
            ups.join(","),
            caught_up.map_or_else(|| ">30000".to_owned(), |ms| ms.to_string()),
        ),
        ledger_back: Some(back),
    })
}

/// `worker-killed-after-commit`: worker-0 runs with the worker's fault
/// hook (`FLASHSALE_WORKER_FAULT=exit-after-ledger-commit:N`: it aborts
/// right after its N-th ledger commit, before confirming that batch).
/// Waits for its death, then checks that it died in that window: it has
/// entries pending, and each one's order is `queued` in Redis and already
/// in the ledger. Then starts it again, as systemd would (a new consumer
/// name: the entries it held are taken over by whichever worker reclaims
/// them once idle, `--claim-idle-ms`).
async fn worker_killed_after_commit(
    cluster: &mut Cluster,
    shared: &Shared,
    args: &Args,
    reasons: &mut Vec<String>,
) -> Result<Fault, String> {
    use std::os::unix::process::ExitStatusExt;
    let hook = format!("{FAULT_VAR}={}", fault_value(args));
    let pid = cluster.workers[0].pid().ok_or("worker-0 has no pid")?;
    let status = match tokio::time::timeout(
        Duration::from_secs(60),
        cluster.workers[0].child.wait(),
    )
    .await
    {
        Ok(Ok(st)) => st,
        _ => {
            return Err(format!(
                "worker-0 did not die within 60 s with {hook} (fewer commits than that?)"
            ));
        }
    };
    let sold = shared.accepted.load(Ordering::SeqCst);
    // SIGABRT, what std::process::abort() ends a process with.
    if status.signal() != Some(6) {
        reasons.push(format!(
            "worker-0 ended with {status}, not the hook's abort"
        ));
    }
    let (pending, queued, in_ledger) = fault_window(cluster, pid).await?;
    if pending == 0 || queued != pending || in_ledger != pending {
        reasons.push(format!(
            "worker-0 did not die between a ledger commit and its confirmation: {pending} entries pending, {queued} of their orders queued in Redis, {in_ledger} in the ledger"
        ));
    }
    let mut w = cluster.spawn_worker(0, None);
    w.restarted = true;
    cluster.workers[0] = w;
    wait_metrics(&shared.http, &cluster.workers[0]).await;
    Ok(Fault {
        text: format!(
            "fault_hook=\"{hook}\" worker0_exit=\"{status}\" sold_at_death={sold} window=pending:{pending},queued:{queued},in_ledger:{in_ledger} worker0_restarted"
        ),
        ledger_back: None,
    })
}

/// The value of the fault hook worker-0 runs with in
/// `worker-killed-after-commit`.
fn fault_value(args: &Args) -> String {
    format!("exit-after-ledger-commit:{}", args.fault_commit.max(1))
}

/// What a dead worker (by PID) left: its pending entries of the sale's
/// stream, how many of their orders are `queued` in Redis, and how many
/// are in the ledger. Its consumer name is the worker's default,
/// `host-<pid>-<random>`.
async fn fault_window(cluster: &Cluster, pid: i32) -> Result<(usize, usize, usize), String> {
    let e2s = |e: redis::RedisError| e.to_string();
    let keys = Keys::new("fs");
    let stream = keys.stream(SKU);
    let mut c = cluster
        .group
        .client(cluster.group.master_port().await)
        .await;
    let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(flashsale::worker::GROUP)
        .query_async(&mut c)
        .await
        .map_err(e2s)?;
    let mark = format!("-{pid}-");
    let Some(consumer) = consumers.consumers.iter().find(|c| c.name.contains(&mark)) else {
        return Ok((0, 0, 0));
    };
    let p: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(flashsale::worker::GROUP)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(&consumer.name)
        .query_async(&mut c)
        .await
        .map_err(e2s)?;
    if p.ids.is_empty() {
        return Ok((0, 0, 0));
    }
    let mut pipe = redis::pipe();
    for e in &p.ids {
        pipe.cmd("XRANGE").arg(&stream).arg(&e.id).arg(&e.id);
    }
    let entries: Vec<redis::streams::StreamRangeReply> =
        pipe.query_async(&mut c).await.map_err(e2s)?;
    let orders: Vec<String> = entries
        .iter()
        .flat_map(|r| r.ids.iter())
        .filter_map(|e| e.get::<String>("order_id"))
        .collect();
    let statuses = order_statuses(&cluster.group, "fs", &orders)
        .await
        .map_err(e2s)?;
    let queued = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("queued"))
        .count();
    let pg = cluster.pg.as_ref().ok_or("no ledger")?;
    let ledger = connect_ledger(pg).await?;
    let mut in_ledger = 0;
    for id in &orders {
        if ledger.order(id).await.map_err(|e| e.to_string())?.is_some() {
            in_ledger += 1;
        }
    }
    ledger.close().await;
    Ok((p.ids.len(), queued, in_ledger))
}

/// A connection to the run's ledger, as the product makes one.
async fn connect_ledger(pg: &Postgres) -> Result<Ledger, String> {
    let settings = LedgerSettings::parse(&Secret::new(pg.url())).map_err(|e| e.to_string())?;
    Ledger::connect(&settings, "failover harness")
        .await
        .map_err(|e| e.to_string())
}

/// The ledger's side of a run, after the drain: `flashsale audit` with the
/// ledger (its `ledger` part must be consistent, nothing `pending`) and
/// every promised order in exactly one row (the test kit's
/// `ledger_promises`).
struct LedgerAudit {
    text: String,
    missing: u64,
    doubled: u64,
    differing: u64,
}

async fn audit_ledger(
    cluster: &Cluster,
    promised: &[String],
    violations: &mut Vec<String>,
    reasons: &mut Vec<String>,
) -> Option<LedgerAudit> {
    let pg = cluster.pg.as_ref()?;
    let mut c = Command::new(cluster.bin_dir.join("flashsale"));
    service_env(&mut c, &cluster.group);
    c.env("FLASHSALE_LEDGER_URL", pg.url())
        .args(["audit", "--sku", SKU]);
    let (mut differing, mut doubled, mut missing) = (0u64, 0u64, 0u64);
    let mut pending = None;
    let mut problems = Vec::new();
    match c.output().await {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let parsed: Option<Value> = stdout
                .lines()
                .next()
                .and_then(|l| serde_json::from_str(l).ok());
            match parsed.as_ref().map(|v| &v["ledger"]) {
                Some(l) if l.is_object() => {
                    let t = |k: &str| l["totals"][k].as_u64().unwrap_or(0);
                    differing = t("missing_in_ledger")
                        + t("missing_in_redis")
                        + t("status_differs")
                        + t("fields_differ")
                        + t("unreadable");
                    doubled += t("duplicated");
                    pending = l["pending"].as_u64();
                    if l["consistent"] != true {
                        problems.push(format!("flashsale audit: ledger inconsistent: {l}"));
                    }
                }
                _ => problems.push(format!(
                    "flashsale audit printed no ledger part (exit {:?}): {stdout}{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
            if out.status.code() != Some(0) {
                problems.push(format!(
                    "flashsale audit with the ledger exited {:?}",
                    out.status.code()
                ));
            }
        }
        Err(e) => problems.push(format!("flashsale audit did not run: {e}")),
    }
    let mut promises_text = String::from("rows:?");
    match connect_ledger(pg).await {
        Ok(ledger) => {
            match ledger_promises(&ledger, SKU, promised, 1).await {
                Ok(p) => {
                    missing = p.missing_total;
                    doubled += p.doubled();
                    promises_text = format!("rows:{}", p.rows);
                    if p.unpromised > 0 {
                        promises_text.push_str(&format!(",unpromised:{}", p.unpromised));
                    }
                    if !p.exact() {
                        problems.push(format!(
                            "ledger vs promises: {} missing (e.g. {:?}), order ids twice {:?}, shoppers past the limit {:?}",
                            p.missing_total, p.missing, p.doubled_ids, p.over_limit_users
                        ));
                    }
                }
                Err(e) => problems.push(format!("reading the ledger: {e}")),
            }
            ledger.close().await;
        }
        Err(e) => problems.push(format!("connecting to the ledger: {e}")),
    }
    violations.extend(problems);
    if let Some(n) = pending.filter(|n| *n > 0) {
        reasons.push(format!(
            "{n} orders not recorded in the ledger after the drain"
        ));
    }
    Some(LedgerAudit {
        text: format!(
            "ledger={promises_text},missing:{missing},doubled:{doubled},differing:{differing},pending:{}",
            pending.map_or_else(|| "?".to_owned(), |p| p.to_string())
        ),
        missing,
        doubled,
        differing,
    })
}

/// What one run measured; `reasons` is empty when it passed.
struct RunResult {
    scenario: Scenario,
    /// What the group ran ("shipped settings" or the override).
    settings: String,
    line: String,
    /// Invariant violations (oversell, limit, duplicates, missing orders, audit).
    violations: usize,
    unconfirmed: usize,
    n503: u64,
    resume_ms: Option<u128>,
    /// Most link installs of one process per switch (None: no process exported the counter).
    max_link_installs: Option<u64>,
    /// Promised orders missing from the ledger, doubled there, and
    /// differences the audit found (`None`: no ledger).
    ledger: Option<(u64, u64, u64)>,
    reasons: Vec<String>,
}

async fn one_run(
    args: &Args,
    scenario: Scenario,
    run: u32,
    hold: Duration,
    bin_dir: &Path,
    logs: &Path,
) -> RunResult {
    let fault_hook = (scenario == Scenario::WorkerKilledAfterCommit).then(|| fault_value(args));
    let mut cluster = Cluster::start(bin_dir, logs, !args.no_ledger, fault_hook.as_deref()).await;
    let settings = settings_label(&cluster.group);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let admin_url = format!("{}/admin/sales", cluster.servers[0].0);
    let r = http
        .post(&admin_url)
        .bearer_auth(ADMIN)
        .json(
            &json!({"sku": SKU, "name": "Harness sale", "description": "", "price_cents": 100,
            "stock": args.stock, "per_user_limit": 1,
            "starts_at": (now - time::Duration::seconds(1)).format(fmt).expect("fmt"),
            "ends_at": (now + time::Duration::hours(1)).format(fmt).expect("fmt")}),
        )
        .send()
        .await
        .expect("create sale");
    assert_eq!(r.status().as_u16(), 201, "create sale");

    let tokens: Vec<String> = (0..args.shoppers).map(|i| mint(&format!("h{i}"))).collect();
    let shared = Arc::new(Shared {
        servers: cluster.servers.iter().map(|(b, _)| b.clone()).collect(),
        http,
        tokens,
        accepted: AtomicI64::new(0),
        fault_at: std::sync::Mutex::new(None),
        switches: SwitchWatch::start(&cluster.group).await,
        first_ok_after_switch: std::sync::Mutex::new(None),
        first_sold_out: std::sync::Mutex::new(None),
        observed: Mutex::new(Observed::default()),
        dead_server: AtomicU64::new(0),
        pace: AtomicU64::new(args.arrival_rate.max(1)),
    });

    let sem = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let driver = {
        let shared = shared.clone();
        let sem = sem.clone();
        let n = args.shoppers;
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(n);
            let mut due = started;
            for i in 0..n {
                if i > 0 {
                    let rate = shared.pace.load(Ordering::SeqCst).max(1);
                    due += Duration::from_micros(1_000_000 / rate);
                }
                tokio::time::sleep_until(due.into()).await;
                let permit = sem.clone().acquire_owned().await.expect("semaphore");
                let shared = shared.clone();
                tasks.push(tokio::spawn(async move {
                    shopper(shared, i).await;
                    drop(permit);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    // Fault once about a third of the stock is sold (a worker with the
    // fault hook chooses its own moment: it is watched from the start).
    let third = args.stock / 3;
    let fault_deadline = Instant::now() + Duration::from_secs(60);
    while scenario != Scenario::WorkerKilledAfterCommit
        && shared.accepted.load(Ordering::SeqCst) < third
        && Instant::now() < fault_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Link installs so far (start-up), per process.
    let mut installs_before = Vec::new();
    for p in cluster.procs() {
        installs_before.push(link_installs(&shared.http, p).await);
    }
    let fault_at = Instant::now();
    *shared.fault_at.lock().expect("lock") = Some(fault_at);
    let mut violations = Vec::new();
    let mut reasons = Vec::new();
    // CPU of every server and worker from the fault until 1 s after
    // purchases resumed behind the first `+switch-master` (2 s after it
    // when none did, 30 s at most): what following the switch costs.
    let cpu_window = {
        let pids: Vec<(String, u32)> = cluster
            .procs()
            .filter_map(|p| Some((p.name.clone(), p.pid()? as u32)))
            .collect();
        let before: Vec<Option<f64>> = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
        let shared = shared.clone();
        tokio::spawn(async move {
            let give_up = fault_at + Duration::from_secs(30);
            while shared.first_switch().is_none() && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(sw) = shared.first_switch() {
                let resumed_by = sw + Duration::from_secs(20);
                while shared.first_ok_after_switch.lock().expect("lock").is_none()
                    && Instant::now() < resumed_by.min(give_up)
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let until = match *shared.first_ok_after_switch.lock().expect("lock") {
                    Some(ok) => ok + Duration::from_secs(1),
                    None => sw + Duration::from_secs(2),
                };
                tokio::time::sleep_until(until.into()).await;
            }
            let window = fault_at.elapsed();
            let per_proc: Vec<String> = pids
                .iter()
                .zip(before)
                .map(|((name, pid), b)| match (b, cpu_seconds(*pid)) {
                    (Some(b), Some(a)) => format!("{name}:{:.0}", (a - b) * 1000.0),
                    _ => format!("{name}:gone"),
                })
                .collect();
            format!(
                "switch_cpu_ms={} over {:.1}s",
                per_proc.join(","),
                window.as_secs_f64()
            )
        })
    };
    let fault = match inject(
        scenario,
        &mut cluster,
        &shared,
        args,
        &mut violations,
        &mut reasons,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            reasons.push(format!("fault injection failed: {e}"));
            Fault::default()
        }
    };
    let drive_deadline = Duration::from_secs(180);
    if tokio::time::timeout(drive_deadline, driver).await.is_err() {
        reasons.push("shoppers did not finish in time".into());
    }
    if scenario == Scenario::RestartOldMaster {
        // Bring the old master back once the switch is done; it must rejoin as a replica.
        let dead = (0..3).find(|i| cluster.group.pid(Node::Redis(*i)).is_none());
        if let Some(i) = dead {
            cluster.group.restart(Node::Redis(i)).await;
        }
        cluster.group.wait_converged(Duration::from_secs(40)).await;
    }

    // Every promise (202/409) names an order; let the workers confirm them
    // all (bounded), then audit through the API and from Redis.
    let promised: Vec<String> = {
        let o = shared.observed.lock().await;
        o.finals
            .values()
            .filter(|(s, _)| *s == 202 || *s == 409)
            .filter_map(|(_, id)| id.clone())
            .collect()
    };
    let live = cluster.servers[(shared.dead_server.load(Ordering::SeqCst) as usize) % 2]
        .0
        .clone();
    let audit_url = format!("{live}/admin/sales/{SKU}/audit");
    let mut audit = Value::Null;
    let mut statuses: Vec<Option<String>> = Vec::new();
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout_s);
    loop {
        if let Ok(r) = shared.http.get(&audit_url).bearer_auth(ADMIN).send().await
            && r.status().is_success()
        {
            audit = r.json().await.unwrap_or(Value::Null);
        }
        if let Ok(s) = order_statuses(&cluster.group, "fs", &promised).await {
            statuses = s;
        }
        let all_confirmed = statuses.len() == promised.len()
            && statuses.iter().all(|s| reached_confirmed(s.as_deref()));
        let drained = audit["pending"] == 0 && audit["orders"].as_i64().is_some();
        if all_confirmed && drained {
            break;
        }
        if Instant::now() >= drain_deadline {
            if !drained {
                reasons.push(format!(
                    "workers did not drain in {} s: {audit}",
                    args.drain_timeout_s
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Link installs during the fault, per process and switch.
    let switches = shared.switches.all().len() as u64;
    let mut installs = Vec::new();
    let mut max_installs: Option<u64> = None;
    let mut exported = false;
    for (p, before) in cluster.procs().zip(&installs_before) {
        let after = link_installs(&shared.http, p).await;
        let text = match (before, after) {
            // Started again after the fault: every install is the new one's.
            (_, Ok(a)) if p.restarted => format!("{}(restarted)", a.unwrap_or(0)),
            (Ok(b), Ok(a)) => {
                exported |= b.is_some() || a.is_some();
                let delta = a.unwrap_or(0).saturating_sub(b.unwrap_or(0));
                let per_switch = delta.div_ceil(switches.max(1));
                max_installs = Some(max_installs.unwrap_or(0).max(per_switch));
                if per_switch > args.link_installs_bound {
                    reasons.push(format!(
                        "{} installed {delta} Redis links in {switches} switch(es) (bound {} per switch)",
                        p.name, args.link_installs_bound
                    ));
                }
                delta.to_string()
            }
            _ => "gone".to_owned(),
        };
        installs.push(format!("{}:{text}", p.name));
    }
    let cpu_text = cpu_window
        .await
        .unwrap_or_else(|_| "switch_cpu_ms=unknown".into());
    let installs_text = if exported {
        format!(
            "link_installs={} (max {}/switch)",
            installs.join(","),
            max_installs.unwrap_or(0)
        )
    } else {
        format!("link_installs=absent ({LINK_INSTALLS} not exported; counted as 0)")
    };

    // Audit straight from Redis.
    let master_port = cluster.group.master_port().await;
    let mut redis = cluster.group.client(master_port).await;
    let o = shared.observed.lock().await;
    let sale: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("fs:{{{SKU}}}:sale"))
        .query_async::<HashMap<String, String>>(&mut redis)
        .await
        .expect("sale")
        .into_iter()
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();
    let total = sale.get("stock_total").copied().unwrap_or(-1);
    let left = sale.get("stock_left").copied().unwrap_or(-1);
    let sold = sale.get("sold").copied().unwrap_or(-1);
    let orders = sale.get("orders").copied().unwrap_or(-1);
    if !(sold <= total && left + sold == total && left >= 0) {
        violations.push(format!("oversell: total {total} left {left} sold {sold}"));
    }
    let units: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("fs:{{{SKU}}}:units"))
        .query_async(&mut redis)
        .await
        .expect("units");
    let over_limit = units.values().filter(|u| **u > 1).count();
    if over_limit > 0 {
        violations.push(format!("{over_limit} shoppers over the limit"));
    }
    if units.values().sum::<i64>() != sold {
        violations.push(format!(
            "units held {} != sold {sold}",
            units.values().sum::<i64>()
        ));
    }
    let distinct: HashSet<&String> = promised.iter().collect();
    if distinct.len() != promised.len() {
        violations.push("an order id was promised to two shoppers".into());
    }
    let missing = statuses.iter().filter(|s| s.is_none()).count()
        + promised.len().saturating_sub(statuses.len());
    let unconfirmed = promised.len()
        - statuses
            .iter()
            .filter(|s| reached_confirmed(s.as_deref()))
            .count();
    if missing > 0 {
        violations.push(format!("{missing} promised orders missing"));
    }
    if unconfirmed > 0 {
        reasons.push(format!(
            "{unconfirmed} promised orders (202/409) never reached confirmed ({missing} of them missing)"
        ));
    }
    // Orders on record: one per sold unit, each once.
    let mut order_keys = 0i64;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("fs:{{{SKU}}}:order:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .expect("scan");
        order_keys += keys.len() as i64;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if order_keys != orders || orders != sold {
        violations.push(format!(
            "records {order_keys}, orders {orders}, sold {sold} disagree"
        ));
    }
    if audit["consistent"] != true {
        violations.push(format!("API audit inconsistent: {audit}"));
    }
    if scenario == Scenario::RestartOldMaster {
        // Nothing the old master had comes back as a sale.
        let after: i64 = redis::cmd("HGET")
            .arg(format!("fs:{{{SKU}}}:sale"))
            .arg("sold")
            .query_async(&mut redis)
            .await
            .expect("sold");
        if after != sold {
            violations.push(format!(
                "sold changed after the old master rejoined: {sold} -> {after}"
            ));
        }
    }

    // The ledger: every promise in it once, and the same as Redis.
    let ledger = audit_ledger(&cluster, &promised, &mut violations, &mut reasons).await;
    let ledger_text = ledger
        .as_ref()
        .map_or_else(|| "ledger=off".to_owned(), |l| l.text.clone());
    let mut fault_text = fault.text.clone();
    if let Some(back) = fault.ledger_back {
        // The sale goes on once the ledger is back (unless it sold out before).
        let after = o.answered_202.iter().filter(|(t, _)| *t > back).count();
        let sold_out_before = shared
            .first_sold_out
            .lock()
            .expect("lock")
            .is_some_and(|t| t <= back);
        if after == 0 && !sold_out_before {
            reasons.push("no purchase answered 202 after the ledger was back".into());
        }
        fault_text.push_str(&format!(" answered_202_after={after}"));
    }
    if !fault_text.is_empty() {
        fault_text.push(' ');
    }

    // The switch, the 503s and the resume.
    let switch = shared.first_switch();
    let switch_ms = switch.map(|s| s.saturating_duration_since(fault_at).as_millis());
    let resume = match (switch, *shared.first_ok_after_switch.lock().expect("lock")) {
        (Some(sw), Some(ok)) => Some(ok.saturating_duration_since(sw).as_millis()),
        _ => None,
    };
    // No 202 after the switch is no failure when the sale sold out: every
    // unit went before it.
    let sold_out_before_switch =
        resume.is_none() && shared.first_sold_out.lock().expect("lock").is_some();
    if scenario.switches() && switch.is_none() {
        reasons.push("no +switch-master was heard".into());
    }
    let switch_within_hold = switch_ms.is_some_and(|ms| ms <= hold.as_millis());
    let no503_bound = (scenario.switches() && switch_within_hold) || scenario.redis_untouched();
    if no503_bound && o.n503 > 0 {
        reasons.push(format!(
            "{} answers were 503 although {}",
            o.n503,
            if scenario.switches() {
                format!(
                    "the switch completed {} ms after the fault, within the {} ms hold",
                    switch_ms.unwrap_or(0),
                    hold.as_millis()
                )
            } else {
                "no data node failed".to_owned()
            }
        ));
    }
    if scenario == Scenario::Planned {
        match resume {
            Some(ms) if ms > u128::from(args.resume_bound_ms) => reasons.push(format!(
                "the next 202 came {ms} ms after +switch-master (bound {} ms)",
                args.resume_bound_ms
            )),
            None if switch.is_some() && !sold_out_before_switch => reasons
                .push("no 202 after +switch-master although the sale was not sold out".into()),
            _ => {}
        }
    }
    reasons.splice(0..0, violations.iter().cloned());

    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for (s, _) in o.finals.values() {
        *by_status.entry(*s).or_default() += 1;
    }
    let window_ms = match (o.first_failure, o.first_success_after_failure) {
        (Some(f), Some(s)) => s.saturating_duration_since(f).as_millis().to_string(),
        (Some(_), None) => "open".into(),
        _ => "0".into(),
    };
    let opt = |v: Option<u128>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let line = format!(
        "scenario={scenario:?} run={run} settings=\"{settings}\" hold_ms={} sold={sold}/{total} promised={} unconfirmed={unconfirmed} statuses={by_status:?} requests={} n503={} transport_errors={} failed_shoppers={} unavailable_ms={window_ms} switches={switches} switch_after_fault_ms={} resume_after_switch_ms={} {installs_text} {cpu_text} {fault_text}{ledger_text} violations={} result={}",
        hold.as_millis(),
        promised.len(),
        o.requests,
        o.n503,
        o.transport_errors,
        o.failed_shoppers,
        opt(switch_ms),
        match (switch, resume) {
            (Some(_), Some(ms)) => ms.to_string(),
            (Some(_), None) if sold_out_before_switch => "sold-out-before-switch".to_owned(),
            (Some(_), None) => "none".to_owned(),
            (None, _) => "-".to_owned(),
        },
        violations.len(),
        if reasons.is_empty() {
            "ok".to_owned()
        } else {
            format!("FAIL: {}", reasons.join("; "))
        },
    );
    let n503 = o.n503;
    drop(o);
    for (_, p) in &mut cluster.servers {
        p.kill9();
    }
    for w in &mut cluster.workers {
        w.kill9();
    }
    RunResult {
        scenario,
        settings,
        line,
        violations: violations.len(),
        unconfirmed,
        n503,
        resume_ms: resume,
        max_link_installs: exported.then_some(max_installs.unwrap_or(0)),
        ledger: ledger.map(|l| (l.missing, l.doubled, l.differing)),
        reasons,
    }
}

/// The matrix: one row per scenario over all its runs.
fn print_matrix(results: &[RunResult], settings: &str) {
    println!("failover matrix ({settings}):");
    println!(
        "  {:<24} {:>5} {:>7} {:>10} {:>11} {:>6} {:>15} {:>17} {:>24}",
        "scenario",
        "runs",
        "failed",
        "violations",
        "unconfirmed",
        "n503",
        "max_resume_ms",
        "max_link_installs",
        "ledger(miss/doub/diff)"
    );
    let mut by: BTreeMap<Scenario, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        by.entry(r.scenario).or_default().push(r);
    }
    for (scenario, rs) in by {
        let max_resume = rs
            .iter()
            .filter_map(|r| r.resume_ms)
            .max()
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        let max_links = rs
            .iter()
            .filter_map(|r| r.max_link_installs)
            .max()
            .map_or_else(|| "absent".to_owned(), |v| v.to_string());
        let ledger = if rs.iter().all(|r| r.ledger.is_none()) {
            "off".to_owned()
        } else {
            let sum = |f: fn(&(u64, u64, u64)) -> u64| {
                rs.iter()
                    .filter_map(|r| r.ledger.as_ref())
                    .map(f)
                    .sum::<u64>()
            };
            format!("{}/{}/{}", sum(|l| l.0), sum(|l| l.1), sum(|l| l.2))
        };
        println!(
            "  {:<24} {:>5} {:>7} {:>10} {:>11} {:>6} {:>15} {:>17} {:>24}",
            format!("{scenario:?}"),
            rs.len(),
            rs.iter().filter(|r| !r.reasons.is_empty()).count(),
            rs.iter().map(|r| r.violations).sum::<usize>(),
            rs.iter().map(|r| r.unconfirmed).sum::<usize>(),
            rs.iter().map(|r| r.n503).sum::<u64>(),
            max_resume,
            max_links,
            ledger
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("target/release"))
    });
    for b in ["flashsale", "flashsale-worker"] {
        if !bin_dir.join(b).is_file() {
            eprintln!(
                "failover: {} not found; build with `cargo build --workspace --bins` (or pass --bin-dir)",
                bin_dir.join(b).display()
            );
            return ExitCode::FAILURE;
        }
    }
    // The hold the servers run with: their own default unless this
    // environment (which they inherit) sets FLASHSALE_FAILOVER_WAIT_MS.
    let hold = match ProductRedis::try_parse_from(["flashsale"]) {
        Ok(p) => Duration::from_millis(p.redis.failover_wait_ms()),
        Err(e) => {
            eprintln!("failover: the product's Redis settings do not parse here: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut scenarios: Vec<Scenario> = if args.scenario.contains(&Scenario::All) {
        ALL.to_vec()
    } else {
        args.scenario.clone()
    };
    if args.no_ledger {
        let named: Vec<Scenario> = args
            .scenario
            .iter()
            .copied()
            .filter(|s| s.needs_ledger())
            .collect();
        if !named.is_empty() {
            eprintln!("failover: {named:?} need the ledger; drop --no-ledger");
            return ExitCode::from(2);
        }
        scenarios.retain(|s| !s.needs_ledger());
    }
    // What the workers record in: the test kit's PostgreSQL (the newest
    // version Debian installed; the kit panics naming the package when
    // there is none), or nothing.
    let ledger_label = if args.no_ledger {
        "ledger off (--no-ledger: workers confirm in Redis alone)".to_owned()
    } else {
        let bin = flashsale_testkit::postgres::bin_dir();
        let version = bin
            .parent()
            .and_then(Path::file_name)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "ledger on (PostgreSQL {version}, the test kit's; FLASHSALE_LEDGER_URL on every worker)"
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut results: Vec<RunResult> = Vec::new();
    let mut settings: Option<String> = None;
    for scenario in &scenarios {
        for run in 1..=args.runs {
            let logs = match &args.logs {
                Some(l) => l.join(format!("{scenario:?}-{run}")),
                None => std::env::temp_dir().join(format!(
                    "flashsale-failover-{}-{scenario:?}-{run}",
                    std::process::id()
                )),
            };
            let result = rt.block_on(one_run(&args, *scenario, run, hold, &bin_dir, &logs));
            if settings.is_none() {
                // The header, once the first group has said what it runs.
                println!(
                    "failover: settings=\"{}\" {ledger_label} hold_ms={} (FLASHSALE_FAILOVER_WAIT_MS) stock={} shoppers={} arrival_rate={}/s concurrency={} runs={} scenarios={scenarios:?} resume_bound_ms={} link_installs_bound={}{}",
                    result.settings,
                    hold.as_millis(),
                    args.stock,
                    args.shoppers,
                    args.arrival_rate,
                    args.concurrency,
                    args.runs,
                    args.resume_bound_ms,
                    args.link_installs_bound,
                    if scenarios.contains(&Scenario::WorkerKilledAfterCommit) {
                        format!(
                            " outage_s={} FAULT HOOK {FAULT_VAR}={} on worker-0 in worker-killed-after-commit",
                            args.outage_s,
                            fault_value(&args)
                        )
                    } else if scenarios.contains(&Scenario::LedgerOutage) {
                        format!(" outage_s={}", args.outage_s)
                    } else {
                        String::new()
                    },
                );
                settings = Some(result.settings.clone());
            }
            println!("{}", result.line);
            if result.reasons.is_empty() {
                if args.logs.is_none() {
                    let _ = std::fs::remove_dir_all(&logs);
                }
            } else {
                println!("  logs: {}", logs.display());
            }
            results.push(result);
        }
    }
    let failed = results.iter().filter(|r| !r.reasons.is_empty()).count();
    let passed = results.len() - failed;
    print_matrix(&results, settings.as_deref().unwrap_or("-"));
    println!(
        "failover: {passed} passed, {failed} failed ({}; {ledger_label})",
        settings.as_deref().unwrap_or("-")
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
