//! The end of an order's life: the payment provider's callback, the
//! shopper's cancellation. Each is one Function on the master (`fs_pay`,
//! `fs_cancel`), so of a payment, a cancellation and an expiry of one order
//! exactly one wins, and the answer is given only once the replicas hold
//! it (a 200 to the provider is a promise that the order is paid). Units of
//! a cancelled order go back to the sale; this instance's local sold-out
//! answer for the sale is dropped at once (others drop theirs when their
//! catalog shows stock again).

use std::collections::HashMap;

use super::orders::order_from;
use super::{Error, Order, Shop, sku_of_order};
use crate::redis::functions::{self, CancelReply, PayReply};

/// `payment_id`: 1–128 of `[A-Za-z0-9_.:-]` (a provider's charge id).
pub fn valid_payment_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl Shop {
    /// The order as the master has it now.
    async fn order_now(&self, sku: &str, order_id: &str) -> Result<Order, Error> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.redis.keys().order(sku, order_id));
        let m: HashMap<String, String> = self.redis.read_master(&cmd).await?;
        order_from(&m).ok_or(Error::NotFound)
    }

    /// Records the payment `payment_id` of `amount_cents` for the order.
    /// The same payment again answers like the first; a payment after the
    /// order expired or was cancelled is `payment_late` (the shop refunds);
    /// another amount than the order's is `amount_mismatch` (nothing
    /// changes); a second, different payment of a paid order is
    /// `already_paid`.
    pub async fn pay(
        &self,
        order_id: &str,
        payment_id: &str,
        amount_cents: i64,
    ) -> Result<Order, Error> {
        let sku = sku_of_order(order_id).ok_or(Error::NotFound)?;
        if !valid_payment_id(payment_id) {
            return Err(Error::invalid(
                "invalid_payment",
                "payment_id must be 1-128 of [A-Za-z0-9_.:-]",
            ));
        }
        let cmd = functions::pay_call(self.redis.keys(), sku, order_id, payment_id, amount_cents);
        let reply: PayReply = self.redis.write_acked(&cmd).await?;
        match reply {
            PayReply::Paid { again } => {
                if !again {
                    metrics::counter!("flashsale_orders_paid_total").increment(1);
                }
                self.order_now(sku, order_id).await
            }
            PayReply::UnknownOrder => Err(Error::NotFound),
            PayReply::Late { status } => {
                self.sold_out.forget(sku);
                Err(Error::StateConflict {
                    code: "payment_late",
                    message: format!("the order is {status}: refund the payment"),
                })
            }
            PayReply::Mismatch { expected } => Err(Error::invalid(
                "amount_mismatch",
                format!("the order's amount is {expected}"),
            )),
            PayReply::OtherPayment => Err(Error::StateConflict {
                code: "already_paid",
                message: "the order is paid by another payment: refund this one".into(),
            }),
        }
    }

    /// `user` cancels their order: its units return to the sale. Again
    /// answers like the first; a paid or expired order is `not_cancellable`.
    /// Without a payment step (`FLASHSALE_PAYMENT_WINDOW_S=0`) an order is
    /// final: `not_cancellable`.
    pub async fn cancel(&self, user: &str, order_id: &str) -> Result<Order, Error> {
        let sku = sku_of_order(order_id).ok_or(Error::NotFound)?;
        if self.pay_within.is_zero() {
            let o = self.order(user, order_id).await?;
            return Err(Error::StateConflict {
                code: "not_cancellable",
                message: format!(
                    "the order is {}; orders are final in this shop (no payment step)",
                    o.status
                ),
            });
        }
        let cmd = functions::cancel_call(self.redis.keys(), sku, order_id, user);
        let reply: CancelReply = self.redis.write_acked(&cmd).await?;
        match reply {
            CancelReply::Cancelled { again } => {
                if !again {
                    metrics::counter!("flashsale_orders_cancelled_total").increment(1);
                }
                self.sold_out.forget(sku);
                self.catalog.invalidate();
                self.order_now(sku, order_id).await
            }
            CancelReply::UnknownOrder => Err(Error::NotFound),
            CancelReply::NotCancellable { status } => {
                if status == "expired" {
                    self.sold_out.forget(sku);
                }
                Err(Error::StateConflict {
                    code: "not_cancellable",
                    message: format!("the order is {status}"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_ids() {
        assert!(valid_payment_id("ch_3Nx.9:a-b"));
        assert!(!valid_payment_id(""));
        assert!(!valid_payment_id("a b"));
        assert!(!valid_payment_id(&"p".repeat(129)));
    }
}
