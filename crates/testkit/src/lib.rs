//! The test kit of flashsale, shared by the integration tests (`tests/it`),
//! the failover harness and the load tests (`loadtest/`), so the three start
//! Redis the same way and run what `deploy/` ships.
//!
//! - [`redis_group`]: a throw-away Redis Sentinel group on free loopback
//!   ports, started by `scripts/redis-group.sh` (the demo's own script),
//!   that a test can kill, freeze, restart and fail over, and that stops
//!   every process it started when dropped, also when a test panics.
//! - [`procs`]: the service's processes pointed at a group; the product's
//!   own hold, for harnesses that run the shipped settings.
//! - [`orders`]: order statuses read from the master; waiting for
//!   `confirmed`.
//! - [`switch`]: when the Sentinels announced a switch.
//! - [`metrics`]: reading `/metrics`.
//! - [`postgres`]: a throw-away PostgreSQL server (the order ledger's).
//! - [`netns`]: hosts in network namespaces on a bridge, and cuts between
//!   them (partitions).

pub mod metrics;
pub mod netns;
pub mod orders;
pub mod postgres;
pub mod procs;
pub mod redis_cluster;
pub mod redis_group;
pub mod switch;
