//! The worker's side of the payment step, with real `flashsale-worker`
//! processes on the shared Sentinel group (and the test kit's PostgreSQL):
//! unpaid orders expire on schedule with no API call and their units sell
//! again; with a ledger every order ends there as it ended in Redis, also
//! one paid or cancelled before any worker recorded it; payments racing
//! the deadline from many tasks end every order exactly once (paid XOR
//! expired) and sell no unit twice; an ended, finished sale leaves the
//! worker and comes back when an entry appears for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::config::Secret;
use flashsale::ledger::{Ledger, LedgerOrder, LedgerStatus};
use flashsale::redis::Keys;
use flashsale_testkit::postgres::Postgres;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::process::Child;

use crate::ledger::{ledger, rows_of};
use crate::support::app::{
    AppOptions, TestApp, metric_value, serve_settings, shared_group, unconfirmed_after, unique,
    worker_command,
};
use crate::support::redis_group::RedisGroup;

const PAYMENT_TOKEN: &str = "payment-provider-secret-0123456789";
/// The price every test sale has (`TestApp::create_sale`).
const PRICE: i64 = 1999;

/// An app on `prefix` whose orders must be paid within `window`
/// (`Duration::ZERO`: a shop without a payment step).
async fn app_with_window(prefix: &str, window: Duration) -> TestApp {
    let mut settings = serve_settings(shared_group(), prefix, &AppOptions::default());
    settings.payment_window = window;
    settings.payment_token = (!window.is_zero()).then(|| Secret::new(PAYMENT_TOKEN));
    TestApp::spawn_settings(prefix, settings).await
}

/// A `flashsale-worker` serving its metrics on a port of its own, with or
/// without a ledger; killed on drop.
struct Worker {
    _child: Child,
    metrics: String,
}

impl Worker {
    fn spawn(group: &RedisGroup, prefix: &str, ledger: Option<&str>, extra: &[&str]) -> Worker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = worker_command(group, prefix);
        if let Some(url) = ledger {
            cmd.env("FLASHSALE_LEDGER_URL", url);
        }
        let child = cmd
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .args(extra)
            .spawn()
            .expect("spawn flashsale-worker");
        Worker {
            _child: child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// One series of its `/metrics` (`None` until it serves them).
    async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        metric_value(&text, series)
    }
}

async fn pay(app: &TestApp, order_id: &str, payment_id: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/payment")))
        .bearer_auth(PAYMENT_TOKEN)
        .json(&json!({"payment_id": payment_id, "amount_cents": PRICE}))
        .send()
        .await
        .expect("payment");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn cancel(app: &TestApp, user: &str, order_id: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(app.token(user))
        .send()
        .await
        .expect("cancel");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn buy(app: &TestApp, user: &str, sku: &str) -> String {
    let (s, body) = app.purchase(user, sku, 1, None).await;
    assert_eq!(s, 202, "{user}: {body}");
    body["order_id"].as_str().expect("order id").to_owned()
}

async fn master(group: &RedisGroup) -> MultiplexedConnection {
    group.client(group.master_port().await).await
}

/// Every field of each order record, read from the master (not through the
/// API, which would apply a deadline itself).
async fn orders(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    ids: &[String],
) -> Vec<HashMap<String, String>> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL").arg(keys.order(sku, id));
    }
    pipe.query_async(conn).await.expect("order records")
}

fn status(o: &HashMap<String, String>) -> &str {
    o.get("status").map_or("", String::as_str)
}

fn ms(o: &HashMap<String, String>, field: &str) -> Option<i64> {
    o.get(field).and_then(|v| v.parse().ok())
}

async fn payby_len(conn: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(keys.pay_by(sku))
        .query_async(conn)
        .await
        .expect("zcard")
}

/// Waits until `check` holds, or panics with `what` and its last reason.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) => assert!(Instant::now() < deadline, "{what}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_consistent(audit: &Value) {
    assert_eq!(audit["consistent"], true, "{audit}");
    let n = |k: &str| audit[k].as_i64().unwrap_or(-1);
    assert_eq!(n("stock_left") + n("sold"), n("stock_total"), "{audit}");
}

/// Buys until a purchase is answered 202 (the sale was sold out, and a
/// returned unit reopens it within a second or two); the new order.
async fn buy_when_back(app: &TestApp, user: &str, sku: &str) -> String {
    let start = Instant::now();
    loop {
        let (s, body) = app.purchase(user, sku, 1, None).await;
        match s {
            202 => return body["order_id"].as_str().expect("order id").to_owned(),
            410 if start.elapsed() < Duration::from_secs(3) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("{user}: {s} {body}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_expire_on_schedule_and_their_units_sell_again() {
    let group = shared_group();
    let prefix = unique("exp");
    let app = app_with_window(&prefix, Duration::from_secs(2)).await;
    let keys = Keys::new(prefix.clone());
    let sku = unique("exps");
    app.create_sale(&sku, 3, 1, -5, 3600).await;
    let mut conn = master(group).await;
    let w = Worker::spawn(group, &prefix, None, &[]);
    let ids = vec![
        buy(&app, "ea", &sku).await,
        buy(&app, "eb", &sku).await,
        buy(&app, "ec", &sku).await,
    ];
    let (s, body) = app.purchase("ed", &sku, 1, None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (410, Some("sold_out")),
        "{body}"
    );
    let (s, body) = pay(&app, &ids[0], "ch-ea").await;
    assert_eq!(s, 200, "{body}");

    // No API call from here on: the worker expires the two unpaid orders.
    eventually(Duration::from_secs(8), "unpaid orders expired", || {
        let (mut conn, keys, sku, ids) = (conn.clone(), keys.clone(), sku.clone(), ids.clone());
        async move {
            let o = orders(&mut conn, &keys, &sku, &ids).await;
            let st: Vec<&str> = o.iter().map(status).collect();
            if st[1..] == ["expired", "expired"] {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        }
    })
    .await;
    let o = orders(&mut conn, &keys, &sku, &ids).await;
    for (id, rec) in ids.iter().zip(&o).skip(1) {
        let (due, at) = (ms(rec, "pay_by_ms"), ms(rec, "expired_ms"));
        let late = at.zip(due).map(|(a, d)| a - d);
        assert!(
            late.is_some_and(|l| (0..=1000).contains(&l)),
            "{id} expired {late:?} ms after its deadline (server clock): {rec:?}"
        );
    }
    assert_eq!(
        status(&o[0]),
        "paid",
        "the paid order stays paid: {:?}",
        o[0]
    );
    assert_eq!(payby_len(&mut conn, &keys, &sku).await, 0);
    let audit = app.audit(&sku).await;
    assert_eq!(
        (
            &audit["expired"],
            &audit["returned"],
            &audit["sold"],
            &audit["paid"]
        ),
        (&json!(2), &json!(2), &json!(1), &json!(1)),
        "{audit}"
    );
    assert_consistent(&audit);

    // The sold-out sale sells again: both units.
    let more = [
        buy_when_back(&app, "ee", &sku).await,
        buy_when_back(&app, "ef", &sku).await,
    ];
    let (s, _) = app.purchase("eg", &sku, 1, None).await;
    assert_eq!(s, 410, "each returned unit is sold once");
    let audit = app.audit(&sku).await;
    assert_eq!(
        (&audit["sold"], &audit["stock_left"]),
        (&json!(3), &json!(0)),
        "{audit}"
    );
    assert_consistent(&audit);

    // Every order is recorded once, the ended ones with their status kept;
    // the worker counted the expiries and acknowledged the events.
    let mut all = ids.clone();
    all.extend(more);
    let unconfirmed = unconfirmed_after(group, &prefix, &all, Duration::from_secs(10)).await;
    assert!(unconfirmed.is_empty(), "not recorded: {unconfirmed:?}");
    eventually(Duration::from_secs(5), "events acknowledged", || async {
        let paid = w
            .metric("flashsale_worker_events_total{kind=\"paid\"}")
            .await;
        let expired = w
            .metric("flashsale_worker_events_total{kind=\"expired\"}")
            .await;
        if (paid, expired) == (Some(1.0), Some(2.0)) {
            Ok(())
        } else {
            Err(format!("paid {paid:?}, expired {expired:?}"))
        }
    })
    .await;
    assert_eq!(w.metric("flashsale_worker_expired_total").await, Some(2.0));
    let audit = app.audit(&sku).await;
    assert_eq!(audit["confirmed"], audit["orders"], "{audit}");
    let duplicates = w.metric("flashsale_worker_duplicates_total").await;
    assert_eq!(
        duplicates.unwrap_or(0.0),
        0.0,
        "an event counted as a duplicate"
    );
    app.stop().await;
}

fn ledger_status(s: &str) -> Option<LedgerStatus> {
    Some(match s {
        "queued" => LedgerStatus::Queued,
        "confirmed" => LedgerStatus::Confirmed,
        "paid" => LedgerStatus::Paid,
        "expired" => LedgerStatus::Expired,
        "cancelled" => LedgerStatus::Cancelled,
        _ => return None,
    })
}

/// `Ok` when the ledger holds exactly the orders `ids` of `sku`, once each,
/// each in the status Redis has it in, with the columns of that status; a
/// reason otherwise.
async fn ledger_agrees(
    ledger: &Ledger,
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    ids: &[String],
) -> Result<BTreeMap<String, LedgerOrder>, String> {
    let rows = rows_of(ledger, sku).await;
    let n = rows.len();
    let by_id: BTreeMap<String, LedgerOrder> =
        rows.into_iter().map(|r| (r.order_id.clone(), r)).collect();
    if by_id.len() != n {
        return Err(format!("an order twice in the ledger ({n} rows)"));
    }
    if n != ids.len() {
        return Err(format!("{n} rows for {} orders", ids.len()));
    }
    let records = orders(conn, keys, sku, ids).await;
    for (id, rec) in ids.iter().zip(&records) {
        let Some(row) = by_id.get(id) else {
            return Err(format!("{id} is not in the ledger"));
        };
        let want = ledger_status(status(rec));
        if Some(row.status) != want {
            return Err(format!("{id}: ledger {:?}, Redis {rec:?}", row.status));
        }
        let ms_of = |t: Option<time::OffsetDateTime>| {
            t.map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        };
        // The order's amount and deadline as the purchase recorded them.
        if ms_of(row.pay_by) != ms(rec, "pay_by_ms")
            || row.amount_cents != rec.get("amount_cents").and_then(|a| a.parse().ok())
        {
            return Err(format!(
                "{id}: ledger pay_by/amount {:?}/{:?}, Redis {rec:?}",
                row.pay_by, row.amount_cents
            ));
        }
        let ok = match row.status {
            LedgerStatus::Paid => {
                row.payment_id.as_deref() == rec.get("payment_id").map(String::as_str)
                    && row.amount_cents == Some(PRICE)
                    && ms_of(row.paid_at) == ms(rec, "paid_ms")
                    && row.expired_at.is_none()
                    && row.cancelled_at.is_none()
            }
            LedgerStatus::Expired => {
                ms_of(row.expired_at) == ms(rec, "expired_ms")
                    && row.paid_at.is_none()
                    && row.cancelled_at.is_none()
            }
            LedgerStatus::Cancelled => {
                ms_of(row.cancelled_at) == ms(rec, "cancelled_ms")
                    && row.paid_at.is_none()
                    && row.expired_at.is_none()
            }
            _ => row.paid_at.is_none() && row.expired_at.is_none() && row.cancelled_at.is_none(),
        };
        if !ok {
            return Err(format!("{id}: ledger row {row:?} against {rec:?}"));
        }
    }
    Ok(by_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ledger_every_order_ends_there_as_in_redis() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let prefix = unique("expl");
    // Two shops on one prefix: one with a 2 s payment window, one without
    // a payment step (its orders stay confirmed).
    let app = app_with_window(&prefix, Duration::from_secs(2)).await;
    let final_app = app_with_window(&prefix, Duration::ZERO).await;
    let keys = Keys::new(prefix.clone());
    let sku = unique("expls");
    app.create_sale(&sku, 20, 1, -5, 3600).await;
    let mut conn = master(group).await;

    // Before any worker runs: one order paid, one cancelled, neither
    // recorded yet — their ends come before their own entries are read.
    let early_paid = buy(&app, "la", &sku).await;
    let early_cancelled = buy(&app, "lb", &sku).await;
    assert_eq!(pay(&app, &early_paid, "ch-la").await.0, 200);
    assert_eq!(cancel(&app, "lb", &early_cancelled).await.0, 200);

    let w = Worker::spawn(group, &prefix, Some(&pg.url()), &[]);
    let paid = buy(&app, "lc", &sku).await;
    let cancelled = buy(&app, "ld", &sku).await;
    let expiring = [buy(&app, "le", &sku).await, buy(&app, "lf", &sku).await];
    let lasting = [
        buy(&final_app, "lg", &sku).await,
        buy(&final_app, "lh", &sku).await,
    ];
    // These two after the worker recorded them.
    let recorded = unconfirmed_after(
        group,
        &prefix,
        &[paid.clone(), cancelled.clone()],
        Duration::from_secs(10),
    )
    .await;
    assert!(recorded.is_empty(), "{recorded:?}");
    assert_eq!(pay(&app, &paid, "ch-lc").await.0, 200);
    assert_eq!(cancel(&app, "ld", &cancelled).await.0, 200);

    let mut ids = vec![early_paid, early_cancelled, paid, cancelled];
    ids.extend(expiring.iter().cloned());
    ids.extend(lasting.iter().cloned());
    let ledger = ledger(&pg).await;
    let mut last = Err(String::new());
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        last = ledger_agrees(&ledger, &mut conn, &keys, &sku, &ids).await;
        let expired = orders(&mut conn, &keys, &sku, &expiring)
            .await
            .iter()
            .all(|o| status(o) == "expired");
        if last.is_ok() && expired {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = last.expect("the ledger agrees with Redis");
    let st = |id: &str| rows[id].status;
    assert_eq!(st(&ids[0]), LedgerStatus::Paid, "paid before recorded");
    assert_eq!(
        st(&ids[1]),
        LedgerStatus::Cancelled,
        "cancelled before recorded"
    );
    assert_eq!(st(&ids[2]), LedgerStatus::Paid);
    assert_eq!(st(&ids[3]), LedgerStatus::Cancelled);
    for id in &expiring {
        assert_eq!(st(id), LedgerStatus::Expired, "{id}");
    }
    for id in &lasting {
        assert_eq!(st(id), LedgerStatus::Confirmed, "{id}");
    }
    assert!(rows.values().all(|r| r.confirmed_at.is_some()));
    let audit = app.audit(&sku).await;
    assert_eq!(
        (
            &audit["orders"],
            &audit["confirmed"],
            &audit["paid"],
            &audit["cancelled"],
            &audit["expired"]
        ),
        (&json!(8), &json!(8), &json!(2), &json!(2), &json!(2)),
        "{audit}"
    );
    assert_consistent(&audit);
    // One row per order, six of them moved to their end.
    assert_eq!(w.metric("flashsale_ledger_recorded_total").await, Some(8.0));
    assert_eq!(w.metric("flashsale_ledger_ended_total").await, Some(6.0));
    app.stop().await;
    final_app.stop().await;
}

/// How one payment call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    Paid(String),
    Late,
    AlreadyPaid,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_racing_the_deadline_end_every_order_once() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let prefix = unique("expr");
    let app = Arc::new(app_with_window(&prefix, Duration::from_millis(1500)).await);
    let keys = Keys::new(prefix.clone());
    let sku = unique("exprs");
    let stock = 60;
    app.create_sale(&sku, stock, 1, -5, 3600).await;
    let mut conn = master(group).await;
    let _workers = [
        Worker::spawn(group, &prefix, Some(&pg.url()), &["--expire-ms", "100"]),
        Worker::spawn(group, &prefix, Some(&pg.url()), &["--expire-ms", "100"]),
    ];

    // 90 shoppers at once for 60 units; each order gets two payments (two
    // charges of the provider) from two tasks, spread over the last 0.4 s
    // before its deadline and the first 0.4 s after it.
    let buyers: Vec<_> = (0..90)
        .map(|i| {
            let (app, sku) = (app.clone(), sku.clone());
            tokio::spawn(async move {
                let user = format!("r{i}");
                let (s, body) = app.purchase(&user, &sku, 1, None).await;
                (user, s, body, Instant::now())
            })
        })
        .collect();
    let mut first = Vec::new();
    let mut losers = Vec::new();
    for b in buyers {
        let (user, s, body, at) = b.await.expect("buyer");
        match s {
            202 => first.push((body["order_id"].as_str().expect("id").to_owned(), at)),
            410 => losers.push(user),
            _ => panic!("{user}: {s} {body}"),
        }
    }
    assert_eq!(first.len(), stock as usize);
    let mut payments = Vec::new();
    for (n, (id, at)) in first.iter().enumerate() {
        for k in 0..2 {
            let (app, id) = (app.clone(), id.clone());
            let delay = Duration::from_millis(1100 + ((n * 53 + k * 311) % 800) as u64);
            let at = *at;
            payments.push(tokio::spawn(async move {
                tokio::time::sleep_until((at + delay).into()).await;
                let payment_id = format!("ch-{n}-{k}");
                let (s, body) = pay(&app, &id, &payment_id).await;
                let told = match (s, body["error"].as_str()) {
                    (200, _) => Told::Paid(payment_id),
                    (409, Some("payment_late")) => Told::Late,
                    (409, Some("already_paid")) => Told::AlreadyPaid,
                    _ => panic!("payment of {id}: {s} {body}"),
                };
                (id, told)
            }));
        }
    }
    // Meanwhile the shoppers who found it sold out try again; what comes
    // back from an expiry is bought, and paid at once.
    let retries: Vec<_> = losers
        .into_iter()
        .map(|user| {
            let app = app.clone();
            let sku = sku.clone();
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(4);
                while Instant::now() < until {
                    let (s, body) = app.purchase(&user, &sku, 1, None).await;
                    match s {
                        202 => {
                            let id = body["order_id"].as_str().expect("id").to_owned();
                            let (s, body) = pay(&app, &id, &format!("ch-{user}")).await;
                            assert_eq!(s, 200, "{body}");
                            return Some(id);
                        }
                        410 => tokio::time::sleep(Duration::from_millis(100)).await,
                        _ => panic!("{user}: {s} {body}"),
                    }
                }
                None
            })
        })
        .collect();
    let mut told: BTreeMap<String, Vec<Told>> = BTreeMap::new();
    for p in payments {
        let (id, t) = p.await.expect("payment task");
        told.entry(id).or_default().push(t);
    }
    let mut second = Vec::new();
    for r in retries {
        second.extend(r.await.expect("retry task"));
    }

    // Exactly one end per order, and the answers match it.
    let ids: Vec<String> = first.iter().map(|(id, _)| id.clone()).collect();
    let recs = orders(&mut conn, &keys, &sku, &ids).await;
    let (mut n_paid, mut n_expired) = (0, 0);
    for (id, rec) in ids.iter().zip(&recs) {
        let ends = ["paid_ms", "expired_ms", "cancelled_ms"]
            .iter()
            .filter(|f| rec.contains_key(**f))
            .count();
        assert_eq!(ends, 1, "{id}: {rec:?}");
        let answers = &told[id];
        let paid_by: Vec<&String> = answers
            .iter()
            .filter_map(|t| match t {
                Told::Paid(p) => Some(p),
                _ => None,
            })
            .collect();
        match status(rec) {
            "paid" => {
                n_paid += 1;
                assert_eq!(paid_by.len(), 1, "{id}: {answers:?}");
                assert_eq!(rec.get("payment_id"), Some(paid_by[0]), "{id}");
                assert!(!answers.contains(&Told::Late), "{id}: {answers:?}");
            }
            "expired" => {
                n_expired += 1;
                assert!(
                    paid_by.is_empty(),
                    "{id}: a payment told 200 expired: {answers:?}"
                );
                assert!(
                    answers.iter().all(|t| *t == Told::Late),
                    "{id}: {answers:?}"
                );
            }
            other => panic!("{id}: {other} {rec:?}"),
        }
    }
    assert!(
        n_paid > 0 && n_expired > 0,
        "the payments raced no deadline: {n_paid} paid, {n_expired} expired"
    );
    let second_recs = orders(&mut conn, &keys, &sku, &second).await;
    assert!(
        second_recs.iter().all(|r| status(r) == "paid"),
        "{second_recs:?}"
    );

    // No unit sold twice.
    eventually(
        Duration::from_secs(10),
        "every order recorded, none waiting",
        || {
            let (app, mut conn, keys, sku) = (app.clone(), conn.clone(), keys.clone(), sku.clone());
            async move {
                let audit = app.audit(&sku).await;
                let waiting = payby_len(&mut conn, &keys, &sku).await;
                if audit["confirmed"] == audit["orders"] && waiting == 0 {
                    Ok(())
                } else {
                    Err(format!("{audit}, {waiting} waiting"))
                }
            }
        },
    )
    .await;
    let audit = app.audit(&sku).await;
    assert_consistent(&audit);
    let live = n_paid + second.len();
    assert_eq!(
        audit["sold"],
        json!(live),
        "live orders' units are the units sold: {audit}"
    );
    assert_eq!(
        (&audit["paid"], &audit["expired"], &audit["orders"]),
        (
            &json!(live),
            &json!(n_expired),
            &json!(ids.len() + second.len())
        ),
        "{audit}"
    );
    assert!(live <= stock as usize);

    // The ledger says the same, each order once.
    let ledger = ledger(&pg).await;
    let mut all = ids.clone();
    all.extend(second);
    let mut last = Err(String::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        last = ledger_agrees(&ledger, &mut conn, &keys, &sku, &all).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = last.expect("the ledger agrees with Redis");
    for (id, answers) in &told {
        for t in answers {
            match t {
                Told::Paid(p) => {
                    assert_eq!(rows[id].status, LedgerStatus::Paid, "{id}");
                    assert_eq!(rows[id].payment_id.as_ref(), Some(p), "{id}");
                }
                Told::Late => assert_eq!(rows[id].status, LedgerStatus::Expired, "{id}"),
                Told::AlreadyPaid => assert_eq!(rows[id].status, LedgerStatus::Paid, "{id}"),
            }
        }
    }
    assert!(
        rows.values()
            .all(|r| !(r.paid_at.is_some() && r.expired_at.is_some())),
        "an order both paid and expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_finished_sale_leaves_the_worker() {
    let group = shared_group();
    let prefix = unique("expt");
    let app = app_with_window(&prefix, Duration::from_secs(1)).await;
    let keys = Keys::new(prefix.clone());
    let mut conn = master(group).await;
    let old = unique("expto");
    app.create_sale(&old, 5, 1, -5, 3600).await;
    // Retirement checked every second, retired sales every three.
    let w = Worker::spawn(group, &prefix, None, &["--sweep-ms", "1000"]);
    let a = buy(&app, "ta", &old).await;
    let b = buy(&app, "tb", &old).await;
    assert_eq!(pay(&app, &a, "ch-ta").await.0, 200);
    let sales = |want: f64| {
        let w = &w;
        move || async move {
            match w.metric("flashsale_worker_sales").await {
                Some(n) if n == want => Ok(()),
                n => Err(format!("flashsale_worker_sales {n:?}")),
            }
        }
    };
    eventually(Duration::from_secs(5), "one sale worked on", sales(1.0)).await;
    // b expires; everything is recorded; the sale ends.
    eventually(Duration::from_secs(8), "finished", || {
        let (app, mut conn, keys, old) = (&app, conn.clone(), keys.clone(), old.clone());
        async move {
            let audit = app.audit(&old).await;
            let waiting = payby_len(&mut conn, &keys, &old).await;
            if audit["expired"] == 1 && audit["confirmed"] == audit["orders"] && waiting == 0 {
                Ok(())
            } else {
                Err(format!("{audit}, {waiting} waiting"))
            }
        }
    })
    .await;
    let (s, body) = app
        .admin_post(&format!("/admin/sales/{old}/end"), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    // As if it had ended a minute ago (the worker retires a sale one
    // minute after its end, by the server's clock).
    let (secs, _): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("time");
    let () = redis::cmd("HSET")
        .arg(keys.sale(&old))
        .arg("ends_ms")
        .arg(secs * 1000 - 61_000)
        .query_async(&mut conn)
        .await
        .expect("hset");
    eventually(Duration::from_secs(5), "the ended sale retired", sales(0.0)).await;

    // A new sale is picked up and its orders recorded.
    let new = unique("exptn");
    app.create_sale(&new, 5, 1, -5, 3600).await;
    eventually(Duration::from_secs(5), "the new sale worked on", sales(1.0)).await;
    let c = buy(&app, "tc", &new).await;
    let unconfirmed = unconfirmed_after(group, &prefix, &[c], Duration::from_secs(10)).await;
    assert!(unconfirmed.is_empty(), "{unconfirmed:?}");

    // An entry appears for the retired sale (as a replay from the dead
    // letters would add one): it comes back, the entry is taken (a repeat
    // of a recorded order: a duplicate), and it retires again.
    let () = redis::cmd("XADD")
        .arg(keys.stream(&old))
        .arg("*")
        .arg("order_id")
        .arg(&a)
        .arg("sku")
        .arg(&old)
        .arg("user_id")
        .arg("ta")
        .arg("qty")
        .arg(1)
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .expect("xadd");
    eventually(
        Duration::from_secs(10),
        "the replayed entry taken",
        || async {
            match w.metric("flashsale_worker_duplicates_total").await {
                Some(n) if n >= 1.0 => Ok(()),
                n => Err(format!("duplicates {n:?}")),
            }
        },
    )
    .await;
    eventually(Duration::from_secs(5), "retired again", sales(1.0)).await;
    let statuses = orders(&mut conn, &keys, &old, &[a, b]).await;
    assert_eq!(
        statuses.iter().map(status).collect::<Vec<_>>(),
        ["paid", "expired"]
    );
    app.stop().await;
}
