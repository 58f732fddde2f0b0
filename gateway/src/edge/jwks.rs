//! Client-token keys published as a JWKS document (`JWT_JWKS_URL`).
//!
//! An identity provider rotates its signing keys by publishing the new one
//! in its JWKS document and signing with it (the token's `kid` names it).
//! This module keeps the document's RS256 / ES256 keys in a map swapped as a
//! whole ([`ArcSwap`]), so verifying a token with a known `kid` is a lock-free
//! look-up, and fetches the document:
//!
//! - once at start (a failure is a warning, not an exit: tokens are refused
//!   401 until keys arrive, and the fetch is retried with a backoff);
//! - every `JWT_JWKS_REFRESH_S`, so removed keys stop verifying;
//! - when a token names an unknown `kid`, at most once per
//!   [`UNKNOWN_KID_REFETCH`]: a rotation is picked up on the first token
//!   that uses the new key, while a stream of made-up `kid`s cannot turn the
//!   gateway into a load generator against the identity provider.
//!
//! Fetches are serialized by one async mutex, so a burst of tokens with the
//! same new `kid` waits for one fetch instead of starting one each. A
//! document is authoritative: every successful fetch replaces the whole map.
//! Keys without a `kid`, meant for encryption (`use: enc`), or of another
//! algorithm (HMAC `oct` keys included) are skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Shortest interval between two fetches triggered by unknown `kid`s.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);

/// Timeout of one fetch (connect included).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS document accepted, in bytes (real ones are a few KiB).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// First retry delay after a failed fetch while no key is known; it doubles
/// up to the refresh interval (at most 30 s).
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// One verification key with the validation rules for its algorithm.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    /// The public key (or, for `JWT_SECRET`, the HMAC secret).
    pub(crate) key: DecodingKey,
    /// The shared rules with `algorithms` set to this key's one algorithm.
    pub(crate) validation: Validation,
}

impl VerifyKey {
    /// `key` for `algorithm` under the rules of `base`.
    pub(crate) fn new(key: DecodingKey, algorithm: Algorithm, base: &Validation) -> Self {
        let mut validation = base.clone();
        validation.algorithms = vec![algorithm];
        Self { key, validation }
    }
}

/// Why a fetch of the JWKS document failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connection, timeout or HTTP error.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// A status other than 200.
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    /// Larger than 1 MiB (real documents are a few KiB).
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
}

/// The keys of a JWKS document and the means to refresh them.
pub struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    base: Validation,
    refresh_every: Duration,
    keys: ArcSwap<HashMap<String, Arc<VerifyKey>>>,
    /// Held during every fetch; remembers when an unknown `kid` last caused one.
    fetching: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url.as_str())
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set for `url` (nothing fetched yet), verifying with `base`'s rules.
    ///
    /// # Errors
    /// A message for the operator when `url` is not an http(s) URL or the
    /// HTTP client cannot be built.
    pub fn new(url: &str, refresh_every: Duration, base: Validation) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("JWT_JWKS_URL {url:?} is not an http:// or https:// URL"))?;
        chat_shared::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("chat-gateway/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(Self {
            url: parsed,
            client,
            base,
            refresh_every,
            keys: ArcSwap::from_pointee(HashMap::new()),
            fetching: Mutex::new(None),
        })
    }

    /// The key named `kid`, if the last document had it.
    pub(crate) fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.load().get(kid).cloned()
    }

    /// Number of usable keys known now.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether no usable key is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fetches the document once more because a token names `kid`, unless
    /// it has become known meanwhile or an unknown `kid` caused a fetch less
    /// than [`UNKNOWN_KID_REFETCH`] ago.
    pub(crate) async fn refetch_for(&self, kid: &str) {
        let mut last = self.fetching.lock().await;
        if self.keys.load().contains_key(kid)
            || last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFETCH)
        {
            return;
        }
        *last = Some(Instant::now());
        tracing::info!("A token names an unknown key id; fetching JWT_JWKS_URL");
        if let Err(e) = self.fetch_locked().await {
            tracing::warn!(error = %e, "Cannot fetch JWT_JWKS_URL; keeping the keys known");
        }
    }

    /// Fetches the document and replaces the keys; returns how many are usable.
    ///
    /// # Errors
    /// [`FetchError`]; the keys known before stay.
    pub async fn fetch(&self) -> Result<usize, FetchError> {
        let _serialized = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, FetchError> {
        let mut response = self.client.get(self.url.clone()).send().await?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)?;
        let keys = usable_keys(&set, &self.base);
        let n = keys.len();
        if n == 0 {
            tracing::warn!("JWT_JWKS_URL holds no usable RS256 / ES256 key with a kid");
        }
        tracing::debug!(keys = n, "JWKS fetched");
        self.keys.store(Arc::new(keys));
        Ok(n)
    }

    /// Fetches the document now, then every `JWT_JWKS_REFRESH_S` until
    /// `stop`; while no key is known, failed fetches are retried sooner.
    /// The first fetch is awaited so the gateway starts with keys when it can.
    pub async fn start_refresh(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        match self.fetch().await {
            Ok(n) => tracing::info!(keys = n, "JWKS fetched"),
            Err(e) => tracing::warn!(
                error = %e,
                "Cannot fetch JWT_JWKS_URL at start; tokens are refused until it answers, retrying"
            ),
        }
        tokio::spawn(async move {
            let retry_max = self.refresh_every.min(UNKNOWN_KID_REFETCH);
            let mut retry = RETRY_FIRST.min(retry_max);
            loop {
                let wait = if self.is_empty() {
                    retry
                } else {
                    self.refresh_every
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => break,
                }
                match self.fetch().await {
                    Ok(_) => retry = RETRY_FIRST.min(retry_max),
                    Err(e) => {
                        retry = (retry * 2).min(retry_max);
                        tracing::warn!(error = %e, "Cannot refresh JWT_JWKS_URL; keeping the keys known");
                    }
                }
            }
        })
    }
}

/// The keys of `set` a token may be verified with, by `kid`.
fn usable_keys(set: &JwkSet, base: &Validation) -> HashMap<String, Arc<VerifyKey>> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.as_ref() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Some(algorithm) = algorithm_of(jwk) else {
            tracing::debug!(kid, "JWKS key skipped: not an RS256 or ES256 key");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), Arc::new(VerifyKey::new(key, algorithm, base)));
            }
            Err(e) => tracing::warn!(kid, error = %e, "JWKS key skipped: cannot be decoded"),
        }
    }
    keys
}

/// RS256 for an RSA key, ES256 for a P-256 key, as its `alg` (when given) says.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyAlgorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            KeyAlgorithm::ES256
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => {}
        Some(alg) if alg == by_type => {}
        Some(_) => return None,
    }
    match by_type {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        _ => Some(Algorithm::ES256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signing_rs256_and_es256_keys_with_a_kid_are_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-alg", "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AQAB", "y": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AQAB", "y": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        ]});
        let set: JwkSet = serde_json::from_value(doc).unwrap();
        let keys = usable_keys(&set, &Validation::new(Algorithm::RS256));
        let mut kids: Vec<_> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["ec", "rsa", "rsa-alg"]);
        assert_eq!(keys["ec"].validation.algorithms, [Algorithm::ES256]);
        assert_eq!(keys["rsa"].validation.algorithms, [Algorithm::RS256]);
    }

    #[test]
    fn only_http_urls_are_accepted() {
        let base = Validation::new(Algorithm::RS256);
        let every = Duration::from_secs(300);
        assert!(Jwks::new(
            "https://idp.example/.well-known/jwks.json",
            every,
            base.clone()
        )
        .is_ok());
        assert!(Jwks::new("http://127.0.0.1:9/jwks", every, base.clone()).is_ok());
        let e = Jwks::new("file:///etc/jwks.json", every, base.clone()).unwrap_err();
        assert!(e.contains("JWT_JWKS_URL"), "{e}");
        assert!(Jwks::new("not a url", every, base).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_cause_at_most_one_fetch_per_interval() {
        // Nothing listens on port 9 of the loopback: every fetch fails fast,
        // and the interval is what decides whether one is attempted.
        let jwks = Jwks::new(
            "http://127.0.0.1:9/jwks",
            Duration::from_secs(300),
            Validation::new(Algorithm::RS256),
        )
        .unwrap();
        jwks.refetch_for("a").await;
        let first = jwks.fetching.lock().await.expect("a fetch was attempted");
        tokio::time::advance(Duration::from_secs(10)).await;
        jwks.refetch_for("b").await;
        assert_eq!(
            *jwks.fetching.lock().await,
            Some(first),
            "no second fetch within 30 s"
        );
        tokio::time::advance(UNKNOWN_KID_REFETCH).await;
        jwks.refetch_for("b").await;
        assert!(
            jwks.fetching.lock().await.unwrap() > first,
            "a fetch after 30 s"
        );
    }
}
