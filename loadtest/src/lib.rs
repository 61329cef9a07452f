//! Shared pieces of flashsale's load tests, benchmarks and failover harness:
//! the Sentinel group of the integration tests (the same code path as
//! `scripts/redis-group.sh`) and small helpers.

#[path = "../../tests/it/support/redis_group.rs"]
pub mod redis_group;

pub mod bench;
