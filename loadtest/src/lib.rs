//! Shared pieces of flashsale's load tests, benchmarks and failover harness:
//! the test kit's Sentinel group (the same code path as
//! `scripts/redis-group.sh`) and small helpers.

pub use flashsale_testkit::redis_group;

pub mod bench;
