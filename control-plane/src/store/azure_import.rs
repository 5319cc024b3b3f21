//! Inference Endpoints imported from Azure: upserted by ARM resource id, all in one transaction.

use modelgw_model::{ConfigVersion, EndpointId, Platform, Secret};
use sqlx::Row as _;

use super::{StoreError, commit, now_ms, parse_column, u32_from_db};
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
    pub api_key: Secret,
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
    #[tracing::instrument(name = "store.import_azure_endpoints", skip_all, fields(items = items.len()))]
    pub async fn import_azure_endpoints(
        &self,
        items: Vec<AzureImportItem>,
    ) -> Result<AzureImportOutcome, StoreError> {
        let (mut tx, version) = self.begin_write().await?;
        let mut outcome = AzureImportOutcome::default();
        for item in items {
            let existing = sqlx::query(
                "SELECT id, base_url, deployment, model_name, model_version, region, sku_name, \
                 sku_capacity, api_key_ciphertext FROM inference_endpoints \
                 WHERE LOWER(arm_resource_id) = LOWER($1)",
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
                    // Empty in Entra mode: the key is stored again, the mode stays.
                    let key_same = !sealed.is_empty()
                        && self.open_api_key(id, &sealed)?.expose() == item.api_key.expose();
                    let base_url: String = row.try_get("base_url")?;
                    let same = key_same
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
                    let ciphertext = self.seal_import_key(id, &item.api_key)?;
                    sqlx::query(
                        "UPDATE inference_endpoints SET base_url = $2, deployment = $3, \
                         model_name = $4, model_version = $5, region = $6, sku_name = $7, \
                         sku_capacity = $8, api_key_ciphertext = $9, api_key_hint = $10, \
                         updated_at = $11 WHERE id = $1",
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
                    .bind(item.api_key.hint())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(endpoint.id = %id, arm_resource_id = %item.arm_resource_id, key_rotated = !key_same, "imported endpoint updated");
                    outcome.updated.push(id);
                }
                None => {
                    let id = EndpointId::new();
                    let name = free_name(&mut tx, &item.name).await?;
                    let ciphertext = self.seal_import_key(id, &item.api_key)?;
                    let now = now_ms();
                    sqlx::query(
                        "INSERT INTO inference_endpoints (id, name, platform, base_url, \
                         deployment, model_name, model_version, region, api_key_ciphertext, \
                         api_key_hint, created_at, updated_at, arm_resource_id, sku_name, \
                         sku_capacity) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                         $12, $13, $14, $15)",
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
                    .bind(item.api_key.hint())
                    .bind(now)
                    .bind(now)
                    .bind(item.arm_resource_id.clone())
                    .bind(item.sku_name)
                    .bind(capacity)
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(endpoint.id = %id, endpoint.name = %name, arm_resource_id = %item.arm_resource_id, "imported endpoint created");
                    outcome.created.push(id);
                }
            }
        }
        if outcome.changed() {
            outcome.version = commit(tx, version, "azure endpoints imported").await?;
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

    fn seal_import_key(&self, id: EndpointId, key: &Secret) -> Result<String, StoreError> {
        self.master_key
            .seal(id.to_string().as_bytes(), key.expose().as_bytes())
            .map_err(|e| StoreError::Crypto(format!("inference endpoint {id} api key: {e}")))
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
