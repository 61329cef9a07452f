//! The order-stream consumer behind `flashsale-worker`.
//!
//! Design (at-least-once delivery, exactly-once effect):
//! - Every sale has one stream (`P:{sku}:stream`); every worker joins the
//!   consumer group `flashsale` on each (created with `MKSTREAM` when absent,
//!   recreated after `NOGROUP`, e.g. on a promoted replica that missed it) and
//!   finds streams of new sales through the sales index.
//! - A worker reads with `XREADGROUP … BLOCK` on a dedicated connection (never
//!   sleep-polling; on a cluster shard holding sales in several slots, one
//!   non-blocking read per slot in one pipeline, then a blocking read of the
//!   last busy slot for at most 100 ms, since no command spans slots there)
//!   at most `--batch` entries at a time: that bounds the
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
//! - Expiry (every `--expire-ms`, 500 ms; `expiry.rs`): on the step's link,
//!   `TIME` (the server's clock, the one every deadline was set by), then per
//!   sale `ZRANGEBYSCORE P:{sku}:payby -inf <now> LIMIT 0 512` (one pipeline
//!   for all sales) and `fs_expire` of the ids found (one pipeline), again
//!   for each sale whose chunk was full (at most 16 rounds a pass; a larger
//!   backlog is taken over the next passes). `fs_expire` checks each order
//!   itself — still unpaid, deadline passed — so an order paid or cancelled
//!   meanwhile is only dropped from `payby`, and one already expired (by
//!   another worker, or by a late payment's own call) is not expired
//!   twice: any number of workers may run it at once. It runs before the
//!   read, so the step reads the event entries it just made; the read
//!   blocks no longer than until the next pass is due. Counted in
//!   `flashsale_worker_expired_total`, logged per sale with the units
//!   returned. Late payments never depend on it: `fs_pay` and `fs_cancel`
//!   apply an elapsed deadline themselves; the schedule only brings the
//!   units back on time.
//! - Ended sales are retired (`retire.rs`): a sale that ended more than a
//!   minute ago (server clock) with every order recorded, nothing in
//!   `payby`, nothing pending and no lag in the group leaves the worker's
//!   streams — it is no longer read, reclaimed, expired, trimmed or swept.
//!   Checked every `--sweep-ms` with one `MULTI … EXEC` per sale (all in
//!   one pipeline) on the step's link;
//!   retired sales are checked again with the same test every third sweep
//!   (30 s), and at once after a master switch, and come back as soon as
//!   something appears for them (an entry replayed from the dead letters or
//!   queued again by a sweep, a late event). `flashsale_worker_sales` is the
//!   number worked on. A purged sale (gone from the index) is dropped by
//!   the discovery, retired or not; a blocking read whose stream is deleted
//!   under it (`UNBLOCKED`) is not a failure: logged at debug, the next
//!   discovery drops the sale.
//! - Retired sales are purged (`retention.rs`, `--purge-after-s`; on by
//!   default with a ledger, 7 days after the end): every `--sweep-ms` those
//!   whose end lies that far back are handed to a purge task (live sales
//!   never wait for a purge), which purges them through
//!   `sale::purge::purge` — the code path and the checks of `flashsale sale
//!   purge` (with the ledger: every recorded order there as it ended) —
//!   and never while the ledger does not answer. Two workers on one sale:
//!   the first takes it out of the index, the other leaves it to it.
//!   `flashsale_worker_purged_total`; a retirement comes no later than the
//!   purge's grace. The task is not a step: it works on the master of the
//!   moment, outside the one-node rule (nothing of the sale changes).
//! - The probe (`probe.rs`, with `FLASHSALE_WORKER_METRICS`, every 5 s,
//!   outside the steps): per shard, whether the master answers, its memory
//!   against `maxmemory`, the streams' backlog (entries not processed, the
//!   oldest one's age) and the dead letters, as gauges labelled by the
//!   shard's lowest slot; and the readiness `/readyz` answers with.
//! - SIGTERM/SIGINT: stop reading, finish and ack the batch in hand, exit 0
//!   (bounded by `--shutdown-timeout-s`, which also covers the purge of the
//!   sale in hand); a second signal exits at once —
//!   what this worker held is reclaimed by the others.
//!
//! **Event entries.** From library version 12 an order lives on after it is
//! recorded (`queued → confirmed → paid | expired | cancelled`), and
//! `fs_pay`, `fs_cancel` and `fs_expire` each add an event entry to the
//! sale's stream when an order ends: the order entry's fields plus `kind`.
//! An event entry is not a new order. The worker acknowledges it with
//! `XACK` on the step's link, in the pipeline of the batch's
//! `fs_confirm_batch` calls, and never passes it to `fs_confirm_batch`
//! (`flashsale_worker_events_total{kind}`); an entry with an unknown `kind`
//! is poison. Why not through `fs_confirm_batch`: for an order already
//! recorded it answers 0, so every paid order would count as a duplicate
//! delivery; and an event can come before its order's own entry is
//! recorded (a cancel 1 ms after the purchase, or the order's entry still
//! pending with a dead worker): then it answers 1 and records the order
//! from the event (sets `confirmed_ms`, counts it in `confirmed`, keeps its
//! status), and the order entry later gets 0. The order would still be
//! recorded exactly once — `confirm_orders` records an order only while it
//! has no `confirmed_ms` — so that path would be sound, only its counts
//! misleading. As it is, an order is recorded by its own entry alone,
//! whenever that is read: `fs_trim` never trims past an entry whose order
//! is not recorded yet, and the sweep queues again an ended order whose
//! entry is gone unrecorded, so acknowledging an event first loses nothing.
//! Without a ledger there is nothing else to carry: Redis already holds the
//! end. (The sweep's `fs_lost` counts pending and unread entries as
//! carrying orders, event entries among them, so while events wait it may
//! see fewer lost orders than there are; it looks again next sweep.)
//!
//! **Shards.** On a Redis Cluster, [`run_all`] runs one worker per shard:
//! each takes its shard's master link for its steps and works on the sales
//! whose slot that shard owns now (`Worker::owns`); a sale whose slot moves
//! leaves it at the next discovery (a read there answers `MOVED`, which
//! brings the discovery forward) and joins the new shard's worker, which
//! reads back this consumer's own pending entries there first. Everything
//! below holds per shard. With Sentinels (or one node) there is one worker
//! and one shard.
//!
//! **The one-node rule.** After a promotion the old master keeps taking
//! writes for a moment, and both masters mint stream ids above the same
//! last id: an entry id read on one names another order on the other. So a
//! step takes one master link and does everything on it — read, confirm,
//! acknowledge, reclaim, dead-letter, expire, trim, sweep, retire
//! ([`Redis::on_link`]); a
//! decision and the write that depends on it are one Function where they
//! must be atomic. When the link is retired midway the step ends with
//! [`DbError::LinkChanged`] and its batch is dropped: the new master still
//! holds those entries (unread, or pending for this consumer) and delivers
//! or hands them over again there. Nothing here may read from one link and
//! write through another, or through a call that picks the master anew.
//!
//! **The ledger** (`--ledger-url`, `FLASHSALE_LEDGER_URL`). With one, an
//! order is confirmed only once it is in the ledger, and the ledger never
//! holds an order Redis does not have as confirmed or about to be:
//! - Before `fs_confirm_batch`, the step reads each entry's order record
//!   on its link (one `HMGET` pipeline). An entry whose order is missing or
//!   does not match (what `fs_confirm_batch` answers -1) is neither
//!   recorded nor confirmed: it stays pending and goes the poison way
//!   (retried, dead-lettered). Recording first and deciding later would
//!   leave such orders in the ledger for good.
//! - Then one acknowledgement round on that link (`WAIT`, as for a 202):
//!   the replicas hold those orders, so a failover cannot lose one the
//!   ledger already has (a purchase still waiting for its own `WAIT` when
//!   the worker read its entry would otherwise reach the ledger and then,
//!   its master lost, be made again under a new order id).
//! - Then one idempotent write of the batch (`Ledger::record`), then
//!   `fs_confirm_batch` on the same link. A crash, a signal or a switch
//!   between the two leaves entries pending whose orders are already in the
//!   ledger; their next delivery writes nothing new and confirms them.
//! - Ends. For every entry, order or event alike, the ledger is given the
//!   order as its record reads now: the order itself (`INSERT … ON
//!   CONFLICT DO NOTHING`) and, if it has ended, its end — `Paid` (time,
//!   `payment_id`, amount), `Expired` or `Cancelled` (time) — an `UPDATE`
//!   that moves only a row still `queued` or `confirmed`; one transaction.
//!   So the row ends present and in its final state whichever entry of the
//!   order is recorded first, and whichever worker writes first: an order
//!   paid before its entry was recorded is inserted and marked paid at
//!   once; an order entry read while the order was still waiting, written
//!   after its event, inserts nothing over the paid row; an end given again
//!   matches no row; a paid row never becomes expired (and the schema
//!   refuses a row with two ends). The acknowledgement round before the
//!   write covers the ends too: an expiry the replicas do not hold yet (a
//!   failover could undo it, and the order then be paid) never reaches the
//!   ledger. Event entries are then acknowledged, order entries confirmed.
//!
//! When the ledger does not answer, the batch stays in hand: the worker
//! retries with backoff (100 ms doubling to 2 s), reads nothing new,
//! reclaims, dead-letters and expires nothing, and skips trimming, the
//! sweep and retirement; it
//! logs once per outage, counts `flashsale_ledger_errors_total` and sets
//! `flashsale_ledger_up` to 0. Purchases go on (they never touch
//! PostgreSQL) and the streams buffer. Delivery counts do not grow with
//! an outage, so an outage never dead-letters an entry:
//! - the holder claims its held entries again every `--claim-idle-ms / 3`
//!   with `XCLAIM … JUSTID`, which resets their idle time without
//!   counting a delivery, so no other worker ever sees them idle while
//!   their holder lives — entries do not bounce between workers;
//! - a worker reclaims (`XAUTOCLAIM`, which counts a delivery) and
//!   dead-letters only while the ledger answers (a success within the last
//!   second, or a `SELECT 1` just before), so entries whose holder died
//!   wait, pending and uncounted, until the ledger is back, and are then
//!   taken over once, as after any worker's death.
//!
//! A batch held across a master switch is dropped like any batch of a
//! retired link (the new master delivers it again); a stop (SIGTERM)
//! while holding leaves it pending for the others.

mod entry;
mod expiry;
mod ledger;
pub mod probe;
mod retention;
mod retire;
mod upkeep;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamReadReply};

use crate::config::WorkerTuning;
use crate::ledger::Ledger;
use crate::redis::{DbError, MasterLink, Redis, error_code, functions};
use entry::{Entry, parse_entry};
use ledger::{ByStream, Held, LedgerState};
pub use retention::MAX_BACKOFF_SWEEPS;
pub use retire::{RECHECK_SWEEPS, RETIRE_AFTER_END};

/// The consumer group every worker joins.
pub const GROUP: &str = "flashsale";

/// Most entries confirmed by one `fs_confirm_batch` call (the library refuses
/// more), so one call never holds Redis long.
pub const CONFIRM_CHUNK: usize = functions::CONFIRM_BATCH_MAX;

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
    /// Entries in hand, read but not confirmed: the ledger did not take
    /// them yet.
    pub held: usize,
    /// Event entries (an order paid, expired or cancelled) acknowledged.
    pub events: usize,
    /// Unpaid orders expired by the expiry pass.
    pub expired: usize,
}

impl StepReport {
    pub fn is_empty(&self) -> bool {
        self.read == 0
            && self.reclaimed == 0
            && self.dead_lettered == 0
            && self.requeued == 0
            && self.held == 0
            && self.expired == 0
    }
}

/// A worker: its consumer name, its streams, its blocking connection.
pub struct Worker {
    redis: Redis,
    cfg: WorkerTuning,
    /// The sales worked on: (sku, stream key).
    streams: Vec<(String, String)>,
    /// Retired sales (see `retire.rs`): in the index, not worked on.
    retired: Vec<(String, String)>,
    last_discover: Option<Instant>,
    last_claim: Option<Instant>,
    last_trim: Option<Instant>,
    last_sweep: Option<Instant>,
    last_expire: Option<Instant>,
    last_retire_check: Option<Instant>,
    last_recheck: Option<Instant>,
    /// The blocking connection and the epoch of the link it belongs to.
    reader: Option<(u64, redis::aio::MultiplexedConnection)>,
    /// The link epoch on which the groups of `streams` were last ensured.
    groups_epoch: u64,
    /// Where the next `XAUTOCLAIM` of each stream starts (its cursor).
    claim_cursor: HashMap<String, String>,
    /// On a new link, first read back this consumer's own pending entries
    /// there (what it held when the old link went), then new ones.
    own_pending: bool,
    /// The order ledger, when one is configured.
    ledger: Option<LedgerState>,
    /// A batch the ledger has not taken yet (see "The ledger" above).
    held: Option<Held>,
    /// The automatic purge of ended sales (`retention.rs`), when on.
    retention: Option<retention::Retention>,
    /// In a cluster, the shard whose sales this worker works on (see
    /// [`run_all`]); `None`: the one master.
    shard: Option<u64>,
    /// The slot group the last multi-slot read found entries in (see
    /// [`Worker::read_batch`]).
    hot_group: usize,
    /// This worker's part of `flashsale_worker_sales`.
    published_sales: usize,
}

/// Most stream entries one `fs_trim` call looks at. Each entry costs the
/// master an `HMGET` of its order (~3 µs), and one call holds the master for
/// all of them: 5 000 held it for 6–20 ms, every purchase waiting behind it,
/// which was the open loop's p99 at a quarter of the maximum rate. 500 keep
/// a call near 1.5 ms; purchases run between the calls.
const TRIM_SCAN: usize = 500;
/// Most `fs_trim` calls per stream and trim pass (50 000 entries a second,
/// beyond the master's purchase rate).
const TRIM_CALLS: usize = 100;
/// How often the processed entries are trimmed: often enough that a pass
/// has a second's entries to look at, not five seconds' worth.
const TRIM_EVERY: Duration = Duration::from_secs(1);

impl Worker {
    pub fn new(redis: Redis, cfg: WorkerTuning) -> Self {
        metrics::counter!("flashsale_worker_expired_total").increment(0);
        metrics::gauge!("flashsale_worker_sales").increment(0.0);
        let retention = cfg
            .purge_after
            .map(|after| retention::Retention::new(redis.clone(), after));
        Self {
            redis,
            cfg,
            streams: Vec::new(),
            retired: Vec::new(),
            last_discover: None,
            last_claim: None,
            last_trim: None,
            last_sweep: None,
            last_expire: None,
            last_retire_check: None,
            last_recheck: None,
            reader: None,
            groups_epoch: 0,
            claim_cursor: HashMap::new(),
            own_pending: false,
            ledger: None,
            held: None,
            retention,
            shard: None,
            hot_group: 0,
            published_sales: 0,
        }
    }

    /// Works on the sales of cluster shard `id` only (see [`run_all`]).
    pub fn on_shard(mut self, id: u64) -> Self {
        self.shard = Some(id);
        self
    }

    /// Whether `sku`'s keys are on this worker's shard now.
    pub(super) fn owns(&self, sku: &str) -> bool {
        match self.shard {
            None => true,
            Some(id) => self
                .redis
                .shard_of(&self.redis.keys().sale(sku))
                .is_some_and(|s| s.id == id),
        }
    }

    /// Records every order in `ledger` before confirming it (see "The
    /// ledger" in the module doc). The schema must be in place.
    pub fn with_ledger(mut self, ledger: Ledger) -> Self {
        if let Some(r) = self.retention.as_mut() {
            r.with_ledger(ledger.clone());
        }
        self.ledger = Some(LedgerState::new(ledger));
        self
    }

    /// How long after its end a finished sale is retired: a minute
    /// ([`RETIRE_AFTER_END`]), or the purge's grace when that is shorter
    /// (a sale is purged once retired).
    pub(super) fn retire_after(&self) -> Duration {
        self.retention
            .as_ref()
            .map_or(RETIRE_AFTER_END, |r| r.after().min(RETIRE_AFTER_END))
    }

    pub fn consumer(&self) -> &str {
        &self.cfg.consumer
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

    /// One round, all of it on ONE master link: discover streams, retire
    /// finished sales and bring back retired ones with work, reclaim and
    /// dead-letter idle entries (every `claim_idle / 2`), expire unpaid
    /// orders past their deadline (every `expire_every`), read a batch
    /// (blocking up to `block`, and no longer than until the next expiry
    /// pass), confirm it, trim, and sweep for lost orders. Entries are
    /// confirmed, acknowledged, reclaimed and trimmed only on the node they
    /// were read from: when the link is retired midway the step stops with
    /// [`DbError::LinkChanged`] and its batch is dropped (the new master
    /// still holds those entries, unread or pending, and delivers them
    /// again). With a batch held for the ledger, the step is only a retry
    /// of it (no reading, no reclaiming, no expiry, no upkeep). Returns what
    /// it did; an empty report means the streams had nothing for this
    /// worker.
    pub async fn step(&mut self) -> Result<StepReport, DbError> {
        let mut report = StepReport::default();
        let deadline = tokio::time::Instant::now() + self.redis.failover_wait();
        let link = match self.shard {
            Some(id) => self.redis.shard_master(id, deadline).await?,
            None => self.redis.master(deadline).await?,
        };
        if self.groups_epoch != link.epoch {
            // A new master may lack groups the old one had (created after
            // its last sync): ensure every one before reading there. Retired
            // sales are judged again there at once.
            for (_, stream) in &self.streams {
                self.ensure_group(&link, stream).await?;
            }
            self.claim_cursor.clear();
            self.groups_epoch = link.epoch;
            self.own_pending = true;
            self.last_recheck = None;
        }
        // A batch in hand that the ledger has not taken comes first, alone.
        if self.held.is_some() {
            self.retry_held(&link, &mut report).await?;
            if self.held.is_some() {
                report.held = self.holding();
                return Ok(report);
            }
        }
        self.discover(&link, false).await?;
        self.retire_pass(&link).await?;
        self.retention_pass(&link).await?;
        if self.streams.is_empty() {
            tokio::time::sleep(self.cfg.block.min(self.cfg.discover_every)).await;
            return Ok(report);
        }
        if self
            .last_claim
            .is_none_or(|t| t.elapsed() >= self.cfg.claim_idle / 2)
        {
            // Reclaiming (and dead-lettering) only while the ledger answers.
            if self.ledger_answers().await {
                self.reclaim(&link, &mut report).await?;
            }
            self.last_claim = Some(Instant::now());
        }
        // Expiry before the read, so the read takes its event entries at
        // once; not while a batch is held (the ledger is down).
        if self.held.is_none() && self.until_expiry().is_zero() {
            self.expire(&link, &mut report).await?;
            self.last_expire = Some(Instant::now());
        }
        if self.held.is_none() {
            let entries = self.read_batch(&link).await?;
            report.read = entries.len();
            self.process(&link, entries, &mut report).await?;
        }
        if self.held.is_some() {
            report.held = self.holding();
            return Ok(report);
        }
        if self.last_trim.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
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

    /// The `XREADGROUP` of the streams `of` (indexes into `streams`).
    fn read_cmd(
        &self,
        of: &[usize],
        count: usize,
        block: Option<Duration>,
        own: bool,
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        for &i in of {
            cmd.arg(&self.streams[i].1);
        }
        for _ in of {
            cmd.arg(if own { "0" } else { ">" });
        }
        cmd
    }

    /// The streams grouped by hash slot: one group with a single master
    /// (one read takes every stream), one per slot in a cluster (a command
    /// may not span slots there).
    fn slot_groups(&self) -> Vec<Vec<usize>> {
        if self.shard.is_none() {
            return vec![(0..self.streams.len()).collect()];
        }
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, (_, stream)) in self.streams.iter().enumerate() {
            let slot = crate::redis::slots::slot(stream.as_bytes());
            match groups.iter_mut().find(|g| g.0 == slot) {
                Some(g) => g.1.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        groups.into_iter().map(|g| g.1).collect()
    }

    /// Reads a batch on `link`'s node. With one slot group: one
    /// `XREADGROUP … BLOCK` on the dedicated connection. With several (a
    /// cluster shard holding several sales): one non-blocking
    /// `XREADGROUP` per group in one pipeline, the batch shared between
    /// them; when all come back empty, one blocking read of the group that
    /// last had entries, for at most 100 ms, so the others wait no longer
    /// than that.
    async fn read_batch(&mut self, link: &MasterLink) -> Result<Vec<(usize, StreamId)>, DbError> {
        // First on a new link: this consumer's own pending entries there (id
        // 0: its history, one batch, not blocking); then new ones (`>`).
        let own = self.own_pending;
        // Never past the next expiry pass (and never 0: for ever).
        let block = self
            .cfg
            .block
            .min(self.until_expiry())
            .max(Duration::from_millis(10));
        let groups = self.slot_groups();
        let mut conn = self.reader(link).await?;
        let reply: Result<Vec<Option<StreamReadReply>>, redis::RedisError> = if groups.len() == 1 {
            let cmd = self.read_cmd(&groups[0], self.cfg.batch, (!own).then_some(block), own);
            cmd.query_async::<Option<StreamReadReply>>(&mut conn)
                .await
                .map(|r| vec![r])
        } else {
            let share = self.cfg.batch / groups.len();
            let mut pipe = redis::pipe();
            for g in &groups {
                pipe.add_command(self.read_cmd(g, share, None, own));
            }
            match pipe
                .query_async::<Vec<Option<StreamReadReply>>>(&mut conn)
                .await
            {
                Ok(r)
                    if own
                        || r.iter()
                            .any(|x| x.as_ref().is_some_and(|x| !x.keys.is_empty())) =>
                {
                    if let Some(g) = r
                        .iter()
                        .position(|x| x.as_ref().is_some_and(|x| !x.keys.is_empty()))
                    {
                        self.hot_group = g;
                    }
                    Ok(r)
                }
                Ok(_) => {
                    let g = &groups[self.hot_group % groups.len()];
                    let wait = block.min(Duration::from_millis(100));
                    self.read_cmd(g, self.cfg.batch, Some(wait), false)
                        .query_async::<Option<StreamReadReply>>(&mut conn)
                        .await
                        .map(|r| vec![r])
                }
                Err(e) => Err(e),
            }
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) if error_code(&e).as_deref() == Some("NOGROUP") => {
                // A purged sale's stream is gone too: drop purged sales
                // first, so their streams are not made again.
                self.discover(link, true).await?;
                tracing::warn!(master = %link.addr, "consumer group missing; recreating");
                for (_, s) in &self.streams {
                    self.ensure_group(link, s).await?;
                }
                return Ok(Vec::new());
            }
            Err(e) if error_code(&e).as_deref() == Some("UNBLOCKED") => {
                // A stream deleted under the blocking read: a sale being
                // purged. Not a failure; the next step's discovery drops it.
                tracing::debug!(master = %link.addr, error = %e, "blocking read ended by a deleted stream");
                self.last_discover = None;
                return Ok(Vec::new());
            }
            Err(e)
                if matches!(
                    error_code(&e).as_deref(),
                    Some("MOVED" | "ASK" | "TRYAGAIN")
                ) =>
            {
                // A sale's slot is moving to another shard: the next
                // discovery hands it over.
                tracing::info!(master = %link.addr, error = %e, "a stream's slot moved; rediscovering");
                self.last_discover = None;
                self.redis.report(link, &e);
                return Ok(Vec::new());
            }
            Err(e) => {
                self.reader = None;
                self.redis.report(link, &e);
                return Err(e.into());
            }
        };
        let mut out = Vec::new();
        for key in reply
            .into_iter()
            .flat_map(|r| r.map(|r| r.keys).unwrap_or_default())
        {
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

    /// Confirms a batch read on `link`: its entries grouped by stream and,
    /// with a ledger, recorded there first ([`Worker::record_in_ledger`]; a
    /// batch the ledger does not take is held, not confirmed); then one
    /// `fs_confirm_batch` call per stream and chunk of at most
    /// [`CONFIRM_CHUNK`] order entries and one `XACK` per stream of its
    /// event entries, all in one pipeline on that link.
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
        // Valid entries per stream, in stream order.
        let mut by_stream: ByStream = Vec::new();
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
        if self.ledger.is_some() {
            match self.record_in_ledger(link, by_stream, report).await? {
                Some(recorded) => by_stream = recorded,
                None => {
                    report.held = self.holding();
                    return Ok(());
                }
            }
        }
        self.confirm(link, &by_stream, report).await?;
        metrics::histogram!("flashsale_worker_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// `fs_confirm_batch` for the order entries read on `link` (and, with
    /// a ledger, recorded there), and `XACK` for its event entries, on that
    /// link, in one pipeline.
    async fn confirm(
        &mut self,
        link: &MasterLink,
        by_stream: &ByStream,
        report: &mut StepReport,
    ) -> Result<(), DbError> {
        if by_stream.is_empty() {
            return Ok(());
        }
        let keys = self.redis.keys().clone();
        let mut pipe = redis::pipe();
        let mut sent: Vec<Vec<&Entry>> = Vec::new();
        let mut events: Vec<&Entry> = Vec::new();
        for (i, list) in by_stream {
            let (sku, stream) = &self.streams[*i];
            let (orders, acks): (Vec<&Entry>, Vec<&Entry>) =
                list.iter().partition(|e| e.kind.is_none());
            for chunk in orders.chunks(CONFIRM_CHUNK) {
                functions::confirm_batch_into(
                    &mut pipe,
                    &keys,
                    sku,
                    GROUP,
                    chunk.iter().map(|e| (e.order_id.as_str(), e.id.as_str())),
                );
                sent.push(chunk.to_vec());
            }
            // Event entries are not new orders: never fs_confirm_batch,
            // which would take the first one of an order not recorded yet
            // for the order itself (see "Event entries" above).
            if !acks.is_empty() {
                let cmd = pipe.cmd("XACK").arg(stream).arg(GROUP);
                for e in &acks {
                    cmd.arg(&e.id);
                }
                cmd.ignore();
                events.extend(acks);
            }
        }
        let results: Vec<Vec<i64>> = self.redis.on_link(link, &pipe).await?;
        for e in &events {
            let kind = e.kind.map_or("", |k| k.as_str());
            metrics::counter!("flashsale_worker_events_total", "kind" => kind).increment(1);
            tracing::debug!(order_id = %e.order_id, kind, "event entry acknowledged");
        }
        report.events += events.len();
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
        Ok(())
    }
}

/// Runs the workers of this process until `shutdown` completes: with one
/// master, one worker; in a cluster, one per shard (`make().on_shard(id)`),
/// each on its shard's master and its sales only, started as shards
/// appear (checked every second) and ended when theirs leaves. Each
/// finishes its step in hand on `shutdown`, as [`run`] does.
pub async fn run_all(redis: Redis, make: impl Fn() -> Worker, shutdown: impl Future<Output = ()>) {
    if !redis.is_cluster() {
        return run(make(), shutdown).await;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        tasks.retain(|_, t| !t.is_finished());
        for shard in redis.shards() {
            if tasks.contains_key(&shard.id) {
                continue;
            }
            let mut rx = stop_rx.clone();
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            tracing::info!(shard = shard.id, "worker for shard started");
            tasks.insert(
                shard.id,
                tokio::spawn(run(make().on_shard(shard.id), stopped)),
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    for (_, t) in tasks {
        let _ = t.await;
    }
}

/// Runs a worker until `shutdown` completes, then finishes the step in
/// hand (the batch it holds is confirmed and acknowledged) and returns.
/// The caller bounds how long that may take.
pub async fn run(mut worker: Worker, shutdown: impl Future<Output = ()>) {
    tracing::info!(consumer = worker.consumer(), "worker started");
    match (&worker.retention, worker.cfg.purge_needs_ledger) {
        (Some(r), _) => tracing::info!(
            purge_after_s = r.after().as_secs(),
            "ended sales are purged from Redis once settled, this long after their end"
        ),
        (None, true) => tracing::info!(
            "automatic purge off: without FLASHSALE_LEDGER_URL Redis holds the only copy of the \
             orders (FLASHSALE_WORKER_PURGE_WITHOUT_LEDGER=true purges them anyway)"
        ),
        (None, false) => tracing::info!("automatic purge off (FLASHSALE_WORKER_PURGE_AFTER_S=0)"),
    }
    let (batch, linger) = (worker.cfg.batch, worker.cfg.linger);
    let (shard, redis) = (worker.shard, worker.redis.clone());
    tokio::pin!(shutdown);
    let mut stopping = false;
    while !stopping {
        let result = {
            let step = worker.step();
            tokio::pin!(step);
            loop {
                tokio::select! {
                    r = &mut step => break r,
                    () = &mut shutdown, if !stopping => {
                        tracing::info!("stopping: finishing the batch in hand");
                        stopping = true;
                    }
                }
            }
        };
        if matches!(result, Err(DbError::LinkChanged))
            && let Some(id) = shard
            && !redis.shards().iter().any(|s| s.id == id)
        {
            // Its shard left the cluster (its slots moved to others): the
            // workers of those shards have its sales now.
            tracing::info!(shard = id, "shard gone; its worker stops");
            break;
        }
        let pause = match result {
            // A batch held for the ledger: the step paces its own retries.
            Ok(r) if r.held > 0 => Duration::ZERO,
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
        if !stopping && !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut shutdown => stopping = true,
            }
        }
    }
    if let Some(r) = worker.retention.as_mut() {
        r.finish().await;
    }
    metrics::gauge!("flashsale_worker_sales").decrement(worker.published_sales as f64);
    let held = worker.holding();
    if held > 0 {
        tracing::warn!(
            consumer = worker.consumer(),
            held,
            "stopping with entries the ledger has not taken: they stay pending, and another \
             worker takes them over once they are idle for --claim-idle-ms and the ledger answers"
        );
    }
    tracing::info!(consumer = worker.consumer(), "worker stopped");
}
