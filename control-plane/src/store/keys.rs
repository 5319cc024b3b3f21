//! Gateway keys (only their SHA-256 is stored) and the admin token (likewise).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use modelgw_model::{ConfigVersion, GatewayId, GatewayKeyId, Secret, gateway_key_hash};
use sqlx::AnyConnection;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::audit::{
    self, AuditAction, AuditContext, AuditEntity, Change, gateway_key_view, revoked_view,
};
use super::gateways::not_found as gateway_not_found;
use super::{
    ADMIN_TOKEN_SETTING, GatewayKeyRecord, Store, StoreError, conflict_on_unique, decode_error,
    now_ms, parse_column, time_from_db,
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

const SELECT_KEY: &str =
    "SELECT id, gateway_id, name, hint, created_at, revoked_at FROM gateway_keys";

impl Store {
    /// Creates a key; returns the record and the secret, which is never retrievable again.
    #[tracing::instrument(name = "store.create_gateway_key", skip_all, fields(gateway.id = %gateway_id, key.name = %name, key.id))]
    pub async fn create_gateway_key(
        &self,
        gateway_id: GatewayId,
        name: String,
        audit: &AuditContext,
    ) -> Result<(GatewayKeyRecord, Secret, ConfigVersion), StoreError> {
        let id = GatewayKeyId::new();
        tracing::Span::current().record("key.id", tracing::field::display(id));
        let secret = generate_secret(GATEWAY_KEY_PREFIX);
        let (mut tx, version) = self.begin_write().await?;
        ensure_gateway(&mut tx, gateway_id).await?;
        sqlx::query(
            "INSERT INTO gateway_keys (id, gateway_id, name, sha256, hint, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(id.to_string())
        .bind(gateway_id.to_string())
        .bind(name)
        .bind(gateway_key_hash(secret.expose()).to_vec())
        .bind(secret.hint())
        .bind(now_ms())
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

    /// All keys of the gateway, revoked ones included (with `revoked_at`).
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

    /// Returns the key (with its `revoked_at`) and the version committed. Revoking an already
    /// revoked key succeeds, keeps its first `revoked_at` and commits nothing (`None`): DELETE
    /// is idempotent for clients that retry, and a retry is not a change to audit.
    #[tracing::instrument(name = "store.revoke_gateway_key", skip_all, fields(gateway.id = %gateway_id, key.id = %key_id))]
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
        sqlx::query("UPDATE gateway_keys SET revoked_at = $3 WHERE id = $1 AND gateway_id = $2")
            .bind(key_id.to_string())
            .bind(gateway_id.to_string())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let revoked = fetch_key(&mut tx, gateway_id, key_id).await?;
        let change = Change::changed(
            AuditEntity::GatewayKey,
            key_id,
            &revoked.name,
            AuditAction::Revoke,
            &revoked_view(None),
            &revoked_view(revoked.revoked_at),
            &[],
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        tracing::debug!(key.name = %revoked.name, "gateway key revoked");
        let version = self.commit(tx, version, "gateway key revoked").await?;
        Ok((revoked, Some(version)))
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

fn key_from_row(row: &AnyRow) -> Result<GatewayKeyRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let gateway_id: String = row.try_get("gateway_id")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(GatewayKeyRecord {
        id: parse_column("id", &id)?,
        gateway_id: parse_column("gateway_id", &gateway_id)?,
        name: row.try_get("name")?,
        hint: row.try_get("hint")?,
        created_at: time_from_db("created_at", row.try_get("created_at")?)?,
        revoked_at: revoked_at.map(|ms| time_from_db("revoked_at", ms)).transpose()?,
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
