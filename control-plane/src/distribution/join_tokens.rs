//! Join tokens on the distribution port: the data-plane credential for teams without a PKI.
//!
//! Rules (README "Securing the distribution port"):
//! - A token is created and revoked through the admin API and stored as its SHA-256 only.
//! - A data plane sends it as `authorization: Bearer <token>` on its stream (over TLS).
//! - Its node id must be the token's name, or start with `<name>-`. Token names are
//!   `[a-z0-9][a-z0-9_]*` (no `-`), so the part of a node id before its first `-` names the one
//!   token that may register it: no holder of one token can speak for a data plane of another.
//! - At most `max_data_planes` distinct node ids are registered with a token at once (its
//!   disconnected entries are dropped first); a new one beyond that gets `RESOURCE_EXHAUSTED`.
//! - Revoking a token ends its open streams and refuses new ones: this replica reloads at once
//!   when the admin API says a token changed, other replicas on their next poll
//!   ([`TOKEN_POLL_INTERVAL`]).

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use modelgw_model::gateway_key_hash;
use tokio::sync::{Notify, watch};

use crate::Store;
use crate::store::{ActiveDataPlaneToken, DataPlaneTokenId};

/// Longest token name: a DNS label, so `<name>-<pod>` stays a plausible host name.
pub const MAX_TOKEN_NAME_CHARS: usize = 63;

/// The bound on distinct data planes per token unless the operator sets one: a region's
/// fleet of gateways with room for rolling restarts, while 1,000 fake node ids from one
/// leaked token stay out of the registry.
pub const DEFAULT_MAX_DATA_PLANES_PER_TOKEN: u32 = 100;

/// The values an operator may give a token's `max_data_planes`.
pub const MAX_DATA_PLANES_PER_TOKEN_RANGE: RangeInclusive<i64> = 1..=10_000;

/// How often every replica re-reads the active tokens, so a token created or revoked through
/// another replica takes effect here within about a second (one indexed query on a small
/// table per second per replica).
pub const TOKEN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The pattern of a token name (JSON Schema / OpenAPI form).
pub fn token_name_pattern() -> String {
    format!("^[a-z0-9][a-z0-9_]{{0,{}}}$", MAX_TOKEN_NAME_CHARS - 1)
}

/// Whether `name` is a usable token name: 1..=[`MAX_TOKEN_NAME_CHARS`] of `[a-z0-9_]`, not
/// starting with `_`, and never a `-` (which separates the name from the rest of a node id).
pub fn valid_token_name(name: &str) -> bool {
    (1..=MAX_TOKEN_NAME_CHARS).contains(&name.len())
        && !name.starts_with('_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether a data plane holding the token named `token_name` may call itself `node_id`.
pub fn node_id_bound_to_token(node_id: &str, token_name: &str) -> bool {
    match node_id.strip_prefix(token_name) {
        Some("") => true,
        Some(rest) => rest.len() > 1 && rest.starts_with('-'),
        None => false,
    }
}

/// An active token, as a stream that presented it holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    pub id: DataPlaneTokenId,
    pub name: String,
    pub max_data_planes: u32,
}

/// The active tokens at one moment.
#[derive(Debug, Default)]
pub(crate) struct ActiveTokens {
    by_hash: HashMap<[u8; 32], Arc<TokenGrant>>,
    ids: HashSet<DataPlaneTokenId>,
}

impl ActiveTokens {
    fn new(tokens: Vec<ActiveDataPlaneToken>) -> ActiveTokens {
        let mut active = ActiveTokens::default();
        for t in tokens {
            active.ids.insert(t.id);
            let grant = TokenGrant { id: t.id, name: t.name, max_data_planes: t.max_data_planes };
            active.by_hash.insert(t.sha256, Arc::new(grant));
        }
        active
    }

    pub(crate) fn contains(&self, id: DataPlaneTokenId) -> bool {
        self.ids.contains(&id)
    }
}

/// The active tokens of this control plane, kept fresh from the store. Cheap to clone.
#[derive(Clone)]
pub struct JoinTokens {
    active: Arc<watch::Sender<Arc<ActiveTokens>>>,
    /// Woken by the admin API after a create or a revoke: reload now, not at the next poll.
    changed: Arc<Notify>,
}

impl Default for JoinTokens {
    fn default() -> Self {
        let (active, _) = watch::channel(Arc::new(ActiveTokens::default()));
        JoinTokens { active: Arc::new(active), changed: Arc::new(Notify::new()) }
    }
}

impl JoinTokens {
    /// The grant of the active token `presented`, if it is one. Compared by SHA-256: a token
    /// is 256 random bits, so a map lookup by its hash reveals nothing about any other.
    pub(crate) fn authenticate(&self, presented: &str) -> Option<Arc<TokenGrant>> {
        self.active.borrow().by_hash.get(&gateway_key_hash(presented)).cloned()
    }

    /// Every change of the active set (a stream watches it to end itself on revocation).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ActiveTokens>> {
        self.active.subscribe()
    }

    /// A token was created or revoked: reload at once.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Reads the active tokens from the store and publishes them.
    pub(crate) async fn reload(&self, store: &Store) -> Result<(), crate::StoreError> {
        let tokens = ActiveTokens::new(store.active_data_plane_tokens().await?);
        let count = tokens.ids.len();
        self.active.send_if_modified(|current| {
            if current.ids == tokens.ids {
                return false;
            }
            let revoked = current.ids.difference(&tokens.ids).count();
            tracing::info!(active = count, revoked, "data-plane tokens reloaded");
            *current = Arc::new(tokens);
            true
        });
        Ok(())
    }

    /// Reloads on every change announced through [`JoinTokens::changed`] and every `poll`.
    pub(crate) async fn keep_fresh(self, store: Store, poll: Duration) {
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.changed.notified() => {}
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.reload(&store).await {
                tracing::warn!(error = %e, "reading data-plane tokens failed; keeping the last set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_cannot_hold_the_separator() {
        assert!(valid_token_name("eastus"));
        assert!(valid_token_name("team_a2"));
        assert!(!valid_token_name("east-us"), "`-` separates the name from the node's suffix");
        assert!(!valid_token_name(""));
        assert!(!valid_token_name("_x"));
        assert!(!valid_token_name("EastUS"));
        assert!(!valid_token_name(&"a".repeat(64)));
        assert!(valid_token_name(&"a".repeat(63)));
        let pattern = token_name_pattern();
        assert_eq!(pattern, "^[a-z0-9][a-z0-9_]{0,62}$");
    }

    #[test]
    fn node_ids_are_bound_to_the_token_name_and_a_suffix() {
        assert!(node_id_bound_to_token("eastus", "eastus"));
        assert!(node_id_bound_to_token("eastus-pod-7f9c", "eastus"));
        assert!(!node_id_bound_to_token("eastus-", "eastus"));
        assert!(!node_id_bound_to_token("eastus2", "eastus"), "another token's name");
        assert!(!node_id_bound_to_token("eastus_b-1", "eastus"));
        assert!(!node_id_bound_to_token("westus-1", "eastus"));
    }
}
