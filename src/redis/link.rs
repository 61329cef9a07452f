//! Addresses, connections and the master link: a few multiplexed
//! connections to one verified master plus its acknowledgement rounds, and
//! how such a link is built (ROLE checked, the Function library loaded) and
//! installed. Knows nothing of Sentinels, of the cluster or of which node
//! is the master (that is the watchers', `sentinel.rs` and `cluster.rs`,
//! which call in here).
//!
//! Every connection the product opens — to data nodes and to Sentinels,
//! multiplexed or Pub/Sub — is made by [`client`] from an
//! [`Access`] (ACL user, password, TLS); no other code builds connection
//! info. TLS is rustls with the ring provider, installed once
//! ([`install_crypto_provider`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, FromRedisValue,
    IntoConnectionInfo, RedisConnectionInfo, TlsCertificates,
};

use tokio::time::Instant;

use super::ack::{AckConfig, AckFault, Acker};
use super::{DbError, Inner, REBUILD_EVERY, ROLE_CHECK_TIMEOUT, Shard, functions, slots};
use crate::config::{Access, RedisTarget, ReplicaAcks};

/// A node's address as the Sentinels name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl Addr {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Something that can be sent on a connection: a command or a pipeline.
pub trait Query: Sync {
    fn as_query(&self) -> Q<'_>;

    /// The key whose hash slot decides the node (see `slots.rs`): the
    /// first key of the command, or of the pipeline's first command that
    /// has one. Every key of one call must be in that slot.
    fn route_key(&self) -> Option<&[u8]> {
        match self.as_query() {
            Q::Cmd(c) => slots::route_key(c),
            Q::Pipe(p) => p.cmd_iter().find_map(slots::route_key),
        }
    }
}

/// A call routed by a key it does not name (`SCAN … MATCH P:{sku}:*` runs
/// where the sale's keys are).
pub struct At<'a, C: Query> {
    pub key: &'a str,
    pub cmd: &'a C,
}

impl<C: Query> Query for At<'_, C> {
    fn as_query(&self) -> Q<'_> {
        self.cmd.as_query()
    }

    fn route_key(&self) -> Option<&[u8]> {
        Some(self.key.as_bytes())
    }
}

/// A borrowed command or pipeline.
#[derive(Clone, Copy)]
pub enum Q<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl Q<'_> {
    pub async fn run<T: FromRedisValue>(
        self,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<T> {
        match self {
            Q::Cmd(c) => c.query_async(conn).await,
            Q::Pipe(p) => p.query_async(conn).await,
        }
    }
}

impl Query for redis::Cmd {
    fn as_query(&self) -> Q<'_> {
        Q::Cmd(self)
    }
}

impl Query for redis::Pipeline {
    fn as_query(&self) -> Q<'_> {
        Q::Pipe(self)
    }
}

/// One verified connection set to the master.
pub struct MasterLink {
    pub addr: Addr,
    pub epoch: u64,
    pub(super) conns: Vec<MultiplexedConnection>,
    pub(super) next: AtomicUsize,
    pub(super) acker: Option<Acker>,
    pub(super) stale: Arc<AtomicBool>,
}

impl MasterLink {
    /// A multiplexed connection (round-robin); cloning it is cheap.
    pub fn conn(&self) -> MultiplexedConnection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// Marks the link stale: no more acknowledgements, callers move on.
    pub(crate) fn retire(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// Waits until the replicas hold every write answered on this link before
    /// the call (a no-op when no replica acknowledgement is required).
    pub async fn ack(&self) -> Result<(), AckFault> {
        match &self.acker {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }
}

/// The text of a scalar reply (bulk or simple string, or integer).
pub fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Installs rustls' process-wide crypto provider (ring) once; later calls,
/// and a provider installed by someone else first, are fine.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client for `host:port` (database `db`) as `access` says: its ACL user
/// and password, and TLS with its certificates.
pub fn client(host: &str, port: u16, db: i64, access: &Access) -> redis::RedisResult<Client> {
    let mut settings = RedisConnectionInfo::default().set_db(db);
    if let Some(p) = &access.password {
        if let Some(u) = &access.username {
            settings = settings.set_username(u);
        }
        settings = settings.set_password(p.expose());
    }
    match &access.tls {
        None => Client::open(
            ConnectionAddr::Tcp(host.to_owned(), port)
                .into_connection_info()?
                .set_redis_settings(settings),
        ),
        Some(tls) => {
            install_crypto_provider();
            let info = ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
            .into_connection_info()?
            .set_redis_settings(settings);
            Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: tls.client.as_ref().map(|c| ClientTlsConfig {
                        client_cert: c.cert.clone(),
                        client_key: c.key().to_vec(),
                    }),
                    root_cert: tls.ca.clone(),
                },
            )
        }
    }
}

/// Opens one authenticated multiplexed connection.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    access: &Access,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(response_timeout);
    client(host, port, 0, access)?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Host and port of a `redis://` URL (the password stays in the URL client).
pub(crate) fn url_host_port(url: &str) -> Result<Addr, DbError> {
    let info = url
        .into_connection_info()
        .map_err(|_| DbError::Discovery("FLASHSALE_REDIS_URL is not a valid URL".into()))?;
    match info.addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => Ok(Addr::new(h.clone(), *p)),
        _ => Err(DbError::Discovery(
            "FLASHSALE_REDIS_URL must name a TCP address".into(),
        )),
    }
}

impl Inner {
    /// How to reach the data nodes.
    pub(super) fn access(&self) -> &Access {
        &self.settings.access
    }

    /// Builds a link to `addr` after checking ROLE and the Function library;
    /// refuses (without trying) when a link to it was built less than
    /// [`REBUILD_EVERY`] ago. `shard` is the required-acks counter's
    /// owner; `ack_slot`, in a cluster, a slot the node owns, where the
    /// acknowledgement rounds write their counter.
    pub(super) async fn build_link(
        &self,
        addr: &Addr,
        shard: &Shard,
        ack_slot: Option<u16>,
    ) -> Result<MasterLink, DbError> {
        {
            let mut last = self.last_build.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if last
                .get(addr)
                .is_some_and(|t| now.duration_since(*t) < REBUILD_EVERY)
            {
                return Err(DbError::Discovery(format!(
                    "a link to {addr} was built less than {REBUILD_EVERY:?} ago"
                )));
            }
            last.insert(addr.clone(), now);
        }
        let (host, port) = (addr.host.as_str(), addr.port);
        let s = &self.settings;
        let mut conns = Vec::with_capacity(s.write_connections);
        let open = || async {
            match &s.target {
                RedisTarget::Url(url) => {
                    // The URL's database; user, password and TLS are in the access.
                    let db = url.as_str().into_connection_info()?.redis_settings().db();
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(s.timeout))
                        .set_response_timeout(Some(s.timeout + s.wait_timeout));
                    client(host, port, db, self.access())?
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await
                }
                RedisTarget::Sentinels { .. } | RedisTarget::Cluster { .. } => {
                    connect(
                        host,
                        port,
                        self.access(),
                        s.timeout,
                        Some(s.timeout + s.wait_timeout),
                    )
                    .await
                }
            }
        };
        // A frozen or unreachable node must not hold up the watcher.
        let connected = AtomicBool::new(false);
        let check = async {
            let mut c = open().await?;
            connected.store(true, Ordering::Relaxed);
            let r = role_reply(&mut c).await?.0;
            Ok::<_, redis::RedisError>((c, r))
        };
        let limit = s.timeout.min(ROLE_CHECK_TIMEOUT);
        let (mut first, role_name) = tokio::time::timeout(limit, check).await.map_err(|_| {
            if self.access().tls.is_some() && !connected.load(Ordering::Relaxed) {
                // A port that does not speak TLS reads the handshake as a
                // command and never answers it.
                DbError::Discovery(format!(
                    "no TLS session with {addr} within {limit:?} (does that port speak TLS?)"
                ))
            } else {
                DbError::Timeout
            }
        })??;
        if role_name != "master" {
            return Err(DbError::Discovery(format!(
                "{host}:{port} is not a master (ROLE says {role_name:?})"
            )));
        }
        functions::ensure_loaded(&mut first).await?;
        conns.push(first);
        for _ in 1..s.write_connections {
            conns.push(open().await?);
        }
        let stale = Arc::new(AtomicBool::new(false));
        let acker = if matches!(s.replica_acks, ReplicaAcks::Count(0)) {
            None
        } else {
            let wake = self.wake.clone();
            let flag = stale.clone();
            let ack_conn = open().await?;
            Some(Acker::spawn(
                ack_conn,
                AckConfig {
                    counter_key: match ack_slot {
                        Some(slot) => self.keys.ack_counter_in(&slots::tag_for_slot(slot)),
                        None => self.keys.ack_counter(),
                    },
                    wait_timeout: s.wait_timeout,
                    required: shard.required_acks.clone(),
                    retired: stale.clone(),
                    on_link_fault: Arc::new(move || {
                        flag.store(true, Ordering::SeqCst);
                        wake.notify_one();
                    }),
                },
            ))
        };
        Ok(MasterLink {
            addr: Addr::new(host, port),
            epoch: self.epoch.fetch_add(1, Ordering::SeqCst) + 1,
            conns,
            next: AtomicUsize::new(0),
            acker,
            stale,
        })
    }

    /// Installs a new link (or none) as `shard`'s master and tells the
    /// waiters.
    pub(super) fn install(&self, shard: &Shard, link: Option<MasterLink>) {
        if link.is_some() {
            self.installs.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flashsale_redis_link_installs_total").increment(1);
        }
        let old = shard.master.swap(link.map(Arc::new));
        if let Some(old) = old {
            old.stale.store(true, Ordering::SeqCst);
        }
        self.changed.send_modify(|e| *e += 1);
    }
}

/// The master a node's ROLE reply names when the node is a replica
/// (`["slave", host, port, state, offset]`); `None` for any other role.
pub(super) fn replica_of(role: &redis::Value) -> Option<Addr> {
    let redis::Value::Array(items) = role else {
        return None;
    };
    if items.first().and_then(text).as_deref() != Some("slave") {
        return None;
    }
    let host = items.get(1).and_then(text)?;
    let port = items.get(2).and_then(text)?.parse().ok()?;
    Some(Addr::new(host, port))
}

/// For a master's `ROLE` reply: the replicas connected to it.
pub(super) fn replicas_of_master(role: &redis::Value) -> Option<Vec<Addr>> {
    let redis::Value::Array(items) = role else {
        return None;
    };
    if items.first().and_then(text).as_deref() != Some("master") {
        return None;
    }
    let Some(redis::Value::Array(replicas)) = items.get(2) else {
        return Some(Vec::new());
    };
    Some(
        replicas
            .iter()
            .filter_map(|r| {
                let redis::Value::Array(f) = r else {
                    return None;
                };
                let host = f.first().and_then(text)?;
                let port = f.get(1).and_then(text)?.parse().ok()?;
                Some(Addr::new(host, port))
            })
            .collect(),
    )
}

/// ROLE's first element, and for a replica the state of its link
/// (`connected`, `sync`, `connecting`, …).
pub(super) async fn role_reply(
    conn: &mut MultiplexedConnection,
) -> Result<(String, String), redis::RedisError> {
    let v: redis::Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match &v {
        redis::Value::Array(items) => (
            items.first().and_then(text).unwrap_or_default(),
            items.get(3).and_then(text).unwrap_or_default(),
        ),
        _ => Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_master_lists_its_connected_replicas() {
        let master = Value::Array(vec![
            bulk("master"),
            Value::Int(3129659),
            Value::Array(vec![
                Value::Array(vec![bulk("10.0.0.2"), bulk("9001"), bulk("3129242")]),
                Value::Array(vec![bulk("10.0.0.3"), bulk("9002"), bulk("3129543")]),
            ]),
        ]);
        assert_eq!(
            replicas_of_master(&master),
            Some(vec![
                Addr::new("10.0.0.2", 9001),
                Addr::new("10.0.0.3", 9002)
            ])
        );
        let lone = Value::Array(vec![bulk("master"), Value::Int(0), Value::Array(vec![])]);
        assert_eq!(replicas_of_master(&lone), Some(Vec::new()));
        let replica = Value::Array(vec![
            bulk("slave"),
            bulk("10.0.0.1"),
            Value::Int(9000),
            bulk("connected"),
            Value::Int(1),
        ]);
        assert_eq!(replicas_of_master(&replica), None);
    }

    #[test]
    fn a_replica_names_its_master() {
        let replica = Value::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            Value::Int(6380),
            bulk("connected"),
            Value::Int(42),
        ]);
        assert_eq!(replica_of(&replica), Some(Addr::new("127.0.0.1", 6380)));
        let master = Value::Array(vec![bulk("master"), Value::Int(42), Value::Array(vec![])]);
        assert_eq!(replica_of(&master), None);
        let sentinel = Value::Array(vec![bulk("sentinel"), Value::Array(vec![bulk("m")])]);
        assert_eq!(replica_of(&sentinel), None);
        assert_eq!(replica_of(&Value::Nil), None);
        let no_port = Value::Array(vec![bulk("slave"), bulk("h"), bulk("x")]);
        assert_eq!(replica_of(&no_port), None);
    }
}
