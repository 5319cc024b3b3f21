//! The whole configuration at one version, as data planes route with it.

use std::collections::{HashMap, HashSet};
use std::sync::PoisonError;

use chrono::Utc;
use modelgw_model::{
    Credential, DEFAULT_ENTRA_SCOPE, Endpoint, EndpointId, Gateway, GatewayKey, GatewayKeyId,
    Secret, Snapshot,
};
use sqlx::Row as _;

use super::endpoints::platform_from_db;
use super::gateways::{all_members, key_limits_from_row, routing_from_row};
use super::keys::limits_from_db;
use crate::metrics::StoreOperation;

use super::{AuthMode, Store, StoreError, decode_error, parse_column, version_from_db};

/// Endpoint keys opened by the last snapshot load, by endpoint, each with the sealed form it
/// was opened from (the AAD is the endpoint id, the key: equal sealed forms open to equal keys).
pub(crate) type OpenedKeys = HashMap<EndpointId, (String, Secret)>;

impl Store {
    /// A consistent read of the whole configuration at one version, with endpoint keys
    /// decrypted and revoked gateway keys left out, as are keys already expired and every key
    /// below one left out (see [`key_tree`]).
    #[tracing::instrument(name = "store.load_snapshot", skip_all, fields(config_version))]
    pub async fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        let _timer = self.metrics.time_store(StoreOperation::LoadSnapshot);
        let mut tx = self.begin_read().await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let endpoint_rows = sqlx::query(
            "SELECT id, name, platform, base_url, deployment, model_name, model_version, region, \
             api_key_ciphertext, auth FROM inference_endpoints ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let gateway_rows = sqlx::query(
            "SELECT id, name, routing_strategy, routing_wait_for_recovery, \
                 routing_request_timeout_ms, routing_quota_enabled, \
                 routing_quota_request_window_secs, routing_quota_token_window_secs, \
                 routing_quota_reserve_percent, key_default_completion_tokens, key_fail_closed, \
                 traces_enabled, traces_capture_payload, traces_redact_fields, \
                 traces_max_payload_bytes, traces_retention_days, traces_max_count \
                 FROM gateways ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut members = all_members(&mut tx).await?;
        let key_rows = sqlx::query(
            "SELECT id, gateway_id, name, sha256, parent_id, expires_at, limits \
             FROM gateway_keys WHERE revoked_at IS NULL ORDER BY gateway_id, created_at, id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let version = version_from_db(version)?;
        tracing::Span::current().record("config_version", version.0);

        let mut endpoints = Vec::with_capacity(endpoint_rows.len());
        let mut opened = self.opened_keys.lock().unwrap_or_else(PoisonError::into_inner);
        let mut still_open = OpenedKeys::with_capacity(endpoint_rows.len());
        for row in &endpoint_rows {
            let id: String = row.try_get("id")?;
            let id = parse_column("id", &id)?;
            let platform: String = row.try_get("platform")?;
            let base_url: String = row.try_get("base_url")?;
            let sealed: String = row.try_get("api_key_ciphertext")?;
            let auth: String = row.try_get("auth")?;
            let credential = match super::endpoints::auth_from_db(&auth)? {
                AuthMode::ApiKey => {
                    let key = match opened.remove(&id) {
                        Some((before, key)) if before == sealed => key,
                        _ => self.open_api_key(id, &sealed)?,
                    };
                    still_open.insert(id, (sealed, key.clone()));
                    Credential::ApiKey(key)
                }
                AuthMode::Entra => Credential::Entra { scope: DEFAULT_ENTRA_SCOPE.to_owned() },
            };
            endpoints.push(Endpoint {
                id,
                name: row.try_get("name")?,
                platform: platform_from_db(&platform)?,
                base_url: parse_column("base_url", &base_url)?,
                deployment: row.try_get("deployment")?,
                model_name: row.try_get("model_name")?,
                model_version: row.try_get("model_version")?,
                region: row.try_get("region")?,
                credential,
            });
        }
        // Keys of endpoints gone or moved to Entra are let go with the old map.
        *opened = still_open;
        drop(opened);

        let now = Utc::now().timestamp_millis();
        let mut keys: HashMap<String, Vec<StoredKey>> = HashMap::new();
        for row in &key_rows {
            let gateway_id: String = row.try_get("gateway_id")?;
            let id: String = row.try_get("id")?;
            let name: String = row.try_get("name")?;
            let sha256: Vec<u8> = row.try_get("sha256")?;
            let sha256 = <[u8; 32]>::try_from(sha256.as_slice())
                .map_err(|_| decode_error("gateway_keys.sha256", "not 32 bytes"))?;
            let parent: Option<String> = row.try_get("parent_id")?;
            let mut key = GatewayKey::new(parse_column("gateway_keys.id", &id)?, sha256, name);
            key.parent = parent.map(|p| parse_column("gateway_keys.parent_id", &p)).transpose()?;
            key.expires_unix_ms = row.try_get("expires_at")?;
            key.limits = limits_from_db(row.try_get("limits")?)?;
            keys.entry(gateway_id).or_default().push(StoredKey(key));
        }
        let mut gateways = Vec::with_capacity(gateway_rows.len());
        for row in &gateway_rows {
            let raw_id: String = row.try_get("id")?;
            let id = parse_column("gateways.id", &raw_id)?;
            gateways.push(Gateway {
                id,
                name: row.try_get("name")?,
                members: members.remove(&raw_id).unwrap_or_default(),
                keys: key_tree(keys.remove(&raw_id).unwrap_or_default(), now),
                routing: routing_from_row(row)?,
                key_limits: key_limits_from_row(row)?,
                traces: super::traces::gateway_traces_from_row(row)?.settings(),
                // Derived, never stored: every control-plane replica computes the same key.
                pin_key: self.master_key.pin_key(id),
            });
        }
        tracing::debug!(endpoints = endpoints.len(), gateways = gateways.len(), "snapshot loaded");
        // The one rule set every snapshot meets; a refused one is never published.
        let validate = tracing::info_span!("snapshot.validate");
        Ok(validate.in_scope(|| Snapshot::new(version, endpoints, gateways))?)
    }
}

/// A key as read, before the tree is ordered.
struct StoredKey(GatewayKey);

/// One gateway's active keys as data planes get them: parents before their children; keys
/// already expired at `now_ms` left out with their subtrees (as revoked ones are, by the
/// revocation's cascade); each key's `expires_unix_ms` the earliest expiry on its chain, so a
/// data plane that checks a key's own expiry also honours its ancestors'. `keys` come in
/// creation order, which the order among siblings keeps.
fn key_tree(keys: Vec<StoredKey>, now_ms: i64) -> Vec<GatewayKey> {
    let mut children: HashMap<Option<GatewayKeyId>, Vec<GatewayKey>> = HashMap::new();
    let present: HashSet<GatewayKeyId> = keys.iter().map(|k| k.0.id).collect();
    for StoredKey(key) in keys {
        // A parent missing from the active keys (revoked without its subtree by a write
        // around the store): its children are left out with it.
        if key.parent.is_some_and(|p| !present.contains(&p)) {
            tracing::warn!(key.id = %key.id, "gateway key's parent is not active; left out of the snapshot");
            continue;
        }
        children.entry(key.parent).or_default().push(key);
    }
    let mut ordered = Vec::with_capacity(present.len());
    // Breadth-first from the roots: every parent is listed before its children.
    let mut level: Vec<(GatewayKeyId, Option<i64>)> = Vec::new();
    let mut next = children.remove(&None).unwrap_or_default();
    let mut inherited: HashMap<GatewayKeyId, Option<i64>> = HashMap::new();
    loop {
        for mut key in next.drain(..) {
            let parent_expiry = key.parent.and_then(|p| inherited.get(&p).copied().flatten());
            key.expires_unix_ms = match (key.expires_unix_ms, parent_expiry) {
                (Some(own), Some(up)) => Some(own.min(up)),
                (own, up) => own.or(up),
            };
            if key.expires_unix_ms.is_some_and(|t| t <= now_ms) {
                tracing::debug!(key.id = %key.id, "gateway key expired; left out of the snapshot with its subtree");
                continue;
            }
            level.push((key.id, key.expires_unix_ms));
            ordered.push(key);
        }
        if level.is_empty() {
            break;
        }
        for (id, expiry) in level.drain(..) {
            inherited.insert(id, expiry);
            if let Some(below) = children.remove(&Some(id)) {
                next.extend(below);
            }
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, parent: Option<&GatewayKey>, expires: Option<i64>) -> GatewayKey {
        let mut k = GatewayKey::new(GatewayKeyId::new(), [name.len() as u8; 32], name);
        k.parent = parent.map(|p| p.id);
        k.expires_unix_ms = expires;
        k
    }

    #[test]
    fn parents_come_first_expired_subtrees_are_left_out_and_expiry_is_inherited() {
        let root = key("root", None, Some(5_000));
        let child = key("child", Some(&root), None);
        let grandchild = key("grandchild", Some(&child), Some(9_000));
        let expired = key("expired", None, Some(1_000));
        let under_expired = key("under-expired", Some(&expired), None);
        let other = key("other", None, None);
        // Creation order with a child first (same millisecond, a lower id).
        let stored = [&grandchild, &child, &under_expired, &root, &expired, &other]
            .map(|k| StoredKey((*k).clone()));
        let tree = key_tree(stored.into(), 2_000);
        let names: Vec<&str> = tree.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["root", "other", "child", "grandchild"]);
        let expiry: Vec<Option<i64>> = tree.iter().map(|k| k.expires_unix_ms).collect();
        assert_eq!(expiry, [Some(5_000), None, Some(5_000), Some(5_000)]);
        // Past the root's expiry the whole tree goes.
        let stored = [&root, &child, &grandchild].map(|k| StoredKey((*k).clone()));
        assert!(key_tree(stored.into(), 5_000).is_empty());
    }
}
