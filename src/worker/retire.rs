//! Ended sales leave the worker's work. A sale that ended more than
//! [`RETIRE_AFTER_END`] ago (the server's clock; the automatic purge's
//! grace when that is shorter, see `retention.rs`) and has nothing left for
//! any worker — every order recorded (`orders == confirmed`), no order
//! waiting for its payment (`payby` empty), and in the group nothing
//! pending and no lag on its stream — is retired: it leaves this worker's
//! streams and is no longer read, reclaimed, expired, trimmed or swept.
//! Retired sales are looked at again every [`RECHECK_SWEEPS`] sweeps, with
//! the same check, and come back the moment something appears for them (an
//! entry replayed from the dead letters or queued again, a payment of an
//! order that had none); after a master switch at once, on the new node.
//! A purged sale (gone from the index) is dropped by `discover`, retired
//! or not.

use std::time::{Duration, Instant};

use redis::Value;

use super::expiry::time_ms;
use super::{GROUP, Worker};
use crate::redis::{DbError, MasterLink};
use crate::sale::backlog::group_state;

/// How long after its end a finished sale is retired.
pub const RETIRE_AFTER_END: Duration = Duration::from_secs(60);
/// Retired sales are checked again every this many `--sweep-ms` (30 s by
/// default).
pub const RECHECK_SWEEPS: u32 = 3;

/// What one check says of a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Ended long enough ago and nothing left for any worker.
    Finished,
    /// Something may still come or wait for a worker.
    Busy,
    /// Its hash is gone (purged, or being purged): `discover` drops it.
    Gone,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Judges one sale from its replies: `HMGET sale ends_ms orders
/// confirmed`, `ZCARD payby`, `XINFO GROUPS stream` (any may be an error),
/// retired `retire_after` after its end.
fn standing(
    now_ms: i64,
    retire_after: Duration,
    sale: &Value,
    payby: &Value,
    groups: &Value,
) -> Standing {
    let Value::Array(fields) = sale else {
        return Standing::Busy;
    };
    let [ends, orders, confirmed] = fields.as_slice() else {
        return Standing::Busy;
    };
    let Some(ends) = int(ends) else {
        return Standing::Gone;
    };
    if now_ms - ends < retire_after.as_millis() as i64 {
        return Standing::Busy;
    }
    if int(orders).unwrap_or(0) != int(confirmed).unwrap_or(0) || int(payby) != Some(0) {
        return Standing::Busy;
    }
    match group_state(groups, GROUP) {
        Some(g) if g.idle() => Standing::Finished,
        _ => Standing::Busy,
    }
}

impl Worker {
    /// Publishes how many sales this worker works on.
    /// `flashsale_worker_sales`: the sales worked on by this process (the
    /// workers of every shard together, each adding its own change).
    pub(super) fn publish_sales(&mut self) {
        let now = self.streams.len();
        let delta = now as f64 - self.published_sales as f64;
        if delta != 0.0 {
            metrics::gauge!("flashsale_worker_sales").increment(delta);
            self.published_sales = now;
        }
    }

    /// Retires finished sales (every `--sweep-ms`) and brings back retired
    /// ones that have work again (every [`RECHECK_SWEEPS`] sweeps): one
    /// `MULTI … EXEC` per sale on `link` with `TIME` and three reads, so
    /// each sale is judged on one consistent view of one node.
    pub(super) async fn retire_pass(&mut self, link: &MasterLink) -> Result<(), DbError> {
        let every = self.cfg.sweep_every;
        let check = self.last_retire_check.is_none_or(|t| t.elapsed() >= every);
        let recheck = !self.retired.is_empty()
            && self
                .last_recheck
                .is_none_or(|t| t.elapsed() >= every * RECHECK_SWEEPS);
        if !check && !recheck {
            return Ok(());
        }
        let mut candidates: Vec<(String, String, bool)> = Vec::new(); // (sku, stream, retired)
        if check {
            candidates.extend(
                self.streams
                    .iter()
                    .map(|(s, k)| (s.clone(), k.clone(), false)),
            );
        }
        if recheck {
            candidates.extend(
                self.retired
                    .iter()
                    .map(|(s, k)| (s.clone(), k.clone(), true)),
            );
        }
        if !candidates.is_empty() {
            let keys = self.redis.keys().clone();
            // One `MULTI … EXEC` per sale (a transaction may not span
            // slots in a cluster), all in one pipeline.
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (sku, stream, _) in &candidates {
                pipe.cmd("MULTI").ignore();
                pipe.cmd("TIME").ignore();
                pipe.cmd("HMGET")
                    .arg(keys.sale(sku))
                    .arg("ends_ms")
                    .arg("orders")
                    .arg("confirmed")
                    .ignore();
                pipe.cmd("ZCARD").arg(keys.pay_by(sku)).ignore();
                pipe.cmd("XINFO").arg("GROUPS").arg(stream).ignore();
                pipe.cmd("EXEC");
            }
            let replies: Vec<Value> = self.redis.on_link(link, &pipe).await?;
            if replies.len() != candidates.len() {
                return Err(DbError::Protocol(format!(
                    "retirement check: {} replies for {} sales",
                    replies.len(),
                    candidates.len()
                )));
            }
            let after = self.retire_after();
            for ((sku, stream, was_retired), reply) in candidates.into_iter().zip(replies) {
                let r = match reply {
                    Value::Array(items) if items.len() == 4 => items,
                    other => {
                        return Err(DbError::Protocol(format!(
                            "retirement check of {sku}: {other:?}"
                        )));
                    }
                };
                let now = redis::from_redis_value_ref::<(u64, u64)>(&r[0])
                    .map(time_ms)
                    .map_err(|e| DbError::Protocol(format!("TIME: {e}")))?;
                let r = &r[1..];
                match (standing(now, after, &r[0], &r[1], &r[2]), was_retired) {
                    (Standing::Finished, false) => {
                        self.streams.retain(|(s, _)| *s != sku);
                        self.claim_cursor.remove(&stream);
                        tracing::info!(
                            sku,
                            "sale retired: ended, every order recorded, nothing pending; no \
                             longer read, reclaimed, expired, trimmed or swept"
                        );
                        self.retired.push((sku, stream));
                    }
                    (Standing::Busy, true) => {
                        self.ensure_group(link, &stream).await?;
                        self.retired.retain(|(s, _)| *s != sku);
                        tracing::info!(sku, "retired sale has work again; working on it");
                        self.streams.push((sku, stream));
                    }
                    _ => {}
                }
            }
        }
        let now = Instant::now();
        if check {
            self.last_retire_check = Some(now);
        }
        if recheck {
            self.last_recheck = Some(now);
        }
        self.publish_sales();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn sale(ends: Option<i64>, orders: i64, confirmed: i64) -> Value {
        Value::Array(vec![
            ends.map_or(Value::Nil, |e| bulk(&e.to_string())),
            bulk(&orders.to_string()),
            bulk(&confirmed.to_string()),
        ])
    }

    fn groups(name: &str, pending: i64, lag: Value) -> Value {
        Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk(name),
            bulk("consumers"),
            Value::Int(1),
            bulk("pending"),
            Value::Int(pending),
            bulk("last-delivered-id"),
            bulk("5-0"),
            bulk("entries-read"),
            Value::Int(5),
            bulk("lag"),
            lag,
        ])])
    }

    #[test]
    fn only_a_sale_ended_a_minute_ago_with_nothing_left_is_finished() {
        let now = 1_000_000;
        let long_ago = Some(now - 61_000);
        let idle = groups(GROUP, 0, Value::Int(0));
        assert_eq!(
            standing(
                now,
                RETIRE_AFTER_END,
                &sale(long_ago, 5, 5),
                &Value::Int(0),
                &idle
            ),
            Standing::Finished
        );
        // Ended too recently, or not at all.
        assert_eq!(
            standing(
                now,
                RETIRE_AFTER_END,
                &sale(Some(now - 30_000), 5, 5),
                &Value::Int(0),
                &idle
            ),
            Standing::Busy
        );
        assert_eq!(
            standing(
                now,
                RETIRE_AFTER_END,
                &sale(Some(now + 60_000), 0, 0),
                &Value::Int(0),
                &idle
            ),
            Standing::Busy
        );
        // An order not recorded, one waiting for its payment.
        assert_eq!(
            standing(
                now,
                RETIRE_AFTER_END,
                &sale(long_ago, 5, 4),
                &Value::Int(0),
                &idle
            ),
            Standing::Busy
        );
        assert_eq!(
            standing(
                now,
                RETIRE_AFTER_END,
                &sale(long_ago, 5, 5),
                &Value::Int(1),
                &idle
            ),
            Standing::Busy
        );
        // Pending, lag, an unknown lag, another group only, no stream.
        for g in [
            groups(GROUP, 1, Value::Int(0)),
            groups(GROUP, 0, Value::Int(2)),
            groups(GROUP, 0, Value::Nil),
            groups("other", 0, Value::Int(0)),
            Value::Array(vec![]),
        ] {
            assert_eq!(
                standing(
                    now,
                    RETIRE_AFTER_END,
                    &sale(long_ago, 5, 5),
                    &Value::Int(0),
                    &g
                ),
                Standing::Busy,
                "{g:?}"
            );
        }
        // With a shorter purge grace, retired that much after the end.
        assert_eq!(
            standing(
                now,
                Duration::from_secs(1),
                &sale(Some(now - 2_000), 5, 5),
                &Value::Int(0),
                &idle
            ),
            Standing::Finished
        );
        // A purged sale's hash is gone.
        assert_eq!(
            standing(
                now,
                RETIRE_AFTER_END,
                &sale(None, 0, 0),
                &Value::Int(0),
                &idle
            ),
            Standing::Gone
        );
    }
}
