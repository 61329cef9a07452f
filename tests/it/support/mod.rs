//! Test support: Redis Sentinel groups, in-process apps on port 0, workers.

pub mod app;
pub mod chromium;
pub mod cluster;
pub mod nginx;
pub use flashsale_testkit::redis_group;
