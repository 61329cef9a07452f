//! Logging and the Prometheus recorder, set up once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Structured logs to stderr in `format` (`FLASHSALE_LOG_FORMAT`, checked
/// by the caller's settings); `RUST_LOG` filters (default `info`). See
/// [`crate::logs`].
pub fn init_tracing(format: crate::logs::LogFormat) {
    crate::logs::init(format);
}

/// The process-wide Prometheus recorder (installed on first use).
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
            // Histogram samples are only folded into buckets on upkeep (or a
            // scrape); without it an unscraped process grows per request.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            handle
        })
        .clone()
}
