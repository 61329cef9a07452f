//! The Redis access layer: which node to talk to, and when to stop talking to it.
//!
//! The `redis` crate checks a node's ROLE only when it connects, and pooled or
//! multiplexed connections to a demoted master keep answering `READONLY`
//! (or, on a master cut off from its replicas, `NOREPLICAS`). This module
//! owns the topology instead:
//!
//! - **Master.** [`Redis`] holds the current [`MasterLink`] in an `ArcSwap`:
//!   a few multiplexed connections for Function calls plus an [`Acker`] for
//!   group-committed `WAIT`s. A link is only installed after `ROLE` on a fresh
//!   connection says `master` and the Function library there has the expected
//!   version (loaded with `FUNCTION LOAD REPLACE` when it does not).
//! - **Watcher** (`sentinel.rs`). One task subscribes to `+switch-master`
//!   (and replica up/down events) on every Sentinel and polls them as a
//!   backstop (≤ 1 s). When the Sentinels name another master, or a caller
//!   reports the link stale, it resolves the master again and swaps the link.
//!   The old link is dropped: its connections close as soon as the requests
//!   still holding it let go.
//! - **Stale links.** `READONLY`, `MASTERDOWN`, `NOREPLICAS`, `LOADING`, I/O
//!   errors and timeouts on the master mark the link stale and wake the
//!   watcher; callers then wait (up to `failover_wait`) for the next link
//!   instead of failing, and retry what is safe to retry.
//! - **Replicas** for catalog reads: discovered through the Sentinels, ROLE
//!   checked, refreshed on topology change, used round-robin, with the master
//!   as fallback. A replica never decides whether a unit can be sold.
//! - **Acknowledgement.** With `FLASHSALE_REPLICA_ACKS=all`, the number of
//!   replicas a write must reach is the number the Sentinels consider up
//!   (no `s_down`/`o_down`/`disconnected` flag, and reporting the replica
//!   role), at least one — not the number attached to the master right now
//!   (see CONTRACT.md "Acknowledgement"): during a planned failover the old
//!   master still has one replica attached, and its WAIT must fall short.
//!
//! With `FLASHSALE_REDIS_URL` there are no Sentinels: the one node is the
//! master, links are rebuilt after errors, and reads go to it as well.

mod ack;
pub mod functions;
pub mod keys;
mod sentinel;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo,
    RedisConnectionInfo,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use ack::AckFault;
use ack::{AckConfig, Acker};
pub use keys::Keys;

use crate::config::{RedisSettings, RedisTarget, ReplicaAcks, Secret};

/// How long a candidate master may take to answer ROLE.
pub(crate) const ROLE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// Errors of the access layer. Messages never carry secrets; Redis error
/// text is kept for logs only and never shown to a client.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no Redis master available")]
    NoMaster,
    #[error("the replicas did not acknowledge in time")]
    Shortfall,
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
    #[error("{0}")]
    Discovery(String),
}

impl DbError {
    /// Whether the error means "try again later" (503) rather than a bug (500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::NoMaster | DbError::Shortfall | DbError::Timeout | DbError::Discovery(_) => {
                true
            }
            DbError::Redis(e) => is_failover_error(e),
            DbError::Protocol(_) => false,
        }
    }
}

/// Errors that mean the master we talk to is not (or no longer) a usable
/// master: the link must be replaced.
pub fn is_failover_error(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
    {
        return true;
    }
    matches!(
        e.code(),
        Some("READONLY" | "MASTERDOWN" | "NOREPLICAS" | "LOADING" | "TRYAGAIN")
    )
}

/// Something that can be sent on a connection: a command or a pipeline.
pub trait Query: Sync {
    fn as_query(&self) -> Q<'_>;
}

/// A borrowed command or pipeline.
#[derive(Clone, Copy)]
pub enum Q<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl Q<'_> {
    pub async fn run<T: FromRedisValue>(
        self,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<T> {
        match self {
            Q::Cmd(c) => c.query_async(conn).await,
            Q::Pipe(p) => p.query_async(conn).await,
        }
    }
}

impl Query for redis::Cmd {
    fn as_query(&self) -> Q<'_> {
        Q::Cmd(self)
    }
}

impl Query for redis::Pipeline {
    fn as_query(&self) -> Q<'_> {
        Q::Pipe(self)
    }
}

/// One verified connection set to the master.
pub struct MasterLink {
    pub addr: (String, u16),
    pub epoch: u64,
    conns: Vec<MultiplexedConnection>,
    next: AtomicUsize,
    acker: Option<Acker>,
    stale: Arc<AtomicBool>,
}

impl MasterLink {
    /// A multiplexed connection (round-robin); cloning it is cheap.
    pub fn conn(&self) -> MultiplexedConnection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// Marks the link stale: no more acknowledgements, callers move on.
    pub(crate) fn retire(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// Waits until the replicas hold every write answered on this link before
    /// the call (a no-op when no replica acknowledgement is required).
    pub async fn ack(&self) -> Result<(), AckFault> {
        match &self.acker {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }
}

struct ReplicaLink {
    addr: (String, u16),
    conn: MultiplexedConnection,
}

pub(crate) struct Inner {
    settings: RedisSettings,
    keys: Keys,
    master: ArcSwapOption<MasterLink>,
    master_tx: watch::Sender<u64>,
    replicas: ArcSwap<Vec<ReplicaLink>>,
    replica_next: AtomicUsize,
    required_acks: Arc<AtomicUsize>,
    epoch: AtomicU64,
    wake: Arc<Notify>,
    switches: AtomicU64,
    /// Why the last resolution failed (no secrets), for start-up errors.
    last_error: std::sync::Mutex<Option<String>>,
}

/// The Redis access layer; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl Redis {
    /// Validates the Redis settings of a binary and connects; the error is
    /// one line naming the variable or the failure, without secrets.
    pub async fn from_args(args: &crate::config::RedisArgs) -> Result<Redis, String> {
        let settings = args.settings().map_err(|e| e.to_string())?;
        Redis::connect(settings)
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    /// Resolves the master (and replicas), loads the Function library and
    /// starts the watcher. Fails when no master can be found within the
    /// failover wait (at least 5 s at start-up).
    pub async fn connect(settings: RedisSettings) -> Result<Redis, DbError> {
        let required = match settings.replica_acks {
            ReplicaAcks::All => 1,
            ReplicaAcks::Count(n) => n,
        };
        let (master_tx, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            keys: Keys::new(settings.key_prefix.clone()),
            settings,
            master: ArcSwapOption::empty(),
            master_tx,
            replicas: ArcSwap::from_pointee(Vec::new()),
            replica_next: AtomicUsize::new(0),
            required_acks: Arc::new(AtomicUsize::new(required)),
            epoch: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            switches: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
        });
        tokio::spawn(sentinel::watch(Arc::downgrade(&inner)));
        let redis = Redis { inner };
        let startup_wait = redis
            .inner
            .settings
            .failover_wait
            .max(Duration::from_secs(5));
        if redis.master(Instant::now() + startup_wait).await.is_err() {
            let why = redis
                .inner
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "no answer".into());
            return Err(DbError::Discovery(format!(
                "no Redis master found within {startup_wait:?}: {why}"
            )));
        }
        Ok(redis)
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// How long operations wait for a new master.
    pub fn failover_wait(&self) -> Duration {
        self.inner.settings.failover_wait
    }

    /// Master switches seen by this process.
    pub fn switches(&self) -> u64 {
        self.inner.switches.load(Ordering::Relaxed)
    }

    /// Replicas a write must reach before it is acknowledged right now.
    pub fn required_acks(&self) -> usize {
        self.inner.required_acks.load(Ordering::Relaxed)
    }

    /// The current master link, without waiting.
    pub fn current_master(&self) -> Option<Arc<MasterLink>> {
        self.inner.master.load_full().filter(|l| !l.is_stale())
    }

    /// The current master link, waiting for one (until `deadline`) while a
    /// failover is in progress.
    pub async fn master(&self, deadline: Instant) -> Result<Arc<MasterLink>, DbError> {
        let mut rx = self.inner.master_tx.subscribe();
        loop {
            if let Some(link) = self.current_master() {
                return Ok(link);
            }
            self.inner.wake.notify_one();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(DbError::NoMaster),
            }
        }
    }

    /// Reports an error seen on `link`. Returns true when the error means the
    /// link is stale (it is then marked so and the watcher is woken).
    pub fn report(&self, link: &MasterLink, err: &redis::RedisError) -> bool {
        if is_failover_error(err) {
            if !link.stale.swap(true, Ordering::SeqCst) {
                tracing::warn!(master = %format!("{}:{}", link.addr.0, link.addr.1), error = %err, "master link is stale");
            }
            self.inner.wake.notify_one();
            true
        } else {
            false
        }
    }

    /// Runs an idempotent write on the master, retrying on a new master after
    /// failover errors until the failover wait is spent.
    pub async fn write<T: FromRedisValue + Send, C: Query>(&self, cmd: &C) -> Result<T, DbError> {
        let deadline = Instant::now() + self.failover_wait();
        loop {
            let link = self.master(deadline).await?;
            match cmd.as_query().run::<T>(&mut link.conn()).await {
                Ok(v) => return Ok(v),
                Err(e) if self.report(&link, &e) && Instant::now() < deadline => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Like [`Redis::write`], then waits until the replicas hold the write
    /// (and everything before it). A shortfall is retried while time is left.
    pub async fn write_acked<T: FromRedisValue + Send, C: Query>(
        &self,
        cmd: &C,
    ) -> Result<T, DbError> {
        let deadline = Instant::now() + self.failover_wait();
        loop {
            let link = self.master(deadline).await?;
            let v = match cmd.as_query().run::<T>(&mut link.conn()).await {
                Ok(v) => v,
                Err(e) if self.report(&link, &e) && Instant::now() < deadline => continue,
                Err(e) => return Err(e.into()),
            };
            loop {
                match link.ack().await {
                    Ok(()) => return Ok(v),
                    Err(_) if Instant::now() >= deadline => return Err(DbError::Shortfall),
                    Err(AckFault::Shortfall) if !link.is_stale() => continue,
                    Err(_) => break,
                }
            }
        }
    }

    /// Runs a read on a replica (round-robin), falling back to the master
    /// when no replica answers.
    pub async fn read<T: FromRedisValue + Send, C: Query>(&self, cmd: &C) -> Result<T, DbError> {
        let replicas = self.inner.replicas.load();
        let n = replicas.len();
        if n > 0 {
            let start = self.inner.replica_next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let r = &replicas[(start + i) % n];
                match cmd.as_query().run::<T>(&mut r.conn.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) if is_failover_error(&e) => {
                        tracing::debug!(replica = %format!("{}:{}", r.addr.0, r.addr.1), error = %e, "replica read failed");
                        self.inner.wake.notify_one();
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.read_master(cmd).await
    }

    /// Runs a read on the master (retrying on a new master after failover
    /// errors); for reads that must see the latest acknowledged state.
    pub async fn read_master<T: FromRedisValue + Send, C: Query>(
        &self,
        cmd: &C,
    ) -> Result<T, DbError> {
        self.write(cmd).await
    }

    /// Whether the current master answers PING.
    pub async fn ping_master(&self) -> bool {
        let Some(link) = self.current_master() else {
            return false;
        };
        let mut c = link.conn();
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("PING").query_async::<String>(&mut c)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// A dedicated connection to the current master, for blocking commands
    /// (`XREADGROUP … BLOCK`) that must not share a multiplexed connection.
    pub async fn dedicated_master_connection(
        &self,
        response_timeout: Duration,
    ) -> Result<(Arc<MasterLink>, MultiplexedConnection), DbError> {
        let link = self.master(Instant::now() + self.failover_wait()).await?;
        let conn = connect(
            &link.addr.0,
            link.addr.1,
            self.inner.settings.password.as_ref(),
            self.inner.settings.timeout,
            Some(response_timeout),
        )
        .await?;
        Ok((link, conn))
    }
}

/// The text of a scalar reply (bulk or simple string, or integer).
pub fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Opens one authenticated multiplexed connection.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    password: Option<&Secret>,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let mut settings = RedisConnectionInfo::default();
    if let Some(p) = password {
        settings = settings.set_password(p.expose());
    }
    let info = ConnectionAddr::Tcp(host.to_owned(), port)
        .into_connection_info()?
        .set_redis_settings(settings);
    let client = Client::open(info)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(response_timeout);
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Host and port of a `redis://` URL (the password stays in the URL client).
pub(crate) fn url_host_port(url: &str) -> Result<(String, u16), DbError> {
    let info = url
        .into_connection_info()
        .map_err(|_| DbError::Discovery("FLASHSALE_REDIS_URL is not a valid URL".into()))?;
    match info.addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => Ok((h.clone(), *p)),
        _ => Err(DbError::Discovery(
            "FLASHSALE_REDIS_URL must name a TCP address".into(),
        )),
    }
}

impl Inner {
    fn password(&self) -> Option<&Secret> {
        match &self.settings.target {
            RedisTarget::Url(_) => None,
            RedisTarget::Sentinels { .. } => self.settings.password.as_ref(),
        }
    }

    /// Builds a link to `addr` after checking ROLE and the Function library.
    async fn build_link(&self, host: &str, port: u16) -> Result<MasterLink, DbError> {
        let s = &self.settings;
        let mut conns = Vec::with_capacity(s.write_connections);
        let open = || async {
            match &s.target {
                RedisTarget::Url(url) => {
                    let mut info = url.as_str().into_connection_info()?;
                    if let Some(p) = &s.password {
                        let rs = info.redis_settings().clone().set_password(p.expose());
                        info = info.set_redis_settings(rs);
                    }
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(s.timeout))
                        .set_response_timeout(Some(s.timeout + s.wait_timeout));
                    Client::open(info)?
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await
                }
                RedisTarget::Sentinels { .. } => {
                    connect(
                        host,
                        port,
                        self.password(),
                        s.timeout,
                        Some(s.timeout + s.wait_timeout),
                    )
                    .await
                }
            }
        };
        // A frozen or unreachable node must not hold up the watcher.
        let check = async {
            let mut c = open().await?;
            let r = sentinel::role(&mut c).await?;
            Ok::<_, redis::RedisError>((c, r))
        };
        let (mut first, role_name) = tokio::time::timeout(s.timeout.min(ROLE_CHECK_TIMEOUT), check)
            .await
            .map_err(|_| DbError::Timeout)??;
        if role_name != "master" {
            return Err(DbError::Discovery(format!(
                "{host}:{port} is not a master (ROLE says {role_name:?})"
            )));
        }
        functions::ensure_loaded(&mut first).await?;
        conns.push(first);
        for _ in 1..s.write_connections {
            conns.push(open().await?);
        }
        let stale = Arc::new(AtomicBool::new(false));
        let acker = if matches!(s.replica_acks, ReplicaAcks::Count(0)) {
            None
        } else {
            let wake = self.wake.clone();
            let flag = stale.clone();
            let ack_conn = open().await?;
            Some(Acker::spawn(
                ack_conn,
                AckConfig {
                    counter_key: self.keys.ack_counter(),
                    wait_timeout: s.wait_timeout,
                    required: self.required_acks.clone(),
                    retired: stale.clone(),
                    on_link_fault: Arc::new(move || {
                        flag.store(true, Ordering::SeqCst);
                        wake.notify_one();
                    }),
                },
            ))
        };
        Ok(MasterLink {
            addr: (host.to_owned(), port),
            epoch: self.epoch.fetch_add(1, Ordering::SeqCst) + 1,
            conns,
            next: AtomicUsize::new(0),
            acker,
            stale,
        })
    }

    /// Installs a new link (or none) and tells the waiters.
    fn install(&self, link: Option<MasterLink>) {
        let old = self.master.swap(link.map(Arc::new));
        if let Some(old) = old {
            old.stale.store(true, Ordering::SeqCst);
        }
        self.master_tx.send_modify(|e| *e += 1);
    }
}
