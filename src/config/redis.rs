//! The Redis settings every binary shares: where the data lives (Sentinels,
//! a cluster or one development node), how to reach it ([`Access`]: ACL
//! user, password, TLS), key prefix, timeouts, the hold and the
//! acknowledgement rule. Validation only: certificate files are read and
//! parsed here, but no connection is made (that is `crate::redis`).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{ConfigError, Secret, invalid, ms, secret};

/// How to reach one kind of node (the data nodes, or the Sentinels):
/// every connection the product opens is made from one of these.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// ACL user; `None`: `default`.
    pub username: Option<String>,
    /// That user's password; `None`: no `AUTH`.
    pub password: Option<Secret>,
    /// `Some`: TLS, verified with these certificates.
    pub tls: Option<Arc<Tls>>,
}

impl Access {
    /// The `default` user with `password`, over plain TCP.
    pub fn password(password: impl Into<String>) -> Self {
        Access {
            username: None,
            password: Some(Secret::new(password)),
            tls: None,
        }
    }
}

/// TLS to Redis and the Sentinels: the CA to verify them with (`None`: the
/// system's roots) and the client certificate, if any. Read and parsed at
/// start-up.
#[derive(Clone)]
pub struct Tls {
    pub ca: Option<Vec<u8>>,
    pub client: Option<ClientCert>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert: Vec<u8>,
    key: Vec<u8>,
}

impl ClientCert {
    /// A certificate chain and its key, both PEM (not checked here: the
    /// variables are checked by [`RedisArgs::settings`]).
    pub fn new(cert: Vec<u8>, key: Vec<u8>) -> Self {
        ClientCert { cert, key }
    }

    /// The private key (PEM): a secret, never printed.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .field("client", &self.client.as_ref().map(|_| "<cert, key ***>"))
            .finish()
    }
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCert(<cert>, key ***)")
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
        /// How to reach the Sentinels (their own ACL user; the same TLS).
        access: Access,
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
    /// How to reach the data nodes (with a URL: its credentials, unless
    /// the variables name others, and TLS when it is `rediss://`).
    pub access: Access,
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
    /// ACL user of the data nodes (the password is this user's).
    #[arg(long, env = "FLASHSALE_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// ACL user of the Sentinels (the Sentinel password is this user's).
    #[arg(long, env = "FLASHSALE_SENTINEL_USERNAME")]
    pub sentinel_username: Option<String>,
    /// `true`: TLS to the data nodes and the Sentinels.
    #[arg(long, env = "FLASHSALE_REDIS_TLS")]
    pub redis_tls: Option<String>,
    /// PEM file of the CA that signed the nodes' certificates (default: the system's roots).
    #[arg(long, env = "FLASHSALE_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<String>,
    /// PEM file of the client certificate (with FLASHSALE_REDIS_TLS_KEY_FILE).
    #[arg(long, env = "FLASHSALE_REDIS_TLS_CERT_FILE")]
    pub redis_tls_cert_file: Option<String>,
    /// PEM file of the client certificate's private key.
    #[arg(long, env = "FLASHSALE_REDIS_TLS_KEY_FILE")]
    pub redis_tls_key_file: Option<String>,
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

/// An ACL user name: not empty, no spaces or control characters.
fn username(var: &'static str, raw: Option<&str>) -> Result<Option<String>, ConfigError> {
    match raw {
        None => Ok(None),
        Some("") => Err(invalid(var, "is empty (unset it for the `default` user)")),
        Some(u) if u.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(invalid(
            var,
            "must not contain spaces or control characters",
        )),
        Some(u) => Ok(Some(u.to_owned())),
    }
}

/// Reads a PEM file named by `var`.
fn read_pem(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    if path.is_empty() {
        return Err(invalid(var, "is empty"));
    }
    std::fs::read(path).map_err(|e| invalid(var, format!("cannot read the file it names: {e}")))
}

/// Certificates of a PEM file named by `var` (at least one).
fn certificates(
    var: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid(var, "the file it names is not valid PEM"))?;
    if certs.is_empty() {
        return Err(invalid(var, "the file it names holds no PEM certificate"));
    }
    Ok(certs)
}

/// The TLS files, read and checked: the CA must hold trust anchors, and a
/// client certificate comes with the key that matches it.
fn load_tls(a: &RedisArgs) -> Result<Tls, ConfigError> {
    const CA: &str = "FLASHSALE_REDIS_TLS_CA_FILE";
    const CERT: &str = "FLASHSALE_REDIS_TLS_CERT_FILE";
    const KEY: &str = "FLASHSALE_REDIS_TLS_KEY_FILE";
    let ca = match a.redis_tls_ca_file.as_deref() {
        None => None,
        Some(path) => {
            let pem = read_pem(CA, path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(CA, &pem)? {
                roots.add(cert).map_err(|_| {
                    invalid(
                        CA,
                        "the file it names holds a certificate that is not a valid CA",
                    )
                })?;
            }
            Some(pem)
        }
    };
    let client = match (
        a.redis_tls_cert_file.as_deref(),
        a.redis_tls_key_file.as_deref(),
    ) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                KEY,
                format!("not set, but {CERT} is (a client certificate needs its key)"),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                CERT,
                format!("not set, but {KEY} is (a client key needs its certificate)"),
            ));
        }
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem(CERT, cert_path)?;
            let chain = certificates(CERT, &cert)?;
            let key = read_pem(KEY, key_path)?;
            let der = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|_| invalid(KEY, "the file it names holds no PEM private key"))?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|_| invalid(KEY, "no TLS version is available"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain, der)
                .map_err(|_| {
                    invalid(
                        KEY,
                        format!("the key is unusable or does not match the certificate of {CERT}"),
                    )
                })?;
            Some(ClientCert { cert, key })
        }
    };
    Ok(Tls { ca, client })
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
        let redis_username = username("FLASHSALE_REDIS_USERNAME", self.redis_username.as_deref())?;
        let sentinel_username = username(
            "FLASHSALE_SENTINEL_USERNAME",
            self.sentinel_username.as_deref(),
        )?;
        if sentinel_username.is_some() && sentinel_password.is_none() {
            return Err(invalid(
                "FLASHSALE_SENTINEL_USERNAME",
                "set, but FLASHSALE_SENTINEL_PASSWORD is not (an ACL user needs its password)",
            ));
        }
        let tls_on = match self.redis_tls.as_deref().map(str::trim) {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(invalid("FLASHSALE_REDIS_TLS", "must be `true` or `false`")),
        };
        let sentinels = self.redis_sentinels.as_deref().filter(|s| !s.is_empty());
        let cluster = self.redis_cluster.as_deref().filter(|s| !s.is_empty());
        let url = self.redis_url.as_deref().filter(|s| !s.is_empty());
        let mut target = match (sentinels, cluster, url) {
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
                    access: Access {
                        username: sentinel_username,
                        password: sentinel_password,
                        tls: None,
                    },
                }
            }
            (None, Some(raw), None) => RedisTarget::Cluster {
                seeds: parse_addrs("FLASHSALE_REDIS_CLUSTER", raw, "node")?,
            },
            (None, None, Some(u)) => {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(invalid(
                        "FLASHSALE_REDIS_URL",
                        "must start with redis:// or rediss:// (the value is not shown)",
                    ));
                }
                if tls_on && !u.starts_with("rediss://") {
                    return Err(invalid(
                        "FLASHSALE_REDIS_TLS",
                        "is true, but FLASHSALE_REDIS_URL is redis:// (use rediss:// for TLS)",
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
        let mut access = Access {
            username: redis_username,
            password,
            tls: None,
        };
        if let RedisTarget::Url(u) = &target {
            // The URL's own user and password, unless the variables name others.
            let info =
                redis::IntoConnectionInfo::into_connection_info(u.as_str()).map_err(|_| {
                    invalid(
                        "FLASHSALE_REDIS_URL",
                        "is not a valid redis:// URL (the value is not shown)",
                    )
                })?;
            let rs = info.redis_settings();
            if access.username.is_none() {
                access.username = rs.username().map(str::to_owned);
            }
            if access.password.is_none() {
                access.password = rs.password().map(Secret::new);
            }
        }
        if access.username.is_some() && access.password.is_none() {
            return Err(invalid(
                "FLASHSALE_REDIS_USERNAME",
                "set, but FLASHSALE_REDIS_PASSWORD is not (an ACL user needs its password)",
            ));
        }
        let url_tls = matches!(&target, RedisTarget::Url(u) if u.starts_with("rediss://"));
        if tls_on || url_tls {
            let tls = Arc::new(load_tls(self)?);
            access.tls = Some(tls.clone());
            if let RedisTarget::Sentinels { access: s, .. } = &mut target {
                s.tls = Some(tls);
            }
        } else {
            for (var, set) in [
                ("FLASHSALE_REDIS_TLS_CA_FILE", &self.redis_tls_ca_file),
                ("FLASHSALE_REDIS_TLS_CERT_FILE", &self.redis_tls_cert_file),
                ("FLASHSALE_REDIS_TLS_KEY_FILE", &self.redis_tls_key_file),
            ] {
                if set.is_some() {
                    return Err(invalid(
                        var,
                        "set, but TLS is off (set FLASHSALE_REDIS_TLS=true, or use a rediss:// URL)",
                    ));
                }
            }
        }
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
            access,
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
