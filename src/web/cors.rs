//! Cross-origin access to `/api` for the shop's front ends on other
//! origins (`FLASHSALE_CORS_ORIGINS`): tower-http's CORS layer, applied to
//! `/api/` paths only, and the allow-list the cross-site guard of state
//! changes consults. Without origins configured nothing here is layered and
//! the API is same-origin only.
//!
//! The layer sits just inside the outermost middleware: preflights are
//! answered before the rate and concurrency limits, and every `/api`
//! response (a shed 503 and a 429 too) carries the CORS headers a browser
//! needs to read it. Allowed: `GET` and `POST`, the request headers
//! `Authorization`, `Content-Type` and `Idempotency-Key`, credentials (the
//! `fs_token` cookie); exposed: `Retry-After`. Preflights may be cached for
//! ten minutes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::AppState;

/// Whether `origin` (an `Origin` header's bytes) is one of `allowed`
/// (normalized at start-up; hosts compare without regard to case).
pub(crate) fn allowed(allowed: &[String], origin: &[u8]) -> bool {
    allowed
        .iter()
        .any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
}

/// The CORS layer of `/api` for `origins` (not empty).
pub fn layer(origins: &[String]) -> CorsLayer {
    let origins: Arc<[String]> = origins.into();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            allowed(&origins, origin.as_bytes())
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .allow_credentials(true)
        .max_age(Duration::from_secs(600))
}

/// Applies the CORS layer to `/api/` requests (layered only when origins
/// are configured).
pub async fn api(State(app): State<AppState>, req: Request, next: Next) -> Response {
    match &app.cors {
        Some(cors) if req.uri().path().starts_with("/api/") => {
            match cors.layer(next).oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_without_case() {
        let list = vec![
            "https://shop.example".to_owned(),
            "http://localhost:3000".to_owned(),
        ];
        assert!(allowed(&list, b"https://shop.example"));
        assert!(allowed(&list, b"https://SHOP.example"));
        assert!(allowed(&list, b"http://localhost:3000"));
        assert!(!allowed(&list, b"http://localhost:3001"));
        assert!(!allowed(&list, b"https://shop.example.evil"));
        assert!(!allowed(&list, b"null"));
        assert!(!allowed(&[], b"https://shop.example"));
    }
}
