//! An order stream entry as the worker reads it: its fields checked before
//! anything is done with it (a malformed entry is poison: left pending,
//! retried, then dead-lettered); and, with a ledger, the order record the
//! entry names, as the ledger gets it.
//!
//! Two kinds of entries share a stream: an order entry (`order_id`, `sku`,
//! `user_id`, `qty`: a new order, written by the purchase), and from
//! library version 12 an event entry, the same fields plus `kind` = `paid`,
//! `expired` or `cancelled` (written by `fs_pay`, `fs_expire`, `fs_cancel`
//! when the order ends). An entry with any other `kind` is poison.

use redis::Value;
use redis::streams::StreamId;
use time::OffsetDateTime;

use crate::ledger::{NewOrder, Record};
use crate::sale::{sku_of_order, valid_sku, valid_user};

/// How an order ended, as an event entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventKind {
    Paid,
    Expired,
    Cancelled,
}

impl EventKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            EventKind::Paid => "paid",
            EventKind::Expired => "expired",
            EventKind::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "paid" => EventKind::Paid,
            "expired" => EventKind::Expired,
            "cancelled" => EventKind::Cancelled,
            _ => return None,
        })
    }
}

/// One parsed entry: an order entry (`kind` `None`) or an event entry.
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) order_id: String,
    pub(super) kind: Option<EventKind>,
}

fn field(e: &StreamId, k: &str) -> Option<String> {
    match e.map.get(k)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Validates an entry's fields; `Err(reason)` for a poison entry.
pub(super) fn parse_entry(stream_sku: &str, e: &StreamId) -> Result<Entry, String> {
    let order_id = field(e, "order_id").ok_or("missing order_id")?;
    let sku = field(e, "sku").ok_or("missing sku")?;
    let user = field(e, "user_id").ok_or("missing user_id")?;
    let qty: i64 = field(e, "qty")
        .and_then(|q| q.parse().ok())
        .ok_or("missing or malformed qty")?;
    if sku != stream_sku || !valid_sku(&sku) {
        return Err(format!("sku {sku:?} does not belong to this stream"));
    }
    if sku_of_order(&order_id) != Some(sku.as_str()) {
        return Err("malformed order_id".into());
    }
    if !valid_user(&user) || qty < 1 {
        return Err("malformed user_id or qty".into());
    }
    let kind = match field(e, "kind") {
        None => None,
        Some(k) => Some(EventKind::parse(&k).ok_or_else(|| format!("unknown kind {k:?}"))?),
    };
    Ok(Entry {
        id: e.id.clone(),
        order_id,
        kind,
    })
}

/// The fields of an order record the ledger is given, in `HMGET` order:
/// the order's own ([`new_order`]), then those of its end ([`order_end`]).
pub(super) const ORDER_FIELDS: [&str; 11] = [
    "status",
    "order_id",
    "user_id",
    "qty",
    "created_ms",
    "paid_ms",
    "payment_id",
    "amount_cents",
    "expired_ms",
    "cancelled_ms",
    "pay_by_ms",
];

fn time_of(ms: &Option<String>) -> Option<OffsetDateTime> {
    let ms: i64 = ms.as_deref()?.parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// The ledger's new order for an entry, from the `HMGET` of its order
/// record ([`ORDER_FIELDS`]); `None` when the record is missing, names
/// another order, or is malformed — such an entry is treated as
/// `fs_confirm_batch` treats it (-1: left pending, so retried and
/// eventually dead-lettered), and never reaches the ledger.
pub(super) fn new_order(sku: &str, e: &Entry, fields: &[Option<String>]) -> Option<NewOrder> {
    let [status, order_id, user, qty, created_ms, ..] = fields else {
        return None;
    };
    let field = |i: usize| fields.get(i).cloned().flatten();
    let (amount, pay_by) = (field(7), field(10));
    status.as_ref()?;
    if order_id.as_deref() != Some(e.order_id.as_str()) {
        return None;
    }
    let user = user.clone().filter(|u| valid_user(u))?;
    let qty: i32 = qty.as_deref()?.parse().ok().filter(|q| *q >= 1)?;
    let created_at = time_of(created_ms)?;
    Some(NewOrder {
        order_id: e.order_id.clone(),
        sku: sku.to_owned(),
        user_id: user,
        qty,
        created_at,
        amount_cents: amount.as_deref().and_then(|a| a.parse().ok()),
        pay_by: time_of(&pay_by),
    })
}

/// The end an order record shows ([`ORDER_FIELDS`]), as the ledger gets
/// it: `Ok(None)` for an order still waiting (queued or confirmed),
/// `Err(())` for an ended order whose end is incomplete (a record the
/// library never writes: the entry is treated as one whose order does not
/// match, and never reaches the ledger).
pub(super) fn order_end(order_id: &str, fields: &[Option<String>]) -> Result<Option<Record>, ()> {
    let [
        status,
        _,
        _,
        _,
        _,
        paid_ms,
        payment_id,
        amount,
        expired_ms,
        cancelled_ms,
        ..,
    ] = fields
    else {
        return Err(());
    };
    let order_id = order_id.to_owned();
    Ok(Some(match status.as_deref() {
        Some("paid") => Record::Paid {
            order_id,
            paid_at: time_of(paid_ms).ok_or(())?,
            payment_id: payment_id.clone().filter(|p| !p.is_empty()).ok_or(())?,
            amount_cents: amount.as_deref().and_then(|a| a.parse().ok()).ok_or(())?,
        },
        Some("expired") => Record::Expired {
            order_id,
            at: time_of(expired_ms).ok_or(())?,
        },
        Some("cancelled") => Record::Cancelled {
            order_id,
            at: time_of(cancelled_ms).ok_or(())?,
        },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: "1-0".into(),
            order_id: "s1.abc".into(),
            kind: None,
        }
    }

    const ID: &str = "s1.0123456789abcdef0123456789abcdef";

    fn raw(fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::BulkString(v.as_bytes().to_vec())))
                .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        }
    }

    #[test]
    fn event_entries_are_told_from_order_entries() {
        let order = [
            ("order_id", ID),
            ("sku", "s1"),
            ("user_id", "u7"),
            ("qty", "1"),
        ];
        assert_eq!(parse_entry("s1", &raw(&order)).expect("order").kind, None);
        for (k, want) in [
            ("paid", EventKind::Paid),
            ("expired", EventKind::Expired),
            ("cancelled", EventKind::Cancelled),
        ] {
            let mut f = order.to_vec();
            f.push(("kind", k));
            let e = parse_entry("s1", &raw(&f)).expect("event");
            assert_eq!((e.kind, e.order_id.as_str()), (Some(want), ID));
            assert_eq!(want.as_str(), k);
        }
        let mut f = order.to_vec();
        f.push(("kind", "refunded"));
        assert!(
            parse_entry("s1", &raw(&f)).is_err(),
            "an unknown kind is poison"
        );
    }

    fn full(status: &str, end: [Option<&str>; 5]) -> Vec<Option<String>> {
        let mut f = fields([
            Some(status),
            Some("s1.abc"),
            Some("u7"),
            Some("1"),
            Some("1700000000123"),
        ]);
        f.extend(end.iter().map(|v| v.map(str::to_owned)));
        f
    }

    #[test]
    fn an_ended_order_carries_its_end_to_the_ledger() {
        let waiting = full("confirmed", [None; 5]);
        assert_eq!(order_end("s1.abc", &waiting), Ok(None));
        assert_eq!(order_end("s1.abc", &full("queued", [None; 5])), Ok(None));
        let paid = full(
            "paid",
            [
                Some("1700000001000"),
                Some("ch_1"),
                Some("1999"),
                None,
                None,
            ],
        );
        match order_end("s1.abc", &paid) {
            Ok(Some(Record::Paid {
                order_id,
                paid_at,
                payment_id,
                amount_cents,
            })) => {
                assert_eq!(order_id, "s1.abc");
                assert_eq!(paid_at.unix_timestamp(), 1_700_000_001);
                assert_eq!((payment_id.as_str(), amount_cents), ("ch_1", 1999));
            }
            other => panic!("{other:?}"),
        }
        let expired = full(
            "expired",
            [None, None, Some("1999"), Some("1700000002000"), None],
        );
        assert!(matches!(
            order_end("s1.abc", &expired),
            Ok(Some(Record::Expired { at, .. })) if at.unix_timestamp() == 1_700_000_002
        ));
        let cancelled = full("cancelled", [None, None, None, None, Some("1700000003000")]);
        assert!(matches!(
            order_end("s1.abc", &cancelled),
            Ok(Some(Record::Cancelled { at, .. })) if at.unix_timestamp() == 1_700_000_003
        ));
        // An end without its time or payment is not the library's: refused.
        assert_eq!(order_end("s1.abc", &full("expired", [None; 5])), Err(()));
        let no_payment = full("paid", [Some("1700000001000"), None, Some("1"), None, None]);
        assert_eq!(order_end("s1.abc", &no_payment), Err(()));
        assert_eq!(order_end("s1.abc", &waiting[..5]), Err(()));
        // The order itself still reads from the first five fields.
        assert!(new_order("s1", &entry(), &paid).is_some());
    }

    fn fields(v: [Option<&str>; 5]) -> Vec<Option<String>> {
        v.iter().map(|f| f.map(str::to_owned)).collect()
    }

    #[test]
    fn an_existing_order_becomes_a_new_ledger_order() {
        let f = fields([
            Some("queued"),
            Some("s1.abc"),
            Some("u7"),
            Some("2"),
            Some("1700000000123"),
        ]);
        let o = new_order("s1", &entry(), &f).expect("order");
        assert_eq!((o.sku.as_str(), o.user_id.as_str(), o.qty), ("s1", "u7", 2));
        assert_eq!(o.created_at.unix_timestamp(), 1_700_000_000);
        assert_eq!(o.created_at.millisecond(), 123);
    }

    #[test]
    fn missing_or_mismatched_records_never_reach_the_ledger() {
        let ok = [
            Some("confirmed"),
            Some("s1.abc"),
            Some("u7"),
            Some("1"),
            Some("1700000000123"),
        ];
        assert!(new_order("s1", &entry(), &fields(ok)).is_some());
        for (i, bad) in [
            None,
            Some("s1.other"),
            Some("bad user"),
            Some("0"),
            Some("x"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut f = ok;
            f[i] = bad;
            assert!(
                new_order("s1", &entry(), &fields(f)).is_none(),
                "field {i}: {bad:?}"
            );
        }
        assert!(new_order("s1", &entry(), &fields([None; 5])).is_none());
        assert!(new_order("s1", &entry(), &[]).is_none());
    }
}
