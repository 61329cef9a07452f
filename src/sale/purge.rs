//! Purging an ended sale: every key of it removed from Redis (the sale, its
//! buyers, idempotency keys, orders, stream and dead letters) once nothing
//! of it is left to do, so Redis memory does not grow with every sale ever
//! run (Redis runs `noeviction`: a full master refuses purchases).
//!
//! [`purge`] is the one way a sale is purged: `flashsale sale purge` and
//! the workers' automatic purge (`--purge-after-s`) both call it. In order:
//! 1. the sale must have ended at least `min_ended` ago (`not_ended`);
//! 2. with the order ledger, every order a worker recorded must be there
//!    as it ended ([`compare_with_ledger`], [`LedgerCheck::purge_refusal`]:
//!    `not_in_ledger`, or `orders_pending` for orders no worker recorded);
//! 3. every order confirmed (`orders_pending`), none waiting for its
//!    payment (`payments_pending`), no dead letter (`dead_letters`: an
//!    operator has to look at them first);
//! 4. the sale leaves the sales index — the claim: no listing, worker or
//!    render finds it any more — then its keys go, its hash last, so a
//!    purge that was interrupted (a master switch mid-scan) is finished by
//!    running it again with [`Unlisted::Finish`].
//!
//! A refusal changes nothing. After the checks nothing of an ended sale
//! changes any more (purchases are refused, no order waits for a worker or
//! a payment). Order records are deleted: without a ledger, export them
//! first when Redis is their only copy.
//!
//! Any number of processes may purge the same sale at once. Every step is
//! idempotent (`ZREM`, `UNLINK`), so two purges never conflict; a caller
//! that passes [`Unlisted::Leave`] (the workers) leaves a sale that is no
//! longer in the index to whoever took it out, and gets
//! [`PurgeError::UnderWay`] — before the ledger comparison when it can
//! tell then, otherwise at the claim — instead of racing it.
//!
//! Must not touch keys of other sales or of the service (rate limits, the
//! acknowledgement counter): only `P:{sku}:*` and the sale's entry in the
//! sales index.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::catalog::Catalog;
use super::{Error, now_ms, rfc3339, valid_sku};
use crate::ledger::reconcile::{LedgerCheck, Reconcile};
use crate::ledger::{Ledger, LedgerError};
use crate::redis::{At, DbError, Redis};

/// What a purge removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub sku: String,
    /// Orders the sale had.
    pub orders: i64,
    /// Keys removed (the sale's hash included).
    pub keys: u64,
}

/// What [`purge`] does with a sale that is no longer in the sales index
/// (its hash still there): another purge took it out and is removing its
/// keys, or took it out and was interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlisted {
    /// Purge it anyway, finishing an interrupted purge (the operator's
    /// command; a worker retrying its own purge that failed midway).
    Finish,
    /// Leave it to the purge that took it out: [`PurgeError::UnderWay`].
    Leave,
}

/// Why a purge did not happen (or did not finish).
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// Refused, nothing changed. `code`: `not_ended`, `orders_pending`,
    /// `payments_pending`, `dead_letters`, `not_in_ledger`.
    #[error("{code}: {message}")]
    Refused { code: &'static str, message: String },
    /// No such sale: never created, or purged already.
    #[error("unknown sku")]
    UnknownSku,
    /// The sale has left the sales index: another purge is removing it
    /// (only with [`Unlisted::Leave`]).
    #[error("under_way: the sale has left the sales index; another purge is removing it")]
    UnderWay,
    /// Redis failed, or keys of the sale kept appearing: what was removed
    /// stays removed, and a purge with [`Unlisted::Finish`] finishes it.
    #[error("{0}")]
    Redis(Error),
    /// The ledger could not be read (nothing was removed).
    #[error("{0}")]
    Ledger(LedgerError),
}

impl PurgeError {
    /// The refusal's code, for a refusal.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            PurgeError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<Error> for PurgeError {
    fn from(e: Error) -> Self {
        match e {
            Error::UnknownSku => PurgeError::UnknownSku,
            Error::StateConflict { code, message } => PurgeError::Refused { code, message },
            e => PurgeError::Redis(e),
        }
    }
}

impl From<DbError> for PurgeError {
    fn from(e: DbError) -> Self {
        PurgeError::Redis(e.into())
    }
}

/// Why a comparison with the ledger failed.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{0}")]
    Redis(DbError),
    #[error("{0}")]
    Ledger(LedgerError),
}

impl From<CompareError> for PurgeError {
    fn from(e: CompareError) -> Self {
        match e {
            CompareError::Redis(e) => e.into(),
            CompareError::Ledger(e) => PurgeError::Ledger(e),
        }
    }
}

/// Keys removed per `UNLINK`.
const UNLINK_CHUNK: usize = 500;
/// Order keys read per `SCAN` step, and records per `HGETALL` pipeline.
const SCAN_BATCH: usize = 1000;

/// Purges `sku` (see the module doc): the checks, with `ledger` when one is
/// configured, then the removal. `min_ended`: how long after its end.
pub async fn purge(
    catalog: &Catalog,
    ledger: Option<&Ledger>,
    sku: &str,
    min_ended: Duration,
    unlisted: Unlisted,
) -> Result<Purged, PurgeError> {
    let started = Instant::now();
    if !valid_sku(sku) {
        return Err(PurgeError::UnknownSku);
    }
    let sale = catalog.get_fresh(sku).await?;
    let purgeable_from = sale.ends_ms.saturating_add(min_ended.as_millis() as i64);
    if now_ms() < purgeable_from {
        return Err(PurgeError::Refused {
            code: "not_ended",
            message: format!(
                "the sale can be purged from {} (its end plus {} s)",
                rfc3339(purgeable_from),
                min_ended.as_secs()
            ),
        });
    }
    let redis = catalog.redis();
    if unlisted == Unlisted::Leave && !listed(redis, sku).await? {
        return Err(PurgeError::UnderWay);
    }
    if let Some(ledger) = ledger {
        let check = compare_with_ledger(redis, ledger, sku).await?;
        match check.purge_refusal() {
            None => {}
            Some(("not_in_ledger", message)) => {
                return Err(PurgeError::Refused {
                    code: "not_in_ledger",
                    message: format!(
                        "{message}; `flashsale audit --sku {sku}` with the ledger lists them"
                    ),
                });
            }
            Some((code, message)) => return Err(PurgeError::Refused { code, message }),
        }
    }
    let orders = catalog.purge_checks(sku).await?;
    let keys = catalog.remove_sale(sku, unlisted).await?;
    tracing::info!(
        sku,
        orders,
        keys,
        took_ms = started.elapsed().as_millis() as u64,
        "sale purged"
    );
    Ok(Purged {
        sku: sku.to_owned(),
        orders,
        keys,
    })
}

/// Whether the sale is in the sales index (read on the master).
async fn listed(redis: &Redis, sku: &str) -> Result<bool, DbError> {
    let mut zscore = redis::cmd("ZSCORE");
    zscore.arg(redis.keys().sales_index()).arg(sku);
    let score: Option<String> = redis.read_master(&zscore).await?;
    Ok(score.is_some())
}

/// A sale's orders in Redis compared with its rows in the ledger
/// (`ledger::reconcile`): every order record read on the master (`SCAN
/// MATCH` of the sale's order keys, `HGETALL` in pipelines of up to 1000),
/// then the ledger's rows, then the rows that did not match read from Redis
/// again. Holds the sale's orders in memory while it runs. `flashsale
/// audit` with the ledger and every purge with one use it.
pub async fn compare_with_ledger(
    redis: &Redis,
    ledger: &Ledger,
    sku: &str,
) -> Result<LedgerCheck, CompareError> {
    let keys = redis.keys();
    let key_of = |id: &str| keys.order(sku, id);
    let key_prefix = key_of("");
    let pattern = key_of("*");
    let mut reconcile = Reconcile::new();
    let mut cursor = 0u64;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH);
        // SCAN names no key: it runs where the sale's keys are.
        let (next, found): (u64, Vec<String>) = redis
            .read_master(&At {
                key: &pattern,
                cmd: &scan,
            })
            .await
            .map_err(CompareError::Redis)?;
        let ids: Vec<&str> = found
            .iter()
            .filter_map(|k| k.strip_prefix(key_prefix.as_str()))
            .collect();
        for (id, hash) in read_orders(redis, &ids, &key_of).await? {
            reconcile.add_redis(id, &hash);
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    reconcile
        .read_ledger(ledger, sku)
        .await
        .map_err(CompareError::Ledger)?;
    let again = reconcile.to_recheck();
    for chunk in again.chunks(SCAN_BATCH) {
        let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for (id, hash) in read_orders(redis, &ids, &key_of).await? {
            reconcile.refresh(id, &hash);
        }
    }
    Ok(reconcile.finish())
}

/// `HGETALL` of each order, one pipeline, on the master.
async fn read_orders<'a>(
    redis: &Redis,
    ids: &[&'a str],
    key_of: &(dyn Fn(&str) -> String + Sync),
) -> Result<Vec<(&'a str, HashMap<String, String>)>, CompareError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL").arg(key_of(id));
    }
    let hashes: Vec<HashMap<String, String>> = redis
        .read_master(&pipe)
        .await
        .map_err(CompareError::Redis)?;
    Ok(ids.iter().copied().zip(hashes).collect())
}

impl Catalog {
    /// Step 3 of [`purge`]: every order confirmed, none waiting for its
    /// payment, no dead letter. The number of orders the sale had.
    async fn purge_checks(&self, sku: &str) -> Result<i64, Error> {
        let audit = self.audit(sku).await?;
        if audit.pending > 0 {
            return Err(Error::StateConflict {
                code: "orders_pending",
                message: format!(
                    "{} orders are not confirmed yet; is a worker running?",
                    audit.pending
                ),
            });
        }
        let mut waiting = redis::cmd("ZCARD");
        waiting.arg(self.redis().keys().pay_by(sku));
        let waiting: i64 = self.redis().read_master(&waiting).await?;
        if waiting > 0 {
            return Err(Error::StateConflict {
                code: "payments_pending",
                message: format!(
                    "{waiting} orders still wait for their payment; workers expire them at their deadline"
                ),
            });
        }
        if audit.dead > 0 {
            return Err(Error::StateConflict {
                code: "dead_letters",
                message: format!(
                    "{} dead letters; look at them with `flashsale dead-letters list --sku {sku}` first",
                    audit.dead
                ),
            });
        }
        Ok(audit.counts.orders)
    }

    /// Step 4 of [`purge`]: the claim (out of the sales index), then every
    /// key of the sale, its hash last. The number of keys removed.
    async fn remove_sale(&self, sku: &str, unlisted: Unlisted) -> Result<u64, PurgeError> {
        let keys = self.redis().keys().clone();
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(keys.sales_index()).arg(sku);
        let took: i64 = self.redis().write(&zrem).await?;
        self.invalidate();
        if took == 0 && unlisted == Unlisted::Leave {
            return Err(PurgeError::UnderWay);
        }

        let sale_key = keys.sale(sku);
        let pattern = keys.sale_pattern(sku);
        let mut removed = 0u64;
        // Until a whole scan finds nothing but the sale's hash. A worker
        // that has not yet seen the sale leave the index (it reads the index
        // every second) may create the stream again once: the next pass
        // removes it.
        for pass in 0.. {
            if pass > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if pass == 40 {
                return Err(PurgeError::Redis(Error::StateConflict {
                    code: "purge_raced",
                    message: "purge_raced: keys of the sale keep appearing; is a process still \
                              writing to it? Run the purge again"
                        .into(),
                }));
            }
            let mut found_other = false;
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, found): (u64, Vec<String>) = self
                    .redis()
                    .read_master(&At {
                        key: &sale_key,
                        cmd: &scan,
                    })
                    .await?;
                let doomed: Vec<&String> = found.iter().filter(|k| **k != sale_key).collect();
                for chunk in doomed.chunks(UNLINK_CHUNK) {
                    found_other = true;
                    let mut unlink = redis::cmd("UNLINK");
                    for k in chunk {
                        unlink.arg(k.as_str());
                    }
                    let n: u64 = self.redis().write(&unlink).await?;
                    removed += n;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            if !found_other {
                break;
            }
        }
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(&sale_key);
        let n: u64 = self.redis().write(&unlink).await?;
        removed += n;
        self.invalidate();
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_code_and_other_failures_are_told_apart() {
        let e = PurgeError::from(Error::StateConflict {
            code: "dead_letters",
            message: "2 dead letters".into(),
        });
        assert_eq!(e.refusal(), Some("dead_letters"));
        assert_eq!(e.to_string(), "dead_letters: 2 dead letters");
        assert!(matches!(
            PurgeError::from(Error::UnknownSku),
            PurgeError::UnknownSku
        ));
        let e = PurgeError::from(DbError::NoMaster);
        assert!(matches!(e, PurgeError::Redis(Error::Unavailable(_))), "{e}");
        assert_eq!(e.refusal(), None);
        assert_eq!(PurgeError::UnderWay.refusal(), None);
    }
}
