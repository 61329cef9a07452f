//! `flashsale-worker`: consumes the order streams (see `flashsale::worker`).
//! With `FLASHSALE_LEDGER_URL` it applies the ledger's migrations at
//! start-up and records every order there before confirming it.
//! Exit codes: 0 stopped cleanly (SIGTERM/SIGINT, the batch in hand
//! finished); 1 Redis or the ledger unreachable at start (or a migration
//! failed), or the graceful stop timed out; 78 a configuration error;
//! 130/143 a second signal during the stop.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use flashsale::cli::{Failure, exit, shutdown_signal};
use flashsale::config::WorkerArgs;
use flashsale::ledger::Ledger;
use flashsale::redis::Redis;
use flashsale::worker::{Worker, run_all};
use tokio::sync::Notify;

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
    let handle = flashsale::telemetry::metrics_handle();
    if let Some(addr) = settings.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("FLASHSALE_WORKER_METRICS {addr}: {e}"))?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let h = handle.clone();
                async move { h.render() }
            }),
        );
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
