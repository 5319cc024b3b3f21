//! `/audit`: the audit log, newest first — who changed what, when, from where, and at which
//! configuration version — filtered by entity kind, actor and action, paged with the API's
//! cursor. Each entry's before/after is behind a disclosure.

use std::collections::{BTreeSet, HashSet};

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use chrono::Utc;
use http::Method;
use maud::{Markup, html};
use serde::Deserialize;

use super::{AuditEntryView, AuditPageView, EndpointView, GatewayView, ago};
use crate::Console;
use crate::error::ConsoleError;
use crate::layout::{self, Nav, empty_state, problem_summary};
use crate::operator::Operator;

/// Entries per page (the API allows up to 500; 50 keeps the page quick to scan).
const PAGE_SIZE: u32 = 50;

/// The entity kinds and actions the API filters by (`AuditEntityKind`, `AuditActionKind`).
const ENTITIES: [(&str, &str); 5] = [
    ("inference_endpoint", "Inference endpoint"),
    ("gateway", "Gateway"),
    ("gateway_key", "Gateway key"),
    ("api_token", "API token"),
    ("data_plane_token", "Data-plane token"),
];
const ACTIONS: [(&str, &str); 7] = [
    ("create", "Create"),
    ("update", "Update"),
    ("delete", "Delete"),
    ("revoke", "Revoke"),
    ("import", "Import"),
    ("reset_health", "Reset health"),
    ("reset_usage", "Reset usage"),
];

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new().route("/audit", get(list))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    entity: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

impl AuditQuery {
    fn filters(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for (key, value) in
            [("entity", &self.entity), ("actor", &self.actor), ("action", &self.action)]
        {
            if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                out.push((key, v));
            }
        }
        out
    }
}

/// `GET /audit`.
async fn list(op: Operator, Query(q): Query<AuditQuery>) -> Result<Markup, ConsoleError> {
    let mut api_query = layout::paged_query(&q.filters(), q.cursor.as_deref());
    if !api_query.is_empty() {
        api_query.push('&');
    }
    api_query.push_str(&format!("limit={PAGE_SIZE}"));
    let reply = op.api.send(Method::GET, &format!("/api/v1/audit-log?{api_query}"), None).await?;
    let (page, problem) = match reply.form_result::<AuditPageView>()? {
        Ok(page) => (page, None),
        Err(problem) => (AuditPageView { entries: Vec::new(), next_cursor: None }, Some(problem)),
    };
    // Which entities still exist, to link to them.
    let (endpoints, gateways) = if page.entries.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        tokio::try_join!(
            op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
            op.api.get::<Vec<GatewayView>>("/api/v1/gateways"),
        )?
    };
    let live_endpoints: HashSet<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
    let live_gateways: HashSet<&str> = gateways.iter().map(|g| g.id.as_str()).collect();
    let link = |e: &AuditEntryView| -> Option<String> {
        match e.entity.as_str() {
            "inference_endpoint" if live_endpoints.contains(e.entity_id.as_str()) => {
                Some(format!("/endpoints/{}", e.entity_id))
            }
            "gateway" if live_gateways.contains(e.entity_id.as_str()) => {
                Some(format!("/gateways/{}", e.entity_id))
            }
            "gateway_key" => {
                let gateway = [&e.after, &e.before]
                    .into_iter()
                    .flatten()
                    .find_map(|m| m.get("gateway_id").and_then(|v| v.as_str()))?;
                live_gateways.contains(gateway).then(|| format!("/gateways/{gateway}#h-keys"))
            }
            _ => None,
        }
    };
    let actors: BTreeSet<&str> = page.entries.iter().map(|e| e.actor.as_str()).collect();
    let filtered = !q.filters().is_empty();
    let now = Utc::now();
    let selected = |current: &Option<String>, value: &str| current.as_deref() == Some(value);
    let content = html! {
        div.page-head {
            div {
                h1 { "Audit Log" }
                p { "Every change made through the admin API or this console, newest first." }
            }
        }
        form.toolbar.filters method="get" action="/audit" role="search" aria-label="Filter the audit log" {
            div.field {
                label for="filter-entity" { "Entity" }
                select #filter-entity name="entity" {
                    option value="" { "Any" }
                    @for (value, label) in ENTITIES {
                        option value=(value) selected[selected(&q.entity, value)] { (label) }
                    }
                }
            }
            div.field {
                label for="filter-actor" { "Actor" }
                input #filter-actor type="text" name="actor" value=(q.actor.as_deref().unwrap_or(""))
                    placeholder="bootstrap, token:ci, oidc:…" list="actors";
                datalist #actors { @for a in &actors { option value=(a) {} } }
            }
            div.field {
                label for="filter-action" { "Action" }
                select #filter-action name="action" {
                    option value="" { "Any" }
                    @for (value, label) in ACTIONS {
                        option value=(value) selected[selected(&q.action, value)] { (label) }
                    }
                }
            }
            div.actions {
                button #apply-filters type="submit" { "Apply" }
                @if filtered { a.button.secondary href="/audit" { "Clear" } }
            }
        }
        (problem_summary(problem.as_ref(), &[]))
        @if page.entries.is_empty() {
            @if problem.is_none() {
                (empty_state(if filtered || q.cursor.is_some() { "No entries match these filters." } else { "No configuration changes yet." }, None))
            }
        } @else {
            div.table-wrap {
                table #audit-table {
                    thead {
                        tr {
                            th scope="col" { "When" }
                            th scope="col" { "Who" }
                            th scope="col" { "What" }
                            th scope="col" { "Entity" }
                            th.num scope="col" { "Version" }
                            th scope="col" { "Client IP" }
                            th scope="col" { "Details" }
                        }
                    }
                    tbody {
                        @for e in &page.entries {
                            tr data-action=(e.action) data-entity=(e.entity) {
                                td { span title=(e.at.to_rfc3339()) { (ago(e.at, now)) } }
                                td.mono { (e.actor) }
                                td { (label_of(&ACTIONS, &e.action)) " " span.sub { (label_of(&ENTITIES, &e.entity).to_lowercase()) } }
                                td {
                                    @match link(e) {
                                        Some(href) => a href=(href) { (e.entity_name) },
                                        None => span title="No longer exists, or has no page" { (e.entity_name) },
                                    }
                                }
                                td.num { @match e.config_version { Some(v) => (v), None => span.sub { "—" } } }
                                td.mono { (e.client_ip.as_deref().unwrap_or("—")) }
                                td {
                                    @if e.before.is_some() || e.after.is_some() || e.request_id.is_some() {
                                        details.change {
                                            summary { "Changes" }
                                            div.before-after {
                                                @if let Some(b) = &e.before {
                                                    div { h4 { "Before" } pre.json { (pretty(b)) } }
                                                }
                                                @if let Some(a) = &e.after {
                                                    div { h4 { "After" } pre.json { (pretty(a)) } }
                                                }
                                            }
                                            @if let Some(r) = &e.request_id { p.sub { "Request " span.mono { (r) } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (layout::pager("/audit", &q.filters(), q.cursor.is_some(), page.next_cursor.as_deref()))
    };
    Ok(layout::page(&op, "Audit Log", Nav::Audit, content))
}

fn label_of<'a>(table: &[(&str, &'a str)], value: &'a str) -> &'a str {
    table.iter().find(|(v, _)| *v == value).map_or(value, |(_, l)| l)
}

fn pretty(map: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::to_string_pretty(map).unwrap_or_default()
}
