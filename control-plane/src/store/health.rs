//! Endpoint health as each data plane last reported it: NOT configuration. Writes here never
//! bump the configuration version; they exist so a restarted control plane, and other
//! replicas on the same database, know which endpoints the fleet is avoiding.

use chrono::{DateTime, Utc};
use modelgw_model::{EndpointId, EndpointState, NodeId};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::audit::{self, AuditAction, AuditContext, AuditEntity};
use super::{Store, StoreError, decode_error, parse_column, time_from_db};
use crate::metrics::StoreOperation;

/// One data plane's latest report about one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointHealthRecord {
    pub endpoint_id: EndpointId,
    pub node_id: NodeId,
    /// The state as reported; whether its window is still running is the reader's question.
    pub state: EndpointState,
    /// Until when the data plane avoids the endpoint; `None` when the report gave no window.
    pub until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// The most recent failure this data plane reported (kept when it later reports healthy).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// When the control plane received the report.
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// Upserts each record in one transaction. A row already holding a newer report (written
    /// by another replica) is left as it is.
    #[tracing::instrument(name = "store.upsert_endpoint_health", skip_all, fields(rows = records.len()), level = "debug")]
    pub async fn upsert_endpoint_health(
        &self,
        records: &[EndpointHealthRecord],
    ) -> Result<(), StoreError> {
        let _timer = self.metrics.time_store(StoreOperation::WriteEndpointHealth);
        let mut tx = self.pool.begin().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO endpoint_health (endpoint_id, node_id, state, until_ms, reason, \
                 last_error, last_error_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (endpoint_id, node_id) DO UPDATE SET state = excluded.state, \
                 until_ms = excluded.until_ms, reason = excluded.reason, \
                 last_error = excluded.last_error, last_error_at = excluded.last_error_at, \
                 updated_at = excluded.updated_at \
                 WHERE endpoint_health.updated_at <= excluded.updated_at",
            )
            .bind(r.endpoint_id.to_string())
            .bind(r.node_id.0.clone())
            .bind(r.state.as_str())
            .bind(r.until.map(|t| t.timestamp_millis()))
            .bind(r.reason.clone())
            .bind(r.last_error.clone())
            .bind(r.last_error_at.map(|t| t.timestamp_millis()))
            .bind(r.updated_at.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every stored report about a configured endpoint (rows of deleted endpoints are left
    /// out), sorted by endpoint and node.
    #[tracing::instrument(name = "store.load_endpoint_health", skip_all, level = "debug")]
    pub async fn load_endpoint_health(&self) -> Result<Vec<EndpointHealthRecord>, StoreError> {
        let _timer = self.metrics.time_store(StoreOperation::LoadEndpointHealth);
        let rows = sqlx::query(
            "SELECT h.endpoint_id, h.node_id, h.state, h.until_ms, h.reason, h.last_error, \
             h.last_error_at, h.updated_at FROM endpoint_health h \
             JOIN inference_endpoints e ON e.id = h.endpoint_id \
             ORDER BY h.endpoint_id, h.node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Deletes reports received before `cutoff` whose window (if any) also ended before it,
    /// so node ids of long-gone data planes do not accumulate, and resets older than `cutoff`
    /// or of deleted endpoints. Returns the rows deleted.
    #[tracing::instrument(name = "store.prune_endpoint_health", skip_all, level = "debug")]
    pub async fn prune_endpoint_health(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let ms = cutoff.timestamp_millis();
        let mut tx = self.pool.begin().await?;
        let reports = sqlx::query(
            "DELETE FROM endpoint_health WHERE updated_at < $1 \
             AND (until_ms IS NULL OR until_ms < $1)",
        )
        .bind(ms)
        .execute(&mut *tx)
        .await?;
        let resets = sqlx::query(
            "DELETE FROM endpoint_health_resets WHERE reset_at < $1 \
             OR endpoint_id NOT IN (SELECT id FROM inference_endpoints)",
        )
        .bind(ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(reports.rows_affected() + resets.rows_affected())
    }

    /// Records an operator's reset of an endpoint's health at `at` (a later stored reset is
    /// kept), with its audit row in the same transaction. Not configuration: the version does
    /// not change.
    #[tracing::instrument(name = "store.record_health_reset", skip_all, fields(endpoint_id = %endpoint_id), level = "debug")]
    pub async fn record_health_reset(
        &self,
        endpoint_id: EndpointId,
        at: DateTime<Utc>,
        audit: &AuditContext,
    ) -> Result<(), StoreError> {
        // Reads, then writes: on SQLite the write lock is taken up front, or a concurrent
        // health write would make the upgrade fail with SQLITE_BUSY.
        let mut tx = self.begin_unversioned_write().await?;
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM inference_endpoints WHERE id = $1")
                .bind(endpoint_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(name) = name else {
            return Err(StoreError::NotFound {
                entity: "inference endpoint",
                id: endpoint_id.to_string(),
            });
        };
        sqlx::query(
            "INSERT INTO endpoint_health_resets (endpoint_id, reset_at) VALUES ($1, $2) \
             ON CONFLICT (endpoint_id) DO UPDATE SET reset_at = excluded.reset_at \
             WHERE endpoint_health_resets.reset_at < excluded.reset_at",
        )
        .bind(endpoint_id.to_string())
        .bind(at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        let mut after = serde_json::Map::new();
        after.insert("health_reset_at".to_owned(), audit::time_value(at));
        let change = audit::Change {
            entity: AuditEntity::InferenceEndpoint,
            entity_id: endpoint_id.to_string(),
            entity_name: name,
            action: AuditAction::ResetHealth,
            before: None,
            after: Some(after),
        };
        audit::record(&mut tx, audit, change, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest reset of every configured endpoint that has one.
    #[tracing::instrument(name = "store.load_health_resets", skip_all, level = "debug")]
    pub async fn load_health_resets(&self) -> Result<Vec<(EndpointId, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.endpoint_id, r.reset_at FROM endpoint_health_resets r \
             JOIN inference_endpoints e ON e.id = r.endpoint_id ORDER BY r.endpoint_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("endpoint_id")?;
                Ok((
                    parse_column("endpoint_health_resets.endpoint_id", &id)?,
                    time_from_db("endpoint_health_resets.reset_at", row.try_get("reset_at")?)?,
                ))
            })
            .collect()
    }
}

fn state_from_db(s: &str) -> Result<EndpointState, StoreError> {
    match s {
        "healthy" => Ok(EndpointState::Healthy),
        "throttling" => Ok(EndpointState::Throttling),
        "error" => Ok(EndpointState::Error),
        other => Err(decode_error("endpoint_health.state", format!("unknown {other:?}"))),
    }
}

fn optional_time(column: &str, ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(|ms| time_from_db(column, ms)).transpose()
}

fn record_from_row(row: &AnyRow) -> Result<EndpointHealthRecord, StoreError> {
    let endpoint_id: String = row.try_get("endpoint_id")?;
    let state: String = row.try_get("state")?;
    Ok(EndpointHealthRecord {
        endpoint_id: parse_column("endpoint_health.endpoint_id", &endpoint_id)?,
        node_id: NodeId(row.try_get("node_id")?),
        state: state_from_db(&state)?,
        until: optional_time("endpoint_health.until_ms", row.try_get("until_ms")?)?,
        reason: row.try_get("reason")?,
        last_error: row.try_get("last_error")?,
        last_error_at: optional_time(
            "endpoint_health.last_error_at",
            row.try_get("last_error_at")?,
        )?,
        updated_at: time_from_db("endpoint_health.updated_at", row.try_get("updated_at")?)?,
    })
}
