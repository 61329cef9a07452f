//! Orders as the tests and the failover harness check them: read straight
//! from the current master, never through the service under test; and the
//! promised orders against the order ledger's rows ([`ledger_promises`]:
//! each in exactly one row, no shopper past the limit).

use std::time::{Duration, Instant};

use crate::redis_group::RedisGroup;

/// Whether an order status is `confirmed` or one only reached through it.
pub fn reached_confirmed(status: Option<&str>) -> bool {
    matches!(status, Some("confirmed" | "paid" | "expired" | "cancelled"))
}

/// `status` of each order (ids are `<sku>.<hex>`) under key prefix
/// `prefix`, on the current master (`None`: no such order).
pub async fn order_statuses(
    group: &RedisGroup,
    prefix: &str,
    ids: &[String],
) -> Result<Vec<Option<String>>, redis::RedisError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = group.client(group.master_port().await).await;
    let mut pipe = redis::pipe();
    for id in ids {
        let sku = id.rsplit_once('.').map(|(s, _)| s).unwrap_or(id);
        pipe.cmd("HGET")
            .arg(format!("{prefix}:{{{sku}}}:order:{id}"))
            .arg("status");
    }
    pipe.query_async(&mut c).await
}

/// Waits up to `timeout` for every order of `ids` to reach `confirmed` on
/// the current master; returns those that did not, with their status then
/// (`None`: the order does not exist). A read that fails is retried until
/// the deadline; past it, every order counts as not confirmed.
pub async fn unconfirmed_after(
    group: &RedisGroup,
    prefix: &str,
    ids: &[String],
    timeout: Duration,
) -> Vec<(String, Option<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = order_statuses(group, prefix, ids).await;
        let bad: Vec<(String, Option<String>)> = match statuses {
            Ok(st) => ids
                .iter()
                .zip(st)
                .filter(|(_, s)| !reached_confirmed(s.as_deref()))
                .map(|(id, s)| (id.clone(), s))
                .collect(),
            Err(_) => ids.iter().map(|id| (id.clone(), None)).collect(),
        };
        if bad.is_empty() || Instant::now() >= deadline {
            return bad;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the ledger holds of the orders a harness promised (answered 202 or
/// 409): see [`promises_in_ledger`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerPromises {
    /// Rows of the sale in the ledger.
    pub rows: u64,
    /// Promised orders with no row (the first few; `missing_total` counts).
    pub missing: Vec<String>,
    pub missing_total: u64,
    /// Order ids on more than one row.
    pub doubled_ids: Vec<String>,
    /// Shoppers with more units in the ledger than the sale's limit: one
    /// promise made twice under two order ids.
    pub over_limit_users: Vec<String>,
    /// Rows of orders nobody was promised (a shopper who gave up after the
    /// order was made): no fault of the ledger's, counted for the record.
    pub unpromised: u64,
}

impl LedgerPromises {
    /// Rows doubled: an order id twice, or a shopper past the limit.
    pub fn doubled(&self) -> u64 {
        (self.doubled_ids.len() + self.over_limit_users.len()) as u64
    }

    /// Every promise is there exactly once and no shopper twice.
    pub fn exact(&self) -> bool {
        self.missing_total == 0 && self.doubled() == 0
    }
}

/// Ids shown per list of [`LedgerPromises`].
const SHOWN: usize = 5;

/// Compares a sale's ledger rows with the orders promised: every promise
/// in exactly one row, no order id twice, no shopper with more than
/// `per_user_limit` units.
/// `rows` are the sale's rows as (order id, user id, quantity).
pub fn promises_in_ledger<'a>(
    rows: impl IntoIterator<Item = (&'a str, &'a str, i64)>,
    promised: &[String],
    per_user_limit: i64,
) -> LedgerPromises {
    use std::collections::{BTreeMap, HashSet};
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    let mut units: BTreeMap<&str, i64> = BTreeMap::new();
    let mut n = 0u64;
    for (id, user, qty) in rows {
        n += 1;
        *ids.entry(id).or_default() += 1;
        *units.entry(user).or_default() += qty;
    }
    let promised_set: HashSet<&str> = promised.iter().map(String::as_str).collect();
    let mut out = LedgerPromises {
        rows: n,
        ..LedgerPromises::default()
    };
    for id in &promised_set {
        if !ids.contains_key(id) {
            out.missing_total += 1;
            if out.missing.len() < SHOWN {
                out.missing.push((*id).to_owned());
            }
        }
    }
    out.missing.sort();
    out.doubled_ids = ids
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| (*id).to_owned())
        .collect();
    out.over_limit_users = units
        .iter()
        .filter(|(_, u)| **u > per_user_limit)
        .map(|(u, _)| (*u).to_owned())
        .collect();
    out.unpromised = ids.keys().filter(|id| !promised_set.contains(*id)).count() as u64;
    out
}

/// Reads every row of `sku` from the ledger and compares them with the
/// promised orders ([`promises_in_ledger`]).
pub async fn ledger_promises(
    ledger: &flashsale::ledger::Ledger,
    sku: &str,
    promised: &[String],
    per_user_limit: i64,
) -> Result<LedgerPromises, flashsale::ledger::LedgerError> {
    use futures_util::TryStreamExt;
    let rows: Vec<flashsale::ledger::LedgerOrder> = ledger.orders_of(sku).try_collect().await?;
    Ok(promises_in_ledger(
        rows.iter()
            .map(|r| (r.order_id.as_str(), r.user_id.as_str(), i64::from(r.qty))),
        promised,
        per_user_limit,
    ))
}

/// How many order records of `sku` the node behind `conn` holds (a `SCAN`
/// of the sale's order keys; every node of one shard keeps them in one
/// slot).
pub async fn order_records(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &flashsale::redis::Keys,
    sku: &str,
) -> Result<usize, redis::RedisError> {
    let mut records = 0;
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.order(sku, "*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        records += found.len();
        if next == 0 {
            return Ok(records);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_are_found_once_or_named() {
        let promised: Vec<String> = ["s.1", "s.2", "s.3"].map(String::from).to_vec();
        let exact = [("s.1", "a", 1), ("s.2", "b", 1), ("s.3", "c", 1)];
        let p = promises_in_ledger(exact, &promised, 1);
        assert!(p.exact(), "{p:?}");
        assert_eq!((p.rows, p.unpromised), (3, 0));

        // s.3 missing; s.1 twice; shopper b holds two orders; s.9 unpromised.
        let off = [
            ("s.1", "a", 1),
            ("s.1", "a", 1),
            ("s.2", "b", 1),
            ("s.9", "b", 1),
        ];
        let p = promises_in_ledger(off, &promised, 1);
        assert!(!p.exact());
        assert_eq!(p.missing, ["s.3"]);
        assert_eq!(p.missing_total, 1);
        assert_eq!(p.doubled_ids, ["s.1"]);
        assert_eq!(p.over_limit_users, ["a", "b"]);
        assert_eq!((p.doubled(), p.unpromised, p.rows), (3, 1, 4));
    }
}
