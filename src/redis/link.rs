//! Addresses, connections and the master link: a few multiplexed
//! connections to one verified master plus its acknowledgement rounds.
//! Knows nothing of Sentinels or of which node is the master (that is the
//! watcher's, `sentinel.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo,
    RedisConnectionInfo,
};

use super::DbError;
use super::ack::{AckFault, Acker};
use crate::config::Secret;

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

/// Opens one authenticated multiplexed connection.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    password: Option<&Secret>,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let mut settings = RedisConnectionInfo::default();
    if let Some(p) = password {
        settings = settings.set_password(p.expose());
    }
    let info = ConnectionAddr::Tcp(host.to_owned(), port)
        .into_connection_info()?
        .set_redis_settings(settings);
    let client = Client::open(info)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(response_timeout);
    client
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
