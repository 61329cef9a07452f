//! Failures of the Sentinel group, each test on a group of its own: reads
//! without a master or without replicas, planned switches between and during
//! purchases, and a killed master.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{AppOptions, TestApp, order_exists};
use crate::support::redis_group::{GroupOptions, Node, RedisGroup};

/// A shopper that behaves like the page script: same key, backoff on 503.
async fn buy_like_a_client(app: &TestApp, user: &str, sku: &str) -> (u16, Value) {
    let key = format!("k-{user}");
    let mut last = (0, Value::Null);
    for attempt in 0..12u32 {
        last = app.purchase(user, sku, 1, Some(&key)).await;
        if last.0 != 503 && last.0 != 0 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
    }
    last
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

    // The master gone: reads come from the replicas before any failover.
    group.kill9(Node::Redis(master));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        let (s, p) = app.get(&format!("/api/products/{sku}"), None).await;
        assert_eq!(s, 200, "{p}");
        assert_eq!(p["stock_left"], 10);
        assert!(t.elapsed() < Duration::from_secs(1), "served promptly");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (s, list) = app.get("/api/products", None).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switch_between_purchases() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let app = TestApp::spawn(&group, AppOptions::default()).await;
    let sku = "sw-1";
    app.create_sale(sku, 20, 1, -5, 3600).await;
    let (s, first) = app.purchase("before", sku, 1, None).await;
    assert_eq!(s, 202, "{first}");

    let old = group.master_port().await;
    group.sentinel_failover().await;
    let new = group.wait_master_change(old, Duration::from_secs(15)).await;
    let switched = Instant::now();
    let (s, body) = app.purchase("after", sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    assert!(
        switched.elapsed() < Duration::from_secs(2),
        "the next purchase succeeded {:?} after the switch",
        switched.elapsed()
    );
    for b in [&first, &body] {
        let id = b["order_id"].as_str().expect("id");
        assert!(
            order_exists(&group, new, &app.prefix, id).await,
            "{id} on the new master"
        );
    }
    let a = app.audit(sku).await;
    assert_eq!(a["sold"], 2);
    assert_eq!(a["consistent"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switch_during_concurrent_purchases_loses_no_promise() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let app = Arc::new(TestApp::spawn(&group, AppOptions::default()).await);
    let sku = "sw-2";
    let stock = 150;
    app.create_sale(sku, stock, 1, -5, 3600).await;

    let old = group.master_port().await;
    let shoppers: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                buy_like_a_client(&app, &format!("s{i}"), sku).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    group.sentinel_failover().await;
    let new = group.wait_master_change(old, Duration::from_secs(15)).await;

    let mut promised = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for s in shoppers {
        let (status, body) = s.await.expect("shopper");
        *statuses.entry(status).or_insert(0) += 1;
        match status {
            202 | 409 => promised.push(body["order_id"].as_str().expect("id").to_owned()),
            410 => assert_eq!(body["error"], "sold_out"),
            other => panic!("shopper got {other}: {body}"),
        }
    }
    let distinct: HashSet<&String> = promised.iter().collect();
    assert_eq!(distinct.len(), promised.len(), "one order per shopper");
    for id in &promised {
        assert!(
            order_exists(&group, new, &app.prefix, id).await,
            "promised order {id} missing on the new master ({statuses:?})"
        );
    }
    let a = app.audit(sku).await;
    assert_eq!(a["consistent"], true, "{a}");
    assert!(a["sold"].as_i64().expect("sold") <= stock);
    assert!(a["sold"].as_i64().expect("sold") >= promised.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_purchases_wait_for_the_new_one() {
    let mut group = RedisGroup::start(GroupOptions::default()).await;
    let app = TestApp::spawn(&group, AppOptions::default()).await;
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
