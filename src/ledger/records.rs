//! What the ledger is told: a batch of typed [`Record`]s, each applied
//! idempotently, so a batch delivered twice (a worker retrying after an
//! outage, a stream entry delivered again, two workers holding the same
//! entries) changes nothing the second time.
//!
//! Today there is one kind, [`Record::NewOrder`]: `INSERT … ON CONFLICT
//! (order_id) DO NOTHING` with the batch as arrays (`UNNEST`), one
//! statement for the whole batch. The state changes of the payment step
//! (paid, expired, cancelled) are meant to be further kinds, each one
//! `UPDATE … FROM UNNEST(…)` guarded by the status it leaves (so applying it
//! again matches no row), run after the new orders of the same batch, all
//! kinds of one batch in one transaction.

use time::OffsetDateTime;

use super::{Ledger, LedgerError, with_timeout};

/// One fact for the ledger, as the worker reads it from an order stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// An order that exists in Redis and is about to be confirmed there.
    NewOrder(NewOrder),
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
}

/// What one [`Ledger::record`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// New orders written now (the others were already there).
    pub new_orders: u64,
}

/// The batch's new orders in one statement: arrays in, `UNNEST` them,
/// skip the ones already there. A key given twice in one batch is written
/// once (the second row conflicts with the first).
const INSERT_NEW_ORDERS: &str = "\
INSERT INTO orders (order_id, sku, user_id, qty, status, created_at, confirmed_at)
SELECT t.order_id, t.sku, t.user_id, t.qty, 'confirmed', t.created_at, now()
  FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[])
       AS t(order_id, sku, user_id, qty, created_at)
ON CONFLICT (order_id) DO NOTHING";

impl Ledger {
    /// Writes a batch, idempotently, all or nothing. An error means nothing
    /// of the batch may be taken as recorded (and the batch may be given
    /// again as it is).
    pub async fn record(&self, batch: &[Record]) -> Result<Recorded, LedgerError> {
        let n = batch.len();
        let (mut ids, mut skus, mut users, mut qtys, mut created) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for r in batch {
            match r {
                Record::NewOrder(o) => {
                    ids.push(o.order_id.as_str());
                    skus.push(o.sku.as_str());
                    users.push(o.user_id.as_str());
                    qtys.push(o.qty);
                    created.push(o.created_at);
                }
            }
        }
        if ids.is_empty() {
            return Ok(Recorded::default());
        }
        let done = with_timeout(
            sqlx::query(INSERT_NEW_ORDERS)
                .bind(&ids)
                .bind(&skus)
                .bind(&users)
                .bind(&qtys)
                .bind(&created)
                .execute(&self.pool),
        )
        .await?;
        let new_orders = done.rows_affected();
        metrics::counter!("flashsale_ledger_recorded_total").increment(new_orders);
        Ok(Recorded { new_orders })
    }
}
