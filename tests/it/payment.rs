//! The payment step, end to end on the shared Sentinel group: the payment
//! provider's callback (its own bearer secret, idempotent by `payment_id`,
//! amount checked), the shopper's cancel, the deadline (a late payment is
//! told `payment_late`), units coming back to the sale (a sold-out sale
//! sells again on every instance, its local sold-out answers withdrawn), the
//! audit's counters, and the settings that go together.

use std::time::{Duration, Instant};

use flashsale::config::Secret;
use serde_json::{Value, json};

use crate::support::app::{
    AppOptions, TestApp, assert_config_error, serve_settings, shared_group, unique,
};

const PAYMENT_TOKEN: &str = "payment-provider-secret-0123456789";

/// An app on `prefix` whose orders must be paid within `window`.
async fn app_with_window(prefix: &str, window: Duration) -> TestApp {
    let mut settings = serve_settings(shared_group(), prefix, &AppOptions::default());
    settings.payment_window = window;
    settings.payment_token = Some(Secret::new(PAYMENT_TOKEN));
    TestApp::spawn_settings(prefix, settings).await
}

async fn pay(app: &TestApp, order_id: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut req = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/payment")))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("payment");
    let s = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let mut v: Value = r.json().await.unwrap_or(Value::Null);
    if let Some(w) = www {
        v["www_authenticate"] = json!(w);
    }
    (s, v)
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

fn assert_consistent(audit: &Value) {
    assert_eq!(audit["consistent"], true, "{audit}");
    let total = audit["stock_total"].as_i64().unwrap_or(-1);
    let left = audit["stock_left"].as_i64().unwrap_or(-1);
    let sold = audit["sold"].as_i64().unwrap_or(-1);
    assert_eq!(left + sold, total, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_callback() {
    let prefix = unique("pay");
    let app = app_with_window(&prefix, Duration::from_secs(600)).await;
    let sku = unique("pays");
    app.create_sale(&sku, 5, 1, -5, 3600).await; // 19.99 a unit
    let order = buy(&app, "payer", &sku).await;
    let (_, o) = app
        .get(&format!("/api/orders/{order}"), Some("payer"))
        .await;
    assert_eq!(o["amount_cents"], 1999, "{o}");
    assert!(o["pay_by"].is_string(), "a pay_by while unpaid: {o}");

    // Not the provider: 401 in the payment realm; nothing changes.
    let (s, body) = pay(
        &app,
        &order,
        json!({"payment_id": "ch_1", "amount_cents": 1999}),
        None,
    )
    .await;
    assert_eq!(s, 401, "{body}");
    assert!(
        body["www_authenticate"]
            .as_str()
            .unwrap_or("")
            .contains("flashsale-payment")
    );
    let (s, _) = pay(
        &app,
        &order,
        json!({"payment_id": "ch_1", "amount_cents": 1999}),
        Some(&app.token("payer")),
    )
    .await;
    assert_eq!(s, 401, "a shopper's token is not the provider's");
    // Wrong amount: 422, nothing changes.
    let (s, body) = pay(
        &app,
        &order,
        json!({"payment_id": "ch_1", "amount_cents": 1000}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (422, Some("amount_mismatch")),
        "{body}"
    );
    // Bad bodies.
    for bad in [
        json!({"payment_id": "ch 1", "amount_cents": 1999}),
        json!({"payment_id": "ch_1"}),
    ] {
        let (s, body) = pay(&app, &order, bad.clone(), Some(PAYMENT_TOKEN)).await;
        assert!(s == 400 || s == 422, "{bad}: {s} {body}");
    }
    let (_, o) = app
        .get(&format!("/api/orders/{order}"), Some("payer"))
        .await;
    assert_eq!(o["status"], "queued", "{o}");

    let (s, paid) = pay(
        &app,
        &order,
        json!({"payment_id": "ch_1", "amount_cents": 1999}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!(s, 200, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert!(
        paid["paid_at"].is_string() && paid["pay_by"].is_null(),
        "{paid}"
    );
    // The same payment again: 200 again; another payment: 409 already_paid.
    let (s, again) = pay(
        &app,
        &order,
        json!({"payment_id": "ch_1", "amount_cents": 1999}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!((s, &again["status"]), (200, &json!("paid")));
    let (s, body) = pay(
        &app,
        &order,
        json!({"payment_id": "ch_2", "amount_cents": 1999}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("already_paid")),
        "{body}"
    );
    // A paid order cannot be cancelled.
    let (s, body) = cancel(&app, "payer", &order).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("not_cancellable")),
        "{body}"
    );
    // Unknown orders.
    let (s, _) = pay(
        &app,
        &format!("{sku}.0123456789abcdef0123456789abcdef"),
        json!({"payment_id": "ch_3", "amount_cents": 1999}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!(s, 404);

    let audit = app.audit(&sku).await;
    assert_eq!(audit["paid"], 1, "{audit}");
    assert_eq!(audit["sold"], 1, "{audit}");
    assert_consistent(&audit);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_a_late_payment_return_units() {
    let prefix = unique("pyc");
    let app = app_with_window(&prefix, Duration::from_secs(2)).await;
    let sku = unique("pycs");
    app.create_sale(&sku, 3, 1, -5, 3600).await;
    let a = buy(&app, "ca", &sku).await;
    let b = buy(&app, "cb", &sku).await;

    // Only the order's own shopper may cancel it.
    let (s, _) = cancel(&app, "cb", &a).await;
    assert_eq!(s, 404);
    let (s, o) = cancel(&app, "ca", &a).await;
    assert_eq!((s, &o["status"]), (200, &json!("cancelled")), "{o}");
    assert!(
        o["cancelled_at"].is_string() && o["pay_by"].is_null(),
        "{o}"
    );
    let (s, o) = cancel(&app, "ca", &a).await;
    assert_eq!((s, &o["status"]), (200, &json!("cancelled")), "again: {o}");
    let (s, body) = pay(
        &app,
        &a,
        json!({"payment_id": "ch_a", "amount_cents": 1999}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("payment_late")),
        "{body}"
    );
    // The shopper may buy again: the unit came back and they hold none.
    let a2 = buy(&app, "ca", &sku).await;
    assert_ne!(a2, a);

    // b's deadline passes unpaid: its payment is late, its unit is back.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (s, body) = pay(
        &app,
        &b,
        json!({"payment_id": "ch_b", "amount_cents": 1999}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("payment_late")),
        "{body}"
    );
    let (_, o) = app.get(&format!("/api/orders/{b}"), Some("cb")).await;
    assert_eq!(o["status"], "expired", "{o}");
    let (s, body) = cancel(&app, "cb", &b).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("not_cancellable")),
        "{body}"
    );

    let audit = app.audit(&sku).await;
    assert_eq!(audit["cancelled"], 1, "{audit}");
    assert_eq!(audit["expired"], 1, "{audit}");
    assert_eq!(audit["returned"], 2, "{audit}");
    assert_eq!(audit["orders"], 3, "{audit}");
    // a2 may still be live or expired by now (its window is 2 s too).
    assert_consistent(&audit);

    // Both shoppers' orders stay listed.
    let (_, mine) = app.get("/api/me/orders", Some("ca")).await;
    let ids: Vec<&str> = mine["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter_map(|o| o["order_id"].as_str())
        .collect();
    assert!(
        ids.contains(&a.as_str()) && ids.contains(&a2.as_str()),
        "{mine}"
    );
    app.stop().await;
}

/// A sold-out sale whose unit comes back sells again, on every instance:
/// both had learned it sold out and answer 410 locally until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_unit_reopens_a_sold_out_sale_everywhere() {
    let prefix = unique("pyr");
    let a = app_with_window(&prefix, Duration::from_secs(600)).await;
    let b = app_with_window(&prefix, Duration::from_secs(600)).await;
    let sku = unique("pyrs");
    a.create_sale(&sku, 1, 1, -5, 3600).await;
    let first = buy(&a, "r1", &sku).await;
    // Both instances learn it sold out (the first 410 of each goes to Redis).
    for app in [&a, &b] {
        for user in ["r2", "r3", "r4"] {
            let (s, body) = app.purchase(user, &sku, 1, None).await;
            assert_eq!(s, 410, "{body}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = cancel(&a, "r1", &first).await;
    assert_eq!(s, 200);
    // On the other instance within a second (its catalog snapshot shows the
    // unit back), exactly one new shopper gets it.
    let start = Instant::now();
    let mut bought = None;
    let mut n = 0;
    while bought.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "b still answers sold out"
        );
        n += 1;
        let (s, body) = b.purchase(&format!("late{n}"), &sku, 1, None).await;
        match s {
            202 => bought = Some(body["order_id"].as_str().expect("id").to_owned()),
            410 => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("{s} {body}"),
        }
    }
    let (s, _) = a.purchase("later", &sku, 1, None).await;
    assert_eq!(s, 410, "the returned unit is sold once");
    let audit = a.audit(&sku).await;
    assert_eq!(audit["sold"], 1, "{audit}");
    assert_eq!(audit["returned"], 1, "{audit}");
    assert_consistent(&audit);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_payment_step_the_callback_is_off() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let sku = unique("nopay");
    app.create_sale(&sku, 2, 1, -5, 3600).await;
    let order = buy(&app, "np", &sku).await;
    let (s, _) = pay(
        &app,
        &order,
        json!({"payment_id": "ch", "amount_cents": 1999}),
        Some(PAYMENT_TOKEN),
    )
    .await;
    assert_eq!(s, 404);
    let (_, o) = app.get(&format!("/api/orders/{order}"), Some("np")).await;
    assert!(o["pay_by"].is_null(), "no deadline without a window: {o}");
    // Orders are final without a payment step.
    let (s, body) = cancel(&app, "np", &order).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("not_cancellable")),
        "{body}"
    );
    let (s, _) = cancel(&app, "other", &order).await;
    assert_eq!(s, 404, "another shopper's order is not found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_settings_go_together() {
    let bin = env!("CARGO_BIN_EXE_flashsale");
    let base = [
        ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1"),
        ("FLASHSALE_JWT_SECRET", "0123456789abcdef0123"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let out = assert_config_error(
        bin,
        &["serve"],
        &with(&[("FLASHSALE_PAYMENT_WINDOW_S", "900")]),
        "FLASHSALE_PAYMENT_TOKEN",
    )
    .await;
    assert!(!out.contains(PAYMENT_TOKEN));
    let out = assert_config_error(
        bin,
        &["serve"],
        &with(&[("FLASHSALE_PAYMENT_TOKEN", PAYMENT_TOKEN)]),
        "FLASHSALE_PAYMENT_WINDOW_S",
    )
    .await;
    assert!(
        !out.contains(PAYMENT_TOKEN),
        "the secret is never shown: {out}"
    );
    assert_config_error(
        bin,
        &["serve"],
        &with(&[
            ("FLASHSALE_PAYMENT_WINDOW_S", "604801"),
            ("FLASHSALE_PAYMENT_TOKEN", PAYMENT_TOKEN),
        ]),
        "FLASHSALE_PAYMENT_WINDOW_S",
    )
    .await;
}

/// The shoppers' per-address limit does not apply to the payment provider's
/// callbacks: a burst from one address is answered, while that address's
/// other API calls are limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_not_under_the_shoppers_address_limit() {
    let prefix = unique("pyl");
    let opts = AppOptions {
        rate_limit_per_ip: 2,
        ..AppOptions::default()
    };
    let mut settings = serve_settings(shared_group(), &prefix, &opts);
    settings.payment_window = Duration::from_secs(600);
    settings.payment_token = Some(Secret::new(PAYMENT_TOKEN));
    let app = TestApp::spawn_settings(&prefix, settings).await;
    let sku = unique("pyls");
    app.create_sale(&sku, 20, 1, -5, 3600).await;
    let mut orders = Vec::new();
    for i in 0..6 {
        // Purchases from this address are limited: retry until one goes.
        let user = format!("lim{i}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, body) = app.purchase(&user, &sku, 1, None).await;
            if s == 202 {
                orders.push(body["order_id"].as_str().expect("id").to_owned());
                break;
            }
            assert_eq!(s, 429, "{body}");
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.get("/api/products", None).await.0);
    }
    assert!(
        statuses.contains(&429),
        "the address is limited on the API: {statuses:?}"
    );
    let paid = futures_util::future::join_all(orders.iter().enumerate().map(|(i, id)| {
        let app = &app;
        async move {
            pay(
                app,
                id,
                json!({"payment_id": format!("burst{i}"), "amount_cents": 1999}),
                Some(PAYMENT_TOKEN),
            )
            .await
            .0
        }
    }))
    .await;
    assert!(paid.iter().all(|s| *s == 200), "{paid:?}");
    app.stop().await;
}
