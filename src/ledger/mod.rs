//! The order ledger in PostgreSQL (`FLASHSALE_LEDGER_URL`): with it, an
//! order is `confirmed` only once it is recorded here, and every confirmed
//! order is here exactly once.
//!
//! Owns: the `orders` table and its schema (`migrations/`, applied by
//! [`Ledger::migrate`] — `flashsale ledger migrate`, and `flashsale-worker`
//! at start-up), the one way rows are written ([`Ledger::record`]: a batch
//! of typed [`Record`]s, each idempotent), reading orders back
//! ([`Ledger::order`], [`Ledger::orders_of`]), its connection pool and
//! timeouts, and its settings ([`LedgerArgs`]).
//!
//! Must not: talk to Redis, or decide whether an order exists or may be
//! confirmed — the worker decides that from Redis and records only orders
//! it has just read there (see `worker`); write a row any other way than
//! through a [`Record`]; ever be on the purchase path (`flashsale serve`
//! never touches PostgreSQL, so an outage here delays confirmation and
//! nothing else).
//!
//! **Why `INSERT … SELECT FROM UNNEST(arrays) ON CONFLICT DO NOTHING`**,
//! one statement per batch, rather than `COPY` into a temporary staging
//! table and `INSERT … SELECT … ON CONFLICT` from it: measured with
//! `loadtest/src/bin/ledger_bench.rs` (docs/ARCHITECTURE.md, "The order
//! ledger"), UNNEST is the faster at the worker's batch sizes (one writer:
//! 108 000 against 73 000 new orders/s in batches of 128, 151 000 against
//! 110 000 in batches of 512; 1.8–3 × on repeats) — one round trip and one
//! statement against a transaction around a COPY and an INSERT — and needs
//! no per-connection temporary table. What COPY saves, cheap row encoding, matters only for
//! loads far larger than a batch (not measured here).
//!
//! Pool: at most [`POOL_SIZE`] connections (one worker writes one batch at
//! a time), opened within [`ACQUIRE_TIMEOUT`]; every statement is bounded by
//! the server (`statement_timeout`, [`STATEMENT_TIMEOUT`]) and by the client
//! ([`CALL_TIMEOUT`], for a server that stopped answering).

mod read;
pub mod reconcile;
mod records;
mod settings;

use std::future::Future;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};

pub use read::{LedgerOrder, LedgerStatus};
pub use records::{NewOrder, Record, Recorded};
pub use settings::{LedgerArgs, LedgerSettings, VAR};

/// The schema, compiled in from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Connections of one process (the worker writes one batch at a time; the
/// second serves a probe or a read beside it).
pub const POOL_SIZE: u32 = 2;
/// How long getting a connection (opening one included) may take.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// The server cancels a statement running longer than this.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The client gives up on a call after this (a frozen server never answers).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Migrations get longer: they may wait for another process's (advisory lock).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong with the ledger. Messages never carry the URL or the
/// password.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Not reachable, not answering, shutting down, out of connections:
    /// try again later.
    #[error("order ledger unreachable: {0}")]
    Unavailable(String),
    /// The server refused the statement (a constraint, a type, a permission).
    #[error("order ledger refused the statement: {0}")]
    Refused(String),
    /// A row that does not read back as an order.
    #[error("unexpected data in the order ledger: {0}")]
    Data(String),
    #[error("order ledger migration failed: {0}")]
    Migration(String),
}

impl LedgerError {
    /// Whether waiting may help (the server is down or busy), rather than
    /// a fault in what was sent.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LedgerError::Unavailable(_))
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => {
                // Class 08: connection exception; 57P0x: the server is
                // shutting down or starting; 53: out of resources; 40001 and
                // 40P01: serialization failure and deadlock (retry).
                let code = db.code().unwrap_or_default();
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || code == "40001"
                    || code == "40P01"
                    || code == "57014"
                {
                    LedgerError::Unavailable(e.to_string())
                } else {
                    LedgerError::Refused(e.to_string())
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => LedgerError::Unavailable(e.to_string()),
            _ => LedgerError::Refused(e.to_string()),
        }
    }
}

impl From<MigrateError> for LedgerError {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::Execute(e) => match LedgerError::from(e) {
                LedgerError::Unavailable(m) => LedgerError::Unavailable(m),
                other => LedgerError::Migration(other.to_string()),
            },
            other => LedgerError::Migration(other.to_string()),
        }
    }
}

/// Bounds a call by [`CALL_TIMEOUT`].
pub(crate) async fn with_timeout<T, E: Into<LedgerError>>(
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, LedgerError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(LedgerError::Unavailable(format!(
            "no answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// The order ledger: a small connection pool to it.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: PgPool,
    at: String,
}

impl Ledger {
    /// Opens the pool and one connection (so an unreachable ledger is
    /// reported now). `app` is the `application_name` the server shows.
    pub async fn connect(settings: &LedgerSettings, app: &str) -> Result<Ledger, LedgerError> {
        let options = settings.options().application_name(app).options([(
            "statement_timeout",
            STATEMENT_TIMEOUT.as_millis().to_string(),
        )]);
        let pool = with_timeout(
            PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .idle_timeout(Some(Duration::from_secs(60)))
                // A broken connection shows itself on use (and is then
                // dropped); a ping before every batch would cost a round trip.
                .test_before_acquire(false)
                .connect_with(options),
        )
        .await?;
        Ok(Ledger {
            pool,
            at: settings.describe(),
        })
    }

    /// `host:port/database` (no user, no password), for logs.
    pub fn describe(&self) -> &str {
        &self.at
    }

    /// Applies the migrations not applied yet (under the migrator's
    /// advisory lock, so workers starting together take turns); returns the
    /// schema version now in place.
    pub async fn migrate(&self) -> Result<i64, LedgerError> {
        match tokio::time::timeout(MIGRATE_TIMEOUT, MIGRATOR.run(&self.pool)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(LedgerError::Unavailable(format!(
                    "migrations did not finish within {} s",
                    MIGRATE_TIMEOUT.as_secs()
                )));
            }
        }
        Ok(schema_version())
    }

    /// One round trip (`SELECT 1`): whether the ledger answers now.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        with_timeout(sqlx::query("SELECT 1").execute(&self.pool)).await?;
        Ok(())
    }

    /// Closes every connection (waits for the ones in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The version of the newest migration this binary carries.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_compiled_in() {
        assert!(schema_version() >= 1);
        let first = MIGRATOR.iter().next().expect("a migration");
        assert!(first.sql.contains("CREATE TABLE orders"));
        assert!(first.sql.contains("ON CONFLICT") || first.sql.contains("PRIMARY KEY"));
    }

    #[test]
    fn outages_and_refusals_are_told_apart() {
        assert!(LedgerError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(LedgerError::from(sqlx::Error::Io(io)).is_unavailable());
        assert!(!LedgerError::from(sqlx::Error::RowNotFound).is_unavailable());
    }
}
