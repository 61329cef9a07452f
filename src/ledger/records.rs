//! What the ledger is told: a batch of typed [`Record`]s, each applied
//! idempotently, so a batch delivered twice (a worker retrying after an
//! outage, a stream entry delivered again, two workers holding the same
//! entries) changes nothing the second time.
//!
//! Kinds, applied in this order in one batch:
//! - [`Record::NewOrder`]: `INSERT … ON CONFLICT (order_id) DO NOTHING`
//!   with the batch as arrays (`UNNEST`), one statement for the whole
//!   batch, as `confirmed`.
//! - The payment step's end states, [`Record::Paid`], [`Record::Expired`]
//!   and [`Record::Cancelled`]: one `UPDATE … FROM UNNEST(…)` per kind that
//!   sets the status and its columns only where the row is still `queued`
//!   or `confirmed`. So applying one again matches no row, and an order
//!   never moves from one end to another (paid never becomes expired, nor
//!   back). An order ends once in Redis, so no two ends of one order ever
//!   meet here; the guard keeps the ledger so even if they did.
//!
//! A batch with only new orders is that one statement; a batch with end
//! states is one transaction of every statement, so it is recorded whole
//! or not at all. The worker gives an order's end together with the order
//! itself ([`Record::NewOrder`] first), so an order whose row is not here
//! yet — its end came before its own entry was recorded — is inserted and
//! moved to its end in the same transaction: the row ends present and in
//! its final state whichever of the order's entries is recorded first.
//! Rows are written in `order_id` order, so two workers writing the same
//! orders take their row locks in the same order.

use time::OffsetDateTime;

use super::{Ledger, LedgerError, with_timeout};

/// One fact for the ledger, as the worker reads it from an order stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// An order that exists in Redis and is about to be confirmed there.
    NewOrder(NewOrder),
    /// The order was paid (its payment provider's callback).
    Paid {
        order_id: String,
        /// When `fs_pay` took the payment (Redis' clock).
        paid_at: OffsetDateTime,
        payment_id: String,
        amount_cents: i64,
    },
    /// The order's payment window passed unpaid; its units went back.
    Expired {
        order_id: String,
        at: OffsetDateTime,
    },
    /// The shopper cancelled the order; its units went back.
    Cancelled {
        order_id: String,
        at: OffsetDateTime,
    },
}

impl Record {
    /// The order the record is about.
    pub fn order_id(&self) -> &str {
        match self {
            Record::NewOrder(o) => &o.order_id,
            Record::Paid { order_id, .. }
            | Record::Expired { order_id, .. }
            | Record::Cancelled { order_id, .. } => order_id,
        }
    }
}

/// A new order: written once, as `confirmed`, stamped with the ledger's
/// clock (`confirmed_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: String,
    pub sku: String,
    pub user_id: String,
    pub qty: i32,
    /// When the purchase Function made it (Redis' clock).
    pub created_at: OffsetDateTime,
    /// Price × quantity at the purchase (orders of library version 12 on).
    pub amount_cents: Option<i64>,
    /// Its payment deadline, with a payment window.
    pub pay_by: Option<OffsetDateTime>,
}

/// What one [`Ledger::record`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// New orders written now (the others were already there).
    pub new_orders: u64,
    /// Orders moved to paid, expired or cancelled now (the others were
    /// there already, or had ended before).
    pub ended: u64,
}

/// The batch's new orders in one statement: arrays in, `UNNEST` them,
/// skip the ones already there. A key given twice in one batch is written
/// once (the second row conflicts with the first).
const INSERT_NEW_ORDERS: &str = "\
INSERT INTO orders (order_id, sku, user_id, qty, status, created_at, confirmed_at,
                    amount_cents, pay_by)
SELECT t.order_id, t.sku, t.user_id, t.qty, 'confirmed', t.created_at, now(),
       t.amount_cents, t.pay_by
  FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[],
              $6::int8[], $7::timestamptz[])
       AS t(order_id, sku, user_id, qty, created_at, amount_cents, pay_by)
ON CONFLICT (order_id) DO NOTHING";

/// Paid: only an order still waiting for its payment.
const UPDATE_PAID: &str = "\
UPDATE orders AS o
   SET status = 'paid', paid_at = t.paid_at, payment_id = t.payment_id,
       amount_cents = t.amount_cents
  FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int8[])
       AS t(order_id, paid_at, payment_id, amount_cents)
 WHERE o.order_id = t.order_id AND o.status IN ('queued', 'confirmed')";

/// Expired: only an order still waiting for its payment.
const UPDATE_EXPIRED: &str = "\
UPDATE orders AS o
   SET status = 'expired', expired_at = t.at
  FROM UNNEST($1::text[], $2::timestamptz[]) AS t(order_id, at)
 WHERE o.order_id = t.order_id AND o.status IN ('queued', 'confirmed')";

/// Cancelled: only an order still waiting for its payment.
const UPDATE_CANCELLED: &str = "\
UPDATE orders AS o
   SET status = 'cancelled', cancelled_at = t.at
  FROM UNNEST($1::text[], $2::timestamptz[]) AS t(order_id, at)
 WHERE o.order_id = t.order_id AND o.status IN ('queued', 'confirmed')";

/// A batch as the statements' arrays, each sorted by `order_id` (one lock
/// order for every writer).
#[derive(Default)]
struct Columns<'a> {
    new: Vec<&'a NewOrder>,
    paid: Vec<(&'a str, OffsetDateTime, &'a str, i64)>,
    expired: Vec<(&'a str, OffsetDateTime)>,
    cancelled: Vec<(&'a str, OffsetDateTime)>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a [Record]) -> Self {
        let mut c = Columns::default();
        for r in batch {
            match r {
                Record::NewOrder(o) => c.new.push(o),
                Record::Paid {
                    order_id,
                    paid_at,
                    payment_id,
                    amount_cents,
                } => c.paid.push((order_id, *paid_at, payment_id, *amount_cents)),
                Record::Expired { order_id, at } => c.expired.push((order_id, *at)),
                Record::Cancelled { order_id, at } => c.cancelled.push((order_id, *at)),
            }
        }
        c.new.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        c.paid.sort_by(|a, b| a.0.cmp(b.0));
        c.expired.sort_by(|a, b| a.0.cmp(b.0));
        c.cancelled.sort_by(|a, b| a.0.cmp(b.0));
        c
    }

    fn has_ends(&self) -> bool {
        !(self.paid.is_empty() && self.expired.is_empty() && self.cancelled.is_empty())
    }
}

fn insert_new<'q>(
    new: &'q [&'q NewOrder],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let ids: Vec<&str> = new.iter().map(|o| o.order_id.as_str()).collect();
    let skus: Vec<&str> = new.iter().map(|o| o.sku.as_str()).collect();
    let users: Vec<&str> = new.iter().map(|o| o.user_id.as_str()).collect();
    let qtys: Vec<i32> = new.iter().map(|o| o.qty).collect();
    let created: Vec<OffsetDateTime> = new.iter().map(|o| o.created_at).collect();
    let amounts: Vec<Option<i64>> = new.iter().map(|o| o.amount_cents).collect();
    let pay_by: Vec<Option<OffsetDateTime>> = new.iter().map(|o| o.pay_by).collect();
    sqlx::query(INSERT_NEW_ORDERS)
        .bind(ids)
        .bind(skus)
        .bind(users)
        .bind(qtys)
        .bind(created)
        .bind(amounts)
        .bind(pay_by)
}

impl Ledger {
    /// Writes a batch, idempotently, all or nothing. An error means nothing
    /// of the batch may be taken as recorded (and the batch may be given
    /// again as it is).
    pub async fn record(&self, batch: &[Record]) -> Result<Recorded, LedgerError> {
        let c = Columns::of(batch);
        let done = if c.has_ends() {
            with_timeout(self.record_with_ends(&c)).await?
        } else if c.new.is_empty() {
            return Ok(Recorded::default());
        } else {
            let done = with_timeout(insert_new(&c.new).execute(&self.pool)).await?;
            Recorded {
                new_orders: done.rows_affected(),
                ended: 0,
            }
        };
        metrics::counter!("flashsale_ledger_recorded_total").increment(done.new_orders);
        metrics::counter!("flashsale_ledger_ended_total").increment(done.ended);
        Ok(done)
    }

    /// New orders first, then each kind of end, in one transaction.
    async fn record_with_ends(&self, c: &Columns<'_>) -> Result<Recorded, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut done = Recorded::default();
        if !c.new.is_empty() {
            done.new_orders = insert_new(&c.new).execute(&mut *tx).await?.rows_affected();
        }
        if !c.paid.is_empty() {
            let ids: Vec<&str> = c.paid.iter().map(|p| p.0).collect();
            let at: Vec<OffsetDateTime> = c.paid.iter().map(|p| p.1).collect();
            let payments: Vec<&str> = c.paid.iter().map(|p| p.2).collect();
            let amounts: Vec<i64> = c.paid.iter().map(|p| p.3).collect();
            done.ended += sqlx::query(UPDATE_PAID)
                .bind(ids)
                .bind(at)
                .bind(payments)
                .bind(amounts)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        for (sql, rows) in [
            (UPDATE_EXPIRED, &c.expired),
            (UPDATE_CANCELLED, &c.cancelled),
        ] {
            if rows.is_empty() {
                continue;
            }
            let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
            let at: Vec<OffsetDateTime> = rows.iter().map(|r| r.1).collect();
            done.ended += sqlx::query(sql)
                .bind(ids)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str) -> Record {
        Record::NewOrder(NewOrder {
            order_id: id.into(),
            sku: "s".into(),
            user_id: "u".into(),
            qty: 1,
            created_at: OffsetDateTime::UNIX_EPOCH,
            amount_cents: None,
            pay_by: None,
        })
    }

    #[test]
    fn a_batch_is_split_by_kind_and_sorted_by_order() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let batch = vec![
            new("s.b"),
            Record::Expired {
                order_id: "s.b".into(),
                at,
            },
            new("s.a"),
            Record::Paid {
                order_id: "s.c".into(),
                paid_at: at,
                payment_id: "ch".into(),
                amount_cents: 10,
            },
            Record::Cancelled {
                order_id: "s.a".into(),
                at,
            },
        ];
        let c = Columns::of(&batch);
        let ids: Vec<&str> = c.new.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["s.a", "s.b"]);
        assert_eq!(
            (c.paid.len(), c.expired.len(), c.cancelled.len()),
            (1, 1, 1)
        );
        assert!(c.has_ends());
        assert!(!Columns::of(&batch[..1]).has_ends());
        assert_eq!(batch[3].order_id(), "s.c");
    }
}
