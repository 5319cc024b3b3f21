//! Data-plane join tokens: what a data plane presents on the distribution port when the
//! operator has no PKI for client certificates. Only a token's SHA-256 is stored; the token is
//! returned once, by [`Store::create_data_plane_token`].
//!
//! Not configuration: nothing in a snapshot changes when a token is created or revoked, so
//! these writes never bump the configuration version (which would push a snapshot to every
//! data plane for nothing). Distribution reads the active tokens on its own poll, and the
//! admin API tells it at once (`DataPlaneRegistry::data_plane_tokens_changed`).

use chrono::{DateTime, Utc};
use modelgw_model::{Secret, gateway_key_hash};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::audit::{self, AuditAction, AuditContext, AuditEntity, Change, revoked_view};
use super::keys::generate_secret;
use super::{
    Store, StoreError, conflict_on_unique, decode_error, now_ms, parse_column, time_from_db,
};

const ENTITY: &str = "data-plane token";
/// Prefix of data-plane tokens: recognisable to secret scanners, and distinct from gateway
/// keys (`mgw_`) and admin tokens (`mgwadm_`).
const TOKEN_PREFIX: &str = "mgwdp_";

const SELECT_TOKEN: &str =
    "SELECT id, name, hint, max_data_planes, created_at, revoked_at FROM data_plane_tokens";

/// Identifies a data-plane token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DataPlaneTokenId(pub uuid::Uuid);

impl DataPlaneTokenId {
    pub fn new() -> Self {
        DataPlaneTokenId(uuid::Uuid::now_v7())
    }
}

impl Default for DataPlaneTokenId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for DataPlaneTokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for DataPlaneTokenId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(DataPlaneTokenId)
    }
}

/// A token as the admin API lists it: never the token, only its hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneTokenRecord {
    pub id: DataPlaneTokenId,
    /// Unique among active tokens; binds the node ids of the data planes that use it.
    pub name: String,
    /// Last four characters of the token, e.g. `…9f3c`.
    pub hint: String,
    /// How many distinct data planes may be registered with the token at once.
    pub max_data_planes: u32,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An active token as distribution checks it: the hash a presented token must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveDataPlaneToken {
    pub id: DataPlaneTokenId,
    pub name: String,
    pub sha256: [u8; 32],
    pub max_data_planes: u32,
}

impl Store {
    /// Creates a token; returns the record and the token, which is never retrievable again.
    /// The admin API validated `name`; an active token with the same name is a `Conflict`.
    #[tracing::instrument(name = "store.create_data_plane_token", skip_all, fields(token.name = %name, token.id))]
    pub async fn create_data_plane_token(
        &self,
        name: String,
        max_data_planes: u32,
        audit: &AuditContext,
    ) -> Result<(DataPlaneTokenRecord, Secret), StoreError> {
        let id = DataPlaneTokenId::new();
        tracing::Span::current().record("token.id", tracing::field::display(id));
        let token = generate_token();
        let mut tx = self.begin_unversioned_write().await?;
        sqlx::query(
            "INSERT INTO data_plane_tokens (id, name, sha256, hint, max_data_planes, created_at, \
             revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(gateway_key_hash(token.expose()).to_vec())
        .bind(token.hint())
        .bind(i64::from(max_data_planes))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            conflict_on_unique(e, "name", format!("an active data-plane token is named {name:?}"))
        })?;
        let record = fetch(&mut tx, id).await?;
        let change = Change::created(
            AuditEntity::DataPlaneToken,
            id,
            &record.name,
            AuditAction::Create,
            token_view(&record),
        );
        audit::record(&mut tx, audit, change, None).await?;
        tx.commit().await?;
        tracing::info!(actor = %audit.actor, "data-plane token created");
        Ok((record, token))
    }

    /// Every token, revoked ones included (with `revoked_at`), oldest first.
    #[tracing::instrument(name = "store.list_data_plane_tokens", skip_all)]
    pub async fn list_data_plane_tokens(&self) -> Result<Vec<DataPlaneTokenRecord>, StoreError> {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_TOKEN} ORDER BY created_at, id")))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Revokes a token; revoking a revoked token succeeds and keeps its first `revoked_at`
    /// (DELETE is idempotent for clients that retry). Returns the token as it is now.
    #[tracing::instrument(name = "store.revoke_data_plane_token", skip_all, fields(token.id = %id))]
    pub async fn revoke_data_plane_token(
        &self,
        id: DataPlaneTokenId,
        audit: &AuditContext,
    ) -> Result<DataPlaneTokenRecord, StoreError> {
        let mut tx = self.begin_unversioned_write().await?;
        let updated = sqlx::query(
            "UPDATE data_plane_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let record = fetch(&mut tx, id).await?;
        if updated.rows_affected() == 0 {
            // Already revoked: nothing changes, nothing is recorded.
            tx.rollback().await?;
            return Ok(record);
        }
        let change = Change::changed(
            AuditEntity::DataPlaneToken,
            id,
            &record.name,
            AuditAction::Revoke,
            &revoked_view(None),
            &revoked_view(record.revoked_at),
            &[],
        );
        audit::record(&mut tx, audit, change, None).await?;
        tx.commit().await?;
        tracing::info!(actor = %audit.actor, token.name = %record.name, "data-plane token revoked");
        Ok(record)
    }

    /// The tokens a data plane may present now (not revoked), with their hashes.
    #[tracing::instrument(name = "store.active_data_plane_tokens", skip_all, level = "debug")]
    pub async fn active_data_plane_tokens(&self) -> Result<Vec<ActiveDataPlaneToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, sha256, max_data_planes FROM data_plane_tokens \
             WHERE revoked_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let sha256: Vec<u8> = row.try_get("sha256")?;
                Ok(ActiveDataPlaneToken {
                    id: parse_column("id", &id)?,
                    name: row.try_get("name")?,
                    sha256: <[u8; 32]>::try_from(sha256.as_slice())
                        .map_err(|_| decode_error("sha256", "not 32 bytes"))?,
                    max_data_planes: max_from_db(row.try_get("max_data_planes")?)?,
                })
            })
            .collect()
    }
}

/// A token as the audit log shows it: never the token, only its hint.
fn token_view(t: &DataPlaneTokenRecord) -> serde_json::Map<String, serde_json::Value> {
    let mut view = serde_json::Map::new();
    view.insert("name".into(), t.name.clone().into());
    view.insert("hint".into(), t.hint.clone().into());
    view.insert("max_data_planes".into(), t.max_data_planes.into());
    view
}

/// A new token: `mgwdp_` + 43 characters of URL-safe base64 of 32 random bytes.
fn generate_token() -> Secret {
    generate_secret(TOKEN_PREFIX)
}

async fn fetch(
    conn: &mut sqlx::AnyConnection,
    id: DataPlaneTokenId,
) -> Result<DataPlaneTokenRecord, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_TOKEN} WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound { entity: ENTITY, id: id.to_string() })?;
    record_from_row(&row)
}

fn max_from_db(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| decode_error("max_data_planes", format!("out of range: {v}")))
}

fn record_from_row(row: &AnyRow) -> Result<DataPlaneTokenRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(DataPlaneTokenRecord {
        id: parse_column("id", &id)?,
        name: row.try_get("name")?,
        hint: row.try_get("hint")?,
        max_data_planes: max_from_db(row.try_get("max_data_planes")?)?,
        created_at: time_from_db("created_at", row.try_get("created_at")?)?,
        revoked_at: revoked_at.map(|ms| time_from_db("revoked_at", ms)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape() {
        let t = generate_token();
        let body = t.expose().strip_prefix("mgwdp_").expect("prefix");
        assert_eq!(body.len(), 43);
        assert_ne!(generate_token(), t);
    }
}
