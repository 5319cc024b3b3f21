//! The audit log: who changed what, when and from where.
//!
//! [`Caller`] is what every changing handler takes: the authenticated principal and the
//! [`AuditContext`] the store records with the change (in the change's own transaction).
//! `GET /api/v1/audit-log` reads the log, newest first, filtered and paged.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use chrono::{DateTime, Utc};
use http::request::Parts;
use modelgw_control_plane::store::{
    AuditAction, AuditContext, AuditEntity, AuditEntry, AuditQuery,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AdminState;
use crate::identity::Principal;
use crate::problem::{ApiError, Problem};
use crate::trace::current_request_id;

/// Entries per page when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// The most entries one page holds: bounds the response and the query's work.
pub const MAX_LIMIT: u32 = 500;

/// Who is calling and from where, for handlers that change something: what the store records
/// with the change.
#[derive(Clone, Debug)]
pub struct Caller {
    pub audit: AuditContext,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::Internal("a changing route was reached without a principal".to_owned())
        })?;
        // The TCP peer: the router is served with connect info. A proxy's X-Forwarded-For is
        // not trusted: any client can send one.
        let client_ip = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .ok()
            .map(|ConnectInfo(addr)| addr.ip());
        let audit = AuditContext {
            actor: principal.actor(),
            request_id: current_request_id().map(|id| id.to_string()),
            client_ip,
        };
        Ok(Caller { audit })
    }
}

/// What kind of thing an entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditEntityKind {
    InferenceEndpoint,
    Gateway,
    GatewayKey,
    ApiToken,
    DataPlaneToken,
}

impl From<AuditEntityKind> for AuditEntity {
    fn from(e: AuditEntityKind) -> Self {
        match e {
            AuditEntityKind::InferenceEndpoint => AuditEntity::InferenceEndpoint,
            AuditEntityKind::Gateway => AuditEntity::Gateway,
            AuditEntityKind::GatewayKey => AuditEntity::GatewayKey,
            AuditEntityKind::ApiToken => AuditEntity::ApiToken,
            AuditEntityKind::DataPlaneToken => AuditEntity::DataPlaneToken,
        }
    }
}

impl From<AuditEntity> for AuditEntityKind {
    fn from(e: AuditEntity) -> Self {
        match e {
            AuditEntity::InferenceEndpoint => AuditEntityKind::InferenceEndpoint,
            AuditEntity::Gateway => AuditEntityKind::Gateway,
            AuditEntity::GatewayKey => AuditEntityKind::GatewayKey,
            AuditEntity::ApiToken => AuditEntityKind::ApiToken,
            AuditEntity::DataPlaneToken => AuditEntityKind::DataPlaneToken,
        }
    }
}

/// What was done. `import`: created or updated by an Azure import (`before` is absent when it
/// was created).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditActionKind {
    Create,
    Update,
    Delete,
    Revoke,
    Import,
    /// An operator cleared an endpoint's health; not configuration (no version).
    ResetHealth,
    /// An operator reset a gateway key's usage counters for the current windows (`before`:
    /// the usage discarded); not configuration (no version).
    ResetUsage,
}

impl From<AuditActionKind> for AuditAction {
    fn from(a: AuditActionKind) -> Self {
        match a {
            AuditActionKind::Create => AuditAction::Create,
            AuditActionKind::Update => AuditAction::Update,
            AuditActionKind::Delete => AuditAction::Delete,
            AuditActionKind::Revoke => AuditAction::Revoke,
            AuditActionKind::Import => AuditAction::Import,
            AuditActionKind::ResetHealth => AuditAction::ResetHealth,
            AuditActionKind::ResetUsage => AuditAction::ResetUsage,
        }
    }
}

impl From<AuditAction> for AuditActionKind {
    fn from(a: AuditAction) -> Self {
        match a {
            AuditAction::Create => AuditActionKind::Create,
            AuditAction::Update => AuditActionKind::Update,
            AuditAction::Delete => AuditActionKind::Delete,
            AuditAction::Revoke => AuditActionKind::Revoke,
            AuditAction::Import => AuditActionKind::Import,
            AuditAction::ResetHealth => AuditActionKind::ResetHealth,
            AuditAction::ResetUsage => AuditActionKind::ResetUsage,
        }
    }
}

/// Query of `GET /audit-log`. Every filter given must match.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditLogQuery {
    /// Only entries about this kind of entity.
    #[param(inline)]
    pub entity: Option<AuditEntityKind>,
    /// Only entries about the entity with this id.
    pub entity_id: Option<String>,
    /// Only changes by this actor: `bootstrap`, `token:<name>` or `oidc:<subject>`.
    #[param(example = "token:ci")]
    pub actor: Option<String>,
    #[param(inline)]
    pub action: Option<AuditActionKind>,
    /// Only entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this time.
    pub until: Option<DateTime<Utc>>,
    /// Entries per page, 1–500.
    #[param(minimum = 1, maximum = 500, default = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(pattern = r"^[0-9a-f]{16}$")]
    pub cursor: Option<String>,
}

/// One change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    /// Increasing in the order changes were recorded.
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who: `bootstrap`, `token:<name>` or `oidc:<subject>`.
    #[schema(example = "token:ci")]
    pub actor: String,
    pub entity: AuditEntityKind,
    pub entity_id: String,
    /// The entity's name when it was changed.
    pub entity_name: String,
    pub action: AuditActionKind,
    /// The fields that changed, as they were (absent on create and on a created import).
    /// Secrets appear as their hints only (`api_key_hint`, `hint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Map<String, serde_json::Value>>,
    /// The fields that changed, as they became (absent on delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Map<String, serde_json::Value>>,
    /// The configuration version the change committed (absent for API tokens, which are not
    /// part of the configuration data planes receive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
    /// The `x-request-id` of the request that made the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The address the request came from (the TCP peer of the control plane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

impl From<AuditEntry> for AuditEntryResponse {
    fn from(e: AuditEntry) -> Self {
        AuditEntryResponse {
            id: e.id,
            at: e.at,
            actor: e.actor,
            entity: e.entity.into(),
            entity_id: e.entity_id,
            entity_name: e.entity_name,
            action: e.action.into(),
            before: e.before,
            after: e.after,
            config_version: e.config_version.map(|v| v.0),
            request_id: e.request_id,
            client_ip: e.client_ip,
        }
    }
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogPage {
    /// Newest first.
    pub entries: Vec<AuditEntryResponse>,
    /// Pass as `cursor` (with the same filters) for the next, older page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The audit log, newest first: every change made through the admin API.
#[utoipa::path(
    get,
    path = "/api/v1/audit-log",
    operation_id = "list_audit_log",
    tag = "audit-log",
    params(AuditLogQuery),
    responses(
        (status = 200, description = "A page of entries, newest first", body = AuditLogPage),
        (status = 400, description = "Invalid query string", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
    query: Result<Query<AuditLogQuery>, QueryRejection>,
) -> Result<Json<AuditLogPage>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::BadQuery { reason: query_reason(&rejection) })?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadQuery { reason: format!("limit: must be 1 to {MAX_LIMIT}") });
    }
    let before_id = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut entries = state
        .store
        .audit_log(&AuditQuery {
            entity: query.entity.map(Into::into),
            entity_id: query.entity_id,
            actor: query.actor,
            action: query.action.map(Into::into),
            since: query.since,
            until: query.until,
            before_id,
            // One more than asked: whether it comes back says if there is a next page.
            limit: limit + 1,
        })
        .await?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_cursor = if more { entries.last().map(|e| encode_cursor(e.id)) } else { None };
    Ok(Json(AuditLogPage {
        entries: entries.into_iter().map(AuditEntryResponse::from).collect(),
        next_cursor,
    }))
}

fn query_reason(rejection: &QueryRejection) -> String {
    let text = rejection.body_text();
    text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_owned()
}

/// The cursor of the page after the entry with id `last`: 16 hex digits. Clients treat it as
/// opaque; every string of the documented pattern decodes, so none is "invalid" by surprise.
fn encode_cursor(last: i64) -> String {
    format!("{:016x}", last.max(0))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::BadQuery {
        reason: "cursor: must be a next_cursor this API returned".to_owned(),
    };
    if cursor.len() != 16 || !cursor.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    let value = u64::from_str_radix(cursor, 16).map_err(|_| bad())?;
    // Past the largest id: the same as "older than every entry there is".
    Ok(i64::try_from(value).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_every_documented_one_decodes() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        assert_eq!(decode_cursor("ffffffffffffffff").ok(), Some(i64::MAX));
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor("000000000000002A").is_err());
    }
}
