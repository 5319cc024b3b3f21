//! Named admin API tokens, each with a role. Only a token's SHA-256 is stored; the token is
//! returned once, by the call that creates it. Tokens are not configuration: their changes
//! never bump the configuration version (data planes never see them), but each is audited.

use chrono::{DateTime, Utc};
use modelgw_model::{Secret, gateway_key_hash};
use serde_json::{Map, Value, json};
use sqlx::Row as _;
use sqlx::any::{Any, AnyRow};
use sqlx::{AnyConnection, AssertSqlSafe, Transaction};
use uuid::Uuid;

use super::audit::{
    self, AuditAction, AuditContext, AuditEntity, Change, revoked_view, time_value,
};
use super::keys::generate_secret;
use super::{Backend, Store, StoreError, conflict_on_unique, now_ms, parse_column, time_from_db};
use crate::metrics::StoreOperation;

const ENTITY: &str = "api token";
/// Prefix of API tokens: recognisable to secret scanners, and distinct from gateway keys
/// (`mgw_`) and the generated bootstrap token (`mgwadm_`). Never contains a `.`, so an API
/// token is never mistaken for a JWT.
pub const API_TOKEN_PREFIX: &str = "mgwtok_";
/// `last_used_at` is written at most this often per token, so that authenticating a request
/// is a read, not a write, nearly every time.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

const SELECT_TOKEN: &str = "SELECT id, name, role, hint, created_by, created_at, expires_at, \
     last_used_at, revoked_at FROM api_tokens";

/// An API token as listed: never the token, only its hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: Uuid,
    /// Unique among all tokens, revoked ones included.
    pub name: String,
    /// `viewer`, `operator` or `admin` (the admin API's roles; the schema checks the value).
    pub role: String,
    /// Last four characters of the token.
    pub hint: String,
    /// The actor that created it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When a request last authenticated with it (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A validated new token.
#[derive(Clone, Debug)]
pub struct NewApiToken {
    pub name: String,
    pub role: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Creates a token; returns the record and the token, which is never retrievable again.
    #[tracing::instrument(name = "store.create_api_token", skip_all, fields(token.name = %new.name, token.role = %new.role, token.id))]
    pub async fn create_api_token(
        &self,
        new: NewApiToken,
        audit: &AuditContext,
    ) -> Result<(ApiTokenRecord, Secret), StoreError> {
        let id = Uuid::now_v7();
        tracing::Span::current().record("token.id", tracing::field::display(id));
        let secret = generate_secret(API_TOKEN_PREFIX);
        let mut tx = self.begin_unversioned_write().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, sha256, hint, created_by, created_at, \
             expires_at, last_used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)",
        )
        .bind(id.to_string())
        .bind(new.name)
        .bind(new.role)
        .bind(gateway_key_hash(secret.expose()).to_vec())
        .bind(secret.hint())
        .bind(audit.actor.clone())
        .bind(now_ms())
        .bind(new.expires_at.map(|t| t.timestamp_millis()))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            // The hash is 256 random bits: a unique violation is the name.
            conflict_on_unique(
                e,
                "name",
                "already used by another API token (a revoked token keeps its name)",
            )
        })?;
        let record = fetch_token(&mut tx, id).await?;
        let change = Change::created(
            AuditEntity::ApiToken,
            id,
            &record.name,
            AuditAction::Create,
            token_view(&record),
        );
        audit::record(&mut tx, audit, change, None).await?;
        tx.commit().await?;
        tracing::info!(actor = %audit.actor, "api token created");
        Ok((record, secret))
    }

    /// Every token, revoked ones included, oldest first.
    #[tracing::instrument(name = "store.list_api_tokens", skip_all)]
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!("{SELECT_TOKEN} ORDER BY created_at, id")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token; requests with it are refused from now on. Revoking a revoked token
    /// succeeds, keeps its first `revoked_at` and records nothing (it changes nothing).
    /// Returns the token and whether this call revoked it.
    #[tracing::instrument(name = "store.revoke_api_token", skip_all, fields(token.id = %id))]
    pub async fn revoke_api_token(
        &self,
        id: Uuid,
        audit: &AuditContext,
    ) -> Result<(ApiTokenRecord, bool), StoreError> {
        let mut tx = self.begin_unversioned_write().await?;
        let updated = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let record = fetch_token(&mut tx, id).await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok((record, false));
        }
        let change = Change::changed(
            AuditEntity::ApiToken,
            id,
            &record.name,
            AuditAction::Revoke,
            &revoked_view(None),
            &revoked_view(record.revoked_at),
            &[],
        );
        audit::record(&mut tx, audit, change, None).await?;
        tx.commit().await?;
        tracing::info!(actor = %audit.actor, token.name = %record.name, "api token revoked");
        Ok((record, true))
    }

    /// The token whose SHA-256 is `sha256`, revoked and expired ones included (the caller
    /// decides, and says why it refused).
    #[tracing::instrument(name = "store.find_api_token", skip_all, level = "debug")]
    pub async fn find_api_token(
        &self,
        sha256: &[u8; 32],
    ) -> Result<Option<ApiTokenRecord>, StoreError> {
        let _timer = self.metrics.time_store(StoreOperation::FindApiToken);
        let row = sqlx::query(AssertSqlSafe(format!("{SELECT_TOKEN} WHERE sha256 = $1")))
            .bind(sha256.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Records that `token` authenticated a request now, unless that was already recorded
    /// within the last minute (then it writes nothing).
    #[tracing::instrument(name = "store.touch_api_token", skip_all, level = "debug")]
    pub async fn touch_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        let now = now_ms();
        let cutoff = now - LAST_USED_GRANULARITY_MS;
        if token.last_used_at.is_some_and(|t| t.timestamp_millis() > cutoff) {
            return Ok(());
        }
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $3)",
        )
        .bind(token.id.to_string())
        .bind(now)
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Begins a write transaction that does not bump the configuration version (for what is
    /// not configuration). On SQLite it takes the write lock at once, like `begin_write`.
    pub(super) async fn begin_unversioned_write(
        &self,
    ) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

/// A token as the audit log shows it: its hint, never the token.
fn token_view(t: &ApiTokenRecord) -> Map<String, Value> {
    match json!({
        "name": t.name,
        "role": t.role,
        "hint": t.hint,
        "expires_at": t.expires_at.map(time_value),
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

async fn fetch_token(conn: &mut AnyConnection, id: Uuid) -> Result<ApiTokenRecord, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT_TOKEN} WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound { entity: ENTITY, id: id.to_string() })?;
    token_from_row(&row)
}

fn token_from_row(row: &AnyRow) -> Result<ApiTokenRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let optional_time = |column: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        row.try_get::<Option<i64>, _>(column)?.map(|ms| time_from_db(column, ms)).transpose()
    };
    Ok(ApiTokenRecord {
        id: parse_column("id", &id)?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        hint: row.try_get("hint")?,
        created_by: row.try_get("created_by")?,
        created_at: time_from_db("created_at", row.try_get("created_at")?)?,
        expires_at: optional_time("expires_at")?,
        last_used_at: optional_time("last_used_at")?,
        revoked_at: optional_time("revoked_at")?,
    })
}
