//! Failures of the Sentinel group, each test on a group of its own (the
//! settings deploy/ ships): reads without a master or without replicas,
//! planned switches between and during purchases — with workers running, so
//! that every promise is followed to `confirmed` — a killed master, and a
//! switch made by hand while every Sentinel is frozen (followed by `ROLE`).
//!
//! Shoppers here behave like the page script (same key, backoff on 503),
//! but every 503 is counted: a 503 a retry hides is still one a shopper saw.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{
    AppOptions, Crowd, SwitchWatch, TestApp, buy_counting, order_exists, shipped_app_options,
    shipped_failover_wait, unconfirmed_after, unique, worker_command,
};
use crate::support::redis_group::{GroupOptions, Node, RedisGroup};

/// How long the workers get to confirm every promise after the last purchase.
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// Longest time from `+switch-master` to the next 202 answer.
const RESUME_WITHIN: Duration = Duration::from_millis(1000);

/// Two `flashsale-worker`s on `prefix`, killed when dropped.
fn two_workers(group: &RedisGroup, prefix: &str) -> Vec<tokio::process::Child> {
    (0..2)
        .map(|_| {
            worker_command(group, prefix)
                .spawn()
                .expect("spawn flashsale-worker")
        })
        .collect()
}

/// Whether the sale key is on the replica at `port`.
async fn replica_has(group: &RedisGroup, port: u16, key: &str) -> bool {
    let mut c = group.client(port).await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap_or(0);
    n == 1
}

/// Waits until every data node but `master` holds `key` (replication done).
async fn wait_replicated(group: &RedisGroup, master: usize, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in (0..3).filter(|i| *i != master) {
        while !replica_has(group, group.redis_port(r), key).await {
            assert!(Instant::now() < deadline, "{key} not on redis-{r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// GET of a catalog path that must be served while the master is frozen or
/// gone: 200, and fast — a master read would wait for a failover (seconds).
async fn catalog_read(app: &TestApp, path: &str) -> Value {
    let t = Instant::now();
    let (s, body) = app.get(path, None).await;
    let took = t.elapsed();
    assert_eq!(s, 200, "{path} without a master: {body}");
    assert!(
        took < Duration::from_millis(800),
        "{path} took {took:?}: not served from a replica"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_is_served_without_replicas_and_without_a_master() {
    let mut group = RedisGroup::start(GroupOptions::default()).await;
    let app = TestApp::spawn(&group, AppOptions::default()).await;
    let sku = "cat-1";
    app.create_sale(sku, 10, 1, -5, 3600).await;

    // Both replicas gone: reads fall back to the master.
    let master = group.master_index().await;
    let replicas: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    for r in &replicas {
        group.kill9(Node::Redis(*r));
    }
    for _ in 0..5 {
        let (s, p) = app.get(&format!("/api/products/{sku}"), None).await;
        assert_eq!(s, 200, "{p}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for r in &replicas {
        group.restart(Node::Redis(*r)).await;
    }
    group.wait_converged(Duration::from_secs(30)).await;
    // Let the app see the replicas again.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The master frozen (SIGSTOP): a sale no cache has seen — created a
    // moment ago, which drops this app's catalog, and never read by a second
    // app — is read from a replica, promptly. A failed read has no older
    // snapshot to fall back on here, and a master read would hang.
    let fresh = TestApp::spawn_with(&group, &app.prefix, AppOptions::default()).await;
    let sku2 = "cat-2";
    app.create_sale(sku2, 7, 1, -5, 3600).await;
    wait_replicated(&group, master, &format!("{}:{{{sku2}}}:sale", app.prefix)).await;
    group.sigstop(Node::Redis(master));
    let frozen = Instant::now();
    let p = catalog_read(&app, &format!("/api/products/{sku2}")).await;
    assert_eq!(p["stock_left"], 7, "{p}");
    let list = catalog_read(&fresh, "/api/products").await;
    let skus: HashSet<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["sku"].as_str())
        .collect();
    assert_eq!(skus, HashSet::from([sku, sku2]), "{list}");
    // Thawed before the Sentinels' down-after: no failover.
    assert!(
        frozen.elapsed() < Duration::from_millis(2500),
        "the reads took too long to prove anything ({:?})",
        frozen.elapsed()
    );
    group.sigcont(Node::Redis(master));
    group.wait_converged(Duration::from_secs(30)).await;

    // The master gone: reads come from the replicas before any failover,
    // again for a sale no cache has seen.
    let sku3 = "cat-3";
    app.create_sale(sku3, 5, 1, -5, 3600).await;
    wait_replicated(&group, master, &format!("{}:{{{sku3}}}:sale", app.prefix)).await;
    group.kill9(Node::Redis(master));
    let p = catalog_read(&app, &format!("/api/products/{sku3}")).await;
    assert_eq!(p["stock_left"], 5, "{p}");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let p = catalog_read(&app, &format!("/api/products/{sku}")).await;
        assert_eq!(p["stock_left"], 10);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (s, list) = app.get("/api/products", None).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(3));
}

/// Polls GET /api/orders/{id} as its shopper until `confirmed` (bounded).
async fn wait_order_confirmed(app: &TestApp, user: &str, id: &str) -> Value {
    let deadline = Instant::now() + CONFIRM_WITHIN;
    loop {
        let (s, order) = app.get(&format!("/api/orders/{id}"), Some(user)).await;
        if s == 200 && order["status"] == "confirmed" {
            return order;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} of {user} not confirmed after {CONFIRM_WITHIN:?}: {s} {order}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switch_between_purchases() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let app = TestApp::spawn(&group, shipped_app_options()).await;
    let _workers = two_workers(&group, &app.prefix);
    let sku = "sw-1";
    app.create_sale(sku, 20, 1, -5, 3600).await;
    let (s, first) = app.purchase("before", sku, 1, None).await;
    assert_eq!(s, 202, "{first}");

    let old = group.master_port().await;
    group.sentinel_failover().await;
    let new = group.wait_master_change(old, Duration::from_secs(15)).await;
    let switched = Instant::now();
    // No retry: the first answer after the switch must be the promise.
    let (s, body) = app.purchase("after", sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    assert!(
        switched.elapsed() < Duration::from_secs(1),
        "the next purchase succeeded {:?} after the switch",
        switched.elapsed()
    );
    for (user, b) in [("before", &first), ("after", &body)] {
        let id = b["order_id"].as_str().expect("id");
        assert!(
            order_exists(&group, new, &app.prefix, id).await,
            "{id} on the new master"
        );
        wait_order_confirmed(&app, user, id).await;
    }
    let a = app.audit(sku).await;
    assert_eq!(a["sold"], 2);
    assert_eq!(a["confirmed"], 2, "{a}");
    assert_eq!(a["consistent"], true);
}

impl Crowd {
    /// Every way the crowd's answers break the contract or the bounds.
    async fn problems(
        &self,
        group: &RedisGroup,
        app: &TestApp,
        sku: &str,
        stock: i64,
        switch: Option<Instant>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let statuses = self.statuses();
        for (s, n) in &statuses {
            if ![202, 409, 410].contains(s) {
                problems.push(format!("{n} shoppers ended with {s}"));
            }
        }
        if self.n503() > 0 {
            problems.push(format!(
                "{} answers were 503 ({} shoppers saw one)",
                self.n503(),
                self.outcomes.iter().filter(|o| o.n503 > 0).count()
            ));
        }
        if self.transport_errors() > 0 {
            problems.push(format!(
                "{} requests lost their connection",
                self.transport_errors()
            ));
        }
        match switch {
            None => problems.push("no +switch-master was heard".into()),
            Some(sw) => match self.resume_after(sw) {
                Some(d) if d <= RESUME_WITHIN => {}
                Some(d) => problems.push(format!(
                    "purchases resumed {d:?} after +switch-master (bound {RESUME_WITHIN:?})"
                )),
                None if statuses.contains_key(&410) => {}
                None => problems.push("no 202 after +switch-master, yet not sold out".into()),
            },
        }
        let promised = self.promised();
        let distinct: HashSet<&String> = promised.iter().collect();
        if distinct.len() != promised.len() {
            problems.push("an order id was promised to two shoppers".into());
        }
        let unconfirmed = unconfirmed_after(group, &app.prefix, &promised, CONFIRM_WITHIN).await;
        if !unconfirmed.is_empty() {
            let missing = unconfirmed.iter().filter(|(_, s)| s.is_none()).count();
            problems.push(format!(
                "{} of {} promised orders not confirmed after {CONFIRM_WITHIN:?} ({missing} missing), e.g. {:?}",
                unconfirmed.len(),
                promised.len(),
                &unconfirmed[..unconfirmed.len().min(3)]
            ));
        }
        // Orders nobody was promised (a purchase answered 503) are the
        // workers' too: give them the same bound.
        let deadline = Instant::now() + CONFIRM_WITHIN;
        let mut a = app.audit(sku).await;
        while (a["confirmed"] != a["orders"] || a["pending"] != 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            a = app.audit(sku).await;
        }
        let sold = a["sold"].as_i64().unwrap_or(-1);
        if a["consistent"] != true || sold > stock || sold < promised.len() as i64 {
            problems.push(format!(
                "audit {a} vs {} promises of {stock} units",
                promised.len()
            ));
        }
        if a["confirmed"] != a["orders"] || a["pending"] != 0 {
            problems.push(format!("workers did not confirm every order: {a}"));
        }
        problems
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switch_during_concurrent_purchases_loses_no_promise() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let app = Arc::new(TestApp::spawn(&group, shipped_app_options()).await);
    let _workers = two_workers(&group, &app.prefix);
    let sku = "sw-2";
    let stock = 150;
    app.create_sale(sku, stock, 1, -5, 3600).await;
    let watch = SwitchWatch::start(&group).await;

    let old = group.master_port().await;
    let shoppers: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                buy_counting(&app, &format!("s{i}"), sku).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    group.sentinel_failover().await;
    let new = group.wait_master_change(old, Duration::from_secs(15)).await;

    let mut outcomes = Vec::new();
    for s in shoppers {
        let o = s.await.expect("shopper");
        if o.status == 410 {
            assert_eq!(o.body["error"], "sold_out", "{o:?}");
        }
        outcomes.push(o);
    }
    let crowd = Crowd { outcomes };
    for id in &crowd.promised() {
        assert!(
            order_exists(&group, new, &app.prefix, id).await,
            "promised order {id} missing on the new master ({:?})",
            crowd.statuses()
        );
    }
    let problems = crowd
        .problems(&group, &app, sku, stock, watch.first())
        .await;
    assert!(
        problems.is_empty(),
        "planned switch during purchases ({:?}): {problems:#?}",
        crowd.statuses()
    );
}

/// The outside run in small: a planned switch while two instances sell and
/// two workers confirm, on the shipped settings. Every 202/409 must reach
/// `confirmed`, no answer may be 503 (the switch is far within the hold),
/// and purchases must resume within a second of `+switch-master`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switch_with_workers_and_purchases_flowing_keeps_every_promise() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let prefix = unique("live");
    let a = Arc::new(TestApp::spawn_with(&group, &prefix, shipped_app_options()).await);
    let b = Arc::new(TestApp::spawn_with(&group, &prefix, shipped_app_options()).await);
    let _workers = two_workers(&group, &prefix);
    let sku = "live-1";
    let stock = 380;
    let shoppers = 450u64;
    a.create_sale(sku, stock, 1, -5, 3600).await;
    let watch = SwitchWatch::start(&group).await;

    // 450 shoppers over 3.6 s, alternating between the instances; the
    // switch is asked for 0.4 s in, so purchases flow before, during and
    // after it and the sale sells out after it.
    let old = group.master_port().await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..shoppers)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                tokio::time::sleep_until((started + Duration::from_millis(8 * i)).into()).await;
                buy_counting(&app, &format!("live{i}"), sku).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let asked = Instant::now();
    group.sentinel_failover().await;
    group.wait_master_change(old, Duration::from_secs(15)).await;
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("shopper"));
    }
    let crowd = Crowd { outcomes };
    let switch = watch.first();
    let hold = shipped_failover_wait();
    if let Some(sw) = switch {
        assert!(
            sw.saturating_duration_since(asked) < hold,
            "the switch took longer than the hold: a 503 would be allowed"
        );
    }
    let problems = crowd.problems(&group, &a, sku, stock, switch).await;
    assert!(
        problems.is_empty(),
        "planned switch with workers running ({:?}, switch {:?} after asking, hold {hold:?}): {problems:#?}",
        crowd.statuses(),
        switch.map(|s| s.saturating_duration_since(asked))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_purchases_wait_for_the_new_one() {
    let mut group = RedisGroup::start(GroupOptions::default()).await;
    let app = TestApp::spawn(&group, shipped_app_options()).await;
    let sku = "kill-1";
    app.create_sale(sku, 50, 1, -5, 3600).await;
    let (s, _) = app.purchase("k0", sku, 1, None).await;
    assert_eq!(s, 202);

    let old = group.master_port().await;
    let old_index = group.master_index().await;
    group.kill9(Node::Redis(old_index));
    // Purchases arriving while the master is being replaced wait for it.
    let t = Instant::now();
    let (s, body) = app.purchase("k1", sku, 1, None).await;
    assert_eq!(s, 202, "after {:?}: {body}", t.elapsed());
    let new = group.wait_master_change(old, Duration::from_secs(15)).await;
    let id = body["order_id"].as_str().expect("id");
    assert!(order_exists(&group, new, &app.prefix, id).await);
    let a = app.audit(sku).await;
    assert_eq!(a["sold"], 2);
    assert_eq!(a["consistent"], true);
}

/// `REPLICAOF` on the data node at `port`: `None` makes it a master.
async fn replicaof(group: &RedisGroup, port: u16, master: Option<u16>) {
    let mut c = group.client(port).await;
    let mut cmd = redis::cmd("REPLICAOF");
    match master {
        Some(m) => cmd.arg("127.0.0.1").arg(m),
        None => cmd.arg("NO").arg("ONE"),
    };
    let _: String = cmd
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("REPLICAOF on {port}: {e}"));
}

/// Replicas that the master at `port` reports `state=online`.
async fn online_replicas(group: &RedisGroup, port: u16) -> usize {
    let mut c = group.client(port).await;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .expect("INFO replication");
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count()
}

/// One purchase of a shopper loop: status, body, sent and answered.
type Answer = (u16, Value, Instant, Instant);

/// With every Sentinel frozen, a switch made by hand the way a failover
/// makes it (`REPLICAOF NO ONE` on a replica, the old master and the other
/// replica pointed at it) is followed by `ROLE`: the old master's link goes
/// stale (`READONLY`), the old master names the new one, whose link is
/// installed once it says `master`. Purchases go on — 503 allowed while the
/// switch happens, never a 500 — and every 202 is on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_while_no_sentinel_answers_is_followed_by_role() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let app = Arc::new(TestApp::spawn(&group, AppOptions::default()).await);
    let sku = "role-1";
    app.create_sale(sku, 1000, 1, -5, 3600).await;
    for i in 0..5 {
        let (s, body) = app.purchase(&format!("r{i}"), sku, 1, None).await;
        assert_eq!(s, 202, "{body}");
    }
    let m = group.master_index().await;
    let (r, other) = match m {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };
    let (m_port, r_port, other_port) = (
        group.redis_port(m),
        group.redis_port(r),
        group.redis_port(other),
    );
    for i in 0..3 {
        group.sigstop(Node::Sentinel(i));
    }

    // Four shoppers buying one unit each, one after the other, throughout.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shoppers: Vec<_> = (0..4)
        .map(|t| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers: Vec<Answer> = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = Instant::now();
                    let (s, body) = app.purchase(&format!("t{t}-{i}"), sku, 1, None).await;
                    answers.push((s, body, sent, Instant::now()));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let began = Instant::now();
    replicaof(&group, r_port, None).await;
    replicaof(&group, m_port, Some(r_port)).await;
    replicaof(&group, other_port, Some(r_port)).await;
    while online_replicas(&group, r_port).await < 2 {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "redis-{r} does not have both replicas online"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for s in shoppers {
        answers.extend(s.await.expect("shopper"));
    }

    let mut statuses = std::collections::BTreeMap::new();
    for (s, ..) in &answers {
        *statuses.entry(*s).or_insert(0) += 1;
    }
    assert!(
        statuses.keys().all(|s| [202, 503].contains(s)),
        "only 202, and 503 while switching: {statuses:?}"
    );
    let after: Vec<&Answer> = answers.iter().filter(|a| a.2 >= switched).collect();
    assert!(!after.is_empty(), "no purchase after the switch");
    assert!(
        after.iter().all(|a| a.0 == 202),
        "purchases sent after the switch must all succeed: {:?}",
        after.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let promised: Vec<&str> = answers
        .iter()
        .filter(|a| a.0 == 202)
        .map(|a| a.1["order_id"].as_str().expect("order id"))
        .collect();
    let mut missing = Vec::new();
    for id in &promised {
        if !order_exists(&group, r_port, &app.prefix, id).await {
            missing.push(*id);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} promised orders missing on the new master redis-{r}: {missing:?} ({statuses:?})",
        missing.len(),
        promised.len()
    );
    let a = app.audit(sku).await;
    assert_eq!(a["consistent"], true, "{a}");
    for i in 0..3 {
        group.sigcont(Node::Sentinel(i));
    }
}
