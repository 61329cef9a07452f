//! HTML pages from askama templates, identical for every shopper.
//!
//! A page holds only what changes when a sale is created or changed (name,
//! description, price, stock total, window); the live parts — stock left,
//! state, countdown, the Buy button, order status — are filled in by the
//! page script from small JSON calls. So pages are cacheable by nginx and
//! CDNs (`Cache-Control`, `ETag`, `Last-Modified`), and `flashsale render`
//! writes them to files nginx serves without the app ("staticization").
//! Assets are addressed with a content fingerprint (`?v=<hash>`), so they
//! can be cached for a year. A page that fails is an [`ApiError`] (an
//! unknown sku is a plain 404 here, not `unknown_sku`).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use tower::Layer;
use tower_http::services::ServeDir;
use tower_http::set_header::{SetResponseHeader, SetResponseHeaderLayer};

use super::AppState;
use super::api::PathParam;
use super::error::ApiError;
use crate::sale::{self, Sale, rfc3339};

/// Display data of one sale.
pub struct SaleView {
    pub sku: String,
    pub name: String,
    pub description: String,
    /// `299.00 EUR`: the price before the page script formats it in the
    /// shopper's locale from the three fields below.
    pub price: String,
    pub price_minor: i64,
    pub currency: &'static str,
    pub minor_digits: u32,
    /// The product's picture, else the placeholder.
    pub image: String,
    pub stock_total: i64,
    pub per_user_limit: i64,
    pub starts_at: String,
    pub ends_at: String,
    /// `starts_at` for people, in UTC (the page script shows it in local time).
    pub starts_label: String,
    pub ends_label: String,
}

/// `22 Nov 2026, 01:26:05 UTC`: a time as the page shows it before
/// the page script puts it in the shopper's zone (about as long, so nothing
/// moves).
fn time_label(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[day] [month repr:short] [year], [hour]:[minute]:[second] UTC"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| rfc3339(ms))
}

impl From<&Sale> for SaleView {
    fn from(s: &Sale) -> Self {
        Self {
            sku: s.sku.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            price: s.currency.plain(s.price_cents),
            price_minor: s.price_cents,
            currency: s.currency.code(),
            minor_digits: s.currency.minor_digits(),
            image: s.image_url.clone().unwrap_or_default(),
            stock_total: s.stock_total,
            per_user_limit: s.per_user_limit,
            starts_at: s.starts_at.clone(),
            ends_at: s.ends_at.clone(),
            starts_label: time_label(s.starts_ms),
            ends_label: time_label(s.ends_ms),
        }
    }
}

#[derive(Template)]
#[template(path = "index.html")]
pub struct IndexPage<'a> {
    pub sales: &'a [SaleView],
    pub v: &'a str,
}

#[derive(Template)]
#[template(path = "product.html")]
pub struct ProductPage<'a> {
    pub sale: &'a SaleView,
    pub v: &'a str,
}

#[derive(Template, WebTemplate)]
#[template(path = "orders.html")]
pub struct OrdersPage {
    pub v: String,
    /// Whether orders wait for their payment here (Cancel, the Actions
    /// column), and whether `POST /dev/pay/{order_id}` exists: settings of
    /// the server, so the page stays the same for every shopper.
    pub payment_step: bool,
    pub dev_pay: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "dev_login.html")]
pub struct DevLoginPage {
    pub v: String,
    pub user: String,
}

/// A rendered page and its validators.
#[derive(Clone)]
pub struct Rendered {
    pub html: Arc<str>,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
}

fn rendered(html: String) -> Rendered {
    let mut h = DefaultHasher::new();
    html.hash(&mut h);
    let etag = HeaderValue::from_str(&format!("\"{:016x}\"", h.finish()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    let now = httpdate(std::time::SystemTime::now());
    Rendered {
        html: html.into(),
        etag,
        last_modified: HeaderValue::from_str(&now).unwrap_or_else(|_| HeaderValue::from_static("")),
    }
}

/// RFC 7231 date of `t`.
fn httpdate(t: std::time::SystemTime) -> String {
    let odt = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    odt.format(&fmt).unwrap_or_default()
}

/// Rendered pages, kept until a sale is created or the catalog changes.
#[derive(Default)]
pub struct PageCache {
    pages: Mutex<HashMap<String, (Vec<Sale>, Rendered)>>,
    version: std::sync::OnceLock<String>,
}

impl PageCache {
    pub fn invalidate(&self) {
        self.pages.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The asset fingerprint: a hash of every file under the static dir.
    pub fn asset_version(&self, static_dir: &str) -> &str {
        self.version
            .get_or_init(|| asset_version(Path::new(static_dir)))
    }

    fn get(&self, key: &str, sales: &[Sale]) -> Option<Rendered> {
        let pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages
            .get(key)
            .filter(|(src, _)| same_page_data(src, sales))
            .map(|(_, r)| r.clone())
    }

    fn put(&self, key: &str, sales: Vec<Sale>, r: Rendered) {
        self.pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), (sales, r));
    }
}

/// Whether two catalogs render the same page (stock left is not on pages).
fn same_page_data(a: &[Sale], b: &[Sale]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.sku == y.sku
                && x.name == y.name
                && x.description == y.description
                && x.price_cents == y.price_cents
                && x.currency == y.currency
                && x.image_url == y.image_url
                && x.stock_total == y.stock_total
                && x.starts_ms == y.starts_ms
                && x.ends_ms == y.ends_ms
                && x.per_user_limit == y.per_user_limit
        })
}

/// Hash of the files under `dir` (names and contents), for `?v=`.
pub fn asset_version(dir: &Path) -> String {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

pub fn render_index(sales: &[Sale], v: &str) -> Result<String, ApiError> {
    let views: Vec<SaleView> = sales.iter().map(SaleView::from).collect();
    IndexPage { sales: &views, v }
        .render()
        .map_err(|e| ApiError::internal(format!("template: {e}")))
}

pub fn render_product(sale: &Sale, v: &str) -> Result<String, ApiError> {
    ProductPage {
        sale: &SaleView::from(sale),
        v,
    }
    .render()
    .map_err(|e| ApiError::internal(format!("template: {e}")))
}

/// Whether an `If-None-Match` value (`*`, or a list of tags, weak or not)
/// names `etag` (weak comparison, as RFC 9110 asks for GET).
fn etag_matches(if_none_match: &str, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == ours)
}

fn respond(r: Rendered, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &r.etag));
    let common = [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=10, stale-while-revalidate=60"),
        ),
        (header::ETAG, r.etag.clone()),
        (header::LAST_MODIFIED, r.last_modified.clone()),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        r.html.to_string(),
    )
        .into_response()
}

/// The shop: every sale (HTML, the same for every shopper, cacheable).
#[utoipa::path(get, path = "/", tag = "pages",
    responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn index(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let all = app.shop.catalog.list().await?;
    let now = sale::now_ms();
    let listed = app.settings.ended_listed.as_millis() as i64;
    let sales: Vec<Sale> = all
        .iter()
        .filter(|s| s.listed_at(now, listed))
        .cloned()
        .collect();
    if let Some(r) = app.pages.get("/", &sales) {
        return Ok(respond(r, &headers));
    }
    let v = app.pages.asset_version(&app.settings.static_dir);
    let r = rendered(render_index(&sales, v)?);
    app.pages.put("/", sales, r.clone());
    Ok(respond(r, &headers))
}

/// A product page (HTML, the same for every shopper, cacheable).
#[utoipa::path(get, path = "/p/{sku}", tag = "pages",
    params(("sku" = String, Path, description = "The sale")),
    responses((status = 200, description = "HTML", content_type = "text/html"),
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json")))]
pub async fn product(
    State(app): State<AppState>,
    PathParam(sku): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sale = match app.shop.catalog.get(&sku).await {
        Ok(s) => s,
        Err(sale::Error::UnknownSku) => return Err(ApiError::not_found()),
        Err(e) => return Err(e.into()),
    };
    let key = format!("/p/{sku}");
    let one = std::slice::from_ref(&*sale);
    if let Some(r) = app.pages.get(&key, one) {
        return Ok(respond(r, &headers));
    }
    let v = app.pages.asset_version(&app.settings.static_dir);
    let r = rendered(render_product(&sale, v)?);
    app.pages.put(&key, vec![Sale::clone(&sale)], r.clone());
    Ok(respond(r, &headers))
}

/// The shopper's orders page (HTML; filled in by the page script).
#[utoipa::path(get, path = "/orders", tag = "pages",
    responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn orders(State(app): State<AppState>) -> OrdersPage {
    OrdersPage {
        v: app.pages.asset_version(&app.settings.static_dir).to_owned(),
        payment_step: !app.settings.payment_window.is_zero(),
        dev_pay: dev_pay_enabled(&app.settings),
    }
}

pub async fn dev_login_form(State(app): State<AppState>) -> DevLoginPage {
    DevLoginPage {
        v: app.pages.asset_version(&app.settings.static_dir).to_owned(),
        user: String::new(),
    }
}

#[derive(serde::Deserialize)]
pub struct DevLoginForm {
    user: String,
}

/// Sets the `fs_token` cookie for a typed-in name (`--dev-login` only).
pub async fn dev_login(
    State(app): State<AppState>,
    form: Result<axum::Form<DevLoginForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let axum::Form(form) =
        form.map_err(|_| ApiError::invalid("invalid_user", "a user name is required"))?;
    // Configuration refuses the development login without an HS256 secret.
    let secret = app.settings.jwt.secret().ok_or_else(ApiError::not_found)?;
    let token = super::auth::mint(secret, form.user.trim(), 12 * 3600)?;
    let secure = if app.settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("fs_token={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}");
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    Ok(resp)
}

/// Whether the development payment exists: `--dev-login` and a payment
/// step (`FLASHSALE_PAYMENT_WINDOW_S` above 0). The router and the orders
/// page both ask this.
pub fn dev_pay_enabled(settings: &crate::config::ServeSettings) -> bool {
    settings.dev_login && !settings.payment_window.is_zero()
}

/// Pays the signed-in shopper's own order with its own amount, as the
/// payment provider's callback would (`--dev-login` with a payment step
/// only; not in the API description). The payment id is `dev-<order id>`:
/// one development payment per order, so a repeat is answered like the
/// first. 404 for an order that is not the shopper's; `payment_late` once
/// it expired or was cancelled.
pub async fn dev_pay(
    State(app): State<AppState>,
    super::auth::Shopper(user): super::auth::Shopper,
    PathParam(order_id): PathParam,
) -> Result<Response, ApiError> {
    let order = app.shop.order(&user, &order_id).await?;
    // An order made before payments existed has no amount; the payment
    // Function counts it as 0, so this is still "its own amount".
    let amount = order.amount_cents.unwrap_or(0);
    let paid = app
        .shop
        .pay(&order_id, &format!("dev-{order_id}"), amount)
        .await?;
    let mut resp = axum::Json(paid).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `/static`: files from disk, cacheable for a year (URLs carry `?v=`).
pub fn static_files(dir: &str) -> SetResponseHeader<ServeDir, HeaderValue> {
    SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    )
    .layer(ServeDir::new(dir))
}

/// Writes every page into `out` (`index.html`, `p/<sku>.html`) for nginx.
/// The index leaves out sales that ended more than `listed_after_end` ago,
/// as the app's own index does.
pub async fn render_all(
    sales: &[Sale],
    listed_after_end: std::time::Duration,
    static_dir: &str,
    out: &Path,
) -> Result<usize, String> {
    let now = sale::now_ms();
    let listed_ms = listed_after_end.as_millis() as i64;
    let listed: Vec<Sale> = sales
        .iter()
        .filter(|s| s.listed_at(now, listed_ms))
        .cloned()
        .collect();
    let v = asset_version(Path::new(static_dir));
    std::fs::create_dir_all(out.join("p")).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |path: std::path::PathBuf, html: String| {
        let tmp = path.with_extension("html.tmp");
        std::fs::write(&tmp, html)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        out.join("index.html"),
        render_index(&listed, &v).map_err(|e| e.to_string())?,
    )?;
    for s in sales {
        write(
            out.join("p").join(format!("{}.html", s.sku)),
            render_product(s, &v).map_err(|e| e.to_string())?,
        )?;
    }
    Ok(sales.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let tag = HeaderValue::from_static("\"abc\"");
        assert!(etag_matches("\"abc\"", &tag));
        assert!(etag_matches("W/\"abc\"", &tag));
        assert!(etag_matches("\"x\", \"abc\"", &tag));
        assert!(etag_matches("*", &tag));
        assert!(!etag_matches("\"abcd\"", &tag));
        assert!(!etag_matches("", &tag));
    }

    #[test]
    fn time_labels_are_utc_and_readable() {
        assert_eq!(time_label(1_795_311_509_334), "22 Nov 2026, 01:38:29 UTC");
    }
}
