//! The settings of `flashsale serve`: listen address, shopper and admin
//! secrets, rate limits, connection and concurrency caps, page assets.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, RedisArgs, RedisSettings, Secret, invalid, secret};

/// Settings of `flashsale serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Address to listen on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// HS256 key of shopper tokens.
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 key of shopper tokens.
    #[arg(long, env = "FLASHSALE_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<String>,
    /// Bearer token of the /admin API (the admin API is off when unset).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the bearer token of the /admin API.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<String>,
    /// Purchase attempts per second per shopper, shared by all instances (0 = off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_SHOPPER", default_value_t = 10)]
    pub rate_limit_per_shopper: u32,
    /// Requests per second per client address on /api (0 = off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_IP", default_value_t = 0)]
    pub rate_limit_per_ip: u32,
    /// Requests handled at once before new ones are shed with 503.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Connections open at once; beyond it new ones wait in the listen backlog.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Connections open at once from one client address (0 = no cap);
    /// loopback peers (a proxy on this host) are exempt.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Directory of the page assets (CSS, JS, images).
    #[arg(long, env = "FLASHSALE_STATIC_DIR", default_value = "static")]
    pub static_dir: String,
    /// How long catalog reads may be served from the in-process cache, in milliseconds.
    #[arg(long, env = "FLASHSALE_CATALOG_CACHE_MS", default_value_t = 200)]
    pub catalog_cache_ms: u64,
    /// Adds /dev/login, a page that sets a shopper cookie for a typed-in name (development only).
    #[arg(long, env = "FLASHSALE_DEV_LOGIN", default_value_t = false)]
    pub dev_login: bool,
    /// Mark the shopper cookie `Secure` (turn off only for plain-http development).
    #[arg(long, env = "FLASHSALE_COOKIE_SECURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,
}

/// Validated settings of `flashsale serve`.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    pub redis: RedisSettings,
    pub listen: SocketAddr,
    pub jwt_secret: Secret,
    pub admin_token: Option<Secret>,
    pub rate_limit_per_shopper: u32,
    pub rate_limit_per_ip: u32,
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub static_dir: String,
    pub catalog_cache: Duration,
    pub dev_login: bool,
    pub cookie_secure: bool,
}

impl ServeArgs {
    pub fn settings(&self) -> Result<ServeSettings, ConfigError> {
        let redis = self.redis.settings()?;
        let listen = self.listen.parse().map_err(|_| {
            invalid(
                "FLASHSALE_LISTEN",
                format!("`{}` is not an address like 127.0.0.1:8080", self.listen),
            )
        })?;
        let jwt_secret = secret(
            "FLASHSALE_JWT_SECRET",
            self.jwt_secret.clone(),
            "FLASHSALE_JWT_SECRET_FILE",
            self.jwt_secret_file.clone(),
        )?
        .ok_or_else(|| invalid("FLASHSALE_JWT_SECRET", "required by `flashsale serve`"))?;
        if jwt_secret.expose().len() < 16 {
            return Err(invalid(
                "FLASHSALE_JWT_SECRET",
                "must be at least 16 bytes long",
            ));
        }
        let admin_token = secret(
            "FLASHSALE_ADMIN_TOKEN",
            self.admin_token.clone(),
            "FLASHSALE_ADMIN_TOKEN_FILE",
            self.admin_token_file.clone(),
        )?;
        if self.max_in_flight == 0 {
            return Err(invalid("FLASHSALE_MAX_IN_FLIGHT", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("FLASHSALE_MAX_CONNECTIONS", "must be at least 1"));
        }
        Ok(ServeSettings {
            redis,
            listen,
            jwt_secret,
            admin_token,
            rate_limit_per_shopper: self.rate_limit_per_shopper,
            rate_limit_per_ip: self.rate_limit_per_ip,
            max_in_flight: self.max_in_flight,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            static_dir: self.static_dir.clone(),
            catalog_cache: Duration::from_millis(self.catalog_cache_ms.min(10_000)),
            dev_login: self.dev_login,
            cookie_secure: self.cookie_secure,
        })
    }
}
