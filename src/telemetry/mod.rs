//! Logging and the Prometheus recorder, set up once per process: the
//! recorder with every metric described ([`catalog`]), the process metrics
//! (`process_*`, refreshed with the recorder's upkeep) and
//! `flashsale_build_info`. Owns no metric of the domain: the code that
//! counts something records it; this module only names and describes it.

pub mod catalog;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use catalog::Process;

/// The commit this binary was built from (`git rev-parse` at build time),
/// or `unknown` when it was built outside a git checkout.
pub const COMMIT: &str = match option_env!("BUILD_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Structured logs to stderr in `format` (`FLASHSALE_LOG_FORMAT`, checked
/// by the caller's settings); `RUST_LOG` filters (default `info`). See
/// [`crate::logs`].
pub fn init_tracing(format: crate::logs::LogFormat) {
    crate::logs::init(format);
}

/// The process-wide recorder (see [`metrics_handle`]) with the unlabelled
/// counters of `process` registered at 0.
pub fn metrics_handle_for(process: Process) -> PrometheusHandle {
    let handle = metrics_handle();
    catalog::register(process);
    handle
}

/// The process-wide Prometheus recorder (installed on first use), every
/// metric of the catalog described, the process metrics collected and
/// `flashsale_build_info` set.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests run several
            // apps in one process); the handle still renders this one.
            let _ = metrics::set_global_recorder(recorder);
            catalog::describe_all();
            metrics::gauge!(
                "flashsale_build_info",
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => COMMIT
            )
            .set(1.0);
            let process = metrics_process::Collector::default();
            process.describe();
            process.collect();
            // Histogram samples are only folded into buckets on upkeep (or a
            // scrape); without it an unscraped process grows per request.
            // The process metrics are read on the same beat (a few reads
            // of /proc).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        process.collect();
                        upkeep.run_upkeep();
                    }
                });
            handle
        })
        .clone()
}
