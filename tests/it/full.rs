//! A full Redis master (`maxmemory` reached under the shipped
//! `noeviction`), on a group of its own: purchases are refused at once with
//! 503 `unavailable` and `Retry-After`, nothing is half-written, the refusal
//! is counted, the master link stays, and selling resumes the moment memory
//! is freed.

use std::time::{Duration, Instant};

use flashsale::redis::{DbError, Keys, Redis};
use flashsale_testkit::metrics::counter_sum;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use crate::support::app::{AppOptions, TestApp, metrics_text, redis_settings};
use crate::support::redis_group::{GroupOptions, RedisGroup};

/// `used_memory` of `INFO memory`.
async fn used_memory(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

async fn config_get(conn: &mut MultiplexedConnection, name: &str) -> String {
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("CONFIG GET {name}: {e}"));
    v.get(1).cloned().unwrap_or_else(|| panic!("no {name}"))
}

async fn config_set(conn: &mut MultiplexedConnection, name: &str, value: &str) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("CONFIG SET {name} {value}: {e}"));
}

/// What the master holds of a sale: stock left, order records, stream
/// entries.
async fn holdings(conn: &mut MultiplexedConnection, keys: &Keys, sku: &str) -> (i64, usize, i64) {
    let stock: i64 = redis::cmd("HGET")
        .arg(keys.sale(sku))
        .arg("stock_left")
        .query_async(conn)
        .await
        .expect("stock_left");
    let orders = flashsale_testkit::orders::order_records(conn, keys, sku)
        .await
        .expect("scan");
    let entries: i64 = redis::cmd("XLEN")
        .arg(keys.stream(sku))
        .query_async(conn)
        .await
        .expect("xlen");
    (stock, orders, entries)
}

/// A purchase with its `Retry-After` header: (status, header, body).
async fn purchase_with_headers(
    app: &TestApp,
    user: &str,
    sku: &str,
) -> (u16, Option<String>, Value) {
    let r = app
        .http
        .post(app.url(&format!("/api/sales/{sku}/purchase")))
        .bearer_auth(app.token(user))
        .json(&json!({ "qty": 1 }))
        .send()
        .await
        .expect("purchase");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry_after, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_master_refuses_purchases_at_once_and_sells_again_once_memory_is_freed() {
    let group = RedisGroup::start(GroupOptions::default()).await;
    let opts = AppOptions::default();
    let app = TestApp::spawn(&group, opts.clone()).await;
    let keys = Keys::new(app.prefix.clone());
    let sku = "full-1";
    app.create_sale(sku, 10, 1, -5, 3600).await;
    for i in 0..3 {
        let (s, body) = app.purchase(&format!("f{i}"), sku, 1, None).await;
        assert_eq!(s, 202, "{body}");
    }
    // The access layer itself, beside the app: its link must survive.
    let redis = Redis::connect(redis_settings(&group, &app.prefix, &opts))
        .await
        .expect("access layer");
    let link = redis.current_master().expect("a master link");
    let installs = redis.link_installs();

    let mut master = group.client(group.master_port().await).await;
    let old_max = config_get(&mut master, "maxmemory").await;
    let before = holdings(&mut master, &keys, sku).await;
    assert_eq!(before, (7, 3, 3));
    // Just above what is used now, then a filler that takes it past: a
    // short command (it passes the memory check) that makes a 4 MiB value.
    let used = used_memory(&mut master).await;
    config_set(&mut master, "maxmemory", &(used + (1 << 20)).to_string()).await;
    let _: i64 = redis::cmd("SETRANGE")
        .arg(format!("{}:filler", app.prefix))
        .arg(4 << 20)
        .arg("x")
        .query_async(&mut master)
        .await
        .expect("filler");
    let used = used_memory(&mut master).await;
    let limit: u64 = config_get(&mut master, "maxmemory")
        .await
        .parse()
        .expect("maxmemory");
    assert!(used > limit, "used {used} must exceed maxmemory {limit}");

    let t = Instant::now();
    let (s, retry_after, body) = purchase_with_headers(&app, "f-full", sku).await;
    let took = t.elapsed();
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        took < Duration::from_secs(1),
        "answered after {took:?}: a full master must not be waited for (the hold is {:?})",
        opts.failover_wait
    );
    // Refused as a whole: stock, orders and stream as they were.
    assert_eq!(holdings(&mut master, &keys, sku).await, before);
    let a = app.audit(sku).await;
    assert_eq!(
        (a["sold"].as_i64(), a["orders"].as_i64()),
        (Some(3), Some(3)),
        "{a}"
    );
    assert_eq!(a["consistent"], true, "{a}");
    let metrics = metrics_text(&app).await;
    assert!(
        counter_sum(&metrics, "flashsale_redis_full_total").is_some_and(|n| n > 0.0),
        "flashsale_redis_full_total on /metrics"
    );

    // The access layer: a distinct error, at once, and the same link.
    let t = Instant::now();
    let refused = redis
        .write::<redis::Value, _>(&flashsale::redis::functions::purchase_call(
            &keys,
            sku,
            "f-direct",
            1,
            &format!("{sku}.direct"),
            None,
        ))
        .await;
    assert!(matches!(refused, Err(DbError::Full)), "{refused:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let still = redis.current_master().expect("the link is kept");
    assert_eq!(still.epoch, link.epoch, "the same link");
    assert_eq!(redis.link_installs(), installs, "no new link was built");

    // Memory freed: the next purchase sells, no restart.
    config_set(&mut master, "maxmemory", &old_max).await;
    let (s, _, body) = purchase_with_headers(&app, "f-after", sku).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(holdings(&mut master, &keys, sku).await, (6, 4, 4));
}
