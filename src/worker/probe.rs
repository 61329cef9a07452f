//! What the worker tells operators about the data it works on, apart from
//! its own work: whether it is ready (`/readyz`: the current master, and
//! the ledger when one is configured, answer now) and, every few seconds,
//! per shard, the gauges alerts need — the master answering
//! (`flashsale_redis_master_up`), its memory against `maxmemory`, and the
//! order streams' backlog (entries not processed yet, the age of the
//! oldest one, dead letters). Reads only: every call runs once on the
//! shard's current master link, never retried, within a time limit, so a
//! dead master costs a probe no more than that limit. Changes nothing in
//! Redis, and never takes part in the worker's steps.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::Value;

use super::GROUP;
use crate::ledger::Ledger;
use crate::sale::backlog::{first_unread_ms, group_state, oldest_entry_ms, push_oldest_reads};

use crate::redis::{MasterLink, Redis, Shard};

/// How long one call of a probe may take.
const CALL_LIMIT: Duration = Duration::from_secs(1);

/// Why a worker is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("no master answers")]
    Master,
    #[error("the order ledger does not answer")]
    Ledger,
}

/// Whether the worker can work now: every shard's current master answers
/// `PING`, and the ledger (when configured) `SELECT 1`, each within a
/// second.
pub async fn readiness(redis: &Redis, ledger: Option<&Ledger>) -> Result<(), NotReady> {
    if !redis.ping_master().await {
        return Err(NotReady::Master);
    }
    if let Some(l) = ledger
        && !matches!(tokio::time::timeout(CALL_LIMIT, l.ping()).await, Ok(Ok(())))
    {
        return Err(NotReady::Ledger);
    }
    Ok(())
}

/// The backlog of one shard's order streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Entries not processed yet: unread by the group, or read and pending.
    pub entries: i64,
    /// Milliseconds-since-epoch id time of the oldest such entry.
    pub oldest_ms: Option<i64>,
    /// Entries in the sales' dead-letter streams.
    pub dead_letters: i64,
}

async fn call<T: redis::FromRedisValue + Send, C: crate::redis::Query>(
    redis: &Redis,
    link: &MasterLink,
    cmd: &C,
) -> Option<T> {
    match tokio::time::timeout(CALL_LIMIT, redis.on_link::<T, C>(link, cmd)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::debug!(master = %link.addr, error = %e, "probe call failed");
            None
        }
        Err(_) => None,
    }
}

/// `used_memory` and `maxmemory` from an `INFO memory` reply.
fn memory(info: &str) -> (Option<f64>, Option<f64>) {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    (field("used_memory"), field("maxmemory"))
}

/// The backlog of the streams of `skus` on `link`'s node; a stream that
/// cannot be read this time (none yet, a call timed out) counts as empty.
async fn backlog(redis: &Redis, link: &MasterLink, skus: &[&str]) -> Backlog {
    let keys = redis.keys();
    let mut out = Backlog::default();
    for sku in skus {
        let stream = keys.stream(sku);
        let mut pipe = redis::pipe();
        pipe.cmd("XINFO").arg("GROUPS").arg(&stream);
        pipe.cmd("XLEN").arg(keys.dead_letters(sku));
        // A sale without a stream yet (nothing bought) has no groups.
        let Some((groups, dead)): Option<(Value, i64)> = call(redis, link, &pipe).await else {
            continue;
        };
        out.dead_letters += dead;
        let Some(state) = group_state(&groups, GROUP) else {
            continue;
        };
        // `lag` is nil when Redis cannot tell (entries deleted in the
        // middle): the first unread entry decides then.
        out.entries += state.pending + state.lag.unwrap_or(0);
        if state.idle() {
            continue;
        }
        let mut reads = redis::pipe();
        push_oldest_reads(reads.ignore_errors(), &stream, GROUP, &state);
        let Some([pending, unread]) = call::<Vec<Value>, _>(redis, link, &reads)
            .await
            .and_then(|r| <[Value; 2]>::try_from(r).ok())
        else {
            continue;
        };
        if state.lag.is_none() && first_unread_ms(&unread).is_some() {
            out.entries += 1;
        }
        let oldest = oldest_entry_ms(&pending, &unread);
        out.oldest_ms = match (out.oldest_ms, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    out
}

/// One key per hash slot (`keys()[s]` hashes to slot `s`): short
/// strings, found once.
fn slot_keys() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let n = usize::from(crate::redis::slots::SLOTS);
        let mut keys: Vec<Option<String>> = vec![None; n];
        let mut left = n;
        let mut i = 0u64;
        while left > 0 {
            let k = i.to_string();
            let s = usize::from(crate::redis::slots::slot(k.as_bytes()));
            if keys[s].is_none() {
                keys[s] = Some(k);
                left -= 1;
            }
            i += 1;
        }
        keys.into_iter().map(Option::unwrap_or_default).collect()
    })
}

/// The `shard` label of a shard: the lowest hash slot it owns (`0` with
/// Sentinels or one node). Unlike the shard's id, which is this process's
/// own, every worker gives a shard the same label, and a failover keeps
/// it; only moving slots changes it.
fn shard_label(redis: &Redis, shard: &Shard) -> Option<String> {
    slot_keys()
        .iter()
        .position(|k| redis.shard_of(k).is_some_and(|s| s.id == shard.id))
        .map(|slot| slot.to_string())
}

/// One probe of every shard: publishes its gauges.
pub async fn probe_once(redis: &Redis) {
    let shards = redis.shards();
    let keys = redis.keys();
    // The sales index lives where its key hashes (in a cluster, maybe on
    // another shard than the streams).
    let index = keys.sales_index();
    let mut zrange = redis::cmd("ZRANGE");
    zrange.arg(&index).arg(0).arg(-1);
    let skus: Option<Vec<String>> = match redis.shard_of(&index).and_then(|s| s.current()) {
        Some(link) => call(redis, &link, &zrange).await,
        None => None,
    };
    for shard in &shards {
        // A shard that owns no slot now (leaving the cluster) is not
        // reported.
        let Some(label) = shard_label(redis, shard) else {
            continue;
        };
        let link: Option<Arc<MasterLink>> = shard.current();
        let up = match &link {
            Some(l) => call::<String, _>(redis, l, &redis::cmd("PING"))
                .await
                .is_some(),
            None => false,
        };
        metrics::gauge!("flashsale_redis_master_up", "shard" => label.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        let Some(link) = link.filter(|_| up) else {
            continue;
        };
        let mut info = redis::cmd("INFO");
        info.arg("memory");
        if let Some(text) = call::<String, _>(redis, &link, &info).await {
            let (used, max) = memory(&text);
            if let (Some(used), Some(max)) = (used, max) {
                metrics::gauge!("flashsale_redis_used_memory_bytes", "shard" => label.clone())
                    .set(used);
                metrics::gauge!("flashsale_redis_maxmemory_bytes", "shard" => label.clone())
                    .set(max);
            }
        }
        let Some(skus) = &skus else { continue };
        let mine: Vec<&str> = skus
            .iter()
            .map(String::as_str)
            .filter(|sku| {
                redis
                    .shard_of(&keys.sale(sku))
                    .is_some_and(|s| s.id == shard.id)
            })
            .collect();
        let b = backlog(redis, &link, &mine).await;
        let age = match b.oldest_ms {
            Some(ms) => match call::<(u64, u64), _>(redis, &link, &redis::cmd("TIME")).await {
                Some(t) => (super::expiry::time_ms(t) - ms).max(0) as f64 / 1000.0,
                None => continue,
            },
            None => 0.0,
        };
        metrics::gauge!("flashsale_worker_lag", "shard" => label.clone()).set(b.entries as f64);
        metrics::gauge!("flashsale_worker_oldest_entry_age_seconds", "shard" => label.clone())
            .set(age);
        metrics::gauge!("flashsale_worker_dead_letters", "shard" => label)
            .set(b.dead_letters as f64);
    }
}

/// Probes every `every` until the process ends.
pub async fn run_probe(redis: Redis, every: Duration) {
    loop {
        probe_once(&redis).await;
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_memory_parses() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:268435456\r\nmaxmemory_policy:noeviction\r\n";
        assert_eq!(memory(info), (Some(1_048_576.0), Some(268_435_456.0)));
        assert_eq!(memory("# Memory\r\n"), (None, None));
    }

    #[test]
    fn there_is_a_key_for_every_slot() {
        let keys = slot_keys();
        assert_eq!(keys.len(), 16_384);
        for (slot, k) in keys.iter().enumerate() {
            assert_eq!(usize::from(crate::redis::slots::slot(k.as_bytes())), slot);
        }
    }
}
