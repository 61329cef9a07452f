//! The one integration-test binary: real Redis Sentinel groups, real HTTP.

mod api;
mod browser;
mod deploy;
mod failover;
mod hostile;
mod support;
mod worker;
