//! The service's own processes (`flashsale serve`, `flashsale-worker`)
//! pointed at a test group, and the product's default settings where a
//! harness must run them as shipped.

use std::time::Duration;

use crate::redis_group::RedisGroup;

/// Sets the Redis variables of `group` (Sentinels, password, master name)
/// and the key prefix on a command that starts a flashsale binary.
pub fn redis_env<'a>(
    cmd: &'a mut tokio::process::Command,
    group: &RedisGroup,
    prefix: &str,
) -> &'a mut tokio::process::Command {
    cmd.env("FLASHSALE_REDIS_SENTINELS", group.sentinels_env())
        .env("FLASHSALE_REDIS_PASSWORD", group.password())
        .env("FLASHSALE_REDIS_MASTER_NAME", group.master_name())
        .env("FLASHSALE_KEY_PREFIX", prefix)
}

/// The hold `flashsale serve` runs with unless told otherwise
/// (`FLASHSALE_FAILOVER_WAIT_MS` as the product parses it from the
/// environment of this process), for harnesses that must run the shipped
/// settings.
pub fn shipped_failover_wait() -> Duration {
    #[derive(clap::Parser)]
    struct Product {
        #[command(flatten)]
        redis: flashsale::config::RedisArgs,
    }
    let p = <Product as clap::Parser>::try_parse_from(["flashsale"])
        .unwrap_or_else(|e| panic!("the product's Redis settings do not parse: {e}"));
    Duration::from_millis(p.redis.failover_wait_ms)
}
