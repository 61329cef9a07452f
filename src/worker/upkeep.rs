//! The worker's upkeep, beside reading and confirming: finding new sales'
//! streams (and dropping purged ones), reclaiming idle entries and
//! dead-lettering poison ones, trimming, and the sweep that queues lost
//! orders again. Expiry is in `expiry.rs`, retiring ended sales in
//! `retire.rs`, purging them in `retention.rs`. Every call runs on
//! the one link of the step it belongs to (see the one-node rule in
//! `mod.rs`).

use std::time::Instant;

use redis::streams::{StreamAutoClaimReply, StreamPendingCountReply};

use super::{GROUP, StepReport, TRIM_CALLS, TRIM_SCAN, Worker};
use crate::redis::{DbError, MasterLink, functions};
use crate::sale::valid_sku;

impl Worker {
    /// Reads the sales index; joins the group on every new stream.
    pub(super) async fn discover(&mut self, link: &MasterLink, force: bool) -> Result<(), DbError> {
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
        // The index decides nothing about stream entries: it is read where
        // it lives (in a cluster, maybe another shard), not on `link`.
        let skus: Vec<String> = self.redis.read_master(&cmd).await?;
        // A sale purged (gone from the index) leaves this worker's work: its
        // stream is being removed, and reading it would create it again. In
        // a cluster, so does a sale whose slot moved to another shard: that
        // shard's worker takes it over.
        let before = self.streams.len() + self.retired.len();
        let skus: Vec<String> = skus
            .into_iter()
            .filter(|s| valid_sku(s) && self.owns(s))
            .collect();
        let indexed: std::collections::HashSet<&str> = skus.iter().map(String::as_str).collect();
        self.streams
            .retain(|(sku, _)| indexed.contains(sku.as_str()));
        self.retired
            .retain(|(sku, _)| indexed.contains(sku.as_str()));
        let after = self.streams.len() + self.retired.len();
        if after < before {
            tracing::info!(
                left = before - after,
                "purged (or moved) sales left the worker's streams"
            );
        }
        for sku in skus {
            // Known: worked on, retired (judged again in its turn), or
            // being purged (its stream must not be made again).
            if self
                .streams
                .iter()
                .chain(&self.retired)
                .any(|(s, _)| *s == sku)
                || self.retention.as_ref().is_some_and(|r| r.holds(&sku))
            {
                continue;
            }
            let stream = keys.stream(&sku);
            self.ensure_group(link, &stream).await?;
            self.streams.push((sku, stream));
            // A sale that moved here may hold entries this consumer read
            // on its old shard: read them back first.
            if self.shard.is_some() {
                self.own_pending = true;
            }
        }
        self.last_discover = Some(Instant::now());
        self.publish_sales();
        Ok(())
    }

    pub(super) async fn ensure_group(
        &self,
        link: &MasterLink,
        stream: &str,
    ) -> Result<(), DbError> {
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

    /// Takes over idle pending entries on `link`; dead-letters those
    /// delivered too often. `XAUTOCLAIM` resumes where the last one stopped
    /// (its cursor), so every idle entry is reached in turn.
    pub(super) async fn reclaim(
        &mut self,
        link: &MasterLink,
        report: &mut StepReport,
    ) -> Result<(), DbError> {
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
    /// needs or whose order is still queued). The backlog gauges are the
    /// probe's (`probe.rs`).
    pub(super) async fn trim(&mut self, link: &MasterLink) -> Result<(), DbError> {
        let keys = self.redis.keys().clone();
        for (sku, _) in &self.streams {
            for _ in 0..TRIM_CALLS {
                let (_trimmed, scanned): (i64, usize) = self
                    .redis
                    .on_link(link, &functions::trim_call(&keys, sku, TRIM_SCAN))
                    .await?;
                if scanned < TRIM_SCAN {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The self-healing sweep: for each sale whose queued orders outnumber
    /// the live entries carrying them on `link`'s node (`fs_lost`), scans
    /// its order records and queues again, with `fs_requeue`, every order
    /// still `queued` after `requeue_after` whose entry no worker will
    /// deliver any more. Idempotent, so any number of workers may sweep.
    pub(super) async fn sweep(
        &mut self,
        link: &MasterLink,
        report: &mut StepReport,
    ) -> Result<(), DbError> {
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
