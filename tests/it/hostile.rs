//! Issue 8: hostile input, forged tokens, overload, slow clients and
//! secrets, against the real app on the shared Sentinel group.
//!
//! No timing is asserted beyond generous sanity bounds; the real latency
//! figures of overload come from `loadtest/overload.sh`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use flashsale::config::{Secret, ServeSettings};
use flashsale::web::{Application, ConnLimits};
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

use crate::support::app::{
    ADMIN_TOKEN, AppOptions, JWT_SECRET, TestApp, assert_config_error, redis_settings,
    serve_in_background, shared_group, unique,
};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token with any header and claims, HMAC-signed as `alg` with `key`.
fn signed(alg: Algorithm, claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).expect("sign")
}

/// A token whose header is `header` verbatim, signed HS256 with `key`
/// (the signature is right for the bytes; only the header lies).
fn forged_header(header: &Value, claims: &Value, key: &[u8]) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{msg}.{sig}")
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now_s() + 3600 })
}

/// Asserts the API's error body and returns its code.
fn contract_error(status: u16, body: &[u8], what: &str) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        panic!(
            "{what}: {status} body is not JSON: {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(v["message"].is_string(), "{what}: {status} {v}");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {status} has no error code: {v}"))
        .to_owned()
}

async fn audits(app: &TestApp, skus: &[&str]) -> Vec<Value> {
    join_all(skus.iter().map(|s| app.audit(s))).await
}

// ---------------------------------------------------------------------------
// 1. Property test: random requests at the real router.
// ---------------------------------------------------------------------------

/// A path segment.
#[derive(Clone, Debug)]
enum Seg {
    Live,
    Upcoming,
    Ended,
    Order,
    Raw(String),
}

#[derive(Clone, Debug)]
enum PathT {
    Index,
    Page(Seg),
    OrdersPage,
    Products,
    Product(Seg),
    Purchase(Seg),
    Order(Seg),
    MyOrders,
    AdminSales,
    Audit(Seg),
    Fixed(&'static str),
    Static(Seg),
    Random(Vec<Seg>),
}

#[derive(Clone, Debug)]
enum AuthT {
    None,
    Valid(usize),
    Admin,
    WrongAdmin,
    Forged(usize),
    Expired(usize),
    AlgNone(usize),
    Hs512(usize),
    Text(Vec<u8>),
}

#[derive(Clone, Debug)]
enum CookieT {
    None,
    Valid(usize),
    Forged(usize),
    Text(Vec<u8>),
}

#[derive(Clone, Debug)]
enum OriginT {
    None,
    Same,
    Evil,
    Text(Vec<u8>),
}

#[derive(Clone, Debug)]
enum IdemT {
    None,
    Valid(String),
    Text(Vec<u8>),
}

#[derive(Clone, Debug)]
enum BodyT {
    Empty,
    Qty(i64),
    Raw(String),
    Bytes(Vec<u8>),
    Big(usize),
}

#[derive(Clone, Debug)]
struct Case {
    method: String,
    path: PathT,
    query: Option<String>,
    auth: AuthT,
    cookie: CookieT,
    origin: OriginT,
    content_type: Option<Vec<u8>>,
    idem: IdemT,
    extra: Vec<(&'static str, Vec<u8>)>,
    body: BodyT,
}

/// Shopper `i`: a few come back often (and meet the per-shopper limit),
/// most are new; every one uses the whole alphabet of user ids.
fn shopper(i: usize) -> String {
    match i % 4 {
        0 => format!("fz-{i}"),
        1 => format!("fz:{i}.x"),
        2 => format!("FZ_{i}"),
        _ => format!("fz.{i}-y:Z"),
    }
}
const LIMIT: i64 = 3;

/// Bytes a header value may hold (visible ASCII, tab, obs-text).
fn header_bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(
        prop_oneof![8 => 0x20u8..=0x7e, 2 => 0x80u8..=0xff, 1 => Just(b'\t')],
        0..max,
    )
    .boxed()
}

fn seg() -> BoxedStrategy<Seg> {
    prop_oneof![
        4 => Just(Seg::Live),
        1 => Just(Seg::Upcoming),
        1 => Just(Seg::Ended),
        1 => Just(Seg::Order),
        2 => "[A-Za-z0-9_-]{1,70}".prop_map(Seg::Raw),
        2 => "\\PC{0,24}".prop_map(Seg::Raw),
        1 => prop::sample::select(vec![
            "..", "%2e%2e", "%2F", "%00", "%ff%fe", "{sku}", "*", "a%20b", "%", "x?y=1",
            "%7Bsku%7D", "fz\u{0}", "\u{202e}", "..%2f..%2fetc%2fpasswd",
        ])
        .prop_map(|s| Seg::Raw(s.to_owned())),
        1 => (1usize..6000).prop_map(|n| Seg::Raw("y".repeat(n))),
    ]
    .boxed()
}

fn path() -> BoxedStrategy<PathT> {
    prop_oneof![
        8 => seg().prop_map(PathT::Purchase),
        2 => seg().prop_map(PathT::Product),
        2 => seg().prop_map(PathT::Order),
        2 => seg().prop_map(PathT::Audit),
        1 => prop_oneof![
            Just(PathT::Index),
            Just(PathT::OrdersPage),
            Just(PathT::Products),
            Just(PathT::MyOrders),
            Just(PathT::AdminSales),
        ],
        1 => prop::sample::select(vec![
            "/healthz", "/readyz", "/metrics", "/dev/login", "/static/app.js", "/static/",
            "/api", "/api/", "/admin", "/api/sales", "//api//products",
        ])
        .prop_map(PathT::Fixed),
        2 => prop_oneof![seg().prop_map(PathT::Page), seg().prop_map(PathT::Static)],
        2 => prop::collection::vec(seg(), 1..5).prop_map(PathT::Random),
    ]
    .boxed()
}

fn method() -> BoxedStrategy<String> {
    prop_oneof![
        6 => Just("POST".to_owned()),
        3 => Just("GET".to_owned()),
        1 => Just("HEAD".to_owned()),
        2 => prop::sample::select(vec!["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
            .prop_map(str::to_owned),
        1 => "[A-Z]{1,10}".prop_filter("CONNECT/PRI change the protocol", |m| {
            m != "CONNECT" && m != "PRI"
        }),
    ]
    .boxed()
}

fn user() -> BoxedStrategy<usize> {
    prop_oneof![1 => 0usize..4, 3 => 4usize..100_000].boxed()
}

fn auth() -> BoxedStrategy<AuthT> {
    prop_oneof![
        2 => Just(AuthT::None),
        6 => user().prop_map(AuthT::Valid),
        1 => Just(AuthT::Admin),
        1 => Just(AuthT::WrongAdmin),
        1 => prop_oneof![
            user().prop_map(AuthT::Forged),
            user().prop_map(AuthT::Expired),
            user().prop_map(AuthT::AlgNone),
            user().prop_map(AuthT::Hs512),
        ],
        2 => header_bytes(120).prop_map(AuthT::Text),
        1 => header_bytes(120).prop_map(|b| {
            let mut v = b"Bearer ".to_vec();
            v.extend(b);
            AuthT::Text(v)
        }),
    ]
    .boxed()
}

fn cookie() -> BoxedStrategy<CookieT> {
    prop_oneof![
        6 => Just(CookieT::None),
        2 => user().prop_map(CookieT::Valid),
        1 => user().prop_map(CookieT::Forged),
        1 => header_bytes(100).prop_map(|b| {
            let mut v = b"a=b; fs_token=".to_vec();
            v.extend(b);
            CookieT::Text(v)
        }),
        1 => header_bytes(100).prop_map(CookieT::Text),
    ]
    .boxed()
}

fn origin() -> BoxedStrategy<OriginT> {
    prop_oneof![
        6 => Just(OriginT::None),
        2 => Just(OriginT::Same),
        1 => Just(OriginT::Evil),
        1 => header_bytes(60).prop_map(OriginT::Text),
    ]
    .boxed()
}

fn content_type() -> BoxedStrategy<Option<Vec<u8>>> {
    prop_oneof![
        3 => Just(None),
        4 => prop::sample::select(vec![
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=utf-16",
            "*/*",
        ])
        .prop_map(|s| Some(s.as_bytes().to_vec())),
        1 => header_bytes(60).prop_map(Some),
    ]
    .boxed()
}

fn idem() -> BoxedStrategy<IdemT> {
    prop_oneof![
        6 => Just(IdemT::None),
        3 => "[A-Za-z0-9_.:-]{1,128}".prop_map(IdemT::Valid),
        1 => "[A-Za-z0-9_.:-]{129,140}".prop_map(IdemT::Valid),
        2 => header_bytes(140).prop_map(IdemT::Text),
    ]
    .boxed()
}

fn extra() -> BoxedStrategy<Vec<(&'static str, Vec<u8>)>> {
    let name = prop::sample::select(vec![
        "x-real-ip",
        "x-forwarded-for",
        "accept",
        "if-none-match",
        "range",
        "accept-encoding",
        "host",
        "expect",
        "x-requested-with",
        "forwarded",
    ]);
    prop_oneof![
        4 => Just(Vec::new()),
        1 => prop::collection::vec((name, header_bytes(60)), 1..4),
    ]
    .boxed()
}

fn body() -> BoxedStrategy<BodyT> {
    prop_oneof![
        1 => Just(BodyT::Empty),
        6 => prop_oneof![1i64..=LIMIT, -2i64..=6, any::<i64>()].prop_map(BodyT::Qty),
        2 => prop::sample::select(vec![
            r#"{"qty":1.0}"#,
            r#"{"qty":"1"}"#,
            r#"{"qty":1e0}"#,
            r#"{"qty":[1]}"#,
            r#"{"qty":null}"#,
            r#"{"qty":1,"qty":2}"#,
            r#"[{"qty":1}]"#,
            r#"{"qty":9223372036854775807}"#,
            r#"{"qty":-9223372036854775808}"#,
            r#"{"qty":18446744073709551615}"#,
            r#"{"qty":1} trailing"#,
            "\u{feff}{\"qty\":1}",
            r#"{"qty":01}"#,
            r#"{"QTY":1}"#,
            "user=fz-amy",
            "  \n\t ",
        ])
        .prop_map(|s| BodyT::Raw(s.to_owned())),
        1 => "\\PC{0,64}".prop_map(BodyT::Raw),
        1 => (1usize..2000).prop_map(|d| BodyT::Raw(format!("{}{}", "[".repeat(d), "]".repeat(d)))),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(BodyT::Bytes),
        1 => (1usize..4096).prop_map(BodyT::Big),
    ]
    .boxed()
}

fn random_case() -> BoxedStrategy<Case> {
    (
        method(),
        path(),
        prop::option::weighted(0.15, "\\PC{0,40}"),
        auth(),
        cookie(),
        origin(),
        content_type(),
        idem(),
        extra(),
        body(),
    )
        .prop_map(
            |(method, path, query, auth, cookie, origin, content_type, idem, extra, body)| Case {
                method,
                path,
                query,
                auth,
                cookie,
                origin,
                content_type,
                idem,
                extra,
                body,
            },
        )
        .boxed()
}

/// A purchase a real shopper could make.
fn valid_case() -> BoxedStrategy<Case> {
    (
        prop_oneof![
            user().prop_map(|u| (AuthT::Valid(u), CookieT::None)),
            user().prop_map(|u| (AuthT::None, CookieT::Valid(u))),
        ],
        prop_oneof![Just(OriginT::None), Just(OriginT::Same)],
        prop_oneof![
            Just(IdemT::None),
            "[A-Za-z0-9_.:-]{1,128}".prop_map(IdemT::Valid)
        ],
        1i64..=LIMIT,
        prop::option::of(Just(b"application/json".to_vec())),
    )
        .prop_map(|((auth, cookie), origin, idem, qty, content_type)| Case {
            method: "POST".into(),
            path: PathT::Purchase(Seg::Live),
            query: None,
            auth,
            cookie,
            origin,
            content_type,
            idem,
            extra: Vec::new(),
            body: BodyT::Qty(qty),
        })
        .boxed()
}

/// Half the cases are random throughout; the other half are valid
/// purchases with each part replaced by a random one at 15 %, so the
/// boundary between a purchase and a refusal is explored too.
fn case() -> BoxedStrategy<Case> {
    let mutated = (
        valid_case(),
        random_case(),
        prop::collection::vec(prop::bool::weighted(0.15), 10),
    )
        .prop_map(|(v, r, m)| Case {
            method: if m[0] { r.method } else { v.method },
            path: if m[1] { r.path } else { v.path },
            query: if m[2] { r.query } else { v.query },
            auth: if m[3] { r.auth } else { v.auth },
            cookie: if m[4] { r.cookie } else { v.cookie },
            origin: if m[5] { r.origin } else { v.origin },
            content_type: if m[6] { r.content_type } else { v.content_type },
            idem: if m[7] { r.idem } else { v.idem },
            extra: if m[8] { r.extra } else { v.extra },
            body: if m[9] { r.body } else { v.body },
        });
    prop_oneof![random_case(), mutated].boxed()
}

/// The sales and the valid material of one property-test app.
struct Fuzz {
    app: TestApp,
    /// A client without a pool for the hostile requests: the server closes
    /// a connection whose request body it did not read, and a pooled
    /// connection could be reused by the audits in that instant.
    fresh: reqwest::Client,
    live: String,
    upcoming: String,
    ended: String,
    order_id: String,
    host: String,
}

impl Fuzz {
    fn seg(&self, s: &Seg) -> String {
        match s {
            Seg::Live => self.live.clone(),
            Seg::Upcoming => self.upcoming.clone(),
            Seg::Ended => self.ended.clone(),
            Seg::Order => self.order_id.clone(),
            Seg::Raw(r) => r.clone(),
        }
    }

    fn path(&self, p: &PathT) -> String {
        match p {
            PathT::Index => "/".into(),
            PathT::Page(s) => format!("/p/{}", self.seg(s)),
            PathT::OrdersPage => "/orders".into(),
            PathT::Products => "/api/products".into(),
            PathT::Product(s) => format!("/api/products/{}", self.seg(s)),
            PathT::Purchase(s) => format!("/api/sales/{}/purchase", self.seg(s)),
            PathT::Order(s) => format!("/api/orders/{}", self.seg(s)),
            PathT::MyOrders => "/api/me/orders".into(),
            PathT::AdminSales => "/admin/sales".into(),
            PathT::Audit(s) => format!("/admin/sales/{}/audit", self.seg(s)),
            PathT::Fixed(f) => (*f).to_owned(),
            PathT::Static(s) => format!("/static/{}", self.seg(s)),
            PathT::Random(v) => v.iter().map(|s| format!("/{}", self.seg(s))).collect(),
        }
    }

    fn token(&self, c: &AuthT) -> Option<Vec<u8>> {
        let key = JWT_SECRET.as_bytes();
        let t = match c {
            AuthT::None => return None,
            AuthT::Valid(u) => self.app.token(&shopper(*u)),
            AuthT::Admin => ADMIN_TOKEN.to_owned(),
            AuthT::WrongAdmin => format!("{ADMIN_TOKEN}x"),
            AuthT::Forged(u) => signed(
                Algorithm::HS256,
                &claims(&shopper(*u)),
                b"not-the-secret-0123456789",
            ),
            AuthT::Expired(u) => signed(
                Algorithm::HS256,
                &json!({"sub": &shopper(*u), "exp": now_s() - 120}),
                key,
            ),
            AuthT::AlgNone(u) => format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims(&shopper(*u)).to_string().as_bytes())
            ),
            AuthT::Hs512(u) => signed(Algorithm::HS512, &claims(&shopper(*u)), key),
            AuthT::Text(b) => return Some(b.clone()),
        };
        Some(format!("Bearer {t}").into_bytes())
    }

    fn cookie(&self, c: &CookieT) -> Option<Vec<u8>> {
        match c {
            CookieT::None => None,
            CookieT::Valid(u) => Some(format!("fs_token={}", self.app.token(&shopper(*u))).into()),
            CookieT::Forged(u) => Some(
                format!(
                    "fs_token={}",
                    signed(
                        Algorithm::HS256,
                        &claims(&shopper(*u)),
                        b"not-the-secret-0123456789"
                    )
                )
                .into(),
            ),
            CookieT::Text(b) => Some(b.clone()),
        }
    }

    fn body(b: &BodyT) -> Vec<u8> {
        match b {
            BodyT::Empty => Vec::new(),
            BodyT::Qty(q) => format!(r#"{{"qty":{q}}}"#).into_bytes(),
            BodyT::Raw(s) => s.as_bytes().to_vec(),
            BodyT::Bytes(b) => b.clone(),
            BodyT::Big(n) => {
                let mut v = br#"{"qty":1,"pad":""#.to_vec();
                v.resize(flashsale::web::MAX_BODY + n, b'x');
                v.extend(br#""}"#);
                v
            }
        }
    }

    /// Whether the case is a well-formed purchase of the live sale by a
    /// signed-in shopper: the only kind that may change an audit.
    fn is_valid_purchase(&self, c: &Case, body: &[u8]) -> Option<i64> {
        let signed_in = matches!(
            (&c.auth, &c.cookie),
            (AuthT::Valid(_), _) | (AuthT::None, CookieT::Valid(_))
        );
        let same_origin = matches!(c.origin, OriginT::None | OriginT::Same);
        let key_ok = match &c.idem {
            IdemT::None => true,
            IdemT::Valid(k) => k.len() <= 128,
            // Random bytes are now and then a well-formed key ("x"); HTTP
            // drops the blanks around a header value.
            IdemT::Text(b) => std::str::from_utf8(b).is_ok_and(|k| {
                let k = k.trim_matches([' ', '\t']);
                (1..=128).contains(&k.len())
                    && k.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"_.:-".contains(&c))
            }),
        };
        let fits = body.len() <= flashsale::web::MAX_BODY;
        // A body naming `qty` twice is ambiguous (parsers disagree on which
        // one wins), so the service refuses it as 422 whatever the values.
        let qty = serde_json::from_slice::<Value>(body)
            .ok()
            .filter(|_| qty_keys(body) == 1)
            .and_then(|v| v.get("qty")?.as_i64())
            .filter(|q| (1..=LIMIT).contains(q));
        (c.method == "POST"
            && matches!(c.path, PathT::Purchase(Seg::Live))
            && signed_in
            && fits
            && same_origin
            && key_ok)
            .then_some(qty)
            .flatten()
    }
}

/// How many times the top-level JSON object in `body` names `qty` (0 for
/// anything that is not an object). `serde_json::Value` keeps only the last
/// of repeated keys, so the count needs its own pass over the map.
fn qty_keys(body: &[u8]) -> usize {
    struct Count(usize);
    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Count, A::Error> {
                    let mut n = 0;
                    while let Some(k) = m.next_key::<String>()? {
                        n += usize::from(k == "qty");
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                    Ok(Count(n))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Count>(body).map_or(0, |c| c.0)
}

/// What one case did, for the closing tally.
struct Outcome {
    status: u16,
}

async fn run_case(f: &Fuzz, c: &Case) -> Result<Option<Outcome>, String> {
    let skus = [f.live.as_str(), f.upcoming.as_str(), f.ended.as_str()];
    let mut url = format!("{}{}", f.app.base, f.path(&c.path));
    if let Some(q) = &c.query {
        url.push('?');
        url.push_str(q);
    }
    let Ok(method) = reqwest::Method::from_bytes(c.method.as_bytes()) else {
        return Ok(None);
    };
    let Ok(parsed) = reqwest::Url::parse(&url) else {
        return Ok(None);
    };
    let body = Fuzz::body(&c.body);
    let mut headers = reqwest::header::HeaderMap::new();
    let mut put = |name: &str, value: Vec<u8>| -> bool {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
                true
            }
            _ => false,
        }
    };
    let mut ok = true;
    if let Some(a) = f.token(&c.auth) {
        ok &= put("authorization", a);
    }
    if let Some(k) = f.cookie(&c.cookie) {
        ok &= put("cookie", k);
    }
    match &c.origin {
        OriginT::None => {}
        OriginT::Same => ok &= put("origin", format!("http://{}", f.host).into_bytes()),
        OriginT::Evil => ok &= put("origin", b"https://evil.example".to_vec()),
        OriginT::Text(b) => ok &= put("origin", b.clone()),
    }
    if let Some(ct) = &c.content_type {
        ok &= put("content-type", ct.clone());
    }
    match &c.idem {
        IdemT::None => {}
        IdemT::Valid(k) => ok &= put("idempotency-key", k.clone().into_bytes()),
        IdemT::Text(b) => ok &= put("idempotency-key", b.clone()),
    }
    for (n, v) in &c.extra {
        ok &= put(n, v.clone());
    }
    if !ok {
        return Ok(None);
    }
    let valid = f.is_valid_purchase(c, &body).filter(|_| c.extra.is_empty());
    let before = audits(&f.app, &skus).await;
    let resp = f
        .fresh
        .request(method, parsed)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport error: {e}"))?;
    let status = resp.status().as_u16();
    if std::env::var_os("HOSTILE_DEBUG").is_some() {
        eprintln!("{status} {} {url} valid={valid:?} {c:?}", c.method);
    }
    let nosniff = resp.headers().contains_key("x-content-type-options");
    let retry_after = resp.headers().contains_key("retry-after");
    let bytes = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
    if status >= 500 {
        return Err(format!("{status}: {shown}"));
    }
    if !nosniff {
        return Err(format!("{status} without the security headers"));
    }
    if status >= 400 && c.method != "HEAD" {
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| format!("{status} not JSON: {shown}"))?;
        if !(v["error"].is_string() && v["message"].is_string()) {
            return Err(format!("{status} not the contract error: {shown}"));
        }
        if status == 429 && !retry_after {
            return Err("429 without Retry-After".into());
        }
    }
    let after = audits(&f.app, &skus).await;
    if status == 202 {
        let Some(qty) = f.is_valid_purchase(c, &Fuzz::body(&c.body)) else {
            return Err(format!(
                "202 for a request that is no valid purchase: {shown}"
            ));
        };
        let (b, a) = (&before[0], &after[0]);
        let n = |v: &Value, k: &str| v[k].as_i64().unwrap_or(i64::MIN);
        let expect = [
            ("sold", n(b, "sold") + qty),
            ("stock_left", n(b, "stock_left") - qty),
            ("orders", n(b, "orders") + 1),
            ("stock_total", n(b, "stock_total")),
            ("confirmed", n(b, "confirmed")),
        ];
        for (k, want) in expect {
            if n(a, k) != want {
                return Err(format!("after a 202 of {qty}: {k} {} != {want}", n(a, k)));
            }
        }
        if a["consistent"] != true {
            return Err(format!("inconsistent after a 202: {a}"));
        }
        if before[1..] != after[1..] {
            return Err("a purchase of the live sale changed another sale".into());
        }
    } else {
        if before != after {
            return Err(format!(
                "{status} changed an audit: {before:?} -> {after:?}"
            ));
        }
        if valid.is_some() && !matches!(status, 409 | 429) {
            return Err(format!("a valid purchase got {status}: {shown}"));
        }
    }
    Ok(Some(Outcome { status }))
}

#[test]
fn random_requests_change_nothing_but_valid_purchases() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fuzz = rt.block_on(async {
        let app = TestApp::spawn(
            shared_group(),
            AppOptions {
                rate_limit_per_shopper: 50,
                ..AppOptions::default()
            },
        )
        .await;
        let (live, upcoming, ended) = (unique("fzl"), unique("fzu"), unique("fze"));
        app.create_sale(&live, 1_000_000, LIMIT, -5, 3600).await;
        app.create_sale(&upcoming, 100, LIMIT, 3600, 3600).await;
        app.create_sale(&ended, 100, LIMIT, -20, 2).await;
        let (s, b) = app.purchase("fz-order-owner", &live, 1, None).await;
        assert_eq!(s, 202, "{b}");
        let order_id = b["order_id"].as_str().expect("order id").to_owned();
        let host = app.base.trim_start_matches("http://").to_owned();
        Fuzz {
            app,
            fresh: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            live,
            upcoming,
            ended,
            order_id,
            host,
        }
    });
    let cases: u32 = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 200,
        max_shrink_time: 30_000,
        failure_persistence: None,
        fork: false,
        timeout: 0,
        ..Config::default()
    });
    let tally = std::sync::Mutex::new(BTreeMap::<u16, u32>::new());
    let started = Instant::now();
    let result = runner.run(&case(), |c| {
        let out = rt
            .block_on(run_case(&fuzz, &c))
            .map_err(TestCaseError::fail)?;
        if let Some(o) = out {
            *tally.lock().expect("tally").entry(o.status).or_default() += 1;
        }
        Ok(())
    });
    let tally = tally.into_inner().expect("tally");
    eprintln!(
        "hostile: {cases} cases in {:.1?}, statuses {tally:?}",
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let audit = rt.block_on(fuzz.app.audit(&fuzz.live));
    assert_eq!(audit["consistent"], true, "{audit}");
    assert!(audit["max_units_per_buyer"].as_i64().unwrap_or(0) <= LIMIT);
    assert!(
        tally.get(&202).copied().unwrap_or(0) > 0 && tally.keys().any(|s| *s >= 400),
        "the generator reaches both purchases and errors: {tally:?}"
    );
    drop(fuzz);
    rt.shutdown_timeout(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// 2. Tokens.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_odd_and_oversized_tokens_are_401_and_change_nothing() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let sku = unique("tok");
    app.create_sale(&sku, 100, 5, -5, 3600).await;
    let key = JWT_SECRET.as_bytes();
    let now = now_s();
    let before = app.audit(&sku).await;

    let mut tokens: Vec<(String, Vec<u8>)> = Vec::new();
    let mut bearer = |what: &str, t: String| {
        tokens.push((what.to_owned(), format!("Bearer {t}").into_bytes()));
    };
    let body_b64 = b64(claims("mallory").to_string().as_bytes());
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let h = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        bearer(&format!("alg {alg:?}"), format!("{h}.{body_b64}."));
        bearer(
            &format!("alg {alg:?} with a signature"),
            forged_header(&json!({"alg": alg, "typ": "JWT"}), &claims("mallory"), key),
        );
    }
    bearer(
        "no header alg",
        forged_header(&json!({"typ": "JWT"}), &claims("mallory"), key),
    );
    bearer(
        "wrong key",
        signed(
            Algorithm::HS256,
            &claims("mallory"),
            b"another-secret-0123456789",
        ),
    );
    bearer(
        "empty key",
        forged_header(&json!({"alg":"HS256","typ":"JWT"}), &claims("mallory"), b""),
    );
    bearer(
        "expired a minute ago",
        signed(
            Algorithm::HS256,
            &json!({"sub": "mallory", "exp": now - 60}),
            key,
        ),
    );
    bearer(
        "nbf in the future",
        signed(
            Algorithm::HS256,
            &json!({"sub": "mallory", "exp": now + 3600, "nbf": now + 120}),
            key,
        ),
    );
    bearer(
        "no exp",
        signed(Algorithm::HS256, &json!({"sub": "mallory"}), key),
    );
    bearer(
        "exp as a string",
        signed(
            Algorithm::HS256,
            &json!({"sub": "mallory", "exp": (now + 3600).to_string()}),
            key,
        ),
    );
    bearer(
        "no sub",
        signed(Algorithm::HS256, &json!({"exp": now + 3600}), key),
    );
    bearer(
        "sub a number",
        signed(
            Algorithm::HS256,
            &json!({"sub": 42, "exp": now + 3600}),
            key,
        ),
    );
    bearer(
        "claims an array",
        forged_header(
            &json!({"alg":"HS256","typ":"JWT"}),
            &json!(["mallory"]),
            key,
        ),
    );
    for sub in [
        "{}", "a{b}c", "{fz}", "*", "a*", "a b", " ", "", "é", "a\nb", "a/b", "a\u{0}b",
    ] {
        bearer(
            &format!("sub {sub:?}"),
            signed(Algorithm::HS256, &claims(sub), key),
        );
    }
    bearer(
        "sub of 65 chars",
        signed(Algorithm::HS256, &claims(&"a".repeat(65)), key),
    );
    bearer(
        "sub of 10 KB",
        signed(Algorithm::HS256, &claims(&"a".repeat(10 * 1024)), key),
    );
    bearer(
        "token over 4 KiB, rightly signed",
        signed(
            Algorithm::HS256,
            &json!({"sub": "mallory", "exp": now + 3600, "pad": "p".repeat(4096)}),
            key,
        ),
    );
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        bearer(
            &format!("{alg:?} with the right key"),
            signed(alg, &claims("mallory"), key),
        );
    }
    for alg in [
        "RS256", "ES256", "PS256", "EdDSA", "HS384", "hs256", "HS256 ",
    ] {
        bearer(
            &format!("header {alg} over an HS256 signature"),
            forged_header(&json!({"alg": alg, "typ": "JWT"}), &claims("mallory"), key),
        );
    }
    let good = app.token("mallory");
    bearer("two tokens", format!("{good} {good}"));
    bearer("four parts", format!("{good}.x"));
    bearer(
        "two parts",
        good.rsplit_once('.').expect("jwt").0.to_owned(),
    );
    bearer("signature flipped", {
        let (m, s) = good.rsplit_once('.').expect("jwt");
        let mut s = s.as_bytes().to_vec();
        s[0] = if s[0] == b'A' { b'B' } else { b'A' };
        format!("{m}.{}", String::from_utf8(s).expect("ascii"))
    });
    bearer("padding added", format!("{good}=="));
    bearer("not base64", "!!!.???.***".into());
    tokens.push(("no scheme".into(), good.clone().into_bytes()));
    tokens.push(("Basic scheme".into(), format!("Basic {good}").into_bytes()));
    tokens.push(("Bearer alone".into(), b"Bearer ".to_vec()));
    let mut non_utf8 = format!("Bearer {good}").into_bytes();
    non_utf8.push(0xff);
    tokens.push(("valid token + a non-UTF-8 byte".into(), non_utf8));
    tokens.push((
        "non-UTF-8 token".into(),
        [
            b"Bearer ".as_slice(),
            &[0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1],
        ]
        .concat(),
    ));

    let purchase = app.url(&format!("/api/sales/{sku}/purchase"));
    for (what, value) in &tokens {
        let hv = HeaderValue::from_bytes(value).expect("header value");
        for (method, url) in [
            ("POST", purchase.clone()),
            ("GET", app.url("/api/me/orders")),
        ] {
            let r = app
                .http
                .request(method.parse().expect("method"), &url)
                .header("authorization", hv.clone())
                .header("content-type", "application/json")
                .body(r#"{"qty":1}"#)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let body = r.bytes().await.expect("body");
            assert_eq!(status, 401, "{what} on {method} {url}");
            assert_eq!(
                contract_error(status, &body, what),
                "unauthorized",
                "{what}"
            );
        }
        // The same value as the cookie.
        let mut cookie = b"fs_token=".to_vec();
        cookie.extend(value.strip_prefix(b"Bearer ").unwrap_or(value));
        let r = app
            .http
            .post(&purchase)
            .header(
                "cookie",
                HeaderValue::from_bytes(&cookie).expect("cookie value"),
            )
            .body(r#"{"qty":1}"#)
            .send()
            .await
            .expect("send");
        let ok_as_cookie = what == "no scheme";
        if !ok_as_cookie {
            assert_eq!(r.status().as_u16(), 401, "{what} as the cookie");
        }
    }
    // Exactly one of them was a working token (the bare one, as a cookie).
    let after = app.audit(&sku).await;
    assert_eq!(after["sold"], before["sold"].as_i64().unwrap_or(0) + 1);
    assert_eq!(after["orders"], 1);
    assert_eq!(after["consistent"], true);

    // `:` `.` `-` `_` are allowed in a user id, and the leeway is bounded
    // on the accepting side too: a token a second past its exp still works.
    let ok = signed(
        Algorithm::HS256,
        &json!({"sub": "a:b.c-d_E9", "exp": now_s() - 1}),
        key,
    );
    let (s, b) = app
        .purchase_raw(&ok, &sku, r#"{"qty":1}"#.into(), None)
        .await;
    assert_eq!(s, 202, "{b}");
    // A huge Authorization header is refused before any handler: hyper's
    // head limit (431) or our own 401, never a 5xx.
    let huge = format!("Bearer {}", "a".repeat(64 * 1024));
    let r = app
        .http
        .post(&purchase)
        .header("authorization", huge)
        .body(r#"{"qty":1}"#)
        .send()
        .await;
    if let Ok(r) = r {
        assert!(matches!(r.status().as_u16(), 401 | 431), "{}", r.status());
    }
    let last = app.audit(&sku).await;
    assert_eq!(last["orders"], 2, "{last}");
}

// ---------------------------------------------------------------------------
// 3. Overload: fast 503s, not a queue.
// ---------------------------------------------------------------------------

/// A purchase whose body is sent in part: it holds a slot of the
/// concurrency limit while the handler waits for the rest.
async fn half_sent_purchase(addr: SocketAddr, sku: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/sales/{sku}/purchase HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{{\"qty\""
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

async fn read_status(s: &mut TcpStream) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn p99(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() * 99).div_ceil(100).saturating_sub(1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_fast_503s() {
    const SLOTS: usize = 8;
    let app = TestApp::spawn(
        shared_group(),
        AppOptions {
            max_in_flight: SLOTS,
            ..AppOptions::default()
        },
    )
    .await;
    let sku = unique("ovl");
    app.create_sale(&sku, 10_000, 1, -5, 3600).await;
    let addr: SocketAddr = app
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");

    // Hold every slot with purchases whose bodies have not arrived yet. A
    // holder that arrives while a probe holds a slot is shed itself: it is
    // replaced until the probe finds every slot taken.
    let mut held = Vec::new();
    for i in 0..SLOTS {
        held.push(half_sent_purchase(addr, &sku, &app.token(&format!("holder{i}"))).await);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut spares = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for h in &mut held {
            let mut buf = [0u8; 64];
            if !matches!(h.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                spares += 1;
                let token = app.token(&format!("spare{spares}"));
                *h = half_sent_purchase(addr, &sku, &token).await;
            }
        }
        let r = app
            .http
            .get(app.url("/api/products"))
            .send()
            .await
            .expect("get");
        if r.status().as_u16() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slots never filled ({spares} holders replaced)"
        );
    }
    // Liveness and metrics stay outside the limit.
    for path in ["/healthz", "/metrics"] {
        let (s, _) = app.get(path, None).await;
        assert_eq!(s, 200, "{path} while every slot is taken");
    }

    // 400 concurrent requests past the limit: each is a fast JSON 503.
    let burst = join_all((0..400).map(|i| {
        let app = &app;
        let sku = &sku;
        async move {
            let started = Instant::now();
            let r = if i % 2 == 0 {
                app.http
                    .post(app.url(&format!("/api/sales/{sku}/purchase")))
                    .bearer_auth(app.token(&format!("burst{i}")))
                    .json(&json!({"qty": 1}))
                    .send()
                    .await
            } else {
                app.http.get(app.url("/api/products")).send().await
            };
            let r = r.expect("burst request");
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let body = r.bytes().await.expect("body");
            (status, retry_after, body, started.elapsed())
        }
    }))
    .await;
    let mut shed = Vec::new();
    for (status, retry_after, body, took) in &burst {
        assert_eq!(*status, 503, "{}", String::from_utf8_lossy(body));
        assert!(retry_after, "503 with Retry-After");
        assert_eq!(contract_error(*status, body, "shed"), "unavailable");
        shed.push(*took);
    }
    let p = p99(shed);
    eprintln!("overload: {} shed, p99 {:?}", burst.len(), p);
    assert!(p < Duration::from_secs(2), "p99 of shed requests {p:?}");

    // The held purchases complete normally once their bodies arrive.
    for s in &mut held {
        s.write_all(b":1}").await.expect("finish body");
    }
    for s in &mut held {
        assert_eq!(read_status(s).await, Some(202));
    }
    let a = app.audit(&sku).await;
    assert_eq!(a["orders"], SLOTS as i64, "{a}");

    // Without holders, a storm of real purchases: every answer is a 202 or
    // a fast 503, and exactly the 202s are orders.
    let storm = join_all((0..400).map(|i| {
        let app = &app;
        let sku = &sku;
        async move { app.purchase(&format!("storm{i}"), sku, 1, None).await }
    }))
    .await;
    let accepted = storm.iter().filter(|(s, _)| *s == 202).count();
    for (s, b) in &storm {
        assert!(matches!(s, 202 | 503), "{s} {b}");
        if *s == 503 {
            assert_eq!(b["error"], "unavailable");
        }
    }
    let a = app.audit(&sku).await;
    assert_eq!(a["orders"], (SLOTS + accepted) as i64, "{a}");
    assert_eq!(a["consistent"], true);
    eprintln!("overload: storm of 400 on {SLOTS} slots: {accepted} accepted");
    let (s, _) = app.get("/healthz", None).await;
    assert_eq!(s, 200);
}

// ---------------------------------------------------------------------------
// 4. Slowloris.
// ---------------------------------------------------------------------------

struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

async fn serve_with(limits: ConnLimits) -> Served {
    let prefix = unique("slow");
    let settings = ServeSettings {
        redis: redis_settings(shared_group(), &prefix, &AppOptions::default()),
        listen: "127.0.0.1:0".parse().expect("addr"),
        jwt: flashsale::config::JwtSettings::hs256(Secret::new(JWT_SECRET)),
        cors_origins: Vec::new(),
        payment_window: std::time::Duration::ZERO,
        payment_token: None,
        admin_token: None,
        rate_limit_per_shopper: 0,
        rate_limit_per_ip: 0,
        max_in_flight: 64,
        max_connections: 10_000,
        max_connections_per_ip: 256,
        trusted_proxies: Default::default(),
        static_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/static").to_owned(),
        catalog_cache: Duration::from_millis(100),
        ended_listed: Duration::from_secs(3600),
        dev_login: false,
        cookie_secure: false,
        log_format: Default::default(),
        access_log: false,
    };
    let app = Application::build(settings)
        .await
        .expect("app")
        .with_conn_limits(limits);
    let addr = app.addr();
    let (tx, task) = serve_in_background(app);
    Served {
        addr,
        stop: Some(tx),
        task,
    }
}

/// A connection from `local` (any 127.0.0.0/8 address) to `to`.
async fn connect_from(local: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{local}:0").parse().expect("local addr"))?;
    s.connect(to).await
}

/// A slowloris connection from `local`: starts a request head, then
/// trickles one header byte every 100 ms and never ends it. Returns how long
/// after connecting the server closed it (None: still open after `wait`).
async fn slow_client(local: &'static str, to: SocketAddr, wait: Duration) -> Option<Duration> {
    let mut s = connect_from(local, to).await.expect("connect");
    let opened = Instant::now();
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await;
    let mut buf = [0u8; 1024];
    while opened.elapsed() < wait {
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            // An answer (the 503 of a refused connection): the close follows.
            Ok(Ok(_)) => {}
            Err(_) => {
                if s.write_all(b"x").await.is_err() {
                    return Some(opened.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_holds_only_its_share_and_is_cut_off() {
    const PER_IP: usize = 8;
    const SLOW: usize = 40;
    let timeout = Duration::from_millis(1500);
    let idle = Duration::from_secs(3);
    let served = serve_with(ConnLimits {
        header_read_timeout: timeout,
        idle_timeout: idle,
        max_connections: 256,
        max_connections_per_ip: PER_IP,
        trusted: flashsale::web::proxies::TrustedProxies::none(),
        ..ConnLimits::default()
    })
    .await;
    let addr = served.addr;
    let wait = timeout + Duration::from_secs(5);

    // SLOW connections from 127.0.0.2 that never finish their head.
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slow_client("127.0.0.2", addr, wait)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another client is served promptly meanwhile.
    let http = reqwest::Client::builder()
        .local_address(Some("127.0.0.1".parse().expect("ip")))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let t = Instant::now();
    let r = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("a normal request during the attack");
    assert_eq!(r.status().as_u16(), 200);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "normal request took {took:?}"
    );

    // Beyond its share the attacker's connections are closed at once; the
    // share it holds is closed by the header-read timeout, trickle or not.
    let mut closes = Vec::new();
    for h in slow {
        closes.push(h.await.expect("slow client"));
    }
    assert!(
        closes.iter().all(Option::is_some),
        "every slow connection is closed: {closes:?}"
    );
    let closes: Vec<Duration> = closes.into_iter().flatten().collect();
    let held = closes.iter().filter(|d| **d >= timeout / 2).count();
    eprintln!("slowloris: {SLOW} slow connections, {held} held until the timeout: {closes:?}");
    assert!(held <= PER_IP, "at most {PER_IP} held: {closes:?}");
    assert!(held > 0, "the share is served, not refused: {closes:?}");
    for d in &closes {
        assert!(*d < timeout + Duration::from_secs(3), "{closes:?}");
    }

    // Its share is free again: the same address gets a normal answer.
    let mut s = connect_from("127.0.0.2", addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_status(&mut s).await, Some(200));

    // Between requests a keep-alive connection may idle longer than a head
    // may take (a proxy's pooled connections), and is closed after the idle
    // timeout.
    let mut ka = connect_from("127.0.0.4", addr).await.expect("connect");
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    ka.write_all(req).await.expect("write");
    assert_eq!(read_status(&mut ka).await, Some(200));
    tokio::time::sleep(timeout + timeout / 2).await;
    ka.write_all(req).await.expect("write after idling");
    assert_eq!(
        read_status(&mut ka).await,
        Some(200),
        "idle is not a slow head"
    );
    let idle_from = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(idle + Duration::from_secs(5), ka.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "idle keep-alive is closed: {r:?}"
    );
    assert!(idle_from.elapsed() >= idle - Duration::from_millis(200));

    // An idle connection that never sends a byte is closed too.
    let mut idle = connect_from("127.0.0.3", addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(wait, idle.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(_)) | Ok(Err(_))),
        "an idle connection is closed"
    );
}

// ---------------------------------------------------------------------------
// 5. Secrets.
// ---------------------------------------------------------------------------

const SECRETS: [(&str, &str); 5] = [
    ("FLASHSALE_JWT_SECRET", "jwt-SECRET-never-shown-4f1c9a"),
    (
        "FLASHSALE_REDIS_PASSWORD",
        "redis-PASSWORD-never-shown-77d2",
    ),
    (
        "FLASHSALE_SENTINEL_PASSWORD",
        "sentinel-PASSWORD-never-shown-e3",
    ),
    ("FLASHSALE_ADMIN_TOKEN", "admin-TOKEN-never-shown-0b5a"),
    (
        "FLASHSALE_REDIS_URL",
        "redis://:url-PASSWORD-never-shown@h:1",
    ),
];

/// The secrets (their longest part, for the URL) found in `text`.
fn leaks(text: &str) -> Vec<&'static str> {
    SECRETS
        .iter()
        .filter_map(|(_, v)| v.split(['@', ':']).max_by_key(|p| p.len()))
        .filter(|core| text.contains(core))
        .collect()
}

/// Runs a binary with only the given environment (and PATH), for at most
/// `limit` (then it is killed); returns its exit code and stdout + stderr.
async fn run_bin(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let read_out = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v).await;
        v
    });
    let read_err = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v).await;
        v
    });
    let code = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.expect("wait").code(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&read_out.await.expect("stdout")),
        String::from_utf8_lossy(&read_err.await.expect("stderr"))
    );
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_startup_errors_never_show_secrets() {
    let server = env!("CARGO_BIN_EXE_flashsale");
    let worker = env!("CARGO_BIN_EXE_flashsale-worker");
    let all: Vec<(&str, &str)> = SECRETS.to_vec();
    let without_url: Vec<(&str, &str)> = SECRETS
        .iter()
        .copied()
        .filter(|(k, _)| *k != "FLASHSALE_REDIS_URL")
        .collect();

    for (bin, args) in [
        (server, vec!["--help"]),
        (server, vec!["serve", "--help"]),
        (server, vec!["serve", "-h"]),
        (server, vec!["token", "--help"]),
        (server, vec!["audit", "--help"]),
        (server, vec!["render", "--help"]),
        (server, vec!["dead-letters", "--help"]),
        (worker, vec!["--help"]),
        (worker, vec!["-h"]),
    ] {
        let (code, text) = run_bin(bin, &args, &all, Duration::from_secs(20)).await;
        assert_eq!(code, Some(0), "{args:?}: {text}");
        if args.len() > 1 || bin == worker {
            assert!(text.contains("FLASHSALE_"), "{args:?} lists the variables");
        }
        assert!(
            leaks(&text).is_empty(),
            "{bin} {args:?} shows {:?}",
            leaks(&text)
        );
    }

    // Start-up errors with the secrets set: contradictory settings, a short
    // JWT secret, nothing listening, the wrong password on a real group.
    let group = shared_group();
    let sentinels = (0..3)
        .map(|i| format!("127.0.0.1:{}", group.sentinel_port(i)))
        .collect::<Vec<_>>()
        .join(",");
    let quick = [
        ("FLASHSALE_FAILOVER_WAIT_MS", "300"),
        ("FLASHSALE_REDIS_TIMEOUT_MS", "300"),
        ("FLASHSALE_LISTEN", "127.0.0.1:0"),
    ];
    let scenarios: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("sentinels and url", {
            let mut e = all.clone();
            e.push(("FLASHSALE_REDIS_SENTINELS", "127.0.0.1:1"));
            e
        }),
        ("short jwt secret", {
            let mut e: Vec<_> = without_url
                .iter()
                .copied()
                .filter(|(k, _)| *k != "FLASHSALE_JWT_SECRET")
                .collect();
            e.push(("FLASHSALE_JWT_SECRET", "short-7"));
            e.push(("FLASHSALE_REDIS_SENTINELS", "127.0.0.1:1"));
            e
        }),
        ("nothing listening", {
            let mut e = without_url.clone();
            e.push(("FLASHSALE_REDIS_SENTINELS", "127.0.0.1:1"));
            e.extend(quick);
            e
        }),
        ("url to nothing", {
            let mut e: Vec<_> = all
                .iter()
                .copied()
                .filter(|(k, _)| *k != "FLASHSALE_REDIS_URL")
                .collect();
            e.push((
                "FLASHSALE_REDIS_URL",
                "redis://:url-PASSWORD-never-shown@127.0.0.1:1",
            ));
            e.extend(quick);
            e
        }),
        ("wrong password on a real group", {
            let mut e: Vec<_> = without_url
                .iter()
                .copied()
                .filter(|(k, _)| *k != "FLASHSALE_SENTINEL_PASSWORD")
                .collect();
            e.push(("FLASHSALE_REDIS_SENTINELS", sentinels.as_str()));
            e.push(("FLASHSALE_REDIS_MASTER_NAME", group.master_name()));
            e.extend(quick);
            e
        }),
    ];
    // The scenarios run at once: each waits a few seconds for a master.
    let runs = join_all(scenarios.iter().map(|(what, env)| async move {
        let t = Instant::now();
        let serve = run_bin(server, &["serve"], env, Duration::from_secs(20)).await;
        let took = t.elapsed();
        // The worker may keep retrying; what it printed meanwhile counts.
        let (_, worker_text) = run_bin(worker, &[], env, Duration::from_secs(3)).await;
        (what, serve, took, worker_text)
    }))
    .await;
    for (what, (code, text), took, worker_text) in runs {
        if std::env::var_os("HOSTILE_DEBUG").is_some() {
            eprintln!("serve, {what}: {code:?} after {took:?}: {text}\nworker: {worker_text}");
        }
        assert_ne!(code, Some(0), "{what}: serve must not start: {text}");
        assert!(
            text.lines().any(|l| l.starts_with("flashsale: ")),
            "{what}: serve says why in one line: {text}"
        );
        assert!(
            leaks(&text).is_empty(),
            "serve, {what}: {:?} in {text}",
            leaks(&text)
        );
        assert!(!text.contains("short-7"), "{what}: {text}");
        assert!(
            leaks(&worker_text).is_empty(),
            "worker, {what}: {:?} in {worker_text}",
            leaks(&worker_text)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_error_bodies_hold_no_secret() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let sku = unique("sec");
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let group = shared_group();
    let secrets = [JWT_SECRET, ADMIN_TOKEN, group.password()];
    let mut seen = String::new();
    let requests = vec![
        app.http
            .post(app.url(&format!("/api/sales/{sku}/purchase")))
            .bearer_auth("garbage"),
        app.http
            .post(app.url(&format!("/api/sales/{sku}/purchase")))
            .bearer_auth(app.token("sec-user"))
            .body("not json"),
        app.http
            .post(app.url(&format!("/api/sales/{sku}/purchase")))
            .bearer_auth(app.token("sec-user"))
            .body(r#"{"qty":0}"#),
        app.http
            .post(app.url("/admin/sales"))
            .bearer_auth("wrong-admin")
            .body("{}"),
        app.http
            .post(app.url("/admin/sales"))
            .bearer_auth(ADMIN_TOKEN)
            .body(r#"{"sku":"x"}"#),
        app.http.get(app.url("/api/orders/x.y")).bearer_auth("x"),
        app.http.get(app.url("/api/products/%ff")),
        app.http.delete(app.url("/api/products")),
        app.http.post(app.url("/static/app.js")),
        app.http.get(app.url("/static/nope.js")),
        // A NUL byte no file name can hold: 404, not the file service's 500.
        app.http.get(app.url("/static/%00")),
        app.http.get(app.url("/readyz")),
        app.http.post(app.url("/dev/login")).body("user=%7B%7D"),
    ];
    // The same as HEAD (no body to look at: the status says it).
    for path in ["/static/%00", "/static/a%00.js"] {
        let r = app.http.head(app.url(path)).send().await.expect("send");
        assert_eq!(r.status(), 404, "HEAD {path}");
    }
    for req in requests {
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        for (k, v) in r.headers() {
            seen.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        let body = r.bytes().await.expect("body");
        if status >= 400 {
            contract_error(status, &body, "secret probe");
        }
        seen.push_str(&String::from_utf8_lossy(&body));
    }
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("flashsale_http_requests_total"));
    seen.push_str(&metrics);
    for s in secrets {
        assert!(!seen.contains(s), "a secret is in a response");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_78_with_one_line_naming_the_variable() {
    let server = env!("CARGO_BIN_EXE_flashsale");
    let worker = env!("CARGO_BIN_EXE_flashsale-worker");
    let url = ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1");
    let secret = ("FLASHSALE_JWT_SECRET", "0123456789abcdef0123");
    // (binary, arguments, environment, the variable the error must name)
    type Case<'a> = (&'a str, &'a [&'a str], Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "serve",
            &["serve"],
            vec![url, secret, ("FLASHSALE_REDIS_SENTINELS", "127.0.0.1:1")],
            "FLASHSALE_REDIS_SENTINELS",
        ),
        (
            "serve",
            &["serve"],
            vec![
                secret,
                ("FLASHSALE_REDIS_SENTINELS", "127.0.0.1:1"),
                ("FLASHSALE_REDIS_CLUSTER", "127.0.0.1:2"),
            ],
            "FLASHSALE_REDIS_SENTINELS",
        ),
        (
            "worker",
            &[],
            vec![url, ("FLASHSALE_REDIS_CLUSTER", "127.0.0.1:2")],
            "FLASHSALE_REDIS_CLUSTER",
        ),
        (
            "serve",
            &["serve"],
            vec![secret, ("FLASHSALE_REDIS_CLUSTER", "127.0.0.1:nope")],
            "FLASHSALE_REDIS_CLUSTER",
        ),
        ("serve", &["serve"], vec![url], "FLASHSALE_JWT_SECRET"),
        (
            "serve",
            &["serve"],
            vec![url, secret, ("FLASHSALE_FAILOVER_WAIT_MS", "999999")],
            "FLASHSALE_FAILOVER_WAIT_MS",
        ),
        (
            "audit",
            &["audit"],
            vec![("FLASHSALE_REPLICA_ACKS", "some"), url],
            "FLASHSALE_REPLICA_ACKS",
        ),
        (
            "worker",
            &[],
            vec![url, ("FLASHSALE_WORKER_BATCH", "0")],
            "FLASHSALE_WORKER_BATCH",
        ),
        (
            "worker",
            &[],
            vec![url, ("FLASHSALE_WORKER_METRICS", "nowhere")],
            "FLASHSALE_WORKER_METRICS",
        ),
    ];
    for (what, args, env, var) in cases {
        let bin = if what == "worker" { worker } else { server };
        assert_config_error(bin, args, &env, var).await;
    }
    // Redis that cannot be reached is not a configuration error.
    let (code, text) = run_bin(
        worker,
        &[],
        &[
            url,
            ("FLASHSALE_FAILOVER_WAIT_MS", "300"),
            ("FLASHSALE_REDIS_TIMEOUT_MS", "300"),
        ],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(code, Some(1), "{text}");
}
