//! Reading orders back: one by id, or a sale's orders as a stream in
//! purchase order (the export reads them so, without holding them all),
//! and an order as the export writes it ([`LedgerOrder::EXPORT_COLUMNS`]).

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

impl LedgerOrder {
    /// The columns of `flashsale orders export`, in their order (CSV's
    /// header, JSONL's keys). Part of the export's contract: new columns
    /// go at the end.
    pub const EXPORT_COLUMNS: [&'static str; 13] = [
        "order_id",
        "sku",
        "user_id",
        "qty",
        "status",
        "amount_cents",
        "created_at",
        "confirmed_at",
        "pay_by",
        "paid_at",
        "payment_id",
        "expired_at",
        "cancelled_at",
    ];

    /// The order's values in [`Self::EXPORT_COLUMNS`] order: quantities and
    /// amounts as numbers, times as RFC 3339 in UTC, what the row does not
    /// hold as null.
    pub fn export_values(&self) -> [serde_json::Value; 13] {
        use serde_json::Value;
        let text = |s: &str| Value::String(s.to_owned());
        let opt_text = |s: &Option<String>| s.as_deref().map_or(Value::Null, text);
        let time = |t: &OffsetDateTime| Value::String(rfc3339(t));
        let opt_time = |t: &Option<OffsetDateTime>| t.as_ref().map_or(Value::Null, time);
        [
            text(&self.order_id),
            text(&self.sku),
            text(&self.user_id),
            Value::from(self.qty),
            text(self.status.as_str()),
            self.amount_cents.map_or(Value::Null, Value::from),
            time(&self.created_at),
            opt_time(&self.confirmed_at),
            opt_time(&self.pay_by),
            opt_time(&self.paid_at),
            opt_text(&self.payment_id),
            opt_time(&self.expired_at),
            opt_time(&self.cancelled_at),
        ]
    }

    /// One CSV record: [`Self::export_values`] as text, null as an empty
    /// field (quoting is the CSV writer's).
    pub fn csv_fields(&self) -> [String; 13] {
        self.export_values().map(|v| match v {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
    }

    /// One JSONL line (without its newline): an object whose keys are
    /// [`Self::EXPORT_COLUMNS`] in that order, every key present.
    pub fn json_line(&self) -> String {
        let mut line = String::with_capacity(320);
        line.push('{');
        for (i, (k, v)) in Self::EXPORT_COLUMNS
            .iter()
            .zip(self.export_values())
            .enumerate()
        {
            if i > 0 {
                line.push(',');
            }
            // Keys are plain identifiers; values are escaped by serde_json.
            line.push('"');
            line.push_str(k);
            line.push_str("\":");
            line.push_str(&v.to_string());
        }
        line.push('}');
        line
    }
}

/// RFC 3339 in UTC (`…Z`), with the fraction PostgreSQL keeps
/// (microseconds, trailing zeros left out).
fn rfc3339(t: &OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Every column, in the table's order (a macro, for `concat!`).
macro_rules! columns {
    () => {
        "order_id, sku, user_id, qty, status, created_at, confirmed_at, pay_by, paid_at, \
         payment_id, amount_cents, expired_at, cancelled_at"
    };
}

const COUNT_OF: &str = "SELECT count(*) FROM orders WHERE sku = $1";
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

/// A read of a ledger whose schema was never applied (`undefined_table`)
/// says what to do rather than what PostgreSQL says.
async fn schema<T>(
    read: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, LedgerError> {
    read.await.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => LedgerError::Refused(
            "the ledger has no orders table: apply its schema with `flashsale ledger migrate` \
             (a worker with the ledger does at start-up)"
                .into(),
        ),
        _ => LedgerError::from(e),
    })
}

/// Before each page: read it along `orders_sku_created_at` (then sort
/// only the rows of equal `created_at`). When the statistics do not know
/// the sale yet (a sale just over, before the next automatic `ANALYZE`,
/// or its rows a small share of a large table), the planner expects a few
/// rows and reads every row of the sale left, then sorts them, page after
/// page. Measured on the test kit's PostgreSQL 15: 1.5 million rows of one
/// sku never analysed, a bitmap scan and a sort, 766 ms a page (an export
/// of 25 s took 30 minutes); 300 000 rows of a new sku beside 3 million
/// analysed ones, an index scan of all of them and a sort, 69 ms for the
/// first page; along the index, 0.5 ms a page in both. `set_config(…,
/// true)` is `SET LOCAL`: for this transaction only.
const INDEX_ORDER: &str = "SELECT set_config('enable_bitmapscan', 'off', true), \
                           set_config('enable_seqscan', 'off', true), \
                           set_config('enable_sort', 'off', true)";

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
        let row = with_timeout(schema(
            sqlx::query(BY_ID).bind(order_id).fetch_optional(&self.pool),
        ))
        .await?;
        row.as_ref().map(order_of).transpose()
    }

    /// How many orders of a sale the ledger holds.
    pub async fn count_of(&self, sku: &str) -> Result<i64, LedgerError> {
        with_timeout(schema(
            sqlx::query_scalar(COUNT_OF).bind(sku).fetch_one(&self.pool),
        ))
        .await
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
        // One short transaction per page, so the planner settings below
        // hold for this statement only.
        let mut tx = with_timeout(self.pool.begin()).await?;
        with_timeout(sqlx::query(INDEX_ORDER).execute(&mut *tx)).await?;
        let rows = with_timeout(schema(query.fetch_all(&mut *tx))).await?;
        with_timeout(tx.commit()).await?;
        rows.iter().map(order_of).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn order() -> LedgerOrder {
        LedgerOrder {
            order_id: "tv-1.0123456789abcdef0123456789abcdef".into(),
            sku: "tv-1".into(),
            user_id: "u,\"1\"".into(),
            qty: 2,
            status: LedgerStatus::Paid,
            created_at: datetime!(2026-12-04 10:00:00.123 +01:00),
            confirmed_at: Some(datetime!(2026-12-04 09:00:00.123456 UTC)),
            pay_by: None,
            paid_at: Some(datetime!(2026-12-04 09:05:00 UTC)),
            payment_id: Some("pay-1".into()),
            amount_cents: Some(3998),
            expired_at: None,
            cancelled_at: None,
        }
    }

    #[test]
    fn export_values_follow_the_columns() {
        let v = order().export_values();
        assert_eq!(v.len(), LedgerOrder::EXPORT_COLUMNS.len());
        assert_eq!(v[0], "tv-1.0123456789abcdef0123456789abcdef");
        assert_eq!(v[3], 2);
        assert_eq!(v[4], "paid");
        assert_eq!(v[5], 3998);
        // UTC, whatever the offset the value came with.
        assert_eq!(v[6], "2026-12-04T09:00:00.123Z");
        assert_eq!(v[7], "2026-12-04T09:00:00.123456Z");
        assert_eq!(v[8], serde_json::Value::Null);
        assert_eq!(v[9], "2026-12-04T09:05:00Z");
        assert_eq!(v[10], "pay-1");
    }

    #[test]
    fn csv_fields_leave_absent_values_empty() {
        let f = order().csv_fields();
        assert_eq!(f[3], "2");
        assert_eq!(f[5], "3998");
        assert_eq!(f[8], "");
        assert_eq!(f[11], "");
        // Quoting is the writer's: the field is the raw value.
        assert_eq!(f[2], "u,\"1\"");
    }

    #[test]
    fn a_json_line_has_every_key_in_column_order() {
        let line = order().json_line();
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["user_id"], "u,\"1\"");
        assert_eq!(parsed["pay_by"], serde_json::Value::Null);
        assert_eq!(parsed["amount_cents"], 3998);
        let mut at = 0;
        for k in LedgerOrder::EXPORT_COLUMNS {
            let i = line.find(&format!("\"{k}\":")).expect(k);
            assert!(i >= at, "{k} out of order in {line}");
            at = i;
        }
        assert!(!line.contains('\n'));
    }
}
