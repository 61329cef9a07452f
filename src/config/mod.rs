//! Settings from the environment and command-line flags, validated once at
//! start-up.
//!
//! Every setting is both an environment variable and a flag
//! (clap reads the variable when the flag is absent). Validation turns the raw
//! strings into typed settings and fails with one line that names the
//! variable. Secrets are held in [`Secret`], whose `Debug` prints `***`, and
//! clap is told never to show their values in `--help`; each secret may also
//! be read from a file named by `<VARIABLE>_FILE`.

use std::time::Duration;

mod redis;
mod serve;
mod worker;

pub use redis::{
    Access, ClientCert, DEFAULT_CLUSTER_FAILOVER_WAIT_MS, DEFAULT_FAILOVER_WAIT_MS, RedisArgs,
    RedisSettings, RedisTarget, ReplicaAcks, Tls,
};
pub use serve::{JwtKeys, JwtSettings, ServeArgs, ServeSettings};
pub use worker::{WorkerArgs, WorkerSettings, WorkerTuning, default_consumer};

/// A configuration problem; the message names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {msg}")]
    Invalid { var: &'static str, msg: String },
}

pub(crate) fn invalid(var: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        msg: msg.into(),
    }
}

/// A secret string: never printed, logged or put in an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads a secret from the variable's value or from the file `<var>_FILE`
/// names (trailing newline removed). Both set is an error; so is an empty one.
pub fn secret(
    var: &'static str,
    value: Option<String>,
    file_var: &'static str,
    file: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(invalid(
            var,
            format!("set either {var} or {file_var}, not both"),
        )),
        (Some(v), None) if v.is_empty() => Err(invalid(var, "is empty")),
        (Some(v), None) => Ok(Some(Secret(v))),
        (None, Some(path)) => {
            let raw = std::fs::read_to_string(&path)
                .map_err(|e| invalid(file_var, format!("cannot read the file it names: {e}")))?;
            let v = raw.trim_end_matches(['\n', '\r']).to_owned();
            if v.is_empty() {
                return Err(invalid(file_var, "the file it names is empty"));
            }
            Ok(Some(Secret(v)))
        }
        (None, None) => Ok(None),
    }
}

/// A duration in milliseconds within `[lo, hi]`, or an error naming `var`.
pub(crate) fn ms(var: &'static str, v: u64, lo: u64, hi: u64) -> Result<Duration, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(Duration::from_millis(v))
    } else {
        Err(invalid(var, format!("must be between {lo} and {hi}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        r: RedisArgs,
    }

    fn parse(args: &[&str]) -> Result<RedisSettings, ConfigError> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).expect("parses").r.settings()
    }

    #[test]
    fn sentinels_and_url_are_exclusive() {
        let e = parse(&[
            "--redis-sentinels",
            "127.0.0.1:1",
            "--redis-url",
            "redis://x",
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_REDIS_SENTINELS"));
        let e = parse(&[]).unwrap_err();
        assert!(e.to_string().contains("not set"));
    }

    #[test]
    fn acks_default_by_target() {
        let s = parse(&["--redis-sentinels", "127.0.0.1:1,localhost:2"]).unwrap();
        assert_eq!(s.replica_acks, ReplicaAcks::All);
        let s = parse(&["--redis-url", "redis://127.0.0.1:1"]).unwrap();
        assert_eq!(s.replica_acks, ReplicaAcks::Count(0));
        let e = parse(&["--redis-url", "redis://h", "--replica-acks", "many"]).unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_REPLICA_ACKS"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = parse(&[
            "--redis-sentinels",
            "h:1",
            "--redis-password",
            "hunter2-very-secret",
        ])
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let e = parse(&["--redis-url", "http://user:hunter2@h"]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[derive(Parser)]
    struct S {
        #[command(flatten)]
        s: ServeArgs,
    }

    fn serve(args: &[&str]) -> Result<ServeSettings, ConfigError> {
        let mut v = vec![
            "t",
            "--redis-sentinels",
            "h:1",
            "--jwt-secret",
            "0123456789abcdef",
        ];
        v.extend_from_slice(args);
        S::try_parse_from(v).expect("parses").s.settings()
    }

    #[test]
    fn connection_limits_are_settings() {
        let s = serve(&[]).unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_ip), (10_000, 256));
        let s = serve(&["--max-connections", "50", "--max-connections-per-ip", "0"]).unwrap();
        assert_eq!((s.max_connections, s.max_connections_per_ip), (50, 0));
        let e = serve(&["--max-connections", "0"]).unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_MAX_CONNECTIONS"));
    }

    #[test]
    fn users_and_tls_settings_that_cannot_work_name_their_variable() {
        let first = |args: &[&str]| parse(args).unwrap_err().to_string();
        let s = ["--redis-sentinels", "h:1"];
        let with = |more: &[&'static str]| {
            let mut v = s.to_vec();
            v.extend_from_slice(more);
            v
        };
        assert!(
            first(&with(&["--redis-tls-ca-file", "/x"])).starts_with("FLASHSALE_REDIS_TLS_CA_FILE")
        );
        assert!(first(&with(&["--redis-tls", "on"])).starts_with("FLASHSALE_REDIS_TLS:"));
        assert!(
            first(&with(&[
                "--redis-tls",
                "true",
                "--redis-tls-key-file",
                "/x"
            ]))
            .starts_with("FLASHSALE_REDIS_TLS_CERT_FILE")
        );
        assert!(first(&with(&["--redis-username", "u"])).starts_with("FLASHSALE_REDIS_USERNAME"));
        assert!(
            first(&with(&["--sentinel-username", "u"])).starts_with("FLASHSALE_SENTINEL_USERNAME")
        );
        assert!(
            first(&["--redis-url", "redis://h:1", "--redis-tls", "true"])
                .starts_with("FLASHSALE_REDIS_TLS:")
        );
    }

    #[test]
    fn a_urls_user_stays_unless_the_variables_name_another() {
        let s = parse(&["--redis-url", "redis://u:hunter2@h:1/"]).unwrap();
        assert_eq!(s.access.username.as_deref(), Some("u"));
        assert_eq!(
            s.access.password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        assert!(s.access.tls.is_none());
        let s = parse(&[
            "--redis-url",
            "redis://u:hunter2@h:1/",
            "--redis-username",
            "app",
            "--redis-password",
            "pw",
        ])
        .unwrap();
        assert_eq!(s.access.username.as_deref(), Some("app"));
        assert_eq!(s.access.password.as_ref().map(Secret::expose), Some("pw"));
        // rediss:// turns TLS on (the system's roots without a CA file).
        let s = parse(&["--redis-url", "rediss://h:1"]).unwrap();
        assert!(s.access.tls.as_ref().is_some_and(|t| t.ca.is_none()));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bad_sentinel_list_names_the_variable() {
        let e = parse(&["--redis-sentinels", "nohost"]).unwrap_err();
        assert!(e.to_string().starts_with("FLASHSALE_REDIS_SENTINELS"));
    }
}
