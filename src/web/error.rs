//! HTTP face of [`crate::error::Error`]: status, `{"error","message"}` body,
//! `Retry-After` where the contract asks for it.
//!
//! A 500 keeps its detail in a response extension ([`InternalDetail`]); the
//! metrics middleware logs it once and removes it, so it never reaches the
//! client.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// The detail of a 500, for the log only.
#[derive(Clone, Debug)]
pub struct InternalDetail(pub String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({ "error": self.code(), "message": self.public_message() });
        match &self {
            Error::AlreadyPurchased { order_id } => body["order_id"] = json!(order_id),
            Error::NotStarted { starts_ms } => {
                body["starts_at"] = json!(crate::sale::rfc3339(*starts_ms))
            }
            _ => {}
        }
        let mut resp = (status, Json(body)).into_response();
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
