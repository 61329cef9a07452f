//! The Function library (`flashsale.lua`): loading, version check, and the
//! typed calls the rest of the crate makes.
//!
//! The library is loaded with `FUNCTION LOAD REPLACE` when the master lacks
//! it or holds another version; this runs before a master link is installed,
//! so it is checked at start-up and after every master switch. Functions are
//! replicated and persisted, unlike the `EVALSHA` script cache, so a promoted
//! replica already has them.

use redis::aio::MultiplexedConnection;

/// The library source, compiled into the binary.
pub const LIBRARY: &str = include_str!("flashsale.lua");

/// The version the library declares (`local VERSION = '…'`).
pub fn library_version() -> &'static str {
    LIBRARY
        .lines()
        .find_map(|l| l.strip_prefix("local VERSION = '"))
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or("")
}

/// Loads the library unless the node already has this version.
pub async fn ensure_loaded(conn: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
    let have: Result<String, _> = redis::cmd("FCALL_RO")
        .arg("fs_version")
        .arg(0)
        .query_async(conn)
        .await;
    if have.as_deref().ok() == Some(library_version()) {
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
    #[test]
    fn version_is_declared() {
        assert!(!super::library_version().is_empty());
    }
}
