//! The API description against the running router: `GET /api/openapi.json`
//! is OpenAPI 3.1; every operation it lists answers (no 405, not the
//! fallback 404 of unrouted paths); on every path it lists, the methods it
//! does not list are refused with 405; and every error code of the API's
//! error format is in it.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::app::{ADMIN_TOKEN, AppOptions, TestApp, shared_group};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_matches_the_router() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let sku = "oa-1";
    app.create_sale(sku, 10, 1, -5, 3600).await;
    let (s, bought) = app.purchase("oa-shopper", sku, 1, None).await;
    assert_eq!(s, 202, "{bought}");
    let order_id = bought["order_id"].as_str().expect("order id").to_owned();

    let r = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().await.expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );

    // What the router answers on a path it does not have.
    let fallback = app
        .http
        .get(app.url("/api/no-such-route"))
        .send()
        .await
        .expect("fallback")
        .text()
        .await
        .expect("text");

    let token = app.token("oa-shopper");
    let paths = doc["paths"].as_object().expect("paths");
    let mut listed = BTreeSet::new();
    for (path, ops) in paths {
        let concrete = path.replace("{sku}", sku).replace("{order_id}", &order_id);
        for method in ["get", "post", "patch"] {
            let documented = ops.get(method).is_some();
            let mut req = match method {
                "get" => app.http.get(app.url(&concrete)),
                _ => app
                    .http
                    .request(
                        method.to_uppercase().parse().expect("method"),
                        app.url(&concrete),
                    )
                    .header("content-type", "application/json")
                    .body(
                        if path.starts_with("/admin") {
                            json!({"sku": "oa-2", "name": "n", "price_cents": 1, "stock": 1,
                                   "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z",
                                   "per_user_limit": 1})
                        } else {
                            json!({"qty": 1})
                        }
                        .to_string(),
                    ),
            };
            req = if path.starts_with("/admin") {
                req.bearer_auth(ADMIN_TOKEN)
            } else {
                req.bearer_auth(&token)
            };
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if documented {
                listed.insert(format!("{} {path}", method.to_uppercase()));
                assert_ne!(status, 405, "{method} {path} is listed but refused");
                assert_ne!(body, fallback, "{method} {path} is listed but not routed");
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} answers {status} but is not listed: {body}"
                );
            }
        }
    }
    for op in [
        "GET /",
        "GET /p/{sku}",
        "GET /orders",
        "GET /api/products",
        "GET /api/products/{sku}",
        "POST /api/sales/{sku}/purchase",
        "GET /api/orders/{order_id}",
        "GET /api/me/orders",
        "POST /admin/sales",
        "GET /admin/sales",
        "GET /admin/sales/{sku}",
        "PATCH /admin/sales/{sku}",
        "POST /admin/sales/{sku}/pause",
        "POST /admin/sales/{sku}/resume",
        "POST /admin/sales/{sku}/end",
        "GET /admin/sales/{sku}/audit",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /api/openapi.json",
    ] {
        assert!(
            listed.contains(op),
            "{op} is routed but not listed: {listed:?}"
        );
    }

    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("error codes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for code in [
        "unauthorized",
        "not_found",
        "unknown_sku",
        "invalid_qty",
        "invalid_json",
        "not_started",
        "sold_out",
        "ended",
        "already_purchased",
        "sale_exists",
        "payload_too_large",
        "rate_limited",
        "unavailable",
        "cross_site",
        "paused",
        "sale_ended",
        "not_paused",
        "sale_open",
    ] {
        assert!(codes.contains(&code), "{code} is not in the description");
    }
}
