//! The order-stream consumer behind `flashsale-worker`.
//!
//! Design (at-least-once delivery, exactly-once effect):
//! - Every sale has one stream (`P:{sku}:stream`); every worker joins the
//!   consumer group `flashsale` on each (created with `MKSTREAM` when absent,
//!   recreated after `NOGROUP`, e.g. on a promoted replica that missed it) and
//!   finds streams of new sales through the sales index.
//! - A worker reads with `XREADGROUP … BLOCK` on a dedicated connection (never
//!   sleep-polling) at most `--batch` entries at a time: that bounds the
//!   orders it holds. After a read that was not full it waits `--linger-ms`
//!   (10 ms) before the next, so a steady trickle of orders is confirmed in
//!   batches rather than a few per call. A batch's entries are grouped by
//!   stream (one sale each) and confirmed by one `fs_confirm_batch` call per
//!   stream and chunk of at most [`CONFIRM_CHUNK`] entries (so one call
//!   never holds Redis long); the calls go in one pipeline. Each call flips
//!   every matching order `queued → confirmed`, adds the count to the sale's
//!   `confirmed` with one `HINCRBY`, and `XACK`s every entry whose order
//!   exists with one `XACK` — one atomic step, so the master and the
//!   replicas apply a few writes per batch instead of a Function call per
//!   order. It replies 1 / 0 / -1 per entry: confirmed now; already
//!   confirmed (a repeat delivery, acked and counted as a duplicate); order
//!   missing or mismatched (left pending, so it is retried and eventually
//!   dead-lettered).
//! - Entries left pending longer than `--claim-idle-ms` (a dead consumer, or
//!   one that failed) are taken over with `XAUTOCLAIM`, which resumes at the
//!   cursor the previous call returned, so every idle entry is reached in
//!   turn; one delivered `--max-deliveries` times is moved by
//!   `fs_dead_letter` to `P:{sku}:dead` with its reason and acknowledged, so
//!   a poison entry never blocks the stream. `flashsale dead-letters` lists
//!   and replays them.
//! - Processed entries are trimmed by `fs_trim`, one atomic step on one
//!   node: below the oldest entry any group still needs (its oldest pending
//!   entry, or the first it has not read) and never past an entry whose
//!   order is still `queued` there.
//! - The sweep (every `--sweep-ms`): `fs_lost` compares a sale's queued
//!   orders with the live entries carrying them; when some are missing it
//!   scans the sale's orders and `fs_requeue` queues again, once, every
//!   order still `queued` after `--requeue-after-ms` whose entry is gone or
//!   was acknowledged without confirming it (`flashsale_worker_requeued_total`).
//!   Invariant 3 so does not depend on every other path being perfect.
//! - SIGTERM/SIGINT: stop reading, finish and ack the batch in hand, exit 0
//!   (bounded by `--shutdown-timeout-s`); a second signal exits at once —
//!   what this worker held is reclaimed by the others.
//!
//! **The one-node rule.** After a promotion the old master keeps taking
//! writes for a moment, and both masters mint stream ids above the same
//! last id: an entry id read on one names another order on the other. So a
//! step takes one master link and does everything on it — read, confirm,
//! acknowledge, reclaim, dead-letter, trim, sweep ([`Redis::on_link`]); a
//! decision and the write that depends on it are one Function where they
//! must be atomic. When the link is retired midway the step ends with
//! [`DbError::LinkChanged`] and its batch is dropped: the new master still
//! holds those entries (unread, or pending for this consumer) and delivers
//! or hands them over again there. Nothing here may read from one link and
//! write through another, or through a call that picks the master anew.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use redis::Value;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use tokio::sync::Notify;

use crate::config::RedisArgs;
use crate::redis::{DbError, MasterLink, Redis, functions};
use crate::sale::{sku_of_order, valid_sku, valid_user};

/// The consumer group every worker joins.
pub const GROUP: &str = "flashsale";

/// Most entries confirmed by one `fs_confirm_batch` call (the library refuses
/// more), so one call never holds Redis long.
pub const CONFIRM_CHUNK: usize = functions::CONFIRM_BATCH_MAX;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "flashsale-worker",
    version,
    about = "Consumes the flashsale order streams"
)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Consumer name (default: host-pid-random).
    #[arg(long, env = "FLASHSALE_WORKER_NAME")]
    pub consumer: Option<String>,
    /// Most entries read (and held) at once.
    #[arg(long, env = "FLASHSALE_WORKER_BATCH", default_value_t = 128)]
    pub batch: usize,
    /// XREADGROUP BLOCK time in milliseconds.
    #[arg(long, env = "FLASHSALE_WORKER_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
    /// After a read that was not full (the worker has caught up), wait this
    /// many milliseconds before the next, so orders arriving one by one are
    /// confirmed in batches (0: read again at once).
    #[arg(long, env = "FLASHSALE_WORKER_LINGER_MS", default_value_t = 10)]
    pub linger_ms: u64,
    /// Pending entries idle this long are reclaimed from their consumer.
    #[arg(long, env = "FLASHSALE_WORKER_CLAIM_IDLE_MS", default_value_t = 10_000)]
    pub claim_idle_ms: u64,
    /// Deliveries after which an entry is moved to the dead-letter stream.
    #[arg(long, env = "FLASHSALE_WORKER_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: usize,
    /// How often the sweep for queued orders without a live stream entry
    /// runs, in milliseconds (a cheap count per sale; a scan only when
    /// something is missing).
    #[arg(long, env = "FLASHSALE_WORKER_SWEEP_MS", default_value_t = 10_000)]
    pub sweep_ms: u64,
    /// The sweep queues again an order still `queued` this long after its
    /// purchase whose entry is gone, in milliseconds.
    #[arg(
        long,
        env = "FLASHSALE_WORKER_REQUEUE_AFTER_MS",
        default_value_t = 10_000
    )]
    pub requeue_after_ms: u64,
    /// How often the sales index is read for new streams, in milliseconds.
    #[arg(long, env = "FLASHSALE_WORKER_DISCOVER_MS", default_value_t = 1000)]
    pub discover_ms: u64,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9187).
    #[arg(long = "metrics", env = "FLASHSALE_WORKER_METRICS")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Longest graceful shutdown, in seconds.
    #[arg(
        long,
        env = "FLASHSALE_WORKER_SHUTDOWN_TIMEOUT_S",
        default_value_t = 15
    )]
    pub shutdown_timeout_s: u64,
}

/// Counters of one [`Worker::step`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    pub read: usize,
    pub confirmed: usize,
    pub duplicates: usize,
    pub failed: usize,
    pub reclaimed: usize,
    pub dead_lettered: usize,
    /// Orders queued again by the sweep.
    pub requeued: usize,
}

impl StepReport {
    pub fn is_empty(&self) -> bool {
        self.read == 0 && self.reclaimed == 0 && self.dead_lettered == 0 && self.requeued == 0
    }
}

/// Tunables of a worker, without the Redis settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub consumer: String,
    pub batch: usize,
    pub block: Duration,
    pub linger: Duration,
    pub claim_idle: Duration,
    pub max_deliveries: usize,
    pub discover_every: Duration,
    pub sweep_every: Duration,
    pub requeue_after: Duration,
}

impl WorkerConfig {
    pub fn from_args(a: &WorkerArgs) -> Self {
        Self {
            consumer: a.consumer.clone().unwrap_or_else(default_consumer),
            batch: a.batch.clamp(1, 10_000),
            block: Duration::from_millis(a.block_ms.clamp(10, 60_000)),
            linger: Duration::from_millis(a.linger_ms.min(1_000)),
            claim_idle: Duration::from_millis(a.claim_idle_ms.max(100)),
            max_deliveries: a.max_deliveries.max(1),
            discover_every: Duration::from_millis(a.discover_ms.max(50)),
            sweep_every: Duration::from_millis(a.sweep_ms.max(100)),
            requeue_after: Duration::from_millis(a.requeue_after_ms),
        }
    }
}

/// host-pid-random: unique per process, readable in XINFO CONSUMERS.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let rand: u32 = rand::random();
    format!("{host}-{}-{rand:08x}", std::process::id())
}

/// One parsed order entry.
struct Entry {
    id: String,
    order_id: String,
}

fn field(e: &StreamId, k: &str) -> Option<String> {
    match e.map.get(k)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Validates an entry's fields; `Err(reason)` for a poison entry.
fn parse_entry(stream_sku: &str, e: &StreamId) -> Result<Entry, String> {
    let order_id = field(e, "order_id").ok_or("missing order_id")?;
    let sku = field(e, "sku").ok_or("missing sku")?;
    let user = field(e, "user_id").ok_or("missing user_id")?;
    let qty: i64 = field(e, "qty")
        .and_then(|q| q.parse().ok())
        .ok_or("missing or malformed qty")?;
    if sku != stream_sku || !valid_sku(&sku) {
        return Err(format!("sku {sku:?} does not belong to this stream"));
    }
    if sku_of_order(&order_id) != Some(sku.as_str()) {
        return Err("malformed order_id".into());
    }
    if !valid_user(&user) || qty < 1 {
        return Err("malformed user_id or qty".into());
    }
    Ok(Entry {
        id: e.id.clone(),
        order_id,
    })
}

/// A worker: its consumer name, its streams, its blocking connection.
pub struct Worker {
    redis: Redis,
    cfg: WorkerConfig,
    streams: Vec<(String, String)>, // (sku, stream key)
    last_discover: Option<Instant>,
    last_claim: Option<Instant>,
    last_trim: Option<Instant>,
    last_sweep: Option<Instant>,
    /// The blocking connection and the epoch of the link it belongs to.
    reader: Option<(u64, redis::aio::MultiplexedConnection)>,
    /// The link epoch on which the groups of `streams` were last ensured.
    groups_epoch: u64,
    /// Where the next `XAUTOCLAIM` of each stream starts (its cursor).
    claim_cursor: HashMap<String, String>,
    /// On a new link, first read back this consumer's own pending entries
    /// there (what it held when the old link went), then new ones.
    own_pending: bool,
}

/// Most stream entries one `fs_trim` call looks at.
const TRIM_SCAN: usize = 5_000;
/// Most `fs_trim` calls per stream and trim pass.
const TRIM_CALLS: usize = 20;

impl Worker {
    pub fn new(redis: Redis, cfg: WorkerConfig) -> Self {
        Self {
            redis,
            cfg,
            streams: Vec::new(),
            last_discover: None,
            last_claim: None,
            last_trim: None,
            last_sweep: None,
            reader: None,
            groups_epoch: 0,
            claim_cursor: HashMap::new(),
            own_pending: false,
        }
    }

    pub fn consumer(&self) -> &str {
        &self.cfg.consumer
    }

    /// Reads the sales index; joins the group on every new stream.
    async fn discover(&mut self, link: &MasterLink, force: bool) -> Result<(), DbError> {
        if !force
            && self
                .last_discover
                .is_some_and(|t| t.elapsed() < self.cfg.discover_every)
        {
            return Ok(());
        }
        let keys = self.redis.keys();
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(keys.sales_index()).arg(0).arg(-1);
        let skus: Vec<String> = self.redis.on_link(link, &cmd).await?;
        for sku in skus.into_iter().filter(|s| valid_sku(s)) {
            if self.streams.iter().any(|(s, _)| *s == sku) {
                continue;
            }
            let stream = keys.stream(&sku);
            self.ensure_group(link, &stream).await?;
            self.streams.push((sku, stream));
        }
        self.last_discover = Some(Instant::now());
        Ok(())
    }

    async fn ensure_group(&self, link: &MasterLink, stream: &str) -> Result<(), DbError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.redis.on_link::<String, _>(link, &cmd).await {
            Ok(_) => {
                tracing::info!(stream, group = GROUP, master = %link.addr, "consumer group created");
                Ok(())
            }
            Err(DbError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The blocking connection to `link`'s node, reopened after a switch.
    async fn reader(
        &mut self,
        link: &MasterLink,
    ) -> Result<redis::aio::MultiplexedConnection, DbError> {
        if let Some((epoch, c)) = &self.reader
            && *epoch == link.epoch
        {
            return Ok(c.clone());
        }
        let conn = self
            .redis
            .dedicated_connection(link, self.cfg.block + Duration::from_secs(2))
            .await?;
        self.reader = Some((link.epoch, conn.clone()));
        Ok(conn)
    }

    /// One round, all of it on ONE master link: discover streams, reclaim
    /// and dead-letter idle entries (every `claim_idle / 2`), read a batch
    /// (blocking up to `block`), confirm it, trim, and sweep for lost orders.
    /// Entries are confirmed, acknowledged, reclaimed and trimmed only on
    /// the node they were read from: when the link is retired midway the
    /// step stops with [`DbError::LinkChanged`] and its batch is dropped
    /// (the new master still holds those entries, unread or pending, and
    /// delivers them again). Returns what it did; an empty report means the
    /// streams had nothing for this worker.
    pub async fn step(&mut self) -> Result<StepReport, DbError> {
        let mut report = StepReport::default();
        let link = self
            .redis
            .master(tokio::time::Instant::now() + self.redis.failover_wait())
            .await?;
        if self.groups_epoch != link.epoch {
            // A new master may lack groups the old one had (created after
            // its last sync): ensure every one before reading there.
            for (_, stream) in &self.streams {
                self.ensure_group(&link, stream).await?;
            }
            self.claim_cursor.clear();
            self.groups_epoch = link.epoch;
            self.own_pending = true;
        }
        self.discover(&link, false).await?;
        if self.streams.is_empty() {
            tokio::time::sleep(self.cfg.block.min(self.cfg.discover_every)).await;
            return Ok(report);
        }
        if self
            .last_claim
            .is_none_or(|t| t.elapsed() >= self.cfg.claim_idle / 2)
        {
            self.reclaim(&link, &mut report).await?;
            self.last_claim = Some(Instant::now());
        }
        let entries = self.read_batch(&link).await?;
        report.read = entries.len();
        self.process(&link, entries, &mut report).await?;
        if self
            .last_trim
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.trim(&link).await?;
            self.last_trim = Some(Instant::now());
        }
        if self
            .last_sweep
            .is_none_or(|t| t.elapsed() >= self.cfg.sweep_every)
        {
            self.sweep(&link, &mut report).await?;
            self.last_sweep = Some(Instant::now());
        }
        Ok(report)
    }

    async fn read_batch(&mut self, link: &MasterLink) -> Result<Vec<(usize, StreamId)>, DbError> {
        // First on a new link: this consumer's own pending entries there (id
        // 0: its history, one batch, not blocking); then new ones (`>`).
        let own = self.own_pending;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(self.cfg.batch);
        if !own {
            cmd.arg("BLOCK").arg(self.cfg.block.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        for (_, s) in &self.streams {
            cmd.arg(s);
        }
        for _ in &self.streams {
            cmd.arg(if own { "0" } else { ">" });
        }
        let mut conn = self.reader(link).await?;
        let reply: Result<Option<StreamReadReply>, _> = cmd.query_async(&mut conn).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(master = %link.addr, "consumer group missing; recreating");
                for (_, s) in &self.streams {
                    self.ensure_group(link, s).await?;
                }
                return Ok(Vec::new());
            }
            Err(e) => {
                self.reader = None;
                self.redis.report(link, &e);
                return Err(e.into());
            }
        };
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(i) = self.streams.iter().position(|(_, s)| *s == key.key) else {
                continue;
            };
            // History entries trimmed meanwhile come back without fields.
            out.extend(
                key.ids
                    .into_iter()
                    .filter(|id| !own || !id.map.is_empty())
                    .map(|id| (i, id)),
            );
        }
        // One read of the history only: an entry that fails again stays
        // pending and goes the usual way (reclaim, dead letters).
        self.own_pending = false;
        Ok(out)
    }

    /// Confirms a batch read on `link`: its entries grouped by stream, one
    /// `fs_confirm_batch` call per stream and chunk of at most
    /// [`CONFIRM_CHUNK`] entries, all calls in one pipeline on that link.
    async fn process(
        &mut self,
        link: &MasterLink,
        entries: Vec<(usize, StreamId)>,
        report: &mut StepReport,
    ) -> Result<(), DbError> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let keys = self.redis.keys().clone();
        // Valid entries per stream, in stream order.
        let mut by_stream: Vec<(usize, Vec<Entry>)> = Vec::new();
        for (i, raw) in &entries {
            let (sku, stream) = &self.streams[*i];
            match parse_entry(sku, raw) {
                Ok(e) => match by_stream.iter_mut().find(|(s, _)| s == i) {
                    Some((_, v)) => v.push(e),
                    None => by_stream.push((*i, vec![e])),
                },
                Err(reason) => {
                    // Left pending: reclaimed, retried, and dead-lettered after
                    // max deliveries.
                    report.failed += 1;
                    tracing::warn!(entry = %raw.id, stream = %stream, %reason, "malformed order entry");
                }
            }
        }
        if by_stream.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let mut sent: Vec<&[Entry]> = Vec::new();
        for (i, list) in &by_stream {
            let (sku, _) = &self.streams[*i];
            for chunk in list.chunks(CONFIRM_CHUNK) {
                functions::confirm_batch_into(
                    &mut pipe,
                    &keys,
                    sku,
                    GROUP,
                    chunk.iter().map(|e| (e.order_id.as_str(), e.id.as_str())),
                );
                sent.push(chunk);
            }
        }
        let results: Vec<Vec<i64>> = self.redis.on_link(link, &pipe).await?;
        let mut confirmed = 0;
        for (chunk, rs) in sent.iter().zip(results) {
            if rs.len() != chunk.len() {
                // Not expected from the library; nothing is counted, the
                // entries not acknowledged come back through reclaim.
                report.failed += chunk.len();
                tracing::error!(
                    sent = chunk.len(),
                    replied = rs.len(),
                    "fs_confirm_batch replied with the wrong number of results"
                );
                continue;
            }
            for (e, r) in chunk.iter().zip(rs) {
                match r {
                    1 => {
                        confirmed += 1;
                        tracing::debug!(order_id = %e.order_id, "order confirmed");
                    }
                    0 => {
                        report.duplicates += 1;
                        metrics::counter!("flashsale_worker_duplicates_total").increment(1);
                        tracing::info!(order_id = %e.order_id, "duplicate delivery; already confirmed");
                    }
                    _ => {
                        report.failed += 1;
                        tracing::warn!(order_id = %e.order_id, entry = %e.id, "order record missing; left pending");
                    }
                }
            }
        }
        report.confirmed += confirmed;
        metrics::counter!("flashsale_worker_processed_total").increment(confirmed as u64);
        metrics::histogram!("flashsale_worker_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Takes over idle pending entries on `link`; dead-letters those
    /// delivered too often. `XAUTOCLAIM` resumes where the last one stopped
    /// (its cursor), so every idle entry is reached in turn.
    async fn reclaim(&mut self, link: &MasterLink, report: &mut StepReport) -> Result<(), DbError> {
        let idle = self.cfg.claim_idle.as_millis() as u64;
        let keys = self.redis.keys().clone();
        for i in 0..self.streams.len() {
            let (sku, stream) = self.streams[i].clone();
            // Entries delivered too often: dead-letter them first.
            let mut pending = redis::cmd("XPENDING");
            pending
                .arg(&stream)
                .arg(GROUP)
                .arg("IDLE")
                .arg(idle)
                .arg("-")
                .arg("+")
                .arg(self.cfg.batch);
            let p: StreamPendingCountReply = match self.redis.on_link(link, &pending).await {
                Ok(p) => p,
                Err(DbError::Redis(e)) if e.code() == Some("NOGROUP") => {
                    self.ensure_group(link, &stream).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut idle_left = false;
            for pid in p.ids {
                if pid.times_delivered >= self.cfg.max_deliveries {
                    let cmd = functions::dead_letter_call(
                        &keys,
                        &sku,
                        GROUP,
                        &pid.id,
                        &format!("not processed after {} deliveries", pid.times_delivered),
                        pid.times_delivered,
                        &pid.consumer,
                    );
                    let _: i64 = self.redis.on_link(link, &cmd).await?;
                    report.dead_lettered += 1;
                    metrics::counter!("flashsale_worker_dead_lettered_total").increment(1);
                    tracing::warn!(entry = %pid.id, stream = %stream, deliveries = pid.times_delivered, "entry dead-lettered");
                } else {
                    idle_left = true;
                }
            }
            if !idle_left {
                continue;
            }
            let cursor = self
                .claim_cursor
                .get(&stream)
                .cloned()
                .unwrap_or_else(|| "0-0".into());
            let mut claim = redis::cmd("XAUTOCLAIM");
            claim
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.cfg.consumer)
                .arg(idle)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.cfg.batch);
            let r: StreamAutoClaimReply = self.redis.on_link(link, &claim).await?;
            // "0-0": the scan reached the end; the next starts over.
            self.claim_cursor.insert(stream.clone(), r.next_stream_id);
            if r.claimed.is_empty() {
                continue;
            }
            report.reclaimed += r.claimed.len();
            metrics::counter!("flashsale_worker_reclaimed_total").increment(r.claimed.len() as u64);
            tracing::info!(stream = %stream, count = r.claimed.len(), "reclaimed idle entries");
            let entries = r.claimed.into_iter().map(|e| (i, e)).collect();
            self.process(link, entries, report).await?;
        }
        Ok(())
    }

    /// Trims each stream on `link`'s node with `fs_trim`, which decides and
    /// trims in one atomic step there (never below an entry a group still
    /// needs or whose order is still queued), and publishes the lag gauge.
    async fn trim(&mut self, link: &MasterLink) -> Result<(), DbError> {
        let keys = self.redis.keys().clone();
        let mut total_lag = 0i64;
        for (sku, stream) in &self.streams {
            for _ in 0..TRIM_CALLS {
                let (_trimmed, scanned): (i64, usize) = self
                    .redis
                    .on_link(link, &functions::trim_call(&keys, sku, TRIM_SCAN))
                    .await?;
                if scanned < TRIM_SCAN {
                    break;
                }
            }
            let mut info = redis::cmd("XINFO");
            info.arg("GROUPS").arg(stream);
            let groups: Vec<HashMap<String, Value>> = match self.redis.on_link(link, &info).await {
                Ok(g) => g,
                Err(DbError::Redis(_)) => continue,
                Err(e) => return Err(e),
            };
            for g in &groups {
                for field in ["lag", "pending"] {
                    if let Some(Value::Int(n)) = g.get(field) {
                        total_lag += *n;
                    }
                }
            }
        }
        metrics::gauge!("flashsale_worker_lag").set(total_lag as f64);
        Ok(())
    }

    /// The self-healing sweep: for each sale whose queued orders outnumber
    /// the live entries carrying them on `link`'s node (`fs_lost`), scans
    /// its order records and queues again, with `fs_requeue`, every order
    /// still `queued` after `requeue_after` whose entry no worker will
    /// deliver any more. Idempotent, so any number of workers may sweep.
    async fn sweep(&mut self, link: &MasterLink, report: &mut StepReport) -> Result<(), DbError> {
        let keys = self.redis.keys().clone();
        for (sku, _) in &self.streams {
            let lost: i64 = self
                .redis
                .on_link(link, &functions::lost_call(&keys, sku, GROUP))
                .await?;
            if lost == 0 {
                continue;
            }
            let pattern = format!("{}*", keys.order(sku, ""));
            let mut cursor = 0u64;
            let mut requeued = 0i64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, found): (u64, Vec<String>) = self.redis.on_link(link, &scan).await?;
                for chunk in found.chunks(functions::CONFIRM_BATCH_MAX) {
                    let cmd =
                        functions::requeue_call(&keys, sku, GROUP, chunk, self.cfg.requeue_after);
                    let (n, _): (i64, String) = self.redis.on_link(link, &cmd).await?;
                    requeued += n;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            if requeued > 0 {
                report.requeued += requeued as usize;
                metrics::counter!("flashsale_worker_requeued_total").increment(requeued as u64);
                tracing::warn!(
                    sku,
                    requeued,
                    lost,
                    "queued orders without a live entry queued again"
                );
            }
        }
        Ok(())
    }
}

/// Runs a worker until `stop` is notified (then finishes the batch in hand).
pub async fn run(mut worker: Worker, stop: Arc<Notify>, stopping: Arc<AtomicBool>) {
    tracing::info!(consumer = worker.consumer(), "worker started");
    let (batch, linger) = (worker.cfg.batch, worker.cfg.linger);
    while !stopping.load(Ordering::SeqCst) {
        let step = tokio::select! {
            r = worker.step() => r,
            _ = stop.notified() => break,
        };
        let pause = match step {
            // Caught up: let the next batch gather instead of confirming
            // orders a few at a time; every call has the same fixed cost (a
            // round trip, an FCALL, and an XACK and a HINCRBY that every
            // replica replays).
            Ok(r) if r.read > 0 && r.read < batch => linger,
            Ok(_) => Duration::ZERO,
            Err(e) => {
                tracing::warn!(error = %e, "worker step failed; retrying");
                Duration::from_millis(200)
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.notified() => break,
            }
        }
    }
    tracing::info!(consumer = worker.consumer(), "worker stopped");
}

/// `flashsale-worker` main.
pub async fn main(args: WorkerArgs) -> ExitCode {
    if let Err(e) = args.redis.settings() {
        eprintln!("flashsale-worker: {e}");
        return ExitCode::FAILURE;
    }
    let handle = crate::telemetry::metrics_handle();
    if let Some(addr) = args.metrics_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let h = handle.clone();
                        async move { h.render() }
                    }),
                );
                tokio::spawn(async move {
                    let _ = axum::serve(l, app).await;
                });
            }
            Err(e) => {
                eprintln!("flashsale-worker: FLASHSALE_WORKER_METRICS {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let redis = match Redis::from_args(&args.redis).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flashsale-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let worker = Worker::new(redis, WorkerConfig::from_args(&args));
    let stop = Arc::new(Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let mut task = tokio::spawn(run(worker, stop.clone(), stopping.clone()));
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flashsale-worker: signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tokio::select! {
        _ = &mut task => return ExitCode::SUCCESS,
        _ = signal => {}
    }
    tracing::info!("signal received: finishing the batch in hand");
    stopping.store(true, Ordering::SeqCst);
    let graceful = tokio::time::timeout(Duration::from_secs(args.shutdown_timeout_s), &mut task);
    tokio::select! {
        r = graceful => {
            if r.is_err() {
                tracing::warn!("shutdown timed out; pending entries will be reclaimed");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        _ = tokio::signal::ctrl_c() => std::process::exit(130),
        _ = term.recv() => std::process::exit(143),
    }
}

/// `flashsale dead-letters`.
#[derive(Args, Debug)]
pub struct DeadLetterArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub action: DeadLetterAction,
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// Print the dead letters of a sale, one JSON object per line.
    List {
        #[arg(long)]
        sku: String,
    },
    /// Put dead letters back on the order stream (all, or one by --id) and
    /// remove them from the dead-letter stream.
    Replay {
        #[arg(long)]
        sku: String,
        #[arg(long)]
        id: Option<String>,
    },
}

pub async fn dead_letters_command(args: DeadLetterArgs) -> ExitCode {
    let redis = match Redis::from_args(&args.redis).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flashsale: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sku = match &args.action {
        DeadLetterAction::List { sku } | DeadLetterAction::Replay { sku, .. } => sku.clone(),
    };
    if !valid_sku(&sku) {
        eprintln!("flashsale: --sku must be 1-64 of [A-Za-z0-9_-]");
        return ExitCode::FAILURE;
    }
    let keys = redis.keys().clone();
    let mut range = redis::cmd("XRANGE");
    range.arg(keys.dead_letters(&sku)).arg("-").arg("+");
    let entries: Vec<(String, Vec<Value>)> = match redis.read_master(&range).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("flashsale: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut replayed = 0;
    for (id, flat) in entries {
        let fields: Vec<(String, String)> = flat
            .chunks(2)
            .filter_map(|p| match p {
                [k, v] => Some((
                    crate::redis::text(k).unwrap_or_default(),
                    crate::redis::text(v).unwrap_or_default(),
                )),
                _ => None,
            })
            .collect();
        match &args.action {
            DeadLetterAction::List { .. } => {
                let obj: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                println!("{}", serde_json::json!({ "id": id, "fields": obj }));
            }
            DeadLetterAction::Replay { id: only, .. } => {
                if only.as_ref().is_some_and(|o| *o != id) {
                    continue;
                }
                let original: Vec<(&str, &str)> = fields
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("f:").map(|k| (k, v.as_str())))
                    .collect();
                if original.is_empty() {
                    eprintln!("flashsale: skipped {id}: its original entry was already gone");
                    continue;
                }
                let mut pipe = redis::pipe();
                pipe.atomic();
                let xadd = pipe.cmd("XADD").arg(keys.stream(&sku)).arg("*");
                for (k, v) in original {
                    xadd.arg(k).arg(v);
                }
                pipe.cmd("XDEL").arg(keys.dead_letters(&sku)).arg(&id);
                if let Err(e) = redis.write::<Value, _>(&pipe).await {
                    eprintln!("flashsale: replay {id}: {e}");
                    return ExitCode::FAILURE;
                }
                replayed += 1;
            }
        }
    }
    if let DeadLetterAction::Replay { .. } = args.action {
        println!("replayed {replayed} dead letter(s) of {sku}");
    }
    ExitCode::SUCCESS
}
