//! Comparing a sale's orders in Redis with its rows in the ledger:
//! `flashsale audit` reports the differences, every purge (`flashsale sale
//! purge` and the workers' automatic one) refuses to delete Redis's copy of
//! orders the ledger does not hold as they ended.
//!
//! This module reads the ledger only. `sale::purge::compare_with_ledger`
//! reads Redis (every order record of the sale on the master) and hands
//! each record over as its `HGETALL` ([`Reconcile::add_redis`]); the
//! comparison itself is pure.
//!
//! What counts, per order:
//! - an order Redis holds as recorded by a worker (`confirmed_ms` set) must
//!   be in the ledger once, with the same user, quantity and status, and
//!   the same amount where the ledger holds one;
//! - an order Redis holds but no worker recorded yet is *pending*: the
//!   ledger may or may not have it yet (a worker writes the ledger, then
//!   confirms), and that is no difference;
//! - every ledger row must be an order Redis holds;
//! - a key under the sale's order keys that is not an order record is
//!   *unreadable*, a difference.
//!
//! Live sales move while they are compared. Redis is read first, then the
//! ledger: an order Redis showed as recorded was in the ledger before
//! (workers record, then confirm), so it is found; a ledger row Redis did
//! not show, or showed with another status, may be an order bought or
//! changed in between, so such rows are read again from Redis
//! ([`Reconcile::to_recheck`], [`Reconcile::refresh`]) before they count.
//! What still differs then is a difference, also when it is only a worker
//! behind with a status change: the report gives both statuses.

use std::collections::{HashMap, HashSet};

use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Ledger, LedgerError, LedgerOrder};

/// Order ids shown per kind of difference (the totals count them all).
pub const SHOWN: usize = 20;

/// An order record as Redis holds it: what the comparison needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOrder {
    pub order_id: String,
    pub user_id: String,
    pub qty: i64,
    /// `queued`, `confirmed`, `paid`, `expired` or `cancelled`.
    pub status: String,
    pub created_ms: Option<i64>,
    /// Price × quantity at the purchase (absent on orders older than the
    /// payment step).
    pub amount_cents: Option<i64>,
    /// A worker recorded it (`confirmed_ms` is set).
    pub recorded: bool,
    /// Confirmed with a payment deadline: its final status is not known yet.
    pub awaiting_payment: bool,
}

impl RedisOrder {
    /// The order in an `HGETALL` of the record under `order_id`'s key;
    /// `None` when the hash is not that order's record (a field missing or
    /// malformed, another order id). An empty hash is no record at all: see
    /// [`Reconcile::add_redis`].
    pub fn from_hash(order_id: &str, hash: &HashMap<String, String>) -> Option<RedisOrder> {
        let int = |k: &str| hash.get(k).and_then(|v| v.parse::<i64>().ok());
        if hash.get("order_id").map(String::as_str) != Some(order_id) {
            return None;
        }
        let status = hash.get("status")?.clone();
        Some(RedisOrder {
            order_id: order_id.to_owned(),
            user_id: hash.get("user_id")?.clone(),
            qty: int("qty")?,
            created_ms: int("created_ms"),
            amount_cents: int("amount_cents"),
            recorded: hash.contains_key("confirmed_ms"),
            awaiting_payment: status == "confirmed" && hash.contains_key("pay_by_ms"),
            status,
        })
    }
}

/// A status Redis and the ledger disagree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusDiff {
    pub order_id: String,
    pub redis: String,
    pub ledger: &'static str,
}

/// Fields Redis and the ledger disagree on (`user_id`, `qty`,
/// `amount_cents`): only those, on each side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldsDiff {
    pub order_id: String,
    pub redis: Map<String, Value>,
    pub ledger: Map<String, Value>,
}

/// How many differences of each kind (the lists show the first [`SHOWN`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub missing_in_ledger: u64,
    pub missing_in_redis: u64,
    pub status_differs: u64,
    pub fields_differ: u64,
    pub duplicated: u64,
    pub unreadable: u64,
}

impl Totals {
    fn sum(&self) -> u64 {
        self.missing_in_ledger
            + self.missing_in_redis
            + self.status_differs
            + self.fields_differ
            + self.duplicated
            + self.unreadable
    }
}

/// What a comparison found, as `flashsale audit` prints it under `ledger`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LedgerCheck {
    /// Rows of the sale in the ledger.
    pub orders: u64,
    /// Orders in Redis a worker recorded.
    pub recorded: u64,
    /// Orders in Redis no worker recorded yet (no difference).
    pub pending: u64,
    /// Recorded orders still waiting for their payment.
    pub awaiting_payment: u64,
    /// Recorded in Redis, not in the ledger (by purchase time).
    pub missing_in_ledger: Vec<String>,
    /// In the ledger, not in Redis (by purchase time).
    pub missing_in_redis: Vec<String>,
    pub status_differs: Vec<StatusDiff>,
    pub fields_differ: Vec<FieldsDiff>,
    /// Read more than once from the ledger.
    pub duplicated: Vec<String>,
    /// Keys among the sale's order keys that hold no readable order.
    pub unreadable: Vec<String>,
    pub totals: Totals,
    /// The sale is not in Redis any more (purged): the ledger's rows are
    /// its only record, and nothing was compared.
    pub purged: bool,
    /// No difference of any kind.
    pub consistent: bool,
}

impl LedgerCheck {
    /// A sale Redis no longer has, with `orders` rows in the ledger.
    pub fn purged(orders: u64) -> LedgerCheck {
        LedgerCheck {
            orders,
            purged: true,
            consistent: true,
            ..LedgerCheck::default()
        }
    }

    /// Why Redis's copy of the sale's orders may not be deleted yet: `None`
    /// when every recorded order is in the ledger as it ended; otherwise an
    /// error code (`orders_pending`, `not_in_ledger`) and a message. Rows
    /// only the ledger has are no reason: a purge loses nothing of them.
    pub fn purge_refusal(&self) -> Option<(&'static str, String)> {
        if self.pending > 0 {
            return Some((
                "orders_pending",
                format!(
                    "{} orders are not recorded in the ledger yet; is a worker running?",
                    self.pending
                ),
            ));
        }
        let t = &self.totals;
        let mut why = Vec::new();
        let mut say = |n: u64, what: &str, ids: Vec<&str>| {
            if n > 0 {
                let shown = ids.into_iter().take(3).collect::<Vec<_>>().join(", ");
                why.push(format!("{what}: {n} (e.g. {shown})"));
            }
        };
        say(
            t.missing_in_ledger,
            "orders missing in the ledger",
            self.missing_in_ledger.iter().map(String::as_str).collect(),
        );
        say(
            t.status_differs,
            "orders with another status there",
            self.status_differs
                .iter()
                .map(|d| d.order_id.as_str())
                .collect(),
        );
        say(
            t.fields_differ,
            "orders with another user, quantity or amount there",
            self.fields_differ
                .iter()
                .map(|d| d.order_id.as_str())
                .collect(),
        );
        say(
            t.duplicated,
            "orders there more than once",
            self.duplicated.iter().map(String::as_str).collect(),
        );
        say(
            t.unreadable,
            "order records that cannot be read",
            self.unreadable.iter().map(String::as_str).collect(),
        );
        if self.awaiting_payment > 0 {
            why.push(format!(
                "orders still waiting for their payment (their final status is not known yet): {}",
                self.awaiting_payment
            ));
        }
        (!why.is_empty()).then(|| ("not_in_ledger", why.join("; ")))
    }
}

/// A comparison in progress: Redis's records first, then the ledger's
/// rows, then a second look at the rows that did not match, then
/// [`Reconcile::finish`].
#[derive(Debug, Default)]
pub struct Reconcile {
    redis: HashMap<String, RedisOrder>,
    unreadable: HashSet<String>,
    /// Ledger rows read, per order id.
    seen: HashMap<String, u32>,
    /// Rows that did not match Redis's first reading (missing there, or
    /// another status): compared again in `finish`.
    suspects: Vec<LedgerOrder>,
    check: LedgerCheck,
}

/// Appends to a shown list while it is short, and counts.
fn note<T>(list: &mut Vec<T>, total: &mut u64, item: impl FnOnce() -> T) {
    *total += 1;
    if list.len() < SHOWN {
        list.push(item());
    }
}

impl Reconcile {
    pub fn new() -> Reconcile {
        Reconcile::default()
    }

    /// One record from Redis: the `HGETALL` of the key of order `order_id`.
    /// An empty hash (the key went away since it was listed) is skipped; a
    /// record given twice (`SCAN` may list a key twice) counts once.
    pub fn add_redis(&mut self, order_id: &str, hash: &HashMap<String, String>) {
        if hash.is_empty() {
            return;
        }
        match RedisOrder::from_hash(order_id, hash) {
            Some(o) => {
                self.unreadable.remove(order_id);
                self.redis.insert(order_id.to_owned(), o);
            }
            None => {
                self.redis.remove(order_id);
                self.unreadable.insert(order_id.to_owned());
            }
        }
    }

    /// One row of the sale from the ledger.
    pub fn ledger_row(&mut self, row: &LedgerOrder) {
        self.check.orders += 1;
        let seen = self.seen.entry(row.order_id.clone()).or_default();
        *seen += 1;
        if *seen > 1 {
            if *seen == 2 {
                note(
                    &mut self.check.duplicated,
                    &mut self.check.totals.duplicated,
                    || row.order_id.clone(),
                );
            }
            return;
        }
        if self.unreadable.contains(&row.order_id) {
            return;
        }
        match self.redis.get(&row.order_id) {
            Some(o) if !status_differs(o, row) => self.compare_fields(row),
            _ => self.suspects.push(row.clone()),
        }
    }

    /// Reads every row of the sale from the ledger (in pages, by purchase
    /// time) into the comparison.
    pub async fn read_ledger(&mut self, ledger: &Ledger, sku: &str) -> Result<(), LedgerError> {
        let mut rows = ledger.orders_of(sku);
        while let Some(row) = rows.try_next().await? {
            self.ledger_row(&row);
        }
        Ok(())
    }

    /// The order ids to read from Redis again before [`Reconcile::finish`]:
    /// ledger rows that did not match the first reading.
    pub fn to_recheck(&self) -> Vec<String> {
        self.suspects.iter().map(|r| r.order_id.clone()).collect()
    }

    /// The second reading of one order: its record as Redis holds it now
    /// (an empty hash: Redis does not have it).
    pub fn refresh(&mut self, order_id: &str, hash: &HashMap<String, String>) {
        if hash.is_empty() {
            self.redis.remove(order_id);
        } else {
            self.add_redis(order_id, hash);
        }
    }

    /// The report.
    pub fn finish(mut self) -> LedgerCheck {
        for row in std::mem::take(&mut self.suspects) {
            if self.unreadable.contains(&row.order_id) {
                continue;
            }
            match self.redis.get(&row.order_id) {
                None => note(
                    &mut self.check.missing_in_redis,
                    &mut self.check.totals.missing_in_redis,
                    || row.order_id.clone(),
                ),
                Some(o) => {
                    if o.recorded && status_differs(o, &row) {
                        let (redis, ledger) = (o.status.clone(), row.status.as_str());
                        note(
                            &mut self.check.status_differs,
                            &mut self.check.totals.status_differs,
                            || StatusDiff {
                                order_id: row.order_id.clone(),
                                redis,
                                ledger,
                            },
                        );
                    }
                    self.compare_fields(&row);
                }
            }
        }

        let mut missing: Vec<(Option<i64>, &str)> = Vec::new();
        for o in self.redis.values() {
            if !o.recorded {
                self.check.pending += 1;
                continue;
            }
            self.check.recorded += 1;
            if o.awaiting_payment {
                self.check.awaiting_payment += 1;
            }
            if !self.seen.contains_key(&o.order_id) {
                missing.push((o.created_ms, &o.order_id));
            }
        }
        missing.sort_unstable();
        self.check.totals.missing_in_ledger = missing.len() as u64;
        self.check.missing_in_ledger = missing
            .iter()
            .take(SHOWN)
            .map(|(_, id)| (*id).to_owned())
            .collect();

        let mut unreadable: Vec<&String> = self.unreadable.iter().collect();
        unreadable.sort_unstable();
        self.check.totals.unreadable = unreadable.len() as u64;
        self.check.unreadable = unreadable.into_iter().take(SHOWN).cloned().collect();

        self.check.consistent = self.check.totals.sum() == 0;
        self.check
    }

    /// User, quantity and (where the ledger holds one) amount.
    fn compare_fields(&mut self, row: &LedgerOrder) {
        let Some(o) = self.redis.get(&row.order_id) else {
            return;
        };
        let (mut redis, mut ledger) = (Map::new(), Map::new());
        if o.user_id != row.user_id {
            redis.insert("user_id".into(), o.user_id.clone().into());
            ledger.insert("user_id".into(), row.user_id.clone().into());
        }
        if o.qty != i64::from(row.qty) {
            redis.insert("qty".into(), o.qty.into());
            ledger.insert("qty".into(), row.qty.into());
        }
        // The ledger's amount is compared where it holds one: the worker
        // writes new orders without it.
        if row.amount_cents.is_some() && row.amount_cents != o.amount_cents {
            redis.insert("amount_cents".into(), o.amount_cents.into());
            ledger.insert("amount_cents".into(), row.amount_cents.into());
        }
        if !redis.is_empty() {
            note(
                &mut self.check.fields_differ,
                &mut self.check.totals.fields_differ,
                || FieldsDiff {
                    order_id: row.order_id.clone(),
                    redis,
                    ledger,
                },
            );
        }
    }
}

/// Whether the ledger's status is not Redis's, for an order a worker
/// recorded (one not recorded yet may be anything in the ledger).
fn status_differs(o: &RedisOrder, row: &LedgerOrder) -> bool {
    o.recorded && o.status != row.status.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerStatus;
    use time::OffsetDateTime;

    fn sku_id(i: usize) -> String {
        format!("rc.{i:032x}")
    }

    fn hash(i: usize, status: &str, recorded: bool) -> HashMap<String, String> {
        let mut h: HashMap<String, String> = [
            ("order_id", sku_id(i)),
            ("sku", "rc".into()),
            ("user_id", format!("u{i}")),
            ("qty", "1".into()),
            ("status", status.into()),
            ("created_ms", (1_000 + i).to_string()),
            ("amount_cents", "1999".into()),
            ("entry", "1-0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if recorded {
            h.insert("confirmed_ms".into(), (2_000 + i).to_string());
        }
        h
    }

    fn row(i: usize, status: LedgerStatus) -> LedgerOrder {
        LedgerOrder {
            order_id: sku_id(i),
            sku: "rc".into(),
            user_id: format!("u{i}"),
            qty: 1,
            status,
            created_at: OffsetDateTime::UNIX_EPOCH,
            confirmed_at: Some(OffsetDateTime::UNIX_EPOCH),
            pay_by: None,
            paid_at: None,
            payment_id: None,
            amount_cents: None,
            expired_at: None,
            cancelled_at: None,
        }
    }

    /// Redis's records, then the ledger's rows, with no second reading.
    fn compare(
        redis: &[HashMap<String, String>],
        ledger: &[LedgerOrder],
    ) -> (LedgerCheck, Vec<String>) {
        let mut r = Reconcile::new();
        for h in redis {
            r.add_redis(&h["order_id"], h);
        }
        for row in ledger {
            r.ledger_row(row);
        }
        let again = r.to_recheck();
        (r.finish(), again)
    }

    #[test]
    fn the_same_orders_on_both_sides_are_consistent() {
        let redis: Vec<_> = (0..50).map(|i| hash(i, "confirmed", true)).collect();
        let ledger: Vec<_> = (0..50).map(|i| row(i, LedgerStatus::Confirmed)).collect();
        let (c, again) = compare(&redis, &ledger);
        assert!(again.is_empty());
        assert!(c.consistent, "{c:?}");
        assert_eq!((c.orders, c.recorded, c.pending), (50, 50, 0));
        assert_eq!(c.totals, Totals::default());
        assert!(c.purge_refusal().is_none());
    }

    #[test]
    fn pending_orders_are_no_difference_whether_recorded_yet_or_not() {
        // 0 and 1: queued, not recorded by a worker; 0 already in the
        // ledger (a worker writes it before it confirms).
        let redis = [hash(0, "queued", false), hash(1, "cancelled", false)];
        let (c, _) = compare(&redis, &[row(0, LedgerStatus::Confirmed)]);
        assert!(c.consistent, "{c:?}");
        assert_eq!((c.orders, c.recorded, c.pending), (1, 0, 2));
        let (code, msg) = c.purge_refusal().expect("refused");
        assert_eq!(code, "orders_pending", "{msg}");
    }

    #[test]
    fn every_kind_of_difference_is_named_and_counted() {
        let mut redis: Vec<_> = (0..6).map(|i| hash(i, "confirmed", true)).collect();
        redis[2] = hash(2, "paid", true);
        redis[3].insert("qty".into(), "2".into());
        redis[4].insert("user_id".into(), "someone".into());
        // A key that holds no order (another id inside).
        let mut broken = hash(9, "confirmed", true);
        broken.insert("order_id".into(), "rc.elsewhere".into());
        let mut ledger: Vec<_> = (1..6).map(|i| row(i, LedgerStatus::Confirmed)).collect();
        ledger.push(row(7, LedgerStatus::Confirmed));
        ledger.push(row(5, LedgerStatus::Confirmed));
        ledger[4].amount_cents = Some(1000);

        let mut r = Reconcile::new();
        for h in &redis {
            r.add_redis(&h["order_id"], h);
        }
        r.add_redis(&sku_id(9), &broken);
        for row in &ledger {
            r.ledger_row(row);
        }
        // 2 (status) and 7 (missing) are read again; nothing changed.
        assert_eq!(r.to_recheck(), vec![sku_id(2), sku_id(7)]);
        r.refresh(&sku_id(2), &redis[2]);
        r.refresh(&sku_id(7), &HashMap::new());
        let c = r.finish();

        assert!(!c.consistent);
        assert_eq!(c.missing_in_ledger, vec![sku_id(0)]);
        assert_eq!(c.missing_in_redis, vec![sku_id(7)]);
        assert_eq!(
            c.status_differs,
            vec![StatusDiff {
                order_id: sku_id(2),
                redis: "paid".into(),
                ledger: "confirmed"
            }]
        );
        let differ: Vec<_> = c.fields_differ.iter().map(|d| &d.order_id).collect();
        assert_eq!(differ, [&sku_id(3), &sku_id(4), &sku_id(5)]);
        assert_eq!(c.fields_differ[0].redis["qty"], 2);
        assert_eq!(c.fields_differ[0].ledger["qty"], 1);
        assert_eq!(c.fields_differ[1].ledger["user_id"], "u4");
        assert_eq!(c.fields_differ[2].redis["amount_cents"], 1999);
        assert_eq!(c.duplicated, vec![sku_id(5)]);
        assert_eq!(c.unreadable, vec![sku_id(9)]);
        assert_eq!(
            c.totals,
            Totals {
                missing_in_ledger: 1,
                missing_in_redis: 1,
                status_differs: 1,
                fields_differ: 3,
                duplicated: 1,
                unreadable: 1,
            }
        );
        assert_eq!((c.orders, c.recorded), (7, 6));
        let (code, msg) = c.purge_refusal().expect("refused");
        assert_eq!(code, "not_in_ledger");
        assert!(msg.contains(&sku_id(0)), "{msg}");
        assert!(!msg.contains(&sku_id(7)), "rows only the ledger has: {msg}");
    }

    #[test]
    fn a_second_reading_clears_what_a_live_sale_changed_in_between() {
        // Read from Redis before order 1 was bought and before order 0 was
        // paid; the ledger was read after both.
        let mut r = Reconcile::new();
        let h0 = hash(0, "confirmed", true);
        r.add_redis(&sku_id(0), &h0);
        r.ledger_row(&row(0, LedgerStatus::Paid));
        r.ledger_row(&row(1, LedgerStatus::Confirmed));
        assert_eq!(r.to_recheck(), vec![sku_id(0), sku_id(1)]);
        r.refresh(&sku_id(0), &hash(0, "paid", true));
        r.refresh(&sku_id(1), &hash(1, "queued", false));
        let c = r.finish();
        assert!(c.consistent, "{c:?}");
        assert_eq!((c.orders, c.recorded, c.pending), (2, 1, 1));
    }

    #[test]
    fn lists_stop_at_twenty_and_totals_do_not() {
        let redis: Vec<_> = (0..45).map(|i| hash(i, "confirmed", true)).collect();
        let (c, _) = compare(&redis, &[]);
        assert_eq!(c.totals.missing_in_ledger, 45);
        assert_eq!(c.missing_in_ledger.len(), SHOWN);
        // By purchase time: the oldest first.
        assert_eq!(c.missing_in_ledger[0], sku_id(0));
        assert_eq!(c.missing_in_ledger[19], sku_id(19));
    }

    #[test]
    fn orders_waiting_for_payment_hold_a_purge_back() {
        let mut h = hash(0, "confirmed", true);
        h.insert("pay_by_ms".into(), "99999".into());
        let (c, _) = compare(&[h], &[row(0, LedgerStatus::Confirmed)]);
        assert!(c.consistent, "waiting is no difference: {c:?}");
        assert_eq!(c.awaiting_payment, 1);
        let (code, msg) = c.purge_refusal().expect("refused");
        assert_eq!(code, "not_in_ledger");
        assert!(msg.contains("waiting for their payment"), "{msg}");
    }

    #[test]
    fn records_that_are_not_orders_are_unreadable() {
        let mut h = hash(0, "confirmed", true);
        h.insert("qty".into(), "many".into());
        assert!(RedisOrder::from_hash(&sku_id(0), &h).is_none());
        let mut r = Reconcile::new();
        r.add_redis(&sku_id(0), &h);
        r.add_redis(&sku_id(1), &HashMap::new());
        let c = r.finish();
        assert_eq!(c.unreadable, vec![sku_id(0)]);
        assert_eq!((c.recorded, c.pending), (0, 0), "an empty hash is no order");
        assert!(!c.consistent);
    }

    #[test]
    fn a_purged_sale_is_said_so() {
        let c = LedgerCheck::purged(12);
        assert!(c.purged && c.consistent);
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["orders"], 12);
        assert_eq!(v["purged"], true);
        assert_eq!(v["missing_in_ledger"], serde_json::json!([]));
        assert_eq!(v["totals"]["missing_in_redis"], 0);
    }
}
