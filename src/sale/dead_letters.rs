//! Dead letters: order-stream entries the worker gave up on (moved there by
//! `fs_dead_letter` with their reason), listed and put back on the stream by
//! the operator (`flashsale dead-letters`). Reads and writes the master only.

use redis::Value;

use super::{Error, valid_sku};
use crate::redis::{Redis, text};

/// One dead letter: its id in the dead-letter stream and its fields
/// (`reason`, `deliveries`, `consumer`, `original_id`, and the original
/// entry's fields as `f:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl DeadLetter {
    /// The original entry's fields (without the `f:` prefix).
    fn original(&self) -> Vec<(&str, &str)> {
        self.fields
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("f:").map(|k| (k, v.as_str())))
            .collect()
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: usize,
    /// Dead letters whose original entry was already gone when it was
    /// dead-lettered (nothing to put back).
    pub skipped: Vec<String>,
}

/// The dead letters of `sku`, oldest first.
pub async fn list(redis: &Redis, sku: &str) -> Result<Vec<DeadLetter>, Error> {
    if !valid_sku(sku) {
        return Err(Error::invalid(
            "invalid_sku",
            "sku must be 1-64 of [A-Za-z0-9_-]",
        ));
    }
    let mut range = redis::cmd("XRANGE");
    range.arg(redis.keys().dead_letters(sku)).arg("-").arg("+");
    let entries: Vec<(String, Vec<Value>)> = redis.read_master(&range).await?;
    Ok(entries
        .into_iter()
        .map(|(id, flat)| DeadLetter {
            id,
            fields: flat
                .chunks(2)
                .filter_map(|p| match p {
                    [k, v] => Some((text(k).unwrap_or_default(), text(v).unwrap_or_default())),
                    _ => None,
                })
                .collect(),
        })
        .collect())
}

/// Puts the dead letters of `sku` (all, or the one `only` names) back on
/// the order stream and removes them from the dead-letter stream, each in
/// one atomic step. A replayed entry is a new delivery of the same order:
/// the worker's confirm is idempotent, so replaying twice changes nothing.
pub async fn replay(redis: &Redis, sku: &str, only: Option<&str>) -> Result<Replayed, Error> {
    let keys = redis.keys().clone();
    let mut done = Replayed::default();
    for dl in list(redis, sku).await? {
        if only.is_some_and(|o| o != dl.id) {
            continue;
        }
        let original = dl.original();
        if original.is_empty() {
            done.skipped.push(dl.id);
            continue;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let xadd = pipe.cmd("XADD").arg(keys.stream(sku)).arg("*");
        for (k, v) in original {
            xadd.arg(k).arg(v);
        }
        pipe.cmd("XDEL").arg(keys.dead_letters(sku)).arg(&dl.id);
        let _: Value = redis.write(&pipe).await?;
        done.replayed += 1;
    }
    Ok(done)
}
