//! Orders as the tests and the failover harness check them: read straight
//! from the current master, never through the service under test.

use std::time::{Duration, Instant};

use crate::redis_group::RedisGroup;

/// Whether an order status is `confirmed` or one only reached through it.
pub fn reached_confirmed(status: Option<&str>) -> bool {
    matches!(status, Some("confirmed" | "paid" | "expired" | "cancelled"))
}

/// `status` of each order (ids are `<sku>.<hex>`) under key prefix
/// `prefix`, on the current master (`None`: no such order).
pub async fn order_statuses(
    group: &RedisGroup,
    prefix: &str,
    ids: &[String],
) -> Result<Vec<Option<String>>, redis::RedisError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = group.client(group.master_port().await).await;
    let mut pipe = redis::pipe();
    for id in ids {
        let sku = id.rsplit_once('.').map(|(s, _)| s).unwrap_or(id);
        pipe.cmd("HGET")
            .arg(format!("{prefix}:{{{sku}}}:order:{id}"))
            .arg("status");
    }
    pipe.query_async(&mut c).await
}

/// Waits up to `timeout` for every order of `ids` to reach `confirmed` on
/// the current master; returns those that did not, with their status then
/// (`None`: the order does not exist). A read that fails is retried until
/// the deadline; past it, every order counts as not confirmed.
pub async fn unconfirmed_after(
    group: &RedisGroup,
    prefix: &str,
    ids: &[String],
    timeout: Duration,
) -> Vec<(String, Option<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = order_statuses(group, prefix, ids).await;
        let bad: Vec<(String, Option<String>)> = match statuses {
            Ok(st) => ids
                .iter()
                .zip(st)
                .filter(|(_, s)| !reached_confirmed(s.as_deref()))
                .map(|(id, s)| (id.clone(), s))
                .collect(),
            Err(_) => ids.iter().map(|id| (id.clone(), None)).collect(),
        };
        if bad.is_empty() || Instant::now() >= deadline {
            return bad;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
