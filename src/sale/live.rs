//! The live numbers of the running sales, for the operators' live view
//! (`GET /admin/live/snapshot`): per open, paused or sold-out sale its
//! stock, its orders not yet confirmed and how old the oldest of them is,
//! the worker's consumer group on its order stream (pending and lag, from
//! `XINFO GROUPS` as the worker's lag gauge reads them) and its dead
//! letters.
//!
//! This module owns those reads and nothing else: it writes nothing, and it
//! never decides a purchase. The consumer group's name is the caller's to
//! give (the worker owns it; the domain does not import the worker). Which sales are live comes from the catalog's
//! cached list ([`super::Catalog::list`]); the numbers themselves are read
//! from a replica of the shard owning the sale (the master when no replica
//! answers), one pipeline per sale plus, only while orders wait, a second
//! one for the age of the oldest. A replica is at most its replication lag
//! behind: good enough for a chart that refreshes every second.
//! Caching (so that many open pages cost Redis no more than one) is the
//! caller's business.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;

use super::{AdminState, Catalog, Error, Sale};
use crate::redis::{Redis, text};

/// One running sale as the live view shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LiveSale {
    pub sku: String,
    pub name: String,
    /// `open`, `paused` or `sold_out`.
    pub state: AdminState,
    pub stock_total: i64,
    pub stock_left: i64,
    /// Units held by orders (`stock_total - stock_left`).
    pub sold: i64,
    /// Orders ever made in this sale (only grows: purchases per second are
    /// its rate).
    pub orders: i64,
    /// Orders not confirmed yet (`orders - confirmed`, as the audit counts
    /// `pending`).
    pub queued: i64,
    /// Milliseconds since the oldest order still waiting for a worker was
    /// queued (its stream entry's time); null when none waits.
    pub oldest_queued_ms: Option<i64>,
    /// Entries the workers read and have not acknowledged yet.
    pub worker_pending: i64,
    /// Entries no worker has read yet; null when Redis cannot tell (after
    /// deletions inside the stream).
    pub worker_lag: Option<i64>,
    /// Entries in the sale's dead-letter stream.
    pub dead_letters: i64,
}

/// The running sales at one moment (`taken_ms`, this instance's clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Board {
    pub taken_ms: i64,
    pub sales: Vec<LiveSale>,
}

/// Whether the live view shows a sale in this state.
fn shown(state: AdminState) -> bool {
    matches!(
        state,
        AdminState::Open | AdminState::Paused | AdminState::SoldOut
    )
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// Milliseconds part of a stream entry id (`<ms>-<seq>`).
fn id_ms(id: &str) -> Option<i64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

/// The worker group's numbers in an `XINFO GROUPS` reply (an error reply,
/// a missing stream: none).
struct GroupInfo {
    pending: i64,
    lag: Option<i64>,
    last_delivered: String,
}

fn group_info(v: &Value, name: &str) -> Option<GroupInfo> {
    let groups: Vec<HashMap<String, Value>> = redis::from_redis_value(v.clone()).ok()?;
    let g = groups
        .into_iter()
        .find(|g| g.get("name").and_then(text).as_deref() == Some(name))?;
    Some(GroupInfo {
        pending: g.get("pending").and_then(int).unwrap_or(0),
        lag: g.get("lag").and_then(int),
        last_delivered: g
            .get("last-delivered-id")
            .and_then(text)
            .unwrap_or_else(|| "0-0".to_owned()),
    })
}

/// The time (ms) of the oldest entry the group still has to finish: its
/// oldest pending one (`XPENDING` summary) or the first it has not read
/// (`XRANGE` after its last delivered id), whichever is older.
fn oldest_entry_ms(pending: &Value, unread: &Value) -> Option<i64> {
    let oldest_pending = match pending {
        Value::Array(items) => items.get(1).and_then(text).and_then(|id| id_ms(&id)),
        _ => None,
    };
    let first_unread = match unread {
        Value::Array(entries) => entries.first().and_then(|e| match e {
            Value::Array(parts) => parts.first().and_then(text).and_then(|id| id_ms(&id)),
            _ => None,
        }),
        _ => None,
    };
    match (oldest_pending, first_unread) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The live numbers of one sale; `sale` is its catalog entry (name, window,
/// pause), the counters are read again.
async fn read_sale(
    redis: &Redis,
    group_name: &str,
    sale: &Sale,
    now: i64,
) -> Result<Option<LiveSale>, Error> {
    let keys = redis.keys();
    let stream = keys.stream(&sale.sku);
    let mut first = redis::pipe();
    // A stream that does not exist yet (no order so far) answers XINFO
    // with an error: kept as a value, not a failure of the whole read.
    first
        .ignore_errors()
        .cmd("HMGET")
        .arg(keys.sale(&sale.sku))
        .arg(&[
            "stock_total",
            "stock_left",
            "orders",
            "confirmed",
            "paused",
            "ends_ms",
        ])
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .cmd("XLEN")
        .arg(keys.dead_letters(&sale.sku));
    let replies: Vec<Value> = redis.read(&first).await?;
    let [fields, groups, dead] = replies.as_slice() else {
        return Err(Error::Internal(
            "live read: a reply of the wrong length".into(),
        ));
    };
    let fields: Vec<Option<i64>> = match fields {
        Value::Array(items) => items.iter().map(int).collect(),
        _ => Vec::new(),
    };
    let field = |i: usize| fields.get(i).copied().flatten();
    let Some(stock_total) = field(0) else {
        // Purged since the catalog was read.
        return Ok(None);
    };
    let now_sale = Sale {
        stock_total,
        stock_left: field(1).unwrap_or(0),
        paused: field(4) == Some(1),
        ends_ms: field(5).unwrap_or(sale.ends_ms),
        ..sale.clone()
    };
    let state = now_sale.admin_state_at(now);
    if !shown(state) {
        return Ok(None);
    }
    let orders = field(2).unwrap_or(0);
    let queued = (orders - field(3).unwrap_or(0)).max(0);
    // No group yet (no worker has read this stream): every entry is unread.
    let stream_exists = matches!(groups, Value::Array(_));
    let group = group_info(groups, group_name).unwrap_or(GroupInfo {
        pending: 0,
        lag: Some(queued),
        last_delivered: "0-0".to_owned(),
    });
    let waiting = stream_exists && (group.pending > 0 || group.lag != Some(0));
    let oldest_queued_ms = if waiting {
        let mut second = redis::pipe();
        second
            .ignore_errors()
            .cmd("XPENDING")
            .arg(&stream)
            .arg(group_name)
            .cmd("XRANGE")
            .arg(&stream)
            .arg(format!("({}", group.last_delivered))
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let replies: Vec<Value> = redis.read(&second).await?;
        match replies.as_slice() {
            [pending, unread] => oldest_entry_ms(pending, unread).map(|t| (now - t).max(0)),
            _ => None,
        }
    } else {
        None
    };
    let stock_left = now_sale.stock_left.max(0);
    Ok(Some(LiveSale {
        sku: sale.sku.clone(),
        name: sale.name.clone(),
        state,
        stock_total,
        stock_left,
        sold: stock_total - stock_left,
        orders,
        queued,
        oldest_queued_ms,
        worker_pending: group.pending,
        worker_lag: group.lag,
        dead_letters: int(dead).unwrap_or(0),
    }))
}

/// The running (open, paused, sold-out) sales with their live numbers, by
/// start time; `group` is the workers' consumer group on the order streams.
pub async fn board(redis: &Redis, catalog: &Catalog, group: &str) -> Result<Board, Error> {
    let now = super::now_ms();
    let listed = catalog.list().await?;
    let candidates: Vec<&Sale> = listed
        .iter()
        .filter(|s| now < s.ends_ms && (now >= s.starts_ms || s.paused))
        .collect();
    let reads = candidates.iter().map(|s| read_sale(redis, group, s, now));
    let sales = futures_util::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .collect();
    Ok(Board {
        taken_ms: now,
        sales,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    const GROUP: &str = "workers";

    #[test]
    fn the_worker_group_is_found_among_others() {
        let g = |name: &str, pending: i64, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                Value::Int(1),
                bulk("pending"),
                Value::Int(pending),
                bulk("last-delivered-id"),
                bulk("1700000000000-3"),
                bulk("entries-read"),
                Value::Int(4),
                bulk("lag"),
                lag,
            ])
        };
        let reply = Value::Array(vec![g("other", 9, Value::Int(9)), g(GROUP, 2, Value::Nil)]);
        let info = group_info(&reply, GROUP).expect("group");
        assert_eq!(info.pending, 2);
        assert_eq!(info.lag, None);
        assert_eq!(info.last_delivered, "1700000000000-3");
        assert!(group_info(&Value::Nil, GROUP).is_none());
        assert!(group_info(&Value::Array(vec![g("other", 1, Value::Int(0))]), GROUP).is_none());
    }

    #[test]
    fn the_oldest_entry_is_the_older_of_pending_and_unread() {
        let pending = Value::Array(vec![
            Value::Int(2),
            bulk("1000-0"),
            bulk("1500-1"),
            Value::Array(vec![]),
        ]);
        let unread = Value::Array(vec![Value::Array(vec![
            bulk("900-0"),
            Value::Array(vec![]),
        ])]);
        assert_eq!(oldest_entry_ms(&pending, &unread), Some(900));
        let nothing_pending = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(oldest_entry_ms(&nothing_pending, &unread), Some(900));
        assert_eq!(oldest_entry_ms(&pending, &Value::Array(vec![])), Some(1000));
        assert_eq!(
            oldest_entry_ms(&nothing_pending, &Value::Array(vec![])),
            None
        );
    }
}
