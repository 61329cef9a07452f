//! The HTTP API on the shared Sentinel group: purchases, limits, windows,
//! bad input, auth, orders, admin, pages.

use std::collections::{HashMap, HashSet};

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::support::app::{
    AppOptions, TestApp, redis_settings, shared_group, stream_order_ids, unique,
};

async fn app() -> TestApp {
    TestApp::spawn(shared_group(), AppOptions::default()).await
}

fn sku() -> String {
    unique("sku")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_happy_path() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 10, 1, -5, 3600).await;

    let (s, body) = app.purchase("alice", &sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let order_id = body["order_id"].as_str().expect("order id").to_owned();

    let (s, order) = app
        .get(&format!("/api/orders/{order_id}"), Some("alice"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(order["order_id"], order_id.as_str());
    assert_eq!(order["sku"], sku.as_str());
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["qty"], 1);
    assert_eq!(order["status"], "queued");
    assert!(
        order["created_at"]
            .as_str()
            .is_some_and(|t| t.contains('T'))
    );

    let (s, mine) = app.get("/api/me/orders", Some("alice")).await;
    assert_eq!(s, 200);
    assert_eq!(mine["orders"].as_array().map(Vec::len), Some(1));

    let a = app.audit(&sku).await;
    assert_eq!(a["stock_total"], 10);
    assert_eq!(a["stock_left"], 9);
    assert_eq!(a["sold"], 1);
    assert_eq!(a["orders"], 1);
    assert_eq!(a["buyers"], 1);
    assert_eq!(a["pending"], 1);
    assert_eq!(a["consistent"], true);

    let (s, product) = app.get(&format!("/api/products/{sku}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(product["state"], "live");
    assert!(product["server_time"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sells_exactly_the_stock_to_concurrent_shoppers() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 100, 1, -5, 3600).await;

    let results = join_all((0..500).map(|i| {
        let app = &app;
        let sku = &sku;
        async move { app.purchase(&format!("shopper{i}"), sku, 1, None).await }
    }))
    .await;
    let mut accepted = Vec::new();
    for (s, body) in &results {
        match s {
            202 => accepted.push(body["order_id"].as_str().expect("id").to_owned()),
            410 => assert_eq!(body["error"], "sold_out"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted.len(), 100, "exactly the stock is sold");
    let unique_ids: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique_ids.len(), 100);

    let a = app.audit(&sku).await;
    assert_eq!(a["stock_left"], 0);
    assert_eq!(a["sold"], 100);
    assert_eq!(a["orders"], 100);
    assert_eq!(a["consistent"], true);

    let group = shared_group();
    let master = group.master_port().await;
    let in_stream = stream_order_ids(group, master, &app.prefix, &sku).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &in_stream {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    for id in &accepted {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "order {id} once in the stream"
        );
    }
    assert_eq!(in_stream.len(), 100);

    // Sold out is now answered locally, and a buyer still learns the order id.
    let (s, body) = app.purchase("late-shopper", &sku, 1, None).await;
    assert_eq!((s, body["error"].as_str()), (410, Some("sold_out")));
    let winner = results
        .iter()
        .position(|(s, _)| *s == 202)
        .expect("a winner");
    let (s, body) = app
        .purchase(&format!("shopper{winner}"), &sku, 1, None)
        .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["order_id"], results[winner].1["order_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_shopper_limit_holds_under_double_clicks() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 50, 1, -5, 3600).await;
    let results = join_all((0..20).map(|_| app.purchase("clicker", &sku, 1, None))).await;
    let accepted: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(accepted.len(), 1, "{results:?}");
    let id = &accepted[0]["order_id"];
    for (s, body) in &results {
        assert!(*s == 202 || *s == 409, "{s} {body}");
        assert_eq!(&body["order_id"], id, "every answer names the one order");
    }
    let a = app.audit(&sku).await;
    assert_eq!(a["sold"], 1);
    assert_eq!(a["buyers"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_limits_above_one() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 50, 2, -5, 3600).await;
    let (s, first) = app.purchase("bob", &sku, 1, Some("key-1")).await;
    assert_eq!(s, 202);
    // Same key: the same order, 409.
    let (s, again) = app.purchase("bob", &sku, 1, Some("key-1")).await;
    assert_eq!(s, 409);
    assert_eq!(again["order_id"], first["order_id"]);
    // A new key buys again while under the limit of 2...
    let (s, second) = app.purchase("bob", &sku, 1, Some("key-2")).await;
    assert_eq!(s, 202);
    assert_ne!(second["order_id"], first["order_id"]);
    // ...and not beyond it.
    let (s, third) = app.purchase("bob", &sku, 1, Some("key-3")).await;
    assert_eq!(s, 409);
    assert_eq!(third["order_id"], first["order_id"]);
    // More than the limit at once is invalid, not a purchase.
    let (s, body) = app.purchase("carol", &sku, 3, None).await;
    assert_eq!((s, body["error"].as_str()), (422, Some("invalid_qty")));
    let a = app.audit(&sku).await;
    assert_eq!(a["sold"], 2);
    assert_eq!(a["orders"], 2);
    assert_eq!(a["max_units_per_buyer"], 2);
    // Both orders are bob's, oldest first, each once.
    let (s, mine) = app.get("/api/me/orders", Some("bob")).await;
    assert_eq!(s, 200);
    assert_eq!(
        order_ids_of(&mine, &sku),
        [
            first["order_id"].as_str().expect("id"),
            second["order_id"].as_str().expect("id")
        ]
    );
    // A malformed key is refused before anything happens.
    let (s, _) = app.purchase("dave", &sku, 1, Some("bad key{}")).await;
    assert_eq!(s, 422);
}

/// Library versions before 7 also pushed a shopper's first order onto the
/// `uorders` list; a sale bought under such a version and continued under
/// this one lists every order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_orders_read_lists_written_before_version_7() {
    let group = shared_group();
    let app = TestApp::spawn(group, AppOptions::default()).await;
    let sku = sku();
    app.create_sale(&sku, 10, 3, -5, 3600).await;
    let (s, one) = app.purchase("olga", &sku, 1, None).await;
    assert_eq!(s, 202, "{one}");
    let one = one["order_id"].as_str().expect("id").to_owned();
    // What version 6 wrote besides `first`: the list holding the first order.
    let mut c = group.client(group.master_port().await).await;
    let list = format!("{}:{{{sku}}}:uorders:olga", app.prefix);
    let n: i64 = redis::cmd("LLEN")
        .arg(&list)
        .query_async(&mut c)
        .await
        .expect("llen");
    assert_eq!(n, 0, "a first order makes no list key");
    let _: i64 = redis::cmd("RPUSH")
        .arg(&list)
        .arg(&one)
        .query_async(&mut c)
        .await
        .expect("rpush");
    let (s, two) = app.purchase("olga", &sku, 1, None).await;
    assert_eq!(s, 202, "{two}");
    let (s, mine) = app.get("/api/me/orders", Some("olga")).await;
    assert_eq!(s, 200);
    assert_eq!(
        order_ids_of(&mine, &sku),
        [one.as_str(), two["order_id"].as_str().expect("id")]
    );
}

/// A shopper's order that the replicas list but whose record they do not
/// hold (a replica behind the one that answered the list, or one that
/// diverged) is read from the master: it is never left out of the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_orders_never_drop_a_listed_order() {
    let group = shared_group();
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 10, 1, -5, 3600).await;
    let (s, body) = app.purchase("petra", &sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["order_id"].as_str().expect("id").to_owned();
    let record = format!("{}:{{{sku}}}:order:{id}", app.prefix);
    let master = group.master_port().await;
    let replicas: Vec<u16> = (0..3)
        .map(|i| group.redis_port(i))
        .filter(|p| *p != master)
        .collect();
    assert_eq!(replicas.len(), 2, "the shared group has two replicas");
    let mut m = group.client(master).await;
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg(&record)
        .query_async(&mut m)
        .await
        .expect("dump");
    // Every replica still lists the order for petra but loses its record.
    for port in &replicas {
        write_on_replica(group, *port, redis::cmd("DEL").arg(&record)).await;
    }
    for _ in 0..4 {
        let (s, mine) = app.get("/api/me/orders", Some("petra")).await;
        assert_eq!(s, 200, "{mine}");
        assert_eq!(order_ids_of(&mine, &sku), [id.as_str()], "{mine}");
    }
    for port in &replicas {
        write_on_replica(
            group,
            *port,
            redis::cmd("RESTORE")
                .arg(&record)
                .arg(0)
                .arg(&dump)
                .arg("REPLACE"),
        )
        .await;
    }
}

/// Runs one write on a replica of the shared group, bypassing
/// `replica-read-only` for that one command (a diverged replica, on purpose).
async fn write_on_replica(
    group: &crate::support::redis_group::RedisGroup,
    port: u16,
    cmd: &redis::Cmd,
) {
    let mut c = group.client(port).await;
    let set = |v: &'static str| {
        let mut c = redis::cmd("CONFIG");
        c.arg("SET").arg("replica-read-only").arg(v);
        c
    };
    let _: () = set("no").query_async(&mut c).await.expect("config set");
    let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut c).await;
    let _: () = set("yes").query_async(&mut c).await.expect("config set");
    r.expect("write on replica");
}

/// The order ids of one sale in a `GET /api/me/orders` answer, in its order.
fn order_ids_of<'a>(mine: &'a Value, sku: &str) -> Vec<&'a str> {
    mine["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter(|o| o["sku"] == sku)
        .filter_map(|o| o["order_id"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_window_is_enforced() {
    let app = app().await;
    let early = sku();
    app.create_sale(&early, 5, 1, 3600, 3600).await;
    let (s, body) = app.purchase("erin", &early, 1, None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (425, Some("not_started")),
        "{body}"
    );
    let (_, p) = app.get(&format!("/api/products/{early}"), None).await;
    assert_eq!(p["state"], "upcoming");

    let over = sku();
    app.create_sale(&over, 5, 1, -10, 2).await;
    let (s, body) = app.purchase("erin", &over, 1, None).await;
    assert_eq!((s, body["error"].as_str()), (410, Some("ended")));
    let (_, p) = app.get(&format!("/api/products/{over}"), None).await;
    assert_eq!(p["state"], "ended");
    for sku in [&early, &over] {
        assert_eq!(app.audit(sku).await["sold"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_json_error_and_changes_nothing() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let before = app.audit(&sku).await;
    let token = app.token("frank");
    let big = format!("{{\"qty\":1,\"pad\":\"{}\"}}", "x".repeat(1 << 20));
    let cases: Vec<(String, u16, &str)> = vec![
        (r#"{"qty":0}"#.into(), 422, "invalid_qty"),
        (r#"{"qty":-1}"#.into(), 422, "invalid_qty"),
        (r#"{"qty":1000000000000}"#.into(), 422, "invalid_qty"),
        (r#"{"qty":"abc"}"#.into(), 422, "invalid_qty"),
        (String::new(), 422, "invalid_qty"),
        ("not json".into(), 400, "invalid_json"),
        (big, 413, "payload_too_large"),
    ];
    for (body, status, code) in cases {
        let shown = body.chars().take(40).collect::<String>();
        let (s, b) = app.purchase_raw(&token, &sku, body, None).await;
        assert_eq!(s, status, "{shown}: {b}");
        assert_eq!(b["error"], code, "{shown}");
        assert!(b["message"].is_string());
    }
    let (s, b) = app.purchase("frank", "no-such-sku", 1, None).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("unknown_sku")));
    let (s, b) = app.purchase("frank", "bad{sku}", 1, None).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("unknown_sku")));
    let (s, b) = app.get("/api/products/nope", None).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("unknown_sku")));
    let (s, b) = app.get("/no/such/route", None).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
    let r = app
        .http
        .delete(app.url("/api/products"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 405);
    let b: Value = r.json().await.expect("405 json");
    assert!(b["error"].is_string());
    assert_eq!(app.audit(&sku).await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let forged = flashsale::web::auth::mint(
        &flashsale::config::Secret::new("another-secret-0123456789"),
        "mallory",
        3600,
    )
    .expect("mint");
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        encode(
            &Header::default(),
            &json!({"sub": "mallory", "exp": 1_000_000_000u64}),
            &EncodingKey::from_secret(crate::support::app::JWT_SECRET.as_bytes()),
        )
        .expect("encode")
    };
    for token in [forged.as_str(), expired.as_str(), "", "garbage"] {
        let (s, b) = app
            .purchase_raw(token, &sku, r#"{"qty":1}"#.into(), None)
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (401, Some("unauthorized")),
            "{token}"
        );
    }
    let r = app
        .http
        .post(app.url(&format!("/api/sales/{sku}/purchase")))
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let (s, _) = app.get("/api/me/orders", None).await;
    assert_eq!(s, 401);
    // The cookie works like the header.
    let r = app
        .http
        .post(app.url(&format!("/api/sales/{sku}/purchase")))
        .header("cookie", format!("fs_token={}", app.token("cookie-user")))
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(app.audit(&sku).await["sold"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_shoppers_order_is_not_found() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let (_, body) = app.purchase("grace", &sku, 1, None).await;
    let id = body["order_id"].as_str().expect("id");
    let (s, b) = app.get(&format!("/api/orders/{id}"), Some("heidi")).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
    let (s, _) = app.get(&format!("/api/orders/{id}"), Some("grace")).await;
    assert_eq!(s, 200);
    let (s, _) = app.get("/api/orders/not-an-order", Some("grace")).await;
    assert_eq!(s, 404);
    let (s, _) = app.get(&format!("/api/orders/{id}"), None).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_guarded_and_validated() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let sale = json!({"sku": sku, "name": "n", "description": "", "price_cents": 1, "stock": 1,
        "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z", "per_user_limit": 1});
    let (s, b) = app.admin_post("/admin/sales", sale.clone()).await;
    assert_eq!((s, b["error"].as_str()), (409, Some("sale_exists")));
    let mut backwards = sale.clone();
    backwards["sku"] = json!(unique("bk"));
    backwards["ends_at"] = json!("2029-01-01T00:00:00Z");
    let (s, _) = app.admin_post("/admin/sales", backwards).await;
    assert_eq!(s, 422);
    let r = app
        .http
        .post(app.url("/admin/sales"))
        .bearer_auth("wrong")
        .json(&sale)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let r = app
        .http
        .get(app.url(&format!("/admin/sales/{sku}/audit")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let r = app
        .http
        .get(app.url("/admin/sales/nope/audit"))
        .bearer_auth(crate::support::app::ADMIN_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);

    let no_admin = TestApp::spawn(
        shared_group(),
        AppOptions {
            admin: false,
            ..AppOptions::default()
        },
    )
    .await;
    let r = no_admin
        .http
        .get(no_admin.url(&format!("/admin/sales/{sku}/audit")))
        .bearer_auth(crate::support::app::ADMIN_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404, "admin API is off without a token");
}

/// An admin create that is retried (say, across a master switch, after the
/// first attempt was applied but its answer lost) is answered like the first
/// one; a different sale under the same sku is still a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_retried_is_an_idempotent_replay() {
    let app = app().await;
    let sku = sku();
    let sale = json!({"sku": sku, "name": "Replay", "description": "d", "price_cents": 500,
        "stock": 3, "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z",
        "per_user_limit": 1});
    let (s, first) = app.admin_post("/admin/sales", sale.clone()).await;
    assert_eq!(s, 201, "{first}");
    let (s, again) = app.admin_post("/admin/sales", sale.clone()).await;
    assert_eq!(s, 201, "{again}");
    assert_eq!(again, first, "the replay answers with the same body");
    for (field, value) in [
        ("name", json!("Other")),
        ("description", json!("")),
        ("price_cents", json!(501)),
        ("stock", json!(4)),
        ("starts_at", json!("2030-01-01T00:00:01Z")),
        ("ends_at", json!("2030-01-03T00:00:00Z")),
        ("per_user_limit", json!(2)),
    ] {
        let mut other = sale.clone();
        other[field] = value;
        let (s, b) = app.admin_post("/admin/sales", other).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (409, Some("sale_exists")),
            "{field}: {b}"
        );
    }
    assert_eq!(app.audit(&sku).await["stock_total"], 3);
}

/// A catalog refresh whose caller goes away (the client hung up, the request
/// timed out) must not leave the catalog on its old snapshot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_refresh_survives_a_dropped_caller() {
    use flashsale::redis::Redis;
    use flashsale::sale::Catalog;
    use flashsale::sale::catalog::NewSale;
    let group = shared_group();
    let prefix = unique("cat");
    let opts = AppOptions::default();
    let ttl = Duration::from_millis(50);
    let connect = || async {
        Redis::connect(redis_settings(group, &prefix, &opts))
            .await
            .expect("redis")
    };
    let here = Catalog::new(connect().await, ttl);
    // Another instance, where the sales are created.
    let elsewhere = Catalog::new(connect().await, ttl);
    let new_sale = |sku: &str| NewSale {
        sku: sku.to_owned(),
        name: "n".into(),
        description: String::new(),
        price_cents: 1,
        stock: 1,
        starts_ms: 1_900_000_000_000,
        ends_ms: 1_900_000_001_000,
        per_user_limit: 1,
        currency: flashsale::sale::Currency::DEFAULT,
        image_url: None,
    };
    let has = |list: &[flashsale::sale::Sale], sku: &str| list.iter().any(|s| s.sku == sku);
    let old = sku();
    elsewhere.create(&new_sale(&old)).await.expect("create");
    assert!(has(&here.list().await.expect("list"), &old));
    tokio::time::sleep(ttl * 2).await;
    // The expired catalog's refresh starts, and its caller is dropped at
    // the refresh's first await.
    assert!(
        here.list().now_or_never().is_none(),
        "the refresh was in flight when its caller went away"
    );
    let new = sku();
    elsewhere.create(&new_sale(&new)).await.expect("create");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        tokio::time::sleep(ttl * 2).await;
        if has(&here.list().await.expect("list"), &new) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the catalog never refreshed again after a dropped refresh"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_escaped_and_cacheable() {
    let app = app().await;
    let sku = sku();
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let (s, _) = app
        .admin_post(
            "/admin/sales",
            json!({"sku": sku, "name": "<script>alert(1)</script> TV", "description": "a & b",
                "price_cents": 123456, "stock": 7, "per_user_limit": 1,
                "starts_at": now.format(fmt).expect("fmt"),
                "ends_at": (now + time::Duration::hours(1)).format(fmt).expect("fmt")}),
        )
        .await;
    assert_eq!(s, 201);
    let r = app
        .http
        .get(app.url(&format!("/p/{sku}")))
        .send()
        .await
        .expect("page");
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .expect("cc")
            .contains("public")
    );
    assert!(r.headers().contains_key("last-modified"));
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("script-src 'self'")
    );
    let html = r.text().await.expect("html");
    assert!(
        !html.contains("<script>alert(1)</script>"),
        "name is escaped"
    );
    assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62; TV"));
    assert!(html.contains("1234.56"));
    assert!(html.contains(r#"id="buy""#));
    let r = app
        .http
        .get(app.url(&format!("/p/{sku}")))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("page");
    assert_eq!(r.status().as_u16(), 304);
    let index = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .expect("index")
        .text()
        .await
        .expect("text");
    assert!(index.contains(&format!("/p/{sku}")));
    let r = app
        .http
        .get(app.url("/p/no-such-sale"))
        .send()
        .await
        .expect("page");
    assert_eq!(r.status().as_u16(), 404);
    let r = app
        .http
        .get(app.url("/static/app.js"))
        .send()
        .await
        .expect("js");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .expect("cc")
            .contains("immutable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    use crate::support::app::{metric_value, metrics_text};
    use crate::support::redis_group::{GroupOptions, Node, RedisGroup};

    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let (s, _) = app.get("/healthz", None).await;
    assert_eq!(s, 200);
    let (s, body) = app.get("/readyz", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");

    // The metrics are real counters: a purchase moves them (they are the
    // process's, shared with other tests, so they can only have grown more).
    let accepted = r#"flashsale_purchases_total{outcome="accepted"}"#;
    let purchase_202 =
        r#"flashsale_http_requests_total{route="/api/sales/{sku}/purchase",status="202"}"#;
    let acks = "flashsale_ack_round_seconds_count";
    let before = metrics_text(&app).await;
    for name in [
        "flashsale_http_requests_total",
        "flashsale_http_request_duration_seconds",
        "flashsale_purchases_total",
        "flashsale_required_replica_acks",
        "flashsale_connections_open",
    ] {
        assert!(
            before.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{before}"
        );
    }
    let (s, body) = app.purchase("ivan", &sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    let after = metrics_text(&app).await;
    for series in [accepted, purchase_202, acks] {
        let b = metric_value(&before, series).unwrap_or(0.0);
        let a = metric_value(&after, series)
            .unwrap_or_else(|| panic!("{series} missing after a purchase:\n{after}"));
        assert!(a >= b + 1.0, "{series}: {b} before a purchase, {a} after");
    }
    let required = metric_value(&after, "flashsale_required_replica_acks").expect("acks gauge");
    assert!(required >= 1.0, "required replica acks {required}");
    for secret in [
        crate::support::app::JWT_SECRET,
        crate::support::app::ADMIN_TOKEN,
        shared_group().password(),
    ] {
        assert!(!after.contains(secret), "a secret in /metrics");
    }

    // No master reachable: not ready (503, the contract's error body), yet
    // alive; ready again once the Sentinels have promoted a replica.
    let mut group = RedisGroup::start(GroupOptions::default()).await;
    let lone = TestApp::spawn(&group, AppOptions::default()).await;
    let (s, body) = lone.get("/readyz", None).await;
    assert_eq!(s, 200, "{body}");
    let master = group.master_index().await;
    group.kill9(Node::Redis(master));
    let t = std::time::Instant::now();
    let (s, body) = lone.get("/readyz", None).await;
    assert_eq!(s, 503, "/readyz with the master gone: {body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    let (s, _) = lone.get("/healthz", None).await;
    assert_eq!(s, 200, "/healthz while the master is gone");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, body) = lone.get("/readyz", None).await;
        if s == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still {s} 30 s after the master died: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The status; a 429 must carry `Retry-After` and the contract's code.
async fn status_checking_429(r: reqwest::Response) -> u16 {
    let s = r.status().as_u16();
    if s == 429 {
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], "rate_limited");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopper_rate_limit_is_shared_by_instances() {
    let opts = AppOptions {
        rate_limit_per_shopper: 3,
        ..AppOptions::default()
    };
    let a = TestApp::spawn(shared_group(), opts.clone()).await;
    let b = TestApp::spawn_with(shared_group(), &a.prefix, opts).await;
    let sku = sku();
    a.create_sale(&sku, 100, 100, -5, 3600).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app
            .http
            .post(app.url(&format!("/api/sales/{sku}/purchase")))
            .bearer_auth(app.token("hammer"))
            .json(&json!({"qty": 1}))
            .send()
            .await
            .expect("post");
        statuses.push(status_checking_429(r).await);
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!((3..=4).contains(&accepted), "{statuses:?}");
    assert_eq!(accepted + limited, 12, "{statuses:?}");
    assert_eq!(a.audit(&sku).await["orders"], accepted as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_rate_limit_covers_the_api_only() {
    let opts = AppOptions {
        rate_limit_per_ip: 4,
        ..AppOptions::default()
    };
    let app = TestApp::spawn(shared_group(), opts).await;
    let sku = sku();
    app.create_sale(&sku, 10, 1, -5, 3600).await;
    let get = |path: String, ip: &'static str| {
        let req = app.http.get(app.url(&path)).header("x-real-ip", ip);
        async move { req.send().await.expect("get") }
    };
    let mut statuses = Vec::new();
    for _ in 0..16 {
        let r = get(format!("/api/products/{sku}"), "203.0.113.7").await;
        statuses.push(status_checking_429(r).await);
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // Another address has its own bucket; pages are not under the limit.
    assert_eq!(
        get(format!("/api/products/{sku}"), "203.0.113.8")
            .await
            .status(),
        200
    );
    assert_eq!(get(format!("/p/{sku}"), "203.0.113.7").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_purchases_are_refused() {
    let app = app().await;
    let sku = sku();
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let r = app
        .http
        .post(app.url(&format!("/api/sales/{sku}/purchase")))
        .bearer_auth(app.token("victim"))
        .header("origin", "https://evil.example")
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(app.audit(&sku).await["sold"], 0);
    let host = app.base.trim_start_matches("http://").to_owned();
    let r = app
        .http
        .post(app.url(&format!("/api/sales/{sku}/purchase")))
        .bearer_auth(app.token("victim"))
        .header("origin", format!("http://{host}"))
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_node_url_works_for_development() {
    use flashsale::config::{RedisTarget, ReplicaAcks, Secret, ServeSettings};
    let group = shared_group();
    let master = group.master_port().await;
    let prefix = unique("url");
    let mut redis = crate::support::app::redis_settings(group, &prefix, &AppOptions::default());
    redis.target = RedisTarget::Url(format!("redis://127.0.0.1:{master}"));
    redis.replica_acks = ReplicaAcks::Count(0);
    let settings = ServeSettings {
        redis,
        listen: "127.0.0.1:0".parse().expect("addr"),
        jwt: flashsale::config::JwtSettings::hs256(Secret::new(crate::support::app::JWT_SECRET)),
        cors_origins: Vec::new(),
        payment_window: std::time::Duration::ZERO,
        payment_token: None,
        admin_token: Some(Secret::new(crate::support::app::ADMIN_TOKEN)),
        rate_limit_per_shopper: 0,
        rate_limit_per_ip: 0,
        max_in_flight: 64,
        max_connections: 10_000,
        max_connections_per_ip: 256,
        trusted_proxies: Default::default(),
        static_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/static").to_owned(),
        catalog_cache: std::time::Duration::from_millis(100),
        ended_listed: std::time::Duration::from_secs(3600),
        dev_login: false,
        cookie_secure: true,
        log_format: Default::default(),
        access_log: false,
    };
    let app = flashsale::web::Application::build(settings)
        .await
        .expect("build");
    let base = format!("http://{}", app.addr());
    let task = tokio::spawn(app.run_until(std::future::pending()));
    let http = reqwest::Client::new();
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let r = http
        .post(format!("{base}/admin/sales"))
        .bearer_auth(crate::support::app::ADMIN_TOKEN)
        .json(&json!({"sku": "url-sale", "name": "n", "price_cents": 1, "stock": 2, "per_user_limit": 1,
            "starts_at": (now - time::Duration::seconds(5)).format(fmt).expect("fmt"),
            "ends_at": (now + time::Duration::hours(1)).format(fmt).expect("fmt")}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status().as_u16(), 201);
    let token = flashsale::web::auth::mint(&Secret::new(crate::support::app::JWT_SECRET), "u1", 60)
        .expect("mint");
    let r = http
        .post(format!("{base}/api/sales/url-sale/purchase"))
        .bearer_auth(&token)
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("buy");
    assert_eq!(r.status().as_u16(), 202);
    task.abort();
}
