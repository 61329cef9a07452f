//! Purging an ended sale: every key of it removed from Redis (the sale, its
//! buyers, idempotency keys, orders, stream and dead letters) once nothing
//! of it is left to do, so Redis memory does not grow with every sale ever
//! run (Redis runs `noeviction`: a full master refuses purchases).
//!
//! Refused, changing nothing, while the sale has not ended at least
//! `min_ended` ago, while an order is not confirmed (the worker still has
//! work), while an order waits for its payment, or while its dead-letter
//! stream holds entries (an operator has to
//! look at them first). The sale leaves the sales index first, so no
//! listing, worker or render finds it any more, and its hash goes last, so
//! a purge that was interrupted (a master switch mid-scan) is finished by
//! running it again. Order records are deleted: export them first when
//! Redis is their only copy.
//!
//! Must not touch keys of other sales or of the service (rate limits, the
//! acknowledgement counter): only `P:{sku}:*`.

use std::time::Duration;

use super::catalog::Catalog;
use super::{Error, now_ms, rfc3339, valid_sku};

/// What a purge removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub sku: String,
    /// Orders the sale had.
    pub orders: i64,
    /// Keys removed (the sale's hash included).
    pub keys: u64,
}

/// Keys removed per `UNLINK`.
const UNLINK_CHUNK: usize = 500;

impl Catalog {
    /// Removes every key of an ended, finished sale (see the module doc).
    pub async fn purge(&self, sku: &str, min_ended: Duration) -> Result<Purged, Error> {
        if !valid_sku(sku) {
            return Err(Error::UnknownSku);
        }
        let sale = self.get_fresh(sku).await?;
        let purgeable_from = sale.ends_ms.saturating_add(min_ended.as_millis() as i64);
        if now_ms() < purgeable_from {
            return Err(Error::StateConflict {
                code: "not_ended",
                message: format!(
                    "the sale can be purged from {} (its end plus {} s)",
                    rfc3339(purgeable_from),
                    min_ended.as_secs()
                ),
            });
        }
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

        let keys = self.redis().keys().clone();
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(keys.sales_index()).arg(sku);
        let _: i64 = self.redis().write(&zrem).await?;
        self.invalidate();

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
                return Err(Error::StateConflict {
                    code: "purge_raced",
                    message: "keys of the sale keep appearing; is a process still writing to it?"
                        .into(),
                });
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
                let (next, found): (u64, Vec<String>) = self.redis().read_master(&scan).await?;
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
        tracing::info!(
            sku,
            orders = audit.counts.orders,
            keys = removed,
            "sale purged"
        );
        Ok(Purged {
            sku: sku.to_owned(),
            orders: audit.counts.orders,
            keys: removed,
        })
    }
}
