//! What can go wrong in the access layer, and what each failure means for
//! the link it happened on: replace it (stale), keep it and retry after a
//! pause (not writable yet), keep it and refuse the call at once (the master
//! is full), or give up (a bug). Also the one warning a full master logs,
//! at most once a second per process. Owns no connection.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Addr;

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
    /// The master refused a write for want of memory (`OOM`: `maxmemory`
    /// reached under `noeviction`). Nothing of the call was written.
    #[error("the Redis master is out of memory (maxmemory reached)")]
    Full,
    #[error("redis: {0}")]
    Redis(redis::RedisError),
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
            | DbError::LinkChanged
            | DbError::Full => true,
            DbError::Redis(e) => verdict(e) != Verdict::Other,
            DbError::Protocol(_) => false,
        }
    }
}

impl From<redis::RedisError> for DbError {
    /// A refusal for want of memory becomes [`DbError::Full`]; every other
    /// Redis error keeps its text for the log.
    fn from(e: redis::RedisError) -> Self {
        if verdict(&e) == Verdict::Full {
            DbError::Full
        } else {
            DbError::Redis(e)
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
    /// The right master, out of memory (`OOM`): keep the link, refuse the
    /// call at once. Waiting a few milliseconds frees nothing, and a
    /// Function refused this way ran not at all.
    Full,
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
        Some("OOM") => Verdict::Full,
        _ => Verdict::Other,
    }
}

/// Errors that mean "this node cannot serve the call now" (stale or not
/// yet writable): try again later or elsewhere.
pub fn is_failover_error(e: &redis::RedisError) -> bool {
    matches!(verdict(e), Verdict::Stale | Verdict::NotYet)
}

/// Counts a write the master refused for want of memory
/// (`flashsale_redis_full_total`) and says so in the log, at most once a
/// second per process (with how many refusals the line stands for).
pub(crate) fn out_of_memory(master: &Addr) {
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static LOG: Throttle = Throttle::new(1000);
    metrics::counter!("flashsale_redis_full_total").increment(1);
    REFUSED.fetch_add(1, Ordering::Relaxed);
    if LOG.due(process_ms()) {
        let refused = REFUSED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            %master,
            refused,
            "the Redis master is out of memory (maxmemory reached); writes are refused until memory is freed"
        );
    }
}

/// Milliseconds since this process first asked (never 0).
fn process_ms() -> u64 {
    static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

/// Lets one caller through per period, whatever the number of callers.
struct Throttle {
    every_ms: u64,
    /// When the last caller went through (0: never).
    last: AtomicU64,
}

impl Throttle {
    const fn new(every_ms: u64) -> Self {
        Self {
            every_ms,
            last: AtomicU64::new(0),
        }
    }

    /// Whether the caller at `now_ms` (≥ 1) is the one to go through.
    fn due(&self, now_ms: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now_ms.saturating_sub(last) >= self.every_ms)
            && self
                .last
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str, detail: &str) -> redis::RedisError {
        redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
    }

    #[test]
    fn a_full_master_is_its_own_verdict_and_error() {
        let oom = server_error("OOM", "command not allowed when used memory > 'maxmemory'.");
        assert_eq!(verdict(&oom), Verdict::Full);
        assert!(!is_failover_error(&oom), "no failover to wait for");
        let e = DbError::from(oom);
        assert!(matches!(e, DbError::Full), "{e:?}");
        assert!(e.is_unavailable());
        assert_eq!(
            e.to_string(),
            "the Redis master is out of memory (maxmemory reached)"
        );
        let other = DbError::from(server_error("WRONGTYPE", "Operation against a key"));
        assert!(matches!(other, DbError::Redis(_)));
        assert!(!other.is_unavailable());
        assert!(DbError::from(server_error("NOREPLICAS", "Not enough")).is_unavailable());
    }

    #[test]
    fn the_throttle_lets_one_through_per_period() {
        let t = Throttle::new(1000);
        assert!(t.due(5), "the first one");
        assert!(!t.due(5));
        assert!(!t.due(1004));
        assert!(t.due(1005), "a period later");
        assert!(!t.due(1006));
        assert!(t.due(9000));
    }
}
