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
//! - **Stale links.** `READONLY`, I/O errors and timeouts on the master mark
//!   the link stale and wake the watcher; callers then wait (up to
//!   `failover_wait`, the hold) for the next link instead of failing, and
//!   retry what is safe to retry.
//! - **Not writable yet.** `NOREPLICAS`, `LOADING`, `MASTERDOWN` and
//!   `TRYAGAIN` come from a node that is (or is becoming) the master but
//!   cannot take writes yet — a new master before its first replica has
//!   attached. The link is kept, the watcher is asked to check with the
//!   Sentinels, and the caller retries on the same link with jittered
//!   backoff ([`Backoff`]); reinstalling the link would change nothing. A
//!   link to one address is built at most every [`REBUILD_EVERY`], and every
//!   install is counted (`flashsale_redis_link_installs_total`).
//! - **One node per decision.** A read whose answer decides a write runs on
//!   the same link as the write ([`Redis::on_link`]), or both run inside one
//!   Function: after a promotion the old and the new master both take writes
//!   for a moment and both mint stream ids above the same last id, so a
//!   decision made on one must never be applied to the other.
//! - **Replicas** for catalog reads: discovered through the Sentinels, ROLE
//!   checked, refreshed on topology change, used round-robin, with the master
//!   as fallback. A replica never decides whether a unit can be sold.
//! - **Acknowledgement.** With `FLASHSALE_REPLICA_ACKS=all`, the number of
//!   replicas a write must reach is the number the Sentinels consider up
//!   (no `s_down`/`o_down`/`disconnected` flag, and reporting the replica
//!   role), at least one — not the number attached to the master right now
//!   (see docs/API.md, "What a 202 and a 409 promise"): during a planned failover the old
//!   master still has one replica attached, and its WAIT must fall short.
//!
//! With `FLASHSALE_REDIS_URL` there are no Sentinels: the one node is the
//! master, links are rebuilt after errors, and reads go to it as well.

mod ack;
mod error;
pub mod functions;
pub mod keys;
mod link;
mod sentinel;
mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::FromRedisValue;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use ack::AckFault;
pub use error::{Backoff, DbError, REBUILD_EVERY, Verdict, error_code, is_failover_error, verdict};
pub use keys::Keys;
pub use link::{Addr, MasterLink, Q, Query, text};
pub(crate) use link::{connect, url_host_port};

use crate::config::{RedisSettings, ReplicaAcks};

/// How long a candidate master may take to answer ROLE.
pub(crate) const ROLE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

struct ReplicaLink {
    addr: Addr,
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
    /// Master links installed by this process.
    installs: AtomicU64,
    /// When a link to each address was last built (see [`REBUILD_EVERY`]);
    /// touched by the watcher task only.
    last_build: std::sync::Mutex<std::collections::HashMap<Addr, Instant>>,
    /// Why the last resolution failed (no secrets), for start-up errors.
    last_error: std::sync::Mutex<Option<String>>,
}

/// The Redis access layer; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl Redis {
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
            installs: AtomicU64::new(0),
            last_build: std::sync::Mutex::new(std::collections::HashMap::new()),
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

    /// Master links installed by this process (the first one included).
    pub fn link_installs(&self) -> u64 {
        self.inner.installs.load(Ordering::Relaxed)
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

    /// Reports an error seen on `link` and says what it means. A stale link
    /// is marked so; for both stale and not-yet-writable the watcher is woken
    /// to check with the Sentinels.
    pub fn report(&self, link: &MasterLink, err: &redis::RedisError) -> Verdict {
        let v = verdict(err);
        match v {
            Verdict::Stale => {
                if !link.stale.swap(true, Ordering::SeqCst) {
                    tracing::warn!(master = %link.addr, error = %err, "master link is stale");
                }
                self.inner.wake.notify_one();
            }
            Verdict::NotYet => {
                metrics::counter!("flashsale_redis_not_writable_total").increment(1);
                self.inner.wake.notify_one();
            }
            Verdict::Other => {}
        }
        v
    }

    /// Runs `cmd` on the master, retrying until `deadline`: on the next
    /// link after a stale one, on the same link after a pause while the
    /// master is not writable yet.
    async fn run_on_master<T: FromRedisValue + Send, C: Query>(
        &self,
        cmd: &C,
        deadline: Instant,
    ) -> Result<(Arc<MasterLink>, T), DbError> {
        let mut backoff = Backoff::new();
        loop {
            let link = self.master(deadline).await?;
            match cmd.as_query().run::<T>(&mut link.conn()).await {
                Ok(v) => return Ok((link, v)),
                Err(e) => match self.report(&link, &e) {
                    Verdict::Stale if Instant::now() < deadline => continue,
                    Verdict::NotYet if Instant::now() < deadline => backoff.wait(deadline).await,
                    _ => return Err(e.into()),
                },
            }
        }
    }

    /// Runs an idempotent write on the master, retrying (see
    /// [`Redis::run_on_master`]) until the failover wait is spent.
    pub async fn write<T: FromRedisValue + Send, C: Query>(&self, cmd: &C) -> Result<T, DbError> {
        let deadline = Instant::now() + self.failover_wait();
        Ok(self.run_on_master(cmd, deadline).await?.1)
    }

    /// Like [`Redis::write`], then waits until the replicas hold the write
    /// (and everything before it); see [`Redis::write_acked_when`].
    pub async fn write_acked<T: FromRedisValue + Send, C: Query>(
        &self,
        cmd: &C,
    ) -> Result<T, DbError> {
        let deadline = Instant::now() + self.failover_wait();
        self.write_acked_when(cmd, deadline, |_| true).await
    }

    /// Runs a write on the master, then waits until the replicas hold it
    /// (and everything before it). `needs_ack` says, from the reply, whether
    /// it must be acknowledged at all (a refusal that changed nothing need
    /// not). A shortfall is retried while time is left; a retired link runs
    /// the write again on the next one, so it must be idempotent.
    pub async fn write_acked_when<T: FromRedisValue + Send, C: Query>(
        &self,
        cmd: &C,
        deadline: Instant,
        needs_ack: impl Fn(&T) -> bool,
    ) -> Result<T, DbError> {
        'attempt: loop {
            let (link, v) = self.run_on_master::<T, C>(cmd, deadline).await?;
            if !needs_ack(&v) {
                return Ok(v);
            }
            loop {
                match link.ack().await {
                    Ok(()) => return Ok(v),
                    Err(_) if Instant::now() >= deadline => return Err(DbError::Shortfall),
                    Err(AckFault::Shortfall) if !link.is_stale() => continue,
                    Err(_) => continue 'attempt,
                }
            }
        }
    }

    /// Runs `cmd` on exactly `link`'s node, once: no retry, no other node.
    /// For multi-step operations whose later steps depend on what earlier
    /// ones read there (the worker's steps). A retired link is refused.
    pub async fn on_link<T: FromRedisValue + Send, C: Query>(
        &self,
        link: &MasterLink,
        cmd: &C,
    ) -> Result<T, DbError> {
        if link.is_stale() {
            return Err(DbError::LinkChanged);
        }
        match cmd.as_query().run::<T>(&mut link.conn()).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.report(link, &e);
                Err(e.into())
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
                        tracing::debug!(replica = %r.addr, error = %e, "replica read failed");
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

    /// A dedicated connection to `link`'s node, for blocking commands
    /// (`XREADGROUP … BLOCK`) that must not share a multiplexed connection.
    pub async fn dedicated_connection(
        &self,
        link: &MasterLink,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, DbError> {
        if link.is_stale() {
            return Err(DbError::LinkChanged);
        }
        Ok(connect(
            &link.addr.host,
            link.addr.port,
            self.inner.password(),
            self.inner.settings.timeout,
            Some(response_timeout),
        )
        .await?)
    }
}
