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

use redis::Value;
use serde::Serialize;

use super::backlog::{GroupState, group_state, oldest_entry_ms, push_oldest_reads};
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
    let group = group_state(groups, group_name).unwrap_or(GroupState {
        pending: 0,
        lag: Some(queued),
        last_delivered: "0-0".to_owned(),
    });
    let waiting = stream_exists && (group.pending > 0 || group.lag != Some(0));
    let oldest_queued_ms = if waiting {
        let mut second = redis::pipe();
        push_oldest_reads(second.ignore_errors(), &stream, group_name, &group);
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
