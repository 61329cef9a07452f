//! The settings of `flashsale-worker`: its consumer name, how much it holds
//! and how long it blocks, when it reclaims, dead-letters, sweeps, expires
//! unpaid orders and rediscovers, when it purges ended sales from Redis,
//! the order ledger it records orders in (the ledger's own
//! flags, shared with `flashsale ledger`), where it serves metrics and how
//! long it may take to stop, and its log format. Out-of-range values are refused (one line
//! naming the variable), never clamped.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, RedisArgs, RedisSettings, invalid, ms};
use crate::ledger::{LedgerArgs, LedgerSettings};
use crate::logs::LogFormat;

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Consumer name (default: host-pid-random).
    #[arg(long, env = "FLASHSALE_WORKER_NAME")]
    pub consumer: Option<String>,
    /// Most entries read (and held) at once (1–10000).
    #[arg(long, env = "FLASHSALE_WORKER_BATCH", default_value_t = 512)]
    pub batch: usize,
    /// XREADGROUP BLOCK time in milliseconds (10–60000); a read never
    /// blocks past the next expiry pass (--expire-ms).
    #[arg(long, env = "FLASHSALE_WORKER_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
    /// After a read that was not full (the worker has caught up), wait this
    /// many milliseconds before the next, so orders arriving one by one are
    /// confirmed in batches (0–1000; 0: read again at once).
    #[arg(long, env = "FLASHSALE_WORKER_LINGER_MS", default_value_t = 10)]
    pub linger_ms: u64,
    /// Pending entries idle this long are reclaimed from their consumer
    /// (100–3600000 ms).
    #[arg(long, env = "FLASHSALE_WORKER_CLAIM_IDLE_MS", default_value_t = 10_000)]
    pub claim_idle_ms: u64,
    /// Deliveries after which an entry is moved to the dead-letter stream (1–1000).
    #[arg(long, env = "FLASHSALE_WORKER_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: usize,
    /// How often the sweep for queued orders without a live stream entry
    /// runs, in milliseconds (100–3600000; a cheap count per sale, a scan
    /// only when something is missing); also how often ended sales are
    /// checked for retirement (retired ones every third time).
    #[arg(long, env = "FLASHSALE_WORKER_SWEEP_MS", default_value_t = 10_000)]
    pub sweep_ms: u64,
    /// The sweep queues again an order still `queued` this long after its
    /// purchase whose entry is gone, in milliseconds (0–86400000).
    #[arg(
        long,
        env = "FLASHSALE_WORKER_REQUEUE_AFTER_MS",
        default_value_t = 10_000
    )]
    pub requeue_after_ms: u64,
    /// How often unpaid orders past their payment deadline are expired, in
    /// milliseconds (50–60000).
    #[arg(long, env = "FLASHSALE_WORKER_EXPIRE_MS", default_value_t = 500)]
    pub expire_ms: u64,
    /// How often the sales index is read for new streams, in milliseconds (50–60000).
    #[arg(long, env = "FLASHSALE_WORKER_DISCOVER_MS", default_value_t = 1000)]
    pub discover_ms: u64,
    /// Seconds after a sale's end before a worker purges it from Redis
    /// (every key, as `flashsale sale purge` does, and refused as it
    /// refuses: until every order is settled and, with the ledger, in the
    /// ledger as it ended); 0: never; at most 31536000 (a year). Default:
    /// 604800 (7 days) with FLASHSALE_LEDGER_URL; without it automatic
    /// purge is off, and setting this is refused unless
    /// --purge-without-ledger.
    #[arg(long, env = "FLASHSALE_WORKER_PURGE_AFTER_S")]
    pub purge_after_s: Option<u64>,
    /// Purge automatically without the order ledger too: Redis holds the
    /// only copy of the orders, and they are deleted with the sale (export
    /// them first).
    #[arg(
        long,
        env = "FLASHSALE_WORKER_PURGE_WITHOUT_LEDGER",
        default_value_t = false
    )]
    pub purge_without_ledger: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address
    /// (e.g. 127.0.0.1:9187).
    #[arg(long = "metrics", env = "FLASHSALE_WORKER_METRICS")]
    pub metrics_addr: Option<String>,
    /// Longest graceful shutdown, in seconds (1–3600).
    #[arg(
        long,
        env = "FLASHSALE_WORKER_SHUTDOWN_TIMEOUT_S",
        default_value_t = 15
    )]
    pub shutdown_timeout_s: u64,
    /// Log lines as `text` or `json` (one JSON object per line).
    #[arg(long, env = "FLASHSALE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// How a worker works, without the Redis settings.
#[derive(Debug, Clone)]
pub struct WorkerTuning {
    pub consumer: String,
    pub batch: usize,
    pub block: Duration,
    pub linger: Duration,
    pub claim_idle: Duration,
    pub max_deliveries: usize,
    pub discover_every: Duration,
    pub sweep_every: Duration,
    pub expire_every: Duration,
    pub requeue_after: Duration,
    /// How long after its end a settled sale is purged from Redis; `None`:
    /// never.
    pub purge_after: Option<Duration>,
    /// Automatic purge is off only because no ledger is configured (and
    /// FLASHSALE_WORKER_PURGE_WITHOUT_LEDGER is not set): said at start.
    pub purge_needs_ledger: bool,
}

/// The default of `FLASHSALE_WORKER_PURGE_AFTER_S` (with a ledger, or
/// with `FLASHSALE_WORKER_PURGE_WITHOUT_LEDGER`): 7 days.
pub const PURGE_AFTER_DEFAULT_S: u64 = 7 * 86_400;
/// The longest grace `FLASHSALE_WORKER_PURGE_AFTER_S` accepts: a year (a
/// larger number is more likely milliseconds than a wish).
pub const PURGE_AFTER_MAX_S: u64 = 365 * 86_400;

/// Validated settings of `flashsale-worker`.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub redis: RedisSettings,
    pub tuning: WorkerTuning,
    /// The order ledger (`FLASHSALE_LEDGER_URL`); `None`: orders are
    /// confirmed in Redis alone, as without one.
    pub ledger: Option<LedgerSettings>,
    pub metrics_addr: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    /// How log lines are written (the binary sets up logging with it).
    pub log_format: LogFormat,
}

/// host-pid-random: unique per process, readable in XINFO CONSUMERS.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let rand: u32 = rand::random();
    format!("{host}-{}-{rand:08x}", std::process::id())
}

fn count(var: &'static str, v: usize, lo: usize, hi: usize) -> Result<usize, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(var, format!("must be between {lo} and {hi}")))
    }
}

impl WorkerArgs {
    pub fn settings(&self) -> Result<WorkerSettings, ConfigError> {
        let redis = self.redis.settings()?;
        let ledger = self.ledger.settings()?;
        let consumer = match &self.consumer {
            None => default_consumer(),
            Some(c) if c.is_empty() || c.len() > 128 || c.chars().any(char::is_whitespace) => {
                return Err(invalid(
                    "FLASHSALE_WORKER_NAME",
                    "must be 1-128 characters without white space",
                ));
            }
            Some(c) => c.clone(),
        };
        let metrics_addr = match self.metrics_addr.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "FLASHSALE_WORKER_METRICS",
                    format!("`{a}` is not an address like 127.0.0.1:9187"),
                )
            })?),
        };
        let (purge_after, purge_needs_ledger) = self.purge_after(ledger.is_some())?;
        if !(1..=3600).contains(&self.shutdown_timeout_s) {
            return Err(invalid(
                "FLASHSALE_WORKER_SHUTDOWN_TIMEOUT_S",
                "must be between 1 and 3600",
            ));
        }
        let log_format =
            LogFormat::parse(&self.log_format).map_err(|e| invalid(crate::logs::VAR, e))?;
        Ok(WorkerSettings {
            log_format,
            redis,
            tuning: WorkerTuning {
                consumer,
                batch: count("FLASHSALE_WORKER_BATCH", self.batch, 1, 10_000)?,
                block: ms("FLASHSALE_WORKER_BLOCK_MS", self.block_ms, 10, 60_000)?,
                linger: ms("FLASHSALE_WORKER_LINGER_MS", self.linger_ms, 0, 1_000)?,
                claim_idle: ms(
                    "FLASHSALE_WORKER_CLAIM_IDLE_MS",
                    self.claim_idle_ms,
                    100,
                    3_600_000,
                )?,
                max_deliveries: count(
                    "FLASHSALE_WORKER_MAX_DELIVERIES",
                    self.max_deliveries,
                    1,
                    1_000,
                )?,
                discover_every: ms("FLASHSALE_WORKER_DISCOVER_MS", self.discover_ms, 50, 60_000)?,
                sweep_every: ms("FLASHSALE_WORKER_SWEEP_MS", self.sweep_ms, 100, 3_600_000)?,
                expire_every: ms("FLASHSALE_WORKER_EXPIRE_MS", self.expire_ms, 50, 60_000)?,
                requeue_after: ms(
                    "FLASHSALE_WORKER_REQUEUE_AFTER_MS",
                    self.requeue_after_ms,
                    0,
                    86_400_000,
                )?,
                purge_after,
                purge_needs_ledger,
            },
            ledger,
            metrics_addr,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_s),
        })
    }
}

impl WorkerArgs {
    /// `FLASHSALE_WORKER_PURGE_AFTER_S` with or without a ledger: the
    /// grace (`None`: never) and whether it is off only for want of one.
    fn purge_after(&self, ledger: bool) -> Result<(Option<Duration>, bool), ConfigError> {
        const VAR: &str = "FLASHSALE_WORKER_PURGE_AFTER_S";
        let allowed = ledger || self.purge_without_ledger;
        let secs = match self.purge_after_s {
            None if allowed => PURGE_AFTER_DEFAULT_S,
            None => return Ok((None, true)),
            Some(0) => return Ok((None, false)),
            Some(s) if s > PURGE_AFTER_MAX_S => {
                return Err(invalid(
                    VAR,
                    format!(
                        "must be 0 (never) or 1 to {PURGE_AFTER_MAX_S} seconds (a year); {s} given"
                    ),
                ));
            }
            Some(_) if !allowed => {
                return Err(invalid(
                    VAR,
                    "without FLASHSALE_LEDGER_URL Redis holds the only copy of the orders a \
                     purge deletes: configure the ledger, or set \
                     FLASHSALE_WORKER_PURGE_WITHOUT_LEDGER=true to purge them anyway, or 0",
                ));
            }
            Some(s) => s,
        };
        Ok((Some(Duration::from_secs(secs)), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        w: WorkerArgs,
    }

    fn parse(args: &[&str]) -> Result<WorkerSettings, ConfigError> {
        let mut all = vec!["t", "--redis-url", "redis://127.0.0.1:1"];
        all.extend_from_slice(args);
        T::try_parse_from(all).expect("flags parse").w.settings()
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let ok = parse(&[]).expect("defaults are valid");
        assert_eq!(ok.tuning.batch, 512);
        assert_eq!(ok.tuning.expire_every, Duration::from_millis(500));
        for (args, var) in [
            (&["--batch", "0"][..], "FLASHSALE_WORKER_BATCH"),
            (&["--block-ms", "5"], "FLASHSALE_WORKER_BLOCK_MS"),
            (&["--linger-ms", "5000"], "FLASHSALE_WORKER_LINGER_MS"),
            (&["--claim-idle-ms", "10"], "FLASHSALE_WORKER_CLAIM_IDLE_MS"),
            (
                &["--max-deliveries", "0"],
                "FLASHSALE_WORKER_MAX_DELIVERIES",
            ),
            (&["--sweep-ms", "1"], "FLASHSALE_WORKER_SWEEP_MS"),
            (&["--expire-ms", "49"], "FLASHSALE_WORKER_EXPIRE_MS"),
            (&["--expire-ms", "60001"], "FLASHSALE_WORKER_EXPIRE_MS"),
            (&["--metrics", "nowhere"], "FLASHSALE_WORKER_METRICS"),
            (&["--consumer", "a b"], "FLASHSALE_WORKER_NAME"),
            (
                &["--shutdown-timeout-s", "0"],
                "FLASHSALE_WORKER_SHUTDOWN_TIMEOUT_S",
            ),
            (
                &["--purge-without-ledger", "--purge-after-s", "31536001"],
                "FLASHSALE_WORKER_PURGE_AFTER_S",
            ),
            (&["--purge-after-s", "60"], "FLASHSALE_WORKER_PURGE_AFTER_S"),
        ] {
            let e = parse(args).expect_err("refused").to_string();
            assert!(e.starts_with(var), "{args:?}: {e}");
        }
    }

    #[test]
    fn automatic_purge_is_on_by_default_with_a_ledger_and_only_when_asked_without() {
        const URL: &str = "postgres://fs:pw@127.0.0.1:5432/ledger";
        let week = Some(Duration::from_secs(PURGE_AFTER_DEFAULT_S));
        let t = |args: &[&str]| {
            let s = parse(args).expect("valid").tuning;
            (s.purge_after, s.purge_needs_ledger)
        };
        assert_eq!(t(&["--ledger-url", URL]), (week, false));
        assert_eq!(
            t(&["--ledger-url", URL, "--purge-after-s", "2"]),
            (Some(Duration::from_secs(2)), false)
        );
        assert_eq!(
            t(&["--ledger-url", URL, "--purge-after-s", "0"]),
            (None, false)
        );
        // Without a ledger: off, and said so; on only when asked.
        assert_eq!(t(&[]), (None, true));
        assert_eq!(t(&["--purge-after-s", "0"]), (None, false));
        assert_eq!(t(&["--purge-without-ledger"]), (week, false));
        assert_eq!(
            t(&["--purge-without-ledger", "--purge-after-s", "31536000"]),
            (Some(Duration::from_secs(PURGE_AFTER_MAX_S)), false)
        );
    }

    #[test]
    fn the_ledger_is_optional_and_its_url_checked_without_showing_it() {
        assert!(parse(&[]).expect("defaults").ledger.is_none());
        let s = parse(&[
            "--ledger-url",
            "postgres://fs:hunter2@127.0.0.1:5432/ledger",
        ])
        .expect("valid");
        let ledger = s.ledger.expect("configured");
        assert_eq!(ledger.describe(), "127.0.0.1:5432/ledger");
        assert!(!format!("{ledger:?}").contains("hunter2"));
        for bad in [
            "http://fs:hunter2@h/db",
            "postgres://fs:hunter2@h:99999/db",
            "",
        ] {
            let e = parse(&["--ledger-url", bad]).expect_err(bad).to_string();
            assert!(e.starts_with("FLASHSALE_LEDGER_URL"), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
    }
}
