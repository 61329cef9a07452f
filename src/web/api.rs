//! JSON handlers of `/api`, `/admin`, and the health and metrics endpoints,
//! and the extractors they share (path parameter, `Idempotency-Key`). Every
//! one fails with an [`ApiError`]; a purchase's outcome metric is labelled
//! with its answer's error code (or `accepted`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::auth::{Admin, PaymentProvider, Shopper};
use super::error::responses::{Unauthorized, Unavailable, UnknownSku};
use super::error::{ApiError, Problem};
use super::middleware::Caller;
use crate::sale::money::valid_image_url;
use crate::sale::{
    self, Currency, MAX_QTY, Sale, catalog::NewSale, now_ms, parse_rfc3339, rfc3339,
    valid_idempotency_key, valid_sku,
};

/// A path parameter whose rejection is the API's 404 JSON.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Ok(PathParam(v))
    }
}

/// A product as the API shows it: `{sku, name, …, state}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Product)]
pub struct ProductJson<'a> {
    sku: &'a str,
    name: &'a str,
    description: &'a str,
    /// In minor units of `currency` (cents of EUR, yen of JPY, fils of BHD).
    price_cents: i64,
    /// ISO 4217 code of the price.
    currency: &'static str,
    /// Digits after the decimal point in `currency` (2 for EUR, 0 for JPY).
    currency_minor_digits: u32,
    /// The product's picture (an http(s) URL or a path on this site), or null.
    image_url: Option<&'a str>,
    stock_total: i64,
    stock_left: i64,
    per_user_limit: i64,
    starts_at: &'a str,
    ends_at: &'a str,
    /// `upcoming`, `live`, `paused`, `sold_out` or `ended`.
    state: &'static str,
    /// The server's clock (RFC 3339), on a single product only.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_time: Option<String>,
}

impl<'a> ProductJson<'a> {
    pub fn new(s: &'a Sale, now: i64, with_time: bool) -> Self {
        Self {
            sku: &s.sku,
            name: &s.name,
            description: &s.description,
            price_cents: s.price_cents,
            currency: s.currency.code(),
            currency_minor_digits: s.currency.minor_digits(),
            image_url: s.image_url.as_deref(),
            stock_total: s.stock_total,
            stock_left: s.stock_left.max(0),
            per_user_limit: s.per_user_limit,
            starts_at: &s.starts_at,
            ends_at: &s.ends_at,
            state: s.state_at(now).as_str(),
            server_time: with_time.then(|| rfc3339(now)),
        }
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Every sale, by start time; a sale that ended more than
/// `FLASHSALE_ENDED_LISTED_S` (default an hour) ago is left out.
#[utoipa::path(get, path = "/api/products", tag = "catalog",
    responses((status = 200, description = "Every sale but those that ended more than FLASHSALE_ENDED_LISTED_S ago", body = Vec<ProductJson>),
        Unavailable))]
pub async fn products(State(app): State<AppState>) -> Result<Response, ApiError> {
    let sales = app.shop.catalog.list().await?;
    let now = now_ms();
    let listed = app.settings.ended_listed.as_millis() as i64;
    let body: Vec<ProductJson> = sales
        .iter()
        .filter(|s| s.listed_at(now, listed))
        .map(|s| ProductJson::new(s, now, false))
        .collect();
    Ok(no_store(Json(body).into_response()))
}

/// One sale, with the server's time (for countdowns).
#[utoipa::path(get, path = "/api/products/{sku}", tag = "catalog",
    params(("sku" = String, Path, description = "1–64 of [A-Za-z0-9_-]")),
    responses((status = 200, description = "The sale", body = ProductJson),
        UnknownSku,
        Unavailable))]
pub async fn product(
    State(app): State<AppState>,
    PathParam(sku): PathParam,
) -> Result<Response, ApiError> {
    let sale = app.shop.catalog.get(&sku).await?;
    let now = now_ms();
    Ok(no_store(
        Json(ProductJson::new(&sale, now, true)).into_response(),
    ))
}

/// The purchase body.
#[derive(Deserialize, utoipa::ToSchema)]
struct PurchaseBody {
    /// 1 ≤ qty ≤ the per-shopper limit and the units left.
    qty: i64,
}

/// The purchase body: `{"qty": N}` (other fields are ignored). Anything else,
/// including `qty` named twice, is 422 `invalid_qty` (or 400 for bytes that
/// are not JSON at all).
fn parse_qty(body: &[u8]) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::from(sale::Error::InvalidQty(format!(
            "body must be {{\"qty\": N}} with 1 <= N <= {MAX_QTY}"
        )))
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad());
    }
    let qty = match serde_json::from_slice::<PurchaseBody>(body) {
        Ok(b) => b.qty,
        // Well-formed JSON of another shape: a missing, fractional, string
        // or out-of-range qty, an array, a number…
        Err(e) if e.is_data() => return Err(bad()),
        Err(_) => return Err(ApiError::BadJson("the body is not JSON".into())),
    };
    if !(1..=MAX_QTY).contains(&qty) {
        return Err(bad());
    }
    Ok(qty)
}

/// The `Idempotency-Key` header, validated; rejection 422.
pub struct IdempotencyKey(pub Option<axum::http::HeaderValue>);

impl IdempotencyKey {
    fn as_str(&self) -> Option<&str> {
        // Validated as ASCII when extracted.
        self.0.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(v) if v.to_str().is_ok_and(valid_idempotency_key) => {
                Ok(IdempotencyKey(Some(v.clone())))
            }
            Some(_) => Err(ApiError::invalid(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-128 of [A-Za-z0-9_.:-]",
            )),
        }
    }
}

/// `flashsale_purchases_total` by outcome, registered once, and the same
/// counts kept here too (the metrics facade cannot be read back; the live
/// view shows them, see `live.rs`): the last atomic counts the outcomes
/// outside [`Self::KNOWN`].
pub struct PurchaseOutcomes(
    Vec<(&'static str, metrics::Counter)>,
    [std::sync::atomic::AtomicU64; 14],
);

// One atomic per known outcome, and one for the others.
const _: () = assert!(PurchaseOutcomes::KNOWN.len() + 1 == 14);

impl PurchaseOutcomes {
    const KNOWN: [&'static str; 13] = [
        "accepted",
        "sold_out",
        "already_purchased",
        "not_started",
        "ended",
        "paused",
        "invalid_qty",
        "unknown_sku",
        "rate_limited",
        "unavailable",
        "invalid_idempotency_key",
        "invalid_json",
        "internal",
    ];

    pub fn register() -> Self {
        Self(
            Self::KNOWN
                .iter()
                .map(|o| {
                    (
                        *o,
                        metrics::counter!("flashsale_purchases_total", "outcome" => *o),
                    )
                })
                .collect(),
            Default::default(),
        )
    }

    fn count(&self, outcome: &'static str) {
        let known = self.0.iter().position(|(o, _)| *o == outcome);
        self.1[known.unwrap_or(Self::KNOWN.len())]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match known {
            Some(i) => self.0[i].1.increment(1),
            None => {
                metrics::counter!("flashsale_purchases_total", "outcome" => outcome).increment(1)
            }
        }
    }

    /// This instance's purchases by outcome since it started (`other`: any
    /// outcome outside the known ones).
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        Self::KNOWN
            .iter()
            .copied()
            .chain(std::iter::once("other"))
            .zip(&self.1)
            .map(|(o, n)| (o, n.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}

/// The 202 body of a purchase.
#[derive(Serialize, utoipa::ToSchema)]
struct Accepted<'a> {
    order_id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stock_left: Option<i64>,
}

/// Buys units of a sale. 202 and 409 are promises: the order is held by the
/// replicas and reaches `confirmed`. Retrying with the same
/// `Idempotency-Key` never makes another order.
#[utoipa::path(post, path = "/api/sales/{sku}/purchase", tag = "purchase",
    params(("sku" = String, Path, description = "The sale"),
        ("Idempotency-Key" = Option<String>, Header, description = "1–128 of [A-Za-z0-9_.:-]")),
    request_body(content = PurchaseBody, content_type = "application/json"),
    security(("shopper" = [])),
    responses((status = 202, description = "Queued: the order exists and will be confirmed", body = Accepted),
        (status = 400, description = "`invalid_json`", body = Problem, content_type = "application/problem+json"),
        Unauthorized,
        (status = 403, description = "`cross_site`", body = Problem, content_type = "application/problem+json"),
        UnknownSku,
        (status = 409, description = "`already_purchased`, with the shopper's `order_id`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`paused`: an operator paused the sale", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`sold_out` or `ended`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_qty`, `invalid_idempotency_key`", body = Problem, content_type = "application/problem+json"),
        (status = 425, description = "`not_started`, with `starts_at`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` (`Retry-After`): retry with the same key", body = Problem, content_type = "application/problem+json")))]
pub async fn purchase(
    State(app): State<AppState>,
    PathParam(sku): PathParam,
    Shopper(user): Shopper,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    if !valid_sku(&sku) {
        return Err(sale::Error::UnknownSku.into());
    }
    let qty = parse_qty(&body)?;
    let key = key?;
    let key = key.as_str();
    let result = match app.shop.answer_locally(&sku, &user, key).await {
        Some(answer) => Err(ApiError::from(answer)),
        None => {
            app.limiter.check_shopper(&user).await?;
            app.shop
                .purchase(&sku, &user, qty, key)
                .await
                .map_err(ApiError::from)
        }
    };
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) => e.code(),
    };
    app.purchase_outcomes.count(outcome);
    let p = result?;
    let body = Accepted {
        order_id: &p.order_id,
        status: "queued",
        stock_left: p.stock_left,
    };
    Ok(no_store((StatusCode::ACCEPTED, Json(body)).into_response()))
}

/// One of the shopper's orders.
#[utoipa::path(get, path = "/api/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "<sku>.<32 hex>")),
    security(("shopper" = [])),
    responses((status = 200, description = "The order", body = crate::sale::Order),
        Unauthorized,
        (status = 404, description = "`not_found` (also another shopper's order)", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn order(
    State(app): State<AppState>,
    Shopper(user): Shopper,
    PathParam(order_id): PathParam,
) -> Result<Response, ApiError> {
    let o = app.shop.order(&user, &order_id).await?;
    Ok(no_store(Json(o).into_response()))
}

/// The shopper cancels their order: its units return to the sale. Again:
/// 200 with the cancelled order.
#[utoipa::path(post, path = "/api/orders/{order_id}/cancel", tag = "orders",
    params(("order_id" = String, Path, description = "<sku>.<32 hex>")),
    security(("shopper" = [])),
    responses((status = 200, description = "The order, `cancelled`", body = crate::sale::Order),
        Unauthorized,
        (status = 404, description = "`not_found` (also another shopper's order)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_cancellable`: paid or expired", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn cancel_order(
    State(app): State<AppState>,
    Shopper(user): Shopper,
    PathParam(order_id): PathParam,
) -> Result<Response, ApiError> {
    let o = app.shop.cancel(&user, &order_id).await?;
    Ok(no_store(Json(o).into_response()))
}

/// The payment provider's callback body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    /// The provider's id of the payment (1–128 of `[A-Za-z0-9_.:-]`): the
    /// same id again is answered like the first time.
    payment_id: String,
    /// What was paid, in minor units of the sale's currency: must be the
    /// order's amount.
    amount_cents: i64,
}

/// The payment provider reports that an order was paid (bearer
/// `FLASHSALE_PAYMENT_TOKEN`; 404 when it is unset). Answered once the
/// replicas hold it.
#[utoipa::path(post, path = "/api/orders/{order_id}/payment", tag = "orders",
    params(("order_id" = String, Path, description = "<sku>.<32 hex>")),
    request_body(content = PaymentBody, content_type = "application/json"),
    security(("payment" = [])),
    responses((status = 200, description = "The order, `paid` (also for the same `payment_id` again)", body = crate::sale::Order),
        (status = 400, description = "`invalid_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: not the payment provider's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`; also every request while the payment step is off", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`payment_late` (expired or cancelled: refund), `already_paid` (paid by another payment: refund this one)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`amount_mismatch`, `invalid_payment`", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn pay_order(
    State(app): State<AppState>,
    _provider: PaymentProvider,
    PathParam(order_id): PathParam,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let p: PaymentBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let o = app
        .shop
        .pay(&order_id, &p.payment_id, p.amount_cents)
        .await?;
    Ok(no_store(Json(o).into_response()))
}

/// The shopper's orders.
#[derive(Serialize, utoipa::ToSchema)]
struct MyOrders {
    orders: Vec<crate::sale::Order>,
}

/// Every order of the shopper.
#[utoipa::path(get, path = "/api/me/orders", tag = "orders",
    security(("shopper" = [])),
    responses((status = 200, description = "The shopper's orders", body = MyOrders),
        Unauthorized,
        Unavailable))]
pub async fn my_orders(
    State(app): State<AppState>,
    Shopper(user): Shopper,
) -> Result<Response, ApiError> {
    let orders = app.shop.orders_of(&user).await?;
    Ok(no_store(Json(MyOrders { orders }).into_response()))
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
pub async fn healthz() -> Response {
    no_store(Json(json!({"status": "ok"})).into_response())
}

/// 200 when the current master answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ready\"}`"),
        Unavailable))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.shop.redis.ping_master().await {
        no_store(Json(json!({"status": "ready"})).into_response())
    } else {
        ApiError::unavailable("master does not answer").into_response()
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "text/plain")))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    metrics::gauge!("flashsale_required_replica_acks").set(app.shop.redis.required_acks() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// A new sale (RFC 3339 times).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewSaleJson {
    sku: String,
    name: String,
    #[serde(default)]
    description: String,
    /// In minor units of `currency`.
    price_cents: i64,
    /// ISO 4217 code with defined minor units (`EUR`, `JPY`, …); default `USD`.
    currency: Option<String>,
    /// An `https://` or `http://` URL, or a path on this site (`/static/…`).
    image_url: Option<String>,
    stock: i64,
    starts_at: String,
    ends_at: String,
    per_user_limit: i64,
}

/// The currency of a new or changed sale, or the 422 that names it.
fn currency_of(code: &str) -> Result<Currency, ApiError> {
    Currency::parse(code).ok_or_else(|| {
        ApiError::invalid(
            "invalid_sale",
            "currency must be an ISO 4217 code with minor units, in capitals (EUR, JPY, ...)"
                .to_owned(),
        )
    })
}

fn image_url_of(url: &str) -> Result<(), ApiError> {
    if valid_image_url(url) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_sale",
            "image_url must be an http(s) URL or a path on this site, at most 2048 bytes"
                .to_owned(),
        ))
    }
}

fn validate_sale(body: &[u8]) -> Result<NewSale, ApiError> {
    let j: NewSaleJson = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("invalid_sale", format!("invalid sale: {e}")))?;
    let bad = |m: &str| ApiError::invalid("invalid_sale", m.to_owned());
    if !valid_sku(&j.sku) {
        return Err(bad("sku must be 1-64 of [A-Za-z0-9_-]"));
    }
    if j.name.trim().is_empty() || j.name.len() > 200 {
        return Err(bad("name must be 1-200 bytes"));
    }
    if j.description.len() > 10_000 {
        return Err(bad("description must be at most 10000 bytes"));
    }
    if !(0..=100_000_000_000).contains(&j.price_cents) {
        return Err(bad("price_cents must be between 0 and 100000000000"));
    }
    if !(1..=100_000_000).contains(&j.stock) {
        return Err(bad("stock must be between 1 and 100000000"));
    }
    if !(1..=MAX_QTY).contains(&j.per_user_limit) {
        return Err(bad("per_user_limit must be at least 1"));
    }
    let starts_ms = parse_rfc3339(&j.starts_at).ok_or_else(|| bad("starts_at must be RFC 3339"))?;
    let ends_ms = parse_rfc3339(&j.ends_at).ok_or_else(|| bad("ends_at must be RFC 3339"))?;
    if ends_ms <= starts_ms {
        return Err(bad("ends_at must be after starts_at"));
    }
    if starts_ms < 0 {
        return Err(bad("starts_at must be after 1970"));
    }
    let currency = match &j.currency {
        Some(c) => currency_of(c)?,
        None => Currency::DEFAULT,
    };
    if let Some(u) = &j.image_url {
        image_url_of(u)?;
    }
    Ok(NewSale {
        sku: j.sku,
        name: j.name,
        description: j.description,
        price_cents: j.price_cents,
        currency,
        image_url: j.image_url,
        stock: j.stock,
        starts_ms,
        ends_ms,
        per_user_limit: j.per_user_limit,
    })
}

/// Creates a sale. The same request again answers 201 with the same body.
#[utoipa::path(post, path = "/admin/sales", tag = "admin",
    request_body(content = NewSaleJson, content_type = "application/json"),
    security(("admin" = [])),
    responses((status = 201, description = "The sale", body = ProductJson),
        (status = 400, description = "`invalid_json`", body = Problem, content_type = "application/problem+json"),
        Unauthorized,
        (status = 409, description = "`sale_exists` (another sale under this sku)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_sale`", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn create_sale(
    State(app): State<AppState>,
    _admin: Admin,
    caller: Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let new = match body.map_err(ApiError::from).and_then(|b| validate_sale(&b)) {
        Ok(new) => new,
        Err(e) => return logged(&caller, None, "create", Err(e)),
    };
    let result = async {
        let sale = app.shop.catalog.create(&new).await?;
        app.pages.invalidate();
        let now = now_ms();
        let mut v = serde_json::to_value(ProductJson::new(&sale, now, false))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        v["per_user_limit"] = json!(sale.per_user_limit);
        Ok(no_store((StatusCode::CREATED, Json(v)).into_response()))
    }
    .await;
    logged(&caller, Some(&new.sku), "create", result)
}

/// Logs an admin change at info (target `flashsale::admin`): the sku (when
/// the request named one), the action, the outcome (`ok` or the error
/// code), the client and the request id; never the admin token.
fn logged(
    caller: &Caller,
    sku: Option<&str>,
    action: &'static str,
    result: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    tracing::info!(
        target: "flashsale::admin",
        sku,
        action,
        outcome,
        client = caller.client.map(tracing::field::display),
        request_id = caller.request_id(),
        "admin action"
    );
    result
}

/// A sale's counters and consistency.
#[utoipa::path(get, path = "/admin/sales/{sku}/audit", tag = "admin",
    params(("sku" = String, Path, description = "The sale")),
    security(("admin" = [])),
    responses((status = 200, description = "The audit", body = crate::sale::catalog::Audit),
        Unauthorized,
        UnknownSku,
        Unavailable))]
pub async fn audit(
    State(app): State<AppState>,
    _admin: Admin,
    PathParam(sku): PathParam,
) -> Result<Response, ApiError> {
    let a = app.shop.catalog.audit(&sku).await?;
    Ok(no_store(Json(a).into_response()))
}

/// A sale as operators see it (`GET /admin/sales/{sku}`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AdminSale)]
pub struct AdminSaleJson<'a> {
    sku: &'a str,
    name: &'a str,
    description: &'a str,
    /// In minor units of `currency`.
    price_cents: i64,
    currency: &'static str,
    image_url: Option<&'a str>,
    stock_total: i64,
    stock_left: i64,
    /// Units held by orders (`stock_total - stock_left`).
    sold: i64,
    per_user_limit: i64,
    starts_at: &'a str,
    ends_at: &'a str,
    paused: bool,
    state: crate::sale::AdminState,
}

impl<'a> AdminSaleJson<'a> {
    pub fn new(s: &'a Sale, now: i64) -> Self {
        Self {
            sku: &s.sku,
            name: &s.name,
            description: &s.description,
            price_cents: s.price_cents,
            currency: s.currency.code(),
            image_url: s.image_url.as_deref(),
            stock_total: s.stock_total,
            stock_left: s.stock_left.max(0),
            sold: s.stock_total - s.stock_left.max(0),
            per_user_limit: s.per_user_limit,
            starts_at: &s.starts_at,
            ends_at: &s.ends_at,
            paused: s.paused,
            state: s.admin_state_at(now),
        }
    }
}

/// Every sale with its state, read from the master, by start time.
#[utoipa::path(get, path = "/admin/sales", tag = "admin",
    security(("admin" = [])),
    responses((status = 200, description = "Every sale; `state` is `scheduled`, `open`, `paused`, `sold_out` or `ended`", body = Vec<AdminSaleJson>),
        Unauthorized,
        Unavailable))]
pub async fn admin_sales(State(app): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let sales = app.shop.catalog.load_all(true).await?;
    let now = now_ms();
    let body: Vec<AdminSaleJson> = sales.iter().map(|s| AdminSaleJson::new(s, now)).collect();
    Ok(no_store(Json(body).into_response()))
}

/// One sale with its state, read from the master.
#[utoipa::path(get, path = "/admin/sales/{sku}", tag = "admin",
    params(("sku" = String, Path, description = "The sale")),
    security(("admin" = [])),
    responses((status = 200, description = "The sale", body = AdminSaleJson),
        Unauthorized,
        UnknownSku,
        Unavailable))]
pub async fn admin_sale(
    State(app): State<AppState>,
    _admin: Admin,
    PathParam(sku): PathParam,
) -> Result<Response, ApiError> {
    let sale = app.shop.catalog.get_fresh(&sku).await?;
    Ok(no_store(
        Json(AdminSaleJson::new(&sale, now_ms())).into_response(),
    ))
}

/// The fields to change in a sale that has not opened (RFC 3339 times);
/// those left out stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SalePatchJson {
    name: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
    /// ISO 4217 code with minor units.
    currency: Option<String>,
    /// A new picture; `""` removes it.
    image_url: Option<String>,
    /// Only while nothing is sold (before the opening nothing can be).
    stock: Option<i64>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    per_user_limit: Option<i64>,
}

fn validate_patch(body: &[u8]) -> Result<crate::redis::functions::SaleUpdate, ApiError> {
    let j: SalePatchJson = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("invalid_sale", format!("invalid change: {e}")))?;
    let bad = |m: &str| ApiError::invalid("invalid_sale", m.to_owned());
    if let Some(n) = &j.name
        && (n.trim().is_empty() || n.len() > 200)
    {
        return Err(bad("name must be 1-200 bytes"));
    }
    if j.description.as_ref().is_some_and(|d| d.len() > 10_000) {
        return Err(bad("description must be at most 10000 bytes"));
    }
    if j.price_cents
        .is_some_and(|p| !(0..=100_000_000_000).contains(&p))
    {
        return Err(bad("price_cents must be between 0 and 100000000000"));
    }
    if j.stock.is_some_and(|v| !(1..=100_000_000).contains(&v)) {
        return Err(bad("stock must be between 1 and 100000000"));
    }
    if j.per_user_limit
        .is_some_and(|v| !(1..=MAX_QTY).contains(&v))
    {
        return Err(bad("per_user_limit must be at least 1"));
    }
    let time = |t: &Option<String>, what: &str| -> Result<Option<i64>, ApiError> {
        match t {
            None => Ok(None),
            Some(t) => match parse_rfc3339(t) {
                Some(ms) if ms >= 0 => Ok(Some(ms)),
                _ => Err(bad(&format!("{what} must be RFC 3339, after 1970"))),
            },
        }
    };
    if let Some(c) = &j.currency {
        currency_of(c)?;
    }
    if let Some(u) = j.image_url.as_deref().filter(|u| !u.is_empty()) {
        image_url_of(u)?;
    }
    let starts_ms = time(&j.starts_at, "starts_at")?;
    let ends_ms = time(&j.ends_at, "ends_at")?;
    if let (Some(s), Some(e)) = (starts_ms, ends_ms)
        && e <= s
    {
        return Err(bad("ends_at must be after starts_at"));
    }
    Ok(crate::redis::functions::SaleUpdate {
        name: j.name,
        description: j.description,
        price_cents: j.price_cents,
        stock: j.stock,
        starts_ms,
        ends_ms,
        per_user_limit: j.per_user_limit,
        currency: j.currency,
        image_url: j.image_url,
    })
}

/// Changes a sale before it opens. The window is checked as a whole (a new
/// `ends_at` must follow the new or the stored `starts_at`).
#[utoipa::path(patch, path = "/admin/sales/{sku}", tag = "admin",
    params(("sku" = String, Path, description = "The sale")),
    request_body(content = SalePatchJson, content_type = "application/json"),
    security(("admin" = [])),
    responses((status = 200, description = "The sale", body = AdminSaleJson),
        (status = 400, description = "`invalid_json`", body = Problem, content_type = "application/problem+json"),
        Unauthorized,
        UnknownSku,
        (status = 409, description = "`sale_open` (it has opened), `sale_ended`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_sale` (also `ends_at <= starts_at`)", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn update_sale(
    State(app): State<AppState>,
    _admin: Admin,
    caller: Caller,
    PathParam(sku): PathParam,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let result = async {
        let change = validate_patch(&body?)?;
        let sale = app.shop.catalog.update(&sku, &change).await?;
        app.pages.invalidate();
        Ok(no_store(
            Json(AdminSaleJson::new(&sale, now_ms())).into_response(),
        ))
    }
    .await;
    logged(&caller, Some(&sku), "update", result)
}

async fn change_sale(
    app: &AppState,
    caller: &Caller,
    sku: &str,
    change: crate::redis::functions::Lifecycle,
) -> Result<Response, ApiError> {
    use crate::redis::functions::Lifecycle;
    let action = match change {
        Lifecycle::Pause => "pause",
        Lifecycle::Resume => "resume",
        Lifecycle::End => "end",
    };
    let result = async {
        let sale = app.shop.catalog.change(sku, change).await?;
        app.pages.invalidate();
        Ok(no_store(
            Json(AdminSaleJson::new(&sale, now_ms())).into_response(),
        ))
    }
    .await;
    logged(caller, Some(sku), action, result)
}

/// Pauses a sale on every instance: purchases answer 423 `paused` (a
/// retry of a purchase already made still gets its 409). Pausing a paused
/// sale again answers 200.
#[utoipa::path(post, path = "/admin/sales/{sku}/pause", tag = "admin",
    params(("sku" = String, Path, description = "The sale")),
    security(("admin" = [])),
    responses((status = 200, description = "The sale, `paused`", body = AdminSaleJson),
        Unauthorized,
        UnknownSku,
        (status = 409, description = "`sale_ended`", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn pause_sale(
    State(app): State<AppState>,
    _admin: Admin,
    caller: Caller,
    PathParam(sku): PathParam,
) -> Result<Response, ApiError> {
    change_sale(
        &app,
        &caller,
        &sku,
        crate::redis::functions::Lifecycle::Pause,
    )
    .await
}

/// Resumes a paused sale on every instance.
#[utoipa::path(post, path = "/admin/sales/{sku}/resume", tag = "admin",
    params(("sku" = String, Path, description = "The sale")),
    security(("admin" = [])),
    responses((status = 200, description = "The sale", body = AdminSaleJson),
        Unauthorized,
        UnknownSku,
        (status = 409, description = "`not_paused`, `sale_ended`", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn resume_sale(
    State(app): State<AppState>,
    _admin: Admin,
    caller: Caller,
    PathParam(sku): PathParam,
) -> Result<Response, ApiError> {
    change_sale(
        &app,
        &caller,
        &sku,
        crate::redis::functions::Lifecycle::Resume,
    )
    .await
}

/// Ends a sale now (its `ends_at` becomes the server's now) on every
/// instance: purchases answer 410 `ended`.
#[utoipa::path(post, path = "/admin/sales/{sku}/end", tag = "admin",
    params(("sku" = String, Path, description = "The sale")),
    security(("admin" = [])),
    responses((status = 200, description = "The sale, `ended`", body = AdminSaleJson),
        Unauthorized,
        UnknownSku,
        (status = 409, description = "`sale_ended` (already ended)", body = Problem, content_type = "application/problem+json"),
        Unavailable))]
pub async fn end_sale(
    State(app): State<AppState>,
    _admin: Admin,
    caller: Caller,
    PathParam(sku): PathParam,
) -> Result<Response, ApiError> {
    change_sale(&app, &caller, &sku, crate::redis::functions::Lifecycle::End).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qty_parsing() {
        assert_eq!(parse_qty(br#"{"qty":1}"#).unwrap(), 1);
        for bad in [
            &br#"{"qty":0}"#[..],
            br#"{"qty":-1}"#,
            br#"{"qty":1000000000000}"#,
            br#"{"qty":"abc"}"#,
            b"",
            b"{}",
            br#"{"qty":1.5}"#,
            // Ambiguous: which one would count depends on the parser.
            br#"{"qty":1,"qty":2}"#,
        ] {
            assert_eq!(
                parse_qty(bad).unwrap_err().status(),
                422,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_qty(b"{nope").unwrap_err().status(), 400);
    }

    #[test]
    fn sale_validation() {
        let ok = br#"{"sku":"a","name":"n","price_cents":1,"stock":1,"starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","per_user_limit":1}"#;
        assert!(validate_sale(ok).is_ok());
        let backwards = br#"{"sku":"a","name":"n","price_cents":1,"stock":1,"starts_at":"2026-01-02T00:00:00Z","ends_at":"2026-01-01T00:00:00Z","per_user_limit":1}"#;
        assert_eq!(validate_sale(backwards).unwrap_err().status(), 422);
        let bad_sku = br#"{"sku":"a b","name":"n","price_cents":1,"stock":1,"starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","per_user_limit":1}"#;
        assert_eq!(validate_sale(bad_sku).unwrap_err().status(), 422);
    }

    #[test]
    fn patch_validation() {
        let u = validate_patch(br#"{"name":"m","stock":3,"starts_at":"2030-01-01T00:00:00Z"}"#)
            .expect("valid");
        assert_eq!(u.name.as_deref(), Some("m"));
        assert_eq!(u.stock, Some(3));
        assert!(u.starts_ms.is_some() && u.ends_ms.is_none());
        for bad in [
            &br#"{"starts_at":"2030-01-02T00:00:00Z","ends_at":"2030-01-01T00:00:00Z"}"#[..],
            br#"{"stock":0}"#,
            br#"{"name":" "}"#,
            br#"{"per_user_limit":0}"#,
            br#"{"ends_at":"tomorrow"}"#,
            br#"{"sku":"other"}"#,
        ] {
            assert_eq!(
                validate_patch(bad).unwrap_err().status(),
                422,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
