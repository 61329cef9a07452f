//! A network partition, for real: every data node and Sentinel of a group,
//! and one `flashsale serve`, each on a host of its own (the test kit's
//! `Net`: network namespaces on a bridge, cuts in nftables). The master and
//! that server are cut off from the Sentinels and the replicas while
//! shoppers buy on both sides. The cut-off master takes writes; none of
//! them may be promised, and every promise must survive the heal.
//!
//! Needs root, iproute2 and nftables (`scripts/setup.sh netns`); it fails,
//! loudly, without them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flashsale_testkit::netns::Net;
use flashsale_testkit::procs::{redis_env, shipped_failover_wait};
use flashsale_testkit::redis_group::{GroupOptions, RedisGroup};
use serde_json::{Value, json};

use crate::support::app::{
    AppOptions, JWT_SECRET, TestApp, order_exists, shipped_app_options, stream_order_ids, unique,
};

const HOSTS: [&str; 7] = [
    "redis-0",
    "redis-1",
    "redis-2",
    "sentinel-0",
    "sentinel-1",
    "sentinel-2",
    "serve-0",
];

/// `flashsale serve` on host `serve-0` of `net`, on the shipped hold;
/// returns its base URL once it is ready.
async fn serve_on_host(
    net: &Net,
    group: &RedisGroup,
    prefix: &str,
) -> (tokio::process::Child, String) {
    let ip = net.host("serve-0").ip.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut cmd = net.command("serve-0", env!("CARGO_BIN_EXE_flashsale"));
    redis_env(&mut cmd, group, prefix)
        .arg("serve")
        .env("FLASHSALE_LISTEN", format!("{ip}:{port}"))
        .env("FLASHSALE_JWT_SECRET", JWT_SECRET)
        .env("FLASHSALE_RATE_LIMIT_PER_SHOPPER", "0")
        .env("FLASHSALE_RATE_LIMIT_PER_IP", "0")
        .env_remove("FLASHSALE_FAILOVER_WAIT_MS")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn flashsale serve in its namespace");
    let base = format!("http://{ip}:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return (child, base);
        }
        assert!(
            Instant::now() < deadline,
            "the server on its own host did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One purchase with an idempotency key: (status, order id).
async fn buy(
    http: &reqwest::Client,
    base: &str,
    app: &TestApp,
    user: &str,
    sku: &str,
    key: &str,
) -> (u16, Option<String>) {
    let r = http
        .post(format!("{base}/api/sales/{sku}/purchase"))
        .bearer_auth(app.token(user))
        .header("idempotency-key", key)
        .json(&json!({"qty": 1}))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (s, body["order_id"].as_str().map(str::to_owned))
        }
        Err(_) => (0, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_cut_off_with_one_server_promises_nothing_and_every_promise_survives_the_heal() {
    let net = Net::create(&HOSTS);
    let group = RedisGroup::start(GroupOptions {
        hosts: Some(net.hosts()[..6].to_vec()),
        ..GroupOptions::default()
    })
    .await;
    let prefix = unique("part");
    // The other side's server runs in this namespace: it is never cut off.
    let app = TestApp::spawn_with(
        &group,
        &prefix,
        AppOptions {
            prefix: Some(prefix.clone()),
            ..shipped_app_options()
        },
    )
    .await;
    let (_serve, cut_base) = serve_on_host(&net, &group, &prefix).await;
    let sku = unique("sku");
    app.create_sale(&sku, 100, 1, -1, 3600).await;
    let http = reqwest::Client::new();

    // A purchase on each side before the cut: both promised.
    let mut promised: Vec<String> = Vec::new();
    for (i, base) in [cut_base.as_str(), app.url("").trim_end_matches('/')]
        .into_iter()
        .enumerate()
    {
        let (s, id) = buy(&http, base, &app, &format!("before-{i}"), &sku, "k").await;
        assert_eq!(s, 202, "a purchase before the cut");
        promised.extend(id);
    }

    let m = group.master_index().await;
    let mport = group.redis_port(m);
    let minority = [format!("redis-{m}"), "serve-0".to_owned()];
    let majority: Vec<&str> = HOSTS
        .iter()
        .copied()
        .filter(|h| !minority.iter().any(|x| x == h))
        .collect();
    let before: HashSet<String> = stream_order_ids(&group, mport, &prefix, &sku)
        .await
        .into_iter()
        .collect();
    net.cut(&[&minority[0], &minority[1]], &majority);
    let cut_at = Instant::now();

    // Shoppers of the cut-off side: their server reaches only the cut-off
    // master, which takes the write but cannot have it acknowledged. Each
    // must end 503 (after the hold), never 202.
    let hold = shipped_failover_wait();
    let cut_side: Vec<_> = (0..5)
        .map(|i| {
            let (http, base, sku) = (http.clone(), cut_base.clone(), sku.clone());
            let token_app = app.token(&format!("cut-{i}"));
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/api/sales/{sku}/purchase"))
                    .bearer_auth(token_app)
                    .header("idempotency-key", format!("cut-{i}"))
                    .json(&json!({"qty": 1}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("the cut-off server answers");
                let retry_after = r.headers().contains_key("retry-after");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status, retry_after, body)
            })
        })
        .collect();

    // The other side: the Sentinels promote a replica; this side's server
    // follows and sells.
    let new_port = group
        .wait_master_change(mport, Duration::from_secs(30))
        .await;
    let mut sold_after = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while sold_after < 5 && Instant::now() < deadline {
        let (s, id) = buy(&http, &app.url(""), &app, &format!("other-{n}"), &sku, "k").await;
        n += 1;
        if s == 202 {
            sold_after += 1;
            promised.extend(id);
        }
    }
    assert_eq!(sold_after, 5, "the majority side sells after the switch");

    for t in cut_side {
        let (status, retry_after, body) = t.await.expect("shopper");
        assert_eq!(
            status, 503,
            "a purchase on the cut-off side must not be promised: {body}"
        );
        assert_eq!(body["error"], "unavailable", "{body}");
        assert!(retry_after, "a 503 carries Retry-After");
    }
    assert!(
        cut_at.elapsed() >= hold,
        "the cut-off side answered before its hold of {hold:?} ran out"
    );

    // What the cut-off master took meanwhile (read on it directly: this
    // namespace is never cut off), then the heal.
    let taken: Vec<String> = stream_order_ids(&group, mport, &prefix, &sku)
        .await
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert!(
        !taken.is_empty(),
        "the cut-off master took no write: the partition was not exercised"
    );
    net.heal();
    group.wait_converged(Duration::from_secs(40)).await;

    // The heal threw the cut-off master's writes away; none was promised,
    // and every promise is on the master now.
    for id in &taken {
        assert!(
            !promised.contains(id),
            "order {id} was promised by the cut-off master"
        );
    }
    for id in &promised {
        assert!(
            order_exists(&group, new_port, &prefix, id).await,
            "promised order {id} is missing after the heal"
        );
    }
    // The cut-off side's shoppers, trying again with their keys once the
    // network is back: served by the new master, each once.
    for i in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, id) = buy(
                &http,
                &cut_base,
                &app,
                &format!("cut-{i}"),
                &sku,
                &format!("cut-{i}"),
            )
            .await;
            if s == 202 || s == 409 {
                let id = id.expect("an order id");
                assert!(order_exists(&group, new_port, &prefix, &id).await);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the healed side does not sell: {s}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let audit = app.audit(&sku).await;
    assert_eq!(audit["consistent"], true, "{audit}");
}
