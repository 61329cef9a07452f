//! The order ledger (`FLASHSALE_LEDGER_URL`) against the shared Sentinel
//! group and a real PostgreSQL per test (the test kit's): orders bought are
//! confirmed and in the ledger exactly once; a repeat delivery writes
//! nothing new and an entry without its order never reaches the ledger; a
//! PostgreSQL outage mid-sale only delays confirmation (purchases answered,
//! nothing confirmed while it is down, no dead letter, every order
//! confirmed and recorded once after); the ledger's own write and reads;
//! `flashsale ledger migrate` and the worker's exit codes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::config::Secret;
use flashsale::ledger::{Ledger, LedgerOrder, LedgerSettings, LedgerStatus, NewOrder, Record};
use flashsale::redis::{Keys, functions};
use flashsale_testkit::metrics::metric_value;
use flashsale_testkit::postgres::Postgres;
use futures_util::TryStreamExt;
use redis::aio::MultiplexedConnection;
use tokio::process::Child;

use crate::support::app::{
    AppOptions, TestApp, assert_config_error, shared_group, unconfirmed_after, worker_command,
};
use crate::support::redis_group::RedisGroup;

/// A `flashsale-worker` with the ledger at `url`, serving its metrics on a
/// port of its own; killed on drop.
struct LedgerWorker {
    _child: Child,
    metrics: String,
}

impl LedgerWorker {
    fn spawn(group: &RedisGroup, prefix: &str, url: &str, extra: &[&str]) -> LedgerWorker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = worker_command(group, prefix)
            .env("FLASHSALE_LEDGER_URL", url)
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .args(extra)
            .spawn()
            .expect("spawn flashsale-worker");
        LedgerWorker {
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

/// A ledger on the kit's PostgreSQL with its schema applied.
pub(crate) async fn ledger(pg: &Postgres) -> Ledger {
    let settings = LedgerSettings::parse(&Secret::new(pg.url())).expect("the kit's URL");
    let ledger = Ledger::connect(&settings, "ledger tests")
        .await
        .expect("connect");
    ledger.migrate().await.expect("migrate");
    ledger
}

/// Every row of a sale in the ledger.
pub(crate) async fn rows_of(ledger: &Ledger, sku: &str) -> Vec<LedgerOrder> {
    ledger
        .orders_of(sku)
        .try_collect()
        .await
        .expect("orders of the sale")
}

/// Asserts the ledger holds exactly the orders `ids` of `sku`, once each,
/// as confirmed orders of one unit.
async fn assert_ledger_holds(ledger: &Ledger, sku: &str, ids: &[String]) {
    let rows = rows_of(ledger, sku).await;
    let in_ledger: BTreeSet<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
    let bought: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(rows.len(), in_ledger.len(), "an order twice in the ledger");
    let missing: Vec<_> = bought.difference(&in_ledger).take(3).collect();
    let extra: Vec<_> = in_ledger.difference(&bought).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ledger of {sku}: {} rows for {} orders; missing e.g. {missing:?}, extra e.g. {extra:?}",
        rows.len(),
        ids.len()
    );
    for r in &rows {
        assert_eq!(r.status, LedgerStatus::Confirmed, "{r:?}");
        assert_eq!((r.sku.as_str(), r.qty), (sku, 1), "{r:?}");
        assert!(r.confirmed_at.is_some_and(|c| c >= r.created_at), "{r:?}");
        assert!(r.payment_id.is_none() && r.paid_at.is_none(), "{r:?}");
    }
}

/// Buys one unit for each of `users` through the API, all at once; the
/// order ids, every answer asserted 202.
async fn buy_all(
    app: &Arc<TestApp>,
    sku: &str,
    users: impl Iterator<Item = String>,
) -> Vec<String> {
    let tasks: Vec<_> = users
        .map(|u| {
            let (app, sku) = (app.clone(), sku.to_owned());
            tokio::spawn(async move { (u.clone(), app.purchase(&u, &sku, 1, None).await) })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        let (user, (status, body)) = t.await.expect("purchase task");
        assert_eq!(status, 202, "{user}: {body}");
        ids.push(body["order_id"].as_str().expect("order id").to_owned());
    }
    ids
}

async fn master(group: &RedisGroup) -> MultiplexedConnection {
    group.client(group.master_port().await).await
}

/// Dead letters of a sale.
async fn dead_letters(conn: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(keys.dead_letters(sku))
        .query_async(conn)
        .await
        .expect("xlen dead")
}

/// Pending entries of a sale's stream in the worker group: (id, deliveries).
async fn pending(conn: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> Vec<(String, usize)> {
    let p: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(keys.stream(sku))
        .arg(flashsale::worker::GROUP)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query_async(conn)
        .await
        .expect("xpending");
    p.ids
        .into_iter()
        .map(|p| (p.id, p.times_delivered))
        .collect()
}

/// Waits until `check` holds, or panics with `what`.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_bought_are_confirmed_and_in_the_ledger_once() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let app = Arc::new(TestApp::spawn(group, AppOptions::default()).await);
    let sku = "lg-buy";
    app.create_sale(sku, 500, 1, -5, 3600).await;
    let _w = LedgerWorker::spawn(group, &app.prefix, &pg.url(), &[]);
    let started = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let ids = buy_all(&app, sku, (0..150).map(|i| format!("lb{i}"))).await;

    let unconfirmed = unconfirmed_after(group, &app.prefix, &ids, Duration::from_secs(20)).await;
    assert!(unconfirmed.is_empty(), "not confirmed: {unconfirmed:?}");
    let ledger = ledger(&pg).await;
    assert_ledger_holds(&ledger, sku, &ids).await;
    let audit = app.audit(sku).await;
    assert_eq!(
        (audit["orders"].as_i64(), audit["confirmed"].as_i64()),
        (Some(150), Some(150))
    );
    // What the ledger says of an order is what the shopper bought.
    let one = ledger
        .order(&ids[7])
        .await
        .expect("read")
        .expect("in the ledger");
    assert!(one.user_id.starts_with("lb"), "{one:?}");
    assert!(one.created_at >= started && one.created_at <= time::OffsetDateTime::now_utc());
    // The export's order: by purchase time.
    let rows = rows_of(&ledger, sku).await;
    assert!(rows.windows(2).all(|w| w[0].created_at <= w[1].created_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_delivery_writes_nothing_new_and_missing_orders_never_reach_the_ledger() {
    let group = shared_group();
    let pg = Postgres::init().await;
    let app = TestApp::spawn(group, AppOptions::default()).await;
    let keys = Keys::new(app.prefix.clone());
    let sku = "lg-again";
    app.create_sale(sku, 500, 1, -5, 3600).await;
    let mut conn = master(group).await;
    let w = LedgerWorker::spawn(
        group,
        &app.prefix,
        &pg.url(),
        &["--claim-idle-ms", "200", "--max-deliveries", "2"],
    );

    // 60 orders, straight through the purchase Function.
    let mut ids = Vec::new();
    let mut pipe = redis::pipe();
    for i in 0..60 {
        let id = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
        pipe.add_command(functions::purchase_call(
            &keys,
            sku,
            &format!("la{i}"),
            1,
            &id,
            None,
        ));
        ids.push(id);
    }
    let _: Vec<redis::Value> = pipe.query_async(&mut conn).await.expect("purchases");
    let unconfirmed = unconfirmed_after(group, &app.prefix, &ids, Duration::from_secs(20)).await;
    assert!(unconfirmed.is_empty(), "not confirmed: {unconfirmed:?}");
    let ledger = ledger(&pg).await;
    assert_ledger_holds(&ledger, sku, &ids).await;
    let recorded = w.metric("flashsale_ledger_recorded_total").await;
    assert_eq!(recorded, Some(60.0));

    // Every order delivered again (a second entry each, as a replay or the
    // sweep makes), and an entry whose order does not exist.
    let mut pipe = redis::pipe();
    for (i, id) in ids.iter().enumerate() {
        pipe.cmd("XADD")
            .arg(keys.stream(sku))
            .arg("*")
            .arg("order_id")
            .arg(id)
            .arg("sku")
            .arg(sku)
            .arg("user_id")
            .arg(format!("la{i}"))
            .arg("qty")
            .arg(1)
            .ignore();
    }
    let ghost = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
    pipe.cmd("XADD")
        .arg(keys.stream(sku))
        .arg("*")
        .arg("order_id")
        .arg(&ghost)
        .arg("sku")
        .arg(sku)
        .arg("user_id")
        .arg("nobody")
        .arg("qty")
        .arg(1)
        .ignore();
    let () = pipe.query_async(&mut conn).await.expect("xadd");

    // The repeats are acknowledged as duplicates; the ghost is dead-lettered
    // after its two deliveries, never recorded.
    eventually(
        Duration::from_secs(20),
        "repeats acknowledged, ghost dead-lettered",
        || {
            let (mut conn, keys) = (conn.clone(), keys.clone());
            async move {
                let dead = dead_letters(&mut conn, &keys, sku).await;
                let pending = pending(&mut conn, &keys, sku).await;
                if dead == 1 && pending.is_empty() {
                    Ok(())
                } else {
                    Err(format!("dead letters {dead}, pending {pending:?}"))
                }
            }
        },
    )
    .await;
    assert_eq!(
        w.metric("flashsale_worker_duplicates_total").await,
        Some(60.0)
    );
    assert_eq!(
        w.metric("flashsale_ledger_recorded_total").await,
        Some(60.0)
    );
    assert_ledger_holds(&ledger, sku, &ids).await;
    assert!(ledger.order(&ghost).await.expect("read").is_none());
    let audit = app.audit(sku).await;
    assert_eq!(
        (audit["orders"].as_i64(), audit["confirmed"].as_i64()),
        (Some(60), Some(60))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_is_idempotent_and_orders_read_back() {
    let pg = Postgres::init().await;
    let ledger = ledger(&pg).await;
    // Migrating again changes nothing.
    assert_eq!(
        ledger.migrate().await.expect("again"),
        flashsale::ledger::schema_version()
    );
    let t0 = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("ns");
    let order = |i: usize, sku: &str| {
        Record::NewOrder(NewOrder {
            order_id: format!("{sku}.{i:032x}"),
            sku: sku.to_owned(),
            user_id: format!("r{i}"),
            qty: 1 + (i % 3) as i32,
            created_at: t0 + time::Duration::milliseconds(i as i64),
            amount_cents: None,
            pay_by: None,
        })
    };
    // More than one page of the export, written in batches, one batch with
    // an order given twice.
    let mut batch: Vec<Record> = (0..1500).rev().map(|i| order(i, "ra")).collect();
    batch.push(order(3, "ra"));
    let mut written = 0;
    for chunk in batch.chunks(512) {
        written += ledger.record(chunk).await.expect("record").new_orders;
    }
    assert_eq!(written, 1500);
    // The same batch again: nothing new.
    for chunk in batch.chunks(512) {
        assert_eq!(ledger.record(chunk).await.expect("again").new_orders, 0);
    }
    ledger
        .record(&[order(1, "rb"), order(2, "rb")])
        .await
        .expect("other sale");
    let rows = rows_of(&ledger, "ra").await;
    assert_eq!(rows.len(), 1500);
    assert!(
        rows.iter()
            .enumerate()
            .all(|(i, r)| r.order_id == format!("ra.{i:032x}"))
    );
    let one = ledger
        .order("ra.0000000000000000000000000000002a")
        .await
        .expect("read");
    let one = one.expect("order 42");
    assert_eq!((one.user_id.as_str(), one.qty), ("r42", 1));
    assert_eq!(one.created_at, t0 + time::Duration::milliseconds(42));
    assert!(ledger.order("ra.missing").await.expect("read").is_none());
    assert_eq!(rows_of(&ledger, "rb").await.len(), 2);
    assert!(rows_of(&ledger, "none").await.is_empty());
    // An empty batch is no statement at all.
    assert_eq!(ledger.record(&[]).await.expect("empty").new_orders, 0);
}

/// PostgreSQL stopped mid-sale with two workers that reclaim after 300 ms
/// and dead-letter at the second delivery: purchases keep answering 202,
/// nothing is confirmed while it is down, no entry is taken over or
/// dead-lettered; once it is back every order is confirmed and recorded
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_delays_confirmation_and_loses_or_doubles_nothing() {
    let group = shared_group();
    let mut pg = Postgres::init().await;
    let app = Arc::new(TestApp::spawn(group, AppOptions::default()).await);
    let keys = Keys::new(app.prefix.clone());
    let sku = "lg-outage";
    app.create_sale(sku, 1000, 1, -5, 3600).await;
    let mut conn = master(group).await;
    let strict = [
        "--claim-idle-ms",
        "300",
        "--max-deliveries",
        "2",
        "--batch",
        "50",
    ];
    let workers = [
        LedgerWorker::spawn(group, &app.prefix, &pg.url(), &strict),
        LedgerWorker::spawn(group, &app.prefix, &pg.url(), &strict),
    ];
    let mut ids = buy_all(&app, sku, (0..100).map(|i| format!("lo{i}"))).await;
    let unconfirmed = unconfirmed_after(group, &app.prefix, &ids, Duration::from_secs(20)).await;
    assert!(unconfirmed.is_empty(), "before the outage: {unconfirmed:?}");

    pg.stop().await;
    let during = buy_all(&app, sku, (100..300).map(|i| format!("lo{i}"))).await;
    // Ten reclaim periods with PostgreSQL down.
    let outage = Instant::now();
    let mut most_deliveries = 0;
    while outage.elapsed() < Duration::from_secs(3) {
        for (_, n) in pending(&mut conn, &keys, sku).await {
            most_deliveries = most_deliveries.max(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses = flashsale_testkit::orders::order_statuses(group, &app.prefix, &during)
        .await
        .expect("statuses");
    let confirmed = statuses
        .iter()
        .filter(|s| s.as_deref() != Some("queued"))
        .count();
    assert_eq!(confirmed, 0, "orders confirmed while the ledger was down");
    let audit = app.audit(sku).await;
    assert_eq!(
        (audit["orders"].as_i64(), audit["confirmed"].as_i64()),
        (Some(300), Some(100))
    );
    assert_eq!(dead_letters(&mut conn, &keys, sku).await, 0);
    assert_eq!(
        most_deliveries, 1,
        "entries delivered again during the outage"
    );
    let mut down = 0;
    for w in &workers {
        if w.metric("flashsale_ledger_up").await == Some(0.0) {
            down += 1;
            assert!(
                w.metric("flashsale_ledger_errors_total")
                    .await
                    .unwrap_or(0.0)
                    >= 1.0
            );
        }
    }
    assert!(down >= 1, "no worker reports the ledger down");

    pg.start().await;
    ids.extend(during);
    let unconfirmed = unconfirmed_after(group, &app.prefix, &ids, Duration::from_secs(20)).await;
    assert!(unconfirmed.is_empty(), "after the outage: {unconfirmed:?}");
    let ledger = ledger(&pg).await;
    assert_ledger_holds(&ledger, sku, &ids).await;
    let audit = app.audit(sku).await;
    assert_eq!(
        (audit["confirmed"].as_i64(), audit["dead"].as_i64()),
        (Some(300), Some(0))
    );
    eventually(
        Duration::from_secs(10),
        "both workers see the ledger up",
        || {
            let workers = &workers;
            async move {
                for w in workers {
                    let up = w.metric("flashsale_ledger_up").await;
                    if up != Some(1.0) {
                        return Err(format!("flashsale_ledger_up {up:?}"));
                    }
                }
                Ok(())
            }
        },
    )
    .await;
    assert!(pending(&mut conn, &keys, sku).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_migrate_and_the_worker_exit_codes() {
    let pg = Postgres::init().await;
    let flashsale = env!("CARGO_BIN_EXE_flashsale");
    let worker = env!("CARGO_BIN_EXE_flashsale-worker");
    let run = |bin: &'static str, args: &'static [&'static str], url: String| async move {
        let out = tokio::process::Command::new(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FLASHSALE_LEDGER_URL", url)
            .env("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    // Applies the schema, and again: 0 both times.
    for _ in 0..2 {
        let (code, text) = run(flashsale, &["ledger", "migrate"], pg.url()).await;
        assert_eq!(code, Some(0), "{text}");
        let version = format!("schema version {}", flashsale::ledger::schema_version());
        assert!(text.contains(&version), "{text}");
        assert!(!text.contains(pg.password()), "{text}");
    }
    let ledger = ledger(&pg).await;
    assert!(rows_of(&ledger, "any").await.is_empty());

    // A missing or malformed URL: 78, one line naming the variable, never
    // the password.
    for url in [
        "mysql://fs:hunter2-pw@127.0.0.1/db",
        "postgres://fs:hunter2-pw@127.0.0.1:notaport/db",
        "",
    ] {
        for (bin, args) in [(flashsale, &["ledger", "migrate"][..]), (worker, &[][..])] {
            let text = assert_config_error(
                bin,
                args,
                &[
                    ("FLASHSALE_LEDGER_URL", url),
                    ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1"),
                ],
                "FLASHSALE_LEDGER_URL",
            )
            .await;
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
    assert_config_error(
        flashsale,
        &["ledger", "migrate"],
        &[],
        "FLASHSALE_LEDGER_URL",
    )
    .await;

    // Unreachable (nothing listens there) or refused (wrong password): 1,
    // one line, no password; the worker stops before it reads anything.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let nowhere = format!("postgres://fs:hunter2-pw@127.0.0.1:{closed}/db");
    let wrong = pg.url().replace(pg.password(), "hunter2-pw");
    for url in [nowhere, wrong] {
        for (bin, args) in [(flashsale, &["ledger", "migrate"][..]), (worker, &[][..])] {
            let started = Instant::now();
            let (code, text) = run(bin, args, url.clone()).await;
            assert_eq!(code, Some(1), "{bin} {args:?}: {text}");
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(text.contains("FLASHSALE_LEDGER_URL"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(started.elapsed() < Duration::from_secs(15), "{text}");
        }
    }

    // --help lists the exit codes.
    let out = std::process::Command::new(flashsale)
        .args(["ledger", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit codes: 0") && help.contains("78"),
        "{help}"
    );
    assert!(help.contains("FLASHSALE_LEDGER_URL"), "{help}");
}
