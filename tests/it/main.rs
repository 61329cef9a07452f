//! The one integration-test binary: real Redis Sentinel groups, real HTTP.

mod api;
mod deploy;
mod browser;
mod failover;
mod hostile;
mod support;
mod worker;
