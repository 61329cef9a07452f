//! The Function library (`flashsale.lua`): loading and version check here,
//! and in `calls.rs` one typed call and one reply type per Function — the
//! only place in the crate (and in its tests and benchmarks) that spells
//! `FCALL` or knows a Function's KEYS, ARGV and reply shape. Reply types are
//! plain data; the domain (`sale/`) maps them to its errors.
//!
//! The library is loaded with `FUNCTION LOAD REPLACE` when the master lacks
//! it or holds an older version — never over a newer one, so during a rolling
//! deploy an old process does not take the new library away from the new
//! ones (a version only adds functions; see `flashsale.lua`). This runs
//! before a master link is installed, so it is checked at start-up and after
//! every master switch. Functions are
//! replicated and persisted, unlike the `EVALSHA` script cache, so a promoted
//! replica already has them.

mod calls;

use redis::aio::MultiplexedConnection;

pub use calls::*;

/// The library source, compiled into the binary.
pub const LIBRARY: &str = include_str!("../flashsale.lua");

/// The version the library declares (`local VERSION = '…'`).
pub fn library_version() -> &'static str {
    LIBRARY
        .lines()
        .find_map(|l| l.strip_prefix("local VERSION = '"))
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or("")
}

/// Whether a node holding version `have` (None: no library, or no
/// readable version) needs this binary's library.
fn needs_load(have: Option<&str>, ours: &str) -> bool {
    let num = |v: &str| v.parse::<u64>().ok();
    match (have.and_then(num), num(ours)) {
        (Some(have), Some(ours)) => have < ours,
        _ => have != Some(ours),
    }
}

/// Loads the library unless the node already has this version or a newer one.
pub async fn ensure_loaded(conn: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
    let have: Result<String, _> = version_call().query_async(conn).await;
    let have = have.ok();
    if !needs_load(have.as_deref(), library_version()) {
        if have.as_deref() != Some(library_version()) {
            tracing::info!(
                loaded = have.as_deref().unwrap_or(""),
                ours = library_version(),
                "a newer function library is loaded; keeping it"
            );
        }
        return Ok(());
    }
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async(conn)
        .await?;
    tracing::info!(version = library_version(), "function library loaded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_declared() {
        assert!(library_version().parse::<u64>().is_ok());
    }

    #[test]
    fn only_older_or_missing_libraries_are_replaced() {
        assert!(needs_load(None, "6"));
        assert!(needs_load(Some("5"), "6"));
        assert!(!needs_load(Some("6"), "6"));
        assert!(!needs_load(Some("7"), "6"));
        assert!(needs_load(Some("garbage"), "6"));
        assert!(!needs_load(Some("10"), "9"));
    }
}
