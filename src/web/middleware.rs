//! Middleware: one outer layer ([`front`]) that resolves the client address
//! ([`ClientAddr`]), and handles the cross-site guard of state-changing
//! requests, request metrics, the one log line of a 500, the access line
//! and the security headers; the request id's guard ([`RequestIdGuardLayer`])
//! and the request span ([`request_span`]); the per-address rate limit on
//! `/api` (layered only when it is on); the JSON 404/405 fallbacks; and the
//! API's `{"error","message"}` JSON for error responses made outside our
//! handlers (the static-file service's 404/405/416, framework rejections).
//! Its own refusals are [`ApiError`]s; the detail of a 500 arrives in the
//! response's [`InternalDetail`] extension and is logged here once.
//!
//! Request ids: tower-http's `SetRequestIdLayer` makes a UUID v4 for a
//! request without `X-Request-Id` and `PropagateRequestIdLayer` copies it
//! to the response; in front of them [`RequestIdGuardLayer`] removes an
//! incoming `X-Request-Id` unless the peer is a trusted proxy
//! (`FLASHSALE_TRUSTED_PROXIES`, the rule of `X-Forwarded-For`) and the
//! value is sane ([`sane_request_id`]), so a client cannot choose the id its
//! lines are logged under. Every line logged while a request is handled is
//! inside its span ([`request_span`], field `request_id`).
//!
//! This module does not choose the log format or the subscriber
//! ([`crate::logs`]), and never logs a header's value other than the
//! request id.
//!
//! Every route × status series of the request metrics is registered at
//! start-up, so a request costs no registry lookup and `/metrics` shows
//! zeros rather than missing series.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use tower_http::request_id::RequestId;

use super::AppState;
use super::error::{ApiError, InternalDetail, PROBLEM_JSON, problem_body};
use super::proxies::TrustedProxies;
use crate::logs::ShopperHash;

/// Route labels of the request metrics besides the described paths: the
/// purchase first (the busiest, found first), then the development page,
/// the assets, and every path no route matched.
const PURCHASE: &str = "/api/sales/{sku}/purchase";
/// The payment provider's callback, exempt from the per-address limit.
const PAYMENT_CALLBACK: &str = "/api/orders/{order_id}/payment";
const STATIC: &str = "/static";
const UNMATCHED: &str = "unmatched";

/// Every route label: the purchase, the other paths of the API description
/// (so a new route is labelled without a list to keep up), `/dev/login`,
/// `/static`, `unmatched` (always last).
fn route_labels() -> Vec<&'static str> {
    let mut labels = vec![PURCHASE];
    labels.extend(super::openapi::documented_paths().filter(|p| *p != PURCHASE));
    labels.extend(["/dev/login", "/dev/pay/{order_id}", STATIC, UNMATCHED]);
    labels
}

/// Status labels of the request metrics; the last one is any other status.
const STATUSES: [u16; 17] = [
    200, 201, 202, 304, 400, 401, 403, 404, 405, 409, 410, 413, 422, 425, 429, 500, 503,
];

/// The index in `routes` of a matched route.
fn route_index(routes: &[&'static str], path: Option<&str>) -> usize {
    let unmatched = routes.len() - 1;
    match path {
        Some(p) if p.starts_with(STATIC) => unmatched - 1,
        Some(p) => routes[..unmatched - 1]
            .iter()
            .position(|r| *r == p)
            .unwrap_or(unmatched),
        None => unmatched,
    }
}

fn status_index(s: StatusCode) -> usize {
    STATUSES
        .iter()
        .position(|x| *x == s.as_u16())
        .unwrap_or(STATUSES.len())
}

/// Request metrics, registered once: `flashsale_http_requests_total` by
/// route and status and `flashsale_http_request_duration_seconds` by route,
/// so a request costs no registry lookup.
pub struct HttpMetrics {
    routes: Vec<&'static str>,
    requests: Vec<Counter>,
    latency: Vec<Histogram>,
}

impl HttpMetrics {
    /// Registers every series with the installed recorder.
    pub fn register() -> Self {
        let routes = route_labels();
        let mut requests = Vec::with_capacity(routes.len() * (STATUSES.len() + 1));
        let mut latency = Vec::with_capacity(routes.len());
        for &route in &routes {
            let statuses = STATUSES.iter().map(|s| s.to_string());
            for status in statuses.chain(std::iter::once("other".to_owned())) {
                requests.push(metrics::counter!(
                    "flashsale_http_requests_total", "route" => route, "status" => status
                ));
            }
            latency.push(metrics::histogram!(
                "flashsale_http_request_duration_seconds", "route" => route
            ));
        }
        Self {
            routes,
            requests,
            latency,
        }
    }

    fn record(&self, route: usize, status: StatusCode, seconds: f64) {
        let per_route = STATUSES.len() + 1;
        self.requests[route * per_route + status_index(status)].increment(1);
        self.latency[route].record(seconds);
    }
}

/// Whether a state-changing request comes from another site: an `Origin`
/// that is neither this host nor one of the origins allowed to call the API
/// from a browser (`FLASHSALE_CORS_ORIGINS`).
fn cross_site(req: &Request, allowed: &[String]) -> bool {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return false;
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
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
    !same && !super::cors::allowed(allowed, origin.as_bytes())
}

/// The outermost of our middleware (inside the request id layers and the
/// request span): refuses cross-site state changes, counts every request
/// by route and status, records latency, logs a 500's detail once (and
/// strips it), writes the access line when it is on, gives errors made
/// outside our handlers the API's error JSON, and adds the security
/// headers.
pub async fn front(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let routes = &app.http_metrics.routes;
    let route = route_index(
        routes,
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let started = Instant::now();
    let client = client_addr(&req, &app.settings.trusted_proxies);
    let access_log = app.settings.access_log;
    let method = req.method().clone();
    // Only the access line needs its own copy of the id: every other line
    // has it from the request's span.
    let request_id = access_log
        .then(|| req.extensions().get::<RequestId>().cloned())
        .flatten();
    let mut shopper = None;
    let mut resp = if cross_site(&req, &app.settings.cors_origins) {
        ApiError::CrossSite.into_response()
    } else {
        if let Some(ip) = client {
            req.extensions_mut().insert(ClientAddr(ip));
        }
        if access_log {
            let (resp, who) = SHOPPER
                .scope(Cell::new(None), async move {
                    let resp = next.run(req).await;
                    (resp, SHOPPER.with(Cell::take))
                })
                .await;
            shopper = who;
            resp
        } else {
            next.run(req).await
        }
    };
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !is_json(&resp) {
        resp = contract_error(resp);
    }
    if let Some(InternalDetail(detail)) = resp.extensions_mut().remove::<InternalDetail>() {
        let client = client.map(tracing::field::display);
        tracing::error!(method = method.as_str(), route = routes[route], client, detail = %detail, "internal error");
    }
    let elapsed = started.elapsed();
    app.http_metrics
        .record(route, status, elapsed.as_secs_f64());
    if access_log {
        tracing::info!(
            target: "flashsale::access",
            method = method.as_str(),
            route = routes[route],
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            client = client.map(tracing::field::display),
            request_id = request_id.as_ref().and_then(|id| id.header_value().to_str().ok()),
            shopper = shopper.map(|s| tracing::field::display(ShopperHash::of(&s))),
            "access"
        );
    }
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
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        );
    }
    resp
}

tokio::task_local! {
    /// The shopper a request authenticated as, noted by the shopper
    /// extractor ([`note_shopper`]) while [`front`] waits for the response
    /// (only when the access log is on).
    static SHOPPER: Cell<Option<Arc<str>>>;
}

/// Notes the authenticated shopper of the request being handled, for its
/// access line (which shows only its [`ShopperHash`]). Does nothing when
/// the access log is off.
pub(crate) fn note_shopper(user: &Arc<str>) {
    let _ = SHOPPER.try_with(|s| s.set(Some(Arc::clone(user))));
}

/// Longest `X-Request-Id` believed from a trusted proxy.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether an incoming request id can be kept: 1 to [`MAX_REQUEST_ID`]
/// bytes of visible ASCII (no space, no control character).
pub fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic())
}

/// Removes an incoming `X-Request-Id` unless it comes from a trusted proxy
/// (one header, a [`sane_request_id`] value); tower-http's
/// `SetRequestIdLayer`, inside it, then makes one.
#[derive(Clone)]
pub struct RequestIdGuardLayer(Arc<TrustedProxies>);

impl RequestIdGuardLayer {
    pub fn new(trusted: TrustedProxies) -> Self {
        Self(Arc::new(trusted))
    }
}

impl<S> tower::Layer<S> for RequestIdGuardLayer {
    type Service = RequestIdGuard<S>;
    fn layer(&self, inner: S) -> RequestIdGuard<S> {
        RequestIdGuard {
            inner,
            trusted: Arc::clone(&self.0),
        }
    }
}

/// The service of [`RequestIdGuardLayer`].
#[derive(Clone)]
pub struct RequestIdGuard<S> {
    inner: S,
    trusted: Arc<TrustedProxies>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for RequestIdGuard<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> S::Future {
        let headers = req.headers();
        if headers.contains_key(X_REQUEST_ID) {
            let trusted = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|peer| self.trusted.contains(peer.0.ip()));
            let mut values = headers.get_all(X_REQUEST_ID).iter();
            let keep =
                trusted && values.next().is_some_and(sane_request_id) && values.next().is_none();
            if !keep {
                req.headers_mut().remove(X_REQUEST_ID);
            }
        }
        self.inner.call(req)
    }
}

const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// The span of one request: `request` with its `request_id` (set by the
/// request id layers before it is made). Every line logged while the
/// request is handled is inside it.
pub fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", request_id = id)
}

/// Who made a request, for the log lines of admin actions: the client
/// address ([`ClientAddr`]) and the request id. Never fails.
pub struct Caller {
    pub client: Option<IpAddr>,
    request_id: Option<RequestId>,
}

impl Caller {
    pub fn request_id(&self) -> Option<&str> {
        self.request_id
            .as_ref()
            .and_then(|id| id.header_value().to_str().ok())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Caller {
            client: parts.extensions.get::<ClientAddr>().map(|c| c.0),
            request_id: parts.extensions.get::<RequestId>().cloned(),
        })
    }
}

fn is_json(resp: &Response) -> bool {
    resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/json") || v.starts_with(PROBLEM_JSON.as_bytes())
    })
}

/// The same error as the API's problem JSON (`{"type","title","status",
/// "error","message"}`), keeping the status and headers such as `Allow` and
/// `Content-Range`.
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
    let body = problem_body(status, code, message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The client of a request, as [`front`] resolved it (a request extension):
/// the peer, or the address a trusted proxy forwarded for
/// ([`TrustedProxies::client`]). The per-address rate limit keys on it and
/// log lines name it `client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub IpAddr);

/// The client address of a request that came in through our accept loop
/// (which attaches the peer as [`ConnectInfo`]).
fn client_addr(req: &Request, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(trusted.client(peer, req.headers()))
}

/// The per-address limit on `/api` (only layered when it is on).
pub async fn ip_limit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    // The payment provider's callbacks come in bursts from a few addresses
    // of the provider, each authenticated by its secret: the shoppers'
    // per-address limit is not theirs.
    let callback = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == PAYMENT_CALLBACK);
    if !callback
        && req.uri().path().starts_with("/api/")
        && let Some(ClientAddr(ip)) = req.extensions().get::<ClientAddr>().copied()
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
/// (the file service would answer the file system's "name too long", or
/// its refusal of a NUL byte in a name, with an empty 500).
pub async fn static_guard(req: Request, next: Next) -> Response {
    if req
        .uri()
        .path()
        .split('/')
        .any(|s| decoded_len(s) > MAX_NAME || s.contains("%00"))
    {
        return ApiError::not_found().into_response();
    }
    next.run(req).await
}

pub async fn not_found() -> Response {
    ApiError::not_found().into_response()
}

pub async fn method_not_allowed() -> Response {
    let mut r = ApiError::invalid("method_not_allowed", "method not allowed").into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels() {
        let routes = route_labels();
        let label = |p| routes[route_index(&routes, p)];
        assert_eq!(route_index(&routes, Some("/api/sales/{sku}/purchase")), 0);
        // Every described route has its own label, the newer ones too.
        for p in [
            "/",
            "/admin/sales/{sku}",
            "/admin/sales/{sku}/pause",
            "/api/openapi.json",
            "/api/orders/{order_id}/payment",
            "/dev/login",
            "/dev/pay/{order_id}",
        ] {
            assert_eq!(label(Some(p)), p);
        }
        assert_eq!(label(Some("/static/{*path}")), "/static");
        assert_eq!(label(Some("/nope")), "unmatched");
        assert_eq!(label(None), "unmatched");
        let mut unique = routes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), routes.len(), "{routes:?}");
        assert_eq!(STATUSES[status_index(StatusCode::GONE)], 410);
        assert_eq!(status_index(StatusCode::IM_A_TEAPOT), STATUSES.len());
    }

    #[test]
    fn request_ids_kept_only_when_sane() {
        let ok = |b: &[u8]| sane_request_id(&HeaderValue::from_bytes(b).expect("value"));
        assert!(ok(b"abc-123"));
        assert!(ok(b"0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(ok("x".repeat(MAX_REQUEST_ID).as_bytes()));
        assert!(!ok("x".repeat(MAX_REQUEST_ID + 1).as_bytes()));
        for bad in [&b""[..], b"a b", b"a\tb", b"caf\xc3\xa9", b"\xff"] {
            assert!(!ok(bad), "{bad:?}");
        }
    }

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
