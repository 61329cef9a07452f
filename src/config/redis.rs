//! The Redis settings every binary shares: where the data lives (Sentinels
//! or one development node), credentials, key prefix, timeouts, the hold
//! and the acknowledgement rule. Validation only; no connection is made here.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret, invalid, ms, secret};

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
    /// Seed nodes of a Redis Cluster: the rest is discovered.
    Cluster { seeds: Vec<(String, u16)> },
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
    /// Seed nodes of a Redis Cluster as host:port,host:port,...
    #[arg(long, env = "FLASHSALE_REDIS_CLUSTER")]
    pub redis_cluster: Option<String>,
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
    /// hold), in milliseconds. The default (8000; 12000 with a cluster)
    /// covers a master lost on the shipped settings: with Sentinels,
    /// down-after (3 s), their agreement and election, and the promotion
    /// (about 5–6 s in all); in a cluster, the node timeout (5 s), the
    /// primaries' agreement and the replica's election (7–9 s).
    #[arg(long, env = "FLASHSALE_FAILOVER_WAIT_MS")]
    pub failover_wait_ms: Option<u64>,
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
fn parse_addrs(
    var: &'static str,
    raw: &str,
    what: &str,
) -> Result<Vec<(String, u16)>, ConfigError> {
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
        return Err(invalid(var, format!("names no {what}")));
    }
    Ok(out)
}

/// The hold's default with Sentinels (or one node), in milliseconds.
pub const DEFAULT_FAILOVER_WAIT_MS: u64 = 8_000;
/// The hold's default with a cluster, in milliseconds.
pub const DEFAULT_CLUSTER_FAILOVER_WAIT_MS: u64 = 12_000;

impl RedisArgs {
    /// The hold as configured, or its default for the configured mode.
    pub fn failover_wait_ms(&self) -> u64 {
        let cluster = self.redis_cluster.as_deref().is_some_and(|s| !s.is_empty());
        self.failover_wait_ms.unwrap_or(if cluster {
            DEFAULT_CLUSTER_FAILOVER_WAIT_MS
        } else {
            DEFAULT_FAILOVER_WAIT_MS
        })
    }

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
        let cluster = self.redis_cluster.as_deref().filter(|s| !s.is_empty());
        let url = self.redis_url.as_deref().filter(|s| !s.is_empty());
        let target = match (sentinels, cluster, url) {
            (None, None, None) => {
                return Err(invalid(
                    "FLASHSALE_REDIS_SENTINELS",
                    "not set (set it, FLASHSALE_REDIS_CLUSTER, or FLASHSALE_REDIS_URL for one development node)",
                ));
            }
            (Some(raw), None, None) => {
                if self.redis_master_name.is_empty() {
                    return Err(invalid("FLASHSALE_REDIS_MASTER_NAME", "is empty"));
                }
                RedisTarget::Sentinels {
                    addrs: parse_addrs("FLASHSALE_REDIS_SENTINELS", raw, "Sentinel")?,
                    master_name: self.redis_master_name.clone(),
                    sentinel_password,
                }
            }
            (None, Some(raw), None) => RedisTarget::Cluster {
                seeds: parse_addrs("FLASHSALE_REDIS_CLUSTER", raw, "node")?,
            },
            (None, None, Some(u)) => {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(invalid(
                        "FLASHSALE_REDIS_URL",
                        "must start with redis:// (the value is not shown)",
                    ));
                }
                RedisTarget::Url(u.to_owned())
            }
            (s, _, _) => {
                let var = if s.is_some() {
                    "FLASHSALE_REDIS_SENTINELS"
                } else {
                    "FLASHSALE_REDIS_CLUSTER"
                };
                return Err(invalid(
                    var,
                    "set exactly one of FLASHSALE_REDIS_SENTINELS, FLASHSALE_REDIS_CLUSTER and FLASHSALE_REDIS_URL",
                ));
            }
        };
        let replica_acks = match self.replica_acks.as_deref().map(str::trim) {
            None | Some("") => match target {
                RedisTarget::Url(_) => ReplicaAcks::Count(0),
                RedisTarget::Sentinels { .. } | RedisTarget::Cluster { .. } => ReplicaAcks::All,
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
                self.failover_wait_ms(),
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
