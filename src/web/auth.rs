//! Shopper identity (a JWT in `Authorization: Bearer` or the `fs_token`
//! cookie) and the admin bearer token. A refusal is an [`ApiError`]: 401
//! `unauthorized` for either, 404 for the admin API when no admin token is
//! configured.
//!
//! Tokens are verified with the configured keys ([`super::keys`]): HS256
//! with the shared secret, or RS256/ES256 with a public key or the keys of
//! a JWKS file (chosen by `kid`). The key pins the algorithm: `none` and
//! every `alg` other than the key's are refused. Checked claims: `exp`
//! (required), `nbf` (when present), `sub` (required, the user-id pattern,
//! before it is used in any Redis key), and `iss` / `aud` only when
//! configured (then required and matched; `aud` may be a string or an
//! array). Every other claim (`iat`, `jti`, …) is ignored. Clock-skew
//! leeway is 5 s; tokens over 4 KiB are refused before decoding. The admin
//! token is compared in constant time.
//!
//! Verified tokens are remembered (token → user id, expiry, key-set
//! generation) in a bounded cache of [`VERIFIED_CACHE`] entries: a
//! shopper's retries, order polls and page calls reuse one token, and a hit
//! costs a hash lookup instead of two base64 decodes, two JSON parses and a
//! signature check. A hit is only a token whose exact bytes verified before
//! with the key set still in use; its expiry is checked again on every use.
//! Refused tokens are never cached.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::keys::{KeySet, Keys};
use crate::config::{JwtSettings, Secret};
use crate::sale::valid_user;

const MAX_TOKEN_LEN: usize = 4096;

/// Clock-skew leeway on `exp` and `nbf`, in seconds.
const LEEWAY_S: u64 = 5;

/// Verified tokens remembered (a few hundred bytes each).
pub const VERIFIED_CACHE: usize = 20_000;

/// The claims of a minted token.
#[derive(Debug, Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// The claims this service reads from a verified token (the checks of
/// `nbf`, `iss` and `aud` are the validation's); every other claim is
/// ignored, whatever its type.
#[derive(Deserialize)]
struct Verified {
    sub: String,
    #[serde(deserialize_with = "numeric_date")]
    exp: u64,
}

/// A NumericDate: seconds, an integer or (as some issuers write it) a
/// fraction.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Int(u64),
        Float(f64),
    }
    match N::deserialize(d)? {
        N::Int(n) => Ok(n),
        N::Float(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        N::Float(_) => Err(serde::de::Error::custom("not a NumericDate")),
    }
}

/// The validation of tokens signed with `alg`.
fn validation(alg: Algorithm, settings: &JwtSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_S;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(iss) = &settings.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &settings.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// Verifies shopper tokens.
pub struct TokenVerifier {
    keys: Keys,
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
    verified: quick_cache::sync::Cache<Box<str>, (Arc<str>, u64, u64)>,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenVerifier {
    /// Loads the keys; the error is one line without secrets.
    pub fn new(settings: &JwtSettings) -> Result<Self, String> {
        Ok(Self {
            keys: Keys::new(&settings.keys)?,
            hs256: validation(Algorithm::HS256, settings),
            rs256: validation(Algorithm::RS256, settings),
            es256: validation(Algorithm::ES256, settings),
            verified: quick_cache::sync::Cache::new(VERIFIED_CACHE),
        })
    }

    fn validation(&self, alg: Algorithm) -> &Validation {
        match alg {
            Algorithm::RS256 => &self.rs256,
            Algorithm::ES256 => &self.es256,
            _ => &self.hs256,
        }
    }

    /// The user id of a valid token.
    pub fn verify(&self, token: &str) -> Result<Arc<str>, ApiError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::Unauthorized);
        }
        let keys = self.keys.current();
        if let Some((user, exp, generation)) = self.verified.get(token) {
            if generation == keys.generation {
                // Same bytes as a token that verified: only time can change.
                return if now_s() <= exp.saturating_add(LEEWAY_S) {
                    Ok(user)
                } else {
                    self.verified.remove(token);
                    Err(ApiError::Unauthorized)
                };
            }
            // Verified with keys since replaced: verify again.
            self.verified.remove(token);
        }
        let key = match &keys.set {
            KeySet::One(key) => key,
            KeySet::ByKid(by_kid) => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| ApiError::Unauthorized)?;
                header
                    .kid
                    .as_deref()
                    .and_then(|kid| by_kid.get(kid))
                    .ok_or(ApiError::Unauthorized)?
            }
        };
        let data = jsonwebtoken::decode::<Verified>(token, &key.key, self.validation(key.alg))
            .map_err(|_| ApiError::Unauthorized)?;
        if !valid_user(&data.claims.sub) {
            return Err(ApiError::Unauthorized);
        }
        let user: Arc<str> = data.claims.sub.into();
        self.verified.insert(
            token.into(),
            (user.clone(), data.claims.exp, keys.generation),
        );
        Ok(user)
    }
}

/// Mints a shopper token (for `flashsale token` and tests).
pub fn mint(secret: &Secret, user: &str, ttl_s: u64) -> Result<String, ApiError> {
    if !valid_user(user) {
        return Err(ApiError::invalid(
            "invalid_user",
            "user ids are 1-64 of [A-Za-z0-9_.:-]",
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: user.to_owned(),
        exp: now + ttl_s,
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|e| ApiError::internal(e.to_string()))
}

/// The credentials of an `Authorization: Bearer …` value (the scheme is
/// case-insensitive, RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The token of a request: bearer header first, then the `fs_token` cookie.
fn token_of(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        return bearer(v.to_str().ok()?);
    }
    for v in parts.headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some(t) = pair.trim().strip_prefix("fs_token=") {
                return Some(t);
            }
        }
    }
    None
}

/// The authenticated shopper's user id.
pub struct Shopper(pub Arc<str>);

impl FromRequestParts<AppState> for Shopper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token_of(parts).ok_or(ApiError::Unauthorized)?;
        let user = state.tokens.verify(token)?;
        super::middleware::note_shopper(&user);
        Ok(Shopper(user))
    }
}

/// Proof that the request carries the admin token. Without a configured
/// token the admin API does not exist (404).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &state.admin_token else {
            return Err(ApiError::not_found());
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
            Ok(Admin)
        } else {
            Err(ApiError::AdminUnauthorized)
        }
    }
}

/// The payment provider's callback: `Authorization: Bearer
/// <FLASHSALE_PAYMENT_TOKEN>`. Without that setting the callback is off
/// (404), like the admin API without its token.
pub struct PaymentProvider;

impl FromRequestParts<AppState> for PaymentProvider {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &state.settings.payment_token else {
            return Err(ApiError::not_found());
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
            Ok(PaymentProvider)
        } else {
            Err(ApiError::PaymentUnauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123")
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(&JwtSettings::hs256(secret())).expect("keys")
    }

    #[test]
    fn round_trip_and_rejections() {
        let v = verifier();
        let t = mint(&secret(), "alice", 60).unwrap();
        assert_eq!(&*v.verify(&t).unwrap(), "alice");
        // The second time from the cache.
        assert_eq!(&*v.verify(&t).unwrap(), "alice");
        let other = mint(&Secret::new("another-secret-0123456"), "alice", 60).unwrap();
        assert!(v.verify(&other).is_err());
        assert!(v.verify("").is_err());
        assert!(v.verify(&"a".repeat(5000)).is_err());
        assert!(mint(&secret(), "bad*user", 60).is_err());
    }

    #[test]
    fn cached_tokens_still_expire() {
        let v = verifier();
        let claims = Claims {
            sub: "bob".into(),
            exp: now_s() + 1,
            iat: None,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret().expose().as_bytes()),
        )
        .unwrap();
        assert_eq!(&*v.verify(&t).unwrap(), "bob");
        // Pretend the cached entry's expiry passed (beyond the leeway).
        v.verified
            .insert(t.as_str().into(), ("bob".into(), now_s() - LEEWAY_S - 1, 0));
        assert!(v.verify(&t).is_err());
        // A tampered copy of a cached token is not a hit.
        let sig = t.rfind('.').unwrap() + 1;
        let mut forged = t.clone();
        let swap = if &t[sig..=sig] == "A" { "B" } else { "A" };
        forged.replace_range(sig..=sig, swap);
        assert!(v.verify(&forged).is_err());
    }

    fn sign(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret().expose().as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn unchecked_claims_are_ignored_and_configured_ones_required() {
        let t = now_s();
        let shop = serde_json::json!({
            "sub": "carol", "exp": t as f64 + 60.5, "iat": t as f64 - 0.5, "nbf": t,
            "iss": "https://login.example", "aud": ["web", "flashsale"], "jti": "j1", "x": {"y": 1},
        });
        assert_eq!(&*verifier().verify(&sign(&shop)).unwrap(), "carol");
        let checked = TokenVerifier::new(&JwtSettings {
            issuer: Some("https://login.example".into()),
            audience: Some("flashsale".into()),
            ..JwtSettings::hs256(secret())
        })
        .unwrap();
        assert!(checked.verify(&sign(&shop)).is_ok());
        for edit in [
            serde_json::json!({"iss": "https://other.example"}),
            serde_json::json!({"aud": "web"}),
            serde_json::json!({"nbf": t + 60}),
        ] {
            let mut c = shop.clone();
            for (k, v) in edit.as_object().unwrap() {
                c[k] = v.clone();
            }
            assert!(checked.verify(&sign(&c)).is_err(), "{edit}");
        }
        for missing in ["iss", "aud", "exp", "sub"] {
            let mut c = shop.clone();
            c.as_object_mut().unwrap().remove(missing);
            assert!(checked.verify(&sign(&c)).is_err(), "without {missing}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(br#"{"sub":"alice","exp":99999999999}"#);
        let v = verifier();
        assert!(v.verify(&format!("{header}.{body}.")).is_err());
    }
}
