//! JSON Web Tokens signed with Ed25519 (`alg: EdDSA`), the key published as a
//! JWKS. Only EdDSA is accepted when verifying: `alg: none`, HMAC and every
//! other algorithm are refused before any key is looked at.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::EncodePublicKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The only signature algorithm wf-iot issues and accepts.
pub const ALGORITHM: &str = "EdDSA";
/// Tokens longer than this are refused without parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// Always `"access"`; keeps other token kinds out of API calls.
    pub typ: String,
    pub username: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Superuser flag.
    #[serde(default)]
    pub su: bool,
    /// The account's token version when issued; the issuer refuses tokens
    /// whose version is behind the account's (after a password change).
    #[serde(default)]
    pub ver: i64,
}

pub const ACCESS_TOKEN_TYPE: &str = "access";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// One public key, as published at `/.well-known/jwks.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl Jwk {
    /// The Ed25519 key this JWK describes, if it is one.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        if self.kty != "OKP" || self.crv != "Ed25519" {
            return None;
        }
        if self.alg.as_deref().is_some_and(|a| a != ALGORITHM) {
            return None;
        }
        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(&self.x).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(String),
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token is not an access token")]
    WrongType,
    #[error("the signing keys could not be fetched: {0}")]
    KeysUnavailable(String),
}

/// The key id of a public key: the first 16 characters of the base64url
/// SHA-256 of its bytes, so the same key always has the same id.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(digest)[..16].to_string()
}

/// An Ed25519 private key that signs tokens.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or writing the key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the key is not a PKCS#8 Ed25519 private key in PEM form")]
    Invalid,
}

impl SigningKey {
    pub fn generate() -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(
            &crate::random::bytes::<32>(),
        ))
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let kid = key_id(&key.verifying_key());
        Self { key, kid }
    }

    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self::from_dalek)
            .map_err(|_| KeyError::Invalid)
    }

    pub fn to_pkcs8_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map(|pem| pem.to_string())
            .unwrap_or_default()
    }

    /// Reads the key at `path`, or creates it there (mode 0600) when absent,
    /// so tokens survive restarts.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pkcs8_pem(&pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, key.to_pkcs8_pem().as_bytes()).map_err(io)?;
                tracing::info!(path = %path.display(), kid = %key.kid, "created a new token signing key");
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key in SubjectPublicKeyInfo PEM form (for Kong and friends).
    pub fn public_key_pem(&self) -> String {
        self.verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap_or_default()
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.verifying_key().as_bytes()),
            kid: self.kid.clone(),
            alg: Some(ALGORITHM.into()),
            use_: Some("sig".into()),
        }
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let header = Header {
            alg: ALGORITHM.into(),
            typ: Some("JWT".into()),
            kid: Some(self.kid.clone()),
            crit: None,
        };
        let encode = |v: &dyn erased::Json| URL_SAFE_NO_PAD.encode(v.to_json());
        let signing_input = format!("{}.{}", encode(&header), encode(&claims));
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

mod erased {
    /// Object-safe JSON encoding, so the header and claims share one closure.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Splits and checks a compact JWS, returning its decoded claims when the
/// signature verifies with the key `find_key` returns for its key id.
fn verify_with<C: DeserializeOwned>(
    token: &str,
    find_key: impl FnOnce(&str) -> Option<VerifyingKey>,
) -> Result<C, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = decode_part(h)?;
    if header.alg != ALGORITHM {
        return Err(JwtError::UnsupportedAlgorithm(header.alg));
    }
    if header.crit.is_some() {
        return Err(JwtError::Malformed);
    }
    let kid = header.kid.ok_or(JwtError::UnknownKey)?;
    let key = find_key(&kid).ok_or(JwtError::UnknownKey)?;
    let sig_bytes: [u8; 64] = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed)?
        .try_into()
        .map_err(|_| JwtError::Malformed)?;
    let signature = Signature::from_bytes(&sig_bytes);
    let signing_input = &token[..h.len() + 1 + p.len()];
    key.verify_strict(signing_input.as_bytes(), &signature)
        .map_err(|_| JwtError::BadSignature)?;
    decode_part(p)
}

fn decode_part<T: DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// Reads the key id from a token's header without verifying anything.
fn unverified_kid(token: &str) -> Option<String> {
    let header: Header = decode_part(token.split('.').next()?).ok()?;
    header.kid
}

enum Keys {
    Static(HashMap<String, VerifyingKey>),
    Remote(RemoteJwks),
}

struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    cache: RwLock<HashMap<String, VerifyingKey>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// Refetching the JWKS for an unknown key id happens at most this often, so
/// a flood of forged key ids cannot turn into a flood of fetches.
const MIN_REFETCH: Duration = Duration::from_secs(10);

/// How many verified tokens a verifier remembers.
const VERIFIED_CAPACITY: usize = 16_384;

/// Tokens whose signature verified, with their claims and key id. A hit
/// skips the Ed25519 check (the costly part of verifying) but never the
/// claim checks, which run on every use, nor the key lookup: a token whose
/// key has left the key set stops verifying at once.
#[derive(Default)]
struct Verified {
    tokens: RwLock<HashMap<Box<str>, Remembered>>,
}

/// A verified token's claims and the id of the key that verified it.
type Remembered = (AccessClaims, Box<str>);

impl Verified {
    fn get(&self, token: &str) -> Option<Remembered> {
        self.tokens.read().ok()?.get(token).cloned()
    }

    fn insert(&self, token: &str, claims: &AccessClaims, kid: &str) {
        let Ok(mut tokens) = self.tokens.write() else {
            return;
        };
        if tokens.len() >= VERIFIED_CAPACITY {
            let now = chrono::Utc::now().timestamp();
            tokens.retain(|_, (c, _)| c.exp > now);
            if tokens.len() >= VERIFIED_CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), (claims.clone(), kid.into()));
    }
}

/// Verifies access tokens against a fixed key set or a JWKS URL (cached,
/// refetched when a token names an unknown key id).
pub struct JwtVerifier {
    issuer: String,
    leeway_secs: i64,
    keys: Keys,
    verified: Verified,
}

impl JwtVerifier {
    pub fn with_keys(
        issuer: impl Into<String>,
        keys: impl IntoIterator<Item = VerifyingKey>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            leeway_secs: 5,
            keys: Keys::Static(keys.into_iter().map(|k| (key_id(&k), k)).collect()),
            verified: Verified::default(),
        }
    }

    pub fn from_jwks_url(issuer: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            leeway_secs: 5,
            keys: Keys::Remote(RemoteJwks {
                url: url.into(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
                cache: RwLock::new(HashMap::new()),
                last_fetch: tokio::sync::Mutex::new(None),
            }),
            verified: Verified::default(),
        }
    }

    /// Verifies signature, algorithm, issuer, type and lifetime.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, JwtError> {
        if let Some((claims, kid)) = self.verified.get(token)
            && self.key(&kid).is_some()
        {
            return self.check_claims(claims);
        }
        let mut used_kid = None;
        let claims: AccessClaims = match &self.keys {
            Keys::Static(keys) => verify_with(token, |kid| {
                used_kid = Some(kid.to_string());
                keys.get(kid).copied()
            })?,
            Keys::Remote(remote) => {
                let kid = unverified_kid(token);
                if let Some(kid) = &kid {
                    let known = remote.cached(kid).is_some();
                    if !known {
                        remote.refresh().await?;
                    }
                }
                verify_with(token, |kid| {
                    used_kid = Some(kid.to_string());
                    remote.cached(kid)
                })?
            }
        };
        let claims = self.check_claims(claims)?;
        if let Some(kid) = used_kid {
            self.verified.insert(token, &claims, &kid);
        }
        Ok(claims)
    }

    /// The verifying key with this id, as currently known.
    fn key(&self, kid: &str) -> Option<VerifyingKey> {
        match &self.keys {
            Keys::Static(keys) => keys.get(kid).copied(),
            Keys::Remote(remote) => remote.cached(kid),
        }
    }

    fn check_claims(&self, claims: AccessClaims) -> Result<AccessClaims, JwtError> {
        let now = chrono::Utc::now().timestamp();
        if claims.iss != self.issuer {
            return Err(JwtError::WrongIssuer);
        }
        if claims.typ != ACCESS_TOKEN_TYPE {
            return Err(JwtError::WrongType);
        }
        // Saturating: a signed token may carry any i64 here.
        if claims.exp.saturating_add(self.leeway_secs) <= now {
            return Err(JwtError::Expired);
        }
        if claims.iat.saturating_sub(self.leeway_secs) > now {
            return Err(JwtError::NotYetValid);
        }
        Ok(claims)
    }
}

impl RemoteJwks {
    fn cached(&self, kid: &str) -> Option<VerifyingKey> {
        self.cache.read().ok()?.get(kid).copied()
    }

    async fn refresh(&self) -> Result<(), JwtError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| JwtError::KeysUnavailable(e.to_string()))?
            .json()
            .await
            .map_err(|e| JwtError::KeysUnavailable(e.to_string()))?;
        let keys: HashMap<_, _> = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.kid.clone(), jwk.verifying_key()?)))
            .collect();
        if let Ok(mut cache) = self.cache.write() {
            *cache = keys;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> AccessClaims {
        let now = chrono::Utc::now().timestamp();
        AccessClaims {
            iss: "wf-iot".into(),
            sub: "u1".into(),
            iat: now,
            exp: now + exp_in,
            jti: "j".into(),
            typ: ACCESS_TOKEN_TYPE.into(),
            username: "alice".into(),
            roles: vec!["admin".into()],
            su: false,
            ver: 0,
        }
    }

    fn verifier(key: &SigningKey) -> JwtVerifier {
        JwtVerifier::with_keys("wf-iot", [key.verifying_key()])
    }

    #[tokio::test]
    async fn round_trip() {
        let key = SigningKey::generate();
        let token = key.sign(&claims(60));
        assert_eq!(
            verifier(&key).verify(&token).await.unwrap(),
            claims_like(&token)
        );
    }

    fn claims_like(token: &str) -> AccessClaims {
        decode_part(token.split('.').nth(1).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn refuses_other_keys_expiry_and_tampering() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let v = verifier(&key);
        assert_eq!(
            v.verify(&other.sign(&claims(60))).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(
            v.verify(&key.sign(&claims(-60))).await,
            Err(JwtError::Expired)
        );

        let token = key.sign(&claims(60));
        let mut forged = claims(60);
        forged.su = true;
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2]
        );
        assert_eq!(v.verify(&tampered).await, Err(JwtError::BadSignature));
    }

    #[tokio::test]
    async fn refuses_alg_none() {
        let key = SigningKey::generate();
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid()));
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(60)).unwrap());
        let token = format!("{header}.{body}.");
        assert_eq!(
            verifier(&key).verify(&token).await,
            Err(JwtError::UnsupportedAlgorithm("none".into()))
        );
        assert_eq!(
            verifier(&key).verify("garbage").await,
            Err(JwtError::Malformed)
        );
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires_and_still_needs_its_key() {
        let key = SigningKey::generate();
        let mut v = verifier(&key);
        v.leeway_secs = 0;
        // Valid now, expired two seconds later.
        let token = key.sign(&claims(2));
        assert!(v.verify(&token).await.is_ok());
        assert!(v.verify(&token).await.is_ok(), "a cache hit");
        assert!(v.verified.get(&token).is_some());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(v.verify(&token).await, Err(JwtError::Expired));

        // A token verified once is refused when its key leaves the set.
        let fresh = key.sign(&claims(60));
        assert!(v.verify(&fresh).await.is_ok());
        v.keys = Keys::Static(HashMap::new());
        assert_eq!(v.verify(&fresh).await, Err(JwtError::UnknownKey));
    }

    /// The lifetime checks added the leeway to `exp` and took it from `iat`
    /// unchecked, so a signed token with a time at either end of i64
    /// overflowed (a panic in debug builds; the `jwt_verify` fuzz target
    /// signs such claims).
    #[tokio::test]
    async fn times_at_the_ends_of_i64_are_checked_without_overflow() {
        let key = SigningKey::generate();
        let v = verifier(&key);
        let mut forever = claims(60);
        forever.exp = i64::MAX;
        forever.iat = i64::MIN;
        assert_eq!(v.verify(&key.sign(&forever)).await, Ok(forever));
        let mut never = claims(60);
        never.exp = i64::MIN;
        assert_eq!(v.verify(&key.sign(&never)).await, Err(JwtError::Expired));
        let mut future = claims(60);
        future.iat = i64::MAX;
        assert_eq!(
            v.verify(&key.sign(&future)).await,
            Err(JwtError::NotYetValid)
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_not_remembered() {
        let key = SigningKey::generate();
        let v = verifier(&key);
        let token = key.sign(&claims(60));
        let parts: Vec<&str> = token.split('.').collect();
        let bad_sig = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode([0u8; 64])
        );
        for _ in 0..2 {
            assert_eq!(v.verify(&bad_sig).await, Err(JwtError::BadSignature));
        }
        assert!(v.verified.get(&bad_sig).is_none());
    }

    #[test]
    fn the_memory_of_verified_tokens_is_bounded() {
        let cache = Verified::default();
        let c = claims(60);
        for i in 0..VERIFIED_CAPACITY + 10 {
            cache.insert(&format!("token-{i}"), &c, "kid");
        }
        assert!(cache.tokens.read().unwrap().len() <= VERIFIED_CAPACITY);
    }

    #[test]
    fn pem_round_trip_keeps_the_key_id() {
        let key = SigningKey::generate();
        let again = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.jwk().verifying_key(), Some(key.verifying_key()));
    }

    #[test]
    fn key_file_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.pem");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
    }
}
