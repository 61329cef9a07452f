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
//!   still holding it let go. While no Sentinel answers, a stale link is
//!   followed by `ROLE` of the old master (or of the known replicas) to the
//!   master it now replicates from.
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
//! - **Full.** `OOM` (`maxmemory` reached; the shipped policy is
//!   `noeviction`) comes from the right master: the link is kept, the call
//!   is refused at once ([`DbError::Full`], no retry within the hold —
//!   waiting frees no memory), counted (`flashsale_redis_full_total`) and
//!   logged at most once a second. A refused Function did not run at all.
//!   Writes succeed again as soon as memory is freed.
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
//!
//! **Shards.** Everything above is per [`Shard`]: a Sentinel group or one
//! node is one shard; a Redis Cluster (`FLASHSALE_REDIS_CLUSTER`) has one
//! per primary that owns slots, followed by the cluster watcher
//! (`cluster.rs`) instead of the Sentinel one. Every call is routed by the
//! hash slot of its first key (`slots.rs`; a sale's keys share one slot)
//! to the shard owning it, and then runs exactly as with Sentinels: the
//! same hold, retries, acknowledgement (a `WAIT` on that shard's master
//! counting that shard's replicas) and replica reads. A call that spans
//! sales (`read_each`) is split into one pipeline per shard. `MOVED`,
//! `ASK`, `TRYAGAIN` and `CLUSTERDOWN` mean the slot is moving or its
//! shard is failing over: the watcher is woken and the call retried, as
//! for a master that is not writable yet.

mod ack;
mod cluster;
mod error;
pub mod functions;
pub mod keys;
mod link;
mod sentinel;
mod shard;
pub mod slots;
mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::FromRedisValue;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use ack::AckFault;
pub use error::{Backoff, DbError, REBUILD_EVERY, Verdict, error_code, is_failover_error, verdict};
pub use keys::Keys;
pub use link::{Addr, At, MasterLink, Q, Query, client, install_crypto_provider, text};
pub(crate) use link::{connect, url_host_port};
pub use shard::Shard;

use crate::config::{RedisSettings, RedisTarget, ReplicaAcks};

/// How long a candidate master may take to answer ROLE.
pub(crate) const ROLE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// A slot no shard owns right now.
const UNOWNED: u16 = u16::MAX;

/// The shards and who owns which slot, swapped whole by the watcher.
pub(crate) struct Topology {
    pub(crate) shards: Vec<Arc<Shard>>,
    /// Owner (index into `shards`) of every slot; `None`: the one shard
    /// owns every key (Sentinels, one node).
    pub(crate) slots: Option<Box<[u16]>>,
}

impl Topology {
    /// The shard that runs a call whose first key is `key` (a call without
    /// a key runs on the first shard); `None` while its slot has no owner.
    fn route(&self, key: Option<&[u8]>) -> Option<&Arc<Shard>> {
        self.route_with(|| key)
    }

    /// [`Topology::route`], the key asked for only when there are slots
    /// to look up (with one shard, a call's arguments are never read).
    fn route_with<'k>(&self, key: impl FnOnce() -> Option<&'k [u8]>) -> Option<&Arc<Shard>> {
        let Some(map) = &self.slots else {
            return self.shards.first();
        };
        match key() {
            None => self.shards.first(),
            Some(k) => match map[slots::slot(k) as usize] {
                UNOWNED => None,
                i => self.shards.get(i as usize),
            },
        }
    }
}

pub(crate) struct Inner {
    settings: RedisSettings,
    keys: Keys,
    topology: ArcSwap<Topology>,
    /// Bumped on every link install and topology change; waiters re-route.
    changed: watch::Sender<u64>,
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
    /// Numbers of the shards (see [`Shard::id`]).
    next_shard: AtomicU64,
}

impl Inner {
    /// Replicas required per acknowledgement when the watcher knows no
    /// better: one for `all`.
    fn initial_required(&self) -> usize {
        match self.settings.replica_acks {
            ReplicaAcks::All => 1,
            ReplicaAcks::Count(n) => n,
        }
    }

    pub(crate) fn new_shard(&self) -> Arc<Shard> {
        Arc::new(Shard::new(
            self.next_shard.fetch_add(1, Ordering::Relaxed) + 1,
            self.initial_required(),
        ))
    }

    pub(crate) fn topology(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.topology.load()
    }

    /// Records how a watcher's pass ended (for start-up errors) and says
    /// how long until the next: 100 ms while `missing` (no usable master
    /// somewhere) or after a failure, else the polling period.
    pub(crate) fn after_pass(&self, result: &Result<(), DbError>, missing: bool) -> Duration {
        if let Err(e) = result {
            tracing::debug!(error = %e, "watcher pass failed");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().map(ToString::to_string);
        if missing || result.is_err() {
            Duration::from_millis(100)
        } else {
            self.settings.poll_interval
        }
    }

    /// Installs a new topology and tells the waiters.
    pub(crate) fn set_topology(&self, t: Topology) {
        self.topology.store(Arc::new(t));
        self.changed.send_modify(|e| *e += 1);
    }
}

/// The Redis access layer; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl Redis {
    /// Resolves the master of every shard (and the replicas), loads the
    /// Function library and starts the watcher. Fails when no master can
    /// be found within the failover wait (at least 5 s at start-up).
    pub async fn connect(settings: RedisSettings) -> Result<Redis, DbError> {
        let (changed, _) = watch::channel(0);
        let cluster = matches!(settings.target, RedisTarget::Cluster { .. });
        let inner = Arc::new(Inner {
            keys: Keys::new(settings.key_prefix.clone()),
            settings,
            topology: ArcSwap::from_pointee(Topology {
                shards: Vec::new(),
                slots: None,
            }),
            changed,
            epoch: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            switches: AtomicU64::new(0),
            installs: AtomicU64::new(0),
            last_build: std::sync::Mutex::new(std::collections::HashMap::new()),
            last_error: std::sync::Mutex::new(None),
            next_shard: AtomicU64::new(0),
        });
        if cluster {
            tokio::spawn(cluster::watch(Arc::downgrade(&inner)));
        } else {
            inner.set_topology(Topology {
                shards: vec![inner.new_shard()],
                slots: None,
            });
            tokio::spawn(sentinel::watch(Arc::downgrade(&inner)));
        }
        let redis = Redis { inner };
        let startup_wait = redis
            .inner
            .settings
            .failover_wait
            .max(Duration::from_secs(5));
        if redis
            .all_masters(Instant::now() + startup_wait)
            .await
            .is_err()
        {
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

    /// Waits until there is at least one shard and every shard has a
    /// master link.
    async fn all_masters(&self, deadline: Instant) -> Result<(), DbError> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            let t = self.inner.topology();
            if !t.shards.is_empty() && t.shards.iter().all(|s| s.current().is_some()) {
                return Ok(());
            }
            drop(t);
            self.inner.wake.notify_one();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(DbError::NoMaster),
            }
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// Whether the data lives in a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.settings.target, RedisTarget::Cluster { .. })
    }

    /// How long operations wait for a new master.
    pub fn failover_wait(&self) -> Duration {
        self.inner.settings.failover_wait
    }

    /// Master switches seen by this process.
    pub fn switches(&self) -> u64 {
        self.inner.switches.load(Ordering::Relaxed)
    }

    /// Master links installed by this process (the first ones included).
    pub fn link_installs(&self) -> u64 {
        self.inner.installs.load(Ordering::Relaxed)
    }

    /// Replicas a write must reach before it is acknowledged right now (the
    /// most any shard requires).
    pub fn required_acks(&self) -> usize {
        self.inner
            .topology()
            .shards
            .iter()
            .map(|s| s.required_acks())
            .max()
            .unwrap_or(0)
    }

    /// The shards of the moment.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.inner.topology().shards.clone()
    }

    /// The shard that owns `key` right now (`None` while its slot has no
    /// owner).
    pub fn shard_of(&self, key: &str) -> Option<Arc<Shard>> {
        self.inner.topology().route(Some(key.as_bytes())).cloned()
    }

    /// The master link of the first shard, without waiting (with Sentinels:
    /// the master).
    pub fn current_master(&self) -> Option<Arc<MasterLink>> {
        self.inner
            .topology()
            .shards
            .first()
            .and_then(|s| s.current())
    }

    /// The master link that runs `cmd` right now, without waiting.
    pub fn current_master_for<C: Query>(&self, cmd: &C) -> Option<Arc<MasterLink>> {
        self.inner
            .topology()
            .route_with(|| cmd.route_key())
            .and_then(|s| s.current())
    }

    /// The first shard's master link (with Sentinels: the master), waiting
    /// for one (until `deadline`) while a failover is in progress.
    pub async fn master(&self, deadline: Instant) -> Result<Arc<MasterLink>, DbError> {
        self.wait_link(deadline, |t| t.shards.first().cloned())
            .await
            .map(|(_, l)| l)
    }

    /// The master link of shard `id`, waiting for one while it fails over.
    /// [`DbError::LinkChanged`] once the shard is gone (its slots moved to
    /// others, its nodes left).
    pub async fn shard_master(
        &self,
        id: u64,
        deadline: Instant,
    ) -> Result<Arc<MasterLink>, DbError> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            let shard = self
                .inner
                .topology()
                .shards
                .iter()
                .find(|s| s.id == id)
                .cloned();
            let Some(shard) = shard else {
                return Err(DbError::LinkChanged);
            };
            if let Some(link) = shard.current() {
                return Ok(link);
            }
            self.inner.wake.notify_one();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(DbError::NoMaster),
            }
        }
    }

    /// The master link of the shard `pick` chooses, waiting (until
    /// `deadline`) for a shard and a link while the topology changes.
    async fn wait_link(
        &self,
        deadline: Instant,
        pick: impl Fn(&Topology) -> Option<Arc<Shard>>,
    ) -> Result<(Arc<Shard>, Arc<MasterLink>), DbError> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if let Some(shard) = pick(&self.inner.topology())
                && let Some(link) = shard.current()
            {
                return Ok((shard, link));
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
    /// to check with the Sentinels (or the cluster). A full master is
    /// counted and logged (throttled); its link stays.
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
            Verdict::Full => error::out_of_memory(&link.addr),
            Verdict::Other => {}
        }
        v
    }

    /// Runs `cmd` on the master of the shard that owns its key, retrying
    /// until `deadline`: on the next link after a stale one, after a pause
    /// while the master is not writable yet or the slot is moving.
    async fn run_on_master<T: FromRedisValue + Send, C: Query>(
        &self,
        cmd: &C,
        deadline: Instant,
    ) -> Result<(Arc<Shard>, Arc<MasterLink>, T), DbError> {
        let mut backoff = Backoff::new();
        loop {
            let (shard, link) = self
                .wait_link(deadline, |t| t.route_with(|| cmd.route_key()).cloned())
                .await?;
            match cmd.as_query().run::<T>(&mut link.conn()).await {
                Ok(v) => return Ok((shard, link, v)),
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
        Ok(self.run_on_master(cmd, deadline).await?.2)
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
    ///
    /// When the key's slot has meanwhile moved to another shard (a slot
    /// migration copied the write there), that shard's replicas must hold
    /// it too: the write is acknowledged there as well before it is
    /// promised.
    pub async fn write_acked_when<T: FromRedisValue + Send, C: Query>(
        &self,
        cmd: &C,
        deadline: Instant,
        needs_ack: impl Fn(&T) -> bool,
    ) -> Result<T, DbError> {
        'attempt: loop {
            let (shard, link, v) = self.run_on_master::<T, C>(cmd, deadline).await?;
            if !needs_ack(&v) {
                return Ok(v);
            }
            loop {
                match link.ack().await {
                    Ok(()) => break,
                    Err(AckFault::Full) => {
                        error::out_of_memory(&link.addr);
                        return Err(DbError::Full);
                    }
                    Err(_) if Instant::now() >= deadline => return Err(DbError::Shortfall),
                    Err(AckFault::Shortfall) if !link.is_stale() => continue,
                    Err(_) => continue 'attempt,
                }
            }
            let mut acked = shard.id;
            loop {
                let owner = self
                    .inner
                    .topology()
                    .route_with(|| cmd.route_key())
                    .cloned();
                match owner {
                    Some(o) if o.id == acked => return Ok(v),
                    _ => {}
                }
                let (now_shard, now_link) = self
                    .wait_link(deadline, |t| t.route_with(|| cmd.route_key()).cloned())
                    .await?;
                if now_shard.id == acked {
                    return Ok(v);
                }
                tracing::info!(
                    from = shard.id,
                    to = now_shard.id,
                    "slot moved after a write; acknowledging on its new owner"
                );
                match now_link.ack().await {
                    Ok(()) => acked = now_shard.id,
                    Err(_) if Instant::now() >= deadline => return Err(DbError::Shortfall),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
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

    /// Runs a read on a replica of the shard that owns its key
    /// (round-robin), falling back to the master when no replica answers.
    pub async fn read<T: FromRedisValue + Send, C: Query>(&self, cmd: &C) -> Result<T, DbError> {
        let shard = self
            .inner
            .topology()
            .route_with(|| cmd.route_key())
            .cloned();
        if let Some(shard) = shard {
            let replicas = shard.replicas.load();
            let n = replicas.len();
            if n > 0 {
                let start = shard.replica_next.fetch_add(1, Ordering::Relaxed);
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

    /// Runs commands that may concern different sales (so different slots
    /// and shards): one pipeline per shard, all at once, on replicas
    /// ([`Redis::read`]) or, with `master`, on the masters. The replies
    /// come back in the order of `cmds`.
    pub async fn read_each<T: FromRedisValue + Send>(
        &self,
        cmds: &[redis::Cmd],
        master: bool,
    ) -> Result<Vec<T>, DbError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        // Group by owning shard (an unowned slot goes with the first group:
        // its pipeline then waits, as any call does, for an owner).
        let t = self.inner.topology();
        let mut groups: Vec<(u64, redis::Pipeline, Vec<usize>)> = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let id = t.route_with(|| slots::route_key(c)).map_or(0, |s| s.id);
            match groups.iter_mut().find(|g| g.0 == id) {
                Some(g) => {
                    g.1.add_command(c.clone());
                    g.2.push(i);
                }
                None => {
                    let mut p = redis::pipe();
                    p.add_command(c.clone());
                    groups.push((id, p, vec![i]));
                }
            }
        }
        drop(t);
        let replies =
            futures_util::future::try_join_all(groups.iter().map(|(_, p, _)| async move {
                if master {
                    self.read_master::<Vec<redis::Value>, _>(p).await
                } else {
                    self.read::<Vec<redis::Value>, _>(p).await
                }
            }))
            .await?;
        let mut out: Vec<Option<T>> = (0..cmds.len()).map(|_| None).collect();
        for ((_, _, idx), values) in groups.iter().zip(replies) {
            if values.len() != idx.len() {
                return Err(DbError::Protocol(
                    "pipeline reply of the wrong length".into(),
                ));
            }
            for (&i, v) in idx.iter().zip(values) {
                out[i] =
                    Some(T::from_redis_value(v).map_err(|e| DbError::Protocol(e.to_string()))?);
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.expect("every reply placed"))
            .collect())
    }

    /// Whether every shard's master answers PING.
    pub async fn ping_master(&self) -> bool {
        let shards = self.shards();
        if shards.is_empty() {
            return false;
        }
        let pings = shards.iter().map(|s| async move {
            let Some(link) = s.current() else {
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
        });
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .all(|ok| ok)
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
            self.inner.access(),
            self.inner.settings.timeout,
            Some(response_timeout),
        )
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_go_to_the_shard_owning_their_first_key() {
        let a = Arc::new(Shard::new(1, 1));
        let b = Arc::new(Shard::new(2, 1));
        let one = Topology {
            shards: vec![a.clone()],
            slots: None,
        };
        assert_eq!(one.route(Some(b"fs:{x}:sale")).map(|s| s.id), Some(1));
        assert_eq!(one.route(None).map(|s| s.id), Some(1));

        let mut map = vec![0u16; slots::SLOTS as usize].into_boxed_slice();
        let x = slots::slot(b"x") as usize;
        let y = slots::slot(b"y") as usize;
        map[x] = 1;
        map[y] = UNOWNED;
        let two = Topology {
            shards: vec![a, b],
            slots: Some(map),
        };
        assert_eq!(two.route(Some(b"fs:{x}:sale")).map(|s| s.id), Some(2));
        assert_eq!(two.route(Some(b"fs:{x}:order:x.1")).map(|s| s.id), Some(2));
        assert!(two.route(Some(b"fs:{y}:sale")).is_none(), "no owner: wait");
        assert_eq!(two.route(Some(b"fs:sales")).map(|s| s.id), Some(1));
        assert_eq!(two.route(None).map(|s| s.id), Some(1));
        let mut c = redis::cmd("FCALL");
        c.arg("fs_purchase").arg(1).arg("fs:{x}:sale");
        assert_eq!(two.route_with(|| c.route_key()).map(|s| s.id), Some(2));
    }
}
