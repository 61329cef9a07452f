//! The Function library (`flashsale.lua`): loading, version check, and the
//! typed calls the rest of the crate makes (the purchase, the worker's
//! confirm, dead-letter, trim and sweep calls).
//!
//! The library is loaded with `FUNCTION LOAD REPLACE` when the master lacks
//! it or holds an older version — never over a newer one, so during a rolling
//! deploy an old process does not take the new library away from the new
//! ones (a version only adds functions; see `flashsale.lua`). This runs
//! before a master link is installed, so it is checked at start-up and after
//! every master switch. Functions are
//! replicated and persisted, unlike the `EVALSHA` script cache, so a promoted
//! replica already has them.

use redis::aio::MultiplexedConnection;

use super::keys::Keys;

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

/// The `FCALL fs_purchase` of one purchase (KEYS and ARGV as the library
/// documents them): the server's, and the benchmarks' and tests' that call
/// the Function directly. `order_id` is `<sku>.<32 hex>`.
pub fn purchase_call(
    keys: &Keys,
    sku: &str,
    user: &str,
    qty: i64,
    order_id: &str,
    idempotency_key: Option<&str>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("fs_purchase")
        .arg(7)
        .arg(keys.sale(sku))
        .arg(keys.units(sku))
        .arg(keys.first(sku))
        .arg(keys.user_orders(sku, user))
        .arg(keys.order(sku, order_id))
        .arg(keys.stream(sku))
        .arg(match idempotency_key {
            Some(k) => keys.idempotency(sku, user, k),
            None => String::new(),
        })
        .arg(user)
        .arg(qty)
        .arg(order_id);
    cmd
}

/// Adds one `FCALL fs_confirm_batch` to `pipe`: the given entries of one
/// sale's stream, as `(order id, entry id)` (at most
/// [`CONFIRM_BATCH_MAX`]). Its reply is one 1 / 0 / -1 per entry.
pub fn confirm_batch_into<'a>(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    sku: &str,
    group: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    let n = entries.clone().count();
    debug_assert!(n <= CONFIRM_BATCH_MAX);
    let cmd = pipe
        .cmd("FCALL")
        .arg("fs_confirm_batch")
        .arg(2 + n)
        .arg(keys.sale(sku))
        .arg(keys.stream(sku));
    for (order_id, _) in entries.clone() {
        cmd.arg(keys.order(sku, order_id));
    }
    cmd.arg(group);
    for (order_id, entry_id) in entries {
        cmd.arg(order_id).arg(entry_id);
    }
}

/// Most entries one `fs_confirm_batch` or `fs_requeue` takes (the library
/// refuses more).
pub const CONFIRM_BATCH_MAX: usize = 512;

/// `FCALL fs_dead_letter`: moves one pending entry to the dead letters and
/// acknowledges it. Replies 1, or 0 when the entry was already gone.
pub fn dead_letter_call(
    keys: &Keys,
    sku: &str,
    group: &str,
    entry_id: &str,
    reason: &str,
    deliveries: usize,
    consumer: &str,
) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("fs_dead_letter")
        .arg(2)
        .arg(keys.stream(sku))
        .arg(keys.dead_letters(sku))
        .arg(group)
        .arg(entry_id)
        .arg(reason)
        .arg(deliveries)
        .arg(consumer);
    cmd
}

/// `FCALL fs_trim`: trims a sale's stream on the node it runs on (see the
/// library). Replies `(trimmed, scanned)`.
pub fn trim_call(keys: &Keys, sku: &str, max_scan: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("fs_trim")
        .arg(1)
        .arg(keys.stream(sku))
        .arg(max_scan);
    cmd
}

/// `FCALL_RO fs_lost`: queued orders of a sale that no live entry carries
/// on this node (-1: unknown, look).
pub fn lost_call(keys: &Keys, sku: &str, group: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg("fs_lost")
        .arg(3)
        .arg(keys.sale(sku))
        .arg(keys.stream(sku))
        .arg(keys.dead_letters(sku))
        .arg(group);
    cmd
}

/// `FCALL fs_requeue`: queues again those of `order_keys` (one sale's, at
/// most [`CONFIRM_BATCH_MAX`]) that are queued, older than `older_than`
/// and carried by no live entry. Replies `(requeued, "nogroup" or "")`.
pub fn requeue_call(
    keys: &Keys,
    sku: &str,
    group: &str,
    order_keys: &[String],
    older_than: std::time::Duration,
) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("fs_requeue")
        .arg(2 + order_keys.len())
        .arg(keys.sale(sku))
        .arg(keys.stream(sku))
        .arg(order_keys)
        .arg(group)
        .arg(older_than.as_millis() as u64);
    cmd
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
    let have: Result<String, _> = redis::cmd("FCALL_RO")
        .arg("fs_version")
        .arg(0)
        .query_async(conn)
        .await;
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
