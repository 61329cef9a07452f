//! Rate limits shared by every server instance: token buckets kept in Redis
//! (`fs_rate` of the Function library), per shopper on the purchase route
//! and per client address on `/api`. A refusal is
//! [`ApiError::RateLimited`] with the seconds until a token is back.
//!
//! A limiter that cannot reach Redis lets the request through: the purchase
//! itself still needs the master, and a limiter must not turn a failover into
//! a wall of 429s.

use std::net::IpAddr;

use super::error::ApiError;
use crate::redis::Redis;
use crate::redis::functions::{self, RateReply};

pub struct Limiter {
    redis: Redis,
    per_shopper: u32,
    per_ip: u32,
}

impl Limiter {
    pub fn new(redis: Redis, per_shopper: u32, per_ip: u32) -> Self {
        Self {
            redis,
            per_shopper,
            per_ip,
        }
    }

    pub fn per_ip_enabled(&self) -> bool {
        self.per_ip > 0
    }

    async fn take(&self, scope: &str, id: &str, rate: u32) -> Result<(), ApiError> {
        if rate == 0 {
            return Ok(());
        }
        let cmd = functions::rate_call(&self.redis.keys().rate(scope, id), rate);
        let Some(link) = self.redis.current_master_for(&cmd) else {
            return Ok(());
        };
        match cmd.query_async::<RateReply>(&mut link.conn()).await {
            Ok(RateReply::Allowed) => Ok(()),
            Ok(RateReply::Wait { ms }) => {
                metrics::counter!("flashsale_rate_limited_total", "scope" => if scope == "ip" { "ip" } else { "shopper" }).increment(1);
                Err(ApiError::RateLimited {
                    retry_after_s: (ms.max(1) as u64).div_ceil(1000),
                })
            }
            Err(e) => {
                self.redis.report(&link, &e);
                tracing::debug!(error = %e, "rate limiter unavailable; request let through");
                Ok(())
            }
        }
    }

    /// One purchase attempt of `user`.
    pub async fn check_shopper(&self, user: &str) -> Result<(), ApiError> {
        self.take("shopper", user, self.per_shopper).await
    }

    /// One `/api` request from `ip`.
    pub async fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.per_ip == 0 {
            return Ok(());
        }
        self.take("ip", &ip.to_string(), self.per_ip).await
    }
}
