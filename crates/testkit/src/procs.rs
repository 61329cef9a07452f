//! The service's own processes (`flashsale serve`, `flashsale-worker`)
//! pointed at a test group, the product's default settings where a
//! harness must run them as shipped, and the small process helpers the
//! Sentinel group and the cluster share (is a binary on PATH, is a PID
//! alive, send it a signal).

use std::time::Duration;

use crate::redis_group::RedisGroup;

/// Sets the Redis variables of `group` (Sentinels, password, master name,
/// and with a TLS group the TLS variables) and the key prefix on a command
/// that starts a flashsale binary. With an ACL group the password is the
/// `default` user's: [`acl_env`] switches to the product's users.
pub fn redis_env<'a>(
    cmd: &'a mut tokio::process::Command,
    group: &RedisGroup,
    prefix: &str,
) -> &'a mut tokio::process::Command {
    if let Some(f) = group.tls_files() {
        cmd.env("FLASHSALE_REDIS_TLS", "true")
            .env("FLASHSALE_REDIS_TLS_CA_FILE", &f.ca)
            .env("FLASHSALE_REDIS_TLS_CERT_FILE", &f.cert)
            .env("FLASHSALE_REDIS_TLS_KEY_FILE", &f.key);
    }
    cmd.env("FLASHSALE_REDIS_SENTINELS", group.sentinels_env())
        .env("FLASHSALE_REDIS_PASSWORD", group.password())
        .env("FLASHSALE_REDIS_MASTER_NAME", group.master_name())
        .env("FLASHSALE_KEY_PREFIX", prefix)
}

/// With an ACL group: log in as data-node user `user` (`flashsale-app`,
/// `flashsale-worker`) and as the Sentinels' `flashsale-watch`.
pub fn acl_env<'a>(
    cmd: &'a mut tokio::process::Command,
    group: &RedisGroup,
    user: &str,
) -> &'a mut tokio::process::Command {
    cmd.env("FLASHSALE_REDIS_USERNAME", user)
        .env("FLASHSALE_REDIS_PASSWORD", group.user_password(user))
        .env("FLASHSALE_SENTINEL_USERNAME", "flashsale-watch")
        .env(
            "FLASHSALE_SENTINEL_PASSWORD",
            group.user_password("flashsale-watch"),
        )
}

/// Sets the Redis variables of `cluster` (seed nodes, password, and with a
/// TLS cluster the TLS variables) and the key prefix on a command that
/// starts a flashsale binary.
pub fn cluster_env<'a>(
    cmd: &'a mut tokio::process::Command,
    cluster: &crate::redis_cluster::RedisCluster,
    prefix: &str,
) -> &'a mut tokio::process::Command {
    if let Some(f) = cluster.tls_files() {
        cmd.env("FLASHSALE_REDIS_TLS", "true")
            .env("FLASHSALE_REDIS_TLS_CA_FILE", &f.ca)
            .env("FLASHSALE_REDIS_TLS_CERT_FILE", &f.cert)
            .env("FLASHSALE_REDIS_TLS_KEY_FILE", &f.key);
    }
    cmd.env("FLASHSALE_REDIS_CLUSTER", cluster.seeds_env())
        .env("FLASHSALE_REDIS_PASSWORD", cluster.password())
        .env("FLASHSALE_KEY_PREFIX", prefix)
}

/// The hold `flashsale serve` runs with unless told otherwise
/// (`FLASHSALE_FAILOVER_WAIT_MS` as the product parses it from the
/// environment of this process), for harnesses that must run the shipped
/// settings.
pub fn shipped_failover_wait() -> Duration {
    #[derive(clap::Parser)]
    struct Product {
        #[command(flatten)]
        redis: flashsale::config::RedisArgs,
    }
    let p = <Product as clap::Parser>::try_parse_from(["flashsale"])
        .unwrap_or_else(|e| panic!("the product's Redis settings do not parse: {e}"));
    Duration::from_millis(p.redis.failover_wait_ms())
}

/// Whether `bin` is a file in one of the `PATH` directories.
pub(crate) fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
}

/// `/proc/PID/cmdline` with NULs as spaces, if PID is alive and not a zombie.
pub(crate) fn live_cmdline(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the ")" that closes the command name.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Sends a signal with `kill(1)`; errors are ignored (the process may be gone).
pub(crate) fn send_signal(sig: &str, pids: &[i32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}
