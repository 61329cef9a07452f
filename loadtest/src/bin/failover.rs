//! The failover harness: sells a sale through one injected fault and audits
//! the four invariants of CONTRACT.md afterwards.
//!
//! Each run starts its own Sentinel group (`down-after-milliseconds` 1000),
//! two `flashsale serve` instances and two `flashsale-worker`s, creates a
//! sale, and drives it with thousands of distinct shoppers who behave like
//! the page script: one Idempotency-Key per shopper, backoff and retry on 503
//! or a dropped connection, the other server when one is gone. When about a
//! third of the stock is sold it injects one fault, lets the sale finish and
//! the workers drain, then audits from Redis and through the API. It prints
//! one summary line per run and exits non-zero on any violation.
//!
//! ```text
//! cargo run --release -p flashsale-loadtest --bin failover -- \
//!     --scenario all --runs 20
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use flashsale_loadtest::redis_group::{GroupOptions, Node, RedisGroup};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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
    /// Every scenario above, in turn.
    All,
}

const ALL: [Scenario; 6] = [
    Scenario::KillMaster,
    Scenario::StopMaster,
    Scenario::Planned,
    Scenario::KillReplicaSentinel,
    Scenario::KillWorkerServer,
    Scenario::RestartOldMaster,
];

#[derive(Parser, Debug)]
#[command(about = "Sell through an injected fault and audit the invariants")]
struct Args {
    /// Scenarios to run (repeatable).
    #[arg(long, value_enum, required = true)]
    scenario: Vec<Scenario>,
    /// Runs per scenario.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Units in the sale.
    #[arg(long, default_value_t = 2000)]
    stock: i64,
    /// Distinct shoppers.
    #[arg(long, default_value_t = 5000)]
    shoppers: usize,
    /// Shoppers buying at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// New shoppers per second (spreads the sale so the fault lands mid-sale).
    #[arg(long, default_value_t = 1000)]
    arrival_rate: u64,
    /// Directory of the flashsale binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep each run's logs here (default: a temp dir, removed on success).
    #[arg(long)]
    logs: Option<PathBuf>,
}

const JWT: &str = "harness-jwt-secret-0123456789";
const ADMIN: &str = "harness-admin-token";
const SKU: &str = "harness-sale";

/// A child process that dies with the harness.
struct Proc {
    child: Child,
    name: String,
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
    servers: Vec<(String, Proc)>,
    workers: Vec<Proc>,
    watchdog: std::process::Child,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A normal end: the group's own Drop and kill_on_drop clean up.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

impl Cluster {
    async fn start(bin_dir: &Path, logs: &Path) -> Cluster {
        let group = RedisGroup::start(GroupOptions::default()).await;
        std::fs::create_dir_all(logs).expect("log dir");
        let env = |c: &mut Command| {
            c.env("FLASHSALE_REDIS_SENTINELS", group.sentinels_env())
                .env("FLASHSALE_REDIS_PASSWORD", group.password())
                .env("FLASHSALE_REDIS_MASTER_NAME", group.master_name())
                .env("FLASHSALE_JWT_SECRET", JWT)
                .env("FLASHSALE_ADMIN_TOKEN", ADMIN)
                .env("FLASHSALE_RATE_LIMIT_PER_SHOPPER", "0")
                .env("FLASHSALE_RATE_LIMIT_PER_IP", "0")
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .kill_on_drop(true);
        };
        let mut servers = Vec::new();
        for i in 0..2 {
            let port = free_port();
            let log = std::fs::File::create(logs.join(format!("serve-{i}.log"))).expect("log");
            let mut c = Command::new(bin_dir.join("flashsale"));
            env(&mut c);
            c.arg("serve")
                .env("FLASHSALE_LISTEN", format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            let child = c.spawn().expect("spawn flashsale serve");
            servers.push((
                format!("http://127.0.0.1:{port}"),
                Proc {
                    child,
                    name: format!("serve-{i}"),
                },
            ));
        }
        let mut workers = Vec::new();
        for i in 0..2 {
            let log = std::fs::File::create(logs.join(format!("worker-{i}.log"))).expect("log");
            let mut c = Command::new(bin_dir.join("flashsale-worker"));
            env(&mut c);
            c.args(["--claim-idle-ms", "2000", "--discover-ms", "200"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            workers.push(Proc {
                child: c.spawn().expect("spawn flashsale-worker"),
                name: format!("worker-{i}"),
            });
        }
        // If the harness itself is killed, Drop never runs: a watchdog stops
        // what this run started, by PID, once the harness is gone.
        let pids: Vec<String> = servers
            .iter()
            .map(|(_, p)| p)
            .chain(workers.iter())
            .filter_map(Proc::pid)
            .map(|p| p.to_string())
            .collect();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-group.sh");
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; for p in {pids}; do grep -qs flashsale /proc/$p/cmdline && kill -9 $p; done; bash '{script}' stop --dir '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
            me = std::process::id(),
            pids = pids.join(" "),
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
        let http = reqwest::Client::new();
        for (base, p) in &servers {
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
        Cluster {
            group,
            servers,
            workers,
            watchdog,
        }
    }
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
}

struct Shared {
    servers: Vec<String>,
    http: reqwest::Client,
    tokens: Vec<String>,
    accepted: AtomicI64,
    fault_at: std::sync::Mutex<Option<Instant>>,
    switch_at: std::sync::Mutex<Option<Instant>>,
    first_ok_after_switch: std::sync::Mutex<Option<Instant>>,
    observed: Mutex<Observed>,
    dead_server: AtomicU64,
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
            let switch = *shared.switch_at.lock().expect("lock");
            if let Some(sw) = switch
                && sent >= sw
            {
                let mut first = shared.first_ok_after_switch.lock().expect("lock");
                if first.is_none() {
                    *first = Some(done);
                }
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
        shared.observed.lock().await.finals.insert(i, (status, id));
        return;
    }
}

/// Records when the Sentinels announce `+switch-master` (first one heard).
async fn listen_for_switch(
    group_sentinels: Vec<String>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    for addr in group_sentinels {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(client) = redis::Client::open(format!("redis://{addr}")) else {
                return;
            };
            let Ok(mut ps) = client.get_async_pubsub().await else {
                return;
            };
            if ps.subscribe("+switch-master").await.is_err() {
                return;
            }
            let mut stream = ps.into_on_message();
            while !stop.load(Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                    Ok(Some(_)) => {
                        let mut s = shared.switch_at.lock().expect("lock");
                        if s.is_none() {
                            *s = Some(Instant::now());
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
        });
    }
}

async fn inject(scenario: Scenario, cluster: &mut Cluster, shared: &Shared) -> Result<(), String> {
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
        Scenario::All => unreachable!(),
    }
    Ok(())
}

struct RunResult {
    line: String,
    violations: Vec<String>,
}

async fn one_run(
    args: &Args,
    scenario: Scenario,
    run: u32,
    bin_dir: &Path,
    logs: &Path,
) -> RunResult {
    let mut cluster = Cluster::start(bin_dir, logs).await;
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
        switch_at: std::sync::Mutex::new(None),
        first_ok_after_switch: std::sync::Mutex::new(None),
        observed: Mutex::new(Observed::default()),
        dead_server: AtomicU64::new(0),
    });
    let stop_listen = Arc::new(AtomicBool::new(false));
    listen_for_switch(
        cluster.group.sentinel_addrs(),
        shared.clone(),
        stop_listen.clone(),
    )
    .await;

    let sem = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let driver = {
        let shared = shared.clone();
        let sem = sem.clone();
        let rate = args.arrival_rate.max(1);
        let n = args.shoppers;
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                let due = started + Duration::from_micros(i as u64 * 1_000_000 / rate);
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
    // Fault once about a third of the stock is sold.
    let third = args.stock / 3;
    let fault_deadline = Instant::now() + Duration::from_secs(60);
    while shared.accepted.load(Ordering::SeqCst) < third && Instant::now() < fault_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *shared.fault_at.lock().expect("lock") = Some(Instant::now());
    let mut violations = Vec::new();
    if let Err(e) = inject(scenario, &mut cluster, &shared).await {
        violations.push(format!("fault injection failed: {e}"));
    }
    let drive_deadline = Duration::from_secs(180);
    if tokio::time::timeout(drive_deadline, driver).await.is_err() {
        violations.push("shoppers did not finish in time".into());
    }
    stop_listen.store(true, Ordering::SeqCst);
    if scenario == Scenario::RestartOldMaster {
        // Bring the old master back once the switch is done; it must rejoin as a replica.
        let dead = (0..3).find(|i| cluster.group.pid(Node::Redis(*i)).is_none());
        if let Some(i) = dead {
            cluster.group.restart(Node::Redis(i)).await;
        }
        cluster.group.wait_converged(Duration::from_secs(40)).await;
    }

    // Let the workers drain, then audit through the API.
    let live = cluster.servers[(shared.dead_server.load(Ordering::SeqCst) as usize) % 2]
        .0
        .clone();
    let audit_url = format!("{live}/admin/sales/{SKU}/audit");
    let mut audit = Value::Null;
    let drain_deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = shared.http.get(&audit_url).bearer_auth(ADMIN).send().await
            && r.status().is_success()
        {
            audit = r.json().await.unwrap_or(Value::Null);
            if audit["pending"] == 0 && audit["orders"].as_i64().is_some() {
                break;
            }
        }
        if Instant::now() >= drain_deadline {
            violations.push(format!("workers did not drain: {audit}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

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
    // Every promise (202/409) names an order that exists and is confirmed.
    let promised: Vec<&String> = o
        .finals
        .values()
        .filter(|(s, _)| *s == 202 || *s == 409)
        .filter_map(|(_, id)| id.as_ref())
        .collect();
    let distinct: HashSet<&&String> = promised.iter().collect();
    if distinct.len() != promised.len() {
        violations.push("an order id was promised to two shoppers".into());
    }
    let mut pipe = redis::pipe();
    for id in &promised {
        pipe.cmd("HGET")
            .arg(format!("fs:{{{SKU}}}:order:{id}"))
            .arg("status");
    }
    let statuses: Vec<Option<String>> = if promised.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut redis).await.expect("statuses")
    };
    let missing = statuses.iter().filter(|s| s.is_none()).count();
    let unconfirmed = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("queued"))
        .count();
    if missing > 0 {
        violations.push(format!("{missing} promised orders missing"));
    }
    if unconfirmed > 0 {
        violations.push(format!("{unconfirmed} promised orders not confirmed"));
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
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for (s, _) in o.finals.values() {
        *by_status.entry(*s).or_default() += 1;
    }
    let window_ms = match (o.first_failure, o.first_success_after_failure) {
        (Some(f), Some(s)) => s.saturating_duration_since(f).as_millis().to_string(),
        (Some(_), None) => "open".into(),
        _ => "0".into(),
    };
    let switch = *shared.switch_at.lock().expect("lock");
    let resume = match (switch, *shared.first_ok_after_switch.lock().expect("lock")) {
        (Some(sw), Some(ok)) => format!("{}", ok.saturating_duration_since(sw).as_millis()),
        (Some(_), None) => "none".into(),
        (None, _) => "-".into(),
    };
    let line = format!(
        "scenario={scenario:?} run={run} sold={sold}/{total} promised={} statuses={by_status:?} requests={} n503={} transport_errors={} failed_shoppers={} unavailable_ms={window_ms} resume_after_switch_ms={resume} violations={}",
        promised.len(),
        o.requests,
        o.n503,
        o.transport_errors,
        o.failed_shoppers,
        violations.len()
    );
    drop(o);
    for (_, p) in &mut cluster.servers {
        p.kill9();
    }
    for w in &mut cluster.workers {
        w.kill9();
    }
    RunResult { line, violations }
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
    let scenarios: Vec<Scenario> = if args.scenario.contains(&Scenario::All) {
        ALL.to_vec()
    } else {
        args.scenario.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut failed = 0u32;
    let mut passed = 0u32;
    for scenario in scenarios {
        for run in 1..=args.runs {
            let logs = match &args.logs {
                Some(l) => l.join(format!("{scenario:?}-{run}")),
                None => std::env::temp_dir().join(format!(
                    "flashsale-failover-{}-{scenario:?}-{run}",
                    std::process::id()
                )),
            };
            let result = rt.block_on(one_run(&args, scenario, run, &bin_dir, &logs));
            println!("{}", result.line);
            if result.violations.is_empty() {
                passed += 1;
                if args.logs.is_none() {
                    let _ = std::fs::remove_dir_all(&logs);
                }
            } else {
                failed += 1;
                for v in &result.violations {
                    println!("  violation: {v}");
                }
                println!("  logs: {}", logs.display());
            }
        }
    }
    println!("failover: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
