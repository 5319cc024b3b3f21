//! `/api/v1/gateways`: the names clients call, each routing over a set of inference endpoints.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{StatusCode, header};
use modelgw_control_plane::store::{
    GatewayPatch, GatewayRecord, GatewayTraces, MAX_TRACE_MAX_COUNT, MAX_TRACE_RETENTION_DAYS,
    NewGateway,
};
use modelgw_model::keys::KeyLimitPolicy;
use modelgw_model::limits::{
    MAX_GATEWAY_MEMBERS, PRIORITY_RANGE, REQUEST_TIMEOUT_MS_RANGE, WEIGHT_RANGE,
};
use modelgw_model::traces::{MAX_PAYLOAD_BYTES, MAX_REDACT_FIELDS};
use modelgw_model::{
    EndpointId, EndpointState, GatewayId, GatewayMember, QuotaPolicy, RoutingPolicy,
    RoutingStrategy,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::Caller;
use crate::body::JsonBody;
use crate::problem::{ApiError, Problem};
use crate::validate::{Validator, path_id};
use crate::{AdminState, ConfigChange};

const ENTITY: &str = "gateway";

/// The 422 of the operations that take members: besides the fields the schema describes, a
/// member must name an existing inference endpoint, once.
/// The longest field name `traces.redact_fields` takes: far beyond any JSON key an API uses,
/// short enough that 64 of them stay small.
pub const MAX_REDACT_FIELD_CHARS: usize = 128;

const UNKNOWN_MEMBER: &str = "Unknown, missing, mistyped or invalid fields, all named in \
    `errors` — including an `endpoints[i].endpoint_id` that names no inference endpoint, or \
    one that repeats another member's";

/// Completion tokens a gateway may reserve per request without a maximum: at least one, at
/// most a million (beyond any model's output).
pub const DEFAULT_COMPLETION_TOKENS_RANGE: std::ops::RangeInclusive<i64> = 1..=1_000_000;

/// `QuotaPolicy::WINDOW_SECS_RANGE` as the validator and the document take ranges.
pub const QUOTA_WINDOW_SECS_RANGE: std::ops::RangeInclusive<i64> = (*QuotaPolicy::WINDOW_SECS_RANGE
    .start() as i64)
    ..=(*QuotaPolicy::WINDOW_SECS_RANGE.end() as i64);
/// `QuotaPolicy::RESERVE_PERCENT_RANGE` as the validator and the document take ranges.
pub const QUOTA_RESERVE_PERCENT_RANGE: std::ops::RangeInclusive<i64> =
    (*QuotaPolicy::RESERVE_PERCENT_RANGE.start() as i64)
        ..=(*QuotaPolicy::RESERVE_PERCENT_RANGE.end() as i64);

/// Member defaults when a field is omitted (also stated in the schema).
const DEFAULT_ENABLED: bool = true;
const DEFAULT_PRIORITY: i64 = 0;
const DEFAULT_WEIGHT: i64 = 1;

/// One inference endpoint in a gateway.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayMemberInput {
    /// Id of an existing inference endpoint; at most once per gateway.
    #[schema(value_type = String, format = Uuid)]
    pub endpoint_id: String,
    /// Disabled members stay configured but receive no traffic.
    #[schema(default = true)]
    pub enabled: Option<bool>,
    /// Priority group, 0–100; lower is preferred. Higher groups are used only when every
    /// member of the lower ones is unavailable.
    #[schema(value_type = Option<u32>, default = 0)]
    pub priority: Option<i64>,
    /// Relative share of traffic within its priority group, 1–1000.
    #[schema(value_type = Option<u32>, default = 1)]
    pub weight: Option<i64>,
}

/// How the gateway picks among its available members. Omitted fields take their defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingInput {
    /// `weighted`: random by member `weight` within the best priority group. `fastest`:
    /// latency-aware (power of two choices over a decaying average of time to first byte).
    #[schema(value_type = Option<RoutingStrategy>, default = "weighted")]
    pub strategy: Option<String>,
    /// When every member is unavailable, wait for the first to recover if that fits within
    /// the request deadline, instead of answering 429/503 at once.
    #[schema(default = false)]
    pub wait_for_recovery: Option<bool>,
    /// End-to-end deadline of one request in milliseconds, 1000–600000; `null` = the data
    /// plane's default.
    #[schema(value_type = Option<u32>)]
    pub request_timeout_ms: Option<i64>,
    /// Quota-aware routing; omitted = on, with Azure's renewal periods and no reserve.
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub quota: Option<QuotaPolicyInput>,
}

/// How data planes read and spend the quota their endpoints report in `x-ratelimit-*`
/// headers. Omitted fields take their defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPolicyInput {
    /// Spread a priority group's traffic by each member's estimated remaining quota, and skip
    /// a member only when a request would not fit in it; `false` = react to 429s only.
    #[schema(default = true)]
    pub enabled: Option<bool>,
    /// Seconds over which an endpoint's request limit refills when its answers carry no
    /// `x-ratelimit-reset-requests`, 1–86400 (Azure's renewal period for requests: 10).
    #[schema(value_type = Option<u32>, default = 10)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub request_window_secs: Option<i64>,
    /// The same for tokens (`x-ratelimit-reset-tokens`), 1–86400 (Azure's: 60).
    #[schema(value_type = Option<u32>, default = 60)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub token_window_secs: Option<i64>,
    /// Percent of each endpoint's quota never planned for, 0–50: room for other clients of
    /// the same deployments outside the gateway.
    #[schema(value_type = Option<u32>, default = 0)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub reserve_percent: Option<i64>,
}

/// A gateway's routing settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutingResponse {
    pub strategy: RoutingStrategy,
    pub wait_for_recovery: bool,
    /// Milliseconds; `null` = the data plane's default deadline.
    #[schema(required = true)]
    pub request_timeout_ms: Option<u32>,
    pub quota: QuotaPolicyResponse,
}

/// A gateway's quota-aware routing settings, every field shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaPolicyResponse {
    pub enabled: bool,
    pub request_window_secs: u32,
    pub token_window_secs: u32,
    #[schema(value_type = u32)]
    pub reserve_percent: u8,
}

impl From<RoutingPolicy> for RoutingResponse {
    fn from(r: RoutingPolicy) -> Self {
        RoutingResponse {
            strategy: r.strategy,
            wait_for_recovery: r.wait_for_recovery,
            request_timeout_ms: r.request_timeout_ms,
            quota: r.quota.into(),
        }
    }
}

impl From<QuotaPolicy> for QuotaPolicyResponse {
    fn from(q: QuotaPolicy) -> Self {
        QuotaPolicyResponse {
            enabled: q.enabled,
            request_window_secs: q.request_window_secs,
            token_window_secs: q.token_window_secs,
            reserve_percent: q.reserve_percent,
        }
    }
}

/// What the gateway's data planes record of each request, and how long the control plane
/// keeps it. Omitted fields take their defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TracesInput {
    /// Record one trace per request (time, key, operation, model, status, every endpoint
    /// tried with its outcome, latency, time to first token, tokens).
    #[schema(default = false)]
    pub enabled: Option<bool>,
    /// Also capture the request and response bodies (streamed chat answers reassembled into
    /// the final message), redacted and capped. Only `operator` and `admin` can read them.
    #[schema(default = false)]
    pub capture_payload: Option<bool>,
    /// JSON field names whose values captured bodies carry as `"[REDACTED]"`, at any depth
    /// (matched without regard to ASCII case); at most 64, each 1–128 characters.
    #[schema(default = json!([]))]
    pub redact_fields: Option<Vec<String>>,
    /// Cap of each captured body in bytes, 1–262144; `null` = 65536.
    #[schema(value_type = Option<u32>)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub max_payload_bytes: Option<i64>,
    /// Traces older than this many days are deleted, 1–365.
    #[schema(value_type = Option<u32>, default = 7)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub retention_days: Option<i64>,
    /// Beyond this many traces of the gateway the oldest are deleted, 1–10000000.
    #[schema(value_type = Option<u32>, default = 100000)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub max_count: Option<i64>,
}

/// A gateway's trace settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct TracesResponse {
    pub enabled: bool,
    pub capture_payload: bool,
    pub redact_fields: Vec<String>,
    /// Bytes; `null` = the default (65536).
    #[schema(required = true)]
    pub max_payload_bytes: Option<u32>,
    pub retention_days: u32,
    pub max_count: u32,
}

impl From<GatewayTraces> for TracesResponse {
    fn from(t: GatewayTraces) -> Self {
        TracesResponse {
            enabled: t.enabled,
            capture_payload: t.capture_payload,
            redact_fields: t.redact_fields,
            max_payload_bytes: t.max_payload_bytes,
            retention_days: t.retention_days,
            max_count: t.max_count,
        }
    }
}

/// How data planes enforce the limits of the gateway's keys. Omitted fields take their
/// defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitPolicyInput {
    /// Completion tokens reserved against a key's limits for a request that sets neither
    /// `max_tokens` nor `max_completion_tokens`, 1–1000000; `null` = the data plane's default
    /// (1024).
    #[schema(value_type = Option<u32>)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub default_completion_tokens: Option<i64>,
    /// When a data plane's budget leases have expired (control plane unreachable): refuse
    /// requests of limited keys with 429 (`true`), or admit and log them (`false`).
    #[schema(default = false)]
    pub fail_closed: Option<bool>,
}

/// A gateway's key-limit enforcement settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyLimitPolicyResponse {
    /// `null` = the data plane's default (1024).
    #[schema(required = true)]
    pub default_completion_tokens: Option<u32>,
    pub fail_closed: bool,
}

impl From<KeyLimitPolicy> for KeyLimitPolicyResponse {
    fn from(p: KeyLimitPolicy) -> Self {
        KeyLimitPolicyResponse {
            default_completion_tokens: p.default_completion_tokens,
            fail_closed: p.fail_closed,
        }
    }
}

pub use modelgw_model::GatewayState;

/// A new gateway.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGatewayRequest {
    /// What clients put in the URL (`/openai/deployments/{name}/…`): 1–64 characters of
    /// `[A-Za-z0-9._-]`, unique, not `auto`, `.` or `..`.
    #[schema(example = "gpt-4o")]
    pub name: String,
    /// Members in order of preference for display; may be empty.
    pub endpoints: Vec<GatewayMemberInput>,
    /// Routing settings; omitted = weighted, no waiting, the data plane's default deadline.
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub routing: Option<RoutingInput>,
    /// Key-limit enforcement; omitted = the data plane's default reservation, fail open.
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub key_limits: Option<KeyLimitPolicyInput>,
    /// Request traces; omitted = none recorded.
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub traces: Option<TracesInput>,
}

/// A partial update: absent (or `null`) fields stay as they are; `endpoints` replaces the
/// whole member list, `routing` the whole routing settings, `key_limits` the whole key-limit
/// settings and `traces` the whole trace settings (their omitted fields take their defaults).
/// At least one field must be given.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGatewayRequest {
    pub name: Option<String>,
    pub endpoints: Option<Vec<GatewayMemberInput>>,
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub routing: Option<RoutingInput>,
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub traces: Option<TracesInput>,
    #[serde(default, deserialize_with = "crate::body::optional_object")]
    pub key_limits: Option<KeyLimitPolicyInput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayMemberResponse {
    #[schema(value_type = String, format = Uuid)]
    pub endpoint_id: EndpointId,
    pub enabled: bool,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: GatewayId,
    pub name: String,
    pub endpoints: Vec<GatewayMemberResponse>,
    pub routing: RoutingResponse,
    pub traces: TracesResponse,
    pub key_limits: KeyLimitPolicyResponse,
    /// From the fleet health of the enabled members: `healthy` (all available), `degraded`
    /// (some unavailable), `throttling` (all unavailable, at least one throttling), `error`
    /// (all unavailable and none throttling, or no member enabled).
    pub state: GatewayState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The state of a gateway from the health of its enabled members (see
/// [`GatewayResponse::state`]).
pub fn gateway_state(
    members: &[GatewayMember],
    health: impl Fn(EndpointId) -> EndpointState,
) -> GatewayState {
    let states: Vec<EndpointState> =
        members.iter().filter(|m| m.enabled).map(|m| health(m.endpoint_id)).collect();
    GatewayState::of(&states)
}

fn respond(state: &AdminState, record: GatewayRecord) -> GatewayResponse {
    let gateway_state =
        gateway_state(&record.members, |id| state.registry.endpoint_health(id).state);
    GatewayResponse {
        id: record.id,
        name: record.name,
        endpoints: record
            .members
            .into_iter()
            .map(|m| GatewayMemberResponse {
                endpoint_id: m.endpoint_id,
                enabled: m.enabled,
                priority: m.priority,
                weight: m.weight,
            })
            .collect(),
        routing: record.routing.into(),
        traces: record.traces.into(),
        key_limits: record.key_limits.into(),
        state: gateway_state,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

fn validate_members(v: &mut Validator, inputs: Vec<GatewayMemberInput>) -> Vec<GatewayMember> {
    if inputs.len() > MAX_GATEWAY_MEMBERS {
        v.error("endpoints", format!("must have at most {MAX_GATEWAY_MEMBERS} members"));
        return Vec::new();
    }
    let mut seen: HashMap<EndpointId, usize> = HashMap::with_capacity(inputs.len());
    let mut members = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let field = |name: &str| format!("endpoints[{i}].{name}");
        let priority = v.in_range(
            &field("priority"),
            input.priority.unwrap_or(DEFAULT_PRIORITY),
            PRIORITY_RANGE,
        );
        let weight =
            v.in_range(&field("weight"), input.weight.unwrap_or(DEFAULT_WEIGHT), WEIGHT_RANGE);
        let Some(endpoint_id) = v.uuid::<EndpointId>(&field("endpoint_id"), &input.endpoint_id)
        else {
            continue;
        };
        if let Some(first) = seen.get(&endpoint_id) {
            v.error(field("endpoint_id"), format!("duplicate of endpoints[{first}].endpoint_id"));
            continue;
        }
        seen.insert(endpoint_id, i);
        members.push(GatewayMember {
            endpoint_id,
            enabled: input.enabled.unwrap_or(DEFAULT_ENABLED),
            priority,
            weight,
        });
    }
    members
}

fn validate_routing(v: &mut Validator, input: RoutingInput) -> RoutingPolicy {
    let strategy = match &input.strategy {
        Some(s) => v.routing_strategy("routing.strategy", s),
        None => RoutingStrategy::default(),
    };
    let request_timeout_ms = input
        .request_timeout_ms
        .map(|ms| v.in_range("routing.request_timeout_ms", ms, REQUEST_TIMEOUT_MS_RANGE));
    RoutingPolicy {
        strategy,
        wait_for_recovery: input.wait_for_recovery.unwrap_or_default(),
        request_timeout_ms,
        quota: validate_quota(v, input.quota.unwrap_or_default()),
    }
}

fn validate_quota(v: &mut Validator, input: QuotaPolicyInput) -> QuotaPolicy {
    let defaults = QuotaPolicy::default();
    let mut window = |field: &str, value: Option<i64>, default: u32| {
        value.map_or(default, |secs| v.in_range(field, secs, QUOTA_WINDOW_SECS_RANGE))
    };
    let request_window_secs = window(
        "routing.quota.request_window_secs",
        input.request_window_secs,
        defaults.request_window_secs,
    );
    let token_window_secs = window(
        "routing.quota.token_window_secs",
        input.token_window_secs,
        defaults.token_window_secs,
    );
    let reserve_percent = input.reserve_percent.map_or(defaults.reserve_percent, |p| {
        let p = v.in_range("routing.quota.reserve_percent", p, QUOTA_RESERVE_PERCENT_RANGE);
        // In range (else the request fails), so this never takes the fallback.
        u8::try_from(p).unwrap_or_default()
    });
    QuotaPolicy {
        enabled: input.enabled.unwrap_or(defaults.enabled),
        request_window_secs,
        token_window_secs,
        reserve_percent,
    }
}

fn validate_traces(v: &mut Validator, input: TracesInput) -> GatewayTraces {
    let defaults = GatewayTraces::default();
    let redact_fields = input.redact_fields.unwrap_or_default();
    if redact_fields.len() > MAX_REDACT_FIELDS {
        v.error("traces.redact_fields", format!("must have at most {MAX_REDACT_FIELDS} items"));
    }
    for (i, field) in redact_fields.iter().enumerate() {
        let chars = field.chars().count();
        if chars == 0 || chars > MAX_REDACT_FIELD_CHARS {
            v.error(
                format!("traces.redact_fields[{i}]"),
                format!("must be 1 to {MAX_REDACT_FIELD_CHARS} characters"),
            );
        }
    }
    let max_payload_bytes = input
        .max_payload_bytes
        .map(|b| v.in_range("traces.max_payload_bytes", b, 1..=i64::from(MAX_PAYLOAD_BYTES)));
    let retention_days = input.retention_days.map_or(defaults.retention_days, |d| {
        v.in_range("traces.retention_days", d, 1..=i64::from(MAX_TRACE_RETENTION_DAYS))
    });
    let max_count = input.max_count.map_or(defaults.max_count, |n| {
        v.in_range("traces.max_count", n, 1..=i64::from(MAX_TRACE_MAX_COUNT))
    });
    GatewayTraces {
        enabled: input.enabled.unwrap_or(defaults.enabled),
        capture_payload: input.capture_payload.unwrap_or(defaults.capture_payload),
        redact_fields,
        max_payload_bytes,
        retention_days,
        max_count,
    }
}

fn validate_key_limits(v: &mut Validator, input: KeyLimitPolicyInput) -> KeyLimitPolicy {
    let default_completion_tokens = input.default_completion_tokens.map(|t| {
        v.in_range("key_limits.default_completion_tokens", t, DEFAULT_COMPLETION_TOKENS_RANGE)
    });
    KeyLimitPolicy { default_completion_tokens, fail_closed: input.fail_closed.unwrap_or(false) }
}

fn validate_create(req: CreateGatewayRequest) -> Result<NewGateway, ApiError> {
    let mut v = Validator::new();
    let name = v.gateway_name("name", &req.name);
    let members = validate_members(&mut v, req.endpoints);
    let routing = validate_routing(&mut v, req.routing.unwrap_or_default());
    let key_limits = validate_key_limits(&mut v, req.key_limits.unwrap_or_default());
    let traces = validate_traces(&mut v, req.traces.unwrap_or_default());
    v.finish(NewGateway { name, members, routing, key_limits, traces })
}

fn validate_update(req: UpdateGatewayRequest) -> Result<GatewayPatch, ApiError> {
    let mut v = Validator::new();
    if req.name.is_none()
        && req.endpoints.is_none()
        && req.routing.is_none()
        && req.traces.is_none()
        && req.key_limits.is_none()
    {
        // An empty patch would still bump the configuration version and push a snapshot.
        v.error("body", "must set at least one field");
    }
    let name = req.name.map(|n| v.gateway_name("name", &n));
    let members = req.endpoints.map(|m| validate_members(&mut v, m));
    let routing = req.routing.map(|r| validate_routing(&mut v, r));
    let key_limits = req.key_limits.map(|k| validate_key_limits(&mut v, k));
    let traces = req.traces.map(|t| validate_traces(&mut v, t));
    v.finish(GatewayPatch { name, members, routing, key_limits, traces })
}

/// Create a gateway.
#[utoipa::path(
    post,
    path = "/api/v1/gateways",
    operation_id = "create_gateway",
    tag = "gateways",
    request_body = CreateGatewayRequest,
    responses(
        (status = 201, description = "Created", body = GatewayResponse,
            headers(("location" = String, description = "URL of the new gateway"))),
        (status = 409, description = "A gateway with this name exists", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = UNKNOWN_MEMBER, body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateGatewayRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let new = validate_create(req)?;
    let (record, version) = state.store.create_gateway(new, &caller.audit).await?;
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action: "create", id: &record.id, name: &record.name },
        version,
    );
    let location = format!("/api/v1/gateways/{}", record.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(respond(&state, record))))
}

/// List gateways.
#[utoipa::path(
    get,
    path = "/api/v1/gateways",
    operation_id = "list_gateways",
    tag = "gateways",
    responses((status = 200, description = "All gateways", body = Vec<GatewayResponse>))
)]
pub async fn list(State(state): State<AdminState>) -> Result<Json<Vec<GatewayResponse>>, ApiError> {
    let records = state.store.list_gateways().await?;
    Ok(Json(records.into_iter().map(|r| respond(&state, r)).collect()))
}

/// Get one gateway.
#[utoipa::path(
    get,
    path = "/api/v1/gateways/{id}",
    operation_id = "get_gateway",
    tag = "gateways",
    params(("id" = String, Path, format = Uuid, description = "Gateway id")),
    responses(
        (status = 200, description = "The gateway", body = GatewayResponse),
        (status = 404, description = "No such gateway", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<GatewayResponse>, ApiError> {
    let id: GatewayId = path_id("gateway", &id)?;
    let record = state.store.get_gateway(id).await?;
    Ok(Json(respond(&state, record)))
}

/// Rename a gateway and/or replace its members.
#[utoipa::path(
    patch,
    path = "/api/v1/gateways/{id}",
    operation_id = "update_gateway",
    tag = "gateways",
    params(("id" = String, Path, format = Uuid, description = "Gateway id")),
    request_body = UpdateGatewayRequest,
    responses(
        (status = 200, description = "The updated gateway", body = GatewayResponse),
        (status = 404, description = "No such gateway", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Another gateway has this name", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = UNKNOWN_MEMBER, body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateGatewayRequest>,
) -> Result<Json<GatewayResponse>, ApiError> {
    let id: GatewayId = path_id("gateway", &id)?;
    let patch = validate_update(req)?;
    let (record, version) = state.store.update_gateway(id, patch, &caller.audit).await?;
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action: "update", id: &record.id, name: &record.name },
        version,
    );
    Ok(Json(respond(&state, record)))
}

/// Delete a gateway and its keys.
#[utoipa::path(
    delete,
    path = "/api/v1/gateways/{id}",
    operation_id = "delete_gateway",
    tag = "gateways",
    params(("id" = String, Path, format = Uuid, description = "Gateway id")),
    responses(
        (status = 204, description = "Deleted, with its keys"),
        (status = 404, description = "No such gateway", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: GatewayId = path_id("gateway", &id)?;
    let record = state.store.get_gateway(id).await?;
    let version = state.store.delete_gateway(id, &caller.audit).await?;
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action: "delete", id: &id, name: &record.name },
        version,
    );
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::FieldError;

    fn member(enabled: bool) -> GatewayMember {
        GatewayMember { endpoint_id: EndpointId::new(), enabled, priority: 0, weight: 1 }
    }

    fn state_of(members: &[(GatewayMember, EndpointState)]) -> GatewayState {
        let ms: Vec<GatewayMember> = members.iter().map(|(m, _)| m.clone()).collect();
        let health: HashMap<EndpointId, EndpointState> =
            members.iter().map(|(m, s)| (m.endpoint_id, *s)).collect();
        gateway_state(&ms, |id| health[&id])
    }

    #[test]
    fn gateway_state_follows_its_enabled_members() {
        use EndpointState::{Error, Healthy, Throttling};
        assert_eq!(state_of(&[]), GatewayState::Error, "no members");
        assert_eq!(state_of(&[(member(false), Healthy)]), GatewayState::Error, "none enabled");
        assert_eq!(
            state_of(&[(member(true), Healthy), (member(true), Throttling)]),
            GatewayState::Degraded
        );
        assert_eq!(
            state_of(&[(member(true), Healthy), (member(true), Error)]),
            GatewayState::Degraded
        );
        assert_eq!(
            state_of(&[(member(true), Throttling), (member(true), Throttling)]),
            GatewayState::Throttling
        );
        // All unavailable, one throttling: clients get 429 with Retry-After, not 503.
        assert_eq!(
            state_of(&[(member(true), Throttling), (member(true), Error)]),
            GatewayState::Throttling
        );
        assert_eq!(state_of(&[(member(true), Error)]), GatewayState::Error);
        assert_eq!(state_of(&[(member(true), Healthy)]), GatewayState::Healthy);
        // Disabled members count for nothing either way.
        assert_eq!(
            state_of(&[(member(true), Throttling), (member(false), Healthy)]),
            GatewayState::Throttling
        );
        assert_eq!(
            state_of(&[(member(true), Healthy), (member(false), Error)]),
            GatewayState::Healthy
        );
    }

    #[test]
    fn routing_defaults_and_bounds() {
        let new = validate_create(CreateGatewayRequest {
            name: "gw".into(),
            endpoints: vec![],
            routing: None,
            traces: None,
            key_limits: None,
        })
        .expect("valid");
        assert_eq!(new.routing, RoutingPolicy::default());
        let err = validate_create(CreateGatewayRequest {
            name: "gw".into(),
            endpoints: vec![],
            routing: Some(RoutingInput {
                strategy: Some("round_robin".into()),
                wait_for_recovery: None,
                request_timeout_ms: Some(999),
                quota: None,
            }),
            traces: None,
            key_limits: None,
        });
        let Err(ApiError::Validation(errors)) = err else { panic!("expected validation errors") };
        assert_eq!(
            errors,
            vec![
                FieldError::new("routing.strategy", "must be one of: weighted, fastest"),
                FieldError::new("routing.request_timeout_ms", "must be between 1000 and 600000"),
            ]
        );
        let patch = validate_update(UpdateGatewayRequest {
            routing: Some(RoutingInput {
                strategy: Some("fastest".into()),
                wait_for_recovery: Some(true),
                request_timeout_ms: Some(600_000),
                quota: None,
            }),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            patch.routing,
            Some(RoutingPolicy {
                strategy: RoutingStrategy::Fastest,
                wait_for_recovery: true,
                request_timeout_ms: Some(600_000),
                ..RoutingPolicy::default()
            })
        );
    }

    fn input(id: &str) -> GatewayMemberInput {
        GatewayMemberInput { endpoint_id: id.into(), enabled: None, priority: None, weight: None }
    }

    #[test]
    fn member_defaults_are_applied() {
        let id = EndpointId::new();
        let new = validate_create(CreateGatewayRequest {
            name: "gpt-4o".into(),
            endpoints: vec![input(&id.to_string())],
            routing: None,
            traces: None,
            key_limits: None,
        })
        .expect("valid");
        assert_eq!(
            new.members,
            vec![GatewayMember { endpoint_id: id, enabled: true, priority: 0, weight: 1 }]
        );
    }

    #[test]
    fn every_member_error_is_reported_with_its_index() {
        let id = EndpointId::new().to_string();
        let err = validate_create(CreateGatewayRequest {
            name: "auto".into(),
            endpoints: vec![
                input(&id),
                GatewayMemberInput { weight: Some(0), priority: Some(101), ..input("nope") },
                input(&id),
            ],
            routing: None,
            traces: None,
            key_limits: None,
        });
        let Err(ApiError::Validation(errors)) = err else { panic!("expected validation errors") };
        assert_eq!(
            errors,
            vec![
                FieldError::new("name", "is reserved"),
                FieldError::new("endpoints[1].priority", "must be between 0 and 100"),
                FieldError::new("endpoints[1].weight", "must be between 1 and 1000"),
                FieldError::new("endpoints[1].endpoint_id", "must be a UUID"),
                FieldError::new(
                    "endpoints[2].endpoint_id",
                    "duplicate of endpoints[0].endpoint_id"
                ),
            ]
        );
    }

    #[test]
    fn an_empty_patch_is_rejected() {
        assert!(matches!(
            validate_update(UpdateGatewayRequest::default()),
            Err(ApiError::Validation(e)) if e == vec![FieldError::new("body", "must set at least one field")]
        ));
    }
}
