//! `flashsale-worker`: consumes the order streams (see `flashsale::worker`).
//! With `FLASHSALE_LEDGER_URL` it applies the ledger's migrations at
//! start-up and records every order there before confirming it. With
//! `FLASHSALE_WORKER_METRICS` it serves, on that address, `/metrics`,
//! `/healthz` (200 while the process runs) and `/readyz` (200 when the
//! current master, and the ledger if configured, answer; else 503 with the
//! API's error body), and probes Redis every 5 s for the gauges alerts
//! need (`flashsale::worker::probe`).
//! Exit codes: 0 stopped cleanly (SIGTERM/SIGINT, the batch in hand
//! finished); 1 Redis or the ledger unreachable at start (or a migration
//! failed), or the graceful stop timed out; 78 a configuration error;
//! 130/143 a second signal during the stop.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use flashsale::cli::{Failure, exit, shutdown_signal};
use flashsale::config::WorkerArgs;
use flashsale::ledger::Ledger;
use flashsale::redis::Redis;
use flashsale::web::error::ApiError;
use flashsale::worker::probe::{readiness, run_probe};
use flashsale::worker::{Worker, run_all};
use tokio::sync::Notify;

/// How often the probe reads the gauges of Redis and the backlog.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What `/readyz` checks, once connected (before: not ready).
type Ready = Arc<OnceLock<(Redis, Option<Ledger>)>>;

/// The worker's HTTP endpoints: metrics, liveness, readiness.
fn router(handle: metrics_exporter_prometheus::PrometheusHandle, ready: Ready) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        h.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(|| async { no_store(Json(serde_json::json!({"status": "ok"})).into_response()) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    let Some((redis, ledger)) = ready.get() else {
                        return ApiError::unavailable("starting: not connected yet")
                            .into_response();
                    };
                    match readiness(redis, ledger.as_ref()).await {
                        Ok(()) => {
                            no_store(Json(serde_json::json!({"status": "ready"})).into_response())
                        }
                        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
                    }
                }
            }),
        )
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// mimalloc: glibc's malloc/free were 12–16 % of the server's CPU under
/// load (loadtest/README.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flashsale-worker",
    version,
    about = "Consumes the flashsale order streams",
    after_help = "Exit codes: 0 stopped cleanly; 1 Redis or the ledger unreachable at start (or a ledger migration failed), or the graceful stop timed out; 78 configuration error; 130/143 a second signal during the stop."
)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

async fn main_inner() -> Result<ExitCode, Failure> {
    let settings = Cli::parse().args.settings()?;
    flashsale::telemetry::init_tracing(settings.log_format);
    let handle = flashsale::telemetry::metrics_handle_for(flashsale::telemetry::Process::Worker);
    let ready: Ready = Arc::new(OnceLock::new());
    if let Some(addr) = settings.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("FLASHSALE_WORKER_METRICS {addr}: {e}"))?;
        let app = router(handle, ready.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    // The ledger first: its schema must be in place before anything is
    // confirmed, and an unreachable ledger at start is an error (exit 1,
    // the unit restarts); an outage later only delays confirmation.
    let ledger = match &settings.ledger {
        None => None,
        Some(s) => {
            let ledger = Ledger::connect(s, "flashsale-worker")
                .await
                .map_err(|e| format!("{} ({}): {e}", flashsale::ledger::VAR, s.describe()))?;
            let version = ledger
                .migrate()
                .await
                .map_err(|e| format!("{} ({}): {e}", flashsale::ledger::VAR, s.describe()))?;
            tracing::info!(
                ledger = ledger.describe(),
                schema = version,
                "order ledger ready"
            );
            Some(ledger)
        }
    };
    let redis = Redis::connect(settings.redis).await?;
    let _ = ready.set((redis.clone(), ledger.clone()));
    if settings.metrics_addr.is_some() {
        tokio::spawn(run_probe(redis.clone(), PROBE_EVERY));
    }
    let tuning = settings.tuning;
    let make = {
        let redis = redis.clone();
        move || {
            let worker = Worker::new(redis.clone(), tuning.clone());
            match &ledger {
                Some(l) => worker.with_ledger(l.clone()),
                None => worker,
            }
        }
    };
    let stop = Arc::new(Notify::new());
    let stopped = {
        let stop = stop.clone();
        async move { stop.notified().await }
    };
    let mut task = tokio::spawn(run_all(redis, make, stopped));
    tokio::select! {
        _ = &mut task => return Ok(ExitCode::SUCCESS),
        () = shutdown_signal() => {}
    }
    // `notify_one` keeps a permit if `run` is not waiting at this instant.
    stop.notify_one();
    tokio::select! {
        r = tokio::time::timeout(settings.shutdown_timeout, &mut task) => match r {
            Ok(_) => Ok(ExitCode::SUCCESS),
            Err(_) => Err(Failure::Other(
                "graceful stop timed out; the entries it held will be reclaimed".into(),
            )),
        },
        () = shutdown_signal() => Ok(ExitCode::from(143)),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    exit("flashsale-worker", main_inner().await)
}
