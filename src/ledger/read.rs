//! Reading orders back: one by id, or a sale's orders as a stream in
//! purchase order (the export reads them so, without holding them all).

use futures_util::stream::{self, BoxStream, StreamExt};
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::{Ledger, LedgerError, with_timeout};

/// What the ledger knows of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerStatus {
    Queued,
    Confirmed,
    Paid,
    Expired,
    Cancelled,
}

impl LedgerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerStatus::Queued => "queued",
            LedgerStatus::Confirmed => "confirmed",
            LedgerStatus::Paid => "paid",
            LedgerStatus::Expired => "expired",
            LedgerStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<LedgerStatus> {
        Some(match s {
            "queued" => LedgerStatus::Queued,
            "confirmed" => LedgerStatus::Confirmed,
            "paid" => LedgerStatus::Paid,
            "expired" => LedgerStatus::Expired,
            "cancelled" => LedgerStatus::Cancelled,
            _ => return None,
        })
    }
}

/// One row of `orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerOrder {
    pub order_id: String,
    pub sku: String,
    pub user_id: String,
    pub qty: i32,
    pub status: LedgerStatus,
    pub created_at: OffsetDateTime,
    pub confirmed_at: Option<OffsetDateTime>,
    pub pay_by: Option<OffsetDateTime>,
    pub paid_at: Option<OffsetDateTime>,
    pub payment_id: Option<String>,
    pub amount_cents: Option<i64>,
    pub expired_at: Option<OffsetDateTime>,
    pub cancelled_at: Option<OffsetDateTime>,
}

/// Every column, in the table's order (a macro, for `concat!`).
macro_rules! columns {
    () => {
        "order_id, sku, user_id, qty, status, created_at, confirmed_at, pay_by, paid_at, \
         payment_id, amount_cents, expired_at, cancelled_at"
    };
}

const BY_ID: &str = concat!("SELECT ", columns!(), " FROM orders WHERE order_id = $1");
const FIRST_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM orders WHERE sku = $1 ORDER BY created_at, order_id LIMIT $2"
);
const NEXT_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM orders WHERE sku = $1 AND created_at >= $2 AND (created_at, order_id) > ($2, $3) \
     ORDER BY created_at, order_id LIMIT $4"
);

/// Rows per page of [`Ledger::orders_of`].
const PAGE: i64 = 1000;

fn order_of(row: &PgRow) -> Result<LedgerOrder, LedgerError> {
    let get_err = |e: sqlx::Error| LedgerError::Data(e.to_string());
    let status: String = row.try_get("status").map_err(get_err)?;
    Ok(LedgerOrder {
        order_id: row.try_get("order_id").map_err(get_err)?,
        sku: row.try_get("sku").map_err(get_err)?,
        user_id: row.try_get("user_id").map_err(get_err)?,
        qty: row.try_get("qty").map_err(get_err)?,
        status: LedgerStatus::parse(&status)
            .ok_or_else(|| LedgerError::Data(format!("unknown status {status:?}")))?,
        created_at: row.try_get("created_at").map_err(get_err)?,
        confirmed_at: row.try_get("confirmed_at").map_err(get_err)?,
        pay_by: row.try_get("pay_by").map_err(get_err)?,
        paid_at: row.try_get("paid_at").map_err(get_err)?,
        payment_id: row.try_get("payment_id").map_err(get_err)?,
        amount_cents: row.try_get("amount_cents").map_err(get_err)?,
        expired_at: row.try_get("expired_at").map_err(get_err)?,
        cancelled_at: row.try_get("cancelled_at").map_err(get_err)?,
    })
}

impl Ledger {
    /// One order by id.
    pub async fn order(&self, order_id: &str) -> Result<Option<LedgerOrder>, LedgerError> {
        let row =
            with_timeout(sqlx::query(BY_ID).bind(order_id).fetch_optional(&self.pool)).await?;
        row.as_ref().map(order_of).transpose()
    }

    /// A sale's orders by purchase time (then id), as a stream read in
    /// pages of 1000 (keyset on `orders_sku_created_at`), so an export
    /// holds one page at a time and no statement runs long.
    pub fn orders_of(&self, sku: &str) -> BoxStream<'_, Result<LedgerOrder, LedgerError>> {
        let sku = sku.to_owned();
        // State: `None` once the last page was read; `Some(None)` before
        // the first; `Some(Some(key))` after a full page ending at `key`.
        stream::unfold(
            Some(None),
            move |state: Option<Option<(OffsetDateTime, String)>>| {
                let sku = sku.clone();
                async move {
                    let after = state?;
                    match self.page(&sku, after).await {
                        Err(e) => Some((vec![Err(e)], None)),
                        Ok(rows) => {
                            let next = (rows.len() as i64 == PAGE)
                                .then(|| rows.last().map(|o| (o.created_at, o.order_id.clone())))
                                .flatten();
                            Some((rows.into_iter().map(Ok).collect(), next.map(Some)))
                        }
                    }
                }
            },
        )
        .flat_map(stream::iter)
        .boxed()
    }

    async fn page(
        &self,
        sku: &str,
        after: Option<(OffsetDateTime, String)>,
    ) -> Result<Vec<LedgerOrder>, LedgerError> {
        let query = match &after {
            None => sqlx::query(FIRST_PAGE).bind(sku).bind(PAGE),
            Some((at, id)) => sqlx::query(NEXT_PAGE)
                .bind(sku)
                .bind(*at)
                .bind(id.as_str())
                .bind(PAGE),
        };
        let rows = with_timeout(query.fetch_all(&self.pool)).await?;
        rows.iter().map(order_of).collect()
    }
}
