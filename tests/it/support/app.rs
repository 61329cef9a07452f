//! In-process `flashsale serve` instances (port 0) and helpers that drive
//! them over real HTTP, plus the shared Sentinel group.
//!
//! Tests that do not break the group share one ([`shared_group`]) and isolate
//! themselves with a unique key prefix per app; tests that kill nodes start
//! their own [`RedisGroup`]. The shared group is started once on its own
//! thread and runtime; a watchdog process (`redis-group.sh stop` once this
//! test process is gone) stops it by PID whatever way the process ends.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale::config::{
    Access, JwtSettings, RedisSettings, RedisTarget, ReplicaAcks, Secret, ServeSettings,
};
use flashsale::web::Application;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::redis_group::{GroupOptions, Node, RedisGroup};
pub use flashsale_testkit::metrics::metric_value;
pub use flashsale_testkit::orders::unconfirmed_after;
use flashsale_testkit::procs::redis_env;
pub use flashsale_testkit::procs::shipped_failover_wait;
pub use flashsale_testkit::switch::SwitchWatch;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The group shared by every test that does not break it.
pub fn shared_group() -> &'static RedisGroup {
    static GROUP: OnceLock<RedisGroup> = OnceLock::new();
    GROUP.get_or_init(|| {
        start_shared(
            || RedisGroup::start(GroupOptions::default()),
            "redis-group.sh",
            |g| g.dir().to_path_buf(),
        )
    })
}

/// Starts a fixture shared by many tests on a thread and runtime of its
/// own (the tests' runtimes come and go), and a watchdog process that runs
/// `scripts/SCRIPT stop --dir DIR` and removes DIR once this test process
/// is gone, whatever way it ends.
pub fn start_shared<T, F>(
    start: impl FnOnce() -> F + Send + 'static,
    script: &str,
    dir: impl Fn(&T) -> std::path::PathBuf,
) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let fixture = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime for a shared fixture")
            .block_on(start())
    })
    .join()
    .expect("shared fixture start");
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; bash '{root}/scripts/{script}' stop --dir '{dir}'; rm -rf '{dir}'",
        pid = std::process::id(),
        root = env!("CARGO_MANIFEST_DIR"),
        dir = dir(&fixture).display(),
    );
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(watchdog)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("shared fixture watchdog");
    // Not waited for on purpose: it must outlive this process.
    std::mem::forget(child);
    fixture
}

/// A unique key prefix (and sku namespace) per app.
pub fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Clone, Debug)]
pub struct AppOptions {
    pub prefix: Option<String>,
    pub replica_acks: ReplicaAcks,
    pub failover_wait: Duration,
    pub admin: bool,
    pub rate_limit_per_shopper: u32,
    pub rate_limit_per_ip: u32,
    pub max_in_flight: usize,
    pub catalog_cache: Duration,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            prefix: None,
            replica_acks: ReplicaAcks::All,
            failover_wait: Duration::from_secs(5),
            admin: true,
            rate_limit_per_shopper: 0,
            rate_limit_per_ip: 0,
            max_in_flight: 4096,
            catalog_cache: Duration::from_millis(100),
        }
    }
}

/// Serves `app` on a task of its own until the sender is used or dropped.
pub fn serve_in_background(app: Application) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = app
            .run_until(async {
                let _ = rx.await;
            })
            .await;
    });
    (tx, task)
}

pub fn redis_settings(group: &RedisGroup, prefix: &str, opts: &AppOptions) -> RedisSettings {
    redis_settings_for(
        RedisTarget::Sentinels {
            addrs: (0..3)
                .map(|i| {
                    (
                        group.host(Node::Sentinel(i)).to_owned(),
                        group.sentinel_port(i),
                    )
                })
                .collect(),
            master_name: group.master_name().to_owned(),
            access: Access::default(),
        },
        group.password(),
        prefix,
        opts,
    )
}

/// The tests' Redis settings for `target`.
pub fn redis_settings_for(
    target: RedisTarget,
    password: &str,
    prefix: &str,
    opts: &AppOptions,
) -> RedisSettings {
    RedisSettings {
        target,
        access: Access::password(password),
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_millis(1000),
        failover_wait: opts.failover_wait,
        replica_acks: opts.replica_acks,
        wait_timeout: Duration::from_millis(250),
        write_connections: 2,
        poll_interval: Duration::from_millis(500),
    }
}

/// One running app.
pub struct TestApp {
    pub base: String,
    pub prefix: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(group: &RedisGroup, opts: AppOptions) -> TestApp {
        let prefix = opts.prefix.clone().unwrap_or_else(|| unique("t"));
        Self::spawn_with(group, &prefix, opts).await
    }

    pub async fn spawn_with(group: &RedisGroup, prefix: &str, opts: AppOptions) -> TestApp {
        Self::spawn_settings(prefix, serve_settings(group, prefix, &opts)).await
    }

    /// An app with the given settings (see [`serve_settings`]) on key
    /// prefix `prefix`.
    pub async fn spawn_settings(prefix: &str, settings: ServeSettings) -> TestApp {
        let app = Application::build(settings)
            .await
            .unwrap_or_else(|e| panic!("app start: {e}"));
        let base = format!("http://{}", app.addr());
        let (tx, task) = serve_in_background(app);
        TestApp {
            base,
            prefix: prefix.to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving (graceful) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token(&self, user: &str) -> String {
        flashsale::web::auth::mint(&Secret::new(JWT_SECRET), user, 3600).expect("mint")
    }

    /// Creates a sale that opens `start_in` seconds from now (negative:
    /// already open) and lasts `len` seconds.
    pub async fn create_sale(
        &self,
        sku: &str,
        stock: i64,
        limit: i64,
        start_in: i64,
        len: i64,
    ) -> Value {
        let now = time::OffsetDateTime::now_utc();
        let fmt = &time::format_description::well_known::Rfc3339;
        let starts = (now + time::Duration::seconds(start_in))
            .format(fmt)
            .expect("fmt");
        let ends = (now + time::Duration::seconds(start_in + len))
            .format(fmt)
            .expect("fmt");
        let (status, body) = self
            .admin_post(
                "/admin/sales",
                json!({
                    "sku": sku, "name": format!("Product {sku}"), "description": "A test product",
                    "price_cents": 1999, "stock": stock, "starts_at": starts, "ends_at": ends,
                    "per_user_limit": limit
                }),
            )
            .await;
        assert_eq!(status, 201, "create sale {sku}: {body}");
        body
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin post");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn audit(&self, sku: &str) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/admin/sales/{sku}/audit")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("audit");
        assert_eq!(r.status().as_u16(), 200, "audit {sku}");
        r.json().await.expect("audit json")
    }

    /// POSTs a purchase; returns (status, body). Transport errors are status 0.
    pub async fn purchase(
        &self,
        user: &str,
        sku: &str,
        qty: i64,
        key: Option<&str>,
    ) -> (u16, Value) {
        self.purchase_raw(
            &self.token(user),
            sku,
            json!({ "qty": qty }).to_string(),
            key,
        )
        .await
    }

    pub async fn purchase_raw(
        &self,
        token: &str,
        sku: &str,
        body: String,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url(&format!("/api/sales/{sku}/purchase")))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        match req.send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    pub async fn get(&self, path: &str, user: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(u) = user {
            req = req.bearer_auth(self.token(u));
        }
        let r = req.send().await.expect("get");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Every order id in a sale's stream (XRANGE), read from `port`.
pub async fn stream_order_ids(
    group: &RedisGroup,
    port: u16,
    prefix: &str,
    sku: &str,
) -> Vec<String> {
    let mut c = group.client(port).await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:{{{sku}}}:stream"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("xrange");
    entries
        .into_iter()
        .filter_map(|(_, f)| f.into_iter().find(|(k, _)| k == "order_id").map(|(_, v)| v))
        .collect()
}

/// Whether an order record exists on `port`.
pub async fn order_exists(group: &RedisGroup, port: u16, prefix: &str, order_id: &str) -> bool {
    let sku = order_id.rsplit_once('.').map(|(s, _)| s).expect("order id");
    let mut c = group.client(port).await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:{{{sku}}}:order:{order_id}"))
        .query_async(&mut c)
        .await
        .expect("exists");
    n == 1
}

/// `flashsale-worker` against `group` on key prefix `prefix`, with the fast
/// polling the tests use and its output on stderr only; the caller adds its
/// arguments and spawns it.
pub fn worker_command(group: &RedisGroup, prefix: &str) -> tokio::process::Command {
    worker_command_on(|cmd| redis_env(cmd, group, prefix))
}

/// `flashsale-worker` with the Redis variables `env` sets (a Sentinel
/// group's, a cluster's), polling fast, its output on stderr only.
pub fn worker_command_on(
    env: impl FnOnce(&mut tokio::process::Command) -> &mut tokio::process::Command,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale-worker"));
    env(&mut cmd)
        .env("RUST_LOG", "warn")
        .args(["--discover-ms", "200", "--block-ms", "200"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// [`AppOptions`] with the product's own hold instead of the tests' 5 s.
pub fn shipped_app_options() -> AppOptions {
    AppOptions {
        failover_wait: shipped_failover_wait(),
        ..AppOptions::default()
    }
}

/// What one page-script shopper saw: the final answer, and every 503 and
/// dropped connection on the way (each retried with the same key).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub body: Value,
    pub n503: u32,
    pub transport_errors: u32,
    /// Sent and answered instants of the request that got the final answer.
    pub sent: std::time::Instant,
    pub answered: std::time::Instant,
}

/// A purchase the way the page script makes it: one Idempotency-Key, and on
/// 503 or a dropped connection a backoff and a retry (up to 12 tries), each
/// 503 counted — a retried 503 is still a 503 a shopper saw.
pub async fn buy_counting(app: &TestApp, user: &str, sku: &str) -> Outcome {
    let key = format!("k-{user}");
    let (mut n503, mut transport_errors) = (0, 0);
    let mut attempt = 0u32;
    loop {
        let sent = std::time::Instant::now();
        let (status, body) = app.purchase(user, sku, 1, Some(&key)).await;
        let answered = std::time::Instant::now();
        match status {
            503 => n503 += 1,
            0 => transport_errors += 1,
            _ => {}
        }
        attempt += 1;
        if (status != 503 && status != 0) || attempt >= 12 {
            return Outcome {
                status,
                body,
                n503,
                transport_errors,
                sent,
                answered,
            };
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    }
}

/// What a crowd of shoppers saw, checked against the promises: every
/// problem found, so that a failing test says all of what went wrong.
pub struct Crowd {
    pub outcomes: Vec<Outcome>,
}

impl Crowd {
    pub fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for o in &self.outcomes {
            *m.entry(o.status).or_insert(0) += 1;
        }
        m
    }

    pub fn n503(&self) -> u32 {
        self.outcomes.iter().map(|o| o.n503).sum()
    }

    pub fn transport_errors(&self) -> u32 {
        self.outcomes.iter().map(|o| o.transport_errors).sum()
    }

    pub fn promised(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter(|o| o.status == 202 || o.status == 409)
            .filter_map(|o| o.body["order_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// From `switch` to the next 202 answer.
    pub fn resume_after(&self, switch: Instant) -> Option<Duration> {
        self.outcomes
            .iter()
            .filter(|o| o.status == 202 && o.answered >= switch)
            .map(|o| o.answered.saturating_duration_since(switch))
            .min()
    }
}

/// GET /metrics of an app, as text.
pub async fn metrics_text(app: &TestApp) -> String {
    let r = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status().as_u16(), 200, "/metrics");
    r.text().await.expect("metrics text")
}

/// The settings [`TestApp::spawn_with`] serves with: port 0, HS256 with
/// [`JWT_SECRET`], no CORS origins, the development login on.
pub fn serve_settings(group: &RedisGroup, prefix: &str, opts: &AppOptions) -> ServeSettings {
    serve_settings_on(redis_settings(group, prefix, opts), opts)
}

/// [`serve_settings`] on any Redis (a Sentinel group, a cluster).
pub fn serve_settings_on(redis: RedisSettings, opts: &AppOptions) -> ServeSettings {
    ServeSettings {
        redis,
        listen: "127.0.0.1:0".parse().expect("addr"),
        jwt: JwtSettings::hs256(Secret::new(JWT_SECRET)),
        cors_origins: Vec::new(),
        payment_window: std::time::Duration::ZERO,
        payment_token: None,
        admin_token: opts.admin.then(|| Secret::new(ADMIN_TOKEN)),
        rate_limit_per_shopper: opts.rate_limit_per_shopper,
        rate_limit_per_ip: opts.rate_limit_per_ip,
        max_in_flight: opts.max_in_flight,
        max_connections: 10_000,
        max_connections_per_ip: 256,
        trusted_proxies: Default::default(),
        static_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/static").to_owned(),
        catalog_cache: opts.catalog_cache,
        ended_listed: Duration::from_secs(3600),
        dev_login: true,
        cookie_secure: false,
        log_format: Default::default(),
        access_log: false,
    }
}

/// Runs a flashsale binary with only `env` set (and `PATH`) and asserts a
/// configuration error: exit status 78 and one line that names `var`.
/// Returns what it printed.
pub async fn assert_config_error(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
    var: &str,
) -> String {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run the binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(78), "{args:?} {env:?}: {text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line: {text}");
    assert!(lines[0].contains(var), "{args:?}: names {var}: {text}");
    text
}

/// A new empty directory under the system temp dir (removed by its owner).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "flashsale-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
