//! The workers' automatic purge (`--purge-after-s`), with real
//! `flashsale-worker` processes on the shared Sentinel group (and the test
//! kit's PostgreSQL): ended, settled sales lose every key a second or two
//! after their end (a SCAN of the sale's key pattern on the master finds
//! nothing), each purged by exactly one of two workers racing for them
//! (one log line and one count per sale, no error or warning about it);
//! a live sale is untouched; a sale whose orders still wait for their
//! payment is kept until they are settled; with the ledger, a sale with an
//! order missing there is kept until the order is back, and nothing is
//! purged while the ledger is down; out-of-range or unsafe settings stop
//! the worker with exit 78 naming the variable.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale::config::Secret;
use flashsale::ledger::{NewOrder, Record};
use flashsale::redis::Keys;
use flashsale::redis::functions::purchase_call;
use flashsale_testkit::postgres::Postgres;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

use crate::ledger::ledger;
use crate::support::app::{
    AppOptions, TestApp, assert_config_error, metric_value, serve_settings, shared_group,
    unconfirmed_after, unique, worker_command,
};
use crate::support::redis_group::RedisGroup;

const WORKER: &str = env!("CARGO_BIN_EXE_flashsale-worker");
const PAYMENT_TOKEN: &str = "payment-provider-secret-0123456789";

/// A `flashsale-worker` that purges 1 s after a sale's end, looks every
/// 300 ms, serves its metrics on a port of its own and logs JSON lines
/// (info and up) that the test reads; killed on drop.
struct Worker {
    _child: Child,
    metrics: String,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Worker {
    fn spawn(group: &RedisGroup, prefix: &str, ledger: Option<&str>) -> Worker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = worker_command(group, prefix);
        cmd.env_remove("FLASHSALE_LEDGER_URL")
            .env_remove("FLASHSALE_LEDGER_URL_FILE")
            .env("RUST_LOG", "info,flashsale::worker::retention=debug")
            .env("FLASHSALE_LOG_FORMAT", "json")
            .args(["--purge-after-s", "1", "--sweep-ms", "300"])
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::piped());
        match ledger {
            Some(url) => cmd.env("FLASHSALE_LEDGER_URL", url),
            None => cmd.arg("--purge-without-ledger"),
        };
        let mut child = cmd.spawn().expect("spawn flashsale-worker");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({"raw": line}));
                sink.lock().expect("logs").push(v);
            }
        });
        Worker {
            _child: child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            logs,
        }
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        metric_value(&text, series)
    }

    async fn purged_total(&self) -> f64 {
        self.metric("flashsale_worker_purged_total")
            .await
            .unwrap_or(-1.0)
    }

    /// The log lines whose message is `message`.
    fn said(&self, message: &str) -> Vec<Value> {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .cloned()
            .collect()
    }

    /// Lines at ERROR, and WARN lines about purging.
    fn complaints(&self) -> Vec<Value> {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|l| {
                l.get("raw").is_some()
                    || l["level"] == "ERROR"
                    || (l["level"] == "WARN" && l.to_string().to_lowercase().contains("purge"))
            })
            .cloned()
            .collect()
    }
}

async fn master(group: &RedisGroup) -> MultiplexedConnection {
    group.client(group.master_port().await).await
}

/// Every key of one sale on the current master.
async fn sale_keys(group: &RedisGroup, keys: &Keys, sku: &str) -> BTreeSet<String> {
    let mut c = master(group).await;
    let mut found = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.sale_pattern(sku))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("scan");
        found.extend(batch);
        cursor = next;
        if cursor == 0 {
            return found;
        }
    }
}

async fn indexed(group: &RedisGroup, keys: &Keys, sku: &str) -> bool {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.sales_index())
        .arg(sku)
        .query_async(&mut master(group).await)
        .await
        .expect("zscore");
    score.is_some()
}

/// `n` orders (one shopper each) made by the purchase Function itself,
/// pipelined, as the load tests preload them.
async fn preload(group: &RedisGroup, keys: &Keys, sku: &str, n: usize) {
    let mut c = master(group).await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let order_id = format!("{sku}.{:032x}", (*i as u128) | (1u128 << 120));
            pipe.add_command(purchase_call(
                keys,
                sku,
                &format!("r{i}"),
                1,
                &order_id,
                None,
            ))
            .ignore();
        }
        let () = pipe.query_async(&mut c).await.expect("preload");
    }
}

async fn end(app: &TestApp, sku: &str) {
    let (s, body) = app
        .admin_post(&format!("/admin/sales/{sku}/end"), json!({}))
        .await;
    assert_eq!(s, 200, "end {sku}: {body}");
}

async fn buy(app: &TestApp, user: &str, sku: &str) -> String {
    let (s, body) = app.purchase(user, sku, 1, None).await;
    assert_eq!(s, 202, "{user}: {body}");
    body["order_id"].as_str().expect("order id").to_owned()
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

async fn until_gone(group: &RedisGroup, keys: &Keys, sku: &str, within: Duration) {
    eventually(within, &format!("{sku} purged"), || async {
        let left = sale_keys(group, keys, sku).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} keys left, e.g. {:?}", left.len(), left.first()))
        }
    })
    .await;
}

async fn until_settled(app: &TestApp, sku: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("{sku} settled"),
        || async {
            let a = app.audit(sku).await;
            if a["pending"] == 0 && a["orders"] == a["confirmed"] {
                Ok(())
            } else {
                Err(a.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_settled_sales_are_purged_once_by_two_workers_and_a_live_one_is_kept() {
    let group = shared_group();
    let prefix = unique("rtp");
    let keys = Keys::new(prefix.clone());
    let app = TestApp::spawn_with(group, &prefix, AppOptions::default()).await;
    let ended: Vec<String> = (0..3).map(|i| unique(&format!("rtpe{i}"))).collect();
    for sku in &ended {
        app.create_sale(sku, 1500, 1, -5, 3600).await;
        preload(group, &keys, sku, 1500).await;
    }
    let live = unique("rtpl");
    app.create_sale(&live, 10, 1, -5, 3600).await;
    buy(&app, "rl1", &live).await;
    let w1 = Worker::spawn(group, &prefix, None);
    let w2 = Worker::spawn(group, &prefix, None);
    for sku in ended.iter().chain([&live]) {
        until_settled(&app, sku).await;
    }
    let live_keys = sale_keys(group, &keys, &live).await;
    assert!(live_keys.len() >= 5, "{live_keys:?}");

    for sku in &ended {
        end(&app, sku).await;
    }
    // Not before a second after the end.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for sku in &ended {
        assert!(sale_keys(group, &keys, sku).await.len() > 1500, "{sku}");
    }
    for sku in &ended {
        until_gone(group, &keys, sku, Duration::from_secs(20)).await;
        assert!(!indexed(group, &keys, sku).await, "{sku} left the index");
    }
    // Each sale purged once: one line and one count between the two.
    eventually(Duration::from_secs(5), "three purges counted", || async {
        match (w1.purged_total().await, w2.purged_total().await) {
            (a, b) if a + b == 3.0 => Ok(()),
            n => Err(format!("{n:?}")),
        }
    })
    .await;
    let mut lines: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for l in w1
        .said("sale purged")
        .into_iter()
        .chain(w2.said("sale purged"))
    {
        let sku = l["fields"]["sku"].as_str().unwrap_or_default().to_owned();
        lines.entry(sku).or_default().push(l);
    }
    assert_eq!(
        lines.keys().cloned().collect::<BTreeSet<_>>(),
        ended.iter().cloned().collect::<BTreeSet<_>>(),
        "{lines:?}"
    );
    for (sku, l) in &lines {
        assert_eq!(l.len(), 1, "{sku}: {l:?}");
        assert_eq!(l[0]["fields"]["orders"], 1500, "{l:?}");
        // The sale, its stream, units and first hashes, every order record.
        assert!(l[0]["fields"]["keys"].as_u64().unwrap_or(0) > 1500, "{l:?}");
    }
    // How often one worker found the other at work on a sale (or done):
    // not asserted, the race is the workers' to run.
    let left = w1
        .said("sale being purged by another process; left to it")
        .len()
        + w2.said("sale being purged by another process; left to it")
            .len();
    let already = w1.said("sale already purged").len() + w2.said("sale already purged").len();
    eprintln!("retention: left to the other worker {left}, found purged {already}");
    let complaints: Vec<Value> = w1.complaints().into_iter().chain(w2.complaints()).collect();
    assert!(complaints.is_empty(), "{complaints:#?}");

    // The live sale: every key still there, and it still sells and
    // confirms.
    assert_eq!(sale_keys(group, &keys, &live).await, live_keys);
    let id = buy(&app, "rl2", &live).await;
    let unconfirmed = unconfirmed_after(group, &prefix, &[id], Duration::from_secs(10)).await;
    assert!(unconfirmed.is_empty(), "{unconfirmed:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_is_kept_while_its_orders_wait_for_their_payment() {
    let group = shared_group();
    let prefix = unique("rtw");
    let keys = Keys::new(prefix.clone());
    let mut settings = serve_settings(group, &prefix, &AppOptions::default());
    settings.payment_window = Duration::from_secs(120);
    settings.payment_token = Some(Secret::new(PAYMENT_TOKEN));
    let app = TestApp::spawn_settings(&prefix, settings).await;
    let sku = unique("rtww");
    app.create_sale(&sku, 10, 1, -5, 3600).await;
    let paid = buy(&app, "rw1", &sku).await;
    let waiting = buy(&app, "rw2", &sku).await;
    let pay = |order: String| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(app.url(&format!("/api/orders/{order}/payment")))
                .bearer_auth(PAYMENT_TOKEN)
                .json(&json!({"payment_id": format!("pay-{order}"), "amount_cents": 1999}))
                .send()
                .await
                .expect("payment");
            assert_eq!(r.status().as_u16(), 200, "{order}");
        }
    };
    pay(paid).await;
    let w = Worker::spawn(group, &prefix, None);
    until_settled(&app, &sku).await;
    end(&app, &sku).await;

    // Ended, every order recorded, one still waiting for its payment: kept.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(sale_keys(group, &keys, &sku).await.len() >= 5);
    assert!(indexed(group, &keys, &sku).await);
    assert_eq!(w.purged_total().await, 0.0);

    // Paid: settled, purged.
    pay(waiting).await;
    until_gone(group, &keys, &sku, Duration::from_secs(15)).await;
    assert_eq!(w.purged_total().await, 1.0);
    assert!(w.complaints().is_empty(), "{:#?}", w.complaints());
    app.stop().await;
}

async fn sql(pg: &Postgres, statement: &str, order_id: &str) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg.url())
        .await
        .expect("connect");
    sqlx::query(statement)
        .bind(order_id)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
        .rows_affected()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ledger_a_sale_is_purged_once_every_order_is_there_and_it_answers() {
    let group = shared_group();
    let mut pg = Postgres::init().await;
    let url = pg.url();
    let ledger = ledger(&pg).await;
    let prefix = unique("rtl");
    let keys = Keys::new(prefix.clone());
    let app = TestApp::spawn_with(group, &prefix, AppOptions::default()).await;
    let (whole, gap, later, live) = (
        unique("rtlw"),
        unique("rtlg"),
        unique("rtla"),
        unique("rtll"),
    );
    let mut ids = BTreeMap::new();
    for sku in [&whole, &gap, &later, &live] {
        app.create_sale(sku, 10, 1, -5, 3600).await;
        let mut bought = Vec::new();
        for i in 0..3 {
            bought.push(buy(&app, &format!("{sku}-u{i}"), sku).await);
        }
        ids.insert(sku.clone(), bought);
    }
    let w = Worker::spawn(group, &prefix, Some(&url));
    let all: Vec<String> = ids.values().flatten().cloned().collect();
    let unconfirmed = unconfirmed_after(group, &prefix, &all, Duration::from_secs(20)).await;
    assert!(unconfirmed.is_empty(), "{unconfirmed:?}");

    // One order of `gap` missing in the ledger.
    let missing = ids[&gap][1].clone();
    let row = ledger
        .order(&missing)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(
        sql(&pg, "DELETE FROM orders WHERE order_id = $1", &missing).await,
        1
    );
    end(&app, &whole).await;
    end(&app, &gap).await;
    until_gone(group, &keys, &whole, Duration::from_secs(15)).await;
    assert_eq!(ledger.count_of(&whole).await.expect("count"), 3);
    // `gap` is kept, and the worker says why, once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sale_keys(group, &keys, &gap).await.len() >= 5);
    let refused = w.said("sale not purged");
    assert_eq!(refused.len(), 1, "{:#?}", w.logs.lock().expect("logs"));
    assert_eq!(refused[0]["fields"]["sku"], gap.as_str());
    assert_eq!(refused[0]["fields"]["code"], "not_in_ledger");
    assert!(
        refused[0]["fields"]["why"]
            .as_str()
            .is_some_and(|m| m.contains(&missing)),
        "{refused:?}"
    );
    // The order back: purged (the refused sale is looked at again after
    // 1, 2, 4, … sweeps).
    ledger
        .record(&[Record::NewOrder(NewOrder {
            order_id: row.order_id.clone(),
            sku: row.sku.clone(),
            user_id: row.user_id.clone(),
            qty: row.qty,
            created_at: row.created_at,
            amount_cents: row.amount_cents,
            pay_by: row.pay_by,
        })])
        .await
        .expect("record it again");
    until_gone(group, &keys, &gap, Duration::from_secs(15)).await;

    // The ledger down: nothing is purged until it answers again.
    pg.stop().await;
    end(&app, &later).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(sale_keys(group, &keys, &later).await.len() >= 5);
    pg.start().await;
    until_gone(group, &keys, &later, Duration::from_secs(30)).await;
    // The test's own connections did not survive the restart.
    ledger.close().await;
    let ledger = self::ledger(&pg).await;

    assert_eq!(w.purged_total().await, 3.0);
    for sku in [&whole, &gap, &later] {
        assert_eq!(ledger.count_of(sku).await.expect("count"), 3, "{sku}");
    }
    // The live sale is whole.
    assert!(indexed(group, &keys, &live).await);
    let a = app.audit(&live).await;
    assert_eq!(
        (&a["orders"], &a["confirmed"]),
        (&json!(3), &json!(3)),
        "{a}"
    );
    let errors: Vec<Value> = w
        .complaints()
        .into_iter()
        .filter(|l| l["level"] == "ERROR" || l.get("raw").is_some())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    ledger.close().await;
    app.stop().await;
}

#[tokio::test]
async fn unsafe_or_out_of_range_purge_settings_are_configuration_errors() {
    let var = "FLASHSALE_WORKER_PURGE_AFTER_S";
    let redis = ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1");
    // More than a year (milliseconds, most likely).
    assert_config_error(
        WORKER,
        &[],
        &[
            redis,
            (var, "604800000"),
            ("FLASHSALE_WORKER_PURGE_WITHOUT_LEDGER", "true"),
        ],
        var,
    )
    .await;
    // Without the ledger, unless asked for.
    let text = assert_config_error(WORKER, &["--purge-after-s", "3600"], &[redis], var).await;
    assert!(
        text.contains("FLASHSALE_WORKER_PURGE_WITHOUT_LEDGER"),
        "{text}"
    );
}
