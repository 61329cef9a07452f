//! The HTTP service: router, shared state, middleware, start-up and shutdown.
//!
//! [`Application::build`] connects to Redis and binds the listener (port 0
//! in tests); [`Application::run_until`] serves until the given future
//! completes, then drains in-flight requests. Overload is shed, not queued:
//! a global concurrency limit with `load_shed` answers 503 at once when every
//! slot is taken, and a timeout bounds every request.
//!
//! Connections are served by our own accept loop on hyper's HTTP/1 server
//! rather than `axum::serve`, which sets no timer and so has no header-read
//! timeout: a client that trickles its request head byte by byte (slowloris)
//! would hold its connection forever. Here every request head must arrive
//! within [`ConnLimits::header_read_timeout`] (idle keep-alive included), the
//! head is capped in size, open connections are capped in total (beyond it
//! new ones wait in the listen backlog, as mini-redis does) and per client
//! address (beyond it a new connection gets a 503 and is closed), and a
//! request body must arrive within [`BODY_READ_TIMEOUT`].

pub mod api;
pub mod auth;
pub mod error;
mod middleware;
pub mod pages;
pub mod ratelimit;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::config::{Secret, ServeSettings};
use crate::error::Error;
use crate::redis::Redis;
use crate::sale::Shop;

/// Largest request body accepted anywhere.
pub const MAX_BODY: usize = 16 * 1024;

/// How long a request body (at most [`MAX_BODY`]) may take to arrive once
/// the head is in; a client that trickles it gets 400 and frees its slot of
/// the concurrency limit.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What one connection, or one client address, may hold.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// A request head (request line and headers) must arrive within this
    /// time of the connection opening or the previous response; an idle
    /// keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes; beyond it hyper answers 431 and closes.
    pub max_header_bytes: usize,
    /// Connections open at once; beyond it new ones wait in the backlog.
    pub max_connections: usize,
    /// Connections open at once from one peer address (0: no cap); beyond
    /// it a new connection is answered 503 and closed.
    pub max_connections_per_ip: usize,
    /// Loopback peers are a proxy on this host (nginx): no per-address cap.
    pub exempt_loopback: bool,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            exempt_loopback: true,
        }
    }
}

/// State shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub shop: Shop,
    pub tokens: auth::TokenVerifier,
    pub admin_token: Option<Secret>,
    pub metrics: PrometheusHandle,
    pub limiter: ratelimit::Limiter,
    pub pages: pages::PageCache,
    pub settings: ServeSettings,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

async fn overloaded(err: tower::BoxError) -> axum::response::Response {
    if err.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("flashsale_requests_timed_out_total").increment(1);
        Error::Unavailable("request timed out".into()).into_response()
    } else {
        metrics::counter!("flashsale_requests_shed_total").increment(1);
        Error::Unavailable("overloaded".into()).into_response()
    }
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let request_timeout = state.shop.redis.failover_wait() + Duration::from_secs(5);
    let mut app = Router::new()
        .route("/", get(pages::index))
        .route("/p/{sku}", get(pages::product))
        .route("/orders", get(pages::orders))
        .route("/api/products", get(api::products))
        .route("/api/products/{sku}", get(api::product))
        .route("/api/sales/{sku}/purchase", post(api::purchase))
        .route("/api/orders/{order_id}", get(api::order))
        .route("/api/me/orders", get(api::my_orders))
        .route("/admin/sales", post(api::create_sale))
        .route("/admin/sales/{sku}/audit", get(api::audit))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics));
    if state.settings.dev_login {
        app = app.route(
            "/dev/login",
            get(pages::dev_login_form).post(pages::dev_login),
        );
    }
    let statics = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(middleware::static_guard))
        .service(pages::static_files(&state.settings.static_dir));
    app.nest_service("/static", statics)
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::origin_and_ip_guard,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                // One semaphore for the whole router: `Router::layer` applies
                // a layer to every route on its own, and a plain
                // `concurrency_limit` would give each route its own limit.
                .layer(GlobalConcurrencyLimitLayer::new(
                    state.settings.max_in_flight,
                ))
                .timeout(request_timeout),
        )
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

/// A built, bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    addr: SocketAddr,
    limits: ConnLimits,
}

impl Application {
    /// Connects to Redis (waiting for a master) and binds the listener.
    pub async fn build(settings: ServeSettings) -> Result<Application, StartError> {
        let redis = Redis::connect(settings.redis.clone())
            .await
            .map_err(|e| StartError(format!("redis: {e}")))?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| StartError(format!("FLASHSALE_LISTEN {}: {e}", settings.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError(format!("listener: {e}")))?;
        let shop = Shop::new(redis.clone(), settings.catalog_cache);
        let state = AppState(Arc::new(AppInner {
            tokens: auth::TokenVerifier::new(&settings.jwt_secret),
            admin_token: settings.admin_token.clone(),
            metrics: crate::telemetry::metrics_handle(),
            limiter: ratelimit::Limiter::new(
                redis,
                settings.rate_limit_per_shopper,
                settings.rate_limit_per_ip,
            ),
            pages: pages::PageCache::default(),
            shop,
            settings,
        }));
        Ok(Application {
            listener,
            router: router(state),
            addr,
            limits: ConnLimits::default(),
        })
    }

    /// Replaces the connection limits (defaults: [`ConnLimits::default`]).
    pub fn with_conn_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Application {
            listener,
            router,
            addr,
            limits,
        } = self;
        tracing::info!(%addr, "flashsale serve listening");
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes.max(1024));
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let per_ip = Arc::new(PerIp::default());
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                biased;
                () = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                },
            };
            let Some(held) = per_ip.admit(peer.ip(), &limits) else {
                refuse(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = router.clone().map_request(
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                },
            );
            let conn = graceful.watch(
                http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
            );
            metrics::gauge!("flashsale_connections_open").increment(1.0);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                metrics::gauge!("flashsale_connections_open").decrement(1.0);
                drop(held);
                drop(slot);
            });
        }
        drop(listener);
        // Idle connections close now, busy ones after their response; a
        // half-sent head is bounded by the header-read timeout.
        let drain = limits.header_read_timeout + Duration::from_secs(30);
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: connections still open after {drain:?}; leaving them");
        }
        Ok(())
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One admitted connection's share of its address's count.
struct Held(Option<(Arc<PerIp>, IpAddr)>);

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &ConnLimits) -> Option<Held> {
        if limits.max_connections_per_ip == 0 || (limits.exempt_loopback && ip.is_loopback()) {
            return Some(Held(None));
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(Held(Some((self.clone(), ip))))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.0.take() {
            let mut map = per_ip.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Answers a connection over its address's cap with a 503 (best effort,
/// without waiting) and closes it.
fn refuse(stream: TcpStream) {
    metrics::counter!("flashsale_connections_refused_total").increment(1);
    const BODY: &str = r#"{"error":"unavailable","message":"too many connections from this address; retry shortly"}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(resp.as_bytes());
}

/// An accept error: per-connection ones are skipped; others (out of file
/// descriptors) pause the loop briefly instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A start-up failure, in one line without secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);
