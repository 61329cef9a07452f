//! Where the order ledger is: `FLASHSALE_LEDGER_URL` (or the file
//! `FLASHSALE_LEDGER_URL_FILE` names), validated once. The URL carries the
//! password: it is held as a [`Secret`], hidden from `--help`, and no error
//! or `Debug` output shows it. `flashsale-worker` and `flashsale ledger`
//! share these flags.

use std::str::FromStr;

use clap::Args;
use sqlx::postgres::PgConnectOptions;

use crate::config::{ConfigError, Secret, invalid, secret};

/// The variable every error here names.
pub const VAR: &str = "FLASHSALE_LEDGER_URL";

/// The ledger's flag and variable (`#[command(flatten)]`).
#[derive(Args, Debug, Clone, Default)]
pub struct LedgerArgs {
    /// postgres://user:password@host:port/database of the order ledger. When
    /// set, the worker confirms an order only once it is recorded there.
    #[arg(long, env = "FLASHSALE_LEDGER_URL", hide_env_values = true)]
    pub ledger_url: Option<String>,
    /// File holding the ledger URL (instead of FLASHSALE_LEDGER_URL).
    #[arg(long, env = "FLASHSALE_LEDGER_URL_FILE")]
    pub ledger_url_file: Option<String>,
}

/// A validated ledger location.
#[derive(Clone)]
pub struct LedgerSettings {
    options: PgConnectOptions,
}

impl LedgerArgs {
    /// `None` when no ledger is configured; an empty value is refused (an
    /// empty variable is more likely a mistake than a wish to run without
    /// the ledger).
    pub fn settings(&self) -> Result<Option<LedgerSettings>, ConfigError> {
        secret(
            VAR,
            self.ledger_url.clone(),
            "FLASHSALE_LEDGER_URL_FILE",
            self.ledger_url_file.clone(),
        )?
        .map(|url| LedgerSettings::parse(&url))
        .transpose()
    }
}

impl LedgerSettings {
    /// Parses a `postgres://` (or `postgresql://`) URL. Errors name the
    /// variable and never repeat the value.
    pub fn parse(url: &Secret) -> Result<LedgerSettings, ConfigError> {
        let raw = url.expose();
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            return Err(invalid(
                VAR,
                "must be a postgres://user:password@host:port/database URL (the value is not shown)",
            ));
        }
        let options = PgConnectOptions::from_str(raw).map_err(|_| {
            invalid(
                VAR,
                "is not a valid postgres:// URL: check the host, port, percent-encoding and \
                 parameters (the value is not shown)",
            )
        })?;
        Ok(LedgerSettings { options })
    }

    /// The connection options, without timeouts (the ledger adds them).
    pub(crate) fn options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// `host:port/database`, for logs (no user, no password).
    pub fn describe(&self) -> String {
        let o = &self.options;
        let host = match o.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => o.get_host().to_owned(),
        };
        format!(
            "{host}:{}/{}",
            o.get_port(),
            o.get_database().unwrap_or(o.get_username())
        )
    }
}

impl std::fmt::Debug for LedgerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSettings")
            .field("at", &self.describe())
            .field("user", &self.options.get_username())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: Option<&str>, file: Option<&str>) -> Result<Option<LedgerSettings>, ConfigError> {
        LedgerArgs {
            ledger_url: url.map(str::to_owned),
            ledger_url_file: file.map(str::to_owned),
        }
        .settings()
    }

    #[test]
    fn unset_is_no_ledger_and_a_url_is_parsed() {
        assert!(parse(None, None).expect("unset").is_none());
        let s = parse(
            Some("postgres://fs:hunter2-secret@db.example:6543/ledger"),
            None,
        )
        .expect("valid")
        .expect("set");
        assert_eq!(s.describe(), "db.example:6543/ledger");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.example:6543/ledger"), "{shown}");
    }

    #[test]
    fn malformed_urls_are_refused_by_name_without_the_password() {
        for bad in [
            "",
            "mysql://fs:hunter2-secret@db/ledger",
            "fs:hunter2-secret@db/ledger",
            "postgres://fs:hunter2-secret@db:notaport/ledger",
            "postgres://fs:hunter2-secret@db/ledger?sslmode=sometimes",
        ] {
            let e = parse(Some(bad), None).expect_err(bad).to_string();
            assert!(e.starts_with(VAR), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1, "{bad}: {e}");
        }
    }

    #[test]
    fn url_and_file_are_exclusive() {
        let e = parse(Some("postgres://h/db"), Some("/nonexistent")).expect_err("both");
        assert!(e.to_string().starts_with(VAR), "{e}");
    }
}
