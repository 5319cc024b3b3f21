//! Gateways (`/gateways`): list, create (by hand or from a proposal), members and routing, the
//! Gateway URL with snippets, the last hour's traffic (charts), and gateway keys.
//!
//! - [`form`]: the create/edit form (members, routing) and creating from a proposal.
//! - [`keys`]: creating (shown once, with parent, expiry and limits), revoking gateway keys
//!   and resetting their usage on the detail page.
//! - [`key_detail`]: a key's own page: its details, its usage now against its limits, and its
//!   tokens and requests per hour and per minute.

mod form;
mod key_detail;
mod keys;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::{Deserialize, Serialize};

use super::endpoints::urlencode;
use super::{EndpointView, GatewayView, ago, endpoint_state_detail};
use crate::Console;
use crate::api::Problem;
use crate::error::ConsoleError;
use crate::layout::{self, Nav, empty_state, state_badge};
use crate::operator::Operator;

/// The api-version the snippets use (the Azure OpenAI GA version the gateway serves).
const SNIPPET_API_VERSION: &str = "2024-10-21";
/// What snippets show where the client's gateway key goes (never a real key).
const KEY_PLACEHOLDER: &str = "<your gateway key>";
/// What snippets show when the Gateway URL is not configured.
const URL_PLACEHOLDER: &str = "https://<your gateway URL>";

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/gateways", get(list).post(form::create))
        .route("/gateways/new", get(form::new))
        .route("/gateways/proposals", get(form::proposals).post(form::create_from_proposal))
        .route("/gateways/{id}", get(detail))
        .route("/gateways/{id}/edit", get(form::edit).post(form::update))
        .route("/gateways/{id}/delete", post(delete))
        .route("/gateways/{id}/keys", post(keys::create))
        .route("/gateways/{id}/keys/{key_id}", get(key_detail::page))
        .route("/gateways/{id}/keys/{key_id}/revoke", post(keys::revoke))
        .route("/gateways/{id}/keys/{key_id}/reset-usage", post(keys::reset_usage))
}

/// A path id, checked to be a UUID before it goes into an API path (so a crafted id cannot
/// name another API route); anything else is a 404, as the API would answer.
fn path_uuid(id: &str, what: &str) -> Result<String, ConsoleError> {
    super::path_id(id, what).map(|u| u.to_string())
}

/// `GET /api/v1/gateways/{id}/keys` (one element).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct KeyView {
    pub id: String,
    pub name: String,
    pub hint: String,
    pub created_at: chrono::DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub expires_at: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    pub last_used_at: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    pub limits: keys::KeyLimitsView,
    #[serde(default)]
    pub usage: keys::CurrentUsageView,
}

/// `POST /api/v1/azure/gateway-proposals` (one proposal): the body of `POST /api/v1/gateways`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ProposalView {
    pub name: String,
    pub endpoints: Vec<ProposedMemberView>,
    pub routing: ProposedRoutingView,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ProposedMemberView {
    pub endpoint_id: String,
    pub enabled: bool,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ProposedRoutingView {
    pub strategy: String,
    pub wait_for_recovery: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ProposalsView {
    pub proposals: Vec<ProposalView>,
}

pub(crate) fn strategy_label(strategy: &str) -> &str {
    match strategy {
        "weighted" => "Weighted",
        "fastest" => "Fastest (latency-aware)",
        other => other,
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    /// The name of a gateway just deleted (for the notice).
    #[serde(default)]
    deleted: Option<String>,
}

/// `GET /gateways`.
async fn list(op: Operator, Query(q): Query<ListQuery>) -> Result<Markup, ConsoleError> {
    let mut gateways: Vec<GatewayView> = op.api.get("/api/v1/gateways").await?;
    gateways.sort_by(|a, b| a.name.cmp(&b.name));
    let can_change = op.can(Role::Operator);
    let content = html! {
        div.page-head {
            div {
                h1 { "Gateways" }
                p { "The names your applications call. Each routes over a set of inference endpoints; its state follows theirs live." }
            }
            @if can_change {
                div.actions {
                    a.button.secondary #propose-gateways href="/gateways/proposals" { "Propose from inventory" }
                    a.button #new-gateway href="/gateways/new" { "New gateway" }
                }
            }
        }
        @if let Some(name) = &q.deleted {
            div.success role="status" { "Deleted gateway " strong { (name) } " and its keys." }
        }
        @if gateways.is_empty() {
            (empty_state("No gateways yet. A gateway is the name your applications call; it routes over inference endpoints.",
                can_change.then(|| html! {
                    div.actions.center {
                        a.button href="/gateways/proposals" { "Propose from inventory" }
                        a.button.secondary href="/gateways/new" { "Create by hand" }
                    }
                })))
        } @else {
            div.toolbar {
                input type="search" data-filter="gateways-table" placeholder="Filter by name, state or strategy" aria-label="Filter gateways";
                span.sub { (gateways.len()) " gateways" }
            }
            div.table-wrap hx-ext="sse" sse-connect="/events/health" {
                table #gateways-table {
                    thead {
                        tr {
                            th scope="col" { "Name" }
                            th scope="col" { "State" }
                            th.num scope="col" { "Members enabled" }
                            th scope="col" { "Routing" }
                            th scope="col" { "Updated" }
                        }
                    }
                    tbody {
                        @let now = Utc::now();
                        @for g in &gateways {
                            tr data-gateway=(g.id) {
                                td { a href={ "/gateways/" (g.id) } { (g.name) } }
                                td { span #{ "gw-state-" (g.id) } sse-swap={ "gw-" (g.id) } { (state_badge(&g.state, None)) } }
                                td.num { (g.endpoints.iter().filter(|m| m.enabled).count()) " / " (g.endpoints.len()) }
                                td {
                                    (strategy_label(&g.routing.strategy))
                                    @if g.routing.wait_for_recovery { span.sub { " · waits for recovery" } }
                                }
                                td.sub { (ago(g.updated_at, now)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&op, "Gateways", Nav::Gateways, content))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DetailQuery {
    #[serde(default)]
    saved: Option<u8>,
    #[serde(default)]
    created: Option<u8>,
    #[serde(default)]
    revoked: Option<u8>,
    #[serde(default)]
    reset: Option<u8>,
}

/// What the detail page shows besides the gateway: a notice, the key just created (once), or
/// the problem with the key form.
#[derive(Default)]
pub(crate) struct DetailExtras {
    pub notice: Option<&'static str>,
    pub new_key: Option<keys::CreatedKeyView>,
    pub key_problem: Option<Problem>,
    /// The key form as submitted, to show it again next to its problem.
    pub key_form: keys::KeyForm,
}

/// `GET /gateways/{id}`.
async fn detail(
    State(console): State<Console>,
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Markup, ConsoleError> {
    let notice = if q.created.is_some() {
        Some("Gateway created.")
    } else if q.saved.is_some() {
        Some("Saved")
    } else if q.revoked.is_some() {
        Some(
            "Key revoked, with the keys under it. Data planes refuse them from their next \
             configuration update.",
        )
    } else if q.reset.is_some() {
        Some(
            "Usage reset: the key's counters start from zero for the current minute, hour and day.",
        )
    } else {
        None
    };
    detail_page(&console, &op, &id, DetailExtras { notice, ..DetailExtras::default() }).await
}

/// The detail page of gateway `id`, with `extras`.
pub(crate) async fn detail_page(
    console: &Console,
    op: &Operator,
    id: &str,
    extras: DetailExtras,
) -> Result<Markup, ConsoleError> {
    let id = path_uuid(id, "gateway")?;
    let (gateway_path, keys_path) =
        (format!("/api/v1/gateways/{id}"), format!("/api/v1/gateways/{id}/keys"));
    let (gateway, endpoints, keys, traffic) = tokio::try_join!(
        op.api.get::<GatewayView>(&gateway_path),
        op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
        op.api.get::<Vec<KeyView>>(&keys_path),
        super::stats::gateway(op, &id),
    )?;
    let by_id: HashMap<&str, &EndpointView> =
        endpoints.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut members: Vec<_> = gateway.endpoints.iter().collect();
    members.sort_by(|a, b| {
        (!a.enabled, a.priority, by_id.get(a.endpoint_id.as_str()).map(|e| e.name.as_str())).cmp(&(
            !b.enabled,
            b.priority,
            by_id.get(b.endpoint_id.as_str()).map(|e| e.name.as_str()),
        ))
    });
    let now = Utc::now();
    let can_change = op.can(Role::Operator);
    let url = console.settings().gateway_url.get().map(|u| u.trim_end_matches('/').to_owned());
    let enabled = gateway.endpoints.iter().filter(|m| m.enabled).count();
    let content = html! {
        // One health stream for every badge on the page (the gateway's and its members').
        div hx-ext="sse" sse-connect="/events/health" {
        div.page-head {
            div {
                p.crumbs { a href="/gateways" { "Gateways" } " /" }
                h1 { (gateway.name) }
                p {
                    span #{ "gw-state-" (gateway.id) } sse-swap={ "gw-" (gateway.id) } {
                        (state_badge(&gateway.state, None))
                    }
                    " " (enabled) " of " (gateway.endpoints.len()) " members enabled · "
                    (strategy_label(&gateway.routing.strategy)) " routing"
                }
            }
            @if can_change {
                div.actions {
                    a.button.secondary #edit-gateway href={ "/gateways/" (gateway.id) "/edit" } { "Edit" }
                    form.inline method="post" action={ "/gateways/" (gateway.id) "/delete" }
                        data-confirm={ "Delete gateway " (gateway.name) " and all its keys? Clients calling it will get 404." } {
                        (layout::csrf_field(op))
                        button.danger #delete-gateway type="submit" { "Delete" }
                    }
                }
            }
        }
        @if let Some(n) = extras.notice { div.success role="status" { (n) } }

        section aria-labelledby="h-url" {
            h2 #h-url { "Gateway URL" }
            div.panel {
                @match &url {
                    Some(u) => {
                        div.copy-row {
                            code #gateway-url { (u) }
                            button.secondary type="button" data-copy="gateway-url" { "Copy" }
                        }
                    }
                    None => {
                        div.copy-row { code #gateway-url.placeholder { (URL_PLACEHOLDER) } }
                        p.hint { "The Gateway URL is not configured. Set " code { "MODELGW_GATEWAY_URL" }
                            " on the control plane to the address clients reach the data planes at (e.g. behind Azure Front Door)." }
                    }
                }
                p.hint { "Clients call the gateway as an Azure OpenAI resource: the gateway's name " code { (gateway.name) }
                    " is the deployment. Send a gateway key as " code { "api-key" } "." }
            }
        }

        section aria-labelledby="h-members" {
            h2 #h-members { "Members" }
            @if members.is_empty() {
                (empty_state("This gateway has no members: clients get 503 until an endpoint is added.",
                    can_change.then(|| html! { a.button href={ "/gateways/" (gateway.id) "/edit" } { "Add members" } })))
            } @else {
                div.table-wrap {
                    table #members-table {
                        thead {
                            tr {
                                th scope="col" { "Endpoint" }
                                th scope="col" { "State" }
                                th scope="col" { "Enabled" }
                                th.num scope="col" { "Priority" }
                                th.num scope="col" { "Weight" }
                                th scope="col" { "Model" }
                                th scope="col" { "Region" }
                            }
                        }
                        tbody {
                            @for m in &members {
                                @let e = by_id.get(m.endpoint_id.as_str());
                                tr data-endpoint=(m.endpoint_id) class=[(!m.enabled).then_some("disabled")] {
                                    td {
                                        @match e {
                                            Some(e) => a href={ "/endpoints/" (e.id) } { (e.name) },
                                            None => span.mono { (m.endpoint_id) },
                                        }
                                    }
                                    td {
                                        span #{ "ep-state-" (m.endpoint_id) } sse-swap={ "ep-" (m.endpoint_id) } {
                                            @match e {
                                                Some(e) => (state_badge(&e.state, endpoint_state_detail(e, now).as_deref())),
                                                None => (state_badge("unknown", None)),
                                            }
                                        }
                                    }
                                    td { @if m.enabled { "Yes" } @else { span.sub { "No (no traffic)" } } }
                                    td.num { (m.priority) }
                                    td.num { (m.weight) }
                                    td { @if let Some(e) = e { (e.model_name) " " span.sub { (e.model_version) } } }
                                    td { @if let Some(e) = e { (e.region) } }
                                }
                            }
                        }
                    }
                }
                p.hint {
                    "Lower priority is preferred; higher groups take traffic only when every member of the lower ones is unavailable. "
                    "Weight shares traffic within a group."
                    @if gateway.routing.wait_for_recovery { " When all are unavailable, requests wait for the first to recover." }
                    @if let Some(ms) = gateway.routing.request_timeout_ms { " Request timeout: " (ms) " ms." }
                }
            }
            @let quota = &gateway.routing.quota;
            p.hint #quota-settings {
                @if quota.enabled {
                    "Quota-aware routing: on, traffic spread by each member's remaining quota (request window "
                    (quota.request_window_secs) " s, token window " (quota.token_window_secs) " s, reserve "
                    (quota.reserve_percent) " %)."
                } @else {
                    "Quota-aware routing: off, members are skipped only after a 429."
                }
            }
        }

        (traffic)

        (keys::section(op, &gateway, &keys, &extras, now))

        section aria-labelledby="h-code" {
            h2 #h-code { "Call it from code" }
            (snippets(&gateway.name, url.as_deref().unwrap_or(URL_PLACEHOLDER)))
        }
        p.sub { "Last changed " (ago(gateway.updated_at, now)) "." }
        }
    };
    Ok(layout::page(op, &gateway.name, Nav::Gateways, content))
}

/// Ready-to-paste client code for gateway `name` at `url`.
fn snippets(name: &str, url: &str) -> Markup {
    let curl = format!(
        "curl \"{url}/openai/deployments/{name}/chat/completions?api-version={SNIPPET_API_VERSION}\" \\\n  \
         -H \"api-key: {KEY_PLACEHOLDER}\" \\\n  \
         -H \"Content-Type: application/json\" \\\n  \
         -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'"
    );
    let python = format!(
        "from openai import AzureOpenAI\n\n\
         client = AzureOpenAI(\n    \
         azure_endpoint=\"{url}\",\n    \
         api_key=\"{KEY_PLACEHOLDER}\",\n    \
         api_version=\"{SNIPPET_API_VERSION}\",\n)\n\n\
         response = client.chat.completions.create(\n    \
         model=\"{name}\",  # the gateway's name is the deployment\n    \
         messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}],\n)\n\
         print(response.choices[0].message.content)"
    );
    let javascript = format!(
        "import {{ AzureOpenAI }} from \"openai\";\n\n\
         const client = new AzureOpenAI({{\n  \
         endpoint: \"{url}\",\n  \
         apiKey: \"{KEY_PLACEHOLDER}\",\n  \
         apiVersion: \"{SNIPPET_API_VERSION}\",\n  \
         deployment: \"{name}\",\n}});\n\n\
         const response = await client.chat.completions.create({{\n  \
         model: \"{name}\",\n  \
         messages: [{{ role: \"user\", content: \"Hello\" }}],\n}});\n\
         console.log(response.choices[0].message.content);"
    );
    let blocks = [
        ("snippet-curl", "curl", curl),
        ("snippet-python", "Python (openai, AzureOpenAI)", python),
        ("snippet-js", "JavaScript (openai, AzureOpenAI)", javascript),
    ];
    html! {
        div.snippets {
            @for (id, label, code) in &blocks {
                div.snippet-block {
                    div.snippet-head {
                        h3 { (label) }
                        button.secondary.small type="button" data-copy=(id) aria-label={ "Copy the " (label) " snippet" } { "Copy" }
                    }
                    pre.snippet #(id) { code { (code) } }
                }
            }
        }
    }
}

/// `POST /gateways/{id}/delete`.
async fn delete(op: Operator, Path(id): Path<String>) -> Result<Response, ConsoleError> {
    let id = path_uuid(&id, "gateway")?;
    let gateway: GatewayView = op.api.get(&format!("/api/v1/gateways/{id}")).await?;
    let reply = op.api.send(http::Method::DELETE, &format!("/api/v1/gateways/{id}"), None).await?;
    if !reply.status.is_success() {
        return Err(ConsoleError::from_problem(reply.status, reply.problem()));
    }
    Ok(Redirect::to(&format!("/gateways?deleted={}", urlencode(&gateway.name))).into_response())
}
