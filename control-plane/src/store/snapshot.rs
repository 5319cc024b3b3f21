//! The whole configuration at one version, as data planes route with it.

use modelgw_model::keys::KeyLimitPolicy;
use modelgw_model::traces::TraceSettings;
use modelgw_model::{Credential, DEFAULT_ENTRA_SCOPE, Endpoint, Gateway, GatewayKey, Snapshot};
use sqlx::Row as _;

use super::endpoints::platform_from_db;
use super::gateways::{all_members, routing_from_row};
use crate::metrics::StoreOperation;

use super::{AuthMode, Store, StoreError, decode_error, parse_column, version_from_db};

impl Store {
    /// A consistent read of the whole configuration at one version, with endpoint keys
    /// decrypted and revoked gateway keys left out.
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
                 routing_request_timeout_ms FROM gateways ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut members = all_members(&mut tx).await?;
        let key_rows = sqlx::query(
            "SELECT id, gateway_id, name, sha256 FROM gateway_keys WHERE revoked_at IS NULL \
             ORDER BY gateway_id, created_at, id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let version = version_from_db(version)?;
        tracing::Span::current().record("config_version", version.0);

        let mut endpoints = Vec::with_capacity(endpoint_rows.len());
        for row in &endpoint_rows {
            let id: String = row.try_get("id")?;
            let id = parse_column("id", &id)?;
            let platform: String = row.try_get("platform")?;
            let base_url: String = row.try_get("base_url")?;
            let sealed: String = row.try_get("api_key_ciphertext")?;
            let auth: String = row.try_get("auth")?;
            let credential = match super::endpoints::auth_from_db(&auth)? {
                AuthMode::ApiKey => Credential::ApiKey(self.open_api_key(id, &sealed)?),
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

        let mut keys: std::collections::HashMap<String, Vec<GatewayKey>> =
            std::collections::HashMap::new();
        for row in &key_rows {
            let gateway_id: String = row.try_get("gateway_id")?;
            let id: String = row.try_get("id")?;
            let name: String = row.try_get("name")?;
            let sha256: Vec<u8> = row.try_get("sha256")?;
            let sha256 = <[u8; 32]>::try_from(sha256.as_slice())
                .map_err(|_| decode_error("gateway_keys.sha256", "not 32 bytes"))?;
            keys.entry(gateway_id).or_default().push(GatewayKey::new(
                parse_column("gateway_keys.id", &id)?,
                sha256,
                name,
            ));
        }
        let mut gateways = Vec::with_capacity(gateway_rows.len());
        for row in &gateway_rows {
            let id: String = row.try_get("id")?;
            gateways.push(Gateway {
                id: parse_column("gateways.id", &id)?,
                name: row.try_get("name")?,
                members: members.remove(&id).unwrap_or_default(),
                keys: keys.remove(&id).unwrap_or_default(),
                routing: routing_from_row(row)?,
                key_limits: KeyLimitPolicy::default(),
                traces: TraceSettings::default(),
            });
        }
        tracing::debug!(endpoints = endpoints.len(), gateways = gateways.len(), "snapshot loaded");
        // The one rule set every snapshot meets; a refused one is never published.
        let validate = tracing::info_span!("snapshot.validate");
        Ok(validate.in_scope(|| Snapshot::new(version, endpoints, gateways))?)
    }
}
