//! The one error type of the service, and its explicit mapping to HTTP.
//!
//! Every variant has its own status and CONTRACT.md error code. `Internal`
//! is the only 500: its detail goes to the log once (in the web layer's
//! middleware) and never to the client. Redis failures that mean "try again"
//! (no master during a failover, a WAIT shortfall, a timeout) are 503 with
//! `Retry-After`.

use crate::redis::DbError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing, forged or expired shopper token")]
    Unauthorized,
    #[error("missing or wrong admin token")]
    AdminUnauthorized,
    #[error("not found")]
    NotFound,
    #[error("unknown sku")]
    UnknownSku,
    #[error("{0}")]
    InvalidQty(String),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("malformed JSON body: {0}")]
    BadJson(String),
    #[error("the sale has not started")]
    NotStarted { starts_ms: i64 },
    #[error("sold out")]
    SoldOut,
    #[error("the sale has ended")]
    Ended,
    #[error("already purchased")]
    AlreadyPurchased { order_id: String },
    #[error("a sale with this sku exists")]
    SaleExists,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("too many requests")]
    RateLimited { retry_after_s: u64 },
    #[error("service temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("cross-site request refused")]
    CrossSite,
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
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    /// The CONTRACT.md error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthorized | Error::AdminUnauthorized => "unauthorized",
            Error::NotFound => "not_found",
            Error::UnknownSku => "unknown_sku",
            Error::InvalidQty(_) => "invalid_qty",
            Error::Invalid { code, .. } => code,
            Error::BadJson(_) => "invalid_json",
            Error::NotStarted { .. } => "not_started",
            Error::SoldOut => "sold_out",
            Error::Ended => "ended",
            Error::AlreadyPurchased { .. } => "already_purchased",
            Error::SaleExists => "sale_exists",
            Error::PayloadTooLarge => "payload_too_large",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::CrossSite => "cross_site",
            Error::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Error::Unauthorized | Error::AdminUnauthorized => 401,
            Error::NotFound | Error::UnknownSku => 404,
            Error::InvalidQty(_) | Error::Invalid { .. } => 422,
            Error::BadJson(_) => 400,
            Error::NotStarted { .. } => 425,
            Error::SoldOut | Error::Ended => 410,
            Error::AlreadyPurchased { .. } | Error::SaleExists => 409,
            Error::PayloadTooLarge => 413,
            Error::RateLimited { .. } => 429,
            Error::Unavailable(_) => 503,
            Error::CrossSite => 403,
            Error::Internal(_) => 500,
        }
    }

    /// The message shown to the client: never Redis or template text.
    pub fn public_message(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Error::Unavailable(_) => {
                Cow::Borrowed("the store is busy or switching servers; retry shortly")
            }
            Error::Internal(_) => Cow::Borrowed("internal error"),
            Error::NotFound => Cow::Borrowed("no such resource"),
            Error::InvalidQty(m) | Error::Invalid { message: m, .. } => Cow::Borrowed(m),
            other => Cow::Owned(other.to_string()),
        }
    }
}
