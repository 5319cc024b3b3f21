//! `/endpoints`: the inference endpoints with their live state.

use axum::extract::Query;
use chrono::Utc;
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;

use super::{EndpointView, endpoint_state_detail};
use crate::error::ConsoleError;
use crate::layout::{self, Nav, empty_state, state_badge};
use crate::operator::Operator;

/// Rows per page: a page of 1,000 endpoints renders in a few milliseconds, but a table that
/// long is not readable; search narrows it instead.
pub(crate) const PAGE_SIZE: usize = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    /// Case-insensitive text matched against name, region, deployment and model.
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    sort: Option<String>,
    #[serde(default)]
    desc: Option<bool>,
    #[serde(default)]
    page: Option<usize>,
    /// The name of the endpoint just deleted (the detail page's delete redirects here).
    #[serde(default)]
    deleted: Option<String>,
}

/// The columns a list can be sorted by.
const SORTS: [(&str, &str); 5] = [
    ("name", "Name"),
    ("state", "State"),
    ("region", "Region"),
    ("model", "Model"),
    ("deployment", "Deployment"),
];

/// `GET /endpoints`.
pub(crate) async fn list(op: Operator, Query(q): Query<ListQuery>) -> Result<Markup, ConsoleError> {
    let mut endpoints: Vec<EndpointView> = op.api.get("/api/v1/inference-endpoints").await?;
    let total = endpoints.len();
    let needle = q.q.as_deref().map(str::trim).unwrap_or("").to_lowercase();
    if !needle.is_empty() {
        endpoints.retain(|e| {
            [&e.name, &e.region, &e.deployment, &e.model_name, &e.model_version]
                .iter()
                .any(|f| f.to_lowercase().contains(&needle))
        });
    }
    let sort = q.sort.as_deref().filter(|s| SORTS.iter().any(|(k, _)| k == s)).unwrap_or("name");
    let desc = q.desc.unwrap_or(false);
    endpoints.sort_by(|a, b| {
        let key = |e: &EndpointView| match sort {
            "state" => (state_rank(&e.state), e.name.clone()),
            "region" => (0, format!("{}\u{0}{}", e.region, e.name)),
            "model" => (0, format!("{}\u{0}{}\u{0}{}", e.model_name, e.model_version, e.name)),
            "deployment" => (0, format!("{}\u{0}{}", e.deployment, e.name)),
            _ => (0, e.name.clone()),
        };
        let ord = key(a).cmp(&key(b));
        if desc { ord.reverse() } else { ord }
    });
    let shown = endpoints.len();
    let pages = shown.div_ceil(PAGE_SIZE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let rows = endpoints.iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE);
    let now = Utc::now();
    let link = |sort_by: &str, desc: bool, page: usize| {
        let mut s = format!("/endpoints?sort={sort_by}&page={page}");
        if desc {
            s.push_str("&desc=true");
        }
        if !needle.is_empty() {
            s.push_str("&q=");
            s.push_str(&urlencode(&needle));
        }
        s
    };
    let content = html! {
        div.page-head {
            div {
                h1 { "Inference Endpoints" }
                p { "Model deployments the gateways route to. Their state is shared by every data plane and updates live." }
            }
            @if op.can(Role::Operator) {
                div.actions {
                    a.button.secondary href="/import" { "Import" }
                    a.button #new-endpoint href="/endpoints/new" { "New endpoint" }
                }
            }
        }
        @if let Some(name) = &q.deleted {
            div.success role="status" { "Deleted “" (name) "”." }
        }
        @if total == 0 {
            (empty_state("No inference endpoints yet. Import your Azure OpenAI deployments, or add one by hand.",
                op.can(Role::Operator).then(|| html! { a.button href="/import" { "Import from Azure" } })))
        } @else {
            form.toolbar method="get" action="/endpoints" role="search" {
                input type="search" name="q" value=(needle) placeholder="Search name, region, deployment, model" aria-label="Search endpoints";
                input type="hidden" name="sort" value=(sort);
                button.secondary type="submit" { "Search" }
                span.sub { (shown) " of " (total) }
            }
            div.table-wrap hx-ext="sse" sse-connect="/events/health" {
                table #endpoints-table {
                    thead {
                        tr {
                            @for (key, label) in SORTS {
                                th scope="col" aria-sort=[(key == sort).then_some(if desc { "descending" } else { "ascending" })] {
                                    a href=(link(key, key == sort && !desc, 1)) { (label)
                                        @if key == sort { (if desc { " ↓" } else { " ↑" }) } }
                                }
                            }
                            th scope="col" { "Platform" }
                            th scope="col" { "Auth" }
                        }
                    }
                    tbody {
                        @for e in rows {
                            tr data-endpoint=(e.id) {
                                td { a href={ "/endpoints/" (e.id) } { (e.name) } }
                                td {
                                    span #{ "ep-state-" (e.id) } sse-swap={ "ep-" (e.id) } {
                                        (state_badge(&e.state, endpoint_state_detail(e, now).as_deref()))
                                    }
                                }
                                td { (e.region) }
                                td { (e.model_name) " " span.sub { (e.model_version) } }
                                td.mono { (e.deployment) }
                                td { (platform_label(&e.platform)) }
                                td { (auth_label(&e.auth)) @if !e.api_key_hint.is_empty() { " " span.sub.mono { (e.api_key_hint) } } }
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pager aria-label="Pages" {
                    @if page > 1 { a href=(link(sort, desc, page - 1)) { "← Previous" } }
                    span { "Page " (page) " of " (pages) }
                    @if page < pages { a href=(link(sort, desc, page + 1)) { "Next →" } }
                }
            }
        }
    };
    Ok(layout::page(&op, "Inference Endpoints", Nav::Endpoints, content))
}

/// Worst first when sorting by state.
fn state_rank(state: &str) -> u8 {
    match state {
        "error" => 0,
        "throttling" => 1,
        "healthy" => 2,
        _ => 3,
    }
}

pub(crate) fn platform_label(platform: &str) -> &str {
    match platform {
        "azure_openai" => "Azure OpenAI",
        "openai_compatible" => "OpenAI-compatible",
        other => other,
    }
}

pub(crate) fn auth_label(auth: &str) -> &str {
    match auth {
        "api_key" => "API key",
        "entra" => "Entra ID",
        other => other,
    }
}

/// Percent-encodes a query value.
pub(crate) fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}
