//! Log output: the format (`FLASHSALE_LOG_FORMAT`, text or JSON lines on
//! stderr), the filter (`RUST_LOG`, default `info`) and the pseudonym of a
//! shopper in access lines ([`ShopperHash`]).
//!
//! This module only sets up the subscriber and formats values; what is
//! logged, and where, belongs to the code that logs it (the web layer's
//! request span, access and admin lines). The metrics recorder is not set
//! up here (see [`crate::telemetry`]).
//!
//! The JSON lines are tracing-subscriber's own format: `timestamp`,
//! `level`, `fields` (the event's fields, `message` among them), `target`,
//! and for a line emitted while a request is handled, `span` (the request's
//! span, with its `request_id`) and `spans`.

use std::fmt;
use std::io::IsTerminal;

use sha2::{Digest, Sha256};

/// The variable that chooses the format.
pub const VAR: &str = "FLASHSALE_LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json` (surrounding spaces and case ignored; empty is the
    /// default); anything else is an error that names the accepted values.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let v = raw.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("text") {
            Ok(Self::Text)
        } else if v.eq_ignore_ascii_case("json") {
            Ok(Self::Json)
        } else {
            Err(format!("`{v}` is not a log format: `text` or `json`"))
        }
    }

    /// The format the environment asks for (the operator's tools, which
    /// have no flag for it); unset is text.
    pub fn from_env() -> Result<Self, crate::config::ConfigError> {
        match std::env::var(VAR) {
            Ok(v) => Self::parse(&v).map_err(|e| crate::config::invalid(VAR, e)),
            Err(std::env::VarError::NotPresent) => Ok(Self::Text),
            Err(std::env::VarError::NotUnicode(_)) => Err(crate::config::invalid(
                VAR,
                "is not UTF-8 (`text` or `json`)",
            )),
        }
    }
}

/// Installs the process's subscriber: stderr (colours only on a
/// terminal), `RUST_LOG` filter (default `info`), in `format`. A second
/// call changes nothing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a journal or file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A shopper's pseudonym in access lines: the first 6 bytes of SHA-256 of
/// the user id (`sub`), written as 12 lowercase hex digits. A plain hash,
/// not a keyed one: the same on every instance and across restarts, so one
/// shopper's lines can be followed through a sale, and support can compute
/// it from a user id (`printf %s ID | sha256sum | cut -c1-12`) to find a
/// shopper's requests. It keeps user ids out of log storage; it does not
/// make them secret from someone who can enumerate the ids.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShopperHash([u8; 6]);

impl ShopperHash {
    pub fn of(user: &str) -> Self {
        let digest = Sha256::digest(user.as_bytes());
        let mut short = [0u8; 6];
        short.copy_from_slice(&digest[..6]);
        Self(short)
    }
}

impl fmt::Display for ShopperHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ShopperHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(""), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(" JSON "), Ok(LogFormat::Json));
        for bad in ["xml", "jsonl", "text json", "1"] {
            let e = LogFormat::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("`json`"), "{e}");
        }
    }

    #[test]
    fn shopper_hash_is_sha256_prefix() {
        // printf %s alice | sha256sum
        assert_eq!(ShopperHash::of("alice").to_string(), "2bd806c97f0e");
        assert_eq!(ShopperHash::of("alice").to_string().len(), 12);
        assert_ne!(ShopperHash::of("alice"), ShopperHash::of("alice2"));
    }
}
