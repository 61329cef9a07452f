//! Orders as shoppers see them: one order, and all of a shopper's orders.
//!
//! Reads go to the replicas; an order a replica does not have yet (it was
//! acknowledged, so this is rare) is looked up on the master before the
//! answer is "not found". A shopper's orders take two reads (the order ids,
//! then their records), which two different replicas may answer: a record
//! missing from the second is read from the master, so an order the first
//! one listed is never left out of the answer.

use std::collections::HashMap;

use serde::Serialize;

use super::{Error, Shop, rfc3339, sku_of_order, valid_user};
use crate::redis::{DbError, Keys};

/// An order as the API shows it: `{order_id, sku, user_id, qty, status,
/// created_at}`, plus `confirmed_at` once the worker recorded it, `pay_by`
/// while it waits for its payment, and the time of its end (`paid_at`,
/// `expired_at`, `cancelled_at`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Order {
    pub order_id: String,
    pub sku: String,
    pub user_id: String,
    pub qty: i64,
    /// `queued` → `confirmed` → `paid` | `expired` | `cancelled`.
    pub status: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<String>,
    /// Price × quantity at the purchase, in minor units of the sale's
    /// currency (orders made before payments existed: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// The payment deadline, while the order waits for its payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
}

pub(super) fn order_from(m: &HashMap<String, String>) -> Option<Order> {
    let ms = |k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok());
    let status = m.get("status")?;
    let waiting = status == "queued" || status == "confirmed";
    Some(Order {
        order_id: m.get("order_id")?.clone(),
        sku: m.get("sku")?.clone(),
        user_id: m.get("user_id")?.clone(),
        qty: ms("qty").unwrap_or(0),
        status: status.clone(),
        created_at: ms("created_ms").map(rfc3339).unwrap_or_default(),
        confirmed_at: ms("confirmed_ms").map(rfc3339),
        amount_cents: ms("amount_cents"),
        pay_by: ms("pay_by_ms").filter(|_| waiting).map(rfc3339),
        paid_at: ms("paid_ms").map(rfc3339),
        expired_at: ms("expired_ms").map(rfc3339),
        cancelled_at: ms("cancelled_ms").map(rfc3339),
    })
}

/// `HGETALL` of each order record, in the order given.
fn records<'a>(keys: &Keys, ids: impl Iterator<Item = &'a (&'a str, String)>) -> Vec<redis::Cmd> {
    ids.map(|(sku, id)| {
        let mut c = redis::cmd("HGETALL");
        c.arg(keys.order(sku, id));
        c
    })
    .collect()
}

impl Shop {
    /// The order, if it exists and belongs to `user` (otherwise not found).
    pub async fn order(&self, user: &str, order_id: &str) -> Result<Order, Error> {
        let sku = sku_of_order(order_id).ok_or(Error::NotFound)?;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.redis.keys().order(sku, order_id));
        let mut m: HashMap<String, String> = self.redis.read(&cmd).await?;
        if m.is_empty() {
            m = self.redis.read_master(&cmd).await?;
        }
        match order_from(&m) {
            Some(o) if o.user_id == user => Ok(o),
            _ => Err(Error::NotFound),
        }
    }

    /// Every order of `user`, across all sales, oldest sale first.
    pub async fn orders_of(&self, user: &str) -> Result<Vec<Order>, Error> {
        if !valid_user(user) {
            return Ok(Vec::new());
        }
        let sales = self.catalog.list().await?;
        if sales.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.redis.keys();
        // Per sale: the first order (`first`) and the later ones (`uorders`;
        // a list written before library version 7 starts with the first).
        // (Sales may be on different shards: one pipeline per shard.)
        let mut cmds = Vec::with_capacity(sales.len() * 2);
        for s in sales.iter() {
            let mut first = redis::cmd("HGET");
            first.arg(keys.first(&s.sku)).arg(user);
            let mut later = redis::cmd("LRANGE");
            later.arg(keys.user_orders(&s.sku, user)).arg(0).arg(-1);
            cmds.push(first);
            cmds.push(later);
        }
        let replies: Vec<redis::Value> = self.redis.read_each(&cmds, false).await?;
        let mut replies = replies.into_iter();
        let mut per_sale: Vec<(Option<String>, Vec<String>)> = Vec::with_capacity(sales.len());
        while let (Some(first), Some(later)) = (replies.next(), replies.next()) {
            let parse = |e: redis::ParsingError| DbError::Protocol(e.to_string());
            per_sale.push((
                redis::FromRedisValue::from_redis_value(first).map_err(parse)?,
                redis::FromRedisValue::from_redis_value(later).map_err(parse)?,
            ));
        }
        let ids: Vec<(&str, String)> = sales
            .iter()
            .zip(per_sale)
            .flat_map(|(s, (first, mut later))| {
                later.retain(|id| Some(id) != first.as_ref());
                first
                    .into_iter()
                    .chain(later)
                    .map(move |id| (s.sku.as_str(), id))
            })
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows: Vec<HashMap<String, String>> = self
            .redis
            .read_each(&records(keys, ids.iter()), false)
            .await?;
        // The replica that answered this read may be behind the one that
        // listed the ids: what it lacks comes from the master.
        let missing: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_empty()).collect();
        if !missing.is_empty() {
            let found: Vec<HashMap<String, String>> = self
                .redis
                .read_each(&records(keys, missing.iter().map(|&i| &ids[i])), true)
                .await?;
            for (i, m) in missing.into_iter().zip(found) {
                if m.is_empty() {
                    // Listed by a replica, unknown to the master: the replica
                    // holds writes the master never had (it diverged).
                    tracing::warn!(order_id = %ids[i].1, "order listed by a replica is not on the master");
                }
                rows[i] = m;
            }
        }
        Ok(rows
            .iter()
            .filter_map(order_from)
            .filter(|o| o.user_id == user)
            .collect())
    }
}
