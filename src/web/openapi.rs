//! The OpenAPI 3.1 description of the HTTP API, served at
//! `GET /api/openapi.json`.
//!
//! This module owns what the description says beyond its operations: the
//! info, the tags, the shared components (the error codes, the security
//! schemes) in [`ApiDoc`]; and serving it. It owns no list of operations:
//! [`ApiDoc`] has no `paths(...)`. The operations are added by
//! `web::documented_routes`, the router's own list, where each
//! `routes!` call both routes a handler and adds its `#[utoipa::path]`
//! operation, so every documented route is described by construction.
//!
//! The served document is the `description` of that same build, computed
//! once per process (`JSON`) rather than carried from [`super::router`]
//! into the handler: the annotations are static, so the description does
//! not depend on the state or the settings a router is built with, and a
//! process serves one document however many routers it builds (the tests
//! build many). Routes added outside that list (the development sign-in
//! page, `/static`, the fallbacks) are deliberately not described.
//!
//! [`ApiDoc`]'s modifiers run in `ApiDoc::openapi()`, before any operation
//! is added: a modifier may add components, not look at paths.
//!
//! What construction cannot give is checked by tests: below, that the
//! description has no operation the router list did not add; in
//! `tests/it/openapi.rs`, against a running server, that every described
//! operation answers, that the other methods of a described path get 405,
//! and that every error code is listed.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error;

/// Everything of the description but its operations, which
/// `web::documented_routes` adds (keep `paths(...)` out of here: a path
/// listed here would be described without being routed).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "A flash-sale backend: purchases answered 202/409 only once the replicas hold them. Errors are RFC 9457 problem JSON with a stable `error` code."
    ),
    components(schemas(error::ErrorCode)),
    modifiers(&Security),
    tags(
        (name = "catalog", description = "Sales as shoppers see them"),
        (name = "purchase", description = "Buying: the promise of 202 and 409"),
        (name = "orders", description = "A shopper's orders"),
        (name = "admin", description = "Operators (bearer FLASHSALE_ADMIN_TOKEN); 404 when it is unset"),
        (name = "pages", description = "HTML pages"),
        (name = "operations", description = "Health, readiness, metrics, this description"),
    )
)]
pub struct ApiDoc;

/// The two bearer schemes: shopper tokens (JWT) and the admin token.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "shopper",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("Shopper token (or the `fs_token` cookie)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "payment",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The payment provider's secret, FLASHSALE_PAYMENT_TOKEN",
                    ))
                    .build(),
            ),
        );
    }
}

/// The served document: the description of [`super::documented_routes`],
/// the build [`super::router`] takes its routes from.
static DESCRIPTION: LazyLock<utoipa::openapi::OpenApi> =
    LazyLock::new(|| super::documented_routes().description);

static JSON: LazyLock<String> = LazyLock::new(|| DESCRIPTION.to_pretty_json().unwrap_or_default());

/// The paths of the description (`/api/products/{sku}`, …), as the router
/// matches them: the route labels of the request metrics.
pub(crate) fn documented_paths() -> impl Iterator<Item = &'static str> {
    DESCRIPTION.paths.paths.keys().map(String::as_str)
}

/// This description.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json")))]
pub async fn serve() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        JSON.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The description's paths are exactly those the router list added:
    /// [`ApiDoc`] lists none of its own (one there would be described but
    /// not routed), and the served document is the one of the router's
    /// build, not [`ApiDoc`] alone or another list.
    #[test]
    fn the_description_is_the_one_of_the_router_list() {
        let base = ApiDoc::openapi();
        assert!(
            base.paths.paths.is_empty(),
            "ApiDoc describes paths the router list does not route: {:?}",
            base.paths.paths.keys().collect::<Vec<_>>()
        );
        let served: serde_json::Value = serde_json::from_str(&JSON).expect("json");
        let built = serde_json::to_value(super::super::documented_routes().description)
            .expect("description");
        assert_eq!(served, built);
        let paths = served["paths"].as_object().expect("paths");
        // Every operation's tag is one the description declares.
        let tags: Vec<&str> = served["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("operations") {
                let op_tags = op["tags"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                assert!(!op_tags.is_empty(), "{method} {path} has no tag");
                for t in op_tags {
                    assert!(
                        t.as_str().is_some_and(|t| tags.contains(&t)),
                        "{method} {path}: tag {t} is not declared in ApiDoc"
                    );
                }
            }
        }
    }

    #[test]
    fn the_description_is_openapi_3_1_and_lists_every_error_code() {
        let doc: serde_json::Value = serde_json::from_str(&JSON).expect("json");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode enum");
        for code in [
            "unauthorized",
            "unknown_sku",
            "invalid_qty",
            "not_started",
            "sold_out",
            "ended",
            "already_purchased",
            "payload_too_large",
            "rate_limited",
            "unavailable",
            "sale_exists",
            "not_found",
            "cross_site",
            "paused",
            "sale_ended",
            "not_paused",
            "sale_open",
        ] {
            assert!(codes.iter().any(|c| c == code), "{code} missing");
        }
        assert!(doc["components"]["schemas"]["Problem"].is_object());
        assert!(doc["components"]["securitySchemes"]["shopper"].is_object());
        if std::env::var_os("OPENAPI_DUMP").is_some() {
            println!("{}", *JSON);
        }
    }
}
