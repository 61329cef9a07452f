//! The settings of `flashsale serve`: listen address, how shopper tokens are
//! verified (exactly one key source: the HS256 secret, a PEM public key or a
//! JWKS file; optional `iss`/`aud` checks), the browser origins allowed to
//! call `/api`, the admin secret, rate limits, the proxies whose forwarded
//! client addresses are believed, connection and concurrency caps, page
//! assets, the log format and the access log.
//!
//! A key file is loaded once here, so a missing or unusable one is a
//! configuration error that names its variable; the key file paths are not
//! secret, the HS256 secret is.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, RedisArgs, RedisSettings, Secret, invalid, secret};
use crate::logs::LogFormat;
use crate::web::proxies::TrustedProxies;

/// Settings of `flashsale serve`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Exit codes: 0 stopped cleanly (SIGTERM/SIGINT, in-flight requests finished); 1 Redis out of reach at start-up, the address taken; 78 configuration error (one line naming the variable; the systemd unit does not restart on it)."
)]
pub struct ServeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Address to listen on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// HS256 key of shopper tokens.
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 key of shopper tokens.
    #[arg(long, env = "FLASHSALE_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<String>,
    /// PEM public key (RSA: RS256, EC P-256: ES256) that verifies shopper
    /// tokens instead of the HS256 secret.
    #[arg(long, env = "FLASHSALE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<String>,
    /// JWKS file whose RSA / EC P-256 keys verify shopper tokens, chosen by
    /// the token's `kid`; re-read when it changes.
    #[arg(long, env = "FLASHSALE_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<String>,
    /// When set, a shopper token's `iss` must be this (otherwise not checked).
    #[arg(long, env = "FLASHSALE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, a shopper token's `aud` must be (or list) this (otherwise not checked).
    #[arg(long, env = "FLASHSALE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Origins allowed to call /api from a browser, comma-separated
    /// (`https://shop.example,https://m.shop.example`); unset: same origin only.
    #[arg(long, env = "FLASHSALE_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Bearer token of the /admin API (the admin API is off when unset).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the bearer token of the /admin API.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<String>,
    /// Seconds an order may wait for its payment before it expires and its
    /// units return to the sale (0 = no payment step: `confirmed` is final;
    /// at most 604800). Needs FLASHSALE_PAYMENT_TOKEN.
    #[arg(long, env = "FLASHSALE_PAYMENT_WINDOW_S", default_value_t = 0)]
    pub payment_window_s: u64,
    /// Bearer secret of the payment provider's callback
    /// (POST /api/orders/{id}/payment; off, 404, when unset).
    #[arg(long, env = "FLASHSALE_PAYMENT_TOKEN", hide_env_values = true)]
    pub payment_token: Option<String>,
    /// File holding the payment provider's bearer secret.
    #[arg(long, env = "FLASHSALE_PAYMENT_TOKEN_FILE")]
    pub payment_token_file: Option<String>,
    /// Purchase attempts per second per shopper, shared by all instances (0 = off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_SHOPPER", default_value_t = 10)]
    pub rate_limit_per_shopper: u32,
    /// Requests per second per client address on /api (0 = off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_IP", default_value_t = 0)]
    pub rate_limit_per_ip: u32,
    /// Requests handled at once before new ones are shed with 503.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Connections open at once; beyond it new ones wait in the listen backlog.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Connections open at once from one client address (0 = no cap);
    /// peers in FLASHSALE_TRUSTED_PROXIES (the proxies in front) are exempt.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// The proxies in front: CIDRs, comma-separated (a bare address is one
    /// host; `none`: no peer). A peer in them is believed about the client
    /// it forwards for (X-Forwarded-For, read from the right; else
    /// X-Real-IP), which the per-address limits and logs then use, and is
    /// exempt from the per-address connection cap.
    #[arg(long, env = "FLASHSALE_TRUSTED_PROXIES", default_value = crate::web::proxies::DEFAULT)]
    pub trusted_proxies: String,
    /// Directory of the page assets (CSS, JS, images).
    #[arg(long, env = "FLASHSALE_STATIC_DIR", default_value = "static")]
    pub static_dir: String,
    /// How long catalog reads may be served from the in-process cache, in milliseconds.
    #[arg(long, env = "FLASHSALE_CATALOG_CACHE_MS", default_value_t = 200)]
    pub catalog_cache_ms: u64,
    /// Seconds an ended sale stays in the public listing (`GET /api/products`,
    /// the index page) after its end (0–31536000); its own page and
    /// `GET /api/products/{sku}` answer until it is purged.
    #[arg(long, env = "FLASHSALE_ENDED_LISTED_S", default_value_t = 3600)]
    pub ended_listed_s: u64,
    /// Adds /dev/login, a page that sets a shopper cookie for a typed-in name,
    /// and, with a payment window, POST /dev/pay/{order_id}, a development
    /// payment of the shopper's own order (development only).
    #[arg(long, env = "FLASHSALE_DEV_LOGIN", default_value_t = false)]
    pub dev_login: bool,
    /// Mark the shopper cookie `Secure` (turn off only for plain-http development).
    #[arg(long, env = "FLASHSALE_COOKIE_SECURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,
    /// Log lines as `text` or `json` (one JSON object per line).
    #[arg(long, env = "FLASHSALE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// One access line per request (method, route, status, duration,
    /// client, request id, shopper pseudonym), at info on target
    /// `flashsale::access`.
    #[arg(long, env = "FLASHSALE_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set)]
    pub access_log: bool,
}

/// Where the keys that verify shopper tokens come from.
#[derive(Clone, Debug)]
pub enum JwtKeys {
    /// HS256 with a shared secret.
    Secret(Secret),
    /// One PEM public key: RS256 (RSA) or ES256 (EC P-256), by its type.
    PublicKeyFile(PathBuf),
    /// The RSA and EC P-256 keys of a JWKS file, chosen by `kid`; the file is
    /// re-read when it changes.
    JwksFile(PathBuf),
}

/// How shopper tokens are verified.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub keys: JwtKeys,
    /// `iss` must equal this; `None`: not checked.
    pub issuer: Option<String>,
    /// `aud` must be or contain this; `None`: not checked.
    pub audience: Option<String>,
}

impl JwtSettings {
    /// HS256 with `secret`, no `iss` or `aud` check.
    pub fn hs256(secret: Secret) -> Self {
        Self {
            keys: JwtKeys::Secret(secret),
            issuer: None,
            audience: None,
        }
    }

    /// The HS256 secret, when tokens are HS256 (this service can mint them).
    pub fn secret(&self) -> Option<&Secret> {
        match &self.keys {
            JwtKeys::Secret(s) => Some(s),
            _ => None,
        }
    }
}

/// Validated settings of `flashsale serve`.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    pub redis: RedisSettings,
    pub listen: SocketAddr,
    pub jwt: JwtSettings,
    /// Browser origins allowed to call `/api` (normalized
    /// `scheme://host[:port]`, lowercase, no default port); empty: same
    /// origin only.
    pub cors_origins: Vec<String>,
    pub admin_token: Option<Secret>,
    /// How long an order may wait for its payment; zero: no payment step.
    pub payment_window: Duration,
    /// The payment provider's bearer secret (set exactly when a window is).
    pub payment_token: Option<Secret>,
    pub rate_limit_per_shopper: u32,
    pub rate_limit_per_ip: u32,
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers whose forwarded client address is believed, and which are
    /// exempt from the per-address connection cap.
    pub trusted_proxies: TrustedProxies,
    pub static_dir: String,
    pub catalog_cache: Duration,
    /// How long an ended sale stays in the public listing.
    pub ended_listed: Duration,
    pub dev_login: bool,
    pub cookie_secure: bool,
    /// How log lines are written (the binary sets up logging with it).
    pub log_format: LogFormat,
    /// Whether every request is logged at its end.
    pub access_log: bool,
}

impl ServeArgs {
    pub fn settings(&self) -> Result<ServeSettings, ConfigError> {
        let redis = self.redis.settings()?;
        if self.ended_listed_s > 31_536_000 {
            return Err(invalid(
                "FLASHSALE_ENDED_LISTED_S",
                "must be 0-31536000 seconds",
            ));
        }
        let listen = self.listen.parse().map_err(|_| {
            invalid(
                "FLASHSALE_LISTEN",
                format!("`{}` is not an address like 127.0.0.1:8080", self.listen),
            )
        })?;
        let jwt = self.jwt_settings()?;
        if self.dev_login && jwt.secret().is_none() {
            return Err(invalid(
                "FLASHSALE_DEV_LOGIN",
                "needs FLASHSALE_JWT_SECRET (it signs the development cookie); \
                 with public keys, tokens come from the identity provider",
            ));
        }
        let cors_origins = match self.cors_origins.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| origin(o).map_err(|e| invalid("FLASHSALE_CORS_ORIGINS", e)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let admin_token = secret(
            "FLASHSALE_ADMIN_TOKEN",
            self.admin_token.clone(),
            "FLASHSALE_ADMIN_TOKEN_FILE",
            self.admin_token_file.clone(),
        )?;
        let payment_token = secret(
            "FLASHSALE_PAYMENT_TOKEN",
            self.payment_token.clone(),
            "FLASHSALE_PAYMENT_TOKEN_FILE",
            self.payment_token_file.clone(),
        )?;
        if self.payment_window_s > 604_800 {
            return Err(invalid(
                "FLASHSALE_PAYMENT_WINDOW_S",
                "must be 0-604800 seconds",
            ));
        }
        match (self.payment_window_s, &payment_token) {
            (0, Some(_)) => {
                return Err(invalid(
                    "FLASHSALE_PAYMENT_WINDOW_S",
                    "must be above 0 when FLASHSALE_PAYMENT_TOKEN is set (the payment step is off at 0)",
                ));
            }
            (w, None) if w > 0 => {
                return Err(invalid(
                    "FLASHSALE_PAYMENT_TOKEN",
                    "required with a payment window: without it no order could be paid and every one would expire",
                ));
            }
            _ => {}
        }
        // Empty counts as unset (a compose file passing an unset variable on).
        let trusted_proxies = match self.trusted_proxies.trim() {
            "" => TrustedProxies::default(),
            list => {
                TrustedProxies::parse(list).map_err(|e| invalid("FLASHSALE_TRUSTED_PROXIES", e))?
            }
        };
        if self.max_in_flight == 0 {
            return Err(invalid("FLASHSALE_MAX_IN_FLIGHT", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("FLASHSALE_MAX_CONNECTIONS", "must be at least 1"));
        }
        Ok(ServeSettings {
            redis,
            listen,
            jwt,
            cors_origins,
            admin_token,
            payment_window: Duration::from_secs(self.payment_window_s),
            payment_token,
            rate_limit_per_shopper: self.rate_limit_per_shopper,
            rate_limit_per_ip: self.rate_limit_per_ip,
            max_in_flight: self.max_in_flight,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            trusted_proxies,
            static_dir: self.static_dir.clone(),
            catalog_cache: Duration::from_millis(self.catalog_cache_ms.min(10_000)),
            ended_listed: Duration::from_secs(self.ended_listed_s),
            dev_login: self.dev_login,
            cookie_secure: self.cookie_secure,
            log_format: LogFormat::parse(&self.log_format)
                .map_err(|e| invalid(crate::logs::VAR, e))?,
            access_log: self.access_log,
        })
    }
}

fn non_empty<T: AsRef<std::ffi::OsStr> + Clone>(v: &Option<T>) -> Option<T> {
    v.as_ref().filter(|s| !s.as_ref().is_empty()).cloned()
}

impl ServeArgs {
    /// Exactly one key source, its key loaded once to prove it usable.
    fn jwt_settings(&self) -> Result<JwtSettings, ConfigError> {
        const SECRET: &str = "FLASHSALE_JWT_SECRET";
        const PEM: &str = "FLASHSALE_JWT_PUBLIC_KEY_FILE";
        const JWKS: &str = "FLASHSALE_JWT_JWKS_FILE";
        let secret_set = self.jwt_secret.is_some() || self.jwt_secret_file.is_some();
        // Empty values count as unset (a compose file passing an unset variable on).
        let pem = non_empty(&self.jwt_public_key_file).map(PathBuf::from);
        let jwks = non_empty(&self.jwt_jwks_file).map(PathBuf::from);
        let keys = match (secret_set, pem, jwks) {
            (true, None, None) => {
                let s = secret(
                    SECRET,
                    self.jwt_secret.clone(),
                    "FLASHSALE_JWT_SECRET_FILE",
                    self.jwt_secret_file.clone(),
                )?
                .ok_or_else(|| invalid(SECRET, "required by `flashsale serve`"))?;
                if s.expose().len() < 16 {
                    return Err(invalid(SECRET, "must be at least 16 bytes long"));
                }
                JwtKeys::Secret(s)
            }
            (false, Some(path), None) => {
                crate::web::keys::load_pem(&path).map_err(|e| invalid(PEM, e))?;
                JwtKeys::PublicKeyFile(path)
            }
            (false, None, Some(path)) => {
                crate::web::keys::load_jwks(&path).map_err(|e| invalid(JWKS, e))?;
                JwtKeys::JwksFile(path)
            }
            (false, None, None) => {
                return Err(invalid(
                    SECRET,
                    format!("required by `flashsale serve` (or {PEM}, or {JWKS})"),
                ));
            }
            (_, _, jwks) => {
                return Err(invalid(
                    if jwks.is_some() { JWKS } else { PEM },
                    format!("set exactly one of {SECRET}, {PEM} and {JWKS}"),
                ));
            }
        };
        let issuer = non_empty(&self.jwt_issuer);
        let audience = non_empty(&self.jwt_audience);
        Ok(JwtSettings {
            keys,
            issuer,
            audience,
        })
    }
}

/// A browser origin, `scheme://host[:port]` (http or https, no path, no
/// user info), normalized the way browsers send it: lowercase, without the
/// scheme's default port. One trailing `/` is tolerated.
pub(crate) fn origin(raw: &str) -> Result<String, String> {
    let bad = |why: &str| format!("`{raw}` is not an origin like https://shop.example ({why})");
    let s = raw.strip_suffix('/').unwrap_or(raw);
    let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("the scheme is http or https")),
    };
    if rest.contains(['/', '?', '#']) {
        return Err(bad("no path, query or fragment"));
    }
    if rest.contains('@') {
        return Err(bad("no user info"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
        };
        (format!("[{}]", addr.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let ok = !host.is_empty()
            && !host.starts_with(['.', '-'])
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            return Err(bad("the host is a name or an address"));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            let n: u16 = p
                .parse()
                .ok()
                .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("the port is 1-65535"))?;
            (n != default_port).then_some(n)
        }
    };
    Ok(match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6PuwB5i05d7sKwEr4y3KO/33KXOe
J47pQ0vCXKbc8i8dBJz+57mdDK2UzIscz309N5dv2rOwjjbmHwLSDbHlsw==
-----END PUBLIC KEY-----
";
    const P384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEjP3uSouYnw/e+oAPIX5zR58oBpCDDclQ
ezMGevVcxFveAvfSKpCp2IqplewZKluWD2mwqtA5D9P8Dk9ThqXEnE0fEMNcZCEB
pXz467icY/sem3qeyYZKfsVqXOQUPx54
-----END PUBLIC KEY-----
";
    const RSA1024_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC/st6v8+14JwzIPtUQ4gS/PkZa
4pwny27sPTIbXPSl/GihwiVEx+O/kQd4sO+PvXzTHi5mSlXfFq3DZQVzqy/rAWBa
ZpwMcO0l6+ro5GMsrkImOCvZUh+yzEx3kdeFS0LXGSxzMp2iXGoalwCbwZgEB6HA
7ZduL5RgGlLG5sp/BwIDAQAB
-----END PUBLIC KEY-----
";
    const SECRET: &str = "0123456789abcdef";

    #[derive(Parser)]
    struct S {
        #[command(flatten)]
        s: ServeArgs,
    }

    fn serve(args: &[&str]) -> Result<ServeSettings, ConfigError> {
        let mut v = vec!["t", "--redis-sentinels", "h:1"];
        v.extend_from_slice(args);
        S::try_parse_from(v).expect("parses").s.settings()
    }

    /// A file with `text` in a directory of its own (removed on drop).
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "flashsale-serve-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            TempFile(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().expect("utf-8 path")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn names(e: ConfigError, var: &str) -> String {
        let s = e.to_string();
        assert!(s.starts_with(&format!("{var}: ")), "{s} names {var}");
        s
    }

    #[test]
    fn exactly_one_key_source() {
        let pem = TempFile::new("k.pem", P256_PUBLIC);
        let s = serve(&["--jwt-secret", SECRET]).unwrap();
        assert_eq!(s.jwt.secret().map(Secret::expose), Some(SECRET));
        let s = serve(&["--jwt-public-key-file", pem.path()]).unwrap();
        assert!(matches!(s.jwt.keys, JwtKeys::PublicKeyFile(_)));
        assert!(s.jwt.secret().is_none());
        // None of the three.
        let e = names(serve(&[]).unwrap_err(), "FLASHSALE_JWT_SECRET");
        assert!(e.contains("FLASHSALE_JWT_JWKS_FILE"), "{e}");
        // Two of them; the secret's value is never in the message.
        let e = names(
            serve(&["--jwt-secret", SECRET, "--jwt-public-key-file", pem.path()]).unwrap_err(),
            "FLASHSALE_JWT_PUBLIC_KEY_FILE",
        );
        assert!(!e.contains(SECRET), "{e}");
        names(
            serve(&[
                "--jwt-public-key-file",
                pem.path(),
                "--jwt-jwks-file",
                pem.path(),
            ])
            .unwrap_err(),
            "FLASHSALE_JWT_JWKS_FILE",
        );
        let secret_file = TempFile::new("secret", SECRET);
        names(
            serve(&[
                "--jwt-secret-file",
                secret_file.path(),
                "--jwt-jwks-file",
                pem.path(),
            ])
            .unwrap_err(),
            "FLASHSALE_JWT_JWKS_FILE",
        );
        // Empty values count as unset.
        let s = serve(&[
            "--jwt-secret",
            SECRET,
            "--jwt-jwks-file",
            "",
            "--jwt-issuer",
            "",
        ])
        .unwrap();
        assert!(s.jwt.secret().is_some() && s.jwt.issuer.is_none());
        // The secret keeps its minimum length.
        names(
            serve(&["--jwt-secret", "short"]).unwrap_err(),
            "FLASHSALE_JWT_SECRET",
        );
        // The development login signs with the secret: not with public keys.
        names(
            serve(&["--jwt-public-key-file", pem.path(), "--dev-login"]).unwrap_err(),
            "FLASHSALE_DEV_LOGIN",
        );
    }

    #[test]
    fn issuer_and_audience_are_optional() {
        let s = serve(&["--jwt-secret", SECRET]).unwrap();
        assert_eq!((s.jwt.issuer, s.jwt.audience), (None, None));
        let s = serve(&[
            "--jwt-secret",
            SECRET,
            "--jwt-issuer",
            "https://login.shop.example",
            "--jwt-audience",
            "flashsale",
        ])
        .unwrap();
        assert_eq!(s.jwt.issuer.as_deref(), Some("https://login.shop.example"));
        assert_eq!(s.jwt.audience.as_deref(), Some("flashsale"));
    }

    #[test]
    fn bad_key_files_name_their_variable() {
        const PEM: &str = "FLASHSALE_JWT_PUBLIC_KEY_FILE";
        const JWKS: &str = "FLASHSALE_JWT_JWKS_FILE";
        let e = names(
            serve(&["--jwt-public-key-file", "/nonexistent/k.pem"]).unwrap_err(),
            PEM,
        );
        assert!(e.contains("/nonexistent/k.pem"), "{e}");
        for (what, text) in [
            ("not PEM", "hello"),
            ("a P-384 key", P384_PUBLIC),
            ("a 1024-bit RSA key", RSA1024_PUBLIC),
            (
                "a private key",
                "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n",
            ),
        ] {
            let f = TempFile::new("k.pem", text);
            let e = names(
                serve(&["--jwt-public-key-file", f.path()]).unwrap_err(),
                PEM,
            );
            assert!(!e.contains("MIG"), "{what}: no key material in {e}");
        }
        for (what, text) in [
            ("not JSON", "{"),
            ("no keys", r#"{"keys": []}"#),
            (
                "only an HMAC key",
                r#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}"#,
            ),
            (
                "an EC key without kid",
                r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "6PuwB5i05d7sKwEr4y3KO_33KXOeJ47pQ0vCXKbc8i8", "y": "HQSc_ue5nQytlMyLHM99PTeXb9qzsI425h8C0g2x5bM"}]}"#,
            ),
            (
                "a malformed EC key",
                r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "x": "AAAA", "y": "AAAA"}]}"#,
            ),
        ] {
            let f = TempFile::new("jwks.json", text);
            let e = names(serve(&["--jwt-jwks-file", f.path()]).unwrap_err(), JWKS);
            assert!(e.contains("jwks.json"), "{what}: {e}");
        }
        let jwks = TempFile::new(
            "jwks.json",
            r#"{"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig", "alg": "ES256",
                 "x": "6PuwB5i05d7sKwEr4y3KO_33KXOeJ47pQ0vCXKbc8i8", "y": "HQSc_ue5nQytlMyLHM99PTeXb9qzsI425h8C0g2x5bM"},
                {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
                 "x": "6PuwB5i05d7sKwEr4y3KO_33KXOeJ47pQ0vCXKbc8i8", "y": "HQSc_ue5nQytlMyLHM99PTeXb9qzsI425h8C0g2x5bM"},
                {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
            ]}"#,
        );
        let s = serve(&["--jwt-jwks-file", jwks.path()]).unwrap();
        assert!(matches!(s.jwt.keys, JwtKeys::JwksFile(_)));
        let keys = crate::web::keys::load_jwks(std::path::Path::new(jwks.path())).unwrap();
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            ["ec1"],
            "enc and Ed25519 keys skipped"
        );
    }

    #[test]
    fn cors_origins_are_checked_and_normalized() {
        let s = serve(&["--jwt-secret", SECRET]).unwrap();
        assert!(s.cors_origins.is_empty());
        let s = serve(&[
            "--jwt-secret",
            SECRET,
            "--cors-origins",
            "https://Shop.Example, http://localhost:3000,https://m.shop.example:443/,http://[::1]:8080",
        ])
        .unwrap();
        assert_eq!(
            s.cors_origins,
            [
                "https://shop.example",
                "http://localhost:3000",
                "https://m.shop.example",
                "http://[::1]:8080"
            ]
        );
        for bad in [
            "shop.example",
            "https://shop.example/app",
            "ftp://shop.example",
            "https://",
            "https://user@shop.example",
            "https://shop.example:0",
            "https://shop.example:99999",
            "https://*.shop.example",
            "null",
            "*",
            "https://shop.example?x",
            "http://[nope]:1",
        ] {
            let e = names(
                serve(&["--jwt-secret", SECRET, "--cors-origins", bad]).unwrap_err(),
                "FLASHSALE_CORS_ORIGINS",
            );
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn trusted_proxies_are_checked() {
        let s = serve(&["--jwt-secret", SECRET]).unwrap();
        assert_eq!(s.trusted_proxies, TrustedProxies::default());
        assert_eq!(s.trusted_proxies.to_string(), "127.0.0.0/8,::1/128");
        // Empty counts as unset.
        let s = serve(&["--jwt-secret", SECRET, "--trusted-proxies", " "]).unwrap();
        assert_eq!(s.trusted_proxies, TrustedProxies::default());
        let s = serve(&[
            "--jwt-secret",
            SECRET,
            "--trusted-proxies",
            "172.28.5.10, 10.0.0.0/8,fd00::/8",
        ])
        .unwrap();
        assert_eq!(
            s.trusted_proxies.to_string(),
            "172.28.5.10/32,10.0.0.0/8,fd00::/8"
        );
        assert!(!s.trusted_proxies.contains("127.0.0.1".parse().unwrap()));
        let s = serve(&["--jwt-secret", SECRET, "--trusted-proxies", "none"]).unwrap();
        assert_eq!(s.trusted_proxies, TrustedProxies::none());
        for bad in ["10.0.0.0/33", "nginx", "10.0.0.1,fd00::/200", ","] {
            let e = names(
                serve(&["--jwt-secret", SECRET, "--trusted-proxies", bad]).unwrap_err(),
                "FLASHSALE_TRUSTED_PROXIES",
            );
            assert!(e.lines().count() == 1, "{e}");
        }
    }
}
