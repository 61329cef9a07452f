//! The OpenAPI 3.1 description of the HTTP API, generated at build time
//! from the handlers' `#[utoipa::path]` annotations and the types they
//! answer with, and served at `GET /api/openapi.json`. The test suite
//! checks it against the running router (every listed operation answers,
//! every route is listed, every error code appears).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api, error, pages};

/// The description, as Rust data.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "A flash-sale backend: purchases answered 202/409 only once the replicas hold them. Errors are RFC 9457 problem JSON with a stable `error` code."
    ),
    paths(
        pages::index,
        pages::product,
        pages::orders,
        api::products,
        api::product,
        api::purchase,
        api::order,
        api::my_orders,
        api::create_sale,
        api::admin_sales,
        api::admin_sale,
        api::update_sale,
        api::pause_sale,
        api::resume_sale,
        api::end_sale,
        api::audit,
        api::healthz,
        api::readyz,
        api::metrics,
        serve,
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
    }
}

static JSON: LazyLock<String> =
    LazyLock::new(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default());

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
