//! An order stream entry as the worker reads it: its fields checked before
//! anything is done with it (a malformed entry is poison: left pending,
//! retried, then dead-lettered).

use redis::Value;
use redis::streams::StreamId;

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
