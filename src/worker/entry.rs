//! An order stream entry as the worker reads it: its fields checked before
//! anything is done with it (a malformed entry is poison: left pending,
//! retried, then dead-lettered); and, with a ledger, the order record the
//! entry names, as the ledger gets it.

use redis::Value;
use redis::streams::StreamId;
use time::OffsetDateTime;

use crate::ledger::NewOrder;
use crate::sale::{sku_of_order, valid_sku, valid_user};

/// One parsed order entry.
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) order_id: String,
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
    Ok(Entry {
        id: e.id.clone(),
        order_id,
    })
}

/// The fields of an order record the ledger is given, in `HMGET` order.
pub(super) const ORDER_FIELDS: [&str; 5] = ["status", "order_id", "user_id", "qty", "created_ms"];

/// The ledger's new order for an entry, from the `HMGET` of its order
/// record ([`ORDER_FIELDS`]); `None` when the record is missing, names
/// another order, or is malformed — such an entry is treated as
/// `fs_confirm_batch` treats it (-1: left pending, so retried and
/// eventually dead-lettered), and never reaches the ledger.
pub(super) fn new_order(sku: &str, e: &Entry, fields: &[Option<String>]) -> Option<NewOrder> {
    let [status, order_id, user, qty, created_ms] = fields else {
        return None;
    };
    status.as_ref()?;
    if order_id.as_deref() != Some(e.order_id.as_str()) {
        return None;
    }
    let user = user.clone().filter(|u| valid_user(u))?;
    let qty: i32 = qty.as_deref()?.parse().ok().filter(|q| *q >= 1)?;
    let ms: i64 = created_ms.as_deref()?.parse().ok()?;
    let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    Some(NewOrder {
        order_id: e.order_id.clone(),
        sku: sku.to_owned(),
        user_id: user,
        qty,
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: "1-0".into(),
            order_id: "s1.abc".into(),
        }
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
