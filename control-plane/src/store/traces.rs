//! Request traces (issue #14, item 3): each gateway's trace settings (columns of `gateways`,
//! configuration like the rest of the gateway) and the `request_traces` table, which is not
//! configuration: the trace writer inserts data planes' batches into it (one transaction per
//! batch, multi-row `INSERT`s), the admin API reads it newest first, and the retention job
//! deletes what is older or more than each gateway keeps. None of it bumps the version or
//! writes an audit row.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use modelgw_model::traces::{RequestTrace, TraceAttempt, TraceSettings};
use modelgw_model::{GatewayId, GatewayKeyId, NodeId};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row as _};
use uuid::Uuid;

use super::{Store, StoreError, decode_error, now_ms, parse_column, time_from_db, u32_from_db};
use crate::metrics::StoreOperation;

/// How long traces are kept when the gateway says nothing: a week covers "what happened
/// yesterday / last Friday" without the table growing with every request for ever.
pub const DEFAULT_TRACE_RETENTION_DAYS: u32 = 7;
/// How many traces of one gateway are kept when it says nothing (the newest). At a few hundred
/// bytes of metadata each that is tens of MiB per gateway; payload capture (up to twice the
/// payload cap per trace) is what makes a trace large.
pub const DEFAULT_TRACE_MAX_COUNT: u32 = 100_000;
/// The longest retention a gateway may set: a year. Longer belongs in a log archive.
pub const MAX_TRACE_RETENTION_DAYS: u32 = 365;
/// The most traces a gateway may keep: ten million (a few GiB of metadata).
pub const MAX_TRACE_MAX_COUNT: u32 = 10_000_000;

/// Rows per `INSERT` statement: 20 bound values each, 4,000 per statement, far under both
/// backends' limits on bound parameters (SQLite 32,766, PostgreSQL 65,535).
const INSERT_CHUNK: usize = 200;
/// Rows per `DELETE` statement of the retention job: small enough that one statement never
/// holds SQLite's write lock for long (config writes wait behind it), large enough that a
/// backlog clears in a few statements.
const DELETE_CHUNK: i64 = 5_000;

/// One gateway's trace settings: what its data planes record (`settings`) and how long the
/// control plane keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayTraces {
    pub enabled: bool,
    /// Request and response bodies, redacted and capped.
    pub capture_payload: bool,
    /// JSON field names whose values captured bodies carry as `"[REDACTED]"`, at any depth.
    pub redact_fields: Vec<String>,
    /// Cap of each captured body; `None` = `modelgw_model::traces::DEFAULT_MAX_PAYLOAD_BYTES`.
    pub max_payload_bytes: Option<u32>,
    /// Traces that started longer ago are deleted.
    pub retention_days: u32,
    /// Beyond this many traces of the gateway, the oldest are deleted.
    pub max_count: u32,
}

impl Default for GatewayTraces {
    fn default() -> Self {
        GatewayTraces {
            enabled: false,
            capture_payload: false,
            redact_fields: Vec::new(),
            max_payload_bytes: None,
            retention_days: DEFAULT_TRACE_RETENTION_DAYS,
            max_count: DEFAULT_TRACE_MAX_COUNT,
        }
    }
}

impl GatewayTraces {
    /// What the data planes are told (the snapshot's `Gateway.traces`).
    pub fn settings(&self) -> TraceSettings {
        TraceSettings {
            enabled: self.enabled,
            capture_payload: self.capture_payload,
            redact_fields: self.redact_fields.clone(),
            max_payload_bytes: self.max_payload_bytes,
        }
    }
}

/// Writes the trace columns of gateway `id` (inside the caller's write transaction).
pub(super) async fn write_gateway_traces(
    conn: &mut AnyConnection,
    id: GatewayId,
    traces: &GatewayTraces,
) -> Result<(), StoreError> {
    let fields = serde_json::to_string(&traces.redact_fields)
        .map_err(|e| decode_error("gateways.traces_redact_fields", e.to_string()))?;
    sqlx::query(
        "UPDATE gateways SET traces_enabled = $2, traces_capture_payload = $3, \
         traces_redact_fields = $4, traces_max_payload_bytes = $5, traces_retention_days = $6, \
         traces_max_count = $7 WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(i64::from(traces.enabled))
    .bind(i64::from(traces.capture_payload))
    .bind(fields)
    .bind(traces.max_payload_bytes.map(i64::from))
    .bind(i64::from(traces.retention_days))
    .bind(i64::from(traces.max_count))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The trace columns of a `gateways` row (read by the gateway records and the snapshot load).
pub(super) fn gateway_traces_from_row(row: &AnyRow) -> Result<GatewayTraces, StoreError> {
    let enabled: i64 = row.try_get("traces_enabled")?;
    let capture: i64 = row.try_get("traces_capture_payload")?;
    let fields: String = row.try_get("traces_redact_fields")?;
    let redact_fields: Vec<String> = serde_json::from_str(&fields)
        .map_err(|e| decode_error("gateways.traces_redact_fields", e.to_string()))?;
    let max_payload: Option<i64> = row.try_get("traces_max_payload_bytes")?;
    Ok(GatewayTraces {
        enabled: enabled != 0,
        capture_payload: capture != 0,
        redact_fields,
        max_payload_bytes: max_payload
            .map(|b| u32_from_db("gateways.traces_max_payload_bytes", b))
            .transpose()?,
        retention_days: u32_from_db(
            "gateways.traces_retention_days",
            row.try_get("traces_retention_days")?,
        )?,
        max_count: u32_from_db("gateways.traces_max_count", row.try_get("traces_max_count")?)?,
    })
}

/// The id the control plane gives a stored trace (UUID v7: ordered by insertion time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TraceId(pub Uuid);

impl TraceId {
    pub fn new() -> TraceId {
        TraceId(Uuid::now_v7())
    }
}

impl Default for TraceId {
    fn default() -> Self {
        TraceId::new()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TraceId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TraceId)
    }
}

/// One stored trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTrace {
    pub id: TraceId,
    /// The data plane that served the request.
    pub node_id: String,
    /// When the control plane stored it.
    pub received_at: DateTime<Utc>,
    /// As the data plane reported it; lists leave the bodies out (`None`).
    pub trace: RequestTrace,
    /// Whether a body was captured (also in lists, which leave the bodies out).
    pub payload_captured: bool,
    /// The gateway's and the key's current names (`None` once deleted).
    pub gateway_name: Option<String>,
    pub key_name: Option<String>,
}

/// Which answers a trace query keeps: one status, or a class (`4` = 400–499).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    Class(u8),
}

impl FromStr for StatusFilter {
    type Err = &'static str;
    /// `429` or `4xx` (case-insensitive `x`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const HELP: &str = "must be a status (100-599) or a class (1xx-5xx)";
        let b = s.as_bytes();
        if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b[1..].eq_ignore_ascii_case(b"xx") {
            return Ok(StatusFilter::Class(b[0] - b'0'));
        }
        match s.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) && b.len() == 3 => {
                Ok(StatusFilter::Exact(code))
            }
            _ => Err(HELP),
        }
    }
}

/// Where the next page starts: the last trace of the previous one (traces are ordered by
/// start time, then id, newest first). Shown to clients as an opaque string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceCursor {
    pub started_unix_ms: i64,
    pub id: TraceId,
}

impl fmt::Display for TraceCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.started_unix_ms, self.id.0.simple())
    }
}

impl FromStr for TraceCursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, id) = s.split_once('_').ok_or(())?;
        Ok(TraceCursor {
            started_unix_ms: ms.parse().map_err(|_| ())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

/// Which traces to read, newest first. Every set field must match.
#[derive(Clone, Debug, Default)]
pub struct TraceQuery {
    /// Started at or after.
    pub from: Option<DateTime<Utc>>,
    /// Started strictly before.
    pub to: Option<DateTime<Utc>>,
    pub gateway_id: Option<GatewayId>,
    pub key_id: Option<GatewayKeyId>,
    pub status: Option<StatusFilter>,
    /// Only traces after this one in the order (the previous page's `next`).
    pub cursor: Option<TraceCursor>,
    /// At most this many traces.
    pub limit: u32,
}

/// One page of traces, and where the next one starts (`None`: this was the last).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TracePage {
    pub traces: Vec<StoredTrace>,
    pub next: Option<TraceCursor>,
}

/// What one retention run deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRetention {
    /// Older than their gateway's `retention_days`.
    pub by_age: u64,
    /// Beyond their gateway's `max_count` (the oldest).
    pub by_count: u64,
    /// Of gateways that no longer exist.
    pub orphaned: u64,
}

/// An attempt as stored in the `attempts` JSON column.
#[derive(Serialize, Deserialize)]
struct AttemptColumn {
    endpoint_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    outcome: String,
    latency_ms: u32,
}

/// Columns of a list item (no bodies), each qualified with the table's alias `t`.
const LIST_COLUMNS: &str = "t.id, t.gateway_id, t.key_id, t.node_id, t.request_id, \
     t.started_at, t.received_at, t.operation, t.model, t.stream, t.status, t.latency_ms, \
     t.ttft_ms, t.prompt_tokens, t.completion_tokens, t.client_request_id, t.attempts, \
     t.payload_truncated, \
     (CASE WHEN t.request_body IS NULL AND t.response_body IS NULL THEN 0 ELSE 1 END) \
     AS payload_captured, g.name AS gateway_name, k.name AS key_name";

/// The joins that name the gateway and the key.
const NAMES_JOIN: &str = "LEFT JOIN gateways g ON g.id = t.gateway_id \
     LEFT JOIN gateway_keys k ON k.id = t.key_id";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores one batch of `node`'s traces in one transaction; returns how many.
    #[tracing::instrument(name = "store.insert_traces", skip_all, fields(node_id = %node.0, traces = traces.len()), level = "debug")]
    pub async fn insert_traces(
        &self,
        node: &NodeId,
        traces: &[RequestTrace],
    ) -> Result<usize, StoreError> {
        if traces.is_empty() {
            return Ok(0);
        }
        let _timer = self.metrics.time_store(StoreOperation::WriteTraces);
        let received = now_ms();
        let mut tx = self.pool.begin().await?;
        for chunk in traces.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO request_traces (id, gateway_id, key_id, node_id, request_id, \
                 started_at, received_at, operation, model, stream, status, latency_ms, ttft_ms, \
                 prompt_tokens, completion_tokens, client_request_id, attempts, \
                 payload_truncated, request_body, response_body) VALUES ",
            );
            const COLUMNS: usize = 20;
            for row in 0..chunk.len() {
                if row > 0 {
                    sql.push(',');
                }
                sql.push('(');
                for col in 0..COLUMNS {
                    if col > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!("${}", row * COLUMNS + col + 1));
                }
                sql.push(')');
            }
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for t in chunk {
                let attempts: Vec<AttemptColumn> = t
                    .attempts
                    .iter()
                    .map(|a| AttemptColumn {
                        endpoint_id: a.endpoint_id.to_string(),
                        status: a.status,
                        outcome: a.outcome.clone(),
                        latency_ms: a.latency_ms,
                    })
                    .collect();
                let attempts = serde_json::to_string(&attempts)
                    .map_err(|e| decode_error("request_traces.attempts", e.to_string()))?;
                q = q
                    .bind(TraceId::new().to_string())
                    .bind(t.gateway_id.to_string())
                    .bind(t.key_id.to_string())
                    .bind(node.0.clone())
                    .bind(t.request_id.clone())
                    .bind(t.started_unix_ms)
                    .bind(received)
                    .bind(t.operation.clone())
                    .bind(t.model.clone())
                    .bind(i64::from(t.stream))
                    .bind(i64::from(t.status))
                    .bind(i64::from(t.latency_ms))
                    .bind(t.ttft_ms.map(i64::from))
                    .bind(t.prompt_tokens.map(i64_of))
                    .bind(t.completion_tokens.map(i64_of))
                    .bind(t.client_request_id.clone())
                    .bind(attempts)
                    .bind(i64::from(t.payload_truncated))
                    .bind(t.request_body.clone())
                    .bind(t.response_body.clone());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(traces.len())
    }

    /// Traces matching `query`, newest first, without their bodies.
    #[tracing::instrument(name = "store.list_traces", skip_all, level = "debug")]
    pub async fn list_traces(&self, query: &TraceQuery) -> Result<TracePage, StoreError> {
        // Only placeholders are formatted into the SQL; every value is bound, in order.
        enum Bound {
            Text(String),
            Number(i64),
        }
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Bound> = Vec::new();
        let mut push = |condition: &str, value: Bound| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("${}", values.len())));
        };
        if let Some(from) = query.from {
            push("t.started_at >= ?", Bound::Number(from.timestamp_millis()));
        }
        if let Some(to) = query.to {
            push("t.started_at < ?", Bound::Number(to.timestamp_millis()));
        }
        if let Some(id) = query.gateway_id {
            push("t.gateway_id = ?", Bound::Text(id.to_string()));
        }
        if let Some(id) = query.key_id {
            push("t.key_id = ?", Bound::Text(id.to_string()));
        }
        match query.status {
            Some(StatusFilter::Exact(code)) => push("t.status = ?", Bound::Number(code.into())),
            Some(StatusFilter::Class(class)) => {
                let low = i64::from(class) * 100;
                push("t.status >= ?", Bound::Number(low));
                push("t.status < ?", Bound::Number(low + 100));
            }
            None => {}
        }
        if let Some(cursor) = query.cursor {
            values.push(Bound::Number(cursor.started_unix_ms));
            let ms = values.len();
            values.push(Bound::Text(cursor.id.to_string()));
            let id = values.len();
            conditions
                .push(format!("(t.started_at < ${ms} OR (t.started_at = ${ms} AND t.id < ${id}))"));
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {LIST_COLUMNS} FROM request_traces t {NAMES_JOIN}{where_clause} \
             ORDER BY t.started_at DESC, t.id DESC LIMIT ${}",
            values.len() + 1
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for value in values {
            q = match value {
                Bound::Text(t) => q.bind(t),
                Bound::Number(n) => q.bind(n),
            };
        }
        // One more than asked: whether there is a next page.
        let limit = i64::from(query.limit);
        let rows = q.bind(limit + 1).fetch_all(&self.pool).await?;
        let mut traces =
            rows.iter().map(|r| trace_from_row(r, false)).collect::<Result<Vec<_>, _>>()?;
        let more = traces.len() > query.limit as usize;
        traces.truncate(query.limit as usize);
        let next = more
            .then(|| traces.last())
            .flatten()
            .map(|t| TraceCursor { started_unix_ms: t.trace.started_unix_ms, id: t.id });
        Ok(TracePage { traces, next })
    }

    /// One trace with its captured bodies.
    #[tracing::instrument(name = "store.get_trace", skip_all, fields(trace.id = %id), level = "debug")]
    pub async fn get_trace(&self, id: TraceId) -> Result<StoredTrace, StoreError> {
        let sql = format!(
            "SELECT {LIST_COLUMNS}, t.request_body, t.response_body FROM request_traces t \
             {NAMES_JOIN} WHERE t.id = $1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound { entity: "trace", id: id.to_string() })?;
        trace_from_row(&row, true)
    }

    /// The retention job's work: deletes, per gateway, traces that started more than its
    /// `retention_days` before `now` and those beyond its `max_count` newest, then the traces
    /// of gateways that no longer exist. In statements of at most [`DELETE_CHUNK`] rows.
    #[tracing::instrument(name = "store.prune_traces", skip_all, level = "debug")]
    pub async fn prune_traces(&self, now: DateTime<Utc>) -> Result<TraceRetention, StoreError> {
        let _timer = self.metrics.time_store(StoreOperation::PruneTraces);
        let mut deleted = TraceRetention::default();
        let gateways =
            sqlx::query("SELECT id, traces_retention_days, traces_max_count FROM gateways")
                .fetch_all(&self.pool)
                .await?;
        let mut known = HashSet::with_capacity(gateways.len());
        for row in &gateways {
            let id: String = row.try_get("id")?;
            let days: i64 = row.try_get("traces_retention_days")?;
            let max_count: i64 = row.try_get("traces_max_count")?;
            let cutoff = now.timestamp_millis().saturating_sub(days.saturating_mul(86_400_000));
            deleted.by_age += self
                .delete_in_chunks("gateway_id = $1 AND started_at < $2", |q| {
                    q.bind(id.clone()).bind(cutoff)
                })
                .await?;
            // The newest trace beyond the count: it and everything older go.
            let boundary = sqlx::query(
                "SELECT started_at, id FROM request_traces WHERE gateway_id = $1 \
                 ORDER BY started_at DESC, id DESC LIMIT 1 OFFSET $2",
            )
            .bind(id.clone())
            .bind(max_count)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(boundary) = boundary {
                let started: i64 = boundary.try_get("started_at")?;
                let last: String = boundary.try_get("id")?;
                deleted.by_count += self
                    .delete_in_chunks(
                        "gateway_id = $1 AND (started_at < $2 OR (started_at = $2 AND id <= $3))",
                        |q| q.bind(id.clone()).bind(started).bind(last.clone()),
                    )
                    .await?;
            }
            known.insert(id);
        }
        // The distinct gateways of the table, one index probe each (a loose index scan:
        // neither backend skips through an index for DISTINCT by itself).
        let traced: Vec<Option<String>> = sqlx::query_scalar(
            "WITH RECURSIVE g(id) AS ( \
               SELECT MIN(gateway_id) FROM request_traces \
               UNION ALL \
               SELECT (SELECT MIN(gateway_id) FROM request_traces WHERE gateway_id > g.id) \
               FROM g WHERE g.id IS NOT NULL \
             ) SELECT id FROM g WHERE id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for id in traced.into_iter().flatten().filter(|id| !known.contains(id)) {
            deleted.orphaned +=
                self.delete_in_chunks("gateway_id = $1", |q| q.bind(id.clone())).await?;
        }
        Ok(deleted)
    }

    /// Deletes the traces matching `condition` (its values bound by `bind`), a chunk at a time.
    async fn delete_in_chunks(
        &self,
        condition: &str,
        bind: impl Fn(AnyQuery<'static>) -> AnyQuery<'static>,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM request_traces WHERE id IN (SELECT id FROM request_traces \
             WHERE {condition} LIMIT ${})",
            placeholders_max(condition) + 1
        );
        let mut total = 0;
        loop {
            let q = bind(sqlx::query(AssertSqlSafe(sql.clone())));
            let done = q.bind(DELETE_CHUNK).execute(&self.pool).await?.rows_affected();
            total += done;
            if done < DELETE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

/// The highest `$n` in `sql`.
fn placeholders_max(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

fn trace_from_row(row: &AnyRow, with_bodies: bool) -> Result<StoredTrace, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> { Ok(row.try_get::<String, _>(name)?) };
    let opt_u64 = |name: &str| -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = row.try_get(name)?;
        v.map(|v| u64::try_from(v).map_err(|_| decode_error(name, format!("negative count {v}"))))
            .transpose()
    };
    let attempts: Vec<AttemptColumn> = serde_json::from_str(&text("attempts")?)
        .map_err(|e| decode_error("request_traces.attempts", e.to_string()))?;
    let attempts = attempts
        .into_iter()
        .map(|a| {
            Ok(TraceAttempt {
                endpoint_id: parse_column("request_traces.attempts.endpoint_id", &a.endpoint_id)?,
                status: a.status,
                outcome: a.outcome,
                latency_ms: a.latency_ms,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let status: i64 = row.try_get("status")?;
    let stream: i64 = row.try_get("stream")?;
    let truncated: i64 = row.try_get("payload_truncated")?;
    let captured: i64 = row.try_get("payload_captured")?;
    let ttft: Option<i64> = row.try_get("ttft_ms")?;
    let (request_body, response_body) = if with_bodies {
        (row.try_get("request_body")?, row.try_get("response_body")?)
    } else {
        (None, None)
    };
    Ok(StoredTrace {
        id: parse_column("request_traces.id", &text("id")?)?,
        node_id: text("node_id")?,
        received_at: time_from_db("request_traces.received_at", row.try_get("received_at")?)?,
        trace: RequestTrace {
            request_id: text("request_id")?,
            started_unix_ms: row.try_get("started_at")?,
            gateway_id: parse_column("request_traces.gateway_id", &text("gateway_id")?)?,
            key_id: parse_column("request_traces.key_id", &text("key_id")?)?,
            operation: text("operation")?,
            model: row.try_get("model")?,
            stream: stream != 0,
            status: u16::try_from(status)
                .map_err(|_| decode_error("request_traces.status", format!("{status}")))?,
            attempts,
            latency_ms: u32_from_db("request_traces.latency_ms", row.try_get("latency_ms")?)?,
            ttft_ms: ttft.map(|v| u32_from_db("request_traces.ttft_ms", v)).transpose()?,
            prompt_tokens: opt_u64("prompt_tokens")?,
            completion_tokens: opt_u64("completion_tokens")?,
            client_request_id: row.try_get("client_request_id")?,
            request_body,
            response_body,
            payload_truncated: truncated != 0,
        },
        payload_captured: captured != 0,
        gateway_name: row.try_get("gateway_name")?,
        key_name: row.try_get("key_name")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_are_a_code_or_a_class() {
        assert_eq!("429".parse(), Ok(StatusFilter::Exact(429)));
        assert_eq!("5xx".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("2XX".parse(), Ok(StatusFilter::Class(2)));
        for bad in ["6xx", "99", "600", "4x", "+429", "0429", "", "abc"] {
            assert!(bad.parse::<StatusFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = TraceCursor { started_unix_ms: 1_765_000_000_123, id: TraceId::new() };
        assert_eq!(cursor.to_string().parse(), Ok(cursor));
        for bad in ["", "12", "x_y", "12_not-a-uuid", "_0190a3b0c0d07000800000000000000"] {
            assert!(bad.parse::<TraceCursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_highest_placeholder_is_found() {
        assert_eq!(placeholders_max("a = $1 AND (b < $2 OR (b = $2 AND c <= $3))"), 3);
        assert_eq!(placeholders_max("a = 1"), 0);
    }
}
