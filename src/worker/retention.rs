//! Automatic purge of ended sales (`--purge-after-s`): Redis memory does
//! not grow with every sale ever run.
//!
//! Every `--sweep-ms` the step looks at its retired sales (ended, every
//! order recorded, nothing pending: `retire.rs`) and hands those whose end
//! lies `--purge-after-s` in the past (this process's clock, the one the
//! purge's own check uses) to a purge task of their own, so confirming the
//! orders of live sales never waits for a purge. The task purges them one
//! by one, in random order, through `sale::purge::purge` — the code path of
//! `flashsale sale purge`, checks and all: refused while an order is not
//! confirmed, waits for its payment, a dead letter waits, and, with the
//! ledger, until every recorded order is in the ledger as it ended. One
//! task at a time per worker; nothing while the ledger does not answer (the
//! comparison needs it) or a batch is held for it.
//!
//! Sales handed to the task leave the retired list and are known to the
//! discovery meanwhile (it neither picks them up again nor recreates their
//! stream). What becomes of each:
//! - purged (one log line from the purge: sku, orders, keys;
//!   `flashsale_worker_purged_total`), gone (purged by someone else), or
//!   being purged by another process (`Unlisted::Leave`: another worker
//!   took it out of the index first; left to it, logged at debug): done;
//! - refused: back among the retired sales, looked at again after one
//!   sweep, then two, four, … up to [`MAX_BACKOFF_SWEEPS`] (a `not_in_ledger`
//!   comparison reads every order of the sale); the first refusal of a sale
//!   is logged (warn for `dead_letters` and `not_in_ledger`, which need an
//!   operator), later ones at debug;
//! - Redis failed midway (a master switch): purged again next pass with
//!   `Unlisted::Finish`, which finishes a purge this worker started;
//! - the ledger failed: back among the retired, and nothing more this pass.
//!
//! A purge runs on the master of the moment (`Redis::read_master`,
//! `Redis::write`), not on the step's link: it reads and removes keys of a
//! sale on which nothing changes any more, so the one-node rule (entry ids
//! of one node used on another) does not concern it. A worker killed
//! (not stopped: a stop waits for the sale in hand) between a purge's claim
//! and its last key leaves the rest of that sale out of the index, where no
//! worker looks: `flashsale sale purge --sku` finishes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::task::JoinHandle;

use super::Worker;
use crate::ledger::Ledger;
use crate::redis::{DbError, MasterLink, Redis};
use crate::sale::purge::{self, PurgeError, Unlisted};
use crate::sale::{Catalog, now_ms};

/// A refused sale waits at most this many sweeps before the next look.
pub const MAX_BACKOFF_SWEEPS: u32 = 64;

/// What became of one sale handed to the purge task.
#[derive(Debug)]
enum Outcome {
    Purged,
    /// Purged already, or being purged by another process.
    Gone,
    Refused {
        code: &'static str,
        message: String,
    },
    /// Redis failed midway; purge it again, finishing.
    Failed(String),
    /// The ledger failed; nothing changed.
    LedgerDown(String),
    /// Not tried (the ledger failed on an earlier one, or the worker stops).
    Skipped,
}

/// When a refused sale is looked at again.
struct Backoff {
    next: Instant,
    sweeps: u32,
}

/// The automatic purge's state in one worker.
pub(super) struct Retention {
    after: Duration,
    catalog: Arc<Catalog>,
    ledger: Option<Ledger>,
    task: Option<JoinHandle<Vec<(String, Outcome)>>>,
    /// Sales handed to the task.
    purging: HashSet<String>,
    /// Sales whose purge failed midway: purged again, finishing it.
    unfinished: HashSet<String>,
    refused: HashMap<String, Backoff>,
    /// The end of each retired sale, read once (an ended sale's window
    /// cannot change).
    ends: HashMap<String, i64>,
    last_pass: Option<Instant>,
    ledger_down: bool,
    stop: Arc<AtomicBool>,
}

impl Retention {
    pub(super) fn new(redis: Redis, after: Duration) -> Self {
        metrics::counter!("flashsale_worker_purged_total").increment(0);
        Retention {
            after,
            catalog: Arc::new(Catalog::new(redis, Duration::ZERO)),
            ledger: None,
            task: None,
            purging: HashSet::new(),
            unfinished: HashSet::new(),
            refused: HashMap::new(),
            ends: HashMap::new(),
            last_pass: None,
            ledger_down: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn with_ledger(&mut self, ledger: Ledger) {
        self.ledger = Some(ledger);
    }

    pub(super) fn after(&self) -> Duration {
        self.after
    }

    /// Whether `sku` is in the purge's hands (discovery leaves it alone).
    pub(super) fn holds(&self, sku: &str) -> bool {
        self.purging.contains(sku) || self.unfinished.contains(sku)
    }

    /// Waits for the sale in hand to be purged (the others are skipped):
    /// a purge stopped between its claim and its last key would leave the
    /// rest of the sale where no worker looks.
    pub(super) async fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            tracing::info!("stopping: finishing the purge in hand");
            let _ = task.await;
        }
    }
}

/// Purges `sales` one by one (see the module doc).
async fn purge_all(
    catalog: Arc<Catalog>,
    ledger: Option<Ledger>,
    after: Duration,
    sales: Vec<(String, Unlisted)>,
    stop: Arc<AtomicBool>,
) -> Vec<(String, Outcome)> {
    let mut out = Vec::with_capacity(sales.len());
    let mut skip = false;
    for (sku, unlisted) in sales {
        if skip || stop.load(Ordering::Relaxed) {
            out.push((sku, Outcome::Skipped));
            continue;
        }
        let outcome = match purge::purge(&catalog, ledger.as_ref(), &sku, after, unlisted).await {
            Ok(_) => {
                metrics::counter!("flashsale_worker_purged_total").increment(1);
                Outcome::Purged
            }
            Err(PurgeError::UnknownSku) => {
                tracing::debug!(sku, "sale already purged");
                Outcome::Gone
            }
            Err(PurgeError::UnderWay) => {
                tracing::debug!(sku, "sale being purged by another process; left to it");
                Outcome::Gone
            }
            Err(PurgeError::Refused { code, message }) => Outcome::Refused { code, message },
            Err(PurgeError::Redis(e)) => Outcome::Failed(e.to_string()),
            Err(PurgeError::Ledger(e)) => {
                skip = true;
                Outcome::LedgerDown(e.to_string())
            }
        };
        out.push((sku, outcome));
    }
    out
}

impl Worker {
    /// The step's part of the automatic purge (see the module doc): takes
    /// in what the last task did, and every `--sweep-ms`, with no task
    /// running, hands the retired sales that are due to a new one.
    pub(super) async fn retention_pass(&mut self, link: &MasterLink) -> Result<(), DbError> {
        let Some(r) = self.retention.as_mut() else {
            return Ok(());
        };
        if r.task.as_ref().is_some_and(JoinHandle::is_finished) {
            let outcomes = match r.task.take() {
                Some(task) => task.await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "purge task failed");
                    Vec::new()
                }),
                None => Vec::new(),
            };
            self.take_outcomes(outcomes);
        }
        let every = self.cfg.sweep_every;
        let Some(r) = self.retention.as_mut() else {
            return Ok(());
        };
        if r.task.is_some() || r.last_pass.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        r.last_pass = Some(Instant::now());
        // Forget sales no longer ours (purged by another process, dropped
        // by the discovery).
        let retired = &self.retired;
        let ours = |sku: &String| {
            retired.iter().any(|(s, _)| s == sku)
                || r.purging.contains(sku)
                || r.unfinished.contains(sku)
        };
        r.ends.retain(|sku, _| ours(sku));
        r.refused.retain(|sku, _| ours(sku));
        let now = Instant::now();
        let candidates: Vec<String> = self
            .retired
            .iter()
            .map(|(sku, _)| sku)
            .filter(|sku| r.refused.get(*sku).is_none_or(|b| b.next <= now))
            .cloned()
            .collect();
        // The end of each candidate not known yet, on the step's link.
        let unknown: Vec<&String> = candidates
            .iter()
            .filter(|s| !r.ends.contains_key(*s))
            .collect();
        if !unknown.is_empty() {
            let keys = self.redis.keys();
            let mut pipe = redis::pipe();
            for sku in &unknown {
                pipe.cmd("HGET").arg(keys.sale(sku)).arg("ends_ms");
            }
            let ends: Vec<Option<i64>> = self.redis.on_link(link, &pipe).await?;
            for (sku, end) in unknown.into_iter().zip(ends) {
                // No hash: purged meanwhile; the discovery drops it.
                if let Some(end) = end {
                    r.ends.insert(sku.clone(), end);
                }
            }
        }
        let due_from = now_ms().saturating_sub(r.after.as_millis() as i64);
        let due: Vec<String> = candidates
            .into_iter()
            .filter(|s| r.ends.get(s).is_some_and(|end| *end <= due_from))
            .collect();
        if due.is_empty() && r.unfinished.is_empty() {
            return Ok(());
        }
        // Not while the ledger does not answer: the comparison needs it.
        let answers = self.ledger.is_none() || self.ledger_answers().await;
        let Some(r) = self.retention.as_mut() else {
            return Ok(());
        };
        if !answers {
            if !r.ledger_down {
                r.ledger_down = true;
                tracing::warn!("order ledger unavailable: no sale is purged until it answers");
            }
            return Ok(());
        }
        r.ledger_down = false;
        let mut sales: Vec<(String, Unlisted)> =
            due.into_iter().map(|s| (s, Unlisted::Leave)).collect();
        sales.extend(r.unfinished.drain().map(|s| (s, Unlisted::Finish)));
        // Workers that find the same sales due start on different ones.
        sales.shuffle(&mut rand::rng());
        for (sku, _) in &sales {
            r.purging.insert(sku.clone());
        }
        self.retired.retain(|(s, _)| !r.purging.contains(s));
        tracing::debug!(sales = sales.len(), "purging ended sales");
        r.task = Some(tokio::spawn(purge_all(
            r.catalog.clone(),
            r.ledger.clone(),
            r.after,
            sales,
            r.stop.clone(),
        )));
        self.publish_sales();
        Ok(())
    }

    /// What the purge task did with each sale it was handed.
    fn take_outcomes(&mut self, outcomes: Vec<(String, Outcome)>) {
        let sweep = self.cfg.sweep_every;
        let keys = self.redis.keys().clone();
        let Some(r) = self.retention.as_mut() else {
            return;
        };
        for (sku, outcome) in outcomes {
            r.purging.remove(&sku);
            let back = match outcome {
                Outcome::Purged | Outcome::Gone => {
                    r.refused.remove(&sku);
                    r.ends.remove(&sku);
                    false
                }
                Outcome::Refused { code, message } => {
                    let first = !r.refused.contains_key(&sku);
                    let b = r.refused.entry(sku.clone()).or_insert(Backoff {
                        next: Instant::now(),
                        sweeps: 0,
                    });
                    b.sweeps = (b.sweeps * 2).clamp(1, MAX_BACKOFF_SWEEPS);
                    b.next = Instant::now() + sweep * b.sweeps;
                    let again_s = (sweep * b.sweeps).as_secs();
                    match (first, code) {
                        (true, "dead_letters" | "not_in_ledger") => {
                            tracing::warn!(sku, code, why = %message, again_s, "sale not purged");
                        }
                        (true, _) => {
                            tracing::info!(sku, code, why = %message, again_s, "sale not purged yet")
                        }
                        (false, _) => {
                            tracing::debug!(sku, code, why = %message, again_s, "sale not purged yet")
                        }
                    }
                    true
                }
                Outcome::Failed(error) => {
                    tracing::warn!(sku, %error, "purge failed midway; finishing it next pass");
                    r.unfinished.insert(sku.clone());
                    false
                }
                Outcome::LedgerDown(error) => {
                    if !r.ledger_down {
                        r.ledger_down = true;
                        tracing::warn!(sku, %error, "order ledger unavailable: no sale is purged until it answers");
                    }
                    true
                }
                Outcome::Skipped => true,
            };
            // Back among the retired: judged again in its turn (a sale no
            // longer in the index is dropped by the next discovery).
            if back && !self.retired.iter().any(|(s, _)| *s == sku) {
                let stream = keys.stream(&sku);
                self.retired.push((sku, stream));
            }
        }
        // A task that ended without a word on some (it panicked): purged
        // again, finishing whatever it did.
        let unreported: Vec<String> = r.purging.drain().collect();
        if !unreported.is_empty() {
            tracing::error!(
                sales = unreported.len(),
                "the purge task ended early; its sales are purged again next pass"
            );
            r.unfinished.extend(unreported);
        }
    }
}
