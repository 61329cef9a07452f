//! Middleware: request metrics and the one log line of a 500, security
//! headers, the cross-site guard for state-changing routes, the per-address
//! rate limit on `/api`, the JSON 404/405 fallbacks, and the contract JSON
//! for error responses made outside our handlers (the static-file service's
//! 404/405/416, framework rejections).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::InternalDetail;
use crate::error::Error;

/// A fixed label for a matched route, so metrics need no per-request string.
fn route_label(path: Option<&str>) -> &'static str {
    match path {
        Some("/") => "/",
        Some("/p/{sku}") => "/p/{sku}",
        Some("/orders") => "/orders",
        Some("/api/products") => "/api/products",
        Some("/api/products/{sku}") => "/api/products/{sku}",
        Some("/api/sales/{sku}/purchase") => "/api/sales/{sku}/purchase",
        Some("/api/orders/{order_id}") => "/api/orders/{order_id}",
        Some("/api/me/orders") => "/api/me/orders",
        Some("/admin/sales") => "/admin/sales",
        Some("/admin/sales/{sku}/audit") => "/admin/sales/{sku}/audit",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        Some("/dev/login") => "/dev/login",
        Some(p) if p.starts_with("/static") => "/static",
        _ => "unmatched",
    }
}

fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        410 => "410",
        413 => "413",
        422 => "422",
        425 => "425",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// Counts every request by route and status, records latency, logs a 500's
/// detail once (and strips it), and adds the security headers.
pub async fn observe(req: Request, next: Next) -> Response {
    let route = route_label(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let method = req.method().clone();
    let started = Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !is_json(&resp) {
        resp = contract_error(resp);
    }
    if let Some(InternalDetail(detail)) = resp.extensions_mut().remove::<InternalDetail>() {
        tracing::error!(%method, route, detail = %detail, "internal error");
    }
    metrics::counter!("flashsale_http_requests_total", "route" => route, "status" => status_label(status))
        .increment(1);
    metrics::histogram!("flashsale_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let is_html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        );
    }
    resp
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The same error as `{"error","message"}` JSON, keeping the status and
/// headers such as `Allow` and `Content-Range`.
fn contract_error(resp: Response) -> Response {
    let (mut parts, _) = resp.into_parts();
    let status = parts.status;
    let code = match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        416 => "range_not_satisfiable",
        431 => "headers_too_large",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    };
    let message = if status == StatusCode::SERVICE_UNAVAILABLE {
        "the store is busy; retry shortly"
    } else if status.is_server_error() {
        "internal error"
    } else {
        status.canonical_reason().unwrap_or("request refused")
    };
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The client address: the peer, or `X-Real-IP` when the peer is a proxy on
/// this host (nginx in front).
fn client_ip(req: &Request) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    if peer.is_loopback()
        && let Some(ip) = req
            .headers()
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    Some(peer)
}

/// Refuses cross-site state changes (an `Origin` that is not this host) and
/// applies the per-address limit to `/api`.
pub async fn origin_and_ip_guard(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let same = match (origin.to_str().ok(), host) {
            (Some(o), Some(h)) => o
                .split_once("://")
                .is_some_and(|(_, rest)| rest.trim_end_matches('/') == h),
            _ => false,
        };
        if !same {
            return Error::CrossSite.into_response();
        }
    }
    if app.limiter.per_ip_enabled()
        && req.uri().path().starts_with("/api/")
        && let Some(ip) = client_ip(&req)
        && let Err(e) = app.limiter.check_ip(ip).await
    {
        return e.into_response();
    }
    next.run(req).await
}

/// Longest file name the static directory can hold (NAME_MAX).
const MAX_NAME: usize = 255;

/// Bytes of a path segment once percent-decoded.
fn decoded_len(seg: &str) -> usize {
    let b = seg.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        let escaped =
            b[i] == b'%' && i + 2 < b.len() && b[i + 1..=i + 2].iter().all(u8::is_ascii_hexdigit);
        i += if escaped { 3 } else { 1 };
        n += 1;
    }
    n
}

/// In front of the static files: a name no file can have is 404 at once
/// (the file service would answer the file system's "name too long" with
/// an empty 500).
pub async fn static_guard(req: Request, next: Next) -> Response {
    if req
        .uri()
        .path()
        .split('/')
        .any(|s| decoded_len(s) > MAX_NAME)
    {
        return Error::NotFound.into_response();
    }
    next.run(req).await
}

pub async fn not_found() -> Response {
    Error::NotFound.into_response()
}

pub async fn method_not_allowed() -> Response {
    let mut r = Error::invalid("method_not_allowed", "method not allowed").into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

#[cfg(test)]
mod tests {
    use super::decoded_len;

    #[test]
    fn segment_lengths_count_escapes_once() {
        assert_eq!(decoded_len(""), 0);
        assert_eq!(decoded_len("app.js"), 6);
        assert_eq!(decoded_len("%79%79"), 2);
        assert_eq!(decoded_len("%7"), 2);
        assert_eq!(decoded_len("%zz1"), 4);
        assert_eq!(decoded_len(&"%79".repeat(300)), 300);
    }
}
