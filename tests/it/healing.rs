//! Invariant 3 without perfect paths: an order answered 202 reaches
//! `confirmed` even when its stream entry was trimmed away, or acknowledged
//! without its order being confirmed (what a decision taken on one master
//! and applied on another does). The worker's trim never removes such an
//! entry, and its sweep queues the order again. Also: a pipeline that fails
//! on a master that is not writable yet keeps its error code, so it is
//! retried rather than taken for a bug.

use std::time::{Duration, Instant};

use flashsale::redis::{Keys, Verdict, verdict};
use redis::aio::MultiplexedConnection;

use crate::support::app::{AppOptions, TestApp, shared_group, worker_command};

/// A test app on the shared group with one live sale `sku` of `stock`
/// units (limit 1), its keys, and a connection to the master.
async fn live_sale(sku: &str, stock: i64) -> (TestApp, Keys, MultiplexedConnection) {
    let group = shared_group();
    let app = TestApp::spawn(group, AppOptions::default()).await;
    let keys = Keys::new(app.prefix.clone());
    app.create_sale(sku, stock, 1, -5, 3600).await;
    let conn = group.client(group.master_port().await).await;
    (app, keys, conn)
}

/// Creates the worker's consumer group on a sale's stream, from its start.
async fn create_group(conn: &mut MultiplexedConnection, stream: &str) {
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("flashsale")
        .arg("0")
        .query_async(conn)
        .await
        .expect("group");
}

/// Buys one unit for each of `users` through the API; the order ids.
async fn buy_all(app: &TestApp, sku: &str, users: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for u in users {
        let (s, body) = app.purchase(u, sku, 1, None).await;
        assert_eq!(s, 202, "{body}");
        ids.push(body["order_id"].as_str().expect("order id").to_owned());
    }
    ids
}

async fn statuses(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    ids: &[String],
) -> Vec<String> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGET").arg(keys.order(sku, id)).arg("status");
    }
    pipe.query_async(conn).await.expect("statuses")
}

async fn wait_all_confirmed(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    ids: &[String],
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let st = statuses(conn, keys, sku, ids).await;
        if st.iter().all(|s| s == "confirmed") {
            return;
        }
        assert!(
            started.elapsed() < within,
            "not all confirmed after {within:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_whose_entries_were_trimmed_or_acked_unconfirmed_are_queued_again() {
    let group = shared_group();
    let sku = "heal-1";
    let (app, keys, mut conn) = live_sale(sku, 20).await;

    let users: Vec<String> = (0..6).map(|i| format!("h{i}")).collect();
    let ids = buy_all(&app, sku, &users).await;
    let stream = keys.stream(sku);
    // The group exists and has read every entry; two are acknowledged
    // without their orders being confirmed, the rest are deleted from the
    // stream altogether. No worker would ever deliver any of them again.
    create_group(&mut conn, &stream).await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("flashsale")
        .arg("gone-consumer")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("read");
    let mut entries = Vec::new();
    for id in &ids {
        let e: String = redis::cmd("HGET")
            .arg(keys.order(sku, id))
            .arg("entry")
            .query_async(&mut conn)
            .await
            .expect("each order records its entry");
        entries.push(e);
    }
    let acked: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("flashsale")
        .arg(&entries[0..2])
        .query_async(&mut conn)
        .await
        .expect("xack");
    assert_eq!(acked, 2);

    // The trim keeps the acknowledged entries: their orders are queued.
    let (trimmed, _): (i64, i64) = flashsale::redis::functions::trim_call(&keys, sku, 100)
        .query_async(&mut conn)
        .await
        .expect("fs_trim");
    assert_eq!(
        trimmed, 0,
        "an entry whose order is queued is never trimmed"
    );

    let deleted: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&entries[2..])
        .query_async(&mut conn)
        .await
        .expect("xdel");
    assert_eq!(deleted, 4);
    let lost: i64 = flashsale::redis::functions::lost_call(&keys, sku, "flashsale")
        .query_async(&mut conn)
        .await
        .expect("fs_lost");
    assert_ne!(lost, 0, "the sweep must see that something is missing");

    let _worker = worker_command(group, &app.prefix)
        .args(["--sweep-ms", "200", "--requeue-after-ms", "0"])
        .spawn()
        .expect("worker");
    wait_all_confirmed(&mut conn, &keys, sku, &ids, Duration::from_secs(20)).await;

    // Queued again once each: the sweep is idempotent.
    let last_original = entries.iter().max().expect("entries").clone();
    let after: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(format!("({last_original}"))
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    let mut per_order = std::collections::HashMap::new();
    for (_, fields) in &after {
        *per_order.entry(fields["order_id"].clone()).or_insert(0) += 1;
    }
    assert_eq!(
        per_order.len(),
        6,
        "every lost order queued again: {per_order:?}"
    );
    assert!(per_order.values().all(|n| *n == 1), "{per_order:?}");
    let a = app.audit(sku).await;
    assert_eq!(a["confirmed"], 6, "{a}");
    assert_eq!(a["consistent"], true, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_entry_is_not_queued_twice() {
    let sku = "heal-2";
    let (app, keys, mut conn) = live_sale(sku, 5).await;
    let ids = buy_all(&app, sku, &["q0".to_owned(), "q1".to_owned()]).await;
    let order_keys: Vec<String> = ids.iter().map(|id| keys.order(sku, id)).collect();
    create_group(&mut conn, &keys.stream(sku)).await;
    // Unread entries (and, after a read, pending ones) are live.
    for _ in 0..2 {
        let (n, _): (i64, String) = flashsale::redis::functions::requeue_call(
            &keys,
            sku,
            "flashsale",
            &order_keys,
            Duration::ZERO,
        )
        .query_async(&mut conn)
        .await
        .expect("fs_requeue");
        assert_eq!(n, 0);
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("flashsale")
            .arg("c")
            .arg("STREAMS")
            .arg(keys.stream(sku))
            .arg(">")
            .query_async(&mut conn)
            .await
            .expect("read");
    }
    assert_eq!(
        statuses(&mut conn, &keys, sku, &ids).await,
        vec!["queued", "queued"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_refused_for_want_of_replicas_keeps_its_code() {
    let group = shared_group();
    let mut conn = group.client(group.master_port().await).await;
    let mut pipe = redis::pipe();
    pipe.cmd("PING")
        .cmd("EVAL")
        .arg("return redis.error_reply('NOREPLICAS Not enough good replicas to write.')")
        .arg(0);
    let err = pipe
        .query_async::<redis::Value>(&mut conn)
        .await
        .expect_err("the second command fails");
    assert_eq!(verdict(&err), Verdict::NotYet, "{err:?}");
    let mut pipe = redis::pipe();
    pipe.cmd("EVAL")
        .arg("return redis.error_reply('READONLY You can not write against a read only replica.')")
        .arg(0);
    let err = pipe
        .query_async::<redis::Value>(&mut conn)
        .await
        .expect_err("fails");
    assert_eq!(verdict(&err), Verdict::Stale, "{err:?}");
}

/// Queues `n` orders of distinct users straight through the purchase
/// Function; their ids.
async fn queue_orders(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    n: usize,
) -> Vec<String> {
    let mut pipe = redis::pipe();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
        pipe.add_command(flashsale::redis::functions::purchase_call(
            keys,
            sku,
            &format!("c{i}"),
            1,
            &id,
            None,
        ));
        ids.push(id);
    }
    let _: Vec<redis::Value> = pipe.query_async(conn).await.expect("purchases");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entries_behind_many_busy_ones_are_reclaimed() {
    // XAUTOCLAIM looks at COUNT × 10 pending entries per call. With a batch
    // of 4, a busy consumer's 60 fresh entries fill every window that starts
    // at 0-0; a dead consumer's 5 entries behind them are reached only by
    // following the cursor from call to call.
    let group = shared_group();
    let sku = "heal-3";
    let (app, keys, mut conn) = live_sale(sku, 100).await;
    let ids = queue_orders(&mut conn, &keys, sku, 65).await;
    let stream = keys.stream(sku);
    create_group(&mut conn, &stream).await;
    let read = |consumer: &'static str, count: usize| {
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg("flashsale")
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        c
    };
    let busy: redis::streams::StreamReadReply = read("busy", 60)
        .query_async(&mut conn)
        .await
        .expect("busy read");
    let busy_ids: Vec<String> = busy.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    let _: redis::Value = read("dead", 5)
        .query_async(&mut conn)
        .await
        .expect("dead read");

    // The busy consumer keeps its entries fresh (idle 0) throughout.
    let keep_busy = {
        let mut conn = conn.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            loop {
                let _: Result<redis::Value, _> = redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg("flashsale")
                    .arg("busy")
                    .arg(0)
                    .arg(&busy_ids)
                    .arg("JUSTID")
                    .query_async(&mut conn)
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _worker = worker_command(group, &app.prefix)
        .args([
            "--batch",
            "4",
            "--claim-idle-ms",
            "400",
            "--sweep-ms",
            "600000",
        ])
        .spawn()
        .expect("worker");
    let dead_orders = &ids[60..];
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        wait_all_confirmed(&mut conn, &keys, sku, dead_orders, Duration::from_secs(20)),
    )
    .await;
    keep_busy.abort();
    assert!(
        result.is_ok(),
        "the dead consumer's entries were never reclaimed"
    );
    let busy_status = statuses(&mut conn, &keys, sku, &ids[..60]).await;
    assert!(
        busy_status.iter().all(|s| s == "queued"),
        "the busy consumer's fresh entries are not taken from it"
    );
}
