//! The domain: sales, the catalog, purchases, orders, dead letters, the
//! live view's reads, and the domain's errors ([`Error`]). No HTTP in here:
//! how an error is answered is the web layer's business.
//!
//! [`Shop`] is the service object the web layer and the operator commands
//! call. It decides nothing about units itself: every decision is made by the
//! Function library on the master, and every answer that promises something
//! (a new order, or the shopper's existing one) is given only after the
//! replicas acknowledged it.

pub mod backlog;
pub mod catalog;
pub mod dead_letters;
mod error;
pub mod live;
pub mod money;
mod orders;
mod payment;
mod purchase;
pub mod purge;

use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;

pub use catalog::Catalog;
pub use error::Error;
pub use money::Currency;
pub use orders::Order;
pub use purchase::{Purchased, SoldOutIndex};

use crate::redis::Redis;

/// Largest quantity one purchase may ask for.
pub const MAX_QTY: i64 = 1_000_000;

/// `[A-Za-z0-9_-]{1,64}`: the only skus that reach a Redis key.
pub fn valid_sku(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `[A-Za-z0-9_.:-]{1,64}`: the only user ids that reach a Redis key.
pub fn valid_user(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Idempotency keys: `[A-Za-z0-9_.:-]{1,128}` (UUIDs fit).
pub fn valid_idempotency_key(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Order ids are `<sku>.<32 hex>`: the sku locates the order's keys.
pub fn sku_of_order(order_id: &str) -> Option<&str> {
    let (sku, tail) = order_id.rsplit_once('.')?;
    (valid_sku(sku) && tail.len() == 32 && tail.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(sku)
}

/// Where a sale stands at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    Upcoming,
    Live,
    /// Paused by an operator: purchases are refused (423) until resumed.
    Paused,
    SoldOut,
    Ended,
}

impl SaleState {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleState::Upcoming => "upcoming",
            SaleState::Live => "live",
            SaleState::Paused => "paused",
            SaleState::SoldOut => "sold_out",
            SaleState::Ended => "ended",
        }
    }
}

/// Where a sale stands for its operators (`GET /admin/sales`): the
/// shoppers' states plus `paused`. An ended sale is `ended` whether or not
/// it was paused; a paused one is `paused` before it opens and when sold out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Scheduled,
    Open,
    Paused,
    SoldOut,
    Ended,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Scheduled => "scheduled",
            AdminState::Open => "open",
            AdminState::Paused => "paused",
            AdminState::SoldOut => "sold_out",
            AdminState::Ended => "ended",
        }
    }
}

/// One sale as stored in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sale {
    pub sku: String,
    pub name: String,
    pub description: String,
    /// In minor units of `currency` (cents, yen, fils).
    pub price_cents: i64,
    pub currency: Currency,
    /// The product's picture, when the sale has one ([`money::valid_image_url`]).
    pub image_url: Option<String>,
    pub stock_total: i64,
    pub stock_left: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    /// Paused by an operator (purchases answer 423 `paused`).
    pub paused: bool,
    /// Units that came back from expired and cancelled orders, ever.
    pub returned: i64,
    /// `starts_ms` and `ends_ms` as RFC 3339, formatted once per load.
    pub starts_at: String,
    pub ends_at: String,
}

impl Sale {
    /// Fills in the RFC 3339 texts of the window.
    pub fn with_times(mut self) -> Self {
        self.starts_at = rfc3339(self.starts_ms);
        self.ends_at = rfc3339(self.ends_ms);
        self
    }

    /// The shoppers' state: like [`Sale::admin_state_at`], with `upcoming`
    /// and `live` for `scheduled` and `open`.
    pub fn state_at(&self, now_ms: i64) -> SaleState {
        if now_ms >= self.ends_ms {
            SaleState::Ended
        } else if self.paused {
            SaleState::Paused
        } else if self.stock_left <= 0 {
            SaleState::SoldOut
        } else if now_ms < self.starts_ms {
            SaleState::Upcoming
        } else {
            SaleState::Live
        }
    }

    /// Whether the public listing shows the sale at `now_ms`: until
    /// `listed_after_end_ms` after its end (its own page stays).
    pub fn listed_at(&self, now_ms: i64, listed_after_end_ms: i64) -> bool {
        now_ms < self.ends_ms.saturating_add(listed_after_end_ms)
    }

    /// The operators' state (see [`AdminState`]).
    pub fn admin_state_at(&self, now_ms: i64) -> AdminState {
        if now_ms >= self.ends_ms {
            AdminState::Ended
        } else if self.paused {
            AdminState::Paused
        } else if self.stock_left <= 0 {
            AdminState::SoldOut
        } else if now_ms < self.starts_ms {
            AdminState::Scheduled
        } else {
            AdminState::Open
        }
    }
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 text of a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Parses RFC 3339 into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The service object: catalog, purchases, orders, administration.
#[derive(Clone)]
pub struct Shop {
    pub redis: Redis,
    pub catalog: Arc<Catalog>,
    pub sold_out: Arc<SoldOutIndex>,
    /// How long an order may wait for its payment before it expires
    /// (`FLASHSALE_PAYMENT_WINDOW_S`); zero: no payment step.
    pub pay_within: std::time::Duration,
}

impl Shop {
    pub fn new(redis: Redis, catalog_ttl: std::time::Duration) -> Self {
        Self {
            catalog: Arc::new(Catalog::new(redis.clone(), catalog_ttl)),
            sold_out: Arc::new(SoldOutIndex::default()),
            redis,
            pay_within: std::time::Duration::ZERO,
        }
    }

    /// The same shop with a payment window (see [`Shop::pay_within`]).
    pub fn with_payment_window(mut self, pay_within: std::time::Duration) -> Self {
        self.pay_within = pay_within;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators() {
        assert!(valid_sku("tv-55_a"));
        assert!(!valid_sku(""));
        assert!(!valid_sku("a{b}"));
        assert!(!valid_sku(&"a".repeat(65)));
        assert!(valid_user("u:1.a-b_c"));
        assert!(!valid_user("u*"));
        assert!(!valid_user("{x}"));
        assert!(!valid_user(&"u".repeat(65)));
        assert_eq!(
            sku_of_order("tv-1.0123456789abcdef0123456789abcdef"),
            Some("tv-1")
        );
        assert_eq!(sku_of_order("tv-1.xyz"), None);
        assert_eq!(sku_of_order("nodot"), None);
    }

    #[test]
    fn states() {
        let s = Sale {
            sku: "a".into(),
            name: "n".into(),
            description: String::new(),
            price_cents: 1,
            currency: Currency::DEFAULT,
            image_url: None,
            stock_total: 2,
            stock_left: 2,
            starts_ms: 100,
            ends_ms: 200,
            per_user_limit: 1,
            paused: false,
            returned: 0,
            starts_at: String::new(),
            ends_at: String::new(),
        }
        .with_times();
        assert_eq!(s.starts_at, "1970-01-01T00:00:00.1Z");
        assert_eq!(s.state_at(50), SaleState::Upcoming);
        assert_eq!(s.state_at(100), SaleState::Live);
        assert_eq!(s.state_at(200), SaleState::Ended);
        let gone = Sale {
            stock_left: 0,
            ..s.clone()
        };
        assert_eq!(gone.state_at(150), SaleState::SoldOut);
        assert_eq!(s.admin_state_at(50), AdminState::Scheduled);
        assert_eq!(s.admin_state_at(150), AdminState::Open);
        assert_eq!(gone.admin_state_at(150), AdminState::SoldOut);
        assert_eq!(s.admin_state_at(200), AdminState::Ended);
        let paused = Sale {
            paused: true,
            ..gone.clone()
        };
        assert_eq!(paused.admin_state_at(50), AdminState::Paused);
        assert_eq!(paused.admin_state_at(150), AdminState::Paused);
        assert_eq!(paused.admin_state_at(200), AdminState::Ended);
        assert_eq!(paused.state_at(50), SaleState::Paused);
        assert_eq!(paused.state_at(150), SaleState::Paused);
        assert_eq!(paused.state_at(200), SaleState::Ended);
        assert!(s.listed_at(150, 0));
        assert!(!s.listed_at(200, 0));
        assert!(s.listed_at(259, 60));
        assert!(!s.listed_at(260, 60));
    }

    #[test]
    fn time_round_trip() {
        let ms = parse_rfc3339("2026-11-22T10:00:00.250Z").unwrap();
        assert_eq!(rfc3339(ms), "2026-11-22T10:00:00.25Z");
    }
}
