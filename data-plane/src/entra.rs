//! Microsoft Entra ID tokens for endpoints in `entra` auth mode.
//!
//! One background task per scope fetches a token with the data plane's Azure credential and
//! keeps it in an [`ArcSwapOption`], refreshing it well before it expires and retrying with
//! backoff when a fetch fails. The request path only loads the cached header value
//! ([`EntraTokens::header`]); it never awaits a token fetch. A token within
//! [`EXPIRY_GUARD_MAX`] (or a tenth of its lifetime, whichever is shorter) of its expiry is not
//! handed out, so no request carries a token that expires in flight. Tokens are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use azure_core::credentials::TokenCredential;
use azure_core::time::OffsetDateTime;
use http::HeaderValue;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// Refresh once this fraction of a token's lifetime has passed (Entra tokens live 60–90 min,
/// so a refresh comes with at least 12 min to spare), or [`REFRESH_MARGIN`] before expiry,
/// whichever is sooner.
pub const REFRESH_AT_FRACTION: f64 = 0.8;

/// Refresh at the latest this long before expiry; also what azure_identity's own cache uses.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Floor between two fetches, so a token issued almost expired cannot cause a tight loop.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_millis(200);

/// First retry delay after a failed fetch; doubles per failure up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(500);

/// Longest wait between retries: an identity endpoint that is down is asked at least twice a
/// minute, so endpoints recover soon after it does.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// A token is not handed out this close to its expiry (capped at a tenth of its lifetime):
/// covers the request's time in flight and clock skew with Entra.
pub const EXPIRY_GUARD_MAX: Duration = Duration::from_secs(30);

/// How often [`EntraTokens::wait_ready`] looks at the cache.
const READY_POLL: Duration = Duration::from_millis(20);

struct CachedToken {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// Handed out until then; see [`EXPIRY_GUARD_MAX`].
    usable_until: Instant,
}

#[derive(Default)]
struct Slot {
    current: ArcSwapOption<CachedToken>,
}

/// The current Entra ID token per scope. Cheap to read from the request path.
pub struct EntraTokens {
    credential: Option<Arc<dyn TokenCredential>>,
    slots: ArcSwap<HashMap<Arc<str>, Arc<Slot>>>,
    /// Serializes [`EntraTokens::ensure`]; holds the refresh tasks to stop them on drop.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for EntraTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraTokens")
            .field("configured", &self.credential.is_some())
            .field("scopes", &self.slots.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EntraTokens {
    /// Tokens obtained with `credential`; `None` = no Azure credential configured, so every
    /// `entra` endpoint stays unavailable ("no Entra token").
    pub fn new(credential: Option<Arc<dyn TokenCredential>>) -> Self {
        Self { credential, slots: ArcSwap::default(), tasks: Mutex::new(Vec::new()) }
    }

    /// `Authorization` value for `scope`, if a token is cached and not about to expire.
    pub fn header(&self, scope: &str) -> Option<HeaderValue> {
        let slots = self.slots.load();
        let token = slots.get(scope)?.current.load_full()?;
        (Instant::now() < token.usable_until).then(|| token.header.clone())
    }

    /// Starts keeping a token fresh for each scope not yet tracked. Must run inside a Tokio
    /// runtime. Scopes no longer used keep their (cheap) task until the data plane stops.
    pub fn ensure(&self, scopes: &[Arc<str>]) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.slots.load_full();
        let missing: Vec<&Arc<str>> = scopes.iter().filter(|s| !current.contains_key(*s)).collect();
        if missing.is_empty() {
            return;
        }
        let mut next = HashMap::clone(&current);
        for scope in missing {
            let slot = Arc::new(Slot::default());
            next.insert(Arc::clone(scope), Arc::clone(&slot));
            match &self.credential {
                Some(credential) => {
                    info!(scope = %scope, "keeping an Entra ID token fresh for this scope");
                    let task = tokio::spawn(refresh(
                        Arc::clone(credential),
                        Arc::clone(scope),
                        Arc::downgrade(&slot),
                    ));
                    tasks.push(task.abort_handle());
                }
                None => warn!(
                    scope = %scope,
                    "an endpoint uses Entra ID auth but no Azure credential is configured; it stays unavailable"
                ),
            }
        }
        self.slots.store(Arc::new(next));
    }

    /// Waits until a token for `scope` is cached, at most `timeout`. True when one is.
    pub async fn wait_ready(&self, scope: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.header(scope).is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for EntraTokens {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

/// When to fetch again after getting a token valid for `lifetime`.
fn refresh_delay(lifetime: Duration) -> Duration {
    let by_fraction = lifetime.mul_f64(REFRESH_AT_FRACTION);
    let delay = match lifetime.checked_sub(REFRESH_MARGIN) {
        Some(by_margin) if !by_margin.is_zero() => by_fraction.min(by_margin),
        _ => by_fraction,
    };
    delay.max(MIN_REFRESH_DELAY)
}

/// How long before expiry a token is no longer handed out.
fn expiry_guard(lifetime: Duration) -> Duration {
    (lifetime / 10).min(EXPIRY_GUARD_MAX)
}

fn retry_delay(failures: u32) -> Duration {
    RETRY_MIN.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(RETRY_MAX)
}

/// Keeps `slot` filled with a fresh token for `scope` until the slot is dropped.
async fn refresh(credential: Arc<dyn TokenCredential>, scope: Arc<str>, slot: Weak<Slot>) {
    let mut failures: u32 = 0;
    loop {
        let fetched = credential.get_token(&[&scope], None).await;
        let Some(slot) = slot.upgrade() else { return };
        let wait = match fetched {
            Ok(token) => {
                let now = Instant::now();
                let ms = (token.expires_on - OffsetDateTime::now_utc()).whole_milliseconds();
                let lifetime = Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(u64::MAX));
                match HeaderValue::from_str(&format!("Bearer {}", token.token.secret())) {
                    Ok(mut header) => {
                        header.set_sensitive(true);
                        let usable_until = now + lifetime.saturating_sub(expiry_guard(lifetime));
                        slot.current.store(Some(Arc::new(CachedToken { header, usable_until })));
                        failures = 0;
                        let wait = refresh_delay(lifetime);
                        info!(
                            scope = %scope,
                            lifetime_ms = lifetime.as_millis() as u64,
                            next_refresh_ms = wait.as_millis() as u64,
                            "Entra ID token refreshed"
                        );
                        wait
                    }
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        warn!(scope = %scope, failures, "the Entra ID token is not a valid header value");
                        retry_delay(failures)
                    }
                }
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let wait = retry_delay(failures);
                // One line: azure_identity appends a troubleshooting link on a new line.
                let reason = err.to_string();
                let reason = reason.lines().next().unwrap_or_default();
                warn!(
                    scope = %scope,
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    reason,
                    "fetching an Entra ID token failed"
                );
                wait
            }
        };
        drop(slot);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_at_80_percent_or_5_minutes_before_expiry() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_delay(hour), Duration::from_secs(48 * 60));
        let twenty = Duration::from_secs(20 * 60);
        assert_eq!(refresh_delay(twenty), Duration::from_secs(15 * 60));
        assert_eq!(refresh_delay(Duration::from_secs(3)), Duration::from_millis(2400));
        assert_eq!(refresh_delay(Duration::ZERO), MIN_REFRESH_DELAY);
    }

    #[test]
    fn a_token_is_retired_before_it_is_refreshed_late() {
        let short = Duration::from_secs(3);
        assert!(refresh_delay(short) < short - expiry_guard(short));
        assert_eq!(expiry_guard(Duration::from_secs(3600)), EXPIRY_GUARD_MAX);
    }

    #[test]
    fn retries_back_off_up_to_the_cap() {
        assert_eq!(retry_delay(1), RETRY_MIN);
        assert_eq!(retry_delay(2), RETRY_MIN * 2);
        assert_eq!(retry_delay(40), RETRY_MAX);
    }

    #[test]
    fn an_unconfigured_or_unknown_scope_has_no_token() {
        let tokens = EntraTokens::new(None);
        assert!(tokens.header("https://cognitiveservices.azure.com/.default").is_none());
    }
}
