//! Shoppers' identity from the shop's own login and identity providers:
//! tokens with more claims than `sub` and `exp`, `iss`/`aud` checks when
//! configured, RS256 with a PEM public key, ES256/RS256 with a JWKS file
//! replaced at runtime, the refusals (alg confusion, `alg: none`, unknown
//! `kid`, expiry), and CORS for the shop's front ends on other origins (also
//! a real cross-origin purchase in headless Chromium, `--dump-dom`) —
//! against in-process apps on the shared Sentinel group.
//!
//! Keys are generated here with `openssl` (Debian's `openssl` package); a
//! missing `openssl` fails the tests, it does not skip them; so does a
//! missing Chromium (Debian's `chromium`) for the browser check.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use flashsale::config::{JwtKeys, JwtSettings, Secret};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::app::{
    AppOptions, JWT_SECRET, TestApp, assert_config_error, serve_settings, shared_group, temp_dir,
    unique,
};
use crate::support::chromium::chromium_dom;

const ISSUER: &str = "https://login.shop.example";
const AUDIENCE: &str = "flashsale";

// ---------------------------------------------------------------- helpers --

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A new empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        TempDir(temp_dir(tag))
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `openssl` with `args`; a missing openssl fails the test.
fn openssl(args: &[&str], dir: &Path) {
    let out = StdCommand::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed to make test keys ({e}); install it: apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair made by openssl: the private key to sign with, the public
/// key (PEM) to verify with.
struct KeyPair {
    signing: EncodingKey,
    alg: Algorithm,
    public_pem: Vec<u8>,
}

impl KeyPair {
    fn rsa(dir: &TempDir, name: &str) -> KeyPair {
        let private = format!("{name}.pem");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &private,
            ],
            &dir.0,
        );
        Self::finish(dir, name, Algorithm::RS256)
    }

    fn p256(dir: &TempDir, name: &str) -> KeyPair {
        let private = format!("{name}.pem");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &private,
            ],
            &dir.0,
        );
        Self::finish(dir, name, Algorithm::ES256)
    }

    fn finish(dir: &TempDir, name: &str, alg: Algorithm) -> KeyPair {
        let (private, public) = (format!("{name}.pem"), format!("{name}.pub.pem"));
        openssl(
            &["pkey", "-in", &private, "-pubout", "-out", &public],
            &dir.0,
        );
        let pem = std::fs::read(dir.join(&private)).expect("private key");
        let signing = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("signing key");
        KeyPair {
            signing,
            alg,
            public_pem: std::fs::read(dir.join(&public)).expect("public key"),
        }
    }

    /// The public key as a JWK with `kid`.
    fn jwk(&self, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.signing, self.alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.signing).expect("sign")
    }
}

/// Writes a JWKS with `keys` to `path` the way an operator should: a new
/// file renamed over the old one.
fn write_jwks(path: &Path, keys: Vec<Jwk>) {
    write_atomically(
        path,
        serde_json::to_string_pretty(&JwkSet { keys }).expect("jwks"),
    );
}

fn write_atomically(path: &Path, text: String) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The claims a shop's login puts in a token: more than `sub` and `exp`.
fn shop_claims(user: &str) -> Value {
    let t = now();
    json!({
        "sub": user, "exp": t + 600, "iat": t, "nbf": t - 1,
        "iss": ISSUER, "aud": AUDIENCE, "jti": uuid::Uuid::new_v4().to_string(),
        "email": format!("{user}@shop.example"), "roles": ["shopper"], "auth_time": t as f64 + 0.25,
    })
}

/// `claims` with `edit` applied (a null value removes the claim).
fn with(mut claims: Value, edit: Value) -> Value {
    for (k, v) in edit.as_object().expect("object") {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn hs256(claims: &Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign")
}

/// An unsigned token (`alg: none`).
fn unsigned(claims: &Value, kid: Option<&str>) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let mut header = json!({"alg": "none", "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    format!("{}.{}.", b64(&header), b64(claims))
}

/// An app on the shared group verifying tokens with `jwt`, allowing
/// `cors` origins, with an open sale (returned) of plenty of stock.
async fn app_with(jwt: JwtSettings, cors: &[&str]) -> (TestApp, String) {
    let group = shared_group();
    let prefix = unique("id");
    let mut settings = serve_settings(group, &prefix, &AppOptions::default());
    settings.jwt = jwt;
    settings.cors_origins = cors.iter().map(|s| (*s).to_owned()).collect();
    settings.dev_login = false;
    let app = TestApp::spawn_settings(&prefix, settings).await;
    let sku = unique("idsku");
    app.create_sale(&sku, 1000, 1, -5, 3600).await;
    (app, sku)
}

/// The status of a purchase made with `token`.
async fn buy(app: &TestApp, sku: &str, token: &str) -> u16 {
    let (status, body) = app
        .purchase_raw(token, sku, json!({"qty": 1}).to_string(), None)
        .await;
    if status == 401 {
        assert_eq!(body["error"], "unauthorized", "{body}");
    }
    status
}

// ------------------------------------------------------------------ tests --

/// The shop's own tokens (with `iat`, `nbf`, `iss`, `aud`, `jti` and claims
/// of its own) buy when nothing is configured to be checked; `aud` as an
/// array too. Expired, not yet valid and forged ones are still 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_tokens_with_more_claims_buy_when_nothing_is_checked() {
    let (app, sku) = app_with(JwtSettings::hs256(Secret::new(JWT_SECRET)), &[]).await;
    let key = JWT_SECRET.as_bytes();
    let t = now();
    assert_eq!(
        buy(&app, &sku, &hs256(&shop_claims("shop1"), key, None)).await,
        202
    );
    let array_aud = with(shop_claims("shop2"), json!({"aud": ["other", "more"]}));
    assert_eq!(buy(&app, &sku, &hs256(&array_aud, key, None)).await, 202);
    let odd_iss = with(
        shop_claims("shop3"),
        json!({"iss": "someone", "iat": t as f64 + 0.5}),
    );
    assert_eq!(
        buy(&app, &sku, &hs256(&odd_iss, key, Some("any-kid"))).await,
        202
    );
    // `flashsale token` tokens (sub, exp, iat) still work.
    assert_eq!(buy(&app, &sku, &app.token("shop4")).await, 202);

    for (what, claims) in [
        ("expired", with(shop_claims("x1"), json!({"exp": t - 60}))),
        (
            "not valid yet",
            with(shop_claims("x2"), json!({"nbf": t + 120})),
        ),
        ("no exp", with(shop_claims("x3"), json!({"exp": null}))),
        ("no sub", with(shop_claims("x4"), json!({"sub": null}))),
        ("bad sub", with(shop_claims("x5"), json!({"sub": "a b"}))),
    ] {
        assert_eq!(
            buy(&app, &sku, &hs256(&claims, key, None)).await,
            401,
            "{what}"
        );
    }
    let forged = hs256(&shop_claims("x6"), b"another-secret-0123456789", None);
    assert_eq!(buy(&app, &sku, &forged).await, 401, "forged");
    assert_eq!(
        buy(&app, &sku, &unsigned(&shop_claims("x7"), None)).await,
        401,
        "alg none"
    );
}

/// With `FLASHSALE_JWT_ISSUER` and `_AUDIENCE` set, `iss` and `aud` must be
/// there and match (`aud` as a string or an array that lists it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let jwt = JwtSettings {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        ..JwtSettings::hs256(Secret::new(JWT_SECRET))
    };
    let (app, sku) = app_with(jwt, &[]).await;
    let key = JWT_SECRET.as_bytes();
    assert_eq!(
        buy(&app, &sku, &hs256(&shop_claims("ia1"), key, None)).await,
        202
    );
    let listed = with(shop_claims("ia2"), json!({"aud": ["shop-web", AUDIENCE]}));
    assert_eq!(buy(&app, &sku, &hs256(&listed, key, None)).await, 202);
    for (what, edit) in [
        ("wrong iss", json!({"iss": "https://evil.example"})),
        ("wrong aud", json!({"aud": "shop-web"})),
        (
            "aud array without us",
            json!({"aud": ["shop-web", "admin"]}),
        ),
        ("no iss", json!({"iss": null})),
        ("no aud", json!({"aud": null})),
    ] {
        let claims = with(shop_claims("ia3"), edit);
        assert_eq!(
            buy(&app, &sku, &hs256(&claims, key, None)).await,
            401,
            "{what}"
        );
    }
    // A minted token has neither: refused here.
    assert_eq!(buy(&app, &sku, &app.token("ia4")).await, 401, "no iss/aud");
}

/// RS256 with a PEM public key file: the provider's tokens buy; HS256
/// signed with the public key's bytes (alg confusion), `alg: none`, ES256,
/// another key's signature and an expired token are 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_with_a_pem_public_key() {
    let dir = TempDir::new("pem");
    let provider = KeyPair::rsa(&dir, "provider");
    let other = KeyPair::rsa(&dir, "other");
    let ec = KeyPair::p256(&dir, "ec");
    let jwt = JwtSettings {
        keys: JwtKeys::PublicKeyFile(dir.join("provider.pub.pem")),
        issuer: None,
        audience: None,
    };
    let (app, sku) = app_with(jwt, &[]).await;
    assert_eq!(
        buy(&app, &sku, &provider.sign(None, &shop_claims("rs1"))).await,
        202
    );
    assert_eq!(
        buy(
            &app,
            &sku,
            &provider.sign(Some("whatever"), &shop_claims("rs2"))
        )
        .await,
        202,
        "kid is not looked at with one key"
    );
    let confused = hs256(&shop_claims("rs3"), &provider.public_pem, None);
    assert_eq!(
        buy(&app, &sku, &confused).await,
        401,
        "HS256 with the public key as secret"
    );
    let der = provider_der(&dir);
    assert_eq!(
        buy(&app, &sku, &hs256(&shop_claims("rs3"), &der, None)).await,
        401,
        "HS256 with the public key's DER as secret"
    );
    assert_eq!(
        buy(&app, &sku, &unsigned(&shop_claims("rs4"), None)).await,
        401,
        "none"
    );
    assert_eq!(
        buy(&app, &sku, &other.sign(None, &shop_claims("rs5"))).await,
        401,
        "other key"
    );
    assert_eq!(
        buy(&app, &sku, &ec.sign(None, &shop_claims("rs6"))).await,
        401,
        "ES256"
    );
    assert_eq!(
        buy(&app, &sku, &app.token("rs7")).await,
        401,
        "HS256 with the test secret"
    );
    let expired = with(shop_claims("rs8"), json!({"exp": now() - 60}));
    assert_eq!(
        buy(&app, &sku, &provider.sign(None, &expired)).await,
        401,
        "expired"
    );
}

fn provider_der(dir: &TempDir) -> Vec<u8> {
    openssl(
        &[
            "pkey",
            "-pubin",
            "-in",
            "provider.pub.pem",
            "-outform",
            "DER",
            "-out",
            "provider.der",
        ],
        &dir.0,
    );
    std::fs::read(dir.join("provider.der")).expect("der")
}

/// ES256 (and RS256) with a JWKS file chosen by `kid`: unknown and missing
/// `kid`, `alg: none` and alg confusion are 401. A broken file written
/// over it keeps the keys in use; the file replaced by a rotated set is
/// picked up within ~2 s: the new `kid` buys, the old one (even a token
/// that verified before) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_with_a_jwks_file_that_rotates() {
    let dir = TempDir::new("jwks");
    let k1 = KeyPair::p256(&dir, "k1");
    let k2 = KeyPair::p256(&dir, "k2");
    let r1 = KeyPair::rsa(&dir, "r1");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, vec![k1.jwk("k1"), r1.jwk("r1")]);
    let jwt = JwtSettings {
        keys: JwtKeys::JwksFile(jwks.clone()),
        issuer: Some(ISSUER.to_owned()),
        audience: None,
    };
    let (app, sku) = app_with(jwt, &[]).await;

    let old = k1.sign(Some("k1"), &shop_claims("jw1"));
    assert_eq!(buy(&app, &sku, &old).await, 202, "ES256, kid k1");
    assert_eq!(
        buy(&app, &sku, &r1.sign(Some("r1"), &shop_claims("jw2"))).await,
        202,
        "RS256, kid r1"
    );
    let refused = [
        ("unknown kid", k1.sign(Some("k9"), &shop_claims("jw3"))),
        ("no kid", k1.sign(None, &shop_claims("jw3"))),
        (
            "kid of another key",
            k1.sign(Some("r1"), &shop_claims("jw3")),
        ),
        (
            "not yet published",
            k2.sign(Some("k2"), &shop_claims("jw3")),
        ),
        ("alg none", unsigned(&shop_claims("jw3"), Some("k1"))),
        (
            "HS256 with k1's public key as secret",
            hs256(&shop_claims("jw3"), &k1.public_pem, Some("k1")),
        ),
        (
            "HS256 with the JWKS as secret",
            hs256(
                &shop_claims("jw3"),
                &std::fs::read(&jwks).expect("jwks"),
                Some("k1"),
            ),
        ),
        (
            "expired",
            k1.sign(
                Some("k1"),
                &with(shop_claims("jw3"), json!({"exp": now() - 60})),
            ),
        ),
        (
            "wrong iss",
            k1.sign(
                Some("k1"),
                &with(shop_claims("jw3"), json!({"iss": "https://evil.example"})),
            ),
        ),
    ];
    for (what, token) in &refused {
        assert_eq!(buy(&app, &sku, token).await, 401, "{what}");
    }

    // A broken file: the keys in use stay (a fresh k1 token still buys).
    write_atomically(&jwks, "{\"keys\": [ this is not json".to_owned());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        buy(&app, &sku, &k1.sign(Some("k1"), &shop_claims("jw4"))).await,
        202,
        "the last good keys are kept"
    );

    // Rotation: k2 replaces k1.
    write_jwks(&jwks, vec![k2.jwk("k2"), r1.jwk("r1")]);
    let rotated = Instant::now();
    let mut n = 0;
    let took = loop {
        n += 1;
        let status = buy(
            &app,
            &sku,
            &k2.sign(Some("k2"), &shop_claims(&format!("jw5n{n}"))),
        )
        .await;
        if status == 202 {
            break rotated.elapsed();
        }
        assert_eq!(status, 401);
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "k2 never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        took <= Duration::from_millis(2500),
        "k2 accepted after {took:?}"
    );
    // The old kid is refused now, also the token that verified (and was
    // cached) before; the unchanged r1 still works.
    assert_eq!(
        buy(&app, &sku, &old).await,
        401,
        "a cached k1 token after rotation"
    );
    assert_eq!(
        buy(&app, &sku, &k1.sign(Some("k1"), &shop_claims("jw6"))).await,
        401,
        "a new k1 token after rotation"
    );
    assert_eq!(
        buy(&app, &sku, &r1.sign(Some("r1"), &shop_claims("jw7"))).await,
        202
    );
}

/// CORS on /api for the configured origin: preflights get the allow
/// headers, a purchase with that `Origin` passes the cross-site guard and
/// carries the CORS headers; any other origin is refused (403
/// `cross_site`) and gets no allow headers; pages get no CORS headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only() {
    const SHOP: &str = "http://shop.test:3000";
    const EVIL: &str = "http://evil.test";
    let (app, sku) = app_with(JwtSettings::hs256(Secret::new(JWT_SECRET)), &[SHOP]).await;
    let path = format!("/api/sales/{sku}/purchase");
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url(&path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let r = preflight(SHOP).await.expect("preflight");
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], SHOP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    let methods = h["access-control-allow-methods"].to_str().expect("methods");
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .expect("headers")
        .to_ascii_lowercase();
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(headers.contains(name), "{headers}");
    }
    let r = preflight(EVIL).await.expect("preflight");
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let post = |origin: &'static str, user: &str| {
        app.http
            .post(app.url(&path))
            .header("origin", origin)
            .bearer_auth(app.token(user))
            .header("idempotency-key", format!("k-{user}"))
            .json(&json!({"qty": 1}))
            .send()
    };
    let r = post(SHOP, "cors1").await.expect("post");
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.headers()["access-control-allow-origin"], SHOP);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .expect("expose")
        .to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");
    let r = post(EVIL, "cors2").await.expect("post");
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "cross_site");
    // An error answer to the allowed origin is readable too.
    let r = app
        .http
        .post(app.url(&path))
        .header("origin", SHOP)
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], SHOP);

    // Reads of /api carry the header; pages do not (nor Vary: origin).
    let r = app
        .http
        .get(app.url("/api/products"))
        .header("origin", SHOP)
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["access-control-allow-origin"], SHOP);
    let r = app
        .http
        .get(app.url("/"))
        .header("origin", SHOP)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(
        r.headers()
            .get("vary")
            .is_none_or(|v| !v.to_str().unwrap_or("").contains("origin"))
    );

    // Without origins configured the same purchase is cross-site.
    let (plain, plain_sku) = app_with(JwtSettings::hs256(Secret::new(JWT_SECRET)), &[]).await;
    let r = plain
        .http
        .post(plain.url(&format!("/api/sales/{plain_sku}/purchase")))
        .header("origin", SHOP)
        .bearer_auth(plain.token("cors3"))
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
}

/// The new settings through the binary: a bad origin or key file is a
/// configuration error (exit 78, one line naming the variable), and
/// `serve --help` lists the variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_identity_settings_exit_78_naming_the_variable() {
    let bin = env!("CARGO_BIN_EXE_flashsale");
    let dir = TempDir::new("idcfg");
    let pem = dir.join("bad.pem");
    std::fs::write(&pem, "not a key").expect("write");
    let secret = ("FLASHSALE_JWT_SECRET", "jwt-SECRET-never-shown-4f1c9a");
    let url = ("FLASHSALE_REDIS_URL", "redis://127.0.0.1:1");
    let pem_path = pem.to_str().expect("path");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                url,
                secret,
                ("FLASHSALE_CORS_ORIGINS", "https://shop.example/app"),
            ],
            "FLASHSALE_CORS_ORIGINS",
        ),
        (
            vec![url, ("FLASHSALE_JWT_PUBLIC_KEY_FILE", pem_path)],
            "FLASHSALE_JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![url, ("FLASHSALE_JWT_JWKS_FILE", pem_path)],
            "FLASHSALE_JWT_JWKS_FILE",
        ),
        (
            vec![url, secret, ("FLASHSALE_JWT_JWKS_FILE", pem_path)],
            "FLASHSALE_JWT_JWKS_FILE",
        ),
    ];
    for (env, var) in cases {
        let text = assert_config_error(bin, &["serve"], &env, var).await;
        assert!(!text.contains(secret.1), "no secret: {text}");
    }
    let out = tokio::process::Command::new(bin)
        .args(["serve", "--help"])
        .env_clear()
        .env(secret.0, secret.1)
        .output()
        .await
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "FLASHSALE_JWT_PUBLIC_KEY_FILE",
        "FLASHSALE_JWT_JWKS_FILE",
        "FLASHSALE_JWT_ISSUER",
        "FLASHSALE_JWT_AUDIENCE",
        "FLASHSALE_CORS_ORIGINS",
    ] {
        assert!(help.contains(var), "--help lists {var}");
    }
    assert!(!help.contains(secret.1));
}

/// Serves `page` (HTML) for every request on 127.0.0.1, port 0; returns
/// the port. The task ends with the test's runtime.
async fn serve_page(page: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// A page that POSTs a purchase the way a shop's front end on another
/// origin would (bearer token, JSON, Idempotency-Key: a preflighted
/// request) to the API, sale, token and key of its query string, and writes
/// `RESULT <status> <status|error>` or `RESULT error <name>`.
const SHOP_PAGE: &str = r#"<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {
  const out = document.getElementById("out");
  const q = new URLSearchParams(location.search);
  try {
    const r = await fetch(q.get("api") + "/api/sales/" + q.get("sku") + "/purchase", {
      method: "POST",
      headers: {"Authorization": "Bearer " + q.get("token"), "Content-Type": "application/json",
                "Idempotency-Key": q.get("key")},
      body: JSON.stringify({qty: 1}),
    });
    const body = await r.json();
    out.textContent = "RESULT " + r.status + " " + (body.status || body.error);
  } catch (e) {
    out.textContent = "RESULT error " + e.name;
  }
})();
</script></body></html>"#;

/// A real cross-origin purchase in headless Chromium: a page on an allowed
/// origin buys (the browser's preflight passes, the answer is readable);
/// the same page on another origin is blocked by the browser and makes no
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_buys_cross_origin_from_an_allowed_origin_only() {
    // The pages' ports first: the allowed origin is a setting of the app.
    let allowed_port = serve_page(SHOP_PAGE.to_owned()).await;
    let other_port = serve_page(SHOP_PAGE.to_owned()).await;
    let group = shared_group();
    let prefix = unique("idb");
    let mut settings = serve_settings(group, &prefix, &AppOptions::default());
    settings.dev_login = false;
    settings.cors_origins = vec![format!("http://localhost:{allowed_port}")];
    let app = TestApp::spawn_settings(&prefix, settings).await;
    let sku = unique("idbsku");
    app.create_sale(&sku, 10, 1, -5, 3600).await;
    // The page on http://localhost:…, the API on http://127.0.0.1:…
    let page = |port: u16, user: &str| {
        format!(
            "http://localhost:{port}/?api={}&sku={sku}&token={}&key=k-{user}",
            app.base,
            app.token(user)
        )
    };

    let dom = chromium_dom(&page(allowed_port, "browser1"), &[]).await;
    assert!(dom.contains("RESULT 202 queued"), "allowed origin: {dom}");
    let dom = chromium_dom(&page(other_port, "browser2"), &[]).await;
    assert!(
        dom.contains("RESULT error TypeError"),
        "other origin: {dom}"
    );
    let (s, orders) = app.get("/api/me/orders", Some("browser2")).await;
    assert_eq!(s, 200);
    assert_eq!(
        orders["orders"].as_array().map(Vec::len),
        Some(0),
        "{orders}"
    );
    let (s, orders) = app.get("/api/me/orders", Some("browser1")).await;
    assert_eq!(s, 200);
    assert_eq!(
        orders["orders"].as_array().map(Vec::len),
        Some(1),
        "{orders}"
    );
}
