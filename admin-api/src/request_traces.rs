//! `/api/v1/traces`: the request traces data planes recorded for gateways that enable them
//! (issue #14, item 3), newest first, filtered and paged; and one trace with its captured
//! payload.
//!
//! Who sees what: every role reads the metadata (`viewer` and up: time, gateway, key,
//! operation, model, status, attempts, latency, tokens). Captured request and response bodies
//! are request content — prompts and answers, redacted only as far as the gateway's
//! `redact_fields` go — so `GET /api/v1/traces/{id}` returns them to `operator` and `admin`
//! only, the roles that configure payload capture in the first place; a `viewer` gets the
//! same trace with `request_body` and `response_body` null and `payload_visible: false`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use chrono::{DateTime, Utc};
use modelgw_control_plane::store::{StatusFilter, StoredTrace, TraceCursor, TraceId, TraceQuery};
use modelgw_model::{EndpointId, GatewayId, GatewayKeyId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AdminState;
use crate::identity::{Principal, Role};
use crate::problem::{ApiError, Problem};
use crate::validate::path_id;

/// Traces per page when `limit` is not given.
const DEFAULT_LIMIT: u32 = 50;
/// The most traces one page holds: bounds the response and the query's work.
pub const MAX_LIMIT: u32 = 200;
/// The least role that sees captured payloads.
pub const PAYLOAD_ROLE: Role = Role::Operator;

/// The pattern of `status`: one status, or a class.
const STATUS_PATTERN: &str = r"^([1-5][0-9][0-9]|[1-5][xX][xX])$";
/// The pattern of `cursor` (what `next_cursor` looks like); every matching string decodes.
const CURSOR_PATTERN: &str = r"^-?[0-9]{1,18}_[0-9a-f]{32}$";

/// Query of `GET /traces`. Every filter given must match.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TraceListQuery {
    /// Only requests that started at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only requests that started before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only this gateway's requests.
    #[param(value_type = Option<String>, format = Uuid)]
    pub gateway_id: Option<String>,
    /// Only this key's requests.
    #[param(value_type = Option<String>, format = Uuid)]
    pub key_id: Option<String>,
    /// Only answers with this status (`429`) or of this class (`5xx`).
    #[param(pattern = r"^([1-5][0-9][0-9]|[1-5][xX][xX])$", example = "5xx")]
    pub status: Option<String>,
    /// Traces per page, 1–200.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page, unchanged (with the same filters).
    #[param(pattern = r"^-?[0-9]{1,18}_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
}

/// One upstream attempt of a traced request, in the order tried.
#[derive(Debug, Serialize, ToSchema)]
pub struct TraceAttemptResponse {
    #[schema(value_type = String, format = Uuid)]
    pub endpoint_id: EndpointId,
    /// The endpoint's status; `null` when it sent none (connection refused, timeout).
    #[schema(required = true)]
    pub status: Option<u16>,
    /// How the attempt ended: `ok`, `throttled`, `server_error`, `timeout`, `connect_error`,
    /// `transport_error`, `client_error`, … (the `x-modelgw-attempts` outcomes).
    #[schema(example = "throttled")]
    pub outcome: String,
    pub latency_ms: u32,
}

/// A traced request, without its payload.
#[derive(Debug, Serialize, ToSchema)]
pub struct TraceSummary {
    #[schema(value_type = String, format = Uuid)]
    pub id: TraceId,
    /// The gateway's request id (`x-ms-client-request-id` of the answer).
    pub request_id: String,
    /// When the data plane received the request.
    pub started_at: DateTime<Utc>,
    #[schema(value_type = String, format = Uuid)]
    pub gateway_id: GatewayId,
    /// The gateway's current name; `null` once it was deleted.
    #[schema(required = true)]
    pub gateway_name: Option<String>,
    #[schema(value_type = String, format = Uuid)]
    pub key_id: GatewayKeyId,
    /// The key's name; `null` once its gateway was deleted.
    #[schema(required = true)]
    pub key_name: Option<String>,
    /// The data plane that served it.
    pub node_id: String,
    /// e.g. `chat_completions`, `embeddings`, `responses`.
    #[schema(example = "chat_completions")]
    pub operation: String,
    /// The model the answer named, else the one the request asked for.
    #[schema(required = true)]
    pub model: Option<String>,
    pub stream: bool,
    /// The status the client got.
    pub status: u16,
    /// Every endpoint tried, in order.
    pub attempts: Vec<TraceAttemptResponse>,
    /// To the end of the answer.
    pub latency_ms: u32,
    /// To the first token of a streamed answer.
    #[schema(required = true)]
    pub ttft_ms: Option<u32>,
    #[schema(required = true)]
    pub prompt_tokens: Option<u64>,
    #[schema(required = true)]
    pub completion_tokens: Option<u64>,
    /// `x-ms-client-request-id` as the client sent it (bounded, control characters dropped).
    #[schema(required = true)]
    pub client_request_id: Option<String>,
    /// A request or response body was captured (see `GET /api/v1/traces/{id}`).
    pub payload_captured: bool,
    /// A captured body was cut at the gateway's `max_payload_bytes` (or left out for size).
    pub payload_truncated: bool,
}

impl From<StoredTrace> for TraceSummary {
    fn from(s: StoredTrace) -> Self {
        let t = s.trace;
        TraceSummary {
            id: s.id,
            request_id: t.request_id,
            started_at: DateTime::from_timestamp_millis(t.started_unix_ms).unwrap_or_default(),
            gateway_id: t.gateway_id,
            gateway_name: s.gateway_name,
            key_id: t.key_id,
            key_name: s.key_name,
            node_id: s.node_id,
            operation: t.operation,
            model: t.model,
            stream: t.stream,
            status: t.status,
            attempts: t
                .attempts
                .into_iter()
                .map(|a| TraceAttemptResponse {
                    endpoint_id: a.endpoint_id,
                    status: a.status,
                    outcome: a.outcome,
                    latency_ms: a.latency_ms,
                })
                .collect(),
            latency_ms: t.latency_ms,
            ttft_ms: t.ttft_ms,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            client_request_id: t.client_request_id,
            payload_captured: s.payload_captured,
            payload_truncated: t.payload_truncated,
        }
    }
}

/// A page of traces.
#[derive(Debug, Serialize, ToSchema)]
pub struct TracePageResponse {
    /// Newest first.
    pub traces: Vec<TraceSummary>,
    /// Pass as `cursor` (with the same filters) for the next, older page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One traced request with its captured payload.
#[derive(Debug, Serialize, ToSchema)]
pub struct TraceResponse {
    #[serde(flatten)]
    pub trace: TraceSummary,
    /// The request body as the client sent it, redacted and capped; `null` when not captured
    /// or not visible to the caller's role.
    #[schema(required = true)]
    pub request_body: Option<String>,
    /// The answer, redacted and capped (a streamed chat completion reassembled into one
    /// message; other streams as their events); `null` when not captured or not visible.
    #[schema(required = true)]
    pub response_body: Option<String>,
    /// Whether the caller's role may see captured payloads (`operator` and `admin`).
    pub payload_visible: bool,
}

fn bad(field: &'static str, reason: &str) -> ApiError {
    ApiError::BadParameter { field, reason: reason.to_owned() }
}

fn query_reason(rejection: &QueryRejection) -> String {
    let text = rejection.body_text();
    text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_owned()
}

fn matches(pattern: &str, value: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|re| re.is_match(value))
}

/// The store's query from the API's, each parameter checked.
fn trace_query(query: TraceListQuery) -> Result<TraceQuery, ApiError> {
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => {
            raw.trim().parse::<u32>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(
                || bad("limit", &format!("must be a whole number from 1 to {MAX_LIMIT}")),
            )?
        }
    };
    let gateway_id = query
        .gateway_id
        .map(|raw| raw.trim().parse::<GatewayId>())
        .transpose()
        .map_err(|_| bad("gateway_id", "must be a gateway id (a UUID)"))?;
    let key_id = query
        .key_id
        .map(|raw| raw.trim().parse::<GatewayKeyId>())
        .transpose()
        .map_err(|_| bad("key_id", "must be a key id (a UUID)"))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(raw) if matches(STATUS_PATTERN, raw) => {
            Some(raw.parse::<StatusFilter>().map_err(|reason| bad("status", reason))?)
        }
        Some(_) => return Err(bad("status", "must be a status (100-599) or a class (1xx-5xx)")),
    };
    let cursor = match query.cursor.as_deref() {
        None => None,
        Some(raw) if matches(CURSOR_PATTERN, raw) => Some(
            raw.parse::<TraceCursor>()
                .map_err(|()| bad("cursor", "must be a next_cursor this API returned"))?,
        ),
        Some(_) => return Err(bad("cursor", "must be a next_cursor this API returned")),
    };
    Ok(TraceQuery { from: query.from, to: query.to, gateway_id, key_id, status, cursor, limit })
}

/// Traced requests, newest first, without their payloads.
#[utoipa::path(
    get,
    path = "/api/v1/traces",
    operation_id = "list_traces",
    tag = "traces",
    params(TraceListQuery),
    responses(
        (status = 200, description = "A page of traces, newest first", body = TracePageResponse),
        (status = 400, description = "Invalid query string (the parameter is named)", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
    query: Result<Query<TraceListQuery>, QueryRejection>,
) -> Result<Json<TracePageResponse>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::BadQuery { reason: query_reason(&rejection) })?;
    let page = state.store.list_traces(&trace_query(query)?).await?;
    Ok(Json(TracePageResponse {
        next_cursor: page.next.map(|c| c.to_string()),
        traces: page.traces.into_iter().map(TraceSummary::from).collect(),
    }))
}

/// One traced request; its captured payload for `operator` and `admin`.
#[utoipa::path(
    get,
    path = "/api/v1/traces/{id}",
    operation_id = "get_trace",
    tag = "traces",
    params(("id" = String, Path, format = Uuid, description = "Trace id")),
    responses(
        (status = 200, description = "The trace", body = TraceResponse),
        (status = 404, description = "No such trace (or deleted by retention)", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AdminState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<TraceResponse>, ApiError> {
    let id: TraceId = path_id("trace", &id)?;
    let mut stored = state.store.get_trace(id).await?;
    let visible = principal.can(PAYLOAD_ROLE);
    let (request_body, response_body) = if visible {
        (stored.trace.request_body.take(), stored.trace.response_body.take())
    } else {
        if stored.payload_captured {
            tracing::debug!(trace.id = %id, role = %principal.role, "trace payload withheld from a role below operator");
        }
        (None, None)
    };
    Ok(Json(TraceResponse {
        trace: TraceSummary::from(stored),
        request_body,
        response_body,
        payload_visible: visible,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Result<TraceQuery, ApiError> {
        let mut q = TraceListQuery::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "status" => q.status = v,
                "cursor" => q.cursor = v,
                "limit" => q.limit = v,
                "gateway_id" => q.gateway_id = v,
                "key_id" => q.key_id = v,
                _ => panic!("{k}"),
            }
        }
        trace_query(q)
    }

    fn field(r: Result<TraceQuery, ApiError>) -> &'static str {
        match r {
            Err(ApiError::BadParameter { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_value_the_patterns_allow_is_accepted_and_others_name_their_field() {
        for ok in ["100", "429", "599", "5xx", "4XX", "1xX"] {
            assert!(query(&[("status", ok)]).is_ok(), "{ok}");
        }
        for bad in ["99", "600", "6xx", "4x", "", "abc", "0429"] {
            assert_eq!(field(query(&[("status", bad)])), "status", "{bad}");
        }
        for ok in [
            "0_00000000000000000000000000000000",
            "-999999999999999999_ffffffffffffffffffffffffffffffff",
        ] {
            assert!(query(&[("cursor", ok)]).is_ok(), "{ok}");
        }
        for bad in ["", "1_", "1_0000", "9999999999999999999_00000000000000000000000000000000"] {
            assert_eq!(field(query(&[("cursor", bad)])), "cursor", "{bad}");
        }
        assert_eq!(query(&[]).expect("defaults").limit, DEFAULT_LIMIT);
        assert_eq!(query(&[("limit", "200")]).expect("max").limit, 200);
        for bad in ["0", "201", "-1", "x"] {
            assert_eq!(field(query(&[("limit", bad)])), "limit", "{bad}");
        }
        assert_eq!(field(query(&[("gateway_id", "nope")])), "gateway_id");
        assert_eq!(field(query(&[("key_id", "nope")])), "key_id");
    }
}
