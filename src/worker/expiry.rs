//! Expiry on schedule: every `--expire-ms`, the orders whose payment
//! deadline has passed unpaid are expired with `fs_expire`, so their units
//! return to the sale without anyone calling the API. All of a pass runs on
//! the step's one link (see the one-node rule in `mod.rs`), and its "now"
//! is that node's clock (`TIME`), the clock the deadlines were set by.

use std::time::Duration;

use super::{StepReport, Worker};
use crate::redis::{DbError, MasterLink, functions};

/// Most orders asked for, and expired, per sale and call (the library's
/// batch limit).
const EXPIRE_CHUNK: usize = functions::CONFIRM_BATCH_MAX;
/// Most calls per sale and pass: a backlog larger than this many chunks is
/// worked off over the next passes, so one pass never holds the step long.
const EXPIRE_ROUNDS: usize = 16;

/// Milliseconds since the epoch from a `TIME` reply.
pub(super) fn time_ms((secs, micros): (u64, u64)) -> i64 {
    (secs * 1000 + micros / 1000) as i64
}

impl Worker {
    /// How long until the next expiry pass is due (zero: now).
    pub(super) fn until_expiry(&self) -> Duration {
        self.last_expire.map_or(Duration::ZERO, |t| {
            self.cfg.expire_every.saturating_sub(t.elapsed())
        })
    }

    /// One expiry pass on `link`: per sale, `ZRANGEBYSCORE payby -inf <now>
    /// LIMIT 0 512` (one pipeline for every sale), then `fs_expire` of the
    /// ids found (one pipeline), again for each sale whose chunk was full.
    /// `fs_expire` checks each order itself (still unpaid, deadline passed)
    /// and expires it once, so any number of workers may run this at once.
    pub(super) async fn expire(
        &mut self,
        link: &MasterLink,
        report: &mut StepReport,
    ) -> Result<(), DbError> {
        if self.streams.is_empty() {
            return Ok(());
        }
        let keys = self.redis.keys().clone();
        let now = time_ms(self.redis.on_link(link, &redis::cmd("TIME")).await?);
        let mut due: Vec<usize> = (0..self.streams.len()).collect();
        let mut total = vec![(0i64, 0i64); self.streams.len()];
        for _ in 0..EXPIRE_ROUNDS {
            let mut pipe = redis::pipe();
            for &i in &due {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(keys.pay_by(&self.streams[i].0))
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(EXPIRE_CHUNK);
            }
            let found: Vec<Vec<String>> = self.redis.on_link(link, &pipe).await?;
            let mut pipe = redis::pipe();
            let mut called = Vec::new();
            for (&i, ids) in due.iter().zip(&found) {
                if !ids.is_empty() {
                    pipe.add_command(functions::expire_call(&keys, &self.streams[i].0, ids));
                    called.push((i, ids.len()));
                }
            }
            if called.is_empty() {
                break;
            }
            let replies: Vec<(i64, i64)> = self.redis.on_link(link, &pipe).await?;
            due.clear();
            for (&(i, asked), (expired, units)) in called.iter().zip(replies) {
                total[i].0 += expired;
                total[i].1 += units;
                if asked == EXPIRE_CHUNK {
                    due.push(i);
                }
            }
            if due.is_empty() {
                break;
            }
        }
        for (i, (expired, units)) in total.into_iter().enumerate() {
            if expired == 0 {
                continue;
            }
            report.expired += expired as usize;
            metrics::counter!("flashsale_worker_expired_total").increment(expired as u64);
            tracing::info!(
                sku = %self.streams[i].0,
                expired,
                units_returned = units,
                "unpaid orders expired; their units are back in the sale"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_replies_become_milliseconds() {
        assert_eq!(time_ms((1_700_000_000, 123_999)), 1_700_000_000_123);
        assert_eq!(time_ms((0, 0)), 0);
    }
}
