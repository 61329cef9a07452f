//! flashsale: a flash-sale backend on a Redis Sentinel group.
//!
//! Layout:
//! - [`config`]: settings from the environment and flags, validated once.
//! - [`redis`]: Sentinel discovery, the failover watcher, master and replica
//!   connections, group-committed `WAIT`, and the Function library.
//! - [`sale`]: the domain — catalog, purchase, orders, audit, dead letters —
//!   and its errors. No HTTP here.
//! - [`web`]: the axum router, handlers, pages, auth and metrics, and the
//!   web error with its mapping of every error to HTTP.
//! - [`worker`]: the order-stream consumer behind `flashsale-worker`.
//! - [`logs`]: the log format and subscriber, the shopper pseudonym of
//!   access lines.
//! - [`telemetry`]: logging set-up and the Prometheus recorder.
//! - [`cli`]: what the binaries share — failure reporting, exit codes, the
//!   shutdown signal.

pub mod cli;
pub mod config;
pub mod ledger;
pub mod logs;
pub mod redis;
pub mod sale;
pub mod telemetry;
pub mod web;
pub mod worker;
