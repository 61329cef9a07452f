//! HTTP face of [`crate::error::Error`]: status, `{"error","message"}` body,
//! `Retry-After` where the contract asks for it.
//!
//! A 500 keeps its detail in a response extension ([`InternalDetail`]); the
//! metrics middleware logs it once and removes it, so it never reaches the
//! client.
//!
//! The body is serialised from a borrowed struct (one buffer); the sold-out
//! answer, the one a finished sale gives to everyone, is serialised once.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// `{"error","message"}` plus the fields some errors carry.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
}

fn body_of(e: &Error) -> Vec<u8> {
    let body = ErrorBody {
        error: e.code(),
        message: e.public_message(),
        order_id: match e {
            Error::AlreadyPurchased { order_id } => Some(order_id),
            _ => None,
        },
        starts_at: match e {
            Error::NotStarted { starts_ms } => Some(crate::sale::rfc3339(*starts_ms)),
            _ => None,
        },
    };
    // A struct of strings always serialises.
    serde_json::to_vec(&body).unwrap_or_default()
}

static SOLD_OUT_BODY: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(body_of(&Error::SoldOut)));

/// The detail of a 500, for the log only.
#[derive(Clone, Debug)]
pub struct InternalDetail(pub String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self {
            Error::SoldOut => Body::from(SOLD_OUT_BODY.clone()),
            _ => Body::from(body_of(&self)),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let retry_after = match &self {
            Error::Unavailable(_) => Some(1),
            Error::RateLimited { retry_after_s } => Some(*retry_after_s),
            _ => None,
        };
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Error::Internal(detail) = self {
            resp.extensions_mut().insert(InternalDetail(detail));
        }
        resp
    }
}

impl From<PathRejection> for Error {
    fn from(_: PathRejection) -> Self {
        Error::NotFound
    }
}

impl From<BytesRejection> for Error {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge
        } else {
            Error::BadJson("the body could not be read".into())
        }
    }
}
