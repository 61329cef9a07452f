//! One typed call per Function of the library, and its reply as plain data.
//! KEYS, ARGV and reply shapes are documented in `flashsale.lua`; a reply
//! that does not have the documented shape is a parsing error, never a
//! guess.
//!
//! Why one file of this size: one short section per Function (call, reply
//! type, parsing), so the face of the whole library is read in one place;
//! the tests of every reply shape are at the end.

use std::time::Duration;

use redis::{FromRedisValue, ParsingError, Value};

use crate::redis::keys::Keys;
use crate::redis::text;

/// Most entries one `fs_confirm_batch` or `fs_requeue` takes (the library
/// refuses more).
pub const CONFIRM_BATCH_MAX: usize = 512;

fn fcall(name: &str, numkeys: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(name).arg(numkeys);
    cmd
}

fn fcall_ro(name: &str, numkeys: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg(name).arg(numkeys);
    cmd
}

fn bad(function: &str, v: &Value) -> ParsingError {
    ParsingError::from(format!("{function} replied {v:?}"))
}

/// The items of an array reply, or a parsing error naming the Function.
fn items<'a>(function: &str, v: &'a Value) -> Result<&'a [Value], ParsingError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(bad(function, other)),
    }
}

fn int_at(items: &[Value], i: usize) -> i64 {
    match items.get(i) {
        Some(Value::Int(n)) => *n,
        Some(other) => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
        None => 0,
    }
}

fn word_at(items: &[Value], i: usize) -> Option<String> {
    items.get(i).and_then(text)
}

// ---------------------------------------------------------------- purchase

/// The `FCALL fs_purchase` of one purchase: the server's, and the
/// benchmarks' and tests' that call the Function directly. `order_id` is
/// `<sku>.<32 hex>`.
pub fn purchase_call(
    keys: &Keys,
    sku: &str,
    user: &str,
    qty: i64,
    order_id: &str,
    idempotency_key: Option<&str>,
) -> redis::Cmd {
    purchase_call_within(
        keys,
        sku,
        user,
        qty,
        order_id,
        idempotency_key,
        Duration::ZERO,
    )
}

/// [`purchase_call`] of a shop with a payment window: the order must be
/// paid within `pay_within` of its purchase or it expires (library version
/// 12). `Duration::ZERO`: no payment step.
pub fn purchase_call_within(
    keys: &Keys,
    sku: &str,
    user: &str,
    qty: i64,
    order_id: &str,
    idempotency_key: Option<&str>,
    pay_within: Duration,
) -> redis::Cmd {
    let paid = !pay_within.is_zero();
    let mut cmd = fcall("fs_purchase", if paid { 8 } else { 7 });
    cmd.arg(keys.sale(sku))
        .arg(keys.units(sku))
        .arg(keys.first(sku))
        .arg(keys.user_orders(sku, user))
        .arg(keys.order(sku, order_id))
        .arg(keys.stream(sku))
        .arg(match idempotency_key {
            Some(k) => keys.idempotency(sku, user, k),
            // No key: the sale's key again (library version 13), so every
            // key of the call is in the sale's slot.
            None => keys.sale(sku),
        });
    if paid {
        cmd.arg(keys.pay_by(sku));
    }
    cmd.arg(user).arg(qty).arg(order_id);
    if paid {
        cmd.arg(pay_within.as_millis() as u64);
    }
    cmd
}

/// What `fs_purchase` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurchaseReply {
    /// This order was made now; `stock_left` after it.
    Created {
        stock_left: i64,
    },
    /// This very order id exists (a retry of ours after a lost reply).
    Exists,
    /// The idempotency key was used, or the shopper holds the limit: their order.
    Already {
        order_id: String,
    },
    SoldOut,
    UnknownSku,
    InvalidQty {
        limit: i64,
        stock_left: i64,
    },
    NotStarted {
        starts_ms: i64,
    },
    Ended,
    /// The sale is paused (library version 9).
    Paused,
}

impl PurchaseReply {
    /// Whether the answer promises something, or states something to be
    /// remembered (sold out), and so must be held by the replicas before
    /// it is given. A refusal that changed nothing needs no acknowledgement.
    pub fn needs_ack(&self) -> bool {
        matches!(
            self,
            PurchaseReply::Created { .. }
                | PurchaseReply::Exists
                | PurchaseReply::Already { .. }
                | PurchaseReply::SoldOut
        )
    }
}

impl FromRedisValue for PurchaseReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_purchase", &v)?;
        Ok(match word_at(items, 0).as_deref() {
            Some("created") => PurchaseReply::Created {
                stock_left: int_at(items, 2),
            },
            Some("exists") => PurchaseReply::Exists,
            Some("already") => PurchaseReply::Already {
                order_id: word_at(items, 1).unwrap_or_default(),
            },
            Some("sold_out") => PurchaseReply::SoldOut,
            Some("unknown_sku") => PurchaseReply::UnknownSku,
            Some("invalid_qty") => PurchaseReply::InvalidQty {
                limit: int_at(items, 1),
                stock_left: int_at(items, 2),
            },
            Some("not_started") => PurchaseReply::NotStarted {
                starts_ms: int_at(items, 1),
            },
            Some("ended") => PurchaseReply::Ended,
            Some("paused") => PurchaseReply::Paused,
            _ => return Err(bad("fs_purchase", &v)),
        })
    }
}

// ------------------------------------------------------------- create sale

/// The fields of a new sale, as `fs_create_sale` takes them.
#[derive(Debug, Clone, Copy)]
pub struct SaleFields<'a> {
    pub sku: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub price_cents: i64,
    pub stock: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    /// ISO 4217 code (library version 11).
    pub currency: &'a str,
    /// `""`: none.
    pub image_url: &'a str,
}

/// `ZADD P:sales starts_ms sku`: the sale in the catalog index, at its
/// start (idempotent: a repeat sets the same score).
pub fn index_call(keys: &Keys, sku: &str, starts_ms: i64) -> redis::Cmd {
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(keys.sales_index()).arg(starts_ms).arg(sku);
    cmd
}

/// `FCALL fs_create_sale` with the sale's key alone: the caller adds the
/// sale to the index ([`index_call`]), which may be in another slot.
pub fn create_sale_call(keys: &Keys, s: &SaleFields<'_>) -> redis::Cmd {
    let mut cmd = fcall("fs_create_sale", 1);
    cmd.arg(keys.sale(s.sku))
        .arg(s.sku)
        .arg(s.name)
        .arg(s.description)
        .arg(s.price_cents)
        .arg(s.stock)
        .arg(s.starts_ms)
        .arg(s.ends_ms)
        .arg(s.per_user_limit)
        .arg(s.currency)
        .arg(s.image_url);
    cmd
}

/// What `fs_create_sale` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateSaleReply {
    Created,
    /// The sale exists and equals the one asked for (a retried create).
    Replayed,
    /// The sale exists and differs from the one asked for (or a library
    /// that does not compare said `{'exists'}`).
    Exists,
    /// The Function refused this field.
    Invalid(String),
}

impl FromRedisValue for CreateSaleReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_create_sale", &v)?;
        Ok(match word_at(items, 0).as_deref() {
            Some("created") => CreateSaleReply::Created,
            Some("exists") if word_at(items, 1).as_deref() == Some("1") => {
                CreateSaleReply::Replayed
            }
            Some("exists") => CreateSaleReply::Exists,
            Some("invalid") => {
                CreateSaleReply::Invalid(word_at(items, 1).unwrap_or_else(|| "field".into()))
            }
            _ => return Err(bad("fs_create_sale", &v)),
        })
    }
}

// --------------------------------------------------- pause, resume, end

/// A change of a sale's lifecycle, one Function each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// `fs_pause_sale`
    Pause,
    /// `fs_resume_sale`
    Resume,
    /// `fs_end_sale`: `ends_ms` becomes the server's now.
    End,
}

impl Lifecycle {
    fn function(self) -> &'static str {
        match self {
            Lifecycle::Pause => "fs_pause_sale",
            Lifecycle::Resume => "fs_resume_sale",
            Lifecycle::End => "fs_end_sale",
        }
    }
}

/// `FCALL fs_pause_sale` / `fs_resume_sale` / `fs_end_sale`.
pub fn lifecycle_call(keys: &Keys, sku: &str, change: Lifecycle) -> redis::Cmd {
    let mut cmd = fcall(change.function(), 1);
    cmd.arg(keys.sale(sku));
    cmd
}

/// What a lifecycle Function answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleReply {
    Done,
    UnknownSku,
    /// The change makes no sense now: `ended` or `not_paused`.
    Conflict(String),
}

impl FromRedisValue for LifecycleReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_*_sale", &v)?;
        Ok(match word_at(items, 0).as_deref() {
            Some("ok") => LifecycleReply::Done,
            Some("unknown_sku") => LifecycleReply::UnknownSku,
            Some("conflict") => {
                LifecycleReply::Conflict(word_at(items, 1).ok_or_else(|| bad("fs_*_sale", &v))?)
            }
            _ => return Err(bad("fs_*_sale", &v)),
        })
    }
}

// ------------------------------------------------------------- update sale

/// The fields an operator changes in a sale that has not opened (`None`:
/// unchanged), as `fs_update_sale` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
    pub per_user_limit: Option<i64>,
    /// ISO 4217 code (library version 11).
    pub currency: Option<String>,
    /// `Some("")` removes the image.
    pub image_url: Option<String>,
}

/// `FCALL fs_update_sale`: the given fields, as field/value pairs.
pub fn update_sale_call(keys: &Keys, sku: &str, u: &SaleUpdate) -> redis::Cmd {
    let mut cmd = fcall("fs_update_sale", 1);
    cmd.arg(keys.sale(sku));
    if let Some(v) = &u.name {
        cmd.arg("name").arg(v);
    }
    if let Some(v) = &u.description {
        cmd.arg("description").arg(v);
    }
    if let Some(v) = &u.currency {
        cmd.arg("currency").arg(v);
    }
    if let Some(v) = &u.image_url {
        cmd.arg("image_url").arg(v);
    }
    for (field, v) in [
        ("price_cents", u.price_cents),
        ("stock", u.stock),
        ("starts_ms", u.starts_ms),
        ("ends_ms", u.ends_ms),
        ("per_user_limit", u.per_user_limit),
    ] {
        if let Some(v) = v {
            cmd.arg(field).arg(v);
        }
    }
    cmd
}

/// What `fs_update_sale` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateSaleReply {
    Updated,
    UnknownSku,
    /// The Function refused this field.
    Invalid(String),
    /// Too late: `ended`, `open`, or `sold` (units held; stock is fixed).
    Conflict(String),
}

impl FromRedisValue for UpdateSaleReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_update_sale", &v)?;
        let second = || word_at(items, 1).ok_or_else(|| bad("fs_update_sale", &v));
        Ok(match word_at(items, 0).as_deref() {
            Some("updated") => UpdateSaleReply::Updated,
            Some("unknown_sku") => UpdateSaleReply::UnknownSku,
            Some("invalid") => UpdateSaleReply::Invalid(second()?),
            Some("conflict") => UpdateSaleReply::Conflict(second()?),
            _ => return Err(bad("fs_update_sale", &v)),
        })
    }
}

// ------------------------------------------------------------------- audit

/// `FCALL_RO fs_audit`.
pub fn audit_call(keys: &Keys, sku: &str) -> redis::Cmd {
    let mut cmd = fcall_ro("fs_audit", 2);
    cmd.arg(keys.sale(sku)).arg(keys.units(sku));
    cmd
}

/// What `fs_audit` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditReply {
    UnknownSku,
    Sale(SaleAudit),
}

/// A sale's counters and consistency as `fs_audit` computed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SaleAudit {
    pub stock_total: i64,
    pub stock_left: i64,
    pub sold: i64,
    pub orders: i64,
    pub buyers: i64,
    pub confirmed: i64,
    pub consistent: bool,
    pub max_units_per_buyer: i64,
    /// Orders paid (library version 12; 0 before).
    pub paid: i64,
    /// Orders expired unpaid.
    pub expired: i64,
    /// Orders cancelled by their shopper.
    pub cancelled: i64,
    /// Units back in stock from expired and cancelled orders.
    pub returned: i64,
}

impl FromRedisValue for AuditReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_audit", &v)?;
        if items.is_empty() {
            return Ok(AuditReply::UnknownSku);
        }
        if items.len() < 8 || items.iter().any(|i| !matches!(i, Value::Int(_))) {
            return Err(bad("fs_audit", &v));
        }
        let n = |i| int_at(items, i);
        Ok(AuditReply::Sale(SaleAudit {
            stock_total: n(0),
            stock_left: n(1),
            sold: n(2),
            orders: n(3),
            buyers: n(4),
            confirmed: n(5),
            consistent: n(6) == 1,
            max_units_per_buyer: n(7),
            paid: n(8),
            expired: n(9),
            cancelled: n(10),
            returned: n(11),
        }))
    }
}

// ---------------------------------------------- payment, cancel, expiry

/// The keys `fs_pay` and `fs_cancel` take: sale, order, units, payby, stream.
fn order_change_call(name: &str, keys: &Keys, sku: &str, order_id: &str) -> redis::Cmd {
    let mut cmd = fcall(name, 5);
    cmd.arg(keys.sale(sku))
        .arg(keys.order(sku, order_id))
        .arg(keys.units(sku))
        .arg(keys.pay_by(sku))
        .arg(keys.stream(sku));
    cmd
}

/// `FCALL fs_pay`: the payment provider's callback for one order.
pub fn pay_call(
    keys: &Keys,
    sku: &str,
    order_id: &str,
    payment_id: &str,
    amount_cents: i64,
) -> redis::Cmd {
    let mut cmd = order_change_call("fs_pay", keys, sku, order_id);
    cmd.arg(payment_id).arg(amount_cents);
    cmd
}

/// What `fs_pay` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayReply {
    /// Paid now, or (`again`) by this same payment before.
    Paid {
        again: bool,
    },
    UnknownOrder,
    /// The order expired or was cancelled first: the shop refunds.
    Late {
        status: String,
    },
    /// The amount is not the order's (`expected`).
    Mismatch {
        expected: i64,
    },
    /// Paid already, by another payment.
    OtherPayment,
}

impl FromRedisValue for PayReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_pay", &v)?;
        Ok(match word_at(items, 0).as_deref() {
            Some("paid") => PayReply::Paid {
                again: int_at(items, 1) == 1,
            },
            Some("unknown") => PayReply::UnknownOrder,
            Some("late") => PayReply::Late {
                status: word_at(items, 1).unwrap_or_default(),
            },
            Some("mismatch") => PayReply::Mismatch {
                expected: int_at(items, 1),
            },
            Some("other_payment") => PayReply::OtherPayment,
            _ => return Err(bad("fs_pay", &v)),
        })
    }
}

/// `FCALL fs_cancel`: `user` cancels their order.
pub fn cancel_call(keys: &Keys, sku: &str, order_id: &str, user: &str) -> redis::Cmd {
    let mut cmd = order_change_call("fs_cancel", keys, sku, order_id);
    cmd.arg(user);
    cmd
}

/// What `fs_cancel` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReply {
    /// Cancelled now, or (`again`) before.
    Cancelled { again: bool },
    /// No such order, or another shopper's.
    UnknownOrder,
    /// Paid or expired: it stays as it is.
    NotCancellable { status: String },
}

impl FromRedisValue for CancelReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_cancel", &v)?;
        Ok(match word_at(items, 0).as_deref() {
            Some("cancelled") => CancelReply::Cancelled {
                again: int_at(items, 1) == 1,
            },
            Some("unknown") => CancelReply::UnknownOrder,
            Some("not_cancellable") => CancelReply::NotCancellable {
                status: word_at(items, 1).unwrap_or_default(),
            },
            _ => return Err(bad("fs_cancel", &v)),
        })
    }
}

/// `FCALL fs_expire` of some orders of one sale (at most
/// [`CONFIRM_BATCH_MAX`]): those past their deadline and unpaid expire.
/// Replies `(orders expired, units returned)`.
pub fn expire_call(keys: &Keys, sku: &str, order_ids: &[String]) -> redis::Cmd {
    let mut cmd = fcall("fs_expire", 4 + order_ids.len());
    cmd.arg(keys.sale(sku))
        .arg(keys.units(sku))
        .arg(keys.pay_by(sku))
        .arg(keys.stream(sku));
    for id in order_ids {
        cmd.arg(keys.order(sku, id));
    }
    for id in order_ids {
        cmd.arg(id);
    }
    cmd
}

// -------------------------------------------------------------- rate limit

/// `FCALL fs_rate`: one token from the bucket `bucket_key`, refilled at
/// `rate` per second.
pub fn rate_call(bucket_key: &str, rate: u32) -> redis::Cmd {
    let mut cmd = fcall("fs_rate", 1);
    cmd.arg(bucket_key).arg(rate);
    cmd
}

/// What `fs_rate` answered: allowed, or how long until a token is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateReply {
    Allowed,
    Wait { ms: i64 },
}

impl FromRedisValue for RateReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items("fs_rate", &v)?;
        if items.len() != 2 {
            return Err(bad("fs_rate", &v));
        }
        Ok(match int_at(items, 0) {
            1 => RateReply::Allowed,
            _ => RateReply::Wait {
                ms: int_at(items, 1),
            },
        })
    }
}

// ------------------------------------------------------------- the worker

/// Adds one `FCALL fs_confirm_batch` to `pipe`: the given entries of one
/// sale's stream, as `(order id, entry id)` (at most
/// [`CONFIRM_BATCH_MAX`]). Its reply is one 1 / 0 / -1 per entry: confirmed
/// now, already confirmed, order missing (see the library).
pub fn confirm_batch_into<'a>(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    sku: &str,
    group: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    let n = entries.clone().count();
    debug_assert!(n <= CONFIRM_BATCH_MAX);
    pipe.add_command(confirm_batch_call(keys, sku, group, entries, n));
}

/// `FCALL fs_confirm_batch` on its own (see [`confirm_batch_into`]).
pub fn confirm_batch_call<'a>(
    keys: &Keys,
    sku: &str,
    group: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    n: usize,
) -> redis::Cmd {
    let mut cmd = fcall("fs_confirm_batch", 2 + n);
    cmd.arg(keys.sale(sku)).arg(keys.stream(sku));
    for (order_id, _) in entries.clone() {
        cmd.arg(keys.order(sku, order_id));
    }
    cmd.arg(group);
    for (order_id, entry_id) in entries {
        cmd.arg(order_id).arg(entry_id);
    }
    cmd
}

/// `FCALL fs_confirm`: one entry (the single-entry case of
/// `fs_confirm_batch`, for operators and tests). Replies 1, 0 or -1.
pub fn confirm_call(
    keys: &Keys,
    sku: &str,
    group: &str,
    order_id: &str,
    entry_id: &str,
) -> redis::Cmd {
    let mut cmd = fcall("fs_confirm", 3);
    cmd.arg(keys.order(sku, order_id))
        .arg(keys.sale(sku))
        .arg(keys.stream(sku))
        .arg(order_id)
        .arg(group)
        .arg(entry_id);
    cmd
}

/// A call of `function` with any KEYS and ARGV: for tests of the library's
/// own refusals (keys of another sale, too many entries), which the typed
/// calls above cannot make.
pub fn raw_call(function: &str, keys: &[String], args: &[String]) -> redis::Cmd {
    let mut cmd = fcall(function, keys.len());
    cmd.arg(keys).arg(args);
    cmd
}

/// `FCALL fs_dead_letter`: moves one pending entry to the dead letters and
/// acknowledges it. Replies 1, or 0 when the entry was already gone.
pub fn dead_letter_call(
    keys: &Keys,
    sku: &str,
    group: &str,
    entry_id: &str,
    reason: &str,
    deliveries: usize,
    consumer: &str,
) -> redis::Cmd {
    let mut cmd = fcall("fs_dead_letter", 2);
    cmd.arg(keys.stream(sku))
        .arg(keys.dead_letters(sku))
        .arg(group)
        .arg(entry_id)
        .arg(reason)
        .arg(deliveries)
        .arg(consumer);
    cmd
}

/// `FCALL fs_trim`: trims a sale's stream on the node it runs on (see the
/// library). Replies `(trimmed, scanned)`.
pub fn trim_call(keys: &Keys, sku: &str, max_scan: usize) -> redis::Cmd {
    let mut cmd = fcall("fs_trim", 1);
    cmd.arg(keys.stream(sku)).arg(max_scan);
    cmd
}

/// `FCALL_RO fs_lost`: queued orders of a sale that no live entry carries
/// on this node (-1: unknown, look).
pub fn lost_call(keys: &Keys, sku: &str, group: &str) -> redis::Cmd {
    let mut cmd = fcall_ro("fs_lost", 3);
    cmd.arg(keys.sale(sku))
        .arg(keys.stream(sku))
        .arg(keys.dead_letters(sku))
        .arg(group);
    cmd
}

/// `FCALL fs_requeue`: queues again those of `order_keys` (one sale's, at
/// most [`CONFIRM_BATCH_MAX`]) that are queued, older than `older_than`
/// and carried by no live entry. Replies `(requeued, "nogroup" or "")`.
pub fn requeue_call(
    keys: &Keys,
    sku: &str,
    group: &str,
    order_keys: &[String],
    older_than: Duration,
) -> redis::Cmd {
    let mut cmd = fcall("fs_requeue", 2 + order_keys.len());
    cmd.arg(keys.sale(sku))
        .arg(keys.stream(sku))
        .arg(order_keys)
        .arg(group)
        .arg(older_than.as_millis() as u64);
    cmd
}

/// `FCALL_RO fs_version`: the library version a node holds.
pub fn version_call() -> redis::Cmd {
    fcall_ro("fs_version", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn parse<T: FromRedisValue>(items: Vec<Value>) -> Result<T, ParsingError> {
        T::from_redis_value(Value::Array(items))
    }

    #[test]
    fn purchase_replies() {
        let p = |items| parse::<PurchaseReply>(items).expect("parses");
        assert_eq!(
            p(vec![bulk("created"), bulk("s.x"), Value::Int(7)]),
            PurchaseReply::Created { stock_left: 7 }
        );
        assert_eq!(
            p(vec![bulk("already"), bulk("s.y")]),
            PurchaseReply::Already {
                order_id: "s.y".into()
            }
        );
        assert_eq!(
            p(vec![bulk("invalid_qty"), Value::Int(1), Value::Int(3)]),
            PurchaseReply::InvalidQty {
                limit: 1,
                stock_left: 3
            }
        );
        assert!(p(vec![bulk("sold_out")]).needs_ack());
        assert!(!p(vec![bulk("ended")]).needs_ack());
        assert!(parse::<PurchaseReply>(vec![bulk("what")]).is_err());
        assert!(PurchaseReply::from_redis_value(Value::Int(1)).is_err());
    }

    #[test]
    fn create_sale_replies() {
        let p = |items| parse::<CreateSaleReply>(items).expect("parses");
        assert_eq!(p(vec![bulk("created")]), CreateSaleReply::Created);
        assert_eq!(
            p(vec![bulk("exists"), Value::Int(1)]),
            CreateSaleReply::Replayed
        );
        assert_eq!(
            p(vec![bulk("exists"), Value::Int(0)]),
            CreateSaleReply::Exists
        );
        // A library that does not compare the stored sale: a conflict.
        assert_eq!(p(vec![bulk("exists")]), CreateSaleReply::Exists);
        assert_eq!(
            p(vec![bulk("invalid"), bulk("stock")]),
            CreateSaleReply::Invalid("stock".into())
        );
        assert!(parse::<CreateSaleReply>(vec![]).is_err());
        assert!(parse::<CreateSaleReply>(vec![bulk("what")]).is_err());
    }

    #[test]
    fn update_sale_replies_and_call() {
        let p = |items| parse::<UpdateSaleReply>(items).expect("parses");
        assert_eq!(p(vec![bulk("updated")]), UpdateSaleReply::Updated);
        assert_eq!(p(vec![bulk("unknown_sku")]), UpdateSaleReply::UnknownSku);
        assert_eq!(
            p(vec![bulk("invalid"), bulk("ends_at")]),
            UpdateSaleReply::Invalid("ends_at".into())
        );
        assert_eq!(
            p(vec![bulk("conflict"), bulk("open")]),
            UpdateSaleReply::Conflict("open".into())
        );
        assert!(parse::<UpdateSaleReply>(vec![bulk("invalid")]).is_err());
        let cmd = update_sale_call(
            &Keys::new("fs"),
            "a",
            &SaleUpdate {
                name: Some("n".into()),
                stock: Some(5),
                ..SaleUpdate::default()
            },
        );
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            args,
            [
                "FCALL",
                "fs_update_sale",
                "1",
                "fs:{a}:sale",
                "name",
                "n",
                "stock",
                "5"
            ]
        );
    }

    #[test]
    fn lifecycle_replies() {
        let p = |items| parse::<LifecycleReply>(items).expect("parses");
        assert_eq!(p(vec![bulk("ok")]), LifecycleReply::Done);
        assert_eq!(p(vec![bulk("unknown_sku")]), LifecycleReply::UnknownSku);
        assert_eq!(
            p(vec![bulk("conflict"), bulk("not_paused")]),
            LifecycleReply::Conflict("not_paused".into())
        );
        assert!(parse::<LifecycleReply>(vec![bulk("conflict")]).is_err());
        assert!(parse::<LifecycleReply>(vec![]).is_err());
        assert_eq!(
            parse::<PurchaseReply>(vec![bulk("paused")]).expect("parses"),
            PurchaseReply::Paused
        );
    }

    #[test]
    fn audit_and_rate_replies() {
        let row: Vec<Value> = [10, 4, 6, 6, 6, 5, 1, 1].map(Value::Int).to_vec();
        let AuditReply::Sale(a) = parse::<AuditReply>(row).expect("parses") else {
            panic!("a sale")
        };
        assert_eq!((a.sold, a.confirmed, a.consistent), (6, 5, true));
        assert_eq!(
            parse::<AuditReply>(vec![]).expect("parses"),
            AuditReply::UnknownSku
        );
        assert!(parse::<AuditReply>(vec![Value::Int(1)]).is_err());
        assert_eq!(
            parse::<RateReply>(vec![Value::Int(1), Value::Int(0)]).expect("parses"),
            RateReply::Allowed
        );
        assert_eq!(
            parse::<RateReply>(vec![Value::Int(0), Value::Int(250)]).expect("parses"),
            RateReply::Wait { ms: 250 }
        );
    }
}
