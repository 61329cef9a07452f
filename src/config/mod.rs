//! Settings from the environment and command-line flags, validated once at
//! start-up.
//!
//! Every setting of CONTRACT.md is both an environment variable and a flag
//! (clap reads the variable when the flag is absent). Validation turns the raw
//! strings into typed settings and fails with one line that names the
//! variable. Secrets are held in [`Secret`], whose `Debug` prints `***`, and
//! clap is told never to show their values in `--help`; each secret may also
//! be read from a file named by `<VARIABLE>_FILE`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// A configuration problem; the message names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {msg}")]
    Invalid { var: &'static str, msg: String },
}

fn invalid(var: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        msg: msg.into(),
    }
}

/// A secret string: never printed, logged or put in an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads a secret from the variable's value or from the file `<var>_FILE`
/// names (trailing newline removed). Both set is an error; so is an empty one.
pub fn secret(
    var: &'static str,
    value: Option<String>,
    file_var: &'static str,
    file: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(invalid(
            var,
            format!("set either {var} or {file_var}, not both"),
        )),
        (Some(v), None) if v.is_empty() => Err(invalid(var, "is empty")),
        (Some(v), None) => Ok(Some(Secret(v))),
        (None, Some(path)) => {
            let raw = std::fs::read_to_string(&path)
                .map_err(|e| invalid(file_var, format!("cannot read the file it names: {e}")))?;
            let v = raw.trim_end_matches(['\n', '\r']).to_owned();
            if v.is_empty() {
                return Err(invalid(file_var, "the file it names is empty"));
            }
            Ok(Some(Secret(v)))
        }
        (None, None) => Ok(None),
    }
}

/// How many replicas must hold a write before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaAcks {
    /// Every replica the Sentinels consider up, and at least one.
    All,
    /// A fixed number (0 turns WAIT off).
    Count(usize),
}

/// Where the data lives.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    Sentinels {
        addrs: Vec<(String, u16)>,
        master_name: String,
        sentinel_password: Option<Secret>,
    },
    /// One plain node (development only): no failover, no replicas.
    Url(String),
}

/// Validated Redis settings shared by the server and the worker.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub password: Option<Secret>,
    pub key_prefix: String,
    /// Response timeout of one command on the master or a replica.
    pub timeout: Duration,
    /// How long an operation waits for a new master before giving up.
    pub failover_wait: Duration,
    pub replica_acks: ReplicaAcks,
    /// How long one WAIT may block before it counts as a shortfall.
    pub wait_timeout: Duration,
    /// Multiplexed connections to the master used for Function calls.
    pub write_connections: usize,
    /// Period of the Sentinel polling backstop.
    pub poll_interval: Duration,
}

/// Redis flags and variables, shared by every binary (`#[command(flatten)]`).
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Sentinels as host:port,host:port,...
    #[arg(long, env = "FLASHSALE_REDIS_SENTINELS")]
    pub redis_sentinels: Option<String>,
    /// Name of the master the Sentinels monitor.
    #[arg(long, env = "FLASHSALE_REDIS_MASTER_NAME", default_value = "mymaster")]
    pub redis_master_name: String,
    /// Password of the data nodes.
    #[arg(long, env = "FLASHSALE_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// File holding the password of the data nodes.
    #[arg(long, env = "FLASHSALE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<String>,
    /// Password of the Sentinels, if they have one.
    #[arg(long, env = "FLASHSALE_SENTINEL_PASSWORD", hide_env_values = true)]
    pub sentinel_password: Option<String>,
    /// File holding the password of the Sentinels.
    #[arg(long, env = "FLASHSALE_SENTINEL_PASSWORD_FILE")]
    pub sentinel_password_file: Option<String>,
    /// redis://host:port of one plain node (development only).
    #[arg(long, env = "FLASHSALE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Replicas that must hold a purchase before it is acknowledged: `all` or a number.
    #[arg(long, env = "FLASHSALE_REPLICA_ACKS")]
    pub replica_acks: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, env = "FLASHSALE_KEY_PREFIX", default_value = "fs")]
    pub key_prefix: String,
    /// Response timeout of one Redis command, in milliseconds.
    #[arg(long, env = "FLASHSALE_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// How long a purchase waits for a new master during a failover (the
    /// hold), in milliseconds. The default covers a master lost on the
    /// shipped settings: down-after (3 s), the Sentinels' agreement and
    /// election, and the promotion (about 5–6 s in all).
    #[arg(long, env = "FLASHSALE_FAILOVER_WAIT_MS", default_value_t = 8000)]
    pub failover_wait_ms: u64,
    /// How long one WAIT for the replicas may block, in milliseconds.
    #[arg(long, env = "FLASHSALE_WAIT_TIMEOUT_MS", default_value_t = 250)]
    pub wait_timeout_ms: u64,
    /// Multiplexed connections to the master for purchases.
    #[arg(long, env = "FLASHSALE_REDIS_CONNECTIONS", default_value_t = 4)]
    pub redis_connections: usize,
    /// Period of the Sentinel polling backstop, in milliseconds (at most 1000).
    #[arg(long, env = "FLASHSALE_SENTINEL_POLL_MS", default_value_t = 500)]
    pub sentinel_poll_ms: u64,
}

/// Parses `host:port,host:port`.
fn parse_addrs(var: &'static str, raw: &str) -> Result<Vec<(String, u16)>, ConfigError> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (host, port) = part
            .rsplit_once(':')
            .ok_or_else(|| invalid(var, format!("`{part}` is not host:port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(var, format!("`{part}` has no valid port")))?;
        if host.is_empty() {
            return Err(invalid(var, format!("`{part}` has no host")));
        }
        out.push((host.trim_matches(['[', ']']).to_owned(), port));
    }
    if out.is_empty() {
        return Err(invalid(var, "names no Sentinel"));
    }
    Ok(out)
}

impl RedisArgs {
    pub fn settings(&self) -> Result<RedisSettings, ConfigError> {
        let password = secret(
            "FLASHSALE_REDIS_PASSWORD",
            self.redis_password.clone(),
            "FLASHSALE_REDIS_PASSWORD_FILE",
            self.redis_password_file.clone(),
        )?;
        let sentinel_password = secret(
            "FLASHSALE_SENTINEL_PASSWORD",
            self.sentinel_password.clone(),
            "FLASHSALE_SENTINEL_PASSWORD_FILE",
            self.sentinel_password_file.clone(),
        )?;
        let sentinels = self.redis_sentinels.as_deref().filter(|s| !s.is_empty());
        let url = self.redis_url.as_deref().filter(|s| !s.is_empty());
        let target = match (sentinels, url) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "FLASHSALE_REDIS_SENTINELS",
                    "set either FLASHSALE_REDIS_SENTINELS or FLASHSALE_REDIS_URL, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "FLASHSALE_REDIS_SENTINELS",
                    "not set (set it, or FLASHSALE_REDIS_URL for one development node)",
                ));
            }
            (Some(raw), None) => {
                if self.redis_master_name.is_empty() {
                    return Err(invalid("FLASHSALE_REDIS_MASTER_NAME", "is empty"));
                }
                RedisTarget::Sentinels {
                    addrs: parse_addrs("FLASHSALE_REDIS_SENTINELS", raw)?,
                    master_name: self.redis_master_name.clone(),
                    sentinel_password,
                }
            }
            (None, Some(u)) => {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(invalid(
                        "FLASHSALE_REDIS_URL",
                        "must start with redis:// (the value is not shown)",
                    ));
                }
                RedisTarget::Url(u.to_owned())
            }
        };
        let replica_acks = match self.replica_acks.as_deref().map(str::trim) {
            None | Some("") => match target {
                RedisTarget::Url(_) => ReplicaAcks::Count(0),
                RedisTarget::Sentinels { .. } => ReplicaAcks::All,
            },
            Some("all") => ReplicaAcks::All,
            Some(n) => ReplicaAcks::Count(n.parse().map_err(|_| {
                invalid(
                    "FLASHSALE_REPLICA_ACKS",
                    format!("`{n}` is neither `all` nor a number"),
                )
            })?),
        };
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "FLASHSALE_KEY_PREFIX",
                "must be 1 or more of [A-Za-z0-9_-]",
            ));
        }
        let ms = |var: &'static str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(invalid(var, format!("must be between {lo} and {hi}")))
            }
        };
        let write_connections = self.redis_connections;
        if !(1..=64).contains(&write_connections) {
            return Err(invalid(
                "FLASHSALE_REDIS_CONNECTIONS",
                "must be between 1 and 64",
            ));
        }
        Ok(RedisSettings {
            target,
            password,
            key_prefix: self.key_prefix.clone(),
            timeout: ms(
                "FLASHSALE_REDIS_TIMEOUT_MS",
                self.redis_timeout_ms,
                50,
                60_000,
            )?,
            failover_wait: ms(
                "FLASHSALE_FAILOVER_WAIT_MS",
                self.failover_wait_ms,
                0,
                60_000,
            )?,
            replica_acks,
            wait_timeout: ms(
                "FLASHSALE_WAIT_TIMEOUT_MS",
                self.wait_timeout_ms,
                10,
                10_000,
            )?,
            write_connections,
            poll_interval: ms(
                "FLASHSALE_SENTINEL_POLL_MS",
                self.sentinel_poll_ms,
                50,
                1000,
            )?,
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        r: RedisArgs,
    }

    fn parse(args: &[&str]) -> Result<RedisSettings, ConfigError> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).expect("parses").r.settings()
    }

    #[test]
    fn sentinels_and_url_are_exclusive() {
        let e = parse(&[
            "--redis-sentinels",
            "127.0.0.1:1",
            "--redis-url",
            "redis://x",
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_REDIS_SENTINELS"));
        let e = parse(&[]).unwrap_err();
        assert!(e.to_string().contains("not set"));
    }

    #[test]
    fn acks_default_by_target() {
        let s = parse(&["--redis-sentinels", "127.0.0.1:1,localhost:2"]).unwrap();
        assert_eq!(s.replica_acks, ReplicaAcks::All);
        let s = parse(&["--redis-url", "redis://127.0.0.1:1"]).unwrap();
        assert_eq!(s.replica_acks, ReplicaAcks::Count(0));
        let e = parse(&["--redis-url", "redis://h", "--replica-acks", "many"]).unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_REPLICA_ACKS"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = parse(&[
            "--redis-sentinels",
            "h:1",
            "--redis-password",
            "hunter2-very-secret",
        ])
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let e = parse(&["--redis-url", "http://user:hunter2@h"]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[derive(Parser)]
    struct S {
        #[command(flatten)]
        s: ServeArgs,
    }

    fn serve(args: &[&str]) -> Result<ServeSettings, ConfigError> {
        let mut v = vec![
            "t",
            "--redis-sentinels",
            "h:1",
            "--jwt-secret",
            "0123456789abcdef",
        ];
        v.extend_from_slice(args);
        S::try_parse_from(v).expect("parses").s.settings()
    }

    #[test]
    fn connection_limits_are_settings() {
        let s = serve(&[]).unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_ip), (10_000, 256));
        let s = serve(&["--max-connections", "50", "--max-connections-per-ip", "0"]).unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_ip), (50, 0));
        let e = serve(&["--max-connections", "0"]).unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_MAX_CONNECTIONS"));
    }

    #[test]
    fn bad_sentinel_list_names_the_variable() {
        let e = parse(&["--redis-sentinels", "nohost"]).unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_REDIS_SENTINELS"));
    }
}
