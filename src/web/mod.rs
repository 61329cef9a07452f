//! The HTTP service: router, shared state, middleware, start-up and shutdown.
//! Every handler, extractor and middleware fails with an [`ApiError`], whose
//! mapping to statuses, error codes and headers lives in [`error`].
//!
//! This module owns the list of routes. The documented ones are built in one
//! place, `documented_routes`, with `utoipa-axum`: each `routes!` call
//! routes its handlers and adds their `#[utoipa::path]` operations to the
//! description, so a route there cannot exist without being described.
//! [`router`] takes the routers from that build and adds only what the
//! description does not cover: the development sign-in page, `/static`, the
//! fallbacks and the layers. [`openapi`] serves the description of the same
//! build.
//!
//! [`Application::build`] connects to Redis and binds the listener (port 0
//! in tests); [`Application::run_until`] serves until the given future
//! completes, then drains in-flight requests. Overload is shed, not queued:
//! a global concurrency limit with `load_shed` answers 503 at once when every
//! slot is taken, and a timeout bounds every request.
//!
//! Every response carries `X-Request-Id` (a trusted proxy's, else a new
//! UUID) and everything logged while handling a request is in its span
//! (see [`middleware`]).
//!
//! Connections are served by our own accept loop ([`conn`]) rather than
//! `axum::serve`, which has no header-read timeout: see [`ConnLimits`]. A
//! request body must arrive within [`BODY_READ_TIMEOUT`].

pub mod api;
pub mod auth;
pub mod conn;
pub mod cors;
pub mod error;
pub mod keys;
pub mod live;
mod middleware;
pub mod openapi;
pub mod pages;
pub mod proxies;
pub mod ratelimit;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::ApiError;
use crate::config::{Secret, ServeSettings};
use crate::redis::Redis;
use crate::sale::Shop;

pub use conn::ConnLimits;

/// Largest request body accepted anywhere.
pub const MAX_BODY: usize = 16 * 1024;

/// How long a request body (at most [`MAX_BODY`]) may take to arrive once
/// the head is in; a client that trickles it gets 400 and frees its slot of
/// the concurrency limit.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub shop: Shop,
    pub tokens: auth::TokenVerifier,
    /// The CORS layer of `/api`, when origins are allowed.
    pub cors: Option<tower_http::cors::CorsLayer>,
    pub admin_token: Option<Secret>,
    pub metrics: PrometheusHandle,
    pub limiter: ratelimit::Limiter,
    pub pages: pages::PageCache,
    pub settings: ServeSettings,
    pub(crate) http_metrics: middleware::HttpMetrics,
    pub(crate) purchase_outcomes: api::PurchaseOutcomes,
    /// The live sale view's cache and this instance's 503 count.
    pub(crate) live: Arc<live::Live>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

async fn overloaded(live: Arc<live::Live>, err: tower::BoxError) -> axum::response::Response {
    live.overloaded();
    if err.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("flashsale_requests_timed_out_total").increment(1);
        ApiError::unavailable("request timed out").into_response()
    } else {
        metrics::counter!("flashsale_requests_shed_total").increment(1);
        ApiError::unavailable("overloaded").into_response()
    }
}

/// The documented routes and their description, from one list.
pub(crate) struct DocumentedRoutes {
    /// Routes behind the concurrency limit and the request timeout.
    pub limited: Router<AppState>,
    /// Routes outside them: liveness and metrics answer however loaded the
    /// service is.
    pub ops: Router<AppState>,
    /// The OpenAPI description of exactly these routes (plus what
    /// [`openapi::ApiDoc`] holds: info, tags, components).
    pub description: utoipa::openapi::OpenApi,
}

/// Every documented route, built once per call: each `routes!` routes its
/// handlers at the path of their `#[utoipa::path]` and adds their operations
/// to the description. Handlers that share a path go in one `routes!`: it
/// routes every handler it is given at every path it names, so two paths in
/// one call would answer each other's methods (the integration test's 405
/// check would fail).
pub(crate) fn documented_routes() -> DocumentedRoutes {
    let (limited, description) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(pages::index))
        .routes(routes!(pages::product))
        .routes(routes!(pages::orders))
        .routes(routes!(api::products))
        .routes(routes!(api::product))
        .routes(routes!(api::purchase))
        .routes(routes!(api::order))
        .routes(routes!(api::cancel_order))
        .routes(routes!(api::pay_order))
        .routes(routes!(api::my_orders))
        .routes(routes!(api::create_sale, api::admin_sales))
        .routes(routes!(api::admin_sale, api::update_sale))
        .routes(routes!(api::pause_sale))
        .routes(routes!(api::resume_sale))
        .routes(routes!(api::end_sale))
        .routes(routes!(api::audit))
        .routes(routes!(live::page))
        .routes(routes!(live::snapshot))
        .routes(routes!(openapi::serve))
        .routes(routes!(api::readyz))
        .split_for_parts();
    // Liveness and metrics answer however loaded the service is: they sit
    // outside the concurrency limit (the API promises /healthz is 200 while
    // the process runs). /readyz is shed like the rest: an instance past its
    // limit is not ready for more.
    let (ops, description) = OpenApiRouter::with_openapi(description)
        .routes(routes!(api::healthz))
        .routes(routes!(api::metrics))
        .split_for_parts();
    DocumentedRoutes {
        limited,
        ops,
        description,
    }
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let request_timeout = state.shop.redis.failover_wait() + Duration::from_secs(5);
    // The description these routes come with is the one `openapi::serve`
    // answers with (built by the same function, once per process).
    let DocumentedRoutes { limited, ops, .. } = documented_routes();
    let mut app = limited;
    let ops = ops.method_not_allowed_fallback(middleware::method_not_allowed);
    // The development pages are deliberately not in the description: they
    // exist only with `--dev-login` (the payment one also needs the payment
    // step), are no part of the API, and the description is the same for
    // every instance.
    if state.settings.dev_login {
        app = app.route(
            "/dev/login",
            get(pages::dev_login_form).post(pages::dev_login),
        );
    }
    if pages::dev_pay_enabled(&state.settings) {
        app = app.route("/dev/pay/{order_id}", axum::routing::post(pages::dev_pay));
    }
    let statics = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(middleware::static_guard))
        .service(pages::static_files(&state.settings.static_dir));
    let mut app = app
        .nest_service("/static", statics)
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed);
    if state.limiter.per_ip_enabled() {
        app = app.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::ip_limit,
        ));
    }
    let mut app = app
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new({
                    let live = state.live.clone();
                    move |err| overloaded(live.clone(), err)
                }))
                .load_shed()
                // One semaphore for the whole router: `Router::layer` applies
                // a layer to every route on its own, and a plain
                // `concurrency_limit` would give each route its own limit.
                .layer(GlobalConcurrencyLimitLayer::new(
                    state.settings.max_in_flight,
                ))
                .timeout(request_timeout),
        )
        .merge(ops);
    if state.cors.is_some() {
        app = app.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::api,
        ));
    }
    // Outermost last: the guard drops an id the peer may not choose, the
    // next layer makes one where none is left, the response gets it back,
    // and everything from `front` inward runs in the request's span. The
    // trace layer's own events are off: `front` writes the access line and
    // the one line of a 500.
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(middleware::request_span)
        .on_request(())
        .on_response(())
        .on_body_chunk(())
        .on_eos(())
        .on_failure(());
    app.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::front,
    ))
    .layer(trace)
    .layer(PropagateRequestIdLayer::x_request_id())
    .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
    .layer(middleware::RequestIdGuardLayer::new(
        state.settings.trusted_proxies.clone(),
    ))
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
        let tokens = auth::TokenVerifier::new(&settings.jwt)
            .map_err(|e| StartError(format!("shopper token keys: {e}")))?;
        let cors = (!settings.cors_origins.is_empty()).then(|| cors::layer(&settings.cors_origins));
        let shop = Shop::new(redis.clone(), settings.catalog_cache)
            .with_payment_window(settings.payment_window);
        let limits = ConnLimits {
            max_connections: settings.max_connections,
            max_connections_per_ip: settings.max_connections_per_ip,
            trusted: settings.trusted_proxies.clone(),
            ..ConnLimits::default()
        };
        if settings.trusted_proxies.trusts_everyone() {
            tracing::warn!(
                trusted_proxies = %settings.trusted_proxies,
                "every peer is a trusted proxy: any client can choose the address it is limited and logged as"
            );
        } else {
            tracing::info!(trusted_proxies = %settings.trusted_proxies, "client addresses forwarded by these peers are believed");
        }
        let state = AppState(Arc::new(AppInner {
            tokens,
            cors,
            admin_token: settings.admin_token.clone(),
            metrics: crate::telemetry::metrics_handle_for(crate::telemetry::Process::Serve),
            limiter: ratelimit::Limiter::new(
                redis,
                settings.rate_limit_per_shopper,
                settings.rate_limit_per_ip,
            ),
            pages: pages::PageCache::default(),
            http_metrics: middleware::HttpMetrics::register(),
            purchase_outcomes: api::PurchaseOutcomes::register(),
            live: Arc::new(live::Live::new(addr)),
            shop,
            settings,
        }));
        Ok(Application {
            listener,
            router: router(state),
            addr,
            limits,
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
        tracing::info!(addr = %self.addr, "flashsale serve listening");
        conn::serve(self.listener, self.router, self.limits, shutdown).await
    }
}

/// A start-up failure, in one line without secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);
