//! The domain's errors: what a sale, a purchase, an order lookup or an
//! operator command can refuse or fail with. No HTTP here: how each one is
//! answered (status, error code, message, headers) is the web layer's
//! mapping.
//!
//! A Redis failure becomes [`Error::Unavailable`] when it means "try again"
//! (no master during a failover, a `WAIT` shortfall, a timeout, a master out
//! of memory) and [`Error::Internal`] otherwise; both keep the Redis text
//! for the log.

use crate::redis::DbError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such order (or not the caller's), no such page.
    #[error("not found")]
    NotFound,
    #[error("unknown sku")]
    UnknownSku,
    /// A quantity the sale refuses; the text says why.
    #[error("{0}")]
    InvalidQty(String),
    /// Any other refused input: `code` is its error code.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("the sale has not started")]
    NotStarted { starts_ms: i64 },
    #[error("sold out")]
    SoldOut,
    #[error("the sale has ended")]
    Ended,
    /// An operator paused the sale.
    #[error("the sale is paused")]
    Paused,
    /// An operator's change that makes no sense in the sale's state:
    /// `code` is its error code (`sale_ended`, `not_paused`, `sale_open`).
    #[error("{message}")]
    StateConflict { code: &'static str, message: String },
    /// The shopper holds the limit already; `order_id` is their order.
    #[error("already purchased")]
    AlreadyPurchased { order_id: String },
    #[error("a sale with this sku exists")]
    SaleExists,
    /// Redis cannot answer right now (failover, shortfall, timeout, a
    /// master out of memory).
    #[error("service temporarily unavailable: {0}")]
    Unavailable(String),
    /// A bug or a broken invariant; the detail is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            Error::Unavailable(e.to_string())
        } else {
            Error::Internal(e.to_string())
        }
    }
}

impl Error {
    /// A refused input with its error code.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_failures_split_into_retry_and_bug() {
        assert!(matches!(
            Error::from(DbError::NoMaster),
            Error::Unavailable(m) if m == "no Redis master available"
        ));
        assert!(matches!(
            Error::from(DbError::Full),
            Error::Unavailable(m) if m.contains("out of memory")
        ));
        assert!(matches!(
            Error::from(DbError::Protocol("x".into())),
            Error::Internal(m) if m == "unexpected reply from Redis: x"
        ));
        assert!(matches!(
            Error::invalid("invalid_sale", "bad"),
            Error::Invalid { code: "invalid_sale", message } if message == "bad"
        ));
    }
}
