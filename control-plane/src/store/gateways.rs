//! Gateways and their ordered member lists.

use std::collections::HashMap;

use modelgw_model::keys::KeyLimitPolicy;
use modelgw_model::{
    ConfigVersion, GatewayId, GatewayMember, QuotaPolicy, RoutingPolicy, RoutingStrategy,
};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::audit::{self, AuditAction, AuditContext, AuditEntity, Change, gateway_view};
use super::endpoints::name_conflict;
use super::{
    GatewayPatch, GatewayRecord, NewGateway, Store, StoreError, constraint_kind, decode_error,
    parse_column, time_from_db, u32_from_db,
};

pub(super) const ENTITY: &str = "gateway";

/// Columns `gateway_from_row` reads (a constant, so the formatted queries stay SQL-safe).
const GATEWAY_COLUMNS: &str = "id, name, created_at, updated_at, routing_strategy, \
     routing_wait_for_recovery, routing_request_timeout_ms, routing_quota_enabled, \
     routing_quota_request_window_secs, routing_quota_token_window_secs, \
     routing_quota_reserve_percent, key_default_completion_tokens, key_fail_closed, traces_enabled, traces_capture_payload, traces_redact_fields, \
     traces_max_payload_bytes, traces_retention_days, traces_max_count";

impl Store {
    #[tracing::instrument(name = "store.create_gateway", skip_all, fields(gateway.name = %new.name, gateway.id))]
    pub async fn create_gateway(
        &self,
        new: NewGateway,
        audit: &AuditContext,
    ) -> Result<(GatewayRecord, ConfigVersion), StoreError> {
        let id = GatewayId::new();
        tracing::Span::current().record("gateway.id", tracing::field::display(id));
        let now = super::now_ms();
        let (mut tx, version) = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO gateways (id, name, created_at, updated_at, routing_strategy, \
             routing_wait_for_recovery, routing_request_timeout_ms, routing_quota_enabled, \
             routing_quota_request_window_secs, routing_quota_token_window_secs, \
             routing_quota_reserve_percent, key_default_completion_tokens, key_fail_closed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(id.to_string())
        .bind(new.name)
        .bind(now)
        .bind(now)
        .bind(strategy_to_db(new.routing.strategy))
        .bind(i64::from(new.routing.wait_for_recovery))
        .bind(new.routing.request_timeout_ms.map(i64::from))
        .bind(i64::from(new.routing.quota.enabled))
        .bind(i64::from(new.routing.quota.request_window_secs))
        .bind(i64::from(new.routing.quota.token_window_secs))
        .bind(i64::from(new.routing.quota.reserve_percent))
        .bind(new.key_limits.default_completion_tokens.map(i64::from))
        .bind(i64::from(new.key_limits.fail_closed))
        .execute(&mut *tx)
        .await
        .map_err(|e| name_conflict(e, ENTITY))?;
        super::traces::write_gateway_traces(&mut tx, id, &new.traces).await?;
        insert_members(&mut tx, id, &new.members).await?;
        let record = fetch_gateway(&mut tx, id).await?;
        let change = Change::created(
            AuditEntity::Gateway,
            id,
            &record.name,
            AuditAction::Create,
            gateway_view(&record),
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        Ok((record, self.commit(tx, version, "gateway created").await?))
    }

    #[tracing::instrument(name = "store.list_gateways", skip_all)]
    pub async fn list_gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        // One read transaction, so members match the gateways they are listed under.
        let mut tx = self.begin_read().await?;
        let gateways = sqlx::query(AssertSqlSafe(format!(
            "SELECT {GATEWAY_COLUMNS} FROM gateways ORDER BY name"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let mut members = all_members(&mut tx).await?;
        tx.commit().await?;
        gateways
            .iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let list = members.remove(&id).unwrap_or_default();
                gateway_from_row(row, list)
            })
            .collect()
    }

    #[tracing::instrument(name = "store.get_gateway", skip_all, fields(gateway.id = %id))]
    pub async fn get_gateway(&self, id: GatewayId) -> Result<GatewayRecord, StoreError> {
        let mut tx = self.begin_read().await?;
        let record = fetch_gateway(&mut tx, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    #[tracing::instrument(name = "store.update_gateway", skip_all, fields(gateway.id = %id))]
    pub async fn update_gateway(
        &self,
        id: GatewayId,
        patch: GatewayPatch,
        audit: &AuditContext,
    ) -> Result<(GatewayRecord, ConfigVersion), StoreError> {
        let (mut tx, version) = self.begin_write().await?;
        let current = fetch_gateway(&mut tx, id).await?;
        let routing = patch.routing.unwrap_or(current.routing);
        let key_limits = patch.key_limits.unwrap_or(current.key_limits);
        sqlx::query(
            "UPDATE gateways SET name = $2, updated_at = $3, routing_strategy = $4, \
             routing_wait_for_recovery = $5, routing_request_timeout_ms = $6, \
             routing_quota_enabled = $7, routing_quota_request_window_secs = $8, \
             routing_quota_token_window_secs = $9, routing_quota_reserve_percent = $10, \
             key_default_completion_tokens = $11, key_fail_closed = $12 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(patch.name.unwrap_or_else(|| current.name.clone()))
        .bind(super::now_ms().max(current.updated_at.timestamp_millis()))
        .bind(strategy_to_db(routing.strategy))
        .bind(i64::from(routing.wait_for_recovery))
        .bind(routing.request_timeout_ms.map(i64::from))
        .bind(i64::from(routing.quota.enabled))
        .bind(i64::from(routing.quota.request_window_secs))
        .bind(i64::from(routing.quota.token_window_secs))
        .bind(i64::from(routing.quota.reserve_percent))
        .bind(key_limits.default_completion_tokens.map(i64::from))
        .bind(i64::from(key_limits.fail_closed))
        .execute(&mut *tx)
        .await
        .map_err(|e| name_conflict(e, ENTITY))?;
        if let Some(traces) = &patch.traces {
            super::traces::write_gateway_traces(&mut tx, id, traces).await?;
        }
        if let Some(members) = &patch.members {
            sqlx::query("DELETE FROM gateway_members WHERE gateway_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            insert_members(&mut tx, id, members).await?;
        }
        let record = fetch_gateway(&mut tx, id).await?;
        tracing::debug!(gateway.name = %record.name, members = record.members.len(), "gateway updated");
        let change = Change::changed(
            AuditEntity::Gateway,
            id,
            &record.name,
            AuditAction::Update,
            &gateway_view(&current),
            &gateway_view(&record),
            &[],
        );
        audit::record(&mut tx, audit, change, Some(version)).await?;
        Ok((record, self.commit(tx, version, "gateway updated").await?))
    }

    /// Deletes the gateway and its keys (one audit entry, for the gateway).
    #[tracing::instrument(name = "store.delete_gateway", skip_all, fields(gateway.id = %id))]
    pub async fn delete_gateway(
        &self,
        id: GatewayId,
        audit: &AuditContext,
    ) -> Result<ConfigVersion, StoreError> {
        let (mut tx, version) = self.begin_write().await?;
        let record = fetch_gateway(&mut tx, id).await?;
        // Explicit rather than relying on ON DELETE CASCADE alone: the intent stays visible
        // and does not depend on a per-connection SQLite pragma.
        for sql in [
            // Usage and leases are not configuration and have no foreign key (see the
            // migration): the keys' rows go with them.
            "DELETE FROM key_usage WHERE key_id IN \
             (SELECT id FROM gateway_keys WHERE gateway_id = $1)",
            "DELETE FROM key_leases WHERE key_id IN \
             (SELECT id FROM gateway_keys WHERE gateway_id = $1)",
            "DELETE FROM key_windows WHERE key_id IN \
             (SELECT id FROM gateway_keys WHERE gateway_id = $1)",
            "DELETE FROM gateway_keys WHERE gateway_id = $1",
            "DELETE FROM gateway_members WHERE gateway_id = $1",
        ] {
            sqlx::query(sql).bind(id.to_string()).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM gateways WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let change = Change::deleted(AuditEntity::Gateway, id, &record.name, gateway_view(&record));
        audit::record(&mut tx, audit, change, Some(version)).await?;
        self.commit(tx, version, "gateway deleted").await
    }
}

pub(super) fn not_found(id: GatewayId) -> StoreError {
    StoreError::NotFound { entity: ENTITY, id: id.to_string() }
}

/// Inserts members in the given order. The foreign key names the unknown endpoint and the
/// primary key a repeated one; both are reported with the member's index.
async fn insert_members(
    conn: &mut AnyConnection,
    gateway_id: GatewayId,
    members: &[GatewayMember],
) -> Result<(), StoreError> {
    for (i, m) in members.iter().enumerate() {
        let position = i64::try_from(i).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO gateway_members (gateway_id, endpoint_id, position, enabled, priority, \
             weight) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(gateway_id.to_string())
        .bind(m.endpoint_id.to_string())
        .bind(position)
        .bind(i64::from(m.enabled))
        .bind(i64::from(m.priority))
        .bind(i64::from(m.weight))
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            let field = format!("endpoints[{i}].endpoint_id");
            match constraint_kind(&e) {
                Some(ErrorKind::ForeignKeyViolation) => {
                    StoreError::UnknownEndpoint { field, endpoint_id: m.endpoint_id }
                }
                Some(ErrorKind::UniqueViolation) => StoreError::Conflict {
                    field,
                    reason: format!("endpoint {} is listed more than once", m.endpoint_id),
                },
                _ => StoreError::Database(e),
            }
        })?;
    }
    Ok(())
}

pub(super) async fn fetch_gateway(
    conn: &mut AnyConnection,
    id: GatewayId,
) -> Result<GatewayRecord, StoreError> {
    let row =
        sqlx::query(AssertSqlSafe(format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = $1")))
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| not_found(id))?;
    let member_rows = sqlx::query(
        "SELECT gateway_id, endpoint_id, enabled, priority, weight FROM gateway_members \
         WHERE gateway_id = $1 ORDER BY position",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let members = member_rows.iter().map(member_from_row).collect::<Result<_, _>>()?;
    gateway_from_row(&row, members)
}

/// Members keyed by gateway id (as stored), each list in position order.
/// Every gateway's members, in their configured order, keyed by gateway id (text).
pub(super) async fn all_members(
    conn: &mut AnyConnection,
) -> Result<HashMap<String, Vec<GatewayMember>>, StoreError> {
    let rows = sqlx::query(
        "SELECT gateway_id, endpoint_id, enabled, priority, weight FROM gateway_members \
         ORDER BY gateway_id, position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut grouped: HashMap<String, Vec<GatewayMember>> = HashMap::new();
    for row in &rows {
        let gateway_id: String = row.try_get("gateway_id")?;
        grouped.entry(gateway_id).or_default().push(member_from_row(row)?);
    }
    Ok(grouped)
}

fn member_from_row(row: &AnyRow) -> Result<GatewayMember, StoreError> {
    let endpoint_id: String = row.try_get("endpoint_id")?;
    let enabled: i64 = row.try_get("enabled")?;
    Ok(GatewayMember {
        endpoint_id: parse_column("endpoint_id", &endpoint_id)?,
        enabled: enabled != 0,
        priority: u32_from_db("priority", row.try_get("priority")?)?,
        weight: u32_from_db("weight", row.try_get("weight")?)?,
    })
}

fn gateway_from_row(
    row: &AnyRow,
    members: Vec<GatewayMember>,
) -> Result<GatewayRecord, StoreError> {
    let id: String = row.try_get("id")?;
    Ok(GatewayRecord {
        id: parse_column("id", &id)?,
        name: row.try_get("name")?,
        members,
        routing: routing_from_row(row)?,
        traces: super::traces::gateway_traces_from_row(row)?,
        key_limits: key_limits_from_row(row)?,
        created_at: time_from_db("created_at", row.try_get("created_at")?)?,
        updated_at: time_from_db("updated_at", row.try_get("updated_at")?)?,
    })
}

fn strategy_to_db(strategy: RoutingStrategy) -> &'static str {
    match strategy {
        RoutingStrategy::Weighted => "weighted",
        RoutingStrategy::Fastest => "fastest",
    }
}

/// The key-limit policy columns of a `gateways` row (also read by the snapshot load).
pub(super) fn key_limits_from_row(row: &AnyRow) -> Result<KeyLimitPolicy, StoreError> {
    let default_completion: Option<i64> = row.try_get("key_default_completion_tokens")?;
    let fail_closed: i64 = row.try_get("key_fail_closed")?;
    Ok(KeyLimitPolicy {
        default_completion_tokens: default_completion
            .map(|t| u32_from_db("gateways.key_default_completion_tokens", t))
            .transpose()?,
        fail_closed: fail_closed != 0,
    })
}

/// The routing columns of a `gateways` row (also read by the snapshot load).
pub(super) fn routing_from_row(row: &AnyRow) -> Result<RoutingPolicy, StoreError> {
    let strategy: String = row.try_get("routing_strategy")?;
    let strategy = match strategy.as_str() {
        "weighted" => RoutingStrategy::Weighted,
        "fastest" => RoutingStrategy::Fastest,
        other => {
            return Err(decode_error("gateways.routing_strategy", format!("unknown {other:?}")));
        }
    };
    let wait: i64 = row.try_get("routing_wait_for_recovery")?;
    let timeout: Option<i64> = row.try_get("routing_request_timeout_ms")?;
    Ok(RoutingPolicy {
        strategy,
        wait_for_recovery: wait != 0,
        request_timeout_ms: timeout
            .map(|ms| u32_from_db("gateways.routing_request_timeout_ms", ms))
            .transpose()?,
        quota: quota_from_row(row)?,
    })
}

/// The `routing_quota_*` columns. The migration's CHECKs hold them to the model's ranges; a
/// value outside them (written around the store) is a decode error, not a policy the data
/// plane would have to second-guess.
fn quota_from_row(row: &AnyRow) -> Result<QuotaPolicy, StoreError> {
    let enabled: i64 = row.try_get("routing_quota_enabled")?;
    let window = |column: &'static str| -> Result<u32, StoreError> {
        let secs: i64 = row.try_get(column)?;
        u32::try_from(secs).ok().filter(|s| QuotaPolicy::WINDOW_SECS_RANGE.contains(s)).ok_or_else(
            || decode_error(&format!("gateways.{column}"), format!("out of range: {secs}")),
        )
    };
    let reserve: i64 = row.try_get("routing_quota_reserve_percent")?;
    let reserve_percent = u8::try_from(reserve)
        .ok()
        .filter(|r| QuotaPolicy::RESERVE_PERCENT_RANGE.contains(r))
        .ok_or_else(|| {
            decode_error(
                "gateways.routing_quota_reserve_percent",
                format!("out of range: {reserve}"),
            )
        })?;
    Ok(QuotaPolicy {
        enabled: enabled != 0,
        request_window_secs: window("routing_quota_request_window_secs")?,
        token_window_secs: window("routing_quota_token_window_secs")?,
        reserve_percent,
    })
}
