//! The keys that verify shopper tokens: the HS256 secret, one PEM public key
//! (RS256 or ES256, decided by the key's type), or the keys of a JWKS file,
//! chosen by the token header's `kid`. Every key carries the one algorithm
//! it verifies, so a token's `alg` is pinned by the key: never `none`, and
//! never HS256 with a public key (the classic confusion, where the public
//! key's bytes are used as an HMAC secret).
//!
//! A JWKS file is watched from the request path: at most once a second its
//! metadata (mtime, size, inode) is compared with that of the version in
//! use; a changed file is re-read and its keys replace the set, with a new
//! [`Loaded::generation`] (the verifier's cache of verified tokens only
//! trusts entries of the current generation). A file that cannot be read or
//! holds no usable key leaves the last good set in place and is logged once
//! per version of the file.
//!
//! A PEM public key is read once, at start-up. Usable JWKS keys: RSA (≥ 2048 bits, `alg` absent or `RS256`) and EC P-256
//! (`alg` absent or `ES256`), with a `kid`, and `use` absent or `sig`. Other
//! keys (encryption keys, other curves and algorithms) are skipped; a
//! malformed key, or a `kid` given twice, makes the whole file unusable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;

use crate::config::JwtKeys;

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Largest key file read (a JWKS of a few dozen keys is a few KiB).
const MAX_FILE: u64 = 1024 * 1024;

/// How often a JWKS file's metadata is looked at, at most.
const CHECK_EVERY_MS: u64 = 1000;

/// A key and the one algorithm it verifies.
pub struct Key {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

/// The keys in use.
pub enum KeySet {
    /// Every token is verified with this key (`kid` is not looked at).
    One(Key),
    /// The key is chosen by the token's `kid`; none, or an unknown one: refused.
    ByKid(HashMap<String, Key>),
}

/// A key set and its generation (0 at start-up, +1 at every reload).
pub struct Loaded {
    pub generation: u64,
    pub set: KeySet,
}

/// The identity of one version of a file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Fingerprint {
        modified: m.modified().ok(),
        len: m.len(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

struct Watch {
    path: PathBuf,
    started: Instant,
    /// Milliseconds since `started` before which the file is not looked at.
    next_check_ms: AtomicU64,
    /// The version last loaded, or last found unusable (logged once).
    seen: Mutex<Option<Fingerprint>>,
    /// The file's metadata could not be read (logged once until it can).
    unreadable: AtomicBool,
}

/// The verification keys, reloaded from a JWKS file when it changes.
pub struct Keys {
    current: ArcSwap<Loaded>,
    watch: Option<Watch>,
}

impl Keys {
    /// Loads the keys (a file is read here; errors are one line without
    /// secrets).
    pub fn new(source: &JwtKeys) -> Result<Keys, String> {
        let (set, watch) = match source {
            JwtKeys::Secret(s) => (
                KeySet::One(Key {
                    key: DecodingKey::from_secret(s.expose().as_bytes()),
                    alg: Algorithm::HS256,
                }),
                None,
            ),
            JwtKeys::PublicKeyFile(path) => (KeySet::One(load_pem(path)?), None),
            JwtKeys::JwksFile(path) => {
                let seen = fingerprint(path).ok();
                let set = KeySet::ByKid(load_jwks(path)?);
                let watch = Watch {
                    path: path.clone(),
                    started: Instant::now(),
                    next_check_ms: AtomicU64::new(CHECK_EVERY_MS),
                    seen: Mutex::new(seen),
                    unreadable: AtomicBool::new(false),
                };
                (set, Some(watch))
            }
        };
        match (source, &set) {
            (JwtKeys::PublicKeyFile(path), KeySet::One(key)) => {
                tracing::info!(path = %path.display(), alg = ?key.alg, "shopper tokens: public key");
            }
            (JwtKeys::JwksFile(path), KeySet::ByKid(keys)) => {
                tracing::info!(path = %path.display(), kids = %kids(keys), "shopper tokens: JWKS file");
            }
            _ => tracing::info!("shopper tokens: HS256 secret"),
        }
        Ok(Keys {
            current: ArcSwap::from_pointee(Loaded { generation: 0, set }),
            watch,
        })
    }

    /// The keys to verify with now (a JWKS file that changed is re-read
    /// first, at most once a second).
    pub fn current(&self) -> arc_swap::Guard<Arc<Loaded>> {
        if let Some(w) = &self.watch {
            self.check(w);
        }
        self.current.load()
    }

    fn check(&self, w: &Watch) {
        let now = w.started.elapsed().as_millis() as u64;
        let due = w.next_check_ms.load(Ordering::Relaxed);
        if now < due
            || w.next_check_ms
                .compare_exchange(
                    due,
                    now + CHECK_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let path = w.path.display();
        let fp = match fingerprint(&w.path) {
            Ok(fp) => fp,
            Err(e) => {
                if !w.unreadable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%path, error = %e, "JWKS file unreadable; keeping the keys in use");
                }
                return;
            }
        };
        w.unreadable.store(false, Ordering::Relaxed);
        let mut seen = w.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == Some(fp) {
            return;
        }
        *seen = Some(fp);
        match load_jwks(&w.path) {
            Ok(keys) => {
                let kids = kids(&keys);
                let generation = self.current.load().generation + 1;
                self.current.store(Arc::new(Loaded {
                    generation,
                    set: KeySet::ByKid(keys),
                }));
                tracing::info!(%path, %kids, generation, "JWKS file reloaded");
            }
            Err(e) => {
                tracing::warn!(%path, error = %e, "JWKS file changed but is unusable; keeping the keys in use");
            }
        }
    }
}

/// The key ids of a set, sorted, comma-separated (for the log).
fn kids(keys: &HashMap<String, Key>) -> String {
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    kids.join(",")
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: cannot read it: {e}"))?
        .len();
    if len > MAX_FILE {
        return Err(format!("{shown}: larger than {MAX_FILE} bytes"));
    }
    std::fs::read(path).map_err(|e| format!("{shown}: cannot read it: {e}"))
}

fn check_rsa(key: &DecodingKey) -> Result<(), String> {
    let parsed = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => {
            rsa::RsaPublicKey::from_pkcs1_der(der).map_err(|e| e.to_string())
        }
        DecodingKeyKind::RsaModulusExponent { n, e } => rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
        )
        .map_err(|e| e.to_string()),
    }
    .map_err(|e| format!("not a usable RSA public key: {e}"))?;
    let bits = parsed.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits (at least {MIN_RSA_BITS})"
        ));
    }
    Ok(())
}

/// An EC key is a P-256 point (building an ES256 verifier parses it).
fn check_p256(key: &DecodingKey) -> Result<(), String> {
    jsonwebtoken::crypto::verify("AA", b"", key, Algorithm::ES256)
        .map(|_| ())
        .map_err(|_| "not a point of the P-256 curve (ES256)".to_owned())
}

/// One PEM public key: RSA → RS256, EC P-256 → ES256.
pub fn load_pem(path: &Path) -> Result<Key, String> {
    let shown = path.display();
    let pem = read_limited(path)?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY-----") {
        return Err(format!(
            "{shown} holds a private key; give its public key (openssl pkey -in KEY -pubout)"
        ));
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----")
        && !text.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        return Err(format!(
            "{shown} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        check_rsa(&key).map_err(|e| format!("{shown}: {e}"))?;
        return Ok(Key {
            key,
            alg: Algorithm::RS256,
        });
    }
    let key = DecodingKey::from_ec_pem(&pem)
        .map_err(|_| format!("{shown}: not an RSA or EC P-256 public key"))?;
    check_p256(&key).map_err(|e| format!("{shown}: {e}"))?;
    Ok(Key {
        key,
        alg: Algorithm::ES256,
    })
}

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS file, by `kid`.
pub fn load_jwks(path: &Path) -> Result<HashMap<String, Key>, String> {
    let shown = path.display();
    let raw = read_limited(path)?;
    let set: RawSet = serde_json::from_slice(&raw)
        .map_err(|e| format!("{shown} is not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let Some(kid) = kid else { continue };
        let kty = value.get("kty").and_then(|k| k.as_str()).unwrap_or("");
        if kty != "RSA" && kty != "EC" {
            continue;
        }
        let jwk: Jwk = serde_json::from_value(value)
            .map_err(|e| format!("{shown}: key {kid:?} is malformed: {e}"))?;
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let declared = jwk.common.key_algorithm;
        let key = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                if !matches!(declared, None | Some(KeyAlgorithm::RS256)) {
                    continue;
                }
                let key = DecodingKey::from_rsa_components(&p.n, &p.e)
                    .map_err(|e| format!("{shown}: key {kid:?}: {e}"))?;
                check_rsa(&key).map_err(|e| format!("{shown}: key {kid:?}: {e}"))?;
                Key {
                    key,
                    alg: Algorithm::RS256,
                }
            }
            AlgorithmParameters::EllipticCurve(p) => {
                if p.curve != EllipticCurve::P256
                    || !matches!(declared, None | Some(KeyAlgorithm::ES256))
                {
                    continue;
                }
                let key = DecodingKey::from_ec_components(&p.x, &p.y)
                    .map_err(|e| format!("{shown}: key {kid:?}: {e}"))?;
                check_p256(&key).map_err(|e| format!("{shown}: key {kid:?}: {e}"))?;
                Key {
                    key,
                    alg: Algorithm::ES256,
                }
            }
            _ => continue,
        };
        if keys.insert(kid.clone(), key).is_some() {
            return Err(format!("{shown}: kid {kid:?} is given twice"));
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "{shown} holds no usable key (RSA or EC P-256 signing keys with a \"kid\")"
        ));
    }
    Ok(keys)
}
