//! The web layer's error, [`ApiError`], and its one explicit mapping to HTTP.
//!
//! An `ApiError` is either a domain error ([`sale::Error`], wrapped as
//! [`ApiError::Sale`]) or one only HTTP knows: a missing or wrong token, a
//! malformed or oversized body, a rate limit, a cross-site request. This file
//! owns, for every case, the status, the error code (one of the API's error
//! codes), the public message (never Redis or internal text), `Retry-After`
//! (1 s on 503, the limiter's wait on 429) and `Cache-Control: no-store`.
//!
//! A 500 keeps its detail in a response extension ([`InternalDetail`]); the
//! outer middleware logs it once and removes it, so it never reaches the
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

use crate::sale;

/// What a handler, extractor or middleware of the web layer fails with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A domain error, answered as the mapping below says.
    #[error(transparent)]
    Sale(#[from] sale::Error),
    #[error("missing, forged or expired shopper token")]
    Unauthorized,
    #[error("missing or wrong admin token")]
    AdminUnauthorized,
    #[error("missing or wrong payment provider token")]
    PaymentUnauthorized,
    #[error("malformed JSON body: {0}")]
    BadJson(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("too many requests")]
    RateLimited { retry_after_s: u64 },
    #[error("cross-site request refused")]
    CrossSite,
}

impl ApiError {
    /// 404 `not_found`.
    pub fn not_found() -> Self {
        sale::Error::NotFound.into()
    }

    /// 422 with the given error code.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        sale::Error::invalid(code, message).into()
    }

    /// 503 `unavailable`; `detail` is never shown to the client.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        sale::Error::Unavailable(detail.into()).into()
    }

    /// 500 `internal`; `detail` goes to the log only.
    pub fn internal(detail: impl Into<String>) -> Self {
        sale::Error::Internal(detail.into()).into()
    }

    /// The error code of the body's `error` field.
    pub fn code(&self) -> &'static str {
        use sale::Error as E;
        match self {
            ApiError::Sale(e) => match e {
                E::NotFound => "not_found",
                E::UnknownSku => "unknown_sku",
                E::InvalidQty(_) => "invalid_qty",
                E::Invalid { code, .. } => code,
                E::NotStarted { .. } => "not_started",
                E::SoldOut => "sold_out",
                E::Ended => "ended",
                E::Paused => "paused",
                E::StateConflict { code, .. } => code,
                E::AlreadyPurchased { .. } => "already_purchased",
                E::SaleExists => "sale_exists",
                E::Unavailable(_) => "unavailable",
                E::Internal(_) => "internal",
            },
            ApiError::Unauthorized
            | ApiError::AdminUnauthorized
            | ApiError::PaymentUnauthorized => "unauthorized",
            ApiError::BadJson(_) => "invalid_json",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::CrossSite => "cross_site",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        use sale::Error as E;
        match self {
            ApiError::Sale(e) => match e {
                E::NotFound | E::UnknownSku => StatusCode::NOT_FOUND,
                E::InvalidQty(_) | E::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                E::NotStarted { .. } => StatusCode::TOO_EARLY,
                E::SoldOut | E::Ended => StatusCode::GONE,
                E::Paused => StatusCode::LOCKED,
                E::AlreadyPurchased { .. } | E::SaleExists | E::StateConflict { .. } => {
                    StatusCode::CONFLICT
                }
                E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Unauthorized
            | ApiError::AdminUnauthorized
            | ApiError::PaymentUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadJson(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::CrossSite => StatusCode::FORBIDDEN,
        }
    }

    /// The message shown to the client: never Redis or template text.
    pub fn public_message(&self) -> Cow<'_, str> {
        use sale::Error as E;
        match self {
            ApiError::Sale(E::Unavailable(_)) => {
                Cow::Borrowed("the store is busy or switching servers; retry shortly")
            }
            ApiError::Sale(E::Internal(_)) => Cow::Borrowed("internal error"),
            ApiError::Sale(E::NotFound) => Cow::Borrowed("no such resource"),
            ApiError::Sale(
                E::InvalidQty(m)
                | E::Invalid { message: m, .. }
                | E::StateConflict { message: m, .. },
            ) => Cow::Borrowed(m),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// Seconds for `Retry-After`, on the answers that carry it.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Sale(sale::Error::Unavailable(_)) => Some(1),
            ApiError::RateLimited { retry_after_s } => Some(*retry_after_s),
            _ => None,
        }
    }
}

/// The media type of every error the service makes (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every error: `{"error","message"}` plus the RFC 9457 members (`type`,
/// `title`, `status`) and the fields some errors carry.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// `urn:flashsale:error:<error>`.
    #[serde(rename = "type")]
    kind: String,
    /// The error code in words.
    title: String,
    /// The HTTP status.
    status: u16,
    /// The stable code to branch on.
    #[schema(value_type = ErrorCode)]
    error: &'a str,
    /// For people; never carries internal detail.
    #[schema(value_type = String)]
    message: Cow<'a, str>,
    /// With `already_purchased`: the shopper's order.
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    /// With `not_started`: when the sale opens (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
}

/// Every error code the service answers with (the `error` member), as the
/// API description lists them; a unit test checks that every code the web
/// layer and the domain write in the source is listed here.
#[derive(Serialize, utoipa::ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    NotFound,
    UnknownSku,
    InvalidQty,
    InvalidSale,
    InvalidUser,
    InvalidSku,
    InvalidIdempotencyKey,
    InvalidJson,
    NotStarted,
    SoldOut,
    Ended,
    Paused,
    AlreadyPurchased,
    SaleExists,
    SaleEnded,
    NotPaused,
    SaleOpen,
    PaymentLate,
    AlreadyPaid,
    NotCancellable,
    AmountMismatch,
    InvalidPayment,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    CrossSite,
    Internal,
    BadRequest,
    MethodNotAllowed,
    RequestTimeout,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    HeadersTooLarge,
}

impl ErrorCode {
    /// Every code, in the order above.
    pub const ALL: [ErrorCode; 34] = [
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::UnknownSku,
        ErrorCode::InvalidQty,
        ErrorCode::InvalidSale,
        ErrorCode::InvalidUser,
        ErrorCode::InvalidSku,
        ErrorCode::InvalidIdempotencyKey,
        ErrorCode::InvalidJson,
        ErrorCode::NotStarted,
        ErrorCode::SoldOut,
        ErrorCode::Ended,
        ErrorCode::Paused,
        ErrorCode::AlreadyPurchased,
        ErrorCode::SaleExists,
        ErrorCode::SaleEnded,
        ErrorCode::NotPaused,
        ErrorCode::SaleOpen,
        ErrorCode::PaymentLate,
        ErrorCode::AlreadyPaid,
        ErrorCode::NotCancellable,
        ErrorCode::AmountMismatch,
        ErrorCode::InvalidPayment,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::CrossSite,
        ErrorCode::Internal,
        ErrorCode::BadRequest,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::HeadersTooLarge,
    ];
}

/// The error answers most operations share, as the API description lists
/// them (never built: they only describe responses, see `openapi.rs`).
pub mod responses {
    #![allow(dead_code)]
    use super::Problem;

    /// `unauthorized`: a missing, forged or expired token (with
    /// `WWW-Authenticate: Bearer`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 401, content_type = "application/problem+json")]
    pub struct Unauthorized(Problem<'static>);

    /// `unknown_sku`: no such sale.
    #[derive(utoipa::IntoResponses)]
    #[response(status = 404, content_type = "application/problem+json")]
    pub struct UnknownSku(Problem<'static>);

    /// `unavailable`: the store is switching servers or busy; retry after
    /// `Retry-After` (with the same `Idempotency-Key` for a purchase).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 503, content_type = "application/problem+json")]
    pub struct Unavailable(Problem<'static>);
}

/// The RFC 9457 `type` of an error code: one URI per code, stable.
pub fn problem_type(code: &str) -> String {
    format!("urn:flashsale:error:{code}")
}

/// The RFC 9457 `title` of an error code: the code in words ("sold_out"
/// → "Sold out"), the same for every occurrence.
pub fn problem_title(code: &str) -> String {
    let mut t = code.replace('_', " ");
    if let Some(first) = t.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    t
}

/// The body of an error the service makes outside the handlers
/// (unrouted paths, refused methods, shed load), in the same shape.
pub fn problem_body(status: StatusCode, code: &str, message: &str) -> String {
    let body = Problem {
        kind: problem_type(code),
        title: problem_title(code),
        status: status.as_u16(),
        error: code,
        message: Cow::Borrowed(message),
        order_id: None,
        starts_at: None,
    };
    serde_json::to_string(&body).unwrap_or_default()
}

fn body_of(e: &ApiError) -> Vec<u8> {
    let code = e.code();
    let body = Problem {
        kind: problem_type(code),
        title: problem_title(code),
        status: e.status().as_u16(),
        error: code,
        message: e.public_message(),
        order_id: match e {
            ApiError::Sale(sale::Error::AlreadyPurchased { order_id }) => Some(order_id),
            _ => None,
        },
        starts_at: match e {
            ApiError::Sale(sale::Error::NotStarted { starts_ms }) => {
                Some(crate::sale::rfc3339(*starts_ms))
            }
            _ => None,
        },
    };
    // A struct of strings always serialises.
    serde_json::to_vec(&body).unwrap_or_default()
}

static SOLD_OUT_BODY: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(body_of(&sale::Error::SoldOut.into())));

/// The detail of a 500, for the log only.
#[derive(Clone, Debug)]
pub struct InternalDetail(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self {
            ApiError::Sale(sale::Error::SoldOut) => Body::from(SOLD_OUT_BODY.clone()),
            _ => Body::from(body_of(&self)),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            ApiError::Unauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"flashsale\""),
                );
            }
            ApiError::AdminUnauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"flashsale-admin\""),
                );
            }
            ApiError::PaymentUnauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"flashsale-payment\""),
                );
            }
            ApiError::PayloadTooLarge => {
                // The rest of the body is never read, so the connection
                // cannot carry another request: say so, or a client sends
                // its next one on a connection about to be closed.
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if let Some(s) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let ApiError::Sale(sale::Error::Internal(detail)) = self {
            resp.extensions_mut().insert(InternalDetail(detail));
        }
        resp
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        ApiError::not_found()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadJson("the body could not be read".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sale::Error as E;

    /// One case of every variant with the status and code it has always
    /// been answered with (the details that say "secret" must stay hidden).
    fn every_case() -> Vec<(ApiError, u16, &'static str)> {
        vec![
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::AdminUnauthorized, 401, "unauthorized"),
            (ApiError::PaymentUnauthorized, 401, "unauthorized"),
            (E::NotFound.into(), 404, "not_found"),
            (E::UnknownSku.into(), 404, "unknown_sku"),
            (E::InvalidQty("q".into()).into(), 422, "invalid_qty"),
            (E::invalid("invalid_sale", "m").into(), 422, "invalid_sale"),
            (ApiError::BadJson("b".into()), 400, "invalid_json"),
            (E::NotStarted { starts_ms: 0 }.into(), 425, "not_started"),
            (E::SoldOut.into(), 410, "sold_out"),
            (E::Ended.into(), 410, "ended"),
            (
                E::AlreadyPurchased {
                    order_id: "o".into(),
                }
                .into(),
                409,
                "already_purchased",
            ),
            (E::SaleExists.into(), 409, "sale_exists"),
            (E::Paused.into(), 423, "paused"),
            (
                E::StateConflict {
                    code: "not_paused",
                    message: "m".into(),
                }
                .into(),
                409,
                "not_paused",
            ),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (
                ApiError::RateLimited { retry_after_s: 3 },
                429,
                "rate_limited",
            ),
            (
                E::Unavailable("redis: READONLY secret".into()).into(),
                503,
                "unavailable",
            ),
            (ApiError::CrossSite, 403, "cross_site"),
            (
                E::Internal("redis: WRONGTYPE secret".into()).into(),
                500,
                "internal",
            ),
        ]
    }

    /// The variant of a case. The match is exhaustive: a new variant does
    /// not compile here until it is named, and then the count below fails
    /// until the table has a case of it.
    fn variant_of(e: &ApiError) -> &'static str {
        match e {
            ApiError::Sale(s) => match s {
                E::NotFound => "NotFound",
                E::UnknownSku => "UnknownSku",
                E::InvalidQty(_) => "InvalidQty",
                E::Invalid { .. } => "Invalid",
                E::NotStarted { .. } => "NotStarted",
                E::SoldOut => "SoldOut",
                E::Ended => "Ended",
                E::Paused => "Paused",
                E::StateConflict { .. } => "StateConflict",
                E::AlreadyPurchased { .. } => "AlreadyPurchased",
                E::SaleExists => "SaleExists",
                E::Unavailable(_) => "Unavailable",
                E::Internal(_) => "Internal",
            },
            ApiError::Unauthorized => "Unauthorized",
            ApiError::AdminUnauthorized => "AdminUnauthorized",
            ApiError::PaymentUnauthorized => "PaymentUnauthorized",
            ApiError::BadJson(_) => "BadJson",
            ApiError::PayloadTooLarge => "PayloadTooLarge",
            ApiError::RateLimited { .. } => "RateLimited",
            ApiError::CrossSite => "CrossSite",
        }
    }

    #[test]
    fn every_variant_keeps_its_status_and_code() {
        let cases = every_case();
        let mut seen: Vec<&str> = cases.iter().map(|(e, _, _)| variant_of(e)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 20, "one case per variant: {seen:?}");
        for (e, status, code) in &cases {
            assert_eq!(e.status(), *status, "{e:?}");
            assert_eq!(e.code(), *code, "{e:?}");
        }
    }

    #[test]
    fn hidden_details_stay_hidden() {
        for (e, _, _) in every_case() {
            let shown = e.public_message();
            assert!(!shown.contains("secret"), "{e:?} shows {shown}");
        }
        let internal = ApiError::internal("template: boom");
        assert_eq!(internal.public_message(), "internal error");
        assert_eq!(internal.to_string(), "internal error: template: boom");
        let unavailable = ApiError::unavailable("no Redis master available");
        assert_eq!(
            unavailable.public_message(),
            "the store is busy or switching servers; retry shortly"
        );
        assert_eq!(ApiError::not_found().public_message(), "no such resource");
        assert_eq!(
            ApiError::invalid("invalid_user", "user ids are short").public_message(),
            "user ids are short"
        );
    }

    #[test]
    fn responses_carry_headers_body_and_detail() {
        let r = ApiError::unavailable("x").into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"flashsale\""
        );
        let r = ApiError::AdminUnauthorized.into_response();
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"flashsale-admin\""
        );

        let r = ApiError::RateLimited { retry_after_s: 7 }.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        assert!(
            ApiError::from(E::SoldOut)
                .into_response()
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );

        let r = ApiError::internal("the detail").into_response();
        assert_eq!(
            r.extensions().get::<InternalDetail>().map(|d| d.0.as_str()),
            Some("the detail")
        );
        assert!(
            ApiError::unavailable("x")
                .into_response()
                .extensions()
                .get::<InternalDetail>()
                .is_none()
        );

        assert_eq!(
            &SOLD_OUT_BODY[..],
            br#"{"type":"urn:flashsale:error:sold_out","title":"Sold out","status":410,"error":"sold_out","message":"sold out"}"#
        );
        let already = ApiError::from(E::AlreadyPurchased {
            order_id: "a.1".into(),
        });
        assert_eq!(
            body_of(&already),
            br#"{"type":"urn:flashsale:error:already_purchased","title":"Already purchased","status":409,"error":"already_purchased","message":"already purchased","order_id":"a.1"}"#
        );
        let early = ApiError::from(E::NotStarted { starts_ms: 0 });
        assert_eq!(
            body_of(&early),
            br#"{"type":"urn:flashsale:error:not_started","title":"Not started","status":425,"error":"not_started","message":"the sale has not started","starts_at":"1970-01-01T00:00:00Z"}"#
        );
        assert_eq!(
            problem_body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "m"),
            r#"{"type":"urn:flashsale:error:method_not_allowed","title":"Method not allowed","status":405,"error":"method_not_allowed","message":"m"}"#
        );
    }

    /// Every error code written in the source of the web layer and the
    /// domain (`code: "…"`, `invalid("…"`) is in [`ErrorCode`], so the API
    /// description lists every code a client can get. Codes only the
    /// operator commands print (the purge's) are not HTTP answers.
    #[test]
    fn every_code_in_the_source_is_listed() {
        let listed: Vec<String> = serde_json::to_value(ErrorCode::ALL.to_vec())
            .expect("codes")
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut files = Vec::new();
        for dir in ["web", "sale"] {
            for e in std::fs::read_dir(format!("{root}/{dir}"))
                .expect("dir")
                .flatten()
            {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("purge.rs") {
                    files.push(p);
                }
            }
        }
        let mut found = 0;
        for f in files {
            let text: String = std::fs::read_to_string(&f)
                .expect("source")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            for marker in ["code: \"", "invalid( \"", "invalid(\""] {
                for (i, _) in text.match_indices(marker) {
                    let rest = &text[i + marker.len()..];
                    let code: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if code.is_empty() || !rest[code.len()..].starts_with('"') {
                        continue;
                    }
                    found += 1;
                    assert!(
                        listed.contains(&code),
                        "{code} (in {}) is not in ErrorCode",
                        f.display()
                    );
                }
            }
        }
        assert!(found >= 10, "the scan found only {found} codes");
    }
}
