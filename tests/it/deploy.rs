//! The deployment side.
//!
//! `deployment_checks_pass` runs `deploy/check.sh` (nginx -t and a live
//! nginx, systemd-analyze verify, ansible syntax-check, lint and runs into a
//! temp prefix, the rendered Redis/Sentinel configs started as a real group
//! that runs the shipped settings of `deploy/redis/`, docker-compose config
//! and the compose start scripts run outside a container) as one test, so
//! the suite has one runner.
//!
//! `nginx_admin_allow_list_in_front_of_the_app` runs the shipped nginx site
//! (rendered by `deploy/nginx/render.sh`, which `check.sh` holds identical to
//! the ansible role's rendering) in front of a real `flashsale serve` of the
//! test kit, with an /admin allow-list of 127.0.0.1 only, and talks to it
//! from 127.0.0.1 and from 127.0.0.2. `nginx_passes_payment_callbacks_and_the_apps_csp`
//! runs the same site, shipped limits, in front of an app with the payment
//! step. nginx is started in its own process group, stopped by that group's
//! id on drop (also when the test panics) and by a watchdog if this test
//! process dies first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use flashsale::config::Secret;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::support::app::{ADMIN_TOKEN, AppOptions, TestApp, serve_settings, shared_group, unique};
use crate::support::nginx::Nginx;

#[test]
fn deployment_checks_pass() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/check.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run deploy/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        out.status.success() && last.ends_with(" 0 failed"),
        "deploy/check.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

// ------------------------------------------------------------------ nginx --

/// The address the allow-list admits, and one it does not (both loopback).
const ALLOWED: &str = "127.0.0.1";
const DENIED: &str = "127.0.0.2";
/// The app's (and so nginx's) one CORS origin.
const SHOP: &str = "https://shop.example";

/// An HTTP client whose connections come from `local`.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(local.parse::<IpAddr>().expect("ip")))
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// What came back: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    async fn of(req: reqwest::RequestBuilder) -> Answer {
        let r = req.send().await.expect("request through nginx");
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = r.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A problem JSON answer with `status` and error code `code`: the API's
    /// error shape (docs/API.md).
    fn assert_problem(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/problem+json")),
            "{what}: {:?}",
            self.headers
        );
        let v = self.json();
        assert_eq!(v["error"], code, "{what}: {v}");
        assert_eq!(v["status"], status, "{what}: {v}");
        assert_eq!(
            v["type"],
            format!("urn:flashsale:error:{code}"),
            "{what}: {v}"
        );
        assert!(
            v["title"].as_str().is_some_and(|t| !t.is_empty())
                && v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }

    /// No CORS header at all.
    fn assert_no_cors(&self, what: &str) {
        let cors: Vec<_> = self
            .headers
            .keys()
            .filter(|k| k.starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{what}: {cors:?}");
    }

    /// The CORS headers the app puts on its own /api answers, for `origin`.
    fn assert_cors_for(&self, origin: &str, what: &str) {
        assert_eq!(
            self.header("access-control-allow-origin"),
            Some(origin),
            "{what}: {:?}",
            self.headers
        );
        assert_eq!(
            self.header("access-control-allow-credentials"),
            Some("true"),
            "{what}"
        );
        assert!(
            self.header("access-control-expose-headers")
                .is_some_and(|h| h.to_ascii_lowercase().contains("retry-after")),
            "{what}: {:?}",
            self.headers
        );
    }
}

/// The shipped nginx site with an /admin allow-list of 127.0.0.1 in front
/// of a real `flashsale serve` (CORS origin [`SHOP`]): from 127.0.0.1 the
/// admin API answers as the app does (401 without the token, 200 and 201
/// with it); from 127.0.0.2 every /admin path is nginx's 403 problem JSON
/// and never reaches the app, while /api serves it as usual. The errors
/// nginx makes itself on /api (429, 503) carry CORS headers for the app's
/// origin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_admin_allow_list_in_front_of_the_app() {
    let prefix = unique("ngadm");
    let mut settings = serve_settings(shared_group(), &prefix, &AppOptions::default());
    settings.cors_origins = vec![SHOP.to_owned()];
    let app = TestApp::spawn_settings(&prefix, settings).await;
    let upstream = app.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&[
        ("FLASHSALE_UPSTREAMS", &upstream),
        ("FLASHSALE_ADMIN_ALLOW", "127.0.0.1/32"),
        ("FLASHSALE_CORS_ORIGINS", SHOP),
        ("FLASHSALE_PURCHASE_RATE", "1r/s"),
        ("FLASHSALE_PURCHASE_BURST", "1"),
    ]);
    let site = nginx.site();
    assert!(
        site.contains("        allow 127.0.0.1/32;\n        deny all;\n"),
        "the rendered allow-list:\n{site}"
    );
    let allowed = client_from(ALLOWED);
    let denied = client_from(DENIED);

    // From the allowed address: the app's own answers.
    let a = Answer::of(allowed.get(nginx.url("/admin/sales"))).await;
    a.assert_problem(401, "unauthorized", "allowed, no token");
    let sku = unique("ngadm");
    let now = time::OffsetDateTime::now_utc();
    let at = |s: i64| {
        (now + time::Duration::seconds(s))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time")
    };
    let sale = json!({
        "sku": sku, "name": "Admin through nginx", "description": "Created from an allowed address",
        "price_cents": 1999, "stock": 50, "per_user_limit": 1,
        "starts_at": at(-5), "ends_at": at(3600),
    });
    let a = Answer::of(
        allowed
            .post(nginx.url("/admin/sales"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&sale),
    )
    .await;
    assert_eq!(a.status, 201, "allowed, create a sale: {}", a.body);
    let a = Answer::of(
        allowed
            .get(nginx.url("/admin/sales"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(a.status, 200, "allowed, list: {}", a.body);
    assert!(a.body.contains(&sku), "the sale is listed: {}", a.body);

    // From the other address: nginx's 403 whatever the path looks like,
    // token or not; nothing reaches the app.
    let other = unique("ngadm");
    for path in [
        "/admin/sales".to_owned(),
        "/admin".to_owned(),
        "/admin/live".to_owned(),
        "/admin/live/snapshot".to_owned(),
        format!("/admin/sales/{sku}"),
        format!("/admin/sales/{sku}/audit"),
        "/%61dmin/sales".to_owned(),
        "//admin/sales".to_owned(),
    ] {
        let a = Answer::of(
            denied
                .get(nginx.url(&path))
                .bearer_auth(ADMIN_TOKEN)
                .header("origin", SHOP),
        )
        .await;
        a.assert_problem(403, "forbidden", &format!("denied GET {path}"));
        // /admin is not /api: no CORS headers, from nginx or the app.
        a.assert_no_cors(&format!("denied GET {path}"));
    }
    let mut attempt = sale.clone();
    attempt["sku"] = json!(other);
    let a = Answer::of(
        denied
            .post(nginx.url("/admin/sales"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&attempt),
    )
    .await;
    a.assert_problem(403, "forbidden", "denied, create a sale");
    let (s, _) = app.get(&format!("/api/products/{other}"), None).await;
    assert_eq!(s, 404, "the refused sale was not created");

    // /api from the other address: the app, as usual.
    let a = Answer::of(denied.get(nginx.url(&format!("/api/products/{sku}")))).await;
    assert_eq!(a.status, 200, "denied address, /api: {}", a.body);
    assert_eq!(a.json()["sku"], sku.as_str());
    let a = Answer::of(
        denied
            .post(nginx.url(&format!("/api/sales/{sku}/purchase")))
            .bearer_auth(app.token("nina"))
            .header("origin", SHOP)
            .header("idempotency-key", "k-nina")
            .json(&json!({"qty": 1})),
    )
    .await;
    assert_eq!(
        a.status, 202,
        "a purchase from the denied address: {}",
        a.body
    );
    a.assert_cors_for(SHOP, "the app's own /api answer");

    // nginx's own 429 on /api: readable by the app's origin, by no other.
    let mut limited = None;
    for i in 0..10 {
        let a = Answer::of(
            denied
                .post(nginx.url(&format!("/api/sales/{sku}/purchase")))
                .bearer_auth(app.token("nina"))
                .header("origin", SHOP)
                .header("idempotency-key", format!("k-nina-{i}"))
                .json(&json!({"qty": 1})),
        )
        .await;
        if a.status == 429 {
            limited = Some(a);
            break;
        }
    }
    let a = limited.expect("nginx limits a burst of purchases");
    a.assert_problem(429, "rate_limited", "nginx's 429");
    assert_eq!(a.header("retry-after"), Some("1"));
    a.assert_cors_for(SHOP, "nginx's 429, listed origin");
    let a = Answer::of(
        denied
            .post(nginx.url(&format!("/api/sales/{sku}/purchase")))
            .bearer_auth(app.token("nina"))
            .header("origin", "https://evil.example")
            .json(&json!({"qty": 1})),
    )
    .await;
    a.assert_problem(429, "rate_limited", "nginx's 429, other origin");
    a.assert_no_cors("nginx's 429, other origin");

    // nginx's own 503 with the app gone: CORS on /api only.
    app.stop().await;
    let a = Answer::of(
        denied
            .get(nginx.url(&format!("/api/products/{sku}")))
            .header("origin", SHOP),
    )
    .await;
    a.assert_problem(503, "unavailable", "nginx's 503 on /api");
    a.assert_cors_for(SHOP, "nginx's 503 on /api");
    let a = Answer::of(
        allowed
            .get(nginx.url("/admin/sales"))
            .bearer_auth(ADMIN_TOKEN)
            .header("origin", SHOP),
    )
    .await;
    a.assert_problem(503, "unavailable", "nginx's 503 on /admin");
    a.assert_no_cors("nginx's 503 on /admin");
    let a = Answer::of(
        denied
            .get(nginx.url("/admin/sales"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    a.assert_problem(403, "forbidden", "denied, the app gone");

    let log = nginx.error_log();
    assert!(
        !log.contains("[emerg]") && !log.contains("[alert]") && !log.contains("[crit]"),
        "{log}"
    );
}

// ------------------------------------------------------- payment callbacks --

const PAYMENT_TOKEN: &str = "deploy-payment-provider-secret";

/// The shipped nginx site (render.sh's defaults but for a tight purchase
/// limit) in front of a real `flashsale serve` with the payment step:
/// - the pages nginx serves from disk carry the app's own
///   Content-Security-Policy, word for word (pictures from `https:`);
/// - from one address whose purchases nginx is refusing (429), a burst of
///   payment callbacks, all at once (one per order, each twice), is passed
///   on and answered by the app: every order paid, the repeats 200 too;
/// - a callback without the provider's secret is the app's 401, not nginx's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_payment_callbacks_and_the_apps_csp() {
    let prefix = unique("ngpay");
    let mut settings = serve_settings(shared_group(), &prefix, &AppOptions::default());
    settings.payment_window = Duration::from_secs(600);
    settings.payment_token = Some(Secret::new(PAYMENT_TOKEN));
    let app = TestApp::spawn_settings(&prefix, settings).await;
    let upstream = app.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&[
        ("FLASHSALE_UPSTREAMS", &upstream),
        ("FLASHSALE_PURCHASE_RATE", "1r/s"),
        ("FLASHSALE_PURCHASE_BURST", "1"),
    ]);
    let site = nginx.site();
    assert!(
        site.contains(
            "    location ~ ^/api/orders/[^/]+/payment$ {\n        \
             limit_req zone=flashsale_payment burst=2000 nodelay;\n"
        ),
        "the payment location, shipped burst:\n{site}"
    );
    let shopper_and_provider = client_from(DENIED);

    // The page from disk: the app's CSP.
    let from_app = Answer::of(app.http.get(app.url("/"))).await;
    assert_eq!(from_app.status, 200, "{}", from_app.body);
    let csp = from_app
        .header("content-security-policy")
        .expect("the app's page has a CSP")
        .to_owned();
    assert!(csp.contains("img-src 'self' data: https:;"), "{csp}");
    let pages = nginx.dir.join("pages");
    std::fs::create_dir_all(&pages).expect("pages dir");
    std::fs::write(
        pages.join("index.html"),
        "<html><body>index-from-disk</body></html>\n",
    )
    .expect("index.html");
    let from_disk = Answer::of(shopper_and_provider.get(nginx.url("/"))).await;
    assert_eq!(from_disk.status, 200, "{}", from_disk.body);
    assert!(
        from_disk.body.contains("index-from-disk"),
        "{}",
        from_disk.body
    );
    assert_eq!(
        from_disk.header("content-security-policy"),
        Some(csp.as_str()),
        "nginx's CSP of a page from disk is the app's"
    );

    // Orders to pay (bought at the app directly).
    const ORDERS: usize = 20;
    let sku = unique("ngpay");
    app.create_sale(&sku, ORDERS as i64 + 5, 1, -5, 3600).await;
    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let (s, body) = app.purchase(&format!("payer{i}"), &sku, 1, None).await;
        assert_eq!(s, 202, "{body}");
        orders.push(body["order_id"].as_str().expect("order id").to_owned());
    }

    // This address's purchases are refused by nginx...
    let mut limited = false;
    for i in 0..10 {
        let a = Answer::of(
            shopper_and_provider
                .post(nginx.url(&format!("/api/sales/{sku}/purchase")))
                .bearer_auth(app.token(&format!("late{i}")))
                .json(&json!({"qty": 1})),
        )
        .await;
        if a.status == 429 {
            a.assert_problem(429, "rate_limited", "nginx's 429 on purchases");
            limited = true;
            break;
        }
    }
    assert!(limited, "nginx limits this address's purchases");

    // ...and its burst of callbacks, all at once, reaches the app.
    let calls = orders.iter().chain(orders.iter()).map(|order| {
        Answer::of(
            shopper_and_provider
                .post(nginx.url(&format!("/api/orders/{order}/payment")))
                .bearer_auth(PAYMENT_TOKEN)
                .json(&json!({"payment_id": format!("pay-{order}"), "amount_cents": 1999})),
        )
    });
    let answers = join_all(calls).await;
    for (a, order) in answers.iter().zip(orders.iter().chain(orders.iter())) {
        assert_eq!(a.status, 200, "callback for {order}: {}", a.body);
        let v = a.json();
        assert_eq!(
            (v["order_id"].as_str(), v["status"].as_str()),
            (Some(order.as_str()), Some("paid")),
            "{v}"
        );
    }
    let audit = app.audit(&sku).await;
    assert_eq!(audit["paid"], ORDERS, "{audit}");

    // Without the provider's secret: the app's answer, through nginx.
    let a = Answer::of(
        shopper_and_provider
            .post(nginx.url(&format!("/api/orders/{}/payment", orders[0])))
            .json(&json!({"payment_id": "pay-x", "amount_cents": 1999})),
    )
    .await;
    a.assert_problem(401, "unauthorized", "a callback without the secret");
    assert!(
        a.header("www-authenticate")
            .is_some_and(|w| w.contains("flashsale-payment")),
        "{:?}",
        a.headers
    );

    app.stop().await;
    let log = nginx.error_log();
    assert!(
        !log.contains("[emerg]") && !log.contains("[alert]") && !log.contains("[crit]"),
        "{log}"
    );
}
