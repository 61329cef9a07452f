//! The operator's commands against the shared group: `flashsale audit`
//! tells a consistent sale from one whose counters disagree, by its exit
//! code (0, 3), and names the sale in its JSON.

use serde_json::Value;

use crate::support::app::{AppOptions, TestApp, shared_group};

fn audit(prefix: &str, sku: &str) -> (Option<i32>, Value) {
    let group = shared_group();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["audit", "--sku", sku])
        .env("FLASHSALE_REDIS_SENTINELS", group.sentinels_env())
        .env("FLASHSALE_REDIS_PASSWORD", group.password())
        .env("FLASHSALE_REDIS_MASTER_NAME", group.master_name())
        .env("FLASHSALE_KEY_PREFIX", prefix)
        .output()
        .expect("flashsale audit");
    let line = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
    (out.status.code(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_exits_3_for_an_inconsistent_sale() {
    let group = shared_group();
    let app = TestApp::spawn(group, AppOptions::default()).await;
    let sku = "op-audit";
    app.create_sale(sku, 10, 1, -5, 3600).await;
    let (s, _) = app.purchase("op1", sku, 1, None).await;
    assert_eq!(s, 202);
    let (code, v) = audit(&app.prefix, sku);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["sku"].as_str(), v["audit"]["sold"].as_i64()),
        (Some(sku), Some(1))
    );

    // Counters that no longer add up: one unit sold that no buyer holds.
    let mut c = group.client(group.master_port().await).await;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("{}:{{{sku}}}:sale", app.prefix))
        .arg("sold")
        .arg(1)
        .query_async(&mut c)
        .await
        .expect("tamper");
    let (code, v) = audit(&app.prefix, sku);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["audit"]["consistent"], false, "{v}");
}
