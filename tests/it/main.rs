//! The one integration-test binary: real Redis Sentinel groups, real HTTP.

mod api;
mod browser;
mod cluster;
mod cluster_kit;
mod deploy;
mod docs;
mod expiry;
mod export;
mod failover;
mod full;
mod healing;
mod hostile;
mod identity;
mod ledger;
mod lifecycle;
mod openapi;
mod operator;
mod partition;
mod payment;
mod prices;
mod proxies;
mod retention;
mod settings;
mod support;
mod tls;
mod worker;
