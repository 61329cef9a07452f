//! What can go wrong in the access layer, and what each failure means for
//! the link it happened on: replace it (stale), keep it and retry after a
//! pause (not writable yet), or give up (a bug). Owns no connection.

use std::time::Duration;

use tokio::time::Instant;

/// Errors of the access layer. Messages never carry secrets; Redis error
/// text is kept for logs only and never shown to a client.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no Redis master available")]
    NoMaster,
    #[error("the replicas did not acknowledge in time")]
    Shortfall,
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
    #[error("{0}")]
    Discovery(String),
    /// The link a multi-step operation started on was retired: its steps
    /// must not continue on another node.
    #[error("the master link changed")]
    LinkChanged,
}

impl DbError {
    /// Whether the error means "try again later" (503) rather than a bug (500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::NoMaster
            | DbError::Shortfall
            | DbError::Timeout
            | DbError::Discovery(_)
            | DbError::LinkChanged => true,
            DbError::Redis(e) => is_failover_error(e),
            DbError::Protocol(_) => false,
        }
    }
}

/// A link is built to one address at most this often, whatever happens.
pub const REBUILD_EVERY: Duration = Duration::from_millis(500);

/// What an error on the master link says about the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The node is not (or no longer) a usable master: replace the link.
    Stale,
    /// The right node, not writable yet (no replica attached, loading its
    /// data, …): keep the link, retry after a pause.
    NotYet,
    /// Not a failover error (a bug, bad input): do not retry.
    Other,
}

/// Server error codes of a master that cannot take writes *yet*; in a
/// cluster also those of a slot that is moving (`MOVED`, `ASK`,
/// `TRYAGAIN`) or of a shard without an owner (`CLUSTERDOWN`): the
/// watcher learns the new owner and the call is retried there.
const NOT_YET: &[&str] = &[
    "NOREPLICAS",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "MOVED",
    "ASK",
    "CLUSTERDOWN",
];

/// The server's error code of `e`, also for a pipeline that failed:
/// redis-rs gives a pipeline error a code only when its first failure is of
/// a kind it knows (`NOREPLICAS`, `OOM`, … are not), so the first failure's
/// own code is read instead.
pub fn error_code(e: &redis::RedisError) -> Option<String> {
    if let Some(c) = e.code() {
        return Some(c.to_owned());
    }
    e.clone()
        .into_server_errors()
        .and_then(|items| items.first().map(|(_, err)| err.code().to_owned()))
}

/// Classifies an error seen on a master link.
pub fn verdict(e: &redis::RedisError) -> Verdict {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
    {
        return Verdict::Stale;
    }
    match error_code(e).as_deref() {
        Some("READONLY") => Verdict::Stale,
        // A node that lost our library (restarted empty, flushed): the
        // next link to it loads it again.
        Some("ERR") if e.to_string().contains("Function not found") => Verdict::Stale,
        Some(c) if NOT_YET.contains(&c) => Verdict::NotYet,
        _ => Verdict::Other,
    }
}

/// Errors that mean "this node cannot serve the call now" (stale or not
/// yet writable): try again later or elsewhere.
pub fn is_failover_error(e: &redis::RedisError) -> bool {
    verdict(e) != Verdict::Other
}

/// Jittered exponential pauses for retries on a master that is not
/// writable yet: 10 ms doubling to 200 ms, each drawn from [½, 1] of the
/// step, so the callers of every process do not retry in lockstep.
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(200);

    pub fn new() -> Self {
        Self { step: Self::FIRST }
    }

    /// The next pause (never past `deadline`).
    pub fn next(&mut self, deadline: Instant) -> Duration {
        let half = self.step / 2;
        let jitter = Duration::from_micros(rand::random_range(0..=half.as_micros() as u64));
        self.step = (self.step * 2).min(Self::MAX);
        (half + jitter).min(deadline.saturating_duration_since(Instant::now()))
    }

    /// Sleeps the next pause.
    pub async fn wait(&mut self, deadline: Instant) {
        tokio::time::sleep(self.next(deadline)).await;
    }
}
