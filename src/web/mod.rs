//! The HTTP service: router, shared state, middleware, start-up and shutdown.
//!
//! [`Application::build`] connects to Redis and binds the listener (port 0
//! in tests); [`Application::run_until`] serves until the given future
//! completes, then drains in-flight requests. Overload is shed, not queued:
//! a global concurrency limit with `load_shed` answers 503 at once when every
//! slot is taken, and a timeout bounds every request.

pub mod api;
pub mod auth;
pub mod error;
mod middleware;
pub mod pages;
pub mod ratelimit;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::config::{Secret, ServeSettings};
use crate::error::Error;
use crate::redis::Redis;
use crate::sale::Shop;

/// Largest request body accepted anywhere.
pub const MAX_BODY: usize = 16 * 1024;

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
    app.nest_service("/static", pages::static_files(&state.settings.static_dir))
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::origin_and_ip_guard,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .concurrency_limit(state.settings.max_in_flight)
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
        })
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
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}

/// A start-up failure, in one line without secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);
