//! The one integration-test binary: real Redis Sentinel groups, real HTTP.

mod api;
mod failover;
mod support;
mod worker;
