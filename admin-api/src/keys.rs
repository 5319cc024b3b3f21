//! `/api/v1/gateways/{id}/keys`: the keys clients present to a gateway — a tree per gateway
//! (a key may have a parent key; revoking one revokes its subtree), each with an optional
//! expiry and limits per UTC minute, hour and day that apply to its whole subtree — and their
//! usage, as data planes report it.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::StatusCode;
use modelgw_control_plane::store::{
    GatewayKeyPatch, GatewayKeyRecord, KeyWindowUsage, NewGatewayKey, usage_retention,
};
use modelgw_model::keys::{KeyLimits, Measure, Usage, Window, WindowLimits};
use modelgw_model::{GatewayId, GatewayKeyId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api_tokens::no_store;
use crate::audit::Caller;
use crate::body::JsonBody;
use crate::problem::{ApiError, Problem};
use crate::validate::{Validator, path_id};
use crate::{AdminState, ConfigChange};

const ENTITY: &str = "gateway_key";

/// The largest limit of one measure in one window: far beyond any real budget (a trillion
/// tokens), and well inside the 64-bit integers every client and both databases hold.
pub const MAX_KEY_LIMIT: i64 = 1_000_000_000_000;

/// Limits of one window; an omitted or `null` measure is not limited.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowLimitsInput {
    /// Requests in the window, 1–10¹².
    #[schema(value_type = Option<u64>)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub requests: Option<i64>,
    /// Prompt tokens in the window, 1–10¹².
    #[schema(value_type = Option<u64>)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub prompt_tokens: Option<i64>,
    /// Completion tokens in the window, 1–10¹².
    #[schema(value_type = Option<u64>)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub completion_tokens: Option<i64>,
    /// Prompt + completion tokens in the window, 1–10¹².
    #[schema(value_type = Option<u64>)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub total_tokens: Option<i64>,
}

/// A key's limits per UTC-aligned window; a limit applies to the key's whole subtree (a
/// request is charged to its key and every ancestor). Omitted windows are not limited.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsInput {
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub per_minute: Option<WindowLimitsInput>,
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub per_hour: Option<WindowLimitsInput>,
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub per_day: Option<WindowLimitsInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// What the key is for, e.g. the client team (1–256 characters, trimmed). Not unique.
    #[schema(example = "billing-service")]
    pub name: String,
    /// An active key of the same gateway to create this one under; its limits apply to this
    /// key's traffic too, and revoking it revokes this key. At most 8 levels below a root.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub parent_id: Option<String>,
    /// When data planes start refusing the key (RFC 3339, in the future); omitted or `null`:
    /// never.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
    /// Omitted or `null`: no limits.
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub limits: Option<KeyLimitsInput>,
}

/// A partial update: absent fields stay as they are; `expires_at: null` removes the expiry,
/// `limits: null` every limit (`limits` replaces all of them). At least one field must be
/// given.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// 1–256 characters, trimmed.
    pub name: Option<String>,
    /// RFC 3339, in the future; `null` removes the expiry.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    /// Replaces every limit; `null` removes them.
    #[schema(value_type = Option<KeyLimitsInput>)]
    #[serde(default, deserialize_with = "crate::body::nullable_object")]
    pub limits: Option<Option<KeyLimitsInput>>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A new key. `key` appears in this response only; store it now.
#[derive(Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: GatewayKeyId,
    pub name: String,
    /// The key to send as `api-key` (or `Authorization: Bearer`). Never retrievable again.
    #[schema(format = Password, example = "mgw_…")]
    pub key: String,
    /// Last four characters of the key.
    #[schema(example = "…9f3c")]
    pub hint: String,
    pub created_at: DateTime<Utc>,
    /// The key above it; `null` for a root key.
    #[schema(value_type = Option<String>, format = Uuid, required = true)]
    pub parent_id: Option<GatewayKeyId>,
    /// `null`: never expires.
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
    /// `{}`: no limits.
    pub limits: KeyLimits,
}

impl std::fmt::Debug for CreatedKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKeyResponse")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// A key's usage in the windows holding now: subtree usage (its own requests and every key's
/// below it), counted from the last reset, requests in flight included with their reservation.
#[derive(Clone, Copy, Debug, Default, Serialize, ToSchema)]
pub struct CurrentUsage {
    pub minute: Usage,
    pub hour: Usage,
    pub day: Usage,
}

impl From<KeyWindowUsage> for CurrentUsage {
    fn from(u: KeyWindowUsage) -> Self {
        CurrentUsage {
            minute: u[Window::Minute.index()],
            hour: u[Window::Hour.index()],
            day: u[Window::Day.index()],
        }
    }
}

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: GatewayKeyId,
    pub name: String,
    pub hint: String,
    pub created_at: DateTime<Utc>,
    /// When the key was revoked; `null` while it is active.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key above it; `null` for a root key.
    #[schema(value_type = Option<String>, format = Uuid, required = true)]
    pub parent_id: Option<GatewayKeyId>,
    /// `null`: never expires.
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When data planes last reported a request made with this key itself (to the minute);
    /// `null`: never.
    #[schema(required = true)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// `{}`: no limits.
    pub limits: KeyLimits,
    /// Usage in the current minute, hour and day.
    pub usage: CurrentUsage,
}

fn key_response(r: GatewayKeyRecord, usage: Option<KeyWindowUsage>) -> KeyResponse {
    KeyResponse {
        id: r.id,
        name: r.name,
        hint: r.hint,
        created_at: r.created_at,
        revoked_at: r.revoked_at,
        parent_id: r.parent_id,
        expires_at: r.expires_at,
        last_used_at: r.last_used_at,
        limits: r.limits,
        usage: usage.map(CurrentUsage::from).unwrap_or_default(),
    }
}

/// `expires_at` as sent: RFC 3339 and after `now`.
fn expiry(v: &mut Validator, raw: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match DateTime::parse_from_rfc3339(raw.trim()) {
        Ok(t) => {
            // Stored to the millisecond.
            let t = DateTime::from_timestamp_millis(t.timestamp_millis());
            if t.is_none_or(|t| t <= now) {
                v.error("expires_at", "must be in the future");
            }
            t
        }
        Err(_) => {
            v.error("expires_at", "must be an RFC 3339 date-time, e.g. 2027-01-31T00:00:00Z");
            None
        }
    }
}

fn limits(v: &mut Validator, input: KeyLimitsInput) -> KeyLimits {
    let mut out = KeyLimits::default();
    let windows = [
        (Window::Minute, "per_minute", input.per_minute),
        (Window::Hour, "per_hour", input.per_hour),
        (Window::Day, "per_day", input.per_day),
    ];
    for (window, name, given) in windows {
        let Some(given) = given else { continue };
        let measures = [
            (Measure::Requests, given.requests),
            (Measure::PromptTokens, given.prompt_tokens),
            (Measure::CompletionTokens, given.completion_tokens),
            (Measure::TotalTokens, given.total_tokens),
        ];
        for (m, value) in measures {
            let Some(value) = value else { continue };
            if (1..=MAX_KEY_LIMIT).contains(&value) {
                out.window_mut(window).set(m, u64::try_from(value).ok());
            } else {
                v.error(
                    format!("limits.{name}.{}", m.as_str()),
                    format!("must be between 1 and {MAX_KEY_LIMIT}"),
                );
            }
        }
    }
    out
}

fn validate_create(req: CreateKeyRequest, now: DateTime<Utc>) -> Result<NewGatewayKey, ApiError> {
    let mut v = Validator::new();
    let name = v.text("name", &req.name);
    let parent_id = req.parent_id.and_then(|p| v.uuid::<GatewayKeyId>("parent_id", &p));
    let expires_at = req.expires_at.and_then(|t| expiry(&mut v, &t, now));
    let limits = req.limits.map(|l| limits(&mut v, l)).unwrap_or_default();
    v.finish(NewGatewayKey { name, parent_id, expires_at, limits })
}

fn validate_update(req: UpdateKeyRequest, now: DateTime<Utc>) -> Result<GatewayKeyPatch, ApiError> {
    let mut v = Validator::new();
    if req.name.is_none() && req.expires_at.is_none() && req.limits.is_none() {
        // An empty patch would still bump the configuration version and push a snapshot.
        v.error("body", "must set at least one field");
    }
    let name = req.name.map(|n| v.text("name", &n));
    let expires_at = req.expires_at.map(|t| t.and_then(|t| expiry(&mut v, &t, now)));
    let limits = req.limits.map(|l| l.map(|l| limits(&mut v, l)).unwrap_or_default());
    v.finish(GatewayKeyPatch { name, expires_at, limits })
}

/// Create a key for a gateway, optionally under a parent key, with an expiry and limits.
#[utoipa::path(
    post,
    path = "/api/v1/gateways/{id}/keys",
    operation_id = "create_gateway_key",
    tag = "gateway-keys",
    params(("id" = String, Path, format = Uuid, description = "Gateway id")),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is shown only here (sent with \
            `Cache-Control: no-store`)", body = CreatedKeyResponse,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 404, description = "No such gateway", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Unknown, missing, mistyped or invalid fields, all named \
            in `errors` — including a `parent_id` that is not an active key of this gateway, or \
            one 8 levels below a root already", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    Path(gateway_id): Path<String>,
    JsonBody(req): JsonBody<CreateKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let new = validate_create(req, Utc::now())?;
    let (record, secret, version) =
        state.store.create_gateway_key_with(gateway_id, new, &caller.audit).await?;
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action: "create", id: &record.id, name: &record.name },
        version,
    );
    let response = CreatedKeyResponse {
        id: record.id,
        name: record.name,
        key: secret.expose().to_owned(),
        hint: record.hint,
        created_at: record.created_at,
        parent_id: record.parent_id,
        expires_at: record.expires_at,
        limits: record.limits,
    };
    Ok((StatusCode::CREATED, no_store(), Json(response)))
}

/// List the keys of a gateway, revoked ones included, with their current usage.
#[utoipa::path(
    get,
    path = "/api/v1/gateways/{id}/keys",
    operation_id = "list_gateway_keys",
    tag = "gateway-keys",
    params(("id" = String, Path, format = Uuid, description = "Gateway id")),
    responses(
        (status = 200, description = "The gateway's keys, oldest first, without the keys \
            themselves", body = Vec<KeyResponse>),
        (status = 404, description = "No such gateway", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
    Path(gateway_id): Path<String>,
) -> Result<Json<Vec<KeyResponse>>, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    // An unknown gateway is a 404, not an empty list.
    state.store.get_gateway(gateway_id).await?;
    let keys = state.store.list_gateway_keys(gateway_id).await?;
    let mut usage = state.store.current_key_usage(gateway_id, Utc::now()).await?;
    Ok(Json(keys.into_iter().map(|k| key_response_with(k, &mut usage)).collect()))
}

fn key_response_with(
    record: GatewayKeyRecord,
    usage: &mut HashMap<GatewayKeyId, KeyWindowUsage>,
) -> KeyResponse {
    let u = usage.remove(&record.id);
    key_response(record, u)
}

/// The key's response with its current usage.
async fn respond(state: &AdminState, record: GatewayKeyRecord) -> Result<KeyResponse, ApiError> {
    let mut usage = state.store.current_key_usage(record.gateway_id, Utc::now()).await?;
    Ok(key_response_with(record, &mut usage))
}

/// Get one key of a gateway (revoked or not), with its current usage.
#[utoipa::path(
    get,
    path = "/api/v1/gateways/{id}/keys/{key_id}",
    operation_id = "get_gateway_key",
    tag = "gateway-keys",
    params(
        ("id" = String, Path, format = Uuid, description = "Gateway id"),
        ("key_id" = String, Path, format = Uuid, description = "Key id"),
    ),
    responses(
        (status = 200, description = "The key, without the key itself", body = KeyResponse),
        (status = 404, description = "No such gateway or key", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AdminState>,
    Path((gateway_id, key_id)): Path<(String, String)>,
) -> Result<Json<KeyResponse>, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let key_id: GatewayKeyId = path_id("gateway key", &key_id)?;
    let record = state.store.get_gateway_key(gateway_id, key_id).await?;
    Ok(Json(respond(&state, record).await?))
}

/// Rename a key, set or remove its expiry, replace its limits. Data planes apply the change
/// with the next snapshot.
#[utoipa::path(
    patch,
    path = "/api/v1/gateways/{id}/keys/{key_id}",
    operation_id = "update_gateway_key",
    tag = "gateway-keys",
    params(
        ("id" = String, Path, format = Uuid, description = "Gateway id"),
        ("key_id" = String, Path, format = Uuid, description = "Key id"),
    ),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The updated key", body = KeyResponse),
        (status = 404, description = "No such gateway or key", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`revoked_at`): it cannot change",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<AdminState>,
    caller: Caller,
    Path((gateway_id, key_id)): Path<(String, String)>,
    JsonBody(req): JsonBody<UpdateKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let key_id: GatewayKeyId = path_id("gateway key", &key_id)?;
    let patch = validate_update(req, Utc::now())?;
    let (record, version) =
        state.store.update_gateway_key(gateway_id, key_id, patch, &caller.audit).await?;
    if let Some(version) = version {
        state.committed(
            &caller,
            ConfigChange { entity: ENTITY, action: "update", id: &record.id, name: &record.name },
            version,
        );
    }
    Ok(Json(respond(&state, record).await?))
}

/// Revoke a key and every key below it: data planes stop accepting them with the next
/// snapshot.
#[utoipa::path(
    delete,
    path = "/api/v1/gateways/{id}/keys/{key_id}",
    operation_id = "revoke_gateway_key",
    tag = "gateway-keys",
    params(
        ("id" = String, Path, format = Uuid, description = "Gateway id"),
        ("key_id" = String, Path, format = Uuid, description = "Key id"),
    ),
    responses(
        (status = 204, description = "Revoked, with its subtree"),
        (status = 404, description = "No such gateway or key", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    Path((gateway_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let key_id: GatewayKeyId = path_id("gateway key", &key_id)?;
    let (key, version) = state.store.revoke_gateway_key(gateway_id, key_id, &caller.audit).await?;
    // `None`: it was revoked already, and nothing changed.
    if let Some(version) = version {
        state.committed(
            &caller,
            ConfigChange { entity: ENTITY, action: "revoke", id: &key_id, name: &key.name },
            version,
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET …/keys/{key_id}/usage`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// The windows to list: `minute`, `hour` (the default) or `day`.
    #[param(value_type = Option<Window>)]
    pub window: Option<String>,
    /// The first window listed is the one holding this time (RFC 3339). Default: an hour of
    /// minutes, a day of hours or 30 days before `to`; at most the window's retention
    /// (minutes 24 h, hours 31 days, days 400 days) before `to`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<String>,
    /// Windows starting at or after this time are not listed (RFC 3339). Default: now.
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<String>,
}

/// A key's usage in one window.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRow {
    pub window_start: DateTime<Utc>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// The window holding now, against the key's limits.
#[derive(Debug, Serialize, ToSchema)]
pub struct CurrentWindow {
    pub window_start: DateTime<Utc>,
    /// When the window ends and its counters start from zero.
    pub resets_at: DateTime<Utc>,
    pub used: Usage,
    /// The key's limits in this window (`{}`: none).
    pub limit: WindowLimits,
    /// Per limited measure, what is left of the limit (0 when it is spent or overshot).
    pub remaining: WindowLimits,
}

/// `GET /api/v1/gateways/{id}/keys/{key_id}/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyUsageResponse {
    #[schema(value_type = String, format = Uuid)]
    pub key_id: GatewayKeyId,
    pub window: Window,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Windows with usage, oldest first (windows without any are left out). Usage is the key's
    /// subtree's, requests in flight counted with their reservation, from the last reset.
    pub rows: Vec<UsageRow>,
    pub current: CurrentWindow,
}

/// Default span listed per window, when `from` is not given.
fn default_span(window: Window) -> chrono::Duration {
    match window {
        Window::Minute => chrono::Duration::hours(1),
        Window::Hour => chrono::Duration::days(1),
        Window::Day => chrono::Duration::days(30),
    }
}

fn time_parameter(field: &'static str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw.trim()).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        ApiError::BadParameter {
            field,
            reason: "must be an RFC 3339 date-time, e.g. 2026-12-07T00:00:00Z".to_owned(),
        }
    })
}

/// The usage of a key per minute, hour or day, and its current window against its limits.
#[utoipa::path(
    get,
    path = "/api/v1/gateways/{id}/keys/{key_id}/usage",
    operation_id = "get_gateway_key_usage",
    tag = "gateway-keys",
    params(
        ("id" = String, Path, format = Uuid, description = "Gateway id"),
        ("key_id" = String, Path, format = Uuid, description = "Key id"),
        UsageQuery,
    ),
    responses(
        (status = 200, description = "Usage per window", body = KeyUsageResponse),
        (status = 400, description = "Invalid query string (the parameter is named)",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such gateway or key", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn usage(
    State(state): State<AdminState>,
    Path((gateway_id, key_id)): Path<(String, String)>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<KeyUsageResponse>, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let key_id: GatewayKeyId = path_id("gateway key", &key_id)?;
    let Query(query) = query.map_err(|rejection| {
        let text = rejection.body_text();
        let reason = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
        ApiError::BadQuery { reason: reason.to_owned() }
    })?;
    let window = match query.window.as_deref().map(str::trim) {
        None => Window::Hour,
        Some(raw) => Window::ALL.into_iter().find(|w| w.as_str() == raw).ok_or_else(|| {
            ApiError::BadParameter { field: "window", reason: "must be minute, hour or day".into() }
        })?,
    };
    let now = Utc::now();
    let to = query.to.as_deref().map(|t| time_parameter("to", t)).transpose()?.unwrap_or(now);
    let from = match query.from.as_deref() {
        Some(t) => time_parameter("from", t)?,
        None => to - default_span(window),
    };
    let retention = chrono::Duration::from_std(usage_retention(window))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if from >= to {
        return Err(ApiError::BadParameter { field: "from", reason: "must be before `to`".into() });
    }
    if to - from > retention {
        return Err(ApiError::BadParameter {
            field: "from",
            reason: format!(
                "must be at most {} days before `to` for {} windows (their retention)",
                retention.num_hours() as f64 / 24.0,
                window.as_str()
            ),
        });
    }
    let record = state.store.get_gateway_key(gateway_id, key_id).await?;
    // The window holding `from` is listed too.
    let first =
        DateTime::from_timestamp_millis(window.start_of(from.timestamp_millis())).unwrap_or(from);
    let history = state.store.key_usage_history(gateway_id, key_id, window, first, to).await?;
    let current = state.store.current_key_usage(gateway_id, now).await?;
    let used = current.get(&key_id).map(|u| u[window.index()]).unwrap_or_default();
    let limit = *record.limits.window(window);
    let mut remaining = WindowLimits::default();
    for m in Measure::ALL {
        remaining.set(m, limit.get(m).map(|l| l.saturating_sub(used.get(m))));
    }
    let start = window.start_of(now.timestamp_millis());
    let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or(now);
    Ok(Json(KeyUsageResponse {
        key_id,
        window,
        from: first,
        to,
        rows: history
            .into_iter()
            .map(|r| UsageRow {
                window_start: r.window_start,
                requests: r.usage.requests,
                prompt_tokens: r.usage.prompt_tokens,
                completion_tokens: r.usage.completion_tokens,
                total_tokens: r.usage.total_tokens,
            })
            .collect(),
        current: CurrentWindow {
            window_start: at(start),
            resets_at: at(start + window.len_ms()),
            used,
            limit,
            remaining,
        },
    }))
}

/// Reset a key's usage counters: in the current minute, hour and day its usage (and the
/// budget data planes are lent against its limits) counts from zero again. Recorded in the
/// audit log with the usage discarded; not a configuration change.
#[utoipa::path(
    post,
    path = "/api/v1/gateways/{id}/keys/{key_id}/usage/reset",
    operation_id = "reset_gateway_key_usage",
    tag = "gateway-keys",
    params(
        ("id" = String, Path, format = Uuid, description = "Gateway id"),
        ("key_id" = String, Path, format = Uuid, description = "Key id"),
    ),
    responses(
        (status = 200, description = "The key, its current usage from zero again",
            body = KeyResponse),
        (status = 404, description = "No such gateway or key", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn reset_usage(
    State(state): State<AdminState>,
    caller: Caller,
    Path((gateway_id, key_id)): Path<(String, String)>,
) -> Result<Json<KeyResponse>, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let key_id: GatewayKeyId = path_id("gateway key", &key_id)?;
    let discarded =
        state.store.reset_key_usage(gateway_id, key_id, Utc::now(), &caller.audit).await?;
    let record = state.store.get_gateway_key(gateway_id, key_id).await?;
    crate::trace::record_change(ENTITY, "reset_usage");
    tracing::info!(
        actor = %caller.audit.actor,
        entity = ENTITY,
        action = "reset_usage",
        id = %key_id,
        name = %record.name,
        discarded_day_tokens = discarded[Window::Day.index()].total_tokens,
        "gateway key usage reset"
    );
    Ok(Json(respond(&state, record).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::FieldError;

    fn errors(result: Result<impl std::fmt::Debug, ApiError>) -> Vec<FieldError> {
        match result {
            Err(ApiError::Validation(errors)) => errors,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn limits_expiry_and_parent_are_checked_all_at_once() {
        let now = Utc::now();
        let req = CreateKeyRequest {
            name: " team ".into(),
            parent_id: Some("not-a-uuid".into()),
            expires_at: Some("2020-01-01T00:00:00Z".into()),
            limits: Some(KeyLimitsInput {
                per_hour: Some(WindowLimitsInput {
                    total_tokens: Some(0),
                    prompt_tokens: Some(MAX_KEY_LIMIT + 1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        assert_eq!(
            errors(validate_create(req, now)),
            [
                FieldError::new("parent_id", "must be a UUID"),
                FieldError::new("expires_at", "must be in the future"),
                FieldError::new(
                    "limits.per_hour.prompt_tokens",
                    format!("must be between 1 and {MAX_KEY_LIMIT}")
                ),
                FieldError::new(
                    "limits.per_hour.total_tokens",
                    format!("must be between 1 and {MAX_KEY_LIMIT}")
                ),
            ]
        );
        let ok = validate_create(
            CreateKeyRequest {
                name: "team".into(),
                parent_id: None,
                expires_at: Some("2999-01-01T00:00:00+01:00".into()),
                limits: Some(KeyLimitsInput {
                    per_minute: Some(WindowLimitsInput {
                        requests: Some(60),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            now,
        )
        .expect("valid");
        assert_eq!(ok.limits.per_minute.requests, Some(60));
        assert_eq!(
            ok.expires_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2998-12-31T23:00:00+00:00")
        );
    }

    #[test]
    fn a_patch_tells_null_from_absent() {
        let patch: UpdateKeyRequest =
            crate::body::parse_json(br#"{"expires_at": null}"#).expect("parses");
        let patch = validate_update(patch, Utc::now()).expect("valid");
        assert_eq!(patch.expires_at, Some(None));
        assert_eq!(patch.limits, None);
        let patch: UpdateKeyRequest =
            crate::body::parse_json(br#"{"limits": null}"#).expect("parses");
        let patch = validate_update(patch, Utc::now()).expect("valid");
        assert_eq!(patch.limits, Some(KeyLimits::default()));
        assert_eq!(errors(validate_update(UpdateKeyRequest::default(), Utc::now())).len(), 1);
    }
}
