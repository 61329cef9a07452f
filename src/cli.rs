//! What the binaries share: how a failure is reported and which exit code
//! it gets, and the one shutdown signal. The binaries in `src/bin/` parse
//! their flags, turn them into settings (`config`), and call the library;
//! they report every error through [`Failure`] and nothing else.

use std::process::ExitCode;

use crate::config::ConfigError;

/// Exit code of a configuration error (`EX_CONFIG` of sysexits.h): systemd
/// units do not restart on it.
pub const EX_CONFIG: u8 = 78;

/// Exit code of `flashsale audit` when a sale is inconsistent (2 is clap's
/// usage error, 1 any other failure).
pub const EX_INCONSISTENT: u8 = 3;

/// Why a binary stops with an error: the one line it prints, and its code.
#[derive(Debug)]
pub enum Failure {
    /// A setting is missing or wrong; the message names the variable.
    Config(ConfigError),
    /// Anything else (Redis unreachable, an I/O error, …).
    Other(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Config(_) => EX_CONFIG,
            Failure::Other(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Config(e) => e.fmt(f),
            Failure::Other(m) => f.write_str(m),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<crate::redis::DbError> for Failure {
    fn from(e: crate::redis::DbError) -> Self {
        Failure::Other(format!("redis: {e}"))
    }
}

impl From<crate::sale::Error> for Failure {
    fn from(e: crate::sale::Error) -> Self {
        Failure::Other(e.to_string())
    }
}

impl From<crate::web::StartError> for Failure {
    fn from(e: crate::web::StartError) -> Self {
        Failure::Other(e.0)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Other(m)
    }
}

impl From<&str> for Failure {
    fn from(m: &str) -> Self {
        Failure::Other(m.to_owned())
    }
}

/// The process's exit: the code `result` carries, or the failure printed as
/// one line `<prog>: <why>` with its code.
pub fn exit(prog: &str, result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("{prog}: {f}");
            ExitCode::from(f.code())
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C), whichever comes first.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
