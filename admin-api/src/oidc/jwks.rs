//! The identity provider's signing keys: discovered, fetched, cached, refreshed.
//!
//! The key set is one immutable [`KeySet`] behind an [`ArcSwapOption`]: a token's verification
//! reads it without a lock. Fetches are serialised by an async mutex (held across the fetch on
//! purpose: it is the single flight; tasks that waited on it find the new set and fetch nothing)
//! and spaced by [`OidcConfig::min_fetch_interval`], whatever triggered them:
//! - the first token (or [`KeyCache::fetch_now`] at start);
//! - a `kid` the set does not hold (the provider rotated its keys);
//! - the set's age passing its max-age (the response's `Cache-Control: max-age`, else
//!   [`OidcConfig::jwks_max_age`]): the first token to notice fetches if no fetch is under way;
//!   every other token goes on with the set it has.
//!
//! A failed fetch keeps the last good set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use serde::Deserialize;
use url::Url;

use super::config::{OidcConfig, SigningAlgorithm, check_fetch_url};

/// The longest a key set is trusted without asking the provider again, whatever its
/// `Cache-Control` says: Entra ID asks relying parties to look at least daily.
const MAX_JWKS_AGE: Duration = Duration::from_secs(24 * 3600);

/// A discovery document or JWKS larger than this is refused. Entra ID's are a few KiB; the cap
/// keeps a misbehaving endpoint from filling memory.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Why no key set could be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("GET {url}: {source}")]
    Request {
        url: Url,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}")]
    Status { url: Url, status: reqwest::StatusCode },
    #[error("GET {url}: the response is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: Url },
    #[error("GET {url}: not a {what}: {source}")]
    Parse {
        url: Url,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A URL the discovery document or a redirect supplied is not acceptable.
    #[error("{0}")]
    BadUrl(String),
    #[error(
        "the discovery document at {url} names issuer {found:?}, not the configured {expected:?}"
    )]
    IssuerMismatch { url: Url, found: String, expected: String },
    #[error("{url} holds no usable signing key (of {total})")]
    NoUsableKeys { url: Url, total: usize },
    #[error("no signing keys yet; the last fetch failed and the next is allowed in {retry_in:?}")]
    Backoff { retry_in: Duration },
}

/// A public key from the JWKS, with what it may verify.
#[derive(Debug)]
pub(super) struct SigningKey {
    pub(super) key: DecodingKey,
    shape: KeyShape,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    only: Option<SigningAlgorithm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyShape {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl SigningKey {
    /// Whether a token signed with `alg` may be checked with this key: the key type (and curve)
    /// fits `alg`, and the JWK's own `alg`, if any, is `alg`.
    pub(super) fn fits(&self, alg: SigningAlgorithm) -> bool {
        use SigningAlgorithm as A;
        let shape_fits = match alg {
            A::Rs256 | A::Rs384 | A::Rs512 | A::Ps256 | A::Ps384 | A::Ps512 => {
                self.shape == KeyShape::Rsa
            }
            A::Es256 => self.shape == KeyShape::P256,
            A::Es384 => self.shape == KeyShape::P384,
            A::EdDsa => self.shape == KeyShape::Ed25519,
        };
        shape_fits && self.only.is_none_or(|only| only == alg)
    }
}

/// One fetched JWKS. Immutable; replaced whole.
#[derive(Debug)]
pub(super) struct KeySet {
    /// Increases with every fetched set: a task that waited for the fetch lock compares it to
    /// the one it saw, to know whether someone else fetched meanwhile.
    generation: u64,
    keys: HashMap<String, Arc<SigningKey>>,
    fetched_at: Instant,
    max_age: Duration,
}

impl KeySet {
    fn is_stale(&self) -> bool {
        self.fetched_at.elapsed() >= self.max_age
    }

    fn get(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.keys.get(kid).cloned()
    }
}

/// Why [`KeyCache::find`] found no key.
#[derive(Debug)]
pub(super) enum KeyLookupError {
    /// The key set (fresh, or refetched within the interval) has no such `kid`.
    UnknownKid,
    /// No key set could be fetched.
    Unavailable(JwksError),
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    generation: u64,
    /// `jwks_uri` from the discovery document, kept until a JWKS fetch from it fails.
    discovered: Option<Url>,
}

pub(super) struct KeyCache {
    http: reqwest::Client,
    issuer: String,
    discovery_url: Url,
    jwks_uri: Option<Url>,
    default_max_age: Duration,
    min_fetch_interval: Duration,
    fetch_timeout: Duration,
    current: ArcSwapOption<KeySet>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl KeyCache {
    pub(super) fn new(config: &OidcConfig, discovery_url: Url, http: reqwest::Client) -> Self {
        Self {
            http,
            issuer: config.issuer.clone(),
            discovery_url,
            jwks_uri: config.jwks_uri.clone(),
            default_max_age: config.jwks_max_age,
            min_fetch_interval: config.min_fetch_interval,
            fetch_timeout: config.fetch_timeout,
            current: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        }
    }

    /// The key named `kid`, fetching the key set first when it is missing, stale, or lacks
    /// `kid` (each within the fetch interval).
    pub(super) async fn find(&self, kid: &str) -> Result<Arc<SigningKey>, KeyLookupError> {
        let mut seen = self.current.load_full();
        if let Some(set) = seen.as_ref().filter(|s| s.is_stale()) {
            // Whoever notices first fetches; nobody waits for it.
            if let Ok(state) = self.fetch.try_lock()
                && let Ok(fresh) = self.refetch(state, Some(set.generation), "expired").await
            {
                seen = Some(fresh);
            }
        }
        if let Some(key) = seen.as_ref().and_then(|s| s.get(kid)) {
            return Ok(key);
        }
        let reason = if seen.is_some() { "unknown kid" } else { "first use" };
        let state = self.fetch.lock().await;
        match self.refetch(state, seen.as_ref().map(|s| s.generation), reason).await {
            Ok(set) => set.get(kid).ok_or(KeyLookupError::UnknownKid),
            // Asked again too soon: the set we have is the answer.
            Err(JwksError::Backoff { .. }) if seen.is_some() => Err(KeyLookupError::UnknownKid),
            Err(e) => Err(KeyLookupError::Unavailable(e)),
        }
    }

    /// Fetches the key set now, whenever the last fetch was (at start, so the first request
    /// does not wait; a failure is worth a warning, not a refusal to start).
    pub(super) async fn fetch_now(&self) -> Result<usize, JwksError> {
        let mut state = self.fetch.lock().await;
        state.last_attempt = None;
        let seen = self.current.load().as_ref().map(|s| s.generation);
        self.refetch(state, seen, "requested").await.map(|set| set.keys.len())
    }

    /// With the fetch lock held: the set someone else fetched while this task waited (its
    /// generation differs from `seen`), or a new one if the interval allows.
    async fn refetch(
        &self,
        mut state: tokio::sync::MutexGuard<'_, FetchState>,
        seen: Option<u64>,
        reason: &'static str,
    ) -> Result<Arc<KeySet>, JwksError> {
        if let Some(current) = self.current.load_full()
            && Some(current.generation) != seen
        {
            return Ok(current);
        }
        if let Some(last) = state.last_attempt {
            let since = last.elapsed();
            if since < self.min_fetch_interval {
                return Err(JwksError::Backoff { retry_in: self.min_fetch_interval - since });
            }
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch_key_set(&mut state).await {
            Ok((keys, max_age)) => {
                state.generation += 1;
                let set = Arc::new(KeySet {
                    generation: state.generation,
                    keys,
                    fetched_at: Instant::now(),
                    max_age,
                });
                let mut kids: Vec<&str> = set.keys.keys().map(String::as_str).collect();
                kids.sort_unstable();
                tracing::info!(
                    issuer = %self.issuer,
                    reason,
                    kids = ?kids,
                    max_age_s = max_age.as_secs(),
                    "OIDC signing keys fetched"
                );
                self.current.store(Some(set.clone()));
                Ok(set)
            }
            Err(error) => {
                tracing::warn!(
                    issuer = %self.issuer,
                    reason,
                    %error,
                    keeping_last_good = self.current.load().is_some(),
                    "OIDC signing keys could not be fetched"
                );
                Err(error)
            }
        }
    }

    async fn fetch_key_set(
        &self,
        state: &mut FetchState,
    ) -> Result<(HashMap<String, Arc<SigningKey>>, Duration), JwksError> {
        let jwks_uri = match (&self.jwks_uri, &state.discovered) {
            (Some(configured), _) => configured.clone(),
            (None, Some(discovered)) => discovered.clone(),
            (None, None) => {
                let discovered = self.discover().await?;
                state.discovered = Some(discovered.clone());
                discovered
            }
        };
        let fetched = self.get(&jwks_uri).await;
        if fetched.is_err() {
            // The provider may have moved its keys: discover again next time.
            state.discovered = None;
        }
        let (body, max_age) = fetched?;
        #[derive(Deserialize)]
        struct RawJwks {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawJwks = serde_json::from_slice(&body).map_err(|source| JwksError::Parse {
            url: jwks_uri.clone(),
            what: "JWKS",
            source,
        })?;
        let total = raw.keys.len();
        let keys: HashMap<_, _> = raw.keys.into_iter().filter_map(signing_key).collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys { url: jwks_uri, total });
        }
        let max_age =
            max_age.unwrap_or(self.default_max_age).min(MAX_JWKS_AGE).max(self.min_fetch_interval);
        Ok((keys, max_age))
    }

    /// `jwks_uri` from the issuer's discovery document, whose `issuer` must be ours (OIDC
    /// Discovery §4.3: otherwise another tenant's document could supply the keys).
    async fn discover(&self) -> Result<Url, JwksError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = &self.discovery_url;
        let (body, _) = self.get(url).await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|source| JwksError::Parse {
            url: url.clone(),
            what: "discovery document",
            source,
        })?;
        if doc.issuer != self.issuer {
            return Err(JwksError::IssuerMismatch {
                url: url.clone(),
                found: doc.issuer,
                expected: self.issuer.clone(),
            });
        }
        let jwks_uri = Url::parse(&doc.jwks_uri)
            .map_err(|e| JwksError::BadUrl(format!("jwks_uri in {url}: not a URL: {e}")))?;
        check_fetch_url(&jwks_uri)
            .map_err(|p| JwksError::BadUrl(format!("jwks_uri in {url}: {p}")))?;
        Ok(jwks_uri)
    }

    /// A bounded GET: its body (at most [`MAX_DOCUMENT_BYTES`]) and `Cache-Control: max-age`.
    async fn get(&self, url: &Url) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
        let request_error = |source| JwksError::Request { url: url.clone(), source };
        let mut response = self
            .http
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .timeout(self.fetch_timeout)
            .send()
            .await
            .map_err(request_error)?;
        // A redirect must not downgrade to plain http.
        check_fetch_url(response.url())
            .map_err(|p| JwksError::BadUrl(format!("{url} redirected: {p}")))?;
        if !response.status().is_success() {
            return Err(JwksError::Status { url: url.clone(), status: response.status() });
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age);
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
            return Err(JwksError::TooLarge { url: url.clone() });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(JwksError::TooLarge { url: url.clone() });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as zero (then the fetch
/// interval is the floor).
fn cache_max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "max-age" => arg.trim().trim_matches('"').parse().ok().map(Duration::from_secs),
            "no-cache" | "no-store" => Some(Duration::ZERO),
            _ => None,
        }
    })
}

/// A JWKS entry usable to verify signatures: it has a `kid`, is not meant for encryption only,
/// and is an RSA, P-256/P-384 or Ed25519 public key. Symmetric (`oct`) keys are skipped: a JWKS
/// publishes public keys, and accepting a secret from it would let anyone who can read it sign.
fn signing_key(raw: serde_json::Value) -> Option<(String, Arc<SigningKey>)> {
    let jwk: Jwk = match serde_json::from_value(raw) {
        Ok(jwk) => jwk,
        Err(error) => {
            tracing::debug!(%error, "JWKS entry skipped: not a JWK");
            return None;
        }
    };
    let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
    let skip = |why: &str| {
        tracing::debug!(kid = %kid, why, "JWKS entry skipped");
    };
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => {
            skip("use is not sig");
            return None;
        }
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.iter().any(|op| matches!(op, KeyOperations::Verify))
    {
        skip("key_ops lacks verify");
        return None;
    }
    let shape = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyShape::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyShape::P256,
            EllipticCurve::P384 => KeyShape::P384,
            _ => {
                skip("unsupported curve");
                return None;
            }
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyShape::Ed25519
        }
        _ => {
            skip("not an RSA, EC or Ed25519 public key");
            return None;
        }
    };
    let only = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => match key_algorithm(alg) {
            Some(alg) => Some(alg),
            None => {
                skip("alg is not a supported signature algorithm");
                return None;
            }
        },
    };
    match DecodingKey::from_jwk(&jwk) {
        Ok(key) => Some((kid, Arc::new(SigningKey { key, shape, only }))),
        Err(error) => {
            tracing::debug!(kid = %kid, %error, "JWKS entry skipped: bad key material");
            None
        }
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<SigningAlgorithm> {
    use SigningAlgorithm as A;
    Some(match alg {
        KeyAlgorithm::RS256 => A::Rs256,
        KeyAlgorithm::RS384 => A::Rs384,
        KeyAlgorithm::RS512 => A::Rs512,
        KeyAlgorithm::PS256 => A::Ps256,
        KeyAlgorithm::PS384 => A::Ps384,
        KeyAlgorithm::PS512 => A::Ps512,
        KeyAlgorithm::ES256 => A::Es256,
        KeyAlgorithm::ES384 => A::Es384,
        KeyAlgorithm::EdDSA => A::EdDsa,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cache_control_max_age_is_read_and_no_cache_is_zero() {
        assert_eq!(cache_max_age("public, max-age=86400"), Some(Duration::from_secs(86400)));
        assert_eq!(cache_max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=soon"), None);
    }

    #[test]
    fn only_public_signing_keys_with_a_kid_are_kept() {
        // An Entra-shaped RSA entry (extra fields, no alg): kept.
        let n = concat!(
            "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV",
            "3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdh",
            "S8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7",
            "LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-",
            "VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
        );
        let kept = signing_key(json!({
            "kty": "RSA", "use": "sig", "kid": "k1", "x5t": "k1", "n": n, "e": "AQAB",
            "x5c": ["MIIC..."], "issuer": "https://login.microsoftonline.com/t/v2.0"
        }));
        let (kid, key) = kept.expect("RSA signing key kept");
        assert_eq!(kid, "k1");
        assert!(key.fits(SigningAlgorithm::Rs256) && key.fits(SigningAlgorithm::Ps256));
        assert!(!key.fits(SigningAlgorithm::Es256));

        let rsa = |extra: serde_json::Value| {
            let mut v = json!({"kty": "RSA", "kid": "k", "n": n, "e": "AQAB"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            signing_key(v)
        };
        assert!(rsa(json!({"use": "enc"})).is_none());
        assert!(rsa(json!({"kid": ""})).is_none());
        assert!(rsa(json!({"alg": "RSA-OAEP"})).is_none());
        assert!(rsa(json!({"key_ops": ["encrypt"]})).is_none());
        let pinned = rsa(json!({"alg": "RS256"})).unwrap().1;
        assert!(pinned.fits(SigningAlgorithm::Rs256) && !pinned.fits(SigningAlgorithm::Ps256));
        assert!(signing_key(json!({"kty": "RSA", "n": n, "e": "AQAB"})).is_none());
        assert!(signing_key(json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"})).is_none());
        assert!(signing_key(json!({"kty": "weird", "kid": "w"})).is_none());
        assert!(signing_key(json!("not an object")).is_none());
    }
}
