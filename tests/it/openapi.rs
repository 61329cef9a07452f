//! The API description against the running router. Every documented route
//! is described by construction (the router and the description are built
//! from one list, `flashsale::web::documented_routes`); this test checks the
//! rest, deriving every route it tries from the served document itself:
//! `GET /api/openapi.json` is OpenAPI 3.1 and describes itself; every
//! operation it lists answers (not 405, not the fallback of unrouted paths);
//! on every path it lists, the methods it does not list are refused with
//! 405; every error code of the API's error format is in it, and so is
//! every code the service answered with during the test.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::app::{ADMIN_TOKEN, AppOptions, TestApp, serve_settings, shared_group, unique};

/// The methods an OpenAPI path item can describe.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_matches_the_router() {
    // Every optional part on (the admin API, the payment callback), so
    // every described route is routed.
    let prefix = unique("oa");
    let mut settings = serve_settings(shared_group(), &prefix, &AppOptions::default());
    settings.payment_window = std::time::Duration::from_secs(600);
    settings.payment_token = Some(flashsale::config::Secret::new(
        "openapi-payment-secret-0123",
    ));
    let app = TestApp::spawn_settings(&prefix, settings).await;
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
    let paths = doc["paths"].as_object().expect("paths");
    // Derived from the document, so it must not be vacuous: the document
    // describes at least the operation that served it.
    assert!(
        paths["/api/openapi.json"].get("get").is_some(),
        "the description does not describe GET /api/openapi.json: {:?}",
        paths.keys().collect::<Vec<_>>()
    );

    // What the router answers on a path it does not have.
    let fallback = app
        .http
        .get(app.url("/api/no-such-route"))
        .send()
        .await
        .expect("fallback");
    let fallback = (
        fallback.status().as_u16(),
        fallback.text().await.expect("text"),
    );
    assert_eq!(fallback.0, 404, "{}", fallback.1);

    let token = app.token("oa-shopper");
    let mut answered_codes = BTreeSet::new();
    for (path, ops) in paths {
        let concrete = concrete_path(path, sku, &order_id);
        let admin = path.starts_with("/admin");
        for method in METHODS {
            let documented = ops.get(method).is_some();
            // HEAD is answered wherever GET is (RFC 9110 §9.3.2; axum does
            // it): it need not be described there.
            if method == "head" && !documented && ops.get("get").is_some() {
                continue;
            }
            let mut req = app
                .http
                .request(
                    method.to_uppercase().parse().expect("method"),
                    app.url(&concrete),
                )
                .bearer_auth(if admin { ADMIN_TOKEN } else { &token });
            if matches!(method, "post" | "put" | "patch" | "delete") {
                let body = if admin {
                    json!({"sku": "oa-2", "name": "n", "price_cents": 1, "stock": 1,
                           "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z",
                           "per_user_limit": 1})
                } else {
                    json!({"qty": 1})
                };
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let problem = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
            let body = r.text().await.unwrap_or_default();
            // (A HEAD answer has the headers of a problem but no body.)
            if problem && method != "head" {
                let parsed: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{method} {path}: problem body {body}: {e}"));
                let code = parsed["error"].as_str().unwrap_or_else(|| {
                    panic!("{method} {path}: problem without an error code: {body}")
                });
                answered_codes.insert(code.to_owned());
            }
            if documented {
                assert_ne!(status, 405, "{method} {path} is listed but refused");
                assert_ne!(
                    (status, &body),
                    (fallback.0, &fallback.1),
                    "{method} {path} is listed but not routed"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} answers {status} but is not listed: {body}"
                );
            }
        }
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Problem"]["properties"]["error"]["$ref"], "#/components/schemas/ErrorCode",
        "the error format's `error` is not the ErrorCode schema"
    );
    let codes: BTreeSet<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("error codes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Every code the service answered with above.
    assert!(
        answered_codes.contains("method_not_allowed"),
        "{answered_codes:?}"
    );
    for code in &answered_codes {
        assert!(
            codes.contains(code.as_str()),
            "{code} was answered but is not in the description"
        );
    }
    // The codes of the error format (docs/API.md).
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
        "method_not_allowed",
    ] {
        assert!(codes.contains(code), "{code} is not in the description");
    }
}

/// `path` with its parameters replaced by ones that exist, so an operation
/// answers as itself rather than with a 404 that could pass for the
/// fallback.
fn concrete_path(path: &str, sku: &str, order_id: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("closed parameter") + open;
        out.push_str(&rest[..open]);
        out.push_str(match &rest[open + 1..close] {
            "sku" => sku,
            "order_id" => order_id,
            other => panic!("{path}: give this test a value for the parameter {{{other}}}"),
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}
