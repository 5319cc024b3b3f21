//! The sign-in session: an XChaCha20-Poly1305-sealed cookie holding the operator's credential,
//! a CSRF token, and when the session started and was last used.
//!
//! Stateless on purpose: any control-plane replica opens any session (the key is derived from
//! the shared master key), and a restart signs no one out. The credential inside is checked by
//! the admin API on every request, so revoking the token ends the session everywhere. Signing
//! out clears the cookie; a copy of it taken before then stays usable until it idles out.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::Utc;
use http::HeaderMap;
use http::header::{COOKIE, HOST};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::ConsoleSettings;

/// The purpose string the session key is derived from the master key with.
pub const SESSION_KEY_PURPOSE: &str = "modelgw console session v1";

/// Bound into every sealed cookie, so a value sealed for another purpose does not open.
const AAD: &[u8] = b"modelgw-console-session-v1";
const NONCE_LEN: usize = 24;
/// Cookie name when `Secure` is set: the `__Host-` prefix makes the browser refuse it unless it
/// is `Secure`, has path `/` and no domain, so a sibling subdomain cannot plant one.
const SECURE_COOKIE: &str = "__Host-modelgw_session";
/// Cookie name on loopback over plain HTTP (the demo, local use).
const PLAIN_COOKIE: &str = "modelgw_session";
/// A session's `last_active` is rewritten at most this often (each rewrite is a Set-Cookie).
const TOUCH_EVERY_SECS: i64 = 60;

/// What the sealed cookie holds.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The credential the API checks on every call. Never rendered, never logged.
    #[serde(rename = "t")]
    pub token: String,
    /// Every form and htmx request must carry it back (`_csrf` field or `x-csrf-token`).
    #[serde(rename = "c")]
    pub csrf: String,
    /// Unix seconds of sign-in.
    #[serde(rename = "i")]
    pub issued: i64,
    /// Unix seconds of the last request.
    #[serde(rename = "a")]
    pub active: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &"<redacted>")
            .field("issued", &self.issued)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(token: String) -> Session {
        let now = Utc::now().timestamp();
        Session { token, csrf: random_token(), issued: now, active: now }
    }

    /// Does `presented` match this session's CSRF token (constant time)?
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Why a cookie did not give a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoSession {
    /// No session cookie at all.
    Absent,
    /// A cookie that does not open (another key, altered, or not ours).
    Invalid,
    /// Too long without a request, or too long since sign-in.
    Expired,
}

/// Seals and opens session cookies.
pub(crate) struct Sessions {
    cipher: XChaCha20Poly1305,
    idle: i64,
    max_age: i64,
    insecure_cookies: bool,
}

impl Sessions {
    pub fn new(settings: &ConsoleSettings) -> Sessions {
        Sessions {
            cipher: XChaCha20Poly1305::new((&settings.session_key).into()),
            idle: secs(settings.idle_timeout),
            max_age: secs(settings.max_age),
            insecure_cookies: settings.insecure_cookies,
        }
    }

    /// The session the request's cookie holds, if it is ours and current.
    pub fn open(&self, headers: &HeaderMap) -> Result<Session, NoSession> {
        let value = cookie_value(headers, SECURE_COOKIE)
            .or_else(|| cookie_value(headers, PLAIN_COOKIE))
            .ok_or(NoSession::Absent)?;
        let session = self.unseal(value).ok_or(NoSession::Invalid)?;
        let now = Utc::now().timestamp();
        if now - session.active > self.idle || now - session.issued > self.max_age {
            return Err(NoSession::Expired);
        }
        Ok(session)
    }

    /// The `Set-Cookie` value that stores `session` (sealed afresh, new nonce).
    pub fn set_cookie(&self, headers: &HeaderMap, session: &Session) -> String {
        let sealed = self.seal(session);
        let (name, secure) = self.cookie_name(headers);
        format!("{name}={sealed}; Path=/; HttpOnly; SameSite=Strict{secure}")
    }

    /// A `Set-Cookie` that replaces the session with `session` marked active now, when the
    /// last mark is old enough to be worth a new cookie.
    pub fn touch(&self, headers: &HeaderMap, session: &Session) -> Option<String> {
        let now = Utc::now().timestamp();
        (now - session.active >= TOUCH_EVERY_SECS).then(|| {
            let mut touched = session.clone();
            touched.active = now;
            self.set_cookie(headers, &touched)
        })
    }

    /// The `Set-Cookie` that removes the session.
    pub fn clear_cookie(&self, headers: &HeaderMap) -> String {
        let (name, secure) = self.cookie_name(headers);
        format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
    }

    /// `Secure` (with the `__Host-` name) unless the request is to a loopback host over plain
    /// HTTP, or insecure cookies were configured.
    fn cookie_name(&self, headers: &HeaderMap) -> (&'static str, &'static str) {
        if self.insecure_cookies || is_loopback_host(headers) {
            (PLAIN_COOKIE, "")
        } else {
            (SECURE_COOKIE, "; Secure")
        }
    }

    fn seal(&self, session: &Session) -> String {
        self.seal_value(AAD, session)
    }

    fn unseal(&self, value: &str) -> Option<Session> {
        self.open_value(AAD, value)
    }

    /// Seals `value` (JSON) under the console key, bound to `aad`: base64url of nonce and
    /// ciphertext. Also used for the sign-in transaction of OpenID Connect.
    pub fn seal_value<T: Serialize>(&self, aad: &[u8], value: &T) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let plaintext = serde_json::to_vec(value).unwrap_or_default();
        // Encryption with a valid key and nonce does not fail; an empty value would just not open.
        let ciphertext =
            self.cipher.encrypt(&nonce, Payload { msg: &plaintext, aad }).unwrap_or_default();
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        URL_SAFE_NO_PAD.encode(blob)
    }

    /// Opens what [`Sessions::seal_value`] sealed with the same `aad`.
    pub fn open_value<T: serde::de::DeserializeOwned>(&self, aad: &[u8], value: &str) -> Option<T> {
        let blob = URL_SAFE_NO_PAD.decode(value).ok()?;
        if blob.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
            .ok()?;
        serde_json::from_slice(&plaintext).ok()
    }

    /// `; Secure` unless the request is to a loopback host or insecure cookies were configured.
    pub fn secure_attribute(&self, headers: &HeaderMap) -> &'static str {
        self.cookie_name(headers).1
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// 32 random bytes (the thread-local CSPRNG, seeded from the OS), base64url.
pub(crate) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Is the request addressed to `localhost`, 127.0.0.0/8 or `[::1]`?
pub(crate) fn is_loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn sessions(idle: u64) -> Sessions {
        let mut settings = ConsoleSettings::new([7; 32]);
        settings.idle_timeout = Duration::from_secs(idle);
        Sessions::new(&settings)
    }

    fn request_with(cookie: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_str(host).unwrap());
        if let Some((_, value)) = cookie.split_once(": ") {
            let pair = value.split(';').next().unwrap();
            h.insert(COOKIE, HeaderValue::from_str(pair).unwrap());
        } else {
            let pair = cookie.split(';').next().unwrap();
            h.insert(COOKIE, HeaderValue::from_str(pair).unwrap());
        }
        h
    }

    #[test]
    fn a_sealed_session_opens_and_keeps_its_fields() {
        let s = sessions(60);
        let session = Session::new("tok-secret".into());
        let set = s.set_cookie(&request_with("", "console.example.com"), &session);
        assert!(set.starts_with("__Host-modelgw_session="), "{set}");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.contains("; Secure"));
        assert!(!set.contains("tok-secret"), "the credential is sealed");
        let opened = s.open(&request_with(&set, "console.example.com")).unwrap();
        assert_eq!(opened.token, "tok-secret");
        assert_eq!(opened.csrf, session.csrf);
    }

    #[test]
    fn loopback_hosts_get_a_plain_cookie() {
        let s = sessions(60);
        for host in ["127.0.0.1:4000", "localhost:4000", "[::1]:4000", "localhost"] {
            let set = s.set_cookie(&request_with("", host), &Session::new("t".into()));
            assert!(set.starts_with("modelgw_session=") && !set.contains("Secure"), "{host}");
        }
        assert!(!is_loopback_host(&request_with("", "127.example.com")));
    }

    #[test]
    fn altered_foreign_and_expired_cookies_do_not_open() {
        let s = sessions(60);
        let set = s.set_cookie(&request_with("", "localhost"), &Session::new("t".into()));
        // One character changed.
        let value = set.split(';').next().unwrap();
        let mut altered = value.to_owned();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(s.open(&request_with(&altered, "localhost")).err(), Some(NoSession::Invalid));
        // Sealed under another key.
        let other = Sessions::new(&ConsoleSettings::new([8; 32]));
        assert_eq!(other.open(&request_with(&set, "localhost")).err(), Some(NoSession::Invalid));
        // Idle too long.
        let mut old = Session::new("t".into());
        old.active -= 61;
        let set = s.set_cookie(&request_with("", "localhost"), &old);
        assert_eq!(s.open(&request_with(&set, "localhost")).err(), Some(NoSession::Expired));
        // No cookie.
        assert_eq!(s.open(&HeaderMap::new()).err(), Some(NoSession::Absent));
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        let session = Session::new("tok-secret".into());
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches("x"));
        assert!(!format!("{session:?}").contains("tok-secret"));
    }
}
