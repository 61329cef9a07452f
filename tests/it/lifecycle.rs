//! Pause, resume and end of a sale, changes before the opening (PATCH),
//! the operators' view of sales, and the `flashsale sale` commands, on
//! two app instances sharing one key prefix on the shared Sentinel group: a
//! change made through one instance holds on the other within a second,
//! including where that instance answers a sold-out sale locally.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::app::{ADMIN_TOKEN, AppOptions, TestApp, shared_group, unique};

/// Two instances on one prefix, with the shipped catalog cache.
async fn two_apps() -> (TestApp, TestApp) {
    let prefix = unique("lc");
    let opts = AppOptions {
        catalog_cache: Duration::from_millis(200),
        ..AppOptions::default()
    };
    let a = TestApp::spawn_with(shared_group(), &prefix, opts.clone()).await;
    let b = TestApp::spawn_with(shared_group(), &prefix, opts).await;
    (a, b)
}

async fn admin_get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("admin get");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Purchases by fresh shoppers on `app` until one answers `status` (and
/// `code`, when given); panics after `within`. Returns how long it took.
async fn until_answer(
    app: &TestApp,
    sku: &str,
    status: u16,
    code: Option<&str>,
    within: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let (s, body) = app.purchase(&unique("u"), sku, 1, None).await;
        if s == status && code.is_none_or(|c| body["error"] == c) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "no {status} {code:?} within {within:?}; last {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_consistent(audit: &Value) {
    assert_eq!(audit["consistent"], true, "{audit}");
    assert_eq!(
        audit["stock_left"].as_i64().unwrap() + audit["sold"].as_i64().unwrap(),
        audit["stock_total"].as_i64().unwrap(),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_end_hold_on_every_instance() {
    let (a, b) = two_apps().await;
    let sku = unique("lcs");
    a.create_sale(&sku, 100, 1, -5, 3600).await;

    let (s, first) = b.purchase("keeper", &sku, 1, Some("k1")).await;
    assert_eq!(s, 202, "{first}");
    let order_id = first["order_id"].as_str().expect("order id").to_owned();

    let (s, sale) = a
        .admin_post(&format!("/admin/sales/{sku}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{sale}");
    assert_eq!(sale["state"], "paused");
    assert_eq!(sale["paused"], true);
    assert_eq!(sale["sku"], sku.as_str());

    // The other instance refuses at once (the Function decides), and keeps
    // refusing.
    let took = until_answer(&b, &sku, 423, Some("paused"), Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1));
    let (s, body) = b.purchase("someone", &sku, 1, None).await;
    assert_eq!((s, &body["error"]), (423, &json!("paused")), "{body}");
    // A retry of a purchase that was made still gets its 409.
    let (s, body) = b.purchase("keeper", &sku, 1, Some("k1")).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["order_id"], order_id.as_str());

    // Pausing again is answered like the first pause; both see the state.
    let (s, _) = b
        .admin_post(&format!("/admin/sales/{sku}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);
    for app in [&a, &b] {
        let (s, one) = admin_get(app, &format!("/admin/sales/{sku}"), ADMIN_TOKEN).await;
        assert_eq!((s, &one["state"]), (200, &json!("paused")), "{one}");
    }

    let (s, sale) = b
        .admin_post(&format!("/admin/sales/{sku}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{sale}");
    assert_eq!(sale["state"], "open");
    until_answer(&a, &sku, 202, None, Duration::from_secs(1)).await;
    let (s, body) = a.purchase("after-resume", &sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    // Resuming a sale that is not paused makes no sense.
    let (s, body) = a
        .admin_post(&format!("/admin/sales/{sku}/resume"), json!({}))
        .await;
    assert_eq!((s, &body["error"]), (409, &json!("not_paused")), "{body}");

    let (s, sale) = a
        .admin_post(&format!("/admin/sales/{sku}/end"), json!({}))
        .await;
    assert_eq!(s, 200, "{sale}");
    assert_eq!(sale["state"], "ended");
    for app in [&a, &b] {
        until_answer(app, &sku, 410, Some("ended"), Duration::from_secs(1)).await;
    }
    for path in ["end", "pause", "resume"] {
        let (s, body) = b
            .admin_post(&format!("/admin/sales/{sku}/{path}"), json!({}))
            .await;
        assert_eq!(
            (s, &body["error"]),
            (409, &json!("sale_ended")),
            "{path}: {body}"
        );
    }

    let audit = a.audit(&sku).await;
    assert_consistent(&audit);
    assert_eq!(audit["orders"], 3, "{audit}");
    assert_eq!(audit["sold"], 3, "{audit}");

    // Unknown sales and missing tokens, as on the other admin routes.
    let (s, _) = a
        .admin_post("/admin/sales/no-such-sale/pause", json!({}))
        .await;
    assert_eq!(s, 404);
    let r = a
        .http
        .post(a.url(&format!("/admin/sales/{sku}/pause")))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let (s, _) = admin_get(&a, &format!("/admin/sales/{sku}"), "wrong").await;
    assert_eq!(s, 401);
    let (s, _) = admin_get(&a, "/admin/sales/no-such-sale", ADMIN_TOKEN).await;
    assert_eq!(s, 404);

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sold_out_sale_answers_paused_everywhere() {
    let (a, b) = two_apps().await;
    let sku = unique("lcso");
    a.create_sale(&sku, 1, 1, -5, 3600).await;
    let (s, body) = b.purchase("only-buyer", &sku, 1, None).await;
    assert_eq!(s, 202, "{body}");
    // B learns it is sold out and then answers locally.
    until_answer(&b, &sku, 410, Some("sold_out"), Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_answer(&b, &sku, 410, Some("sold_out"), Duration::from_secs(1)).await;

    let (s, sale) = a
        .admin_post(&format!("/admin/sales/{sku}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{sale}");
    assert_eq!(sale["state"], "paused");
    let took = until_answer(&b, &sku, 423, Some("paused"), Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // And stays so: never the local 410 again while paused.
    for _ in 0..20 {
        let (s, body) = b.purchase(&unique("u"), &sku, 1, None).await;
        assert_eq!((s, &body["error"]), (423, &json!("paused")), "{body}");
    }
    // The buyer's retry is still their 409.
    let (s, body) = b.purchase("only-buyer", &sku, 1, None).await;
    assert_eq!(s, 409, "{body}");

    // Resumed: sold out again (it is), locally or not.
    let (s, _) = a
        .admin_post(&format!("/admin/sales/{sku}/resume"), json!({}))
        .await;
    assert_eq!(s, 200);
    until_answer(&b, &sku, 410, Some("sold_out"), Duration::from_secs(1)).await;
    let (s, one) = admin_get(&b, &format!("/admin/sales/{sku}"), ADMIN_TOKEN).await;
    assert_eq!((s, &one["state"]), (200, &json!("sold_out")), "{one}");

    // Ended: 410 `ended` on both, also where B answered sold out locally.
    let (s, _) = b
        .admin_post(&format!("/admin/sales/{sku}/end"), json!({}))
        .await;
    assert_eq!(s, 200);
    for app in [&a, &b] {
        until_answer(app, &sku, 410, Some("ended"), Duration::from_secs(1)).await;
    }
    assert_consistent(&a.audit(&sku).await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_list_shows_every_state() {
    let (a, b) = two_apps().await;
    let open = unique("lco");
    let later = unique("lcl");
    let paused = unique("lcp");
    let gone = unique("lcg");
    a.create_sale(&open, 5, 1, -5, 3600).await;
    a.create_sale(&later, 5, 1, 3600, 3600).await;
    a.create_sale(&paused, 5, 1, -5, 3600).await;
    a.create_sale(&gone, 1, 1, -5, 3600).await;
    let (s, _) = a.purchase("x", &gone, 1, None).await;
    assert_eq!(s, 202);
    let (s, _) = a
        .admin_post(&format!("/admin/sales/{paused}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);

    let (s, list) = admin_get(&b, "/admin/sales", ADMIN_TOKEN).await;
    assert_eq!(s, 200, "{list}");
    let state_of = |sku: &str| {
        list.as_array()
            .expect("array")
            .iter()
            .find(|s| s["sku"] == sku)
            .map(|s| s["state"].clone())
    };
    assert_eq!(state_of(&open), Some(json!("open")));
    assert_eq!(state_of(&later), Some(json!("scheduled")));
    assert_eq!(state_of(&paused), Some(json!("paused")));
    assert_eq!(state_of(&gone), Some(json!("sold_out")));
    let (s, _) = b
        .admin_post(&format!("/admin/sales/{open}/end"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (_, list) = admin_get(&a, "/admin/sales", ADMIN_TOKEN).await;
    let ended = list
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["sku"] == open.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["sold"], 0);
    let (s, _) = admin_get(&a, "/admin/sales", "wrong").await;
    assert_eq!(s, 401);
    a.stop().await;
    b.stop().await;
}

async fn admin_patch(app: &TestApp, sku: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .patch(app.url(&format!("/admin/sales/{sku}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("patch");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn at(from_now_s: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(from_now_s))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_changes_only_before_it_opens() {
    let (a, b) = two_apps().await;
    let sku = unique("lcu");
    a.create_sale(&sku, 5, 1, 3600, 3600).await;

    let (s, sale) = admin_patch(
        &a,
        &sku,
        json!({"name": "Renamed", "description": "new", "price_cents": 42, "stock": 2,
               "per_user_limit": 2, "ends_at": at(7200 + 60)}),
    )
    .await;
    assert_eq!(s, 200, "{sale}");
    assert_eq!(sale["name"], "Renamed");
    assert_eq!(sale["price_cents"], 42);
    assert_eq!(
        (&sale["stock_total"], &sale["stock_left"]),
        (&json!(2), &json!(2))
    );
    assert_eq!(sale["per_user_limit"], 2);
    assert_eq!(sale["state"], "scheduled");
    let (_, seen) = admin_get(&b, &format!("/admin/sales/{sku}"), ADMIN_TOKEN).await;
    assert_eq!(seen["name"], "Renamed");
    assert_consistent(&a.audit(&sku).await);

    // An empty window, given whole or against the stored start: 422.
    let (s, body) = admin_patch(&a, &sku, json!({"starts_at": at(100), "ends_at": at(50)})).await;
    assert_eq!((s, &body["error"]), (422, &json!("invalid_sale")), "{body}");
    let (s, body) = admin_patch(&a, &sku, json!({"ends_at": at(60)})).await;
    assert_eq!((s, &body["error"]), (422, &json!("invalid_sale")), "{body}");
    let (s, _) = admin_patch(&a, &sku, json!({"stock": 0})).await;
    assert_eq!(s, 422);
    let (s, _) = admin_patch(&a, "no-such-sale", json!({"name": "x"})).await;
    assert_eq!(s, 404);

    // Moved to open now: the new window holds on the other instance.
    let (s, sale) = admin_patch(&b, &sku, json!({"starts_at": at(-1)})).await;
    assert_eq!(s, 200, "{sale}");
    assert_eq!(sale["state"], "open");
    let (s, body) = a.purchase("buyer", &sku, 2, None).await;
    assert_eq!(s, 202, "{body}");
    // Open: too late to change anything.
    for change in [
        json!({"name": "late"}),
        json!({"stock": 9}),
        json!({"ends_at": at(99999)}),
    ] {
        let (s, body) = admin_patch(&a, &sku, change).await;
        assert_eq!((s, &body["error"]), (409, &json!("sale_open")), "{body}");
    }
    let r = a
        .http
        .patch(a.url(&format!("/admin/sales/{sku}")))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 401);
    let audit = a.audit(&sku).await;
    assert_consistent(&audit);
    assert_eq!(audit["sold"], 2, "{audit}");
    a.stop().await;
    b.stop().await;
}

/// `flashsale sale ARGS` on `prefix` of the shared group: exit code, the
/// JSON lines it printed, and its stderr.
fn sale_cmd(prefix: &str, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let group = shared_group();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("sale")
        .args(args)
        .env("FLASHSALE_REDIS_SENTINELS", group.sentinels_env())
        .env("FLASHSALE_REDIS_PASSWORD", group.password())
        .env("FLASHSALE_REDIS_MASTER_NAME", group.master_name())
        .env("FLASHSALE_KEY_PREFIX", prefix)
        .env_remove("FLASHSALE_LEDGER_URL")
        .env_remove("FLASHSALE_REDIS_URL")
        .env_remove("FLASHSALE_REDIS_CLUSTER")
        .output()
        .expect("flashsale sale");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sale_commands_act_on_every_instance() {
    let (a, b) = two_apps().await;
    let prefix = a.prefix.clone();
    let sku = unique("lcc");
    let later = unique("lccl");
    a.create_sale(&sku, 10, 1, -5, 3600).await;
    a.create_sale(&later, 10, 1, 3600, 3600).await;

    let (code, lines, err) = sale_cmd(&prefix, &["list"]);
    assert_eq!(code, Some(0), "{err}");
    let states: Vec<(Value, Value)> = lines
        .iter()
        .map(|l| (l["sku"].clone(), l["state"].clone()))
        .collect();
    assert!(states.contains(&(json!(sku), json!("open"))), "{states:?}");
    assert!(
        states.contains(&(json!(later), json!("scheduled"))),
        "{states:?}"
    );

    let (code, lines, err) = sale_cmd(
        &prefix,
        &["update", "--sku", &later, "--name", "Later", "--stock", "3"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        (&lines[0]["name"], &lines[0]["stock_total"]),
        (&json!("Later"), &json!(3))
    );
    let (code, _, err) = sale_cmd(&prefix, &["update", "--sku", &sku, "--name", "x"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("sale_open"), "{err}");
    let (code, _, err) = sale_cmd(
        &prefix,
        &[
            "update",
            "--sku",
            &later,
            "--ends-at",
            "2000-01-01T00:00:00Z",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("invalid ends_at"), "{err}");

    let (code, lines, err) = sale_cmd(&prefix, &["pause", "--sku", &sku]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines[0]["state"], "paused");
    for app in [&a, &b] {
        until_answer(app, &sku, 423, Some("paused"), Duration::from_secs(1)).await;
    }
    let (code, lines, _) = sale_cmd(&prefix, &["show", "--sku", &sku]);
    assert_eq!((code, &lines[0]["state"]), (Some(0), &json!("paused")));

    let (code, lines, err) = sale_cmd(&prefix, &["resume", "--sku", &sku]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines[0]["state"], "open");
    until_answer(&b, &sku, 202, None, Duration::from_secs(1)).await;
    let (code, _, err) = sale_cmd(&prefix, &["resume", "--sku", &sku]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not_paused"), "{err}");

    let (code, lines, err) = sale_cmd(&prefix, &["end", "--sku", &sku]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines[0]["state"], "ended");
    until_answer(&a, &sku, 410, Some("ended"), Duration::from_secs(1)).await;
    let (code, _, err) = sale_cmd(&prefix, &["end", "--sku", &sku]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("sale_ended"), "{err}");

    let (code, _, err) = sale_cmd(&prefix, &["show", "--sku", "no-such-sale"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown sku"), "{err}");
    let (code, _, _) = sale_cmd(&prefix, &["pause"]);
    assert_eq!(code, Some(2), "--sku is required");

    // No Redis configured at all: a configuration error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["sale", "list"])
        .env_remove("FLASHSALE_REDIS_SENTINELS")
        .env_remove("FLASHSALE_REDIS_URL")
        .env_remove("FLASHSALE_REDIS_CLUSTER")
        .output()
        .expect("flashsale sale list");
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_consistent(&a.audit(&sku).await);
    a.stop().await;
    b.stop().await;
}

/// Every key of one sale on the current master.
async fn sale_keys(prefix: &str, sku: &str) -> Vec<String> {
    let group = shared_group();
    let mut c = group.client(group.master_port().await).await;
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:{{{sku}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("scan");
        keys.extend(found);
        cursor = next;
        if cursor == 0 {
            return keys;
        }
    }
}

/// An ended sale leaves the public listing after FLASHSALE_ENDED_LISTED_S
/// (its own page stays), and `flashsale sale purge` removes every key of it
/// once its orders are confirmed — refused before, and without `--yes`; a
/// running worker lets go of the purged stream instead of creating it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sales_leave_the_listing_and_are_purged() {
    let group = shared_group();
    let prefix = unique("lcp");
    let mut settings = crate::support::app::serve_settings(group, &prefix, &AppOptions::default());
    settings.ended_listed = Duration::from_secs(2);
    let app = TestApp::spawn_settings(&prefix, settings).await;
    let sku = unique("gone");
    let keep = unique("keep");
    app.create_sale(&sku, 10, 1, -5, 7).await;
    app.create_sale(&keep, 10, 1, -5, 3600).await;
    for user in ["p1", "p2"] {
        let (s, body) = app.purchase(user, &sku, 1, None).await;
        assert_eq!(s, 202, "{body}");
    }
    let listed = |list: &Value, sku: &str| {
        list.as_array()
            .expect("list")
            .iter()
            .find(|p| p["sku"] == sku)
            .map(|p| p["state"].clone())
    };

    // Ended: listed as ended for the grace period, then left out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, list) = app.get("/api/products", None).await;
    assert_eq!(listed(&list, &sku), Some(json!("ended")), "{list}");
    // Orders not confirmed yet (no worker): purge is refused.
    let (code, _, err) = sale_cmd(
        &prefix,
        &["purge", "--sku", &sku, "--min-ended-s", "0", "--yes"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("orders_pending"), "{err}");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = app.get("/api/products", None).await;
        if listed(&list, &sku).is_none() {
            assert!(listed(&list, &keep).is_some(), "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let index = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .expect("index")
        .text()
        .await
        .expect("html");
    assert!(!index.contains(&format!("/p/{sku}\"")), "{index}");
    assert!(index.contains(&format!("/p/{keep}\"")));
    let (s, p) = app.get(&format!("/api/products/{sku}"), None).await;
    assert_eq!(
        (s, &p["state"]),
        (200, &json!("ended")),
        "its own page stays"
    );

    let mut worker = crate::support::app::worker_command(group, &prefix)
        .spawn()
        .expect("worker");
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.audit(&sku).await["pending"] != 0 {
        assert!(Instant::now() < deadline, "orders not confirmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (code, _, err) = sale_cmd(&prefix, &["purge", "--sku", &sku, "--min-ended-s", "0"]);
    assert_eq!(code, Some(2), "without --yes: {err}");
    let (code, _, err) = sale_cmd(&prefix, &["purge", "--sku", &sku, "--yes"]);
    assert_eq!(
        code,
        Some(1),
        "the default waits an hour after the end: {err}"
    );
    assert!(err.contains("not_ended"), "{err}");
    assert!(!sale_keys(&prefix, &sku).await.is_empty());

    let (code, lines, err) = sale_cmd(
        &prefix,
        &["purge", "--sku", &sku, "--min-ended-s", "0", "--yes"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines[0]["orders"], 2, "{lines:?}");
    assert!(lines[0]["keys"].as_u64().unwrap_or(0) >= 5, "{lines:?}");
    // The worker (discovering every 200 ms here) does not bring the stream back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sale_keys(&prefix, &sku).await, Vec::<String>::new());
    assert!(
        !sale_keys(&prefix, &keep).await.is_empty(),
        "other sales untouched"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = app.get(&format!("/api/products/{sku}"), None).await;
    assert_eq!(s, 404);
    let (code, _, err) = sale_cmd(
        &prefix,
        &["purge", "--sku", &sku, "--min-ended-s", "0", "--yes"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown sku"), "{err}");

    // The other sale still sells and its orders are confirmed.
    let (s, body) = app.purchase("p3", &keep, 1, None).await;
    assert_eq!(s, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.audit(&keep).await["pending"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the other sale's order not confirmed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = worker.kill().await;
    app.stop().await;
}
