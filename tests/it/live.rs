//! The live sale view: `GET /admin/live/snapshot` over plain HTTP (the
//! admin token, what it counts, its one-second cache, nothing changed by a
//! refused call, 404 with the admin API off), and the page `GET /admin/live`
//! in headless Chromium through the shipped nginx in front of two
//! instances, while shoppers buy and the master is switched under them
//! (`tests/browser/live.mjs`; screenshots in
//! `target/browser-artifacts/live/`). The browser test breaks the master,
//! so it runs on a Redis group of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{
    E2e, Worker, artifacts, assert_no_inline_code, chromium_bin, get_text, http, nginx_bin,
    node_ready,
};
use crate::support::app::{ADMIN_TOKEN, AppOptions, TestApp, shared_group, unique};
use crate::support::nginx::Nginx;
use crate::support::redis_group::{GroupOptions, RedisGroup};

async fn snapshot(app: &TestApp, token: Option<&str>) -> (u16, Value) {
    let mut req = app.http.get(app.url("/admin/live/snapshot"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("snapshot");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn sale_in<'a>(snap: &'a Value, sku: &str) -> Option<&'a Value> {
    snap["sales"]
        .as_array()
        .expect("sales")
        .iter()
        .find(|s| s["sku"] == sku)
}

/// The JSON without a token or with a wrong one is 401 and changes nothing;
/// with it, the running sales only, with their numbers from Redis and this
/// instance's own counts; read at most once a second; the page is the
/// same for everyone and loads only local code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_is_for_the_admin_and_counts_what_happened() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let open = unique("lv");
    let later = unique("lvlater");
    app.create_sale(&open, 10, 1, -5, 3600).await;
    app.create_sale(&later, 10, 1, 3600, 3600).await;
    for user in ["lv-a", "lv-b"] {
        let (s, b) = app.purchase(user, &open, 1, None).await;
        assert_eq!(s, 202, "{b}");
    }
    let (s, b) = app.purchase("lv-a", &open, 1, None).await;
    assert_eq!(s, 409, "{b}");

    let before = app.audit(&open).await;
    for token in [None, Some("not-the-admin-token"), Some("")] {
        let (s, body) = snapshot(&app, token).await;
        assert_eq!(s, 401, "token {token:?}: {body}");
        assert_eq!(body["error"], "unauthorized", "{body}");
        assert!(
            !body.to_string().contains(ADMIN_TOKEN),
            "the answer names the token: {body}"
        );
    }
    assert_eq!(
        app.audit(&open).await,
        before,
        "a refused call changed nothing"
    );

    let (s, snap) = snapshot(&app, Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 200, "{snap}");
    let sales = snap["sales"].as_array().expect("sales");
    assert_eq!(sales.len(), 1, "only the open sale: {snap}");
    let sale = sale_in(&snap, &open).expect("the open sale");
    assert_eq!(sale["state"], "open", "{sale}");
    assert_eq!(sale["stock_total"], 10, "{sale}");
    assert_eq!(sale["stock_left"], before["stock_left"], "{sale}");
    assert_eq!(sale["sold"], before["sold"], "{sale}");
    assert_eq!(sale["stock_left"], 8, "{sale}");
    assert_eq!(sale["orders"], 2, "{sale}");
    // No worker here: both orders wait, unread by any worker.
    assert_eq!(sale["queued"], 2, "{sale}");
    assert_eq!(sale["worker_lag"], 2, "{sale}");
    assert_eq!(sale["worker_pending"], 0, "{sale}");
    assert_eq!(sale["dead_letters"], 0, "{sale}");
    let oldest = sale["oldest_queued_ms"].as_i64().expect("an order waits");
    assert!((0..60_000).contains(&oldest), "{sale}");
    assert_eq!(snap["totals"]["stock_left"], 8, "{snap}");
    assert_eq!(snap["totals"]["queued"], 2, "{snap}");
    let inst = &snap["instance"];
    let outcome = |name: &str| {
        inst["purchases"]
            .as_array()
            .expect("purchases")
            .iter()
            .find(|o| o["outcome"] == name)
            .map(|o| o["count"].as_u64().expect("count"))
    };
    assert_eq!(outcome("accepted"), Some(2), "{inst}");
    assert_eq!(outcome("already_purchased"), Some(1), "{inst}");
    assert_eq!(outcome("sold_out"), None, "{inst}");
    assert_eq!(inst["unavailable"], 0, "{inst}");
    assert_eq!(inst["master_switches"], 0, "{inst}");
    let master = format!("127.0.0.1:{}", shared_group().master_port().await);
    assert_eq!(inst["masters"], json!([master]), "{inst}");
    assert!(
        inst["id"]
            .as_str()
            .is_some_and(|id| id.starts_with(app.base.trim_start_matches("http://"))),
        "{inst}"
    );

    // One read of Redis a second: a snapshot right after is the same read
    // (unless the second has just passed), and a later one is a new read.
    let t0 = snap["taken_ms"].as_i64().expect("taken_ms");
    let (_, again) = snapshot(&app, Some(ADMIN_TOKEN)).await;
    let t1 = again["taken_ms"].as_i64().expect("taken_ms");
    assert!(t1 == t0 || t1 - t0 >= 1000, "{t0} then {t1}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, b) = app.purchase("lv-c", &open, 1, None).await;
    assert_eq!(s, 202, "{b}");
    let (_, later_snap) = snapshot(&app, Some(ADMIN_TOKEN)).await;
    assert!(later_snap["taken_ms"].as_i64().expect("taken_ms") >= t0 + 1000);
    let sale = sale_in(&later_snap, &open).expect("the open sale");
    assert_eq!(sale["stock_left"], 7, "{sale}");
    assert_eq!(sale["orders"], 3, "{sale}");

    // The page: HTML for everyone (the token is asked by its script), no
    // inline code, the app's CSP, not cached.
    let (s, h, html) = get_text(&http(), &app.url("/admin/live")).await;
    assert_eq!(s, 200, "{html}");
    assert!(h["content-type"].starts_with("text/html"), "{h:?}");
    assert!(
        h["content-security-policy"].contains("script-src 'self'"),
        "{h:?}"
    );
    assert_eq!(h["cache-control"], "no-store", "{h:?}");
    assert!(html.contains("/static/live.js?v="), "{html}");
    assert!(html.contains("<label for=\"live-token\">"), "{html}");
    assert_no_inline_code(&html, "/admin/live");
    let (s, _, js) = get_text(&http(), &app.url("/static/live.js")).await;
    assert_eq!(s, 200);
    assert!(js.contains("sessionStorage") && js.contains("Bearer"));
    app.stop().await;

    // Without FLASHSALE_ADMIN_TOKEN both are 404, like every /admin route.
    let off = TestApp::spawn(
        shared_group(),
        AppOptions {
            admin: false,
            ..AppOptions::default()
        },
    )
    .await;
    let (s, body) = snapshot(&off, Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 404, "{body}");
    let (s, _, body) = get_text(&http(), &off.url("/admin/live")).await;
    assert_eq!(s, 404, "{body}");
    off.stop().await;
}

/// Shoppers buying without pause from two instances, one after the other.
struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(apps: &[Arc<TestApp>], sku: &str, shoppers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let tasks = (0..shoppers)
            .map(|i| {
                let app = apps[i % apps.len()].clone();
                let (stop, accepted, sku) = (stop.clone(), accepted.clone(), sku.to_owned());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let user = format!("live-{i}-{n}");
                        let (s, _) = app.purchase(&user, &sku, 1, Some(&user)).await;
                        if s == 202 {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        } else if s != 503 && s != 0 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            accepted,
            tasks,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        self.accepted.load(Ordering::Relaxed)
    }
}

/// The page in Chromium, through nginx to two instances and their worker,
/// while shoppers buy: purchases per second above 0, stock left going down,
/// a planned failover in the middle seen as a master switch with the new
/// master's address, and at the end the stock left of the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_follows_a_sale_through_a_failover() {
    let _ = nginx_bin();
    let _ = chromium_bin();
    let _ = node_ready();
    let out = artifacts("live");
    let group = RedisGroup::start(GroupOptions::default()).await;
    let prefix = unique("live");
    let app1 = Arc::new(TestApp::spawn_with(&group, &prefix, AppOptions::default()).await);
    let app2 = Arc::new(TestApp::spawn_with(&group, &prefix, AppOptions::default()).await);
    let worker = Worker::spawn(&group, &prefix);
    let sku = unique("livesale");
    app1.create_sale(&sku, 100_000, 1, -5, 3600).await;
    let up1 = app1.base.trim_start_matches("http://").to_owned();
    let up2 = app2.base.trim_start_matches("http://").to_owned();
    let nginx = Nginx::start(&[("FLASHSALE_UPSTREAMS", &format!("{up1},{up2}"))]);
    let old_port = group.master_port().await;

    let mut e2e = E2e::spawn("live.mjs", &nginx.url(""), &out);
    e2e.send(json!({"token": ADMIN_TOKEN, "sku": sku})).await;
    let ready = e2e.expect("ready", Duration::from_secs(90)).await;
    assert_eq!(
        ready["master"],
        format!("127.0.0.1:{old_port}"),
        "the page names the master: {ready}"
    );

    let load = Load::start(&[app1.clone(), app2.clone()], &sku, 8);
    e2e.send(json!({"event": "load-started"})).await;
    let during = e2e.expect("selling", Duration::from_secs(60)).await;
    assert!(during["rate"].as_f64().is_some_and(|r| r > 0.0), "{during}");
    assert!(
        during["stock_left"].as_i64().is_some_and(|s| s < 100_000),
        "{during}"
    );

    group.sentinel_failover().await;
    let new_port = group
        .wait_master_change(old_port, Duration::from_secs(30))
        .await;
    let new_master = format!("127.0.0.1:{new_port}");
    e2e.send(json!({"event": "failed-over", "master": new_master}))
        .await;
    let seen = e2e.expect("switch-seen", Duration::from_secs(60)).await;
    assert_eq!(seen["master"], new_master, "{seen}");
    assert!(seen["switches"].as_i64().is_some_and(|n| n >= 1), "{seen}");
    // Sales go on after the switch, and the page keeps counting them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let accepted = load.stop().await;
    assert!(accepted > 0, "the load bought nothing");

    let audit = app1.audit(&sku).await;
    assert_eq!(audit["consistent"], true, "{audit}");
    let truth = audit["stock_left"].as_i64().expect("stock_left");
    assert!(
        truth <= 100_000 - accepted as i64,
        "{audit} after {accepted} 202s"
    );
    e2e.send(json!({"event": "load-stopped", "stock_left": truth}))
        .await;
    let done = e2e.expect("done", Duration::from_secs(60)).await;
    let result = &done["result"];
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(result).expect("json"),
    )
    .expect("result.json");
    assert_eq!(result["stock_left"], truth, "{result}");
    assert!(
        result["points"].as_i64().is_some_and(|n| n >= 5),
        "{result}"
    );
    assert!(
        result["max_rate"].as_f64().is_some_and(|r| r > 0.0),
        "{result}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), e2e.child.wait())
        .await
        .expect("node exits")
        .expect("wait");
    assert!(status.success(), "{}", e2e.log());
    for shot in [
        "token-desktop",
        "selling-desktop",
        "switched-desktop",
        "final-desktop",
        "final-phone",
    ] {
        assert!(out.join(format!("{shot}.png")).is_file(), "{shot}.png");
    }
    std::fs::write(out.join("nginx-error.log"), nginx.error_log()).expect("nginx log");
    drop(nginx);
    worker.stop().await;
    for app in [app1, app2] {
        if let Ok(app) = Arc::try_unwrap(app) {
            app.stop().await;
        }
    }
}
