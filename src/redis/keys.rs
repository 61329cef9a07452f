//! Redis key names, built only from validated parts.
//!
//! Every key of one sale carries the `{sku}` hash tag so the sale's keys share
//! a slot (the purchase Function touches them together). The layout is
//! documented at the top of `flashsale.lua`.

/// Key builder for one key prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn sale_key(&self, sku: &str, suffix: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + sku.len() + suffix.len() + 4);
        k.push_str(&self.prefix);
        k.push_str(":{");
        k.push_str(sku);
        k.push_str("}:");
        k.push_str(suffix);
        k
    }

    pub fn sale(&self, sku: &str) -> String {
        self.sale_key(sku, "sale")
    }
    /// `SCAN` pattern of every key of one sale (skus hold no glob
    /// characters: they are `[A-Za-z0-9_-]`).
    pub fn sale_pattern(&self, sku: &str) -> String {
        self.sale_key(sku, "*")
    }
    pub fn units(&self, sku: &str) -> String {
        self.sale_key(sku, "units")
    }
    pub fn first(&self, sku: &str) -> String {
        self.sale_key(sku, "first")
    }
    pub fn stream(&self, sku: &str) -> String {
        self.sale_key(sku, "stream")
    }
    /// Orders waiting for their payment, scored by their deadline.
    pub fn pay_by(&self, sku: &str) -> String {
        self.sale_key(sku, "payby")
    }
    pub fn dead_letters(&self, sku: &str) -> String {
        self.sale_key(sku, "dead")
    }
    pub fn user_orders(&self, sku: &str, user: &str) -> String {
        let mut k = self.sale_key(sku, "uorders:");
        k.push_str(user);
        k
    }
    pub fn order(&self, sku: &str, order_id: &str) -> String {
        let mut k = self.sale_key(sku, "order:");
        k.push_str(order_id);
        k
    }
    pub fn idempotency(&self, sku: &str, user: &str, key: &str) -> String {
        let mut k = self.sale_key(sku, "idem:");
        k.push_str(user);
        k.push(':');
        k.push_str(key);
        k
    }
    /// Sorted set of every sale's sku, scored by start time.
    pub fn sales_index(&self) -> String {
        format!("{}:sales", self.prefix)
    }
    /// Counter written by each acknowledgement round.
    pub fn ack_counter(&self) -> String {
        format!("{}:ack", self.prefix)
    }
    /// The acknowledgement counter of a cluster shard: in the slot of
    /// `{tag}`, one the shard's master owns.
    pub fn ack_counter_in(&self, tag: &str) -> String {
        format!("{}:ack:{{{tag}}}", self.prefix)
    }
    /// Token buckets of the rate limiter.
    pub fn rate(&self, scope: &str, id: &str) -> String {
        format!("{}:rate:{scope}:{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_keys_share_the_hash_tag() {
        let k = Keys::new("fs");
        assert_eq!(k.sale("tv-1"), "fs:{tv-1}:sale");
        assert_eq!(k.order("tv-1", "tv-1.ab"), "fs:{tv-1}:order:tv-1.ab");
        assert_eq!(k.idempotency("tv-1", "u1", "k"), "fs:{tv-1}:idem:u1:k");
        assert_eq!(k.user_orders("tv-1", "u:1"), "fs:{tv-1}:uorders:u:1");
    }
}
