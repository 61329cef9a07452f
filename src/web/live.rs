//! The live sale view for the people running a sale: `GET /admin/live`
//! (the HTML page, drawn by `static/live.js`) and `GET /admin/live/snapshot`
//! (the JSON it polls every second, admin bearer).
//!
//! A snapshot has two kinds of numbers:
//! - **global**, from Redis ([`crate::sale::live`]): per running sale its
//!   stock, orders, orders queued and the age of the oldest, the workers'
//!   pending entries and lag, dead letters. Read from replicas, at most once
//!   per [`SNAPSHOT_TTL`] on this instance however many pages poll it
//!   (one read at a time: callers meanwhile wait for it and share it);
//! - **this instance's**, from its own counters: master switches it
//!   followed, purchases by outcome, 503s it answered (purchases answered
//!   `unavailable` plus requests shed or timed out), and the master it
//!   talks to now.
//!
//! Purchases per second are computed by the page from successive snapshots
//! (the growth of `orders` over the growth of `taken_ms`), so the server
//! keeps no history. This module owns the handlers, the cache and the
//! instance counters' reading; it never writes to Redis and is never on the
//! purchase path (the purchase handler only bumps an atomic).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use super::error::responses::{Unauthorized, Unavailable};
use crate::sale::live::{Board, LiveSale};
use crate::sale::{now_ms, rfc3339};

/// How long one instance reuses a snapshot of Redis.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(1);

/// The live view's state on this instance: the cached Redis snapshot, the
/// instance's name and its 503 count (what the purchase outcomes do not
/// already count).
pub struct Live {
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Board>)>>,
    /// Requests answered 503 because the service was overloaded (shed) or
    /// took too long (timed out).
    overloaded: AtomicU64,
    instance: String,
}

impl Live {
    /// `listen`: this instance's address, part of its name on the page.
    pub fn new(listen: std::net::SocketAddr) -> Self {
        Self {
            cache: tokio::sync::Mutex::new(None),
            overloaded: AtomicU64::new(0),
            instance: format!("{listen}/{:08x}", rand::random::<u32>()),
        }
    }

    /// Counts a request shed or timed out (a 503).
    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// The snapshot of Redis, read again when older than [`SNAPSHOT_TTL`].
    async fn board(&self, app: &AppState) -> Result<Arc<Board>, ApiError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, board)) = cache.as_ref()
            && at.elapsed() < SNAPSHOT_TTL
        {
            return Ok(board.clone());
        }
        let board =
            crate::sale::live::board(&app.shop.redis, &app.shop.catalog, crate::worker::GROUP)
                .await?;
        let board = Arc::new(board);
        *cache = Some((Instant::now(), board.clone()));
        Ok(board)
    }
}

/// The running sales added up.
#[derive(Serialize, utoipa::ToSchema)]
struct Totals {
    stock_total: i64,
    stock_left: i64,
    sold: i64,
    orders: i64,
    queued: i64,
    /// The oldest of the sales' `oldest_queued_ms`.
    oldest_queued_ms: Option<i64>,
    worker_pending: i64,
    /// Null when a sale's lag is unknown.
    worker_lag: Option<i64>,
    dead_letters: i64,
}

impl Totals {
    fn of(sales: &[LiveSale]) -> Self {
        Self {
            stock_total: sales.iter().map(|s| s.stock_total).sum(),
            stock_left: sales.iter().map(|s| s.stock_left).sum(),
            sold: sales.iter().map(|s| s.sold).sum(),
            orders: sales.iter().map(|s| s.orders).sum(),
            queued: sales.iter().map(|s| s.queued).sum(),
            oldest_queued_ms: sales.iter().filter_map(|s| s.oldest_queued_ms).max(),
            worker_pending: sales.iter().map(|s| s.worker_pending).sum(),
            worker_lag: sales.iter().map(|s| s.worker_lag).sum(),
            dead_letters: sales.iter().map(|s| s.dead_letters).sum(),
        }
    }
}

/// One outcome of this instance's purchases.
#[derive(Serialize, utoipa::ToSchema)]
struct OutcomeCount {
    /// `accepted` or the error code answered.
    outcome: &'static str,
    count: u64,
}

/// This instance's own counts, since it started.
#[derive(Serialize, utoipa::ToSchema)]
struct InstanceJson {
    /// This instance (its listen address and a random tag): behind a load
    /// balancer successive snapshots may come from different instances.
    id: String,
    /// The master (with a Redis Cluster: each shard's master) this instance
    /// writes to now; empty while it has none.
    masters: Vec<String>,
    /// Master switches this instance followed.
    master_switches: u64,
    /// 503s it answered: purchases answered `unavailable`, plus requests
    /// shed or timed out.
    unavailable: u64,
    /// Purchases it answered, by outcome (outcomes never seen left out).
    purchases: Vec<OutcomeCount>,
}

/// The live snapshot.
#[derive(Serialize, utoipa::ToSchema)]
struct Snapshot {
    /// This instance's clock now (RFC 3339).
    server_time: String,
    /// When the Redis numbers were read (epoch ms, this instance's clock);
    /// the same in snapshots served from the same cached read.
    taken_ms: i64,
    /// Open, paused and sold-out sales, by start time (global, from Redis).
    sales: Vec<LiveSale>,
    totals: Totals,
    instance: InstanceJson,
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The live numbers of the running sales (global, from Redis, at most
/// a second old) and this instance's own counters.
#[utoipa::path(get, path = "/admin/live/snapshot", tag = "admin",
    security(("admin" = [])),
    responses((status = 200, description = "The snapshot", body = Snapshot),
        Unauthorized,
        Unavailable))]
pub async fn snapshot(State(app): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let board = app.live.board(&app).await?;
    let redis = &app.shop.redis;
    let purchases: Vec<OutcomeCount> = app
        .purchase_outcomes
        .counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(outcome, count)| OutcomeCount { outcome, count })
        .collect();
    let unavailable = purchases
        .iter()
        .filter(|o| o.outcome == "unavailable")
        .map(|o| o.count)
        .sum::<u64>()
        + app.live.overloaded.load(Ordering::Relaxed);
    let body = Snapshot {
        server_time: rfc3339(now_ms()),
        taken_ms: board.taken_ms,
        totals: Totals::of(&board.sales),
        sales: board.sales.clone(),
        instance: InstanceJson {
            id: app.live.instance.clone(),
            masters: redis
                .shards()
                .iter()
                .filter_map(|s| s.current())
                .map(|l| l.addr.to_string())
                .collect(),
            master_switches: redis.switches(),
            unavailable,
            purchases,
        },
    };
    Ok(no_store(Json(body).into_response()))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_live.html")]
pub struct LivePage {
    pub v: String,
}

/// The live sale view (HTML): asks for the admin token once and draws the
/// snapshot it polls every second. 404 like every `/admin` route while the
/// admin API is off; the page itself holds nothing secret.
#[utoipa::path(get, path = "/admin/live", tag = "admin",
    responses((status = 200, description = "HTML", content_type = "text/html"),
        (status = 404, description = "`not_found`: the admin API is off", body = super::error::Problem, content_type = "application/problem+json")))]
pub async fn page(State(app): State<AppState>) -> Result<Response, ApiError> {
    if app.admin_token.is_none() {
        return Err(ApiError::not_found());
    }
    let page = LivePage {
        v: app.pages.asset_version(&app.settings.static_dir).to_owned(),
    };
    Ok(no_store(page.into_response()))
}
