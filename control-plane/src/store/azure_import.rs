//! Inference Endpoints imported from Azure: upserted by ARM resource id, all in one transaction.

use modelgw_model::{ConfigVersion, EndpointId, Platform};
use serde_json::{Map, Value, json};
use sqlx::Row as _;

use super::audit::{self, AuditAction, AuditContext, AuditEntity, Change};
use super::endpoints::auth_from_db;
use super::{AuthMode, EndpointAuth, StoreError, now_ms, parse_column, u32_from_db};
use crate::Store;

/// How many `-2`, `-3`, … suffixes are tried to make a new import's name unique. An inventory
/// with that many same-named deployments is not plausible; failing beats looping forever.
const MAX_NAME_SUFFIX: u32 = 1000;

/// One discovered deployment to create or update, keyed by its ARM resource id.
#[derive(Clone, Debug)]
pub struct AzureImportItem {
    /// ARM resource id of the deployment (matched case-insensitively, as ARM ids are).
    pub arm_resource_id: String,
    /// Name for a new endpoint (`<account>-<deployment>`); made unique with a suffix if taken.
    /// An existing endpoint keeps its name: operators may have renamed it.
    pub name: String,
    pub endpoint: url::Url,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    pub sku_name: String,
    pub sku_capacity: Option<u32>,
    /// The account key (read with `listKeys` at import), or Entra ID (no key read or kept).
    /// An import puts the endpoint in this mode: an existing endpoint in the other mode is
    /// switched (and its stored key dropped when switching to Entra).
    pub auth: EndpointAuth,
}

/// What an import did, per endpoint id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AzureImportOutcome {
    pub created: Vec<EndpointId>,
    pub updated: Vec<EndpointId>,
    pub unchanged: Vec<EndpointId>,
    /// The committed version, or the current one when nothing changed (no bump then).
    pub version: ConfigVersion,
}

impl AzureImportOutcome {
    pub fn changed(&self) -> bool {
        !self.created.is_empty() || !self.updated.is_empty()
    }
}

/// An imported endpoint, with what gateway proposals need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureEndpointRecord {
    pub id: EndpointId,
    pub name: String,
    pub arm_resource_id: String,
    pub model_name: String,
    pub model_version: String,
    pub sku_name: Option<String>,
    pub sku_capacity: Option<u32>,
}

impl Store {
    /// Creates or updates one endpoint per item in ONE transaction and at most ONE version
    /// bump. Nothing is written (and the version is not bumped) when every item is unchanged.
    /// Each created or updated endpoint gets an audit entry of its own (action `import`), so
    /// an endpoint's history is complete when the log is filtered by its id.
    #[tracing::instrument(name = "store.import_azure_endpoints", skip_all, fields(items = items.len()))]
    pub async fn import_azure_endpoints(
        &self,
        items: Vec<AzureImportItem>,
        audit: &AuditContext,
    ) -> Result<AzureImportOutcome, StoreError> {
        let (mut tx, version) = self.begin_write().await?;
        let mut outcome = AzureImportOutcome::default();
        for item in items {
            let existing = sqlx::query(
                "SELECT id, name, base_url, deployment, model_name, model_version, region, \
                 sku_name, sku_capacity, api_key_ciphertext, api_key_hint, auth, arm_resource_id \
                 FROM inference_endpoints WHERE LOWER(arm_resource_id) = LOWER($1)",
            )
            .bind(item.arm_resource_id.clone())
            .fetch_optional(&mut *tx)
            .await?;
            let capacity = item.sku_capacity.map(i64::from);
            match existing {
                Some(row) => {
                    let id_text: String = row.try_get("id")?;
                    let id: EndpointId = parse_column("id", &id_text)?;
                    let sealed: String = row.try_get("api_key_ciphertext")?;
                    let mode = auth_from_db(&row.try_get::<String, _>("auth")?)?;
                    let credential_same = match &item.auth {
                        // Empty in Entra mode, so an Entra endpoint gets a key again.
                        EndpointAuth::ApiKey(key) => {
                            mode == AuthMode::ApiKey
                                && !sealed.is_empty()
                                && self.open_api_key(id, &sealed)?.expose() == key.expose()
                        }
                        // A leftover ciphertext is dropped too: Entra mode keeps no key.
                        EndpointAuth::Entra => mode == AuthMode::Entra && sealed.is_empty(),
                    };
                    let base_url: String = row.try_get("base_url")?;
                    let same = credential_same
                        && base_url == item.endpoint.as_str()
                        && row.try_get::<String, _>("deployment")? == item.deployment
                        && row.try_get::<String, _>("model_name")? == item.model_name
                        && row.try_get::<String, _>("model_version")? == item.model_version
                        && row.try_get::<String, _>("region")? == item.region
                        && row.try_get::<Option<String>, _>("sku_name")?.as_deref()
                            == Some(item.sku_name.as_str())
                        && row.try_get::<Option<i64>, _>("sku_capacity")? == capacity;
                    if same {
                        outcome.unchanged.push(id);
                        continue;
                    }
                    let (ciphertext, hint) = self.seal_auth(id, &item.auth)?;
                    let new_mode = item.auth.mode();
                    let name: String = row.try_get("name")?;
                    let before = ImportView {
                        name: &name,
                        arm_resource_id: &row.try_get::<String, _>("arm_resource_id")?,
                        endpoint: &base_url,
                        deployment: &row.try_get::<String, _>("deployment")?,
                        model_name: &row.try_get::<String, _>("model_name")?,
                        model_version: &row.try_get::<String, _>("model_version")?,
                        region: &row.try_get::<String, _>("region")?,
                        sku_name: row.try_get::<Option<String>, _>("sku_name")?.as_deref(),
                        sku_capacity: row.try_get::<Option<i64>, _>("sku_capacity")?,
                        auth: mode,
                        api_key_hint: &row.try_get::<String, _>("api_key_hint")?,
                    }
                    .fields();
                    let after = ImportView {
                        name: &name,
                        arm_resource_id: &item.arm_resource_id,
                        endpoint: item.endpoint.as_str(),
                        deployment: &item.deployment,
                        model_name: &item.model_name,
                        model_version: &item.model_version,
                        region: &item.region,
                        sku_name: Some(&item.sku_name),
                        sku_capacity: capacity,
                        auth: new_mode,
                        api_key_hint: &hint,
                    }
                    .fields();
                    let key_set = !credential_same && new_mode == AuthMode::ApiKey;
                    let always: &[&str] = if key_set { &["api_key_hint"] } else { &[] };
                    let change = Change::changed(
                        AuditEntity::InferenceEndpoint,
                        id,
                        &name,
                        AuditAction::Import,
                        &before,
                        &after,
                        always,
                    );
                    audit::record(&mut tx, audit, change, Some(version)).await?;
                    sqlx::query(
                        "UPDATE inference_endpoints SET base_url = $2, deployment = $3, \
                         model_name = $4, model_version = $5, region = $6, sku_name = $7, \
                         sku_capacity = $8, api_key_ciphertext = $9, api_key_hint = $10, \
                         updated_at = $11, auth = $12 WHERE id = $1",
                    )
                    .bind(id.to_string())
                    .bind(item.endpoint.as_str().to_owned())
                    .bind(item.deployment)
                    .bind(item.model_name)
                    .bind(item.model_version)
                    .bind(item.region)
                    .bind(item.sku_name)
                    .bind(capacity)
                    .bind(ciphertext)
                    .bind(hint)
                    .bind(now_ms())
                    .bind(new_mode.as_str())
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(
                        endpoint.id = %id,
                        arm_resource_id = %item.arm_resource_id,
                        auth = new_mode.as_str(),
                        auth_switched = mode != new_mode,
                        credential_changed = !credential_same,
                        "imported endpoint updated"
                    );
                    outcome.updated.push(id);
                }
                None => {
                    let id = EndpointId::new();
                    let name = free_name(&mut tx, &item.name).await?;
                    let (ciphertext, hint) = self.seal_auth(id, &item.auth)?;
                    let mode = item.auth.mode();
                    let now = now_ms();
                    let view = ImportView {
                        name: &name,
                        arm_resource_id: &item.arm_resource_id,
                        endpoint: item.endpoint.as_str(),
                        deployment: &item.deployment,
                        model_name: &item.model_name,
                        model_version: &item.model_version,
                        region: &item.region,
                        sku_name: Some(&item.sku_name),
                        sku_capacity: capacity,
                        auth: mode,
                        api_key_hint: &hint,
                    }
                    .fields();
                    let change = Change::created(
                        AuditEntity::InferenceEndpoint,
                        id,
                        &name,
                        AuditAction::Import,
                        view,
                    );
                    audit::record(&mut tx, audit, change, Some(version)).await?;
                    sqlx::query(
                        "INSERT INTO inference_endpoints (id, name, platform, base_url, \
                         deployment, model_name, model_version, region, api_key_ciphertext, \
                         api_key_hint, created_at, updated_at, arm_resource_id, sku_name, \
                         sku_capacity, auth) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                         $11, $12, $13, $14, $15, $16)",
                    )
                    .bind(id.to_string())
                    .bind(name.clone())
                    .bind(Platform::AzureOpenai.as_str())
                    .bind(item.endpoint.as_str().to_owned())
                    .bind(item.deployment)
                    .bind(item.model_name)
                    .bind(item.model_version)
                    .bind(item.region)
                    .bind(ciphertext)
                    .bind(hint)
                    .bind(now)
                    .bind(now)
                    .bind(item.arm_resource_id.clone())
                    .bind(item.sku_name)
                    .bind(capacity)
                    .bind(mode.as_str())
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(endpoint.id = %id, endpoint.name = %name, arm_resource_id = %item.arm_resource_id, auth = mode.as_str(), "imported endpoint created");
                    outcome.created.push(id);
                }
            }
        }
        if outcome.changed() {
            outcome.version = self.commit(tx, version, "azure endpoints imported").await?;
        } else {
            // Rolling back undoes the version bump too: an import that changes nothing must
            // not make every data plane reload an identical snapshot.
            tx.rollback().await?;
            outcome.version = self.config_version().await?;
        }
        Ok(outcome)
    }

    /// Every endpoint that came from an Azure import, by name.
    #[tracing::instrument(name = "store.list_azure_endpoints", skip_all)]
    pub async fn list_azure_endpoints(&self) -> Result<Vec<AzureEndpointRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, arm_resource_id, model_name, model_version, sku_name, sku_capacity \
             FROM inference_endpoints WHERE arm_resource_id IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                Ok(AzureEndpointRecord {
                    id: parse_column("id", &id)?,
                    name: row.try_get("name")?,
                    arm_resource_id: row.try_get("arm_resource_id")?,
                    model_name: row.try_get("model_name")?,
                    model_version: row.try_get("model_version")?,
                    sku_name: row.try_get("sku_name")?,
                    sku_capacity: row
                        .try_get::<Option<i64>, _>("sku_capacity")?
                        .map(|c| u32_from_db("sku_capacity", c))
                        .transpose()?,
                })
            })
            .collect()
    }
}

/// An imported endpoint as the audit log shows it: the hint, never the key.
struct ImportView<'a> {
    name: &'a str,
    arm_resource_id: &'a str,
    endpoint: &'a str,
    deployment: &'a str,
    model_name: &'a str,
    model_version: &'a str,
    region: &'a str,
    sku_name: Option<&'a str>,
    sku_capacity: Option<i64>,
    auth: AuthMode,
    api_key_hint: &'a str,
}

impl ImportView<'_> {
    fn fields(&self) -> Map<String, Value> {
        match json!({
            "name": self.name,
            "platform": Platform::AzureOpenai.as_str(),
            "arm_resource_id": self.arm_resource_id,
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "region": self.region,
            "sku_name": self.sku_name,
            "sku_capacity": self.sku_capacity,
            "auth": self.auth.as_str(),
            "api_key_hint": self.api_key_hint,
        }) {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// `wanted`, or `wanted-2`, `wanted-3`, … whichever no endpoint uses yet (checked inside the
/// write transaction, which writers take one at a time).
async fn free_name(conn: &mut sqlx::AnyConnection, wanted: &str) -> Result<String, StoreError> {
    for n in 1..=MAX_NAME_SUFFIX {
        let candidate = if n == 1 { wanted.to_owned() } else { format!("{wanted}-{n}") };
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM inference_endpoints WHERE name = $1")
                .bind(candidate.clone())
                .fetch_optional(&mut *conn)
                .await?;
        if taken.is_none() {
            return Ok(candidate);
        }
    }
    Err(StoreError::Conflict {
        field: "name".to_owned(),
        reason: format!("no free name like {wanted:?} after {MAX_NAME_SUFFIX} tries"),
    })
}
