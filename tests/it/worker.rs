//! `flashsale-worker` processes against real Redis: parallel drain, a
//! `kill -9` mid-drain, a dead consumer's entries, poison entries, a planned
//! failover while draining and selling, SIGTERM, and `fs_confirm_batch` on
//! its own.

use std::time::{Duration, Instant};

use flashsale::redis::{Keys, functions};
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::process::Child;

use crate::support::app::{
    AppOptions, TestApp, buy_counting, shared_group, shipped_app_options, unconfirmed_after,
    unique, worker_command,
};
use crate::support::redis_group::{GroupOptions, RedisGroup};

/// A worker process owned by the test: killed by PID on drop.
struct WorkerProc {
    child: Child,
}

impl WorkerProc {
    fn spawn(group: &RedisGroup, prefix: &str, extra: &[&str]) -> WorkerProc {
        let child = worker_command(group, prefix)
            .args(extra)
            .spawn()
            .expect("spawn flashsale-worker");
        WorkerProc { child }
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

/// Runs an operator command of `flashsale` against the group.
fn operator(group: &RedisGroup, prefix: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(args)
        .env("FLASHSALE_REDIS_SENTINELS", group.sentinels_env())
        .env("FLASHSALE_REDIS_PASSWORD", group.password())
        .env("FLASHSALE_KEY_PREFIX", prefix)
        .output()
        .unwrap_or_else(|e| panic!("flashsale {args:?}: {e}"))
}

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

/// Queues `n` orders for distinct users straight through the purchase Function.
async fn queue_orders(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    from: usize,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let user = format!("w{i}");
            let id = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
            pipe.add_command(flashsale::redis::functions::purchase_call(
                keys, sku, &user, 1, &id, None,
            ));
            ids.push(id);
        }
        let replies: Vec<Vec<redis::Value>> = pipe.query_async(conn).await.expect("fcall");
        for r in replies {
            assert!(
                matches!(r.first(), Some(redis::Value::BulkString(b)) if b == b"created"),
                "{r:?}"
            );
        }
    }
    ids
}

/// Waits until every order of `skus` is confirmed (audit), or panics.
async fn wait_all_confirmed(app: &TestApp, skus: &[&str], timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut audits = Vec::new();
        for s in skus {
            audits.push(app.audit(s).await);
        }
        if audits.iter().all(|a| a["confirmed"] == a["orders"]) {
            return audits;
        }
        assert!(Instant::now() < deadline, "not all confirmed: {audits:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pending(conn: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(keys.stream(sku))
        .arg(flashsale::worker::GROUP)
        .query_async(conn)
        .await
        .expect("xpending");
    match summary {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

/// Every order record of a sale, confirmed once: status confirmed and the
/// sale's confirmed counter equal to the number of orders.
async fn assert_confirmed_once(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    ids: &[String],
) {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGET").arg(keys.order(sku, id)).arg("status");
    }
    let statuses: Vec<Option<String>> = pipe.query_async(conn).await.expect("statuses");
    let bad: Vec<_> = ids
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| s.as_deref() != Some("confirmed"))
        .take(5)
        .collect();
    assert!(bad.is_empty(), "not confirmed: {bad:?}");
    let confirmed: i64 = redis::cmd("HGET")
        .arg(keys.sale(sku))
        .arg("confirmed")
        .query_async(conn)
        .await
        .expect("confirmed");
    assert_eq!(confirmed, ids.len() as i64, "each confirmed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_drain_ten_thousand_orders_once() {
    let group = shared_group();
    let app = TestApp::spawn(group, AppOptions::default()).await;
    let keys = Keys::new(app.prefix.clone());
    let skus = ["d0", "d1", "d2"];
    for s in skus {
        app.create_sale(s, 4000, 1, -5, 3600).await;
    }
    let mut conn = group.client(group.master_port().await).await;
    let workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(group, &app.prefix, &[]))
        .collect();
    let mut all = Vec::new();
    for (i, s) in skus.iter().enumerate() {
        let n = if i == 0 { 3334 } else { 3333 };
        all.push(queue_orders(&mut conn, &keys, s, 0, n).await);
    }
    let audits = wait_all_confirmed(&app, &skus, Duration::from_secs(90)).await;
    let total: i64 = audits
        .iter()
        .map(|a| a["orders"].as_i64().expect("orders"))
        .sum();
    assert_eq!(total, 10_000);
    for (s, ids) in skus.iter().zip(&all) {
        assert_confirmed_once(&mut conn, &keys, s, ids).await;
        assert_eq!(pending(&mut conn, &keys, s).await, 0);
    }
    // Processed entries are trimmed once every group has acknowledged them.
    let deadline = Instant::now() + Duration::from_secs(20);
    for s in skus {
        loop {
            let len: i64 = redis::cmd("XLEN")
                .arg(keys.stream(s))
                .query_async(&mut conn)
                .await
                .expect("xlen");
            if len < 100 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{s}: stream not trimmed ({len} entries)"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_dead_consumers_entries_are_reclaimed() {
    let group = shared_group();
    let sku = "reclaim";
    let (app, keys, mut conn) = live_sale(sku, 5000).await;

    // A consumer that read entries and died without acknowledging them.
    create_group(&mut conn, &keys, sku).await;
    let mut ids = queue_orders(&mut conn, &keys, sku, 0, 300).await;
    read_as(&mut conn, &keys, sku, "ghost", 300).await;
    assert_eq!(pending(&mut conn, &keys, sku).await, 300);

    // A real worker killed with -9 in the middle of a drain.
    let a = WorkerProc::spawn(
        group,
        &app.prefix,
        &["--claim-idle-ms", "500", "--batch", "50"],
    );
    ids.extend(queue_orders(&mut conn, &keys, sku, 300, 2000).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.signal("KILL");
    ids.extend(queue_orders(&mut conn, &keys, sku, 2300, 500).await);

    let _b = WorkerProc::spawn(group, &app.prefix, &["--claim-idle-ms", "500"]);
    wait_all_confirmed(&app, &[sku], Duration::from_secs(60)).await;
    assert_confirmed_once(&mut conn, &keys, sku, &ids).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending(&mut conn, &keys, sku).await > 0 {
        assert!(Instant::now() < deadline, "entries left pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_lettered_and_do_not_block() {
    let group = shared_group();
    let sku = "poison";
    let (app, keys, mut conn) = live_sale(sku, 100).await;
    let mut ids = queue_orders(&mut conn, &keys, sku, 0, 10).await;
    let poison: String = redis::cmd("XADD")
        .arg(keys.stream(sku))
        .arg("*")
        .arg("order_id")
        .arg("garbage")
        .arg("qty")
        .arg("many")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    ids.extend(queue_orders(&mut conn, &keys, sku, 10, 10).await);

    let _w = WorkerProc::spawn(
        group,
        &app.prefix,
        &["--claim-idle-ms", "200", "--max-deliveries", "3"],
    );
    wait_all_confirmed(&app, &[sku], Duration::from_secs(30)).await;
    assert_confirmed_once(&mut conn, &keys, sku, &ids).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dead: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(keys.dead_letters(sku))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange dead");
        if let Some((_, fields)) = dead.first() {
            assert!(
                fields
                    .windows(2)
                    .any(|w| w[0] == "original_id" && w[1] == poison)
            );
            assert!(
                fields
                    .windows(2)
                    .any(|w| w[0] == "reason" && w[1].contains("3 deliveries"))
            );
            assert!(
                fields
                    .windows(2)
                    .any(|w| w[0] == "f:order_id" && w[1] == "garbage")
            );
            break;
        }
        assert!(Instant::now() < deadline, "poison entry not dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pending(&mut conn, &keys, sku).await, 0);
    assert_eq!(app.audit(sku).await["dead"], 1);

    // The operator command lists it.
    let out = operator(group, &app.prefix, &["dead-letters", "list", "--sku", sku]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&poison));

    // Replay puts it back on the stream (still poison: it returns to the
    // dead letters after the same number of tries, under a new entry id).
    let out = operator(
        group,
        &app.prefix,
        &["dead-letters", "replay", "--sku", sku],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dead: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(keys.dead_letters(sku))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange dead");
        if dead.len() == 1
            && dead[0]
                .1
                .windows(2)
                .any(|w| w[0] == "original_id" && w[1] != poison)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replayed entry not back in the dead letters: {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Confirming twice changes nothing: the second call reports a duplicate.
    let id = &ids[0];
    let again: i64 = functions::confirm_call(&keys, sku, flashsale::worker::GROUP, id, "0-1")
        .query_async(&mut conn)
        .await
        .expect("fs_confirm");
    assert_eq!(again, 0);
    assert_confirmed_once(&mut conn, &keys, sku, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_exits_zero_and_loses_nothing() {
    let group = shared_group();
    let sku = "term";
    let (app, keys, mut conn) = live_sale(sku, 5000).await;
    let mut w = WorkerProc::spawn(group, &app.prefix, &["--batch", "20"]);
    let mut ids = queue_orders(&mut conn, &keys, sku, 0, 3000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), w.child.wait())
        .await
        .expect("exits within the bound")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    ids.extend(queue_orders(&mut conn, &keys, sku, 3000, 100).await);
    let _next = WorkerProc::spawn(group, &app.prefix, &[]);
    wait_all_confirmed(&app, &[sku], Duration::from_secs(60)).await;
    assert_confirmed_once(&mut conn, &keys, sku, &ids).await;
    assert_eq!(pending(&mut conn, &keys, sku).await, 0);
}

/// A planned switch while two workers drain a backlog and shoppers keep
/// buying through the API: the backlog and every purchase answered 202/409
/// during the switch are confirmed exactly once, on the new master, and no
/// shopper is answered 503 (the switch is far within the hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switch_while_workers_drain() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let prefix = unique("wf");
    let app =
        std::sync::Arc::new(TestApp::spawn_with(&group, &prefix, shipped_app_options()).await);
    let keys = Keys::new(prefix.clone());
    let sku = "wf";
    app.create_sale(sku, 5000, 1, -5, 3600).await;
    let old = group.master_port().await;
    let mut conn = group.client(old).await;
    let _w1 = WorkerProc::spawn(
        &group,
        &prefix,
        &["--batch", "25", "--claim-idle-ms", "1000"],
    );
    let _w2 = WorkerProc::spawn(
        &group,
        &prefix,
        &["--batch", "25", "--claim-idle-ms", "1000"],
    );
    // A backlog the workers are draining when the switch comes, held by
    // both replicas (written straight through the Function, so made safe
    // here rather than by the app's WAIT).
    let mut ids = queue_orders(&mut conn, &keys, sku, 0, 3000).await;
    let held: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(2000)
        .query_async(&mut conn)
        .await
        .expect("wait");
    assert_eq!(held, 2, "the backlog is on both replicas");
    // Shoppers buying through the API before, during and after the switch.
    let started = Instant::now();
    let shoppers: Vec<_> = (0..300u64)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((started + Duration::from_millis(10 * i)).into()).await;
                buy_counting(&app, &format!("live{i}"), sku).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    group.sentinel_failover().await;
    let new = group.wait_master_change(old, Duration::from_secs(15)).await;
    let mut n503 = 0;
    let mut statuses = std::collections::BTreeMap::new();
    for s in shoppers {
        let o = s.await.expect("shopper");
        n503 += o.n503;
        *statuses.entry(o.status).or_insert(0) += 1;
        if o.status == 202 || o.status == 409 {
            ids.push(o.body["order_id"].as_str().expect("order id").to_owned());
        }
    }
    let unconfirmed = unconfirmed_after(&group, &prefix, &ids, Duration::from_secs(60)).await;
    assert!(
        unconfirmed.is_empty(),
        "{} of {} orders (3000 queued, the rest promised during the switch: {statuses:?}) \
         not confirmed, e.g. {:?}",
        unconfirmed.len(),
        ids.len(),
        &unconfirmed[..unconfirmed.len().min(3)]
    );
    assert_eq!(n503, 0, "answers 503 during the switch ({statuses:?})");
    assert!(
        statuses.keys().all(|s| *s == 202 || *s == 409),
        "every shopper holds one promise ({statuses:?})"
    );
    let mut conn = group.client(new).await;
    assert_confirmed_once(&mut conn, &keys, sku, &ids).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while pending(&mut conn, &keys, sku).await > 0 {
        assert!(
            Instant::now() < deadline,
            "entries left pending on the new master"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the worker group on a sale's stream (and the stream).
async fn create_group(conn: &mut MultiplexedConnection, keys: &Keys, sku: &str) {
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.stream(sku))
        .arg(flashsale::worker::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("group");
}

/// Reads up to `count` new entries as `consumer` of the worker group
/// (they stay pending on it); their ids.
async fn read_as(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    sku: &str,
    consumer: &str,
    count: usize,
) -> Vec<String> {
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(flashsale::worker::GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(keys.stream(sku))
        .arg(">")
        .query_async(conn)
        .await
        .expect("xreadgroup");
    read.keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

/// Pending entry ids of a sale's stream in the worker group, oldest first.
async fn pending_ids(conn: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> Vec<String> {
    let p: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(keys.stream(sku))
        .arg(flashsale::worker::GROUP)
        .arg("-")
        .arg("+")
        .arg(1000)
        .query_async(conn)
        .await
        .expect("xpending range");
    p.ids.into_iter().map(|p| p.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_batch_confirms_counts_and_acks_only_existing_orders() {
    let sku = "batch";
    let (_app, keys, mut conn) = live_sale(sku, 100).await;
    create_group(&mut conn, &keys, sku).await;

    // Two real orders (queued) and an entry whose order does not exist.
    let ids = queue_orders(&mut conn, &keys, sku, 0, 2).await;
    let missing = format!("{sku}.{}", uuid::Uuid::new_v4().simple());
    let _: String = redis::cmd("XADD")
        .arg(keys.stream(sku))
        .arg("*")
        .arg("order_id")
        .arg(&missing)
        .arg("sku")
        .arg(sku)
        .arg("user_id")
        .arg("nobody")
        .arg("qty")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let entries = read_as(&mut conn, &keys, sku, "tester", 10).await;
    assert_eq!(entries.len(), 3);
    assert_eq!(pending_ids(&mut conn, &keys, sku).await, entries);

    // The second order is already confirmed (through fs_confirm with an
    // unrelated entry id, so its own entry stays pending).
    let first: i64 = functions::confirm_call(&keys, sku, flashsale::worker::GROUP, &ids[1], "0-1")
        .query_async(&mut conn)
        .await
        .expect("fs_confirm");
    assert_eq!(first, 1);
    assert_eq!(pending_ids(&mut conn, &keys, sku).await, entries);

    let batch = |conn: &mut MultiplexedConnection| {
        let batch = [
            (ids[0].as_str(), entries[0].as_str()),
            (ids[1].as_str(), entries[1].as_str()),
            (missing.as_str(), entries[2].as_str()),
        ];
        let cmd = functions::confirm_batch_call(
            &keys,
            sku,
            flashsale::worker::GROUP,
            batch.iter().copied(),
            batch.len(),
        );
        let mut conn = conn.clone();
        async move { cmd.query_async::<Vec<i64>>(&mut conn).await }
    };
    let confirmed = |conn: &mut MultiplexedConnection| {
        let mut conn = conn.clone();
        let key = keys.sale(sku);
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg("confirmed")
                .query_async::<i64>(&mut conn)
                .await
                .expect("confirmed")
        }
    };

    // Queued → 1, already confirmed → 0, missing → -1.
    assert_eq!(batch(&mut conn).await.expect("batch"), vec![1, 0, -1]);
    assert_eq!(confirmed(&mut conn).await, 2);
    let status: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys.order(sku, &ids[0]))
        .arg("status")
        .arg("confirmed_ms")
        .query_async(&mut conn)
        .await
        .expect("order");
    assert_eq!(status[0].as_deref(), Some("confirmed"));
    assert!(status[1].is_some(), "confirmed_ms set");
    // Only the existing orders' entries were acknowledged.
    assert_eq!(
        pending_ids(&mut conn, &keys, sku).await,
        vec![entries[2].clone()]
    );

    // A repeat changes nothing: both are duplicates now.
    assert_eq!(batch(&mut conn).await.expect("batch"), vec![0, 0, -1]);
    assert_eq!(confirmed(&mut conn).await, 2);
    assert_eq!(
        pending_ids(&mut conn, &keys, sku).await,
        vec![entries[2].clone()]
    );

    // More than 512 entries in one call is refused and changes nothing.
    let too_many = std::iter::repeat_n((missing.as_str(), entries[2].as_str()), 513);
    let big = functions::confirm_batch_call(&keys, sku, flashsale::worker::GROUP, too_many, 513);
    let refused: Result<Vec<i64>, _> = big.query_async(&mut conn).await;
    assert!(refused.is_err(), "{refused:?}");
    // So is an order key of another sale.
    let other: Result<Vec<i64>, _> = functions::raw_call(
        "fs_confirm_batch",
        &[
            keys.sale(sku),
            keys.stream(sku),
            keys.order("other", &missing),
        ],
        &[
            flashsale::worker::GROUP.to_owned(),
            missing.clone(),
            entries[2].clone(),
        ],
    )
    .query_async(&mut conn)
    .await;
    assert!(other.is_err(), "{other:?}");
    assert_eq!(confirmed(&mut conn).await, 2);
    assert_eq!(
        pending_ids(&mut conn, &keys, sku).await,
        vec![entries[2].clone()]
    );
}
