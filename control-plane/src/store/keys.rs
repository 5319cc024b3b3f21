//! Gateway keys (only their SHA-256 is stored), their trees, expiry and limits, and the admin
//! token (likewise).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use modelgw_model::keys::{KeyLimits, MAX_KEY_DEPTH};
use modelgw_model::{ConfigVersion, GatewayId, GatewayKeyId, Secret, gateway_key_hash};
use sqlx::AnyConnection;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::audit::{
    self, AuditAction, AuditContext, AuditEntity, Change, gateway_key_view, revoked_view,
};
use super::gateways::not_found as gateway_not_found;
use super::{
    ADMIN_TOKEN_SETTING, GatewayKeyPatch, GatewayKeyRecord, NewGatewayKey, Store, StoreError,
    conflict_on_unique, decode_error, now_ms, parse_column, time_from_db,
};
use crate::secrets::random_bytes;

const ENTITY: &str = "gateway key";
/// Prefix of gateway key secrets: makes them recognisable to secret scanners and operators.
const GATEWAY_KEY_PREFIX: &str = "mgw_";
/// Prefix of generated admin tokens, distinct from gateway keys so one is never mistaken
/// for the other.
const ADMIN_TOKEN_PREFIX: &str = "mgwadm_";
/// Random bytes in a generated secret: 256 bits, 43 characters of URL-safe base64.
const SECRET_RANDOM_BYTES: usize = 32;

const SELECT_KEY: &str = "SELECT id, gateway_id, name, hint, created_at, revoked_at, parent_id, \
     expires_at, last_used_at, limits FROM gateway_keys";

/// How often `last_used_at` is written per key at most: the admin API shows it to the minute,
/// and a busy key must not cost a write per usage report.
pub const LAST_USED_PRECISION_MS: i64 = 60_000;

impl Store {
    /// Creates a root key without expiry or limits; returns the record and the secret, which
    /// is never retrievable again.
    pub async fn create_gateway_key(
        &self,
        gateway_id: GatewayId,
        name: String,
        audit: &AuditContext,
    ) -> Result<(GatewayKeyRecord, Secret, ConfigVersion), StoreError> {
        self.create_gateway_key_with(gateway_id, NewGatewayKey::named(name), audit).await
    }

    /// Creates a key, possibly below a parent, with an expiry and limits; returns the record
    /// and the secret, which is never retrievable again. The parent must be an active
    /// (neither revoked nor expired) key of the same gateway, and the new key at most
    /// [`MAX_KEY_DEPTH`] levels below a root (`StoreError::Invalid` on `parent_id`).
    #[tracing::instrument(name = "store.create_gateway_key", skip_all, fields(gateway.id = %gateway_id, key.name = %new.name, key.id, key.parent_id))]
    pub async fn create_gateway_key_with(
        &self,
        gateway_id: GatewayId,
        new: NewGatewayKey,
        audit: &AuditContext,
    ) -> Result<(GatewayKeyRecord, Secret, ConfigVersion), StoreError> {
        let id = GatewayKeyId::new();
        let span = tracing::Span::current();
        span.record("key.id", tracing::field::display(id));
        if let Some(parent) = new.parent_id {
            span.record("key.parent_id", tracing::field::display(parent));
        }
        let secret = generate_secret(GATEWAY_KEY_PREFIX);
        let now = now_ms();
        let (mut tx, version) = self.begin_write().await?;
        ensure_gateway(&mut tx, gateway_id).await?;
        if let Some(parent) = new.parent_id {
            check_parent(&mut tx, gateway_id, parent, now).await?;
        }
        sqlx::query(
            "INSERT INTO gateway_keys (id, gateway_id, name, sha256, hint, created_at, \
             revoked_at, parent_id, expires_at, last_used_at, limits) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, NULL, $9)",
        )
        .bind(id.to_string())
        .bind(gateway_id.to_string())
        .bind(new.name)
        .bind(gateway_key_hash(secret.expose()).to_vec())
        .bind(secret.hint())
        .bind(now)
        .bind(new.parent_id.map(|p| p.to_string()))
        .bind(new.expires_at.map(|t| t.timestamp_millis()))
        .bind(limits_to_db(&new.limits)?)
        .execute(&mut *tx)
        .await
        // 256 random bits do not collide; if they ever did, the unique index refuses it.
        .map_err(|e| conflict_on_unique(e, "key", "generated key collided; retry"))?;
        let record = fetch_key(&mut tx, gateway_id, id).await?;
        let change = Change::created(
            AuditEntity::GatewayKey,
            id,
            &record.name,
            AuditAction::Create,
            gateway_key_view(&record),
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        let version = self.commit(tx, version, "gateway key created").await?;
        Ok((record, secret, version))
    }

    /// All keys of the gateway, revoked ones included (with `revoked_at`), oldest first.
    #[tracing::instrument(name = "store.list_gateway_keys", skip_all, fields(gateway.id = %gateway_id))]
    pub async fn list_gateway_keys(
        &self,
        gateway_id: GatewayId,
    ) -> Result<Vec<GatewayKeyRecord>, StoreError> {
        let mut tx = self.begin_read().await?;
        ensure_gateway(&mut tx, gateway_id).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_KEY} WHERE gateway_id = $1 ORDER BY created_at, id"
        )))
        .bind(gateway_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(key_from_row).collect()
    }

    /// One key of the gateway (revoked or not).
    #[tracing::instrument(name = "store.get_gateway_key", skip_all, fields(gateway.id = %gateway_id, key.id = %key_id))]
    pub async fn get_gateway_key(
        &self,
        gateway_id: GatewayId,
        key_id: GatewayKeyId,
    ) -> Result<GatewayKeyRecord, StoreError> {
        let mut tx = self.begin_read().await?;
        ensure_gateway(&mut tx, gateway_id).await?;
        let key = fetch_key(&mut tx, gateway_id, key_id).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Renames a key, sets or removes its expiry, replaces its limits. A revoked key cannot
    /// change (`StoreError::Conflict` on `revoked_at`). An empty patch commits nothing.
    #[tracing::instrument(name = "store.update_gateway_key", skip_all, fields(gateway.id = %gateway_id, key.id = %key_id))]
    pub async fn update_gateway_key(
        &self,
        gateway_id: GatewayId,
        key_id: GatewayKeyId,
        patch: GatewayKeyPatch,
        audit: &AuditContext,
    ) -> Result<(GatewayKeyRecord, Option<ConfigVersion>), StoreError> {
        let (mut tx, version) = self.begin_write().await?;
        ensure_gateway(&mut tx, gateway_id).await?;
        let current = fetch_key(&mut tx, gateway_id, key_id).await?;
        if current.revoked_at.is_some() {
            return Err(StoreError::Conflict {
                field: "revoked_at".into(),
                reason: "the key is revoked; a revoked key cannot change".into(),
            });
        }
        if patch.is_empty() {
            tx.rollback().await?;
            return Ok((current, None));
        }
        let name = patch.name.unwrap_or_else(|| current.name.clone());
        let expires_at = patch.expires_at.unwrap_or(current.expires_at);
        let limits = patch.limits.unwrap_or(current.limits);
        sqlx::query(
            "UPDATE gateway_keys SET name = $3, expires_at = $4, limits = $5 \
             WHERE id = $1 AND gateway_id = $2",
        )
        .bind(key_id.to_string())
        .bind(gateway_id.to_string())
        .bind(name)
        .bind(expires_at.map(|t| t.timestamp_millis()))
        .bind(limits_to_db(&limits)?)
        .execute(&mut *tx)
        .await?;
        let updated = fetch_key(&mut tx, gateway_id, key_id).await?;
        let change = Change::changed(
            AuditEntity::GatewayKey,
            key_id,
            &updated.name,
            AuditAction::Update,
            &gateway_key_view(&current),
            &gateway_key_view(&updated),
            &[],
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        tracing::debug!(key.name = %updated.name, limited = !updated.limits.is_unlimited(), expires = updated.expires_at.is_some(), "gateway key updated");
        let version = self.commit(tx, version, "gateway key updated").await?;
        Ok((updated, Some(version)))
    }

    /// Revokes the key and every active key below it (one transaction, one audit row per key
    /// revoked). Returns the key (with its `revoked_at`) and the version committed. Revoking
    /// an already revoked key succeeds, keeps its first `revoked_at` and commits nothing
    /// (`None`): DELETE is idempotent for clients that retry, and a retry is not a change to
    /// audit.
    #[tracing::instrument(name = "store.revoke_gateway_key", skip_all, fields(gateway.id = %gateway_id, key.id = %key_id, revoked))]
    pub async fn revoke_gateway_key(
        &self,
        gateway_id: GatewayId,
        key_id: GatewayKeyId,
        audit: &AuditContext,
    ) -> Result<(GatewayKeyRecord, Option<ConfigVersion>), StoreError> {
        let (mut tx, version) = self.begin_write().await?;
        ensure_gateway(&mut tx, gateway_id).await?;
        let key = fetch_key(&mut tx, gateway_id, key_id).await?;
        if key.revoked_at.is_some() {
            // Also undoes the version bump.
            tx.rollback().await?;
            tracing::debug!(key.name = %key.name, "gateway key already revoked");
            return Ok((key, None));
        }
        // The subtree, from the gateway's whole tree (small: one gateway's keys).
        let rows = sqlx::query(
            "SELECT id, parent_id FROM gateway_keys WHERE gateway_id = $1 AND revoked_at IS NULL",
        )
        .bind(gateway_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for row in &rows {
            let parent: Option<String> = row.try_get("parent_id")?;
            if let Some(parent) = parent {
                children.entry(parent).or_default().push(row.try_get("id")?);
            }
        }
        let mut subtree = vec![key_id.to_string()];
        let mut i = 0;
        while let Some(id) = subtree.get(i) {
            if let Some(below) = children.remove(id) {
                subtree.extend(below);
            }
            i += 1;
        }
        let now = now_ms();
        for (i, id) in subtree.iter().enumerate() {
            sqlx::query(
                "UPDATE gateway_keys SET revoked_at = $3 WHERE id = $1 AND gateway_id = $2 \
                 AND revoked_at IS NULL",
            )
            .bind(id.clone())
            .bind(gateway_id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let revoked =
                fetch_key(&mut tx, gateway_id, parse_column("gateway_keys.id", id)?).await?;
            let mut after = revoked_view(revoked.revoked_at);
            if i > 0 {
                // Revoked with an ancestor: say which, so the log explains the cascade.
                after.insert("revoked_with".into(), key_id.to_string().into());
            }
            let change = Change::changed(
                AuditEntity::GatewayKey,
                id,
                &revoked.name,
                AuditAction::Revoke,
                &revoked_view(None),
                &after,
                &[],
            );
            audit::record(&mut tx, audit, change, Some(version)).await?;
        }
        let revoked = fetch_key(&mut tx, gateway_id, key_id).await?;
        tracing::Span::current().record("revoked", subtree.len());
        tracing::info!(key.name = %revoked.name, revoked = subtree.len(), "gateway key revoked with its subtree");
        let version = self.commit(tx, version, "gateway key revoked").await?;
        Ok((revoked, Some(version)))
    }

    /// Sets `last_used_at` of each key to `at` where it is older by at least
    /// [`LAST_USED_PRECISION_MS`] (or unset). Not configuration: the version does not change.
    #[tracing::instrument(name = "store.touch_gateway_keys", skip_all, fields(keys = keys.len()), level = "debug")]
    pub async fn touch_gateway_keys(
        &self,
        keys: &[GatewayKeyId],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let at = at.timestamp_millis();
        let mut tx = self.pool.begin().await?;
        for id in keys {
            sqlx::query(
                "UPDATE gateway_keys SET last_used_at = $2 WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at <= $3)",
            )
            .bind(id.to_string())
            .bind(at)
            .bind(at - LAST_USED_PRECISION_MS)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The admin token's SHA-256: from `env_token` when given; else the stored one; else a new
    /// token is generated, its hash stored, and the plaintext returned once (to print).
    ///
    /// An `env_token` is never stored (removing it from the environment falls back to the
    /// stored or generated one), and an empty one counts as not given. This is not a
    /// configuration change, so the version is not bumped.
    #[tracing::instrument(name = "store.admin_token", skip_all, fields(source))]
    pub async fn admin_token(
        &self,
        env_token: Option<&str>,
    ) -> Result<([u8; 32], Option<Secret>), StoreError> {
        let span = tracing::Span::current();
        match env_token {
            Some(token) if !token.trim().is_empty() => {
                span.record("source", "environment");
                return Ok((gateway_key_hash(token), None));
            }
            Some(_) => tracing::warn!("the configured admin token is empty; ignoring it"),
            None => {}
        }
        if let Some(hash) = self.stored_admin_token_hash().await? {
            span.record("source", "stored");
            return Ok((hash, None));
        }
        let token = generate_secret(ADMIN_TOKEN_PREFIX);
        let hash = gateway_key_hash(token.expose());
        // Another replica may be generating one at the same moment: the first insert wins and
        // everyone uses the stored hash.
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(ADMIN_TOKEN_SETTING)
        .bind(STANDARD.encode(hash))
        .execute(&self.pool)
        .await?;
        let stored = self.stored_admin_token_hash().await?.ok_or_else(|| {
            decode_error("settings.value", "admin token hash vanished after insert")
        })?;
        if stored == hash {
            span.record("source", "generated");
            tracing::info!("generated a new admin token; only its hash is stored");
            Ok((hash, Some(token)))
        } else {
            span.record("source", "stored");
            Ok((stored, None))
        }
    }

    async fn stored_admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let value: Option<String> =
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(ADMIN_TOKEN_SETTING)
                .fetch_optional(&self.pool)
                .await?;
        value
            .map(|v| {
                STANDARD
                    .decode(v.trim())
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
                    .ok_or_else(|| {
                        decode_error("settings.value", "admin token hash is not 32 bytes of base64")
                    })
            })
            .transpose()
    }
}

/// A new secret: `prefix` + 43 characters of URL-safe base64 of 32 random bytes.
pub(super) fn generate_secret(prefix: &str) -> Secret {
    let mut bytes = [0u8; SECRET_RANDOM_BYTES];
    random_bytes(&mut bytes);
    Secret::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

async fn ensure_gateway(conn: &mut AnyConnection, id: GatewayId) -> Result<(), StoreError> {
    sqlx::query_scalar::<_, String>("SELECT id FROM gateways WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .map(|_| ())
        .ok_or_else(|| gateway_not_found(id))
}

async fn fetch_key(
    conn: &mut AnyConnection,
    gateway_id: GatewayId,
    id: GatewayKeyId,
) -> Result<GatewayKeyRecord, StoreError> {
    let row =
        sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_KEY} WHERE id = $1 AND gateway_id = $2")))
            .bind(id.to_string())
            .bind(gateway_id.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::NotFound { entity: ENTITY, id: id.to_string() })?;
    key_from_row(&row)
}

/// Refuses a parent that is not an active key of `gateway_id`, or that already sits
/// [`MAX_KEY_DEPTH`] levels below a root.
async fn check_parent(
    conn: &mut AnyConnection,
    gateway_id: GatewayId,
    parent: GatewayKeyId,
    now: i64,
) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::Invalid { field: "parent_id".into(), reason };
    let mut depth = 0;
    let mut current = Some(parent.to_string());
    while let Some(id) = current {
        let row = sqlx::query(
            "SELECT parent_id, revoked_at, expires_at FROM gateway_keys \
             WHERE id = $1 AND gateway_id = $2",
        )
        .bind(id.clone())
        .bind(gateway_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Err(if depth == 0 {
                invalid(format!("{parent} is not a key of this gateway"))
            } else {
                decode_error("gateway_keys.parent_id", format!("{id} is missing"))
            });
        };
        if depth == 0 {
            let revoked_at: Option<i64> = row.try_get("revoked_at")?;
            let expires_at: Option<i64> = row.try_get("expires_at")?;
            if revoked_at.is_some() {
                return Err(invalid(format!("{parent} is revoked")));
            }
            if expires_at.is_some_and(|t| t <= now) {
                return Err(invalid(format!("{parent} has expired")));
            }
        }
        // `depth` levels above the parent so far; the new key sits one below the parent.
        if depth >= MAX_KEY_DEPTH {
            return Err(invalid(format!(
                "the key tree would be deeper than {MAX_KEY_DEPTH} levels below its root"
            )));
        }
        current = row.try_get("parent_id")?;
        if current.is_some() {
            depth += 1;
        }
    }
    Ok(())
}

/// `limits` as stored: the JSON of `KeyLimits`, NULL for none.
pub(super) fn limits_to_db(limits: &KeyLimits) -> Result<Option<String>, StoreError> {
    if limits.is_unlimited() {
        return Ok(None);
    }
    serde_json::to_string(limits)
        .map(Some)
        .map_err(|e| decode_error("gateway_keys.limits", e.to_string()))
}

pub(super) fn limits_from_db(text: Option<String>) -> Result<KeyLimits, StoreError> {
    match text {
        None => Ok(KeyLimits::default()),
        Some(t) => serde_json::from_str(&t)
            .map_err(|e| decode_error("gateway_keys.limits", format!("not KeyLimits JSON: {e}"))),
    }
}

fn optional_time(column: &str, ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(|ms| time_from_db(column, ms)).transpose()
}

fn key_from_row(row: &AnyRow) -> Result<GatewayKeyRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let gateway_id: String = row.try_get("gateway_id")?;
    let parent_id: Option<String> = row.try_get("parent_id")?;
    Ok(GatewayKeyRecord {
        id: parse_column("id", &id)?,
        gateway_id: parse_column("gateway_id", &gateway_id)?,
        name: row.try_get("name")?,
        hint: row.try_get("hint")?,
        created_at: time_from_db("created_at", row.try_get("created_at")?)?,
        revoked_at: optional_time("revoked_at", row.try_get("revoked_at")?)?,
        parent_id: parent_id.map(|p| parse_column("parent_id", &p)).transpose()?,
        expires_at: optional_time("expires_at", row.try_get("expires_at")?)?,
        last_used_at: optional_time("last_used_at", row.try_get("last_used_at")?)?,
        limits: limits_from_db(row.try_get("limits")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let s = generate_secret(GATEWAY_KEY_PREFIX);
        let body = s.expose().strip_prefix("mgw_").expect("prefix");
        assert_eq!(body.len(), 43);
        assert!(body.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(generate_secret(GATEWAY_KEY_PREFIX), s);
        assert!(generate_secret(ADMIN_TOKEN_PREFIX).expose().starts_with("mgwadm_"));
    }
}
