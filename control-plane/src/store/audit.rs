//! The audit log: one row per change, written by the mutating store call itself, inside the
//! transaction of the change. A change that rolls back leaves no row; a committed change
//! always has one. Rows never hold a secret: the views below carry hints only (an endpoint's
//! `api_key_hint`, a key's or token's `hint`), never a key, token or ciphertext.

use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use modelgw_model::ConfigVersion;
use serde_json::{Map, Value, json};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row as _};

use super::{
    EndpointRecord, GatewayKeyRecord, GatewayRecord, Store, StoreError, decode_error, now_ms,
    time_from_db, version_from_db,
};

/// Who makes a change and from where. Every mutating store call takes one and records it with
/// the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditContext {
    /// `bootstrap`, `token:<name>` or `oidc:<subject>` through the admin API;
    /// `system:<what>` for changes made in-process ([`AuditContext::system`]).
    pub actor: String,
    /// The admin API request that made the change (its `x-request-id`).
    pub request_id: Option<String>,
    /// The address the request came from (the TCP peer).
    pub client_ip: Option<IpAddr>,
}

impl AuditContext {
    pub fn new(actor: impl Into<String>) -> Self {
        Self { actor: actor.into(), request_id: None, client_ip: None }
    }

    /// A change made in-process rather than through the admin API (benchmarks populating a
    /// store, tests): actor `system:<what>`.
    pub fn system(what: &str) -> Self {
        Self::new(format!("system:{what}"))
    }
}

/// What kind of thing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditEntity {
    InferenceEndpoint,
    Gateway,
    GatewayKey,
    ApiToken,
    DataPlaneToken,
}

impl AuditEntity {
    pub const ALL: [AuditEntity; 5] = [
        AuditEntity::InferenceEndpoint,
        AuditEntity::Gateway,
        AuditEntity::GatewayKey,
        AuditEntity::ApiToken,
        AuditEntity::DataPlaneToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditEntity::InferenceEndpoint => "inference_endpoint",
            AuditEntity::Gateway => "gateway",
            AuditEntity::GatewayKey => "gateway_key",
            AuditEntity::ApiToken => "api_token",
            AuditEntity::DataPlaneToken => "data_plane_token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// What was done to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditAction {
    Create,
    Update,
    Delete,
    Revoke,
    /// Created or updated by an Azure import (`before` is absent when it was created).
    Import,
    /// An operator cleared an endpoint's health (`after.health_reset_at`). Not configuration.
    ResetHealth,
    /// An operator reset a gateway key's usage counters for the current windows
    /// (`before`: the usage counted until then, `after.usage_reset_at`). Not configuration.
    ResetUsage,
}

impl AuditAction {
    pub const ALL: [AuditAction; 7] = [
        AuditAction::Create,
        AuditAction::Update,
        AuditAction::Delete,
        AuditAction::Revoke,
        AuditAction::Import,
        AuditAction::ResetHealth,
        AuditAction::ResetUsage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Delete => "delete",
            AuditAction::Revoke => "revoke",
            AuditAction::Import => "import",
            AuditAction::ResetHealth => "reset_health",
            AuditAction::ResetUsage => "reset_usage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One row of the audit log.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Increasing in insertion order.
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub entity: AuditEntity,
    pub entity_id: String,
    pub entity_name: String,
    pub action: AuditAction,
    /// The fields that changed, as they were (absent on create).
    pub before: Option<Map<String, Value>>,
    /// The fields that changed, as they became (absent on delete).
    pub after: Option<Map<String, Value>>,
    /// The configuration version the change committed (absent for API tokens, which are not
    /// configuration).
    pub config_version: Option<ConfigVersion>,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
}

/// Which entries to read, newest first. Every set field must match.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub entity: Option<AuditEntity>,
    pub entity_id: Option<String>,
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Strictly before.
    pub until: Option<DateTime<Utc>>,
    /// Only entries older than this id (the paging cursor).
    pub before_id: Option<i64>,
    /// At most this many entries.
    pub limit: u32,
}

impl Store {
    /// Audit entries matching `query`, newest first.
    #[tracing::instrument(name = "store.audit_log", skip_all, level = "debug")]
    pub async fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        // Only placeholders are formatted into the SQL; every value is bound, in order.
        enum Bound {
            Text(String),
            Number(i64),
        }
        let filters = [
            ("entity =", query.entity.map(|e| Bound::Text(e.as_str().to_owned()))),
            ("entity_id =", query.entity_id.clone().map(Bound::Text)),
            ("actor =", query.actor.clone().map(Bound::Text)),
            ("action =", query.action.map(|a| Bound::Text(a.as_str().to_owned()))),
            ("at >=", query.since.map(|t| Bound::Number(t.timestamp_millis()))),
            ("at <", query.until.map(|t| Bound::Number(t.timestamp_millis()))),
            ("id <", query.before_id.map(Bound::Number)),
        ];
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        for (condition, value) in filters {
            if let Some(value) = value {
                values.push(value);
                conditions.push(format!("{condition} ${}", values.len()));
            }
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log{where_clause} ORDER BY id DESC LIMIT ${}",
            values.len() + 1
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for value in values {
            q = match value {
                Bound::Text(t) => q.bind(t),
                Bound::Number(n) => q.bind(n),
            };
        }
        let rows = q.bind(i64::from(query.limit)).fetch_all(&self.pool).await?;
        rows.iter().map(entry_from_row).collect()
    }
}

const AUDIT_COLUMNS: &str = "id, at, actor, entity, entity_id, entity_name, action, \
     before_fields, after_fields, config_version, request_id, client_ip";

/// One change to record, as the store call that makes it describes it.
pub(super) struct Change {
    pub entity: AuditEntity,
    pub entity_id: String,
    pub entity_name: String,
    pub action: AuditAction,
    pub before: Option<Map<String, Value>>,
    pub after: Option<Map<String, Value>>,
}

impl Change {
    /// A new entity: every field of its view, after.
    pub fn created(
        entity: AuditEntity,
        id: impl ToString,
        name: &str,
        action: AuditAction,
        view: Map<String, Value>,
    ) -> Self {
        Change {
            entity,
            entity_id: id.to_string(),
            entity_name: name.to_owned(),
            action,
            before: None,
            after: Some(view),
        }
    }

    /// A deleted entity: every field of its view, before.
    pub fn deleted(
        entity: AuditEntity,
        id: impl ToString,
        name: &str,
        view: Map<String, Value>,
    ) -> Self {
        Change {
            entity,
            entity_id: id.to_string(),
            entity_name: name.to_owned(),
            action: AuditAction::Delete,
            before: Some(view),
            after: None,
        }
    }

    /// A changed entity: only the fields whose values differ, plus those in `always` (a key
    /// rotated to one with the same hint is still a change).
    pub fn changed(
        entity: AuditEntity,
        id: impl ToString,
        name: &str,
        action: AuditAction,
        before: &Map<String, Value>,
        after: &Map<String, Value>,
        always: &[&str],
    ) -> Self {
        let (before, after) = diff(before, after, always);
        Change {
            entity,
            entity_id: id.to_string(),
            entity_name: name.to_owned(),
            action,
            before: Some(before),
            after: Some(after),
        }
    }
}

/// The fields of `before` and `after` whose values differ (or are listed in `always`).
fn diff(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    always: &[&str],
) -> (Map<String, Value>, Map<String, Value>) {
    let mut old = Map::new();
    let mut new = Map::new();
    for (field, value) in after {
        let previous = before.get(field).unwrap_or(&Value::Null);
        if previous != value || always.contains(&field.as_str()) {
            old.insert(field.clone(), previous.clone());
            new.insert(field.clone(), value.clone());
        }
    }
    for (field, value) in before {
        if !after.contains_key(field) {
            old.insert(field.clone(), value.clone());
            new.insert(field.clone(), Value::Null);
        }
    }
    (old, new)
}

/// Inserts the audit row of `change` on `conn`, which must be the change's transaction.
pub(super) async fn record(
    conn: &mut AnyConnection,
    context: &AuditContext,
    change: Change,
    version: Option<ConfigVersion>,
) -> Result<(), StoreError> {
    let to_text = |fields: Option<Map<String, Value>>| fields.map(|f| Value::Object(f).to_string());
    let version = version.map(|v| i64::try_from(v.0)).transpose().map_err(|_| {
        decode_error("audit_log.config_version", "configuration version out of range")
    })?;
    sqlx::query(
        "INSERT INTO audit_log (at, actor, entity, entity_id, entity_name, action, \
         before_fields, after_fields, config_version, request_id, client_ip) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(now_ms())
    .bind(context.actor.clone())
    .bind(change.entity.as_str())
    .bind(change.entity_id)
    .bind(change.entity_name)
    .bind(change.action.as_str())
    .bind(to_text(change.before))
    .bind(to_text(change.after))
    .bind(version)
    .bind(context.request_id.clone())
    .bind(context.client_ip.map(|ip| ip.to_string()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn entry_from_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    let fields = |column: &str| -> Result<Option<Map<String, Value>>, StoreError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| match serde_json::from_str(&t) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(decode_error(column, "not a JSON object")),
        })
        .transpose()
    };
    let entity: String = row.try_get("entity")?;
    let action: String = row.try_get("action")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: time_from_db("at", row.try_get("at")?)?,
        actor: row.try_get("actor")?,
        entity: AuditEntity::parse(&entity)
            .ok_or_else(|| decode_error("entity", format!("unknown entity {entity:?}")))?,
        entity_id: row.try_get("entity_id")?,
        entity_name: row.try_get("entity_name")?,
        action: AuditAction::parse(&action)
            .ok_or_else(|| decode_error("action", format!("unknown action {action:?}")))?,
        before: fields("before_fields")?,
        after: fields("after_fields")?,
        config_version: row
            .try_get::<Option<i64>, _>("config_version")?
            .map(version_from_db)
            .transpose()?,
        request_id: row.try_get("request_id")?,
        client_ip: row.try_get("client_ip")?,
    })
}

/// A time as the audit log's JSON shows it.
pub(super) fn time_value(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// An endpoint as the audit log shows it: the hint, never the key.
pub(super) fn endpoint_view(e: &EndpointRecord) -> Map<String, Value> {
    object(json!({
        "name": e.name,
        "platform": e.platform.as_str(),
        "endpoint": e.endpoint.as_str(),
        "deployment": e.deployment,
        "model_name": e.model_name,
        "model_version": e.model_version,
        "region": e.region,
        "auth": e.auth.as_str(),
        "api_key_hint": e.api_key_hint,
    }))
}

/// A gateway as the audit log shows it (its keys are entities of their own).
pub(super) fn gateway_view(g: &GatewayRecord) -> Map<String, Value> {
    object(json!({
        "name": g.name,
        "endpoints": g.members.iter().map(|m| json!({
            "endpoint_id": m.endpoint_id.to_string(),
            "enabled": m.enabled,
            "priority": m.priority,
            "weight": m.weight,
        })).collect::<Vec<_>>(),
        "routing": {
            "strategy": match g.routing.strategy {
                modelgw_model::RoutingStrategy::Weighted => "weighted",
                modelgw_model::RoutingStrategy::Fastest => "fastest",
            },
            "wait_for_recovery": g.routing.wait_for_recovery,
            "request_timeout_ms": g.routing.request_timeout_ms,
            "quota": {
                "enabled": g.routing.quota.enabled,
                "request_window_secs": g.routing.quota.request_window_secs,
                "token_window_secs": g.routing.quota.token_window_secs,
                "reserve_percent": g.routing.quota.reserve_percent,
            },
        },
        "traces": {
            "enabled": g.traces.enabled,
            "capture_payload": g.traces.capture_payload,
            "redact_fields": g.traces.redact_fields,
            "max_payload_bytes": g.traces.max_payload_bytes,
            "retention_days": g.traces.retention_days,
            "max_count": g.traces.max_count,
        },
        "key_limits": {
            "default_completion_tokens": g.key_limits.default_completion_tokens,
            "fail_closed": g.key_limits.fail_closed,
        },
    }))
}

/// A gateway key as the audit log shows it: its hint, never the key.
pub(super) fn gateway_key_view(k: &GatewayKeyRecord) -> Map<String, Value> {
    object(json!({
        "gateway_id": k.gateway_id.to_string(),
        "name": k.name,
        "hint": k.hint,
        "parent_id": k.parent_id.map(|p| p.to_string()),
        "expires_at": k.expires_at.map(time_value),
        "limits": k.limits,
    }))
}

/// `{"revoked_at": t}` or `{"revoked_at": null}`.
pub(super) fn revoked_view(at: Option<DateTime<Utc>>) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("revoked_at".to_owned(), at.map_or(Value::Null, time_value));
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_holds_only_the_changed_fields_and_the_forced_ones() {
        let before = object(json!({"name": "a", "region": "eus", "api_key_hint": "…1234"}));
        let after = object(json!({"name": "b", "region": "eus", "api_key_hint": "…1234"}));
        let (old, new) = diff(&before, &after, &[]);
        assert_eq!(Value::Object(old), json!({"name": "a"}));
        assert_eq!(Value::Object(new), json!({"name": "b"}));
        let (old, new) = diff(&before, &after, &["api_key_hint"]);
        assert_eq!(Value::Object(old), json!({"name": "a", "api_key_hint": "…1234"}));
        assert_eq!(Value::Object(new), json!({"name": "b", "api_key_hint": "…1234"}));
    }

    #[test]
    fn names_round_trip() {
        for e in AuditEntity::ALL {
            assert_eq!(AuditEntity::parse(e.as_str()), Some(e));
        }
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditEntity::parse("Gateway"), None);
    }
}
