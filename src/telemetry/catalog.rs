//! The catalog of every metric the binaries emit: its name, kind, unit,
//! which process emits it and what it means (the `# HELP` line). Owns the
//! descriptions and the start-up registration (unlabelled counters at 0,
//! so alert rules see a counter before its first increment); it records no
//! value of its own and must not be consulted on a hot path. The process
//! metrics (`process_*`) are described by `metrics-process` itself.

use metrics::Unit;

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which binary emits a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// `flashsale serve`.
    Serve,
    /// `flashsale-worker`.
    Worker,
    /// Both (Redis connection counters, build info).
    Both,
}

/// One metric of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub process: Process,
    /// Whether the series carries labels (then it is not registered at 0:
    /// its labels come with its first value).
    pub labelled: bool,
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    process: Process,
    labelled: bool,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        process,
        labelled,
        help,
    }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};
use Process::{Both, Serve, Worker};

/// Every metric the binaries emit, except `process_*`.
pub const METRICS: &[Metric] = &[
    // Both binaries.
    m(
        "flashsale_build_info",
        G,
        Unit::Count,
        Both,
        true,
        "Always 1; the labels say which version and commit this process runs.",
    ),
    m(
        "flashsale_master_switches_total",
        C,
        Unit::Count,
        Both,
        false,
        "Master changes this process followed (a failover, planned or not).",
    ),
    m(
        "flashsale_redis_link_installs_total",
        C,
        Unit::Count,
        Both,
        false,
        "Master links built and installed; one per switch is normal.",
    ),
    m(
        "flashsale_redis_not_writable_total",
        C,
        Unit::Count,
        Both,
        false,
        "NOREPLICAS/LOADING answers retried on the same link.",
    ),
    m(
        "flashsale_redis_full_total",
        C,
        Unit::Count,
        Both,
        false,
        "Writes refused because the master is out of memory (maxmemory reached).",
    ),
    // flashsale serve.
    m(
        "flashsale_http_requests_total",
        C,
        Unit::Count,
        Serve,
        true,
        "HTTP requests answered, by route template and status.",
    ),
    m(
        "flashsale_http_request_duration_seconds",
        H,
        Unit::Seconds,
        Serve,
        true,
        "Time to answer an HTTP request, by route template.",
    ),
    m(
        "flashsale_purchases_total",
        C,
        Unit::Count,
        Serve,
        true,
        "Purchase attempts by outcome (accepted, sold_out, unavailable, ...).",
    ),
    m(
        "flashsale_wait_shortfalls_total",
        C,
        Unit::Count,
        Serve,
        false,
        "WAIT rounds that did not reach the required replicas (purchases answered 503).",
    ),
    m(
        "flashsale_ack_round_seconds",
        H,
        Unit::Seconds,
        Serve,
        false,
        "Duration of one group-committed INCR+WAIT round: the replication wait of a purchase.",
    ),
    m(
        "flashsale_required_replica_acks",
        G,
        Unit::Count,
        Serve,
        false,
        "Replicas a purchase must reach before it is acknowledged (FLASHSALE_REPLICA_ACKS now).",
    ),
    m(
        "flashsale_rate_limited_total",
        C,
        Unit::Count,
        Serve,
        true,
        "Requests refused 429 by a rate limit, by scope (ip, shopper).",
    ),
    m(
        "flashsale_requests_timed_out_total",
        C,
        Unit::Count,
        Serve,
        false,
        "Requests that ran past their time limit (answered 503).",
    ),
    m(
        "flashsale_requests_shed_total",
        C,
        Unit::Count,
        Serve,
        false,
        "Requests shed because too many were in flight (answered 503).",
    ),
    m(
        "flashsale_connections_open",
        G,
        Unit::Count,
        Serve,
        false,
        "Client connections open now.",
    ),
    m(
        "flashsale_connections_refused_total",
        C,
        Unit::Count,
        Serve,
        false,
        "Connections closed at accept: over the total or per-address limit.",
    ),
    m(
        "flashsale_header_timeouts_total",
        C,
        Unit::Count,
        Serve,
        false,
        "Connections closed because request headers did not arrive in time.",
    ),
    m(
        "flashsale_orders_paid_total",
        C,
        Unit::Count,
        Serve,
        false,
        "Orders paid through the payment callback.",
    ),
    m(
        "flashsale_orders_cancelled_total",
        C,
        Unit::Count,
        Serve,
        false,
        "Orders cancelled by their shopper.",
    ),
    // flashsale-worker.
    m(
        "flashsale_redis_master_up",
        G,
        Unit::Count,
        Worker,
        true,
        "1 when the current master of the shard answers PING, else 0 (probed every 5 s).",
    ),
    m(
        "flashsale_redis_used_memory_bytes",
        G,
        Unit::Bytes,
        Worker,
        true,
        "used_memory of the shard's master (INFO memory, every 5 s).",
    ),
    m(
        "flashsale_redis_maxmemory_bytes",
        G,
        Unit::Bytes,
        Worker,
        true,
        "maxmemory of the shard's master (0: no limit).",
    ),
    m(
        "flashsale_worker_lag",
        G,
        Unit::Count,
        Worker,
        true,
        "Order-stream entries not processed yet (unread plus pending) on the shard.",
    ),
    m(
        "flashsale_worker_oldest_entry_age_seconds",
        G,
        Unit::Seconds,
        Worker,
        true,
        "Age of the oldest order-stream entry not processed yet on the shard (0: none).",
    ),
    m(
        "flashsale_worker_dead_letters",
        G,
        Unit::Count,
        Worker,
        true,
        "Entries in the dead-letter streams of the shard's sales now.",
    ),
    m(
        "flashsale_worker_sales",
        G,
        Unit::Count,
        Worker,
        false,
        "Sales this process works on (not retired).",
    ),
    m(
        "flashsale_worker_processed_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Orders confirmed.",
    ),
    m(
        "flashsale_worker_duplicates_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Entries delivered again for an order already confirmed (acknowledged, not counted twice).",
    ),
    m(
        "flashsale_worker_events_total",
        C,
        Unit::Count,
        Worker,
        true,
        "Event entries (paid, expired, cancelled) acknowledged, by kind.",
    ),
    m(
        "flashsale_worker_reclaimed_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Idle pending entries taken over from another consumer.",
    ),
    m(
        "flashsale_worker_dead_lettered_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Entries moved to a dead-letter stream after too many deliveries.",
    ),
    m(
        "flashsale_worker_requeued_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Queued orders whose entry was lost, queued again by the sweep.",
    ),
    m(
        "flashsale_worker_expired_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Unpaid orders expired past their payment deadline.",
    ),
    m(
        "flashsale_worker_purged_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Ended sales purged from Redis.",
    ),
    m(
        "flashsale_worker_batch_seconds",
        H,
        Unit::Seconds,
        Worker,
        false,
        "Time to confirm one batch of entries.",
    ),
    m(
        "flashsale_ledger_up",
        G,
        Unit::Count,
        Worker,
        false,
        "1 while the order ledger answers, 0 during an outage (confirmations wait).",
    ),
    m(
        "flashsale_ledger_errors_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Failed ledger calls.",
    ),
    m(
        "flashsale_ledger_recorded_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Orders recorded in the ledger.",
    ),
    m(
        "flashsale_ledger_ended_total",
        C,
        Unit::Count,
        Worker,
        false,
        "Order ends (paid, expired, cancelled) recorded in the ledger.",
    ),
];

/// The catalog entry of `name`.
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// Describes every metric to the installed recorder (the `# HELP` lines).
pub fn describe_all() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.unit, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.unit, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.unit, m.help),
        }
    }
}

/// Registers the unlabelled counters `process` emits at 0, so a scrape
/// shows them (and `increase()` sees their first step) before anything
/// happened. Gauges are left to their owners: a 0 there would be a claim
/// (`flashsale_ledger_up` 0 is an outage).
pub fn register(process: Process) {
    for m in METRICS {
        if m.kind == Kind::Counter
            && !m.labelled
            && (m.process == process || m.process == Process::Both)
        {
            metrics::counter!(m.name).increment(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(
                m.name.starts_with("flashsale_")
                    && m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty() && !m.help.contains('\n'), "{}", m.name);
        }
    }
}
