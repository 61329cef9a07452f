//! Logs of the real binaries: `flashsale serve` and `flashsale-worker` run
//! as processes against the shared group with JSON logs and the access log
//! on, every line they write captured. Request ids (made, kept from a
//! trusted proxy, replaced from anyone else or when malformed) come back in
//! the response and in the access line; refusals and 404s are logged with
//! their id; admin changes are logged with sku, action and outcome; every
//! line parses as JSON; and no secret, token or raw shopper id is in any of
//! it. Behind the shipped nginx the id is nginx's. A bad
//! `FLASHSALE_LOG_FORMAT` is a configuration error.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::support::app::{
    AppOptions, TestApp, assert_config_error, shared_group, unique, worker_command,
};
use crate::support::nginx::Nginx;
use flashsale_testkit::procs::redis_env;

const JWT_SECRET: &str = "logs-JWT-secret-never-logged-81c3";
const ADMIN_TOKEN: &str = "logs-ADMIN-token-never-logged-5e0d";
const PAYMENT_TOKEN: &str = "logs-PAYMENT-token-never-logged-2a7f";
const SHOPPER: &str = "shopper-raw-id-7741";
const PROXY: &str = "127.0.0.2";
const OUTSIDER: &str = "127.0.0.3";

/// Every line a process wrote to stderr, as it came.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn capture(child: &mut Child) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        let stderr = child.stderr.take().expect("stderr piped");
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                sink.0.lock().expect("lines").push(line);
            }
        });
        lines
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lines").clone()
    }

    /// The lines parsed as JSON (each must parse).
    fn json(&self) -> Vec<Value> {
        self.all()
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    }

    /// Waits until a JSON line matches `pred`, for at most 15 s.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            if let Some(v) = self
                .all()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v))
            {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "no line {what} in:\n{}",
                self.all().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The access line of request `id`.
    async fn access(&self, id: &str) -> Value {
        self.wait_for(&format!("access of {id}"), |v| {
            v["target"] == "flashsale::access" && v["fields"]["request_id"] == id
        })
        .await
    }
}

/// An HTTP client whose connections come from `local`.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(local.parse::<IpAddr>().expect("ip")))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The response's `X-Request-Id`.
fn rid(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on {} {}", r.status(), r.url()))
        .to_str()
        .expect("ascii")
        .to_owned()
}

fn assert_uuid(id: &str) {
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id:?} is a UUID");
}

/// RFC 3339 of now + `s` seconds.
fn at(s: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(s))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_access_and_admin_lines_and_no_secret_in_any_line() {
    let group = shared_group();
    let prefix = unique("logs");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    redis_env(&mut cmd, group, &prefix)
        .arg("serve")
        .env("FLASHSALE_LISTEN", "127.0.0.1:0")
        .env("FLASHSALE_JWT_SECRET", JWT_SECRET)
        .env("FLASHSALE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FLASHSALE_PAYMENT_TOKEN", PAYMENT_TOKEN)
        .env("FLASHSALE_PAYMENT_WINDOW_S", "600")
        .env("FLASHSALE_TRUSTED_PROXIES", format!("{PROXY}/32"))
        .env("FLASHSALE_LOG_FORMAT", "json")
        .env("FLASHSALE_ACCESS_LOG", "true")
        .env("RUST_LOG", "info,flashsale=debug")
        .env(
            "FLASHSALE_STATIC_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut serve = cmd.spawn().expect("spawn flashsale serve");
    let serve_out = serve.stdout.take().expect("stdout");
    let serve_lines = Lines::capture(&mut serve);
    let listening = serve_lines
        .wait_for("listening", |v| {
            v["fields"]["message"] == "flashsale serve listening"
        })
        .await;
    let addr = listening["fields"]["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let url = |path: &str| format!("http://{addr}{path}");

    let mut worker = worker_command(group, &prefix)
        .env("FLASHSALE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,flashsale=debug")
        .env("FLASHSALE_PAYMENT_TOKEN", PAYMENT_TOKEN)
        .env("FLASHSALE_JWT_SECRET", JWT_SECRET)
        .env("FLASHSALE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flashsale-worker");
    let worker_lines = Lines::capture(&mut worker);

    let local = client_from("127.0.0.1");
    let proxy = client_from(PROXY);
    let outsider = client_from(OUTSIDER);

    // No id: one is made (a UUID), and the access line carries it.
    let r = local.get(url("/api/products")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let id = rid(&r);
    assert_uuid(&id);
    let line = serve_lines.access(&id).await;
    let f = &line["fields"];
    assert_eq!(f["message"], "access");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "/api/products");
    assert_eq!(f["status"], 200);
    assert_eq!(f["client"], "127.0.0.1", "{line}");
    assert!(
        f["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert!(f.get("shopper").is_none(), "no shopper: {line}");
    assert_eq!(line["span"]["request_id"], id.as_str(), "{line}");
    assert_eq!(line["level"], "INFO");

    // A trusted proxy's id is kept, its forwarded client believed.
    let r = proxy
        .get(url("/api/products"))
        .header("x-request-id", "abc-123")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .expect("get");
    assert_eq!(rid(&r), "abc-123");
    let line = serve_lines.access("abc-123").await;
    assert_eq!(line["fields"]["client"], "203.0.113.5", "{line}");

    // Anyone else's is replaced, and its X-Forwarded-For ignored.
    let r = outsider
        .get(url("/api/products"))
        .header("x-request-id", "chosen-by-outsider")
        .header("x-forwarded-for", "203.0.113.6")
        .send()
        .await
        .expect("get");
    let id = rid(&r);
    assert_uuid(&id);
    assert_eq!(serve_lines.access(&id).await["fields"]["client"], OUTSIDER);

    // Malformed ones are replaced even from the proxy: too long, a space,
    // a tab, bytes beyond ASCII, two of them.
    let long = "a".repeat(129);
    let bad: Vec<Vec<&[u8]>> = vec![
        vec![long.as_bytes()],
        vec![b"abc def"],
        vec![b"abc\tdef"],
        vec![b"abc\xffdef"],
        vec![b"one", b"two"],
    ];
    for values in bad {
        let mut req = proxy.get(url("/api/products"));
        for v in &values {
            req = req.header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        let r = req.send().await.expect("get");
        let id = rid(&r);
        assert_uuid(&id);
        serve_lines.access(&id).await;
    }
    // The longest accepted is kept.
    let longest = "b".repeat(128);
    let r = proxy
        .get(url("/api/products"))
        .header("x-request-id", &longest)
        .send()
        .await
        .expect("get");
    assert_eq!(rid(&r), longest);

    // A 404 outside any route and one from a handler.
    let r = local.get(url("/no/such/page")).send().await.expect("get");
    assert_eq!(r.status(), 404);
    let id = rid(&r);
    let line = serve_lines.access(&id).await;
    assert_eq!(line["fields"]["status"], 404);
    assert_eq!(line["fields"]["route"], "unmatched", "{line}");
    let r = local
        .get(url("/api/products/no-such-sku"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let line = serve_lines.access(&rid(&r)).await;
    assert_eq!(line["fields"]["route"], "/api/products/{sku}", "{line}");

    // Admin: create, pause, end (each logged with sku, action, outcome,
    // client and request id), and a refused change.
    let sku = format!("{prefix}-a");
    let admin = |method: reqwest::Method, path: String| {
        proxy
            .request(method, url(&path))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-forwarded-for", "198.51.100.7")
    };
    let r = admin(reqwest::Method::POST, "/admin/sales".into())
        .json(&json!({
            "sku": sku, "name": "Logged", "description": "d", "price_cents": 100,
            "stock": 5, "starts_at": at(-5), "ends_at": at(3600), "per_user_limit": 1
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let mut admin_ids = vec![(rid(&r), "create", "ok")];
    // A purchase in the open sale: accepted, logged with the shopper's
    // pseudonym only; the worker confirms it.
    let token =
        flashsale::web::auth::mint(&flashsale::config::Secret::new(JWT_SECRET), SHOPPER, 3600)
            .expect("mint");
    let r = local
        .post(url(&format!("/api/sales/{sku}/purchase")))
        .bearer_auth(&token)
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("purchase");
    assert_eq!(r.status(), 202);
    let line = serve_lines.access(&rid(&r)).await;
    assert_eq!(line["fields"]["route"], "/api/sales/{sku}/purchase");
    let expected = flashsale::logs::ShopperHash::of(SHOPPER).to_string();
    assert_eq!(line["fields"]["shopper"], expected.as_str(), "{line}");
    let body: Value = r.json().await.expect("json");
    let order = body["order_id"].as_str().expect("order id").to_owned();
    // The same shopper again: refused (409) inside the handler, logged
    // with its id and status.
    let r = local
        .post(url(&format!("/api/sales/{sku}/purchase")))
        .bearer_auth(&token)
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("purchase");
    assert_eq!(r.status(), 409);
    let line = serve_lines.access(&rid(&r)).await;
    assert_eq!(line["fields"]["status"], 409);
    // A forged token: 401, no shopper.
    let r = local
        .get(url("/api/me/orders"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let line = serve_lines.access(&rid(&r)).await;
    assert!(line["fields"].get("shopper").is_none(), "{line}");
    // The order is confirmed by the worker.
    let t = Instant::now();
    loop {
        let r = local
            .get(url(&format!("/api/orders/{order}")))
            .bearer_auth(&token)
            .send()
            .await
            .expect("order");
        let v: Value = r.json().await.expect("json");
        if v["status"] == "confirmed" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never confirmed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for action in ["pause", "end"] {
        let r = admin(
            reqwest::Method::POST,
            format!("/admin/sales/{sku}/{action}"),
        )
        .send()
        .await
        .expect(action);
        assert_eq!(r.status(), 200, "{action}");
        admin_ids.push((rid(&r), action, "ok"));
    }
    let r = admin(reqwest::Method::POST, format!("/admin/sales/{sku}/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(r.status(), 409);
    admin_ids.push((rid(&r), "pause", "sale_ended"));
    for (id, action, outcome) in &admin_ids {
        let line = serve_lines
            .wait_for(&format!("admin {action} {id}"), |v| {
                v["target"] == "flashsale::admin" && v["fields"]["request_id"] == id.as_str()
            })
            .await;
        let f = &line["fields"];
        assert_eq!(f["message"], "admin action");
        assert_eq!(f["sku"], sku.as_str(), "{line}");
        assert_eq!(f["action"], *action, "{line}");
        assert_eq!(f["outcome"], *outcome, "{line}");
        assert_eq!(f["client"], "198.51.100.7", "{line}");
        assert_eq!(line["level"], "INFO");
    }

    // Shut both down (SIGTERM) so that everything they would write is in.
    for child in [&serve, &worker] {
        let pid = child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {pid}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), serve.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Every line of both is JSON, and none holds a secret or a token;
    // access lines never the raw shopper id.
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut { serve_out }, &mut stdout)
        .await
        .expect("stdout");
    let serve_json = serve_lines.json();
    let worker_json = worker_lines.json();
    assert!(!worker_json.is_empty(), "the worker logged something");
    let everything = [
        serve_lines.all().join("\n"),
        worker_lines.all().join("\n"),
        stdout,
    ]
    .join("\n");
    for secret in [
        JWT_SECRET,
        ADMIN_TOKEN,
        PAYMENT_TOKEN,
        group.password(),
        token.as_str(),
    ] {
        assert!(
            !everything.contains(secret),
            "a secret or token is in the logs"
        );
    }
    // The token's signature alone (a line could cut it) is not there either.
    let signature = token.rsplit('.').next().expect("jwt");
    assert!(
        !everything.contains(signature),
        "a token signature is logged"
    );
    let access: Vec<&Value> = serve_json
        .iter()
        .filter(|v| v["target"] == "flashsale::access")
        .collect();
    assert!(access.len() >= 15, "{} access lines", access.len());
    for line in access {
        assert!(
            !line.to_string().contains(SHOPPER),
            "raw shopper id in {line}"
        );
    }
}

/// A refusal made before any handler (the per-address limit's 429) also
/// carries its request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_answers_carry_a_request_id() {
    let app = TestApp::spawn(
        shared_group(),
        AppOptions {
            rate_limit_per_ip: 1,
            ..AppOptions::default()
        },
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = app
            .http
            .get(app.url("/api/products"))
            .send()
            .await
            .expect("get");
        let id = rid(&r);
        assert_uuid(&id);
        seen.push((r.status().as_u16(), id));
    }
    assert!(seen.iter().any(|(s, _)| *s == 429), "{seen:?}");
    let mut ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "one id per request: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_log_format_is_a_configuration_error() {
    let url = ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1");
    let secret = ("FLASHSALE_JWT_SECRET", "0123456789abcdef0123");
    let xml = ("FLASHSALE_LOG_FORMAT", "xml");
    assert_config_error(
        env!("CARGO_BIN_EXE_flashsale"),
        &["serve"],
        &[url, secret, xml],
        "FLASHSALE_LOG_FORMAT",
    )
    .await;
    assert_config_error(
        env!("CARGO_BIN_EXE_flashsale-worker"),
        &[],
        &[url, xml],
        "FLASHSALE_LOG_FORMAT",
    )
    .await;
    assert_config_error(
        env!("CARGO_BIN_EXE_flashsale"),
        &["sale", "list"],
        &[url, xml],
        "FLASHSALE_LOG_FORMAT",
    )
    .await;
}

/// Behind the shipped nginx, the app answers (and logs under) nginx's own
/// `$request_id`, not the one the client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_id_is_nginxs() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let upstream = app.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&[("FLASHSALE_UPSTREAMS", &upstream)]);
    assert!(
        nginx
            .site()
            .contains("proxy_set_header X-Request-Id $request_id;"),
        "the site passes nginx's id"
    );
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = app
            .http
            .get(nginx.url("/api/products"))
            .header("x-request-id", "client-chosen")
            .send()
            .await
            .expect("get through nginx");
        assert_eq!(r.status(), 200);
        let id = rid(&r);
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "nginx's $request_id: {id:?}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "one id per request");
}
