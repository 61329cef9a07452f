//! The worker's side of the order ledger (see "The ledger" in `mod.rs`):
//! before a batch is confirmed, read its orders on the step's link (for
//! order entries and event entries alike), wait until the replicas hold
//! them, record them — and the ends of those that ended — in the ledger;
//! when the ledger does not answer, hold the batch — retry with backoff,
//! keep its entries from looking idle, read, reclaim and expire nothing —
//! until it does.
//!
//! **Fault hook, for the failover harness only** (never set in deploy):
//! `FLASHSALE_WORKER_FAULT=exit-after-ledger-commit[:N]` (N ≥ 1, default
//! 1), read once when the worker starts with a ledger, makes the worker
//! `std::process::abort()` right after its N-th ledger write that
//! committed and before that batch's `fs_confirm_batch`: the crash between
//! the two that "The ledger" in `mod.rs` says loses and doubles nothing
//! (the entries stay pending, their orders `queued` in Redis and already
//! in the ledger; whoever takes them over writes nothing new and confirms
//! them). `loadtest/src/bin/failover.rs` (scenario
//! `worker-killed-after-commit`) sets it and says so in its lines. Without
//! a ledger it does nothing; any other value is logged and ignored; an
//! armed hook is logged at start.

use std::time::{Duration, Instant};

use rand::Rng;

use super::entry::{Entry, ORDER_FIELDS, new_order, order_end};
use super::{GROUP, StepReport, Worker};
use crate::ledger::{Ledger, LedgerError, Record};
use crate::redis::{AckFault, DbError, MasterLink};

/// First pause after a failed ledger write; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A success this recent vouches for the ledger without a probe.
const FRESH: Duration = Duration::from_secs(1);

/// The fault hook's variable and value (see the module doc).
const FAULT_VAR: &str = "FLASHSALE_WORKER_FAULT";
const FAULT_EXIT_AFTER_COMMIT: &str = "exit-after-ledger-commit";

/// `Some(N)` when `value` arms the hook: exit after the N-th commit.
fn parse_fault(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix(FAULT_EXIT_AFTER_COMMIT)?;
    match rest.strip_prefix(':') {
        None if rest.is_empty() => Some(1),
        Some(n) => n.parse().ok().filter(|n| *n >= 1),
        None => None,
    }
}

/// The hook as this process's environment sets it, read once (at start).
fn fault_from_env() -> Option<u64> {
    let value = std::env::var(FAULT_VAR).ok()?;
    let nth = parse_fault(&value);
    match nth {
        Some(n) => tracing::warn!(
            nth = n,
            "{FAULT_VAR}: fault hook armed (a test harness's): this worker aborts right after \
             its ledger commit number {n}, before confirming that batch in Redis"
        ),
        None => tracing::error!(
            value,
            "{FAULT_VAR}: not `{FAULT_EXIT_AFTER_COMMIT}[:N]` with N >= 1; ignored"
        ),
    }
    nth
}

/// Entries of one batch by stream (index into `Worker::streams`).
pub(super) type ByStream = Vec<(usize, Vec<Entry>)>;

/// The ledger, and what this worker last saw of it.
pub(super) struct LedgerState {
    pub(super) ledger: Ledger,
    /// Since when it has not answered (`None`: it answers).
    down_since: Option<Instant>,
    last_ok: Option<Instant>,
    /// The fault hook: abort after this many commits (see the module doc).
    abort_after_commits: Option<u64>,
    commits: u64,
}

/// A batch whose orders are read and held by the replicas but not yet in
/// the ledger: it stays in hand, and nothing else is done, until the ledger
/// takes it.
pub(super) struct Held {
    /// The link it was read on: it is confirmed there or not at all.
    epoch: u64,
    /// Entries by sale (by sku, not by index into `Worker::streams`: the
    /// batch outlives the step, and the streams may change between steps).
    batch: Vec<(String, Vec<Entry>)>,
    records: Vec<Record>,
    next_try: Instant,
    backoff: Duration,
    next_touch: Instant,
}

impl Held {
    pub(super) fn entries(&self) -> usize {
        self.batch.iter().map(|(_, v)| v.len()).sum()
    }
}

impl LedgerState {
    pub(super) fn new(ledger: Ledger) -> Self {
        metrics::gauge!("flashsale_ledger_up").set(1.0);
        metrics::counter!("flashsale_ledger_errors_total").increment(0);
        metrics::counter!("flashsale_ledger_recorded_total").increment(0);
        metrics::counter!("flashsale_ledger_ended_total").increment(0);
        LedgerState {
            ledger,
            down_since: None,
            last_ok: Some(Instant::now()),
            abort_after_commits: fault_from_env(),
            commits: 0,
        }
    }

    /// A ledger write committed; the fault hook's moment (see the module
    /// doc): called before the batch is confirmed.
    fn committed(&mut self) {
        self.commits += 1;
        if self.abort_after_commits == Some(self.commits) {
            tracing::error!(
                commit = self.commits,
                "{FAULT_VAR}: aborting after this ledger commit, before confirming the batch"
            );
            std::process::abort();
        }
    }

    fn up(&mut self) {
        metrics::gauge!("flashsale_ledger_up").set(1.0);
        self.last_ok = Some(Instant::now());
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                ledger = self.ledger.describe(),
                down_s = since.elapsed().as_secs_f64(),
                "order ledger answers again; confirming what was held"
            );
        }
    }

    /// Counts a failure; logs once per outage.
    fn down(&mut self, e: &LedgerError, holding: usize) {
        metrics::counter!("flashsale_ledger_errors_total").increment(1);
        metrics::gauge!("flashsale_ledger_up").set(0.0);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!(
                ledger = self.ledger.describe(),
                error = %e,
                holding,
                "order ledger unavailable: holding the batch in hand unconfirmed, reading and \
                 reclaiming nothing until it answers (purchases go on; the streams buffer)"
            );
        } else {
            tracing::debug!(error = %e, "order ledger still unavailable");
        }
    }
}

impl Worker {
    pub(super) fn holding(&self) -> usize {
        self.held.as_ref().map_or(0, Held::entries)
    }

    /// The ledger stage of [`Worker::process`], on `link`: reads the order
    /// of every entry there (entries whose order is missing stay pending and
    /// are left out), waits until the replicas hold those orders, and
    /// records them. Returns the entries to confirm, or `None` when the
    /// ledger did not take them and the batch is now held.
    pub(super) async fn record_in_ledger(
        &mut self,
        link: &MasterLink,
        batch: ByStream,
        report: &mut StepReport,
    ) -> Result<Option<ByStream>, DbError> {
        let (batch, records) = self.read_orders(link, batch, report).await?;
        if records.is_empty() {
            return Ok(Some(batch));
        }
        // Only orders the replicas hold go to the ledger: one a failover
        // could still lose (its purchase not answered yet) must not be
        // recorded, or the ledger would keep an order Redis forgot.
        self.replicas_hold(link).await?;
        if self.held.is_some() {
            // The ledger failed moments ago in this same step (a reclaim
            // pass): add these to the batch in hand rather than try again.
            self.hold(link.epoch, batch, records);
            return Ok(None);
        }
        let Some(state) = self.ledger.as_mut() else {
            return Ok(Some(batch));
        };
        match state.ledger.record(&records).await {
            Ok(_) => {
                state.up();
                state.committed();
                Ok(Some(batch))
            }
            Err(e) => {
                let n = batch.iter().map(|(_, v)| v.len()).sum();
                state.down(&e, n);
                self.hold(link.epoch, batch, records);
                Ok(None)
            }
        }
    }

    fn hold(&mut self, epoch: u64, batch: ByStream, records: Vec<Record>) {
        let now = Instant::now();
        let batch: Vec<(String, Vec<Entry>)> = batch
            .into_iter()
            .map(|(i, list)| (self.streams[i].0.clone(), list))
            .collect();
        match &mut self.held {
            Some(h) => {
                h.batch.extend(batch);
                h.records.extend(records);
            }
            None => {
                self.held = Some(Held {
                    epoch,
                    batch,
                    records,
                    next_try: now + RETRY_FIRST,
                    backoff: RETRY_FIRST,
                    next_touch: now + self.touch_every(),
                });
            }
        }
    }

    /// How often held entries are claimed again by this consumer, well
    /// within `--claim-idle-ms`, so they never look idle to another worker.
    fn touch_every(&self) -> Duration {
        (self.cfg.claim_idle / 3).max(Duration::from_millis(10))
    }

    /// The order records of `batch`, read on `link` in one pipeline:
    /// the entries whose order exists (to be confirmed) and their records.
    async fn read_orders(
        &mut self,
        link: &MasterLink,
        batch: ByStream,
        report: &mut StepReport,
    ) -> Result<(ByStream, Vec<Record>), DbError> {
        let keys = self.redis.keys().clone();
        let mut pipe = redis::pipe();
        for (i, list) in &batch {
            let sku = &self.streams[*i].0;
            for e in list {
                pipe.cmd("HMGET")
                    .arg(keys.order(sku, &e.order_id))
                    .arg(&ORDER_FIELDS[..]);
            }
        }
        let replies: Vec<Vec<Option<String>>> = self.redis.on_link(link, &pipe).await?;
        let mut replies = replies.into_iter();
        let mut keep: ByStream = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        for (i, list) in batch {
            let sku = self.streams[i].0.clone();
            let mut found = Vec::with_capacity(list.len());
            for e in list {
                let fields = replies.next().unwrap_or_default();
                // The order as it is now: new to the ledger (nothing if it
                // is there already), and its end if it has ended — for an
                // order entry and an event entry alike, so whichever is
                // recorded first leaves the row in its final state.
                match new_order(&sku, &e, &fields).map(|o| (o, order_end(&e.order_id, &fields))) {
                    Some((o, Ok(end))) => {
                        records.push(Record::NewOrder(o));
                        records.extend(end);
                        found.push(e);
                    }
                    Some((_, Err(()))) => {
                        report.failed += 1;
                        tracing::warn!(order_id = %e.order_id, entry = %e.id, "order record ended without its end's fields; left pending, not recorded");
                    }
                    None => {
                        report.failed += 1;
                        tracing::warn!(order_id = %e.order_id, entry = %e.id, "order record missing; left pending, not recorded");
                    }
                }
            }
            if !found.is_empty() {
                keep.push((i, found));
            }
        }
        Ok((keep, records))
    }

    /// Waits until every replica that must acknowledge holds what `link`'s
    /// node holds now (the orders just read): one acknowledgement round,
    /// retried after a shortfall while the link lasts, up to the hold.
    async fn replicas_hold(&self, link: &MasterLink) -> Result<(), DbError> {
        let deadline = Instant::now() + self.redis.failover_wait();
        loop {
            match link.ack().await {
                Ok(()) => return Ok(()),
                Err(AckFault::Shortfall) if !link.is_stale() => {
                    if Instant::now() >= deadline {
                        return Err(DbError::Shortfall);
                    }
                }
                Err(AckFault::Full) => return Err(DbError::Full),
                Err(_) => return Err(DbError::LinkChanged),
            }
        }
    }

    /// Whether reclaiming (and so dead-lettering) may run: always without a
    /// ledger; with one, only while it answers — a recent success, or a
    /// probe now. Entries taken over while it is down could not be
    /// confirmed, and every takeover counts a delivery.
    pub(super) async fn ledger_answers(&mut self) -> bool {
        let holding = self.holding();
        let Some(state) = self.ledger.as_mut() else {
            return true;
        };
        if state.down_since.is_none() && state.last_ok.is_some_and(|t| t.elapsed() < FRESH) {
            return true;
        }
        match state.ledger.ping().await {
            Ok(()) => {
                state.up();
                true
            }
            Err(e) => {
                state.down(&e, holding);
                false
            }
        }
    }

    /// One turn with a batch in hand: waits until its next retry or touch,
    /// keeps its entries this consumer's (`XCLAIM … JUSTID`: idle time
    /// reset, delivery count unchanged), and tries the ledger again; once
    /// it takes the batch, confirms it on the link it was read on. A batch
    /// read on a link that has been replaced is dropped (the new master
    /// delivers those entries again).
    pub(super) async fn retry_held(
        &mut self,
        link: &MasterLink,
        report: &mut StepReport,
    ) -> Result<(), DbError> {
        let Some(held) = self.held.as_ref() else {
            return Ok(());
        };
        if held.epoch != link.epoch {
            tracing::warn!(
                entries = held.entries(),
                "master link changed while a batch was held for the ledger; dropping it (the new \
                 master delivers those entries again)"
            );
            self.held = None;
            return Ok(());
        }
        let wake = held.next_try.min(held.next_touch);
        tokio::time::sleep_until(wake.into()).await;
        if Instant::now() >= held.next_touch {
            self.touch_held(link).await?;
            let next = Instant::now() + self.touch_every();
            if let Some(h) = self.held.as_mut() {
                h.next_touch = next;
            }
        }
        let Some(held) = self.held.as_ref() else {
            return Ok(());
        };
        if Instant::now() < held.next_try {
            report.held = held.entries();
            return Ok(());
        }
        let Some(state) = self.ledger.as_mut() else {
            // No ledger (never happens: only a ledger holds): confirm.
            let held = self.held.take().expect("held");
            let batch = self.by_stream(held.batch);
            return self.confirm(link, &batch, report).await;
        };
        match state.ledger.record(&held.records).await {
            Ok(_) => {
                state.up();
                state.committed();
                let held = self.held.take().expect("held");
                let batch = self.by_stream(held.batch);
                self.confirm(link, &batch, report).await
            }
            Err(e) => {
                let n = held.entries();
                state.down(&e, n);
                let h = self.held.as_mut().expect("held");
                h.backoff = (h.backoff * 2).min(RETRY_MAX);
                let jitter = rand::rng().random_range(0.8..1.2);
                h.next_try = Instant::now() + h.backoff.mul_f64(jitter);
                report.held = n;
                Ok(())
            }
        }
    }

    /// A held batch by index into `streams` again; entries of a sale no
    /// longer there (never expected: a sale with pending entries is not
    /// purged) are left pending.
    fn by_stream(&self, batch: Vec<(String, Vec<Entry>)>) -> ByStream {
        let mut out = Vec::with_capacity(batch.len());
        for (sku, list) in batch {
            match self.streams.iter().position(|(s, _)| *s == sku) {
                Some(i) => out.push((i, list)),
                None => tracing::warn!(
                    sku,
                    entries = list.len(),
                    "a held batch's sale is no longer among the streams; its entries stay pending"
                ),
            }
        }
        out
    }

    /// Claims the held entries again for this consumer with `JUSTID`, which
    /// resets their idle time without counting a delivery: while this
    /// worker lives, no other takes them over (and raises their delivery
    /// count towards the dead letters) just because the ledger is down.
    async fn touch_held(&self, link: &MasterLink) -> Result<(), DbError> {
        let Some(held) = &self.held else {
            return Ok(());
        };
        let keys = self.redis.keys();
        let mut pipe = redis::pipe();
        for (sku, list) in &held.batch {
            if list.is_empty() {
                continue;
            }
            let cmd = pipe
                .cmd("XCLAIM")
                .arg(keys.stream(sku))
                .arg(GROUP)
                .arg(&self.cfg.consumer)
                .arg(0);
            for e in list {
                cmd.arg(&e.id);
            }
            cmd.arg("JUSTID").ignore();
        }
        let () = self.redis.on_link(link, &pipe).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_fault;

    #[test]
    fn the_fault_hook_reads_its_value() {
        assert_eq!(parse_fault("exit-after-ledger-commit"), Some(1));
        assert_eq!(parse_fault("exit-after-ledger-commit:7"), Some(7));
        assert_eq!(parse_fault(" exit-after-ledger-commit:2 "), Some(2));
        for bad in [
            "",
            "exit-after-ledger-commit:0",
            "exit-after-ledger-commit:",
            "exit-after-ledger-commit:x",
            "exit-after-ledger-commits",
            "exit",
        ] {
            assert_eq!(parse_fault(bad), None, "{bad:?}");
        }
    }
}
