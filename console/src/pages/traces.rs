//! `/traces`: the request traces of gateways that record them (issue #14, item 3), newest first,
//! filtered by gateway, key, status and time, paged with the API's cursor; and `/traces/{id}`:
//! one request — every endpoint tried with its outcome, latency, tokens — with its captured
//! request and response when there is one and the operator's role may read it (`operator` and
//! `admin`; the API decides). Payloads are shown as text (maud escapes them), pretty-printed
//! when they are JSON.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query};
use axum::routing::get;
use chrono::{DateTime, NaiveDateTime, Utc};
use http::Method;
use maud::{Markup, html};
use serde::Deserialize;

use super::endpoints::urlencode;
use super::{EndpointView, GatewayView, ago, path_id};
use crate::Console;
use crate::api::Problem;
use crate::error::ConsoleError;
use crate::layout::{self, Nav, empty_state, problem_summary};
use crate::operator::Operator;

/// Traces per page (the API allows up to 200).
const PAGE_SIZE: u32 = 50;

/// The status filters offered (any value the API takes works in the URL too).
const STATUSES: [(&str, &str); 6] = [
    ("2xx", "Success (2xx)"),
    ("4xx", "Client errors (4xx)"),
    ("429", "Throttled (429)"),
    ("5xx", "Server errors (5xx)"),
    ("503", "Unavailable (503)"),
    ("504", "Timed out (504)"),
];

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new().route("/traces", get(list)).route("/traces/{id}", get(detail))
}

/// `GET /api/v1/traces` (one element); `GET /api/v1/traces/{id}` adds the payload.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct TraceView {
    pub id: String,
    pub request_id: String,
    pub started_at: DateTime<Utc>,
    pub gateway_id: String,
    #[serde(default)]
    pub gateway_name: Option<String>,
    pub key_id: String,
    #[serde(default)]
    pub key_name: Option<String>,
    pub node_id: String,
    pub operation: String,
    #[serde(default)]
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub attempts: Vec<AttemptView>,
    pub latency_ms: u32,
    #[serde(default)]
    pub ttft_ms: Option<u32>,
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub client_request_id: Option<String>,
    pub payload_captured: bool,
    pub payload_truncated: bool,
    #[serde(default)]
    pub request_body: Option<String>,
    #[serde(default)]
    pub response_body: Option<String>,
    #[serde(default)]
    pub payload_visible: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct AttemptView {
    pub endpoint_id: String,
    #[serde(default)]
    pub status: Option<u16>,
    pub outcome: String,
    pub latency_ms: u32,
}

#[derive(Clone, Debug, Deserialize)]
struct TracePageView {
    traces: Vec<TraceView>,
    #[serde(default)]
    next_cursor: Option<String>,
}

/// The page's query: the API's filters, with times as a `datetime-local` field sends them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TracesQuery {
    #[serde(default)]
    gateway_id: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    /// `YYYY-MM-DDTHH:MM` (UTC) or RFC 3339.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// A time from the form (`datetime-local`, read as UTC) or a link (RFC 3339).
fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
        .map(|t| t.and_utc())
}

impl TracesQuery {
    fn value(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    /// The filters as given (for the form and the paging links).
    fn filters(&self) -> Vec<(&'static str, &str)> {
        [
            ("gateway_id", &self.gateway_id),
            ("key_id", &self.key_id),
            ("status", &self.status),
            ("from", &self.from),
            ("to", &self.to),
        ]
        .into_iter()
        .filter_map(|(k, v)| Self::value(v).map(|v| (k, v)))
        .collect()
    }

    /// The API's query string, or the problem with a time that does not read.
    fn api_query(&self) -> Result<String, Box<Problem>> {
        let mut parts = Vec::new();
        for (key, value) in self.filters() {
            let value = match key {
                "from" | "to" => match parse_time(value) {
                    Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    None => {
                        return Err(Box::new(Problem {
                            title: "Invalid filter".to_owned(),
                            status: 400,
                            detail: format!("{key}: not a date and time"),
                            ..Problem::default()
                        }));
                    }
                },
                _ => value.to_owned(),
            };
            parts.push(format!("{key}={}", urlencode(&value)));
        }
        if let Some(c) = Self::value(&self.cursor) {
            parts.push(format!("cursor={}", urlencode(c)));
        }
        parts.push(format!("limit={PAGE_SIZE}"));
        Ok(parts.join("&"))
    }
}

/// A status as a badge: success, client side, or server side.
fn status_badge(status: u16) -> Markup {
    let class = match status {
        200..=399 => "ok",
        429 => "warn",
        400..=499 => "muted",
        _ => "bad",
    };
    html! { span class={ "badge " (class) } data-status=(status) { (status) } }
}

/// `gpt-4o-eus: throttled → gpt-4o-weu: ok`.
fn attempts_summary(attempts: &[AttemptView], names: &HashMap<&str, &str>) -> Markup {
    html! {
        @if attempts.is_empty() {
            span.sub { "answered by the gateway" }
        }
        @for (i, a) in attempts.iter().enumerate() {
            @if i > 0 { " → " }
            span.attempt data-outcome=(a.outcome) {
                (names.get(a.endpoint_id.as_str()).copied().unwrap_or(a.endpoint_id.as_str()))
                ": " (a.outcome)
            }
        }
    }
}

fn tokens(t: &TraceView) -> String {
    match (t.prompt_tokens, t.completion_tokens) {
        (None, None) => "—".to_owned(),
        (p, c) => format!(
            "{} / {}",
            p.map_or("—".to_owned(), |p| p.to_string()),
            c.map_or("—".to_owned(), |c| c.to_string())
        ),
    }
}

/// `GET /traces`.
async fn list(op: Operator, Query(q): Query<TracesQuery>) -> Result<Markup, ConsoleError> {
    let (page, problem) = match q.api_query() {
        Err(problem) => (TracePageView { traces: Vec::new(), next_cursor: None }, Some(*problem)),
        Ok(query) => {
            let reply = op.api.send(Method::GET, &format!("/api/v1/traces?{query}"), None).await?;
            match reply.form_result::<TracePageView>()? {
                Ok(page) => (page, None),
                Err(problem) => {
                    (TracePageView { traces: Vec::new(), next_cursor: None }, Some(problem))
                }
            }
        }
    };
    let (endpoints, gateways) = tokio::try_join!(
        op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
        op.api.get::<Vec<GatewayView>>("/api/v1/gateways"),
    )?;
    let names: HashMap<&str, &str> =
        endpoints.iter().map(|e| (e.id.as_str(), e.name.as_str())).collect();
    let filtered = !q.filters().is_empty();
    let now = Utc::now();
    let current = |v: &Option<String>, value: &str| TracesQuery::value(v) == Some(value);
    let content = html! {
        div.page-head {
            div {
                h1 { "Request Traces" }
                p { "One line per request of the gateways that record traces, newest first: who called, every endpoint tried and how it answered, latency and tokens. Turn traces on per gateway (" code { "traces" } " in the admin API)." }
            }
        }
        form.toolbar.filters method="get" action="/traces" role="search" aria-label="Filter the traces" {
            div.field {
                label for="filter-gateway" { "Gateway" }
                select #filter-gateway name="gateway_id" {
                    option value="" { "Any" }
                    @for g in &gateways {
                        option value=(g.id) selected[current(&q.gateway_id, &g.id)] { (g.name) }
                    }
                }
            }
            div.field {
                label for="filter-key" { "Key id" }
                input #filter-key type="text" name="key_id" value=(q.key_id.as_deref().unwrap_or("")) placeholder="any key";
            }
            div.field {
                label for="filter-status" { "Status" }
                select #filter-status name="status" {
                    option value="" { "Any" }
                    @for (value, label) in STATUSES {
                        option value=(value) selected[current(&q.status, value)] { (label) }
                    }
                    @if let Some(other) = TracesQuery::value(&q.status).filter(|s| !STATUSES.iter().any(|(v, _)| v == s)) {
                        option value=(other) selected { (other) }
                    }
                }
            }
            div.field {
                label for="filter-from" { "From (UTC)" }
                input #filter-from type="datetime-local" name="from" value=(q.from.as_deref().unwrap_or(""));
            }
            div.field {
                label for="filter-to" { "To (UTC)" }
                input #filter-to type="datetime-local" name="to" value=(q.to.as_deref().unwrap_or(""));
            }
            div.actions {
                button #apply-filters type="submit" { "Apply" }
                @if filtered { a.button.secondary href="/traces" { "Clear" } }
            }
        }
        (problem_summary(problem.as_ref(), &[]))
        @if page.traces.is_empty() {
            @if problem.is_none() {
                (empty_state(if filtered || q.cursor.is_some() { "No traces match these filters." } else { "No traces yet. Gateways record them once their traces are enabled." }, None))
            }
        } @else {
            div.table-wrap {
                table #traces-table {
                    thead {
                        tr {
                            th scope="col" { "When" }
                            th scope="col" { "Gateway" }
                            th scope="col" { "Key" }
                            th scope="col" { "Operation" }
                            th scope="col" { "Status" }
                            th scope="col" { "Endpoints tried" }
                            th.num scope="col" { "Latency" }
                            th.num scope="col" { "TTFT" }
                            th.num scope="col" { "Tokens in / out" }
                        }
                    }
                    tbody {
                        @for t in &page.traces {
                            tr data-trace=(t.id) {
                                td {
                                    a href={ "/traces/" (t.id) } title=(t.started_at.to_rfc3339()) { (ago(t.started_at, now)) }
                                }
                                td {
                                    a href={ "/traces?gateway_id=" (urlencode(&t.gateway_id)) } { (t.gateway_name.as_deref().unwrap_or("(deleted)")) }
                                }
                                td {
                                    a href={ "/traces?key_id=" (urlencode(&t.key_id)) } { (t.key_name.as_deref().unwrap_or("(unknown)")) }
                                }
                                td {
                                    (t.operation)
                                    @if t.stream { " " span.sub { "stream" } }
                                    @if let Some(m) = &t.model { br; span.sub.mono { (m) } }
                                }
                                td { (status_badge(t.status)) }
                                td { (attempts_summary(&t.attempts, &names)) }
                                td.num { (t.latency_ms) " ms" }
                                td.num { @match t.ttft_ms { Some(ms) => { (ms) " ms" }, None => span.sub { "—" } } }
                                td.num { (tokens(t)) }
                            }
                        }
                    }
                }
            }
        }
        (layout::pager("/traces", &q.filters(), q.cursor.is_some(), page.next_cursor.as_deref()))
    };
    Ok(layout::page(&op, "Request Traces", Nav::Traces, content))
}

/// A captured body for display: JSON pretty-printed, anything else (a cut body, events) as it
/// is. Either way text, escaped by the template.
fn display_body(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}

/// `GET /traces/{id}`.
async fn detail(op: Operator, Path(id): Path<String>) -> Result<Markup, ConsoleError> {
    let id = path_id(&id, "trace")?;
    let path = format!("/api/v1/traces/{id}");
    let (t, endpoints) = tokio::try_join!(
        op.api.get::<TraceView>(&path),
        op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
    )?;
    let names: HashMap<&str, &str> =
        endpoints.iter().map(|e| (e.id.as_str(), e.name.as_str())).collect();
    let now = Utc::now();
    let content = html! {
        div.page-head {
            div {
                p.crumbs { a href="/traces" { "Request Traces" } }
                h1 { "Request " span.mono { (t.request_id) } }
                p { (status_badge(t.status)) " " (t.operation) @if t.stream { " (stream)" } }
            }
        }
        section.panel aria-labelledby="facts-head" {
            h2 #facts-head { "Request" }
            dl.facts #trace-facts {
                dt { "Started" } dd { time datetime=(t.started_at.to_rfc3339()) { (t.started_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")) } " " span.sub { "(" (ago(t.started_at, now)) ")" } }
                dt { "Gateway" } dd { a href={ "/traces?gateway_id=" (urlencode(&t.gateway_id)) } { (t.gateway_name.as_deref().unwrap_or("(deleted)")) } }
                dt { "Key" } dd { (t.key_name.as_deref().unwrap_or("(unknown)")) " " span.sub.mono { (t.key_id) } }
                dt { "Model" } dd.mono { (t.model.as_deref().unwrap_or("—")) }
                dt { "Latency" } dd { (t.latency_ms) " ms" }
                dt { "Time to first token" } dd { @match t.ttft_ms { Some(ms) => { (ms) " ms" }, None => "—" } }
                dt { "Tokens" } dd { "prompt " (t.prompt_tokens.map_or("—".to_owned(), |p| p.to_string())) ", completion " (t.completion_tokens.map_or("—".to_owned(), |c| c.to_string())) }
                dt { "Client request id" } dd.mono { (t.client_request_id.as_deref().unwrap_or("—")) }
                dt { "Data plane" } dd.mono { (t.node_id) }
            }
        }
        section.panel aria-labelledby="attempts-head" {
            h2 #attempts-head { "Endpoints tried" }
            @if t.attempts.is_empty() {
                p.sub { "None: the gateway answered itself (a refused request, or no endpoint available)." }
            } @else {
                table #attempts-table {
                    thead { tr { th scope="col" { "#" } th scope="col" { "Endpoint" } th scope="col" { "Status" } th scope="col" { "Outcome" } th.num scope="col" { "Latency" } } }
                    tbody {
                        @for (i, a) in t.attempts.iter().enumerate() {
                            tr data-outcome=(a.outcome) {
                                td { (i + 1) }
                                td { (names.get(a.endpoint_id.as_str()).copied().unwrap_or(a.endpoint_id.as_str())) }
                                td { @match a.status { Some(s) => (s), None => span.sub { "no answer" } } }
                                td { (a.outcome) }
                                td.num { (a.latency_ms) " ms" }
                            }
                        }
                    }
                }
            }
        }
        section.panel #payload aria-labelledby="payload-head" {
            h2 #payload-head { "Payload" }
            @if !t.payload_captured {
                p.sub { "Not captured: the gateway records metadata only." }
            } @else if !t.payload_visible {
                p.sub { "Captured, and shown to operators and admins only." }
            } @else {
                @if t.payload_truncated {
                    p.sub { "Cut at the gateway's payload cap (or left out for its size)." }
                }
                h3 { "Request" }
                @match &t.request_body {
                    Some(body) => pre.json.payload #request-body { (display_body(body)) },
                    None => p.sub { "No request body." },
                }
                h3 { "Response" }
                @match &t.response_body {
                    Some(body) => pre.json.payload #response-body { (display_body(body)) },
                    None => p.sub { "No response body." },
                }
            }
        }
    };
    Ok(layout::page(&op, "Request Trace", Nav::Traces, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_from_the_form_and_from_links() {
        let t = parse_time("2026-12-07T10:30").expect("datetime-local");
        assert_eq!(t.to_rfc3339(), "2026-12-07T10:30:00+00:00");
        assert!(parse_time("2026-12-07T10:30:15").is_some());
        assert!(parse_time("2026-12-07T10:30:15Z").is_some());
        assert!(parse_time("yesterday").is_none());
        let q = TracesQuery { from: Some("nope".into()), ..Default::default() };
        assert!(q.api_query().is_err());
        let q = TracesQuery {
            status: Some(" 5xx ".into()),
            from: Some("2026-12-07T10:30".into()),
            ..Default::default()
        };
        assert_eq!(q.api_query().expect("ok"), "status=5xx&from=2026-12-07T10%3A30%3A00Z&limit=50");
    }
}
