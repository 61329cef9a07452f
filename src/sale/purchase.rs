//! The purchase: one `FCALL fs_purchase` on the master, then a group-committed
//! `WAIT` before anything is promised.
//!
//! The server makes the order id (`<sku>.<uuid>`) before the call, so a
//! purchase can be retried blindly: after a lost reply, a stale master or a
//! WAIT shortfall it runs the Function again (on the new master if there is
//! one) and the Function answers `exists` when this very order is already
//! there. Retries stop at the failover wait; then the answer is 503 and the
//! shopper's own retry (same `Idempotency-Key`) is just as safe.
//!
//! A sale that the Function reported sold out — and whose state the replicas
//! acknowledged — is remembered in the [`SoldOutIndex`]: later purchases are
//! answered without a Redis call (410, or 409 with the order id of a shopper
//! who holds the limit).
//!
//! The rule for that local answer, given that an operator may pause, resume
//! or end a sale on any instance: the index is consulted together with this
//! instance's catalog snapshot of the sale (at most the catalog's staleness
//! bound old, refreshed by the very lookup the local answer makes, so well
//! under a second):
//! - snapshot says paused: no local answer; the Function decides (423
//!   `paused`, or 409 for a retry), so a pause wins on every instance
//!   within the staleness bound, and a paused sold-out sale answers 423;
//! - snapshot says ended (this clock at or past `ends_at`, which an
//!   operator's end sets to the server's now): 410 `ended` (409 for a
//!   shopper who holds the limit);
//! - otherwise the sold-out answer above. A resumed sale is exactly as
//!   sold out as before its pause, so 410 `sold_out` stays true after a
//!   resume. Units come back only when an order expires or is cancelled,
//!   which raises the sale's `returned` counter: a snapshot whose
//!   `returned` is above the one seen when the sale was learned sold out
//!   withdraws the local answer (on this instance at once after its own
//!   cancel, on the others within the staleness bound).
//! - no snapshot (the catalog cannot be read): no local answer.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::{Error, MAX_QTY, Shop};
use crate::redis::functions::PurchaseReply;

/// A purchase that was accepted: the order exists and the replicas hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchased {
    pub order_id: String,
    pub stock_left: Option<i64>,
}

/// What this process knows about sales that sold out.
#[derive(Default)]
pub struct SoldOutIndex {
    sales: ArcSwap<HashMap<String, Arc<SoldOutSale>>>,
    loading: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Buyers of a sold-out sale: user id → (units held, first order id).
pub struct SoldOutSale {
    per_user_limit: i64,
    buyers: HashMap<String, (i64, String)>,
    /// The sale's `returned` when it was learned sold out.
    returned: i64,
}

impl SoldOutIndex {
    pub fn get(&self, sku: &str) -> Option<Arc<SoldOutSale>> {
        self.sales.load().get(sku).cloned()
    }

    fn insert(&self, sku: &str, sale: SoldOutSale) {
        let sale = Arc::new(sale);
        self.sales.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(sku.to_owned(), sale.clone());
            m
        });
    }

    pub fn contains(&self, sku: &str) -> bool {
        self.sales.load().contains_key(sku)
    }

    /// Withdraws the local answer of `sku` (units came back to it).
    pub fn forget(&self, sku: &str) {
        if self.contains(sku) {
            self.sales.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.remove(sku);
                m
            });
            tracing::info!(sku, "units back in a sold-out sale; asking Redis again");
        }
    }

    /// True for the one caller that should load the sale's buyers.
    fn begin_loading(&self, sku: &str) -> bool {
        !self.contains(sku)
            && self
                .loading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sku.to_owned())
    }

    fn end_loading(&self, sku: &str) {
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sku);
    }
}

/// The domain's answer to what the Function said (after acknowledgement
/// where one was needed).
fn outcome(reply: PurchaseReply) -> Result<Option<i64>, Error> {
    match reply {
        PurchaseReply::Created { stock_left } => Ok(Some(stock_left)),
        PurchaseReply::Exists => Ok(None),
        PurchaseReply::Already { order_id } => Err(Error::AlreadyPurchased { order_id }),
        PurchaseReply::SoldOut => Err(Error::SoldOut),
        PurchaseReply::UnknownSku => Err(Error::UnknownSku),
        PurchaseReply::InvalidQty { limit, stock_left } => Err(Error::InvalidQty(format!(
            "qty must be between 1 and the per-shopper limit of {limit}, and at most the {stock_left} units left"
        ))),
        PurchaseReply::NotStarted { starts_ms } => Err(Error::NotStarted { starts_ms }),
        PurchaseReply::Ended => Err(Error::Ended),
        PurchaseReply::Paused => Err(Error::Paused),
    }
}

/// What the local answer of a sold-out sale may be, by the catalog
/// snapshot's view of it.
#[derive(Debug)]
enum LocalRule {
    /// The Function decides (a paused sale).
    AskRedis,
    /// Refuse with this error (shoppers holding the limit get their 409).
    Refuse(Error),
}

fn local_rule(paused: bool, ended: bool) -> LocalRule {
    if ended {
        LocalRule::Refuse(Error::Ended)
    } else if paused {
        LocalRule::AskRedis
    } else {
        LocalRule::Refuse(Error::SoldOut)
    }
}

impl Shop {
    /// Buys `qty` units of `sku` for `user` in Redis. Inputs must be
    /// validated (`valid_sku`, `valid_user`, `valid_idempotency_key`,
    /// 1 ≤ qty ≤ MAX_QTY; the Function checks them again), and the caller
    /// asks [`Shop::answer_locally`] first — once per request, before it
    /// spends anything else (a rate-limit token) on one that needs no Redis.
    pub async fn purchase(
        &self,
        sku: &str,
        user: &str,
        qty: i64,
        idempotency_key: Option<&str>,
    ) -> Result<Purchased, Error> {
        debug_assert!((1..=MAX_QTY).contains(&qty));

        let keys = self.redis.keys();
        // A version-4 UUID from the thread-local CSPRNG (`Uuid::new_v4`
        // without uuid's `fast-rng` makes a getrandom syscall per call).
        let order_id = format!(
            "{sku}.{}",
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
        );
        let cmd = crate::redis::functions::purchase_call_within(
            keys,
            sku,
            user,
            qty,
            &order_id,
            idempotency_key,
            self.pay_within,
        );

        let deadline = Instant::now() + self.redis.failover_wait();
        // A refusal that changed nothing needs no acknowledgement; anything
        // else is a promise (or, for sold out, a state we are about to
        // remember): only after the replicas hold it.
        let reply: PurchaseReply = self
            .redis
            .write_acked_when(&cmd, deadline, PurchaseReply::needs_ack)
            .await?;
        if reply == PurchaseReply::SoldOut && self.sold_out.begin_loading(sku) {
            let shop = self.clone();
            let sku = sku.to_owned();
            tokio::spawn(async move {
                shop.remember_sold_out(&sku).await;
                shop.sold_out.end_loading(&sku);
            });
        }
        let stock_left = outcome(reply)?;
        Ok(Purchased {
            order_id,
            stock_left,
        })
    }

    /// The answer for a sale this process knows is sold out, without Redis:
    /// 410, or 409 with the order id of a shopper who holds the limit. `None`
    /// when Redis must decide (see the module doc for the rule with paused
    /// and ended sales).
    pub async fn answer_locally(
        &self,
        sku: &str,
        user: &str,
        idempotency_key: Option<&str>,
    ) -> Option<Error> {
        let gone = self.sold_out.get(sku)?;
        let sale = self.catalog.get(sku).await.ok()?;
        if sale.returned > gone.returned {
            self.sold_out.forget(sku);
            return None;
        }
        let refusal = match local_rule(sale.paused, super::now_ms() >= sale.ends_ms) {
            LocalRule::AskRedis => return None,
            LocalRule::Refuse(e) => e,
        };
        match gone.buyers.get(user) {
            Some((units, order_id)) if *units >= gone.per_user_limit => {
                Some(Error::AlreadyPurchased {
                    order_id: order_id.clone(),
                })
            }
            // A buyer's retry with a key may map to an order: ask Redis.
            Some(_) if idempotency_key.is_some() => None,
            _ => Some(refusal),
        }
    }

    /// Loads the buyers of a sale that sold out (its state is acknowledged)
    /// so later purchases need no Redis call. Failure only means the fast
    /// path stays off for now.
    async fn remember_sold_out(&self, sku: &str) {
        let keys = self.redis.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(keys.sale(sku))
            .arg("per_user_limit")
            .arg("stock_left")
            .arg("returned")
            .cmd("HGETALL")
            .arg(keys.units(sku))
            .cmd("HGETALL")
            .arg(keys.first(sku));
        type Buyers = (
            (i64, i64, Option<i64>),
            HashMap<String, i64>,
            HashMap<String, String>,
        );
        let loaded: Result<Buyers, _> = self.redis.read_master(&pipe).await;
        match loaded {
            Ok(((_, stock_left, _), _, _)) if stock_left > 0 => {
                // Units came back between the sold-out answer and this read.
            }
            Ok(((limit, _, returned), units, mut first)) => {
                let buyers = units
                    .into_iter()
                    .map(|(u, n)| {
                        let id = first.remove(&u).unwrap_or_default();
                        (u, (n, id))
                    })
                    .collect();
                self.sold_out.insert(
                    sku,
                    SoldOutSale {
                        per_user_limit: limit,
                        buyers,
                        returned: returned.unwrap_or(0),
                    },
                );
                tracing::info!(sku, "sale sold out; answering locally from now on");
            }
            Err(e) => {
                tracing::warn!(sku, error = %e, "could not load the buyers of a sold-out sale")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_rule() {
        assert!(matches!(
            local_rule(false, false),
            LocalRule::Refuse(Error::SoldOut)
        ));
        assert!(matches!(local_rule(true, false), LocalRule::AskRedis));
        assert!(matches!(
            local_rule(false, true),
            LocalRule::Refuse(Error::Ended)
        ));
        assert!(matches!(
            local_rule(true, true),
            LocalRule::Refuse(Error::Ended)
        ));
    }
}
