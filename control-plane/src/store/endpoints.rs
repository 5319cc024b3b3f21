//! Inference Endpoints: CRUD, with the API key sealed at rest.

use modelgw_model::{ConfigVersion, EndpointId, Platform, Secret};
use sqlx::AnyConnection;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::audit::{
    self, AuditAction, AuditContext, AuditEntity, Change, endpoint_view, gateway_view,
};
use super::gateways::fetch_gateway;
use super::{
    AuthMode, EndpointAuth, EndpointPatch, EndpointRecord, NewEndpoint, Store, StoreError,
    conflict_on_unique, decode_error, now_ms, parse_column, time_from_db,
};

const ENTITY: &str = "inference endpoint";

const SELECT_ENDPOINT: &str = "SELECT id, name, platform, base_url, deployment, model_name, \
     model_version, region, auth, api_key_hint, created_at, updated_at FROM inference_endpoints";

impl Store {
    #[tracing::instrument(name = "store.create_endpoint", skip_all, fields(endpoint.name = %new.name, endpoint.id))]
    pub async fn create_endpoint(
        &self,
        new: NewEndpoint,
        audit: &AuditContext,
    ) -> Result<(EndpointRecord, ConfigVersion), StoreError> {
        let id = EndpointId::new();
        tracing::Span::current().record("endpoint.id", tracing::field::display(id));
        let (ciphertext, hint) = self.seal_auth(id, &new.auth)?;
        let now = now_ms();
        let (mut tx, version) = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO inference_endpoints (id, name, platform, base_url, deployment, \
             model_name, model_version, region, api_key_ciphertext, api_key_hint, created_at, \
             updated_at, auth) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(id.to_string())
        .bind(new.name)
        .bind(new.platform.as_str())
        .bind(new.endpoint.as_str().to_owned())
        .bind(new.deployment)
        .bind(new.model_name)
        .bind(new.model_version)
        .bind(new.region)
        .bind(ciphertext)
        .bind(hint)
        .bind(now)
        .bind(now)
        .bind(new.auth.mode().as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| name_conflict(e, ENTITY))?;
        let record = fetch_endpoint(&mut tx, id).await?;
        let change = Change::created(
            AuditEntity::InferenceEndpoint,
            id,
            &record.name,
            AuditAction::Create,
            endpoint_view(&record),
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        Ok((record, self.commit(tx, version, "endpoint created").await?))
    }

    #[tracing::instrument(name = "store.list_endpoints", skip_all)]
    pub async fn list_endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_ENDPOINT} ORDER BY name")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    #[tracing::instrument(name = "store.get_endpoint", skip_all, fields(endpoint.id = %id))]
    pub async fn get_endpoint(&self, id: EndpointId) -> Result<EndpointRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_endpoint(&mut conn, id).await
    }

    #[tracing::instrument(name = "store.update_endpoint", skip_all, fields(endpoint.id = %id))]
    pub async fn update_endpoint(
        &self,
        id: EndpointId,
        patch: EndpointPatch,
        audit: &AuditContext,
    ) -> Result<(EndpointRecord, ConfigVersion), StoreError> {
        let sealed = match &patch.auth {
            Some(auth) => Some(self.seal_auth(id, auth)?),
            None => None,
        };
        let (mut tx, version) = self.begin_write().await?;
        let current = fetch_endpoint(&mut tx, id).await?;
        let before = endpoint_view(&current);
        let key_set = matches!(patch.auth, Some(EndpointAuth::ApiKey(_)));
        let (ciphertext, hint) = match sealed {
            Some((c, h)) => (Some(c), h),
            None => (None, current.api_key_hint.clone()),
        };
        // COALESCE keeps the stored ciphertext when the key is not being rotated, so the
        // current one never has to be decrypted here.
        sqlx::query(
            "UPDATE inference_endpoints SET name = $2, platform = $3, base_url = $4, \
             deployment = $5, model_name = $6, model_version = $7, region = $8, \
             api_key_ciphertext = COALESCE($9, api_key_ciphertext), api_key_hint = $10, \
             updated_at = $11, auth = $12 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(patch.name.unwrap_or(current.name))
        .bind(patch.platform.unwrap_or(current.platform).as_str())
        .bind(patch.endpoint.unwrap_or(current.endpoint).as_str().to_owned())
        .bind(patch.deployment.unwrap_or(current.deployment))
        .bind(patch.model_name.unwrap_or(current.model_name))
        .bind(patch.model_version.unwrap_or(current.model_version))
        .bind(patch.region.unwrap_or(current.region))
        .bind(ciphertext)
        .bind(hint)
        .bind(now_ms().max(current.updated_at.timestamp_millis()))
        .bind(patch.auth.as_ref().map_or(current.auth, EndpointAuth::mode).as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| name_conflict(e, ENTITY))?;
        let record = fetch_endpoint(&mut tx, id).await?;
        tracing::debug!(endpoint.name = %record.name, auth = record.auth.as_str(), credential_changed = patch.auth.is_some(), "endpoint updated");
        // A key rotated to one with the same last four characters is still a rotation.
        let always: &[&str] = if key_set { &["api_key_hint"] } else { &[] };
        let change = Change::changed(
            AuditEntity::InferenceEndpoint,
            id,
            &record.name,
            AuditAction::Update,
            &before,
            &endpoint_view(&record),
            always,
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        Ok((record, self.commit(tx, version, "endpoint updated").await?))
    }

    /// Refuses with `InUse` when a gateway uses it, unless `force` (then memberships go too,
    /// and each gateway it leaves gets an audit entry of its own).
    #[tracing::instrument(name = "store.delete_endpoint", skip_all, fields(endpoint.id = %id, force))]
    pub async fn delete_endpoint(
        &self,
        id: EndpointId,
        force: bool,
        audit: &AuditContext,
    ) -> Result<ConfigVersion, StoreError> {
        let (mut tx, version) = self.begin_write().await?;
        // Checked inside the write transaction, which writers take one at a time.
        let record = fetch_endpoint(&mut tx, id).await?;
        let gateways: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT g.name FROM gateway_members m JOIN gateways g ON g.id = m.gateway_id \
             WHERE m.endpoint_id = $1 ORDER BY g.name",
        )
        .bind(id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        if !gateways.is_empty() {
            if !force {
                return Err(StoreError::InUse { gateways });
            }
            let gateway_ids: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT gateway_id FROM gateway_members WHERE endpoint_id = $1 \
                 ORDER BY gateway_id",
            )
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
            for gateway_id in gateway_ids {
                let gateway =
                    fetch_gateway(&mut tx, parse_column("gateway_id", &gateway_id)?).await?;
                let mut after = gateway.clone();
                after.members.retain(|m| m.endpoint_id != id);
                let change = Change::changed(
                    AuditEntity::Gateway,
                    gateway.id,
                    &gateway.name,
                    AuditAction::Update,
                    &gateway_view(&gateway),
                    &gateway_view(&after),
                    &[],
                );
                audit::record(&mut tx, audit, change, Some(version)).await?;
            }
            sqlx::query("DELETE FROM gateway_members WHERE endpoint_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            tracing::info!(endpoint.name = %record.name, gateways = ?gateways, "forced delete removes the endpoint from gateways");
        }
        // Health is not configuration, but rows of a deleted endpoint describe nothing.
        sqlx::query("DELETE FROM endpoint_health WHERE endpoint_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM inference_endpoints WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tracing::debug!(endpoint.name = %record.name, "endpoint deleted");
        let change = Change::deleted(
            AuditEntity::InferenceEndpoint,
            id,
            &record.name,
            endpoint_view(&record),
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        self.commit(tx, version, "endpoint deleted").await
    }

    fn seal_api_key(&self, id: EndpointId, key: &Secret) -> Result<String, StoreError> {
        self.master_key
            .seal(id.to_string().as_bytes(), key.expose().as_bytes())
            .map_err(|e| StoreError::Crypto(format!("{ENTITY} {id} api key: {e}")))
    }

    /// Ciphertext and hint to store for `auth`; both empty in Entra mode (no key is kept).
    pub(super) fn seal_auth(
        &self,
        id: EndpointId,
        auth: &EndpointAuth,
    ) -> Result<(String, String), StoreError> {
        match auth {
            EndpointAuth::ApiKey(key) => Ok((self.seal_api_key(id, key)?, key.hint())),
            EndpointAuth::Entra => Ok((String::new(), String::new())),
        }
    }

    /// Opens a stored API key; the AAD (the endpoint id) must match the row it came from.
    pub(super) fn open_api_key(&self, id: EndpointId, sealed: &str) -> Result<Secret, StoreError> {
        let bytes = self
            .master_key
            .open(id.to_string().as_bytes(), sealed)
            .map_err(|e| StoreError::Crypto(format!("{ENTITY} {id} api key: {e}")))?;
        String::from_utf8(bytes).map(Secret::new).map_err(|_| {
            StoreError::Crypto(format!("{ENTITY} {id} api key: decrypted value is not UTF-8"))
        })
    }
}

/// A unique violation on an entity's insert/update can only be its name: ids are fresh UUIDs.
pub(super) fn name_conflict(e: sqlx::Error, entity: &str) -> StoreError {
    conflict_on_unique(e, "name", format!("already used by another {entity}"))
}

async fn fetch_endpoint(
    conn: &mut AnyConnection,
    id: EndpointId,
) -> Result<EndpointRecord, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_ENDPOINT} WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound { entity: ENTITY, id: id.to_string() })?;
    endpoint_from_row(&row)
}

pub(super) fn platform_from_db(value: &str) -> Result<Platform, StoreError> {
    Platform::parse(value)
        .ok_or_else(|| decode_error("platform", format!("unknown platform {value:?}")))
}

pub(super) fn auth_from_db(value: &str) -> Result<AuthMode, StoreError> {
    AuthMode::parse(value)
        .ok_or_else(|| decode_error("auth", format!("unknown auth mode {value:?}")))
}

fn endpoint_from_row(row: &AnyRow) -> Result<EndpointRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let platform: String = row.try_get("platform")?;
    let base_url: String = row.try_get("base_url")?;
    Ok(EndpointRecord {
        id: parse_column("id", &id)?,
        name: row.try_get("name")?,
        platform: platform_from_db(&platform)?,
        endpoint: parse_column("base_url", &base_url)?,
        deployment: row.try_get("deployment")?,
        model_name: row.try_get("model_name")?,
        model_version: row.try_get("model_version")?,
        region: row.try_get("region")?,
        auth: auth_from_db(&row.try_get::<String, _>("auth")?)?,
        api_key_hint: row.try_get("api_key_hint")?,
        created_at: time_from_db("created_at", row.try_get("created_at")?)?,
        updated_at: time_from_db("updated_at", row.try_get("updated_at")?)?,
    })
}
