//! Import from Azure (`/import`): start a discovery, watch its progress (htmx polls a fragment
//! once a second until the API says it finished), pick deployments from what it found, import
//! them, and see what the import did.
//!
//! Discovery jobs are the API's (stored by the control plane, answered by any of its replicas),
//! so `/import/{id}` shows the same discovery on every reload while the API keeps it. Whether a deployment was already
//! imported is the API's answer too (`endpoint_id` on each deployment).

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::Router;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::EndpointView;
use super::endpoint_forms::form_alert;
use crate::Console;
use crate::api::Problem;
use crate::error::ConsoleError;
use crate::layout::{self, Nav, csrf_field, empty_state, field_errors, sep};
use crate::operator::Operator;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/import", get(start_page).post(start))
        .route("/import/{id}", get(discovery_page).post(import))
        .route("/import/{id}/progress", get(progress))
}

/// `GET /api/v1/azure/discoveries/{id}`.
#[derive(Debug, Deserialize)]
struct DiscoveryView {
    id: String,
    status: String,
    started_at: DateTime<Utc>,
    /// The control-plane replica running it.
    #[serde(default)]
    started_by: Option<ReplicaView>,
    #[serde(default)]
    finished_at: Option<DateTime<Utc>>,
    progress: ProgressView,
    #[serde(default)]
    errors: Vec<ScopeErrorView>,
    #[serde(default)]
    deployments: Vec<DeploymentView>,
}

impl DiscoveryView {
    fn running(&self) -> bool {
        self.status == "running"
    }
}

#[derive(Debug, Deserialize)]
struct ReplicaView {
    host: String,
}

#[derive(Debug, Deserialize)]
struct ProgressView {
    subscriptions_scanned: usize,
    subscriptions_total: usize,
    accounts_scanned: usize,
    accounts_total: usize,
    deployments_found: usize,
}

#[derive(Debug, Deserialize)]
struct ScopeErrorView {
    scope: String,
    message: String,
    #[serde(default)]
    permission: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeploymentView {
    id: String,
    subscription_id: String,
    resource_group: String,
    account: String,
    location: String,
    deployment: String,
    model_name: String,
    model_version: String,
    sku: String,
    #[serde(default)]
    capacity: Option<u32>,
    #[serde(default)]
    warnings: Vec<String>,
    /// The endpoint an earlier import made from this deployment.
    #[serde(default)]
    endpoint_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StartedView {
    id: String,
}

/// `POST /api/v1/azure/imports`.
#[derive(Debug, Deserialize)]
struct ImportResultView {
    created: Vec<String>,
    updated: Vec<String>,
    unchanged: Vec<String>,
}

/// A discovery id from the path, checked before it goes into an API path.
fn discovery_id(raw: &str) -> Result<Uuid, ConsoleError> {
    super::path_id(raw, "discovery")
}

fn api_path(id: Uuid) -> String {
    format!("/api/v1/azure/discoveries/{id}")
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StartQuery {
    /// Set when a discovery the operator asked for is no longer kept by the API.
    #[serde(default)]
    gone: Option<u8>,
}

fn head(op: &Operator, running_again: Option<&str>) -> Markup {
    html! {
        div.page-head {
            div {
                h1 { "Import from Azure" }
                p { "Find the Azure OpenAI deployments the control plane's Azure credential can see, then import the ones you pick as inference endpoints." }
            }
            @if op.can(Role::Operator) {
                div.actions {
                    form.inline method="post" action="/import" {
                        (csrf_field(op))
                        button #start-discovery type="submit" class=[running_again.map(|_| "secondary")] {
                            (running_again.unwrap_or("Start discovery"))
                        }
                    }
                }
            }
        }
    }
}

/// `GET /import`.
pub(crate) async fn start_page(
    op: Operator,
    Query(q): Query<StartQuery>,
) -> Result<Markup, ConsoleError> {
    let content = html! {
        (head(&op, None))
        @if q.gone.is_some() {
            div.notice role="status" { "That discovery is no longer kept: the control plane keeps the last 20. Start a new one." }
        }
        section.panel {
            h2 { "How it works" }
            ol.steps {
                li { "Discovery lists every subscription, Azure OpenAI account and model deployment the credential may read. Scopes it may not read are reported with the permission that is missing." }
                li { "Pick the deployments to import. Those imported before are marked and not selected." }
                li { "Choose how the data planes authenticate: the account's API key (read at import time) or their own Entra ID identity (no key stored)." }
                li { "Import creates new endpoints and updates the ones imported before, matched by their Azure resource id." }
            }
            @if !op.can(Role::Operator) {
                p.sub { "Importing needs the operator role." }
            }
        }
    };
    Ok(layout::page(&op, "Import from Azure", Nav::Import, content))
}

/// `POST /import`: start a discovery, then 303 to its page.
pub(crate) async fn start(op: Operator) -> Result<Response, ConsoleError> {
    let started: StartedView =
        op.api.send(Method::POST, "/api/v1/azure/discoveries", None).await?.json()?;
    let id = discovery_id(&started.id)?;
    Ok(Redirect::to(&format!("/import/{id}")).into_response())
}

/// The discovery, or `None` when the API no longer keeps it.
async fn fetch(op: &Operator, id: Uuid) -> Result<Option<DiscoveryView>, ConsoleError> {
    match op.api.get::<DiscoveryView>(&api_path(id)).await {
        Ok(d) => Ok(Some(d)),
        Err(ConsoleError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `GET /import/{id}`.
pub(crate) async fn discovery_page(
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = discovery_id(&id)?;
    let Some(discovery) = fetch(&op, id).await? else {
        return Ok(Redirect::to("/import?gone=1").into_response());
    };
    Ok(page(&op, &discovery, &Selection::Default, None, None).into_response())
}

/// `GET /import/{id}/progress`: the fragment htmx polls. While the discovery runs it carries
/// the polling trigger; once finished it does not (the polling stops) and the deployments
/// table follows it.
pub(crate) async fn progress(op: Operator, Path(id): Path<String>) -> Result<Markup, ConsoleError> {
    let id = discovery_id(&id)?;
    let Some(discovery) = fetch(&op, id).await? else {
        return Ok(html! {
            section #discovery-progress .panel aria-live="polite" {
                p.error-text { "This discovery is no longer kept by the control plane. " a href="/import" { "Start a new one." } }
            }
        });
    };
    Ok(html! {
        (progress_block(&discovery))
        @if !discovery.running() {
            (results(&op, &discovery, &Selection::Default, None))
        }
    })
}

/// Which rows are checked.
enum Selection {
    /// Everything not imported before.
    Default,
    /// What the operator had checked (a refused import keeps it).
    Ids(HashSet<String>),
}

fn page(
    op: &Operator,
    d: &DiscoveryView,
    selection: &Selection,
    problem: Option<&Problem>,
    outcome: Option<Markup>,
) -> Markup {
    let again = Some("New discovery");
    let content = html! {
        (head(op, again))
        @if let Some(o) = outcome { (o) }
        (progress_block(d))
        @if !d.running() {
            (results(op, d, selection, problem))
        }
    };
    layout::page(op, "Import from Azure", Nav::Import, content)
}

fn progress_block(d: &DiscoveryView) -> Markup {
    let p = &d.progress;
    let poll = format!("/import/{}/progress", d.id);
    let (badge, label) = match d.status.as_str() {
        "running" => ("warn", "Running"),
        "succeeded" => ("ok", "Finished"),
        _ => ("bad", "Failed"),
    };
    html! {
        @if d.running() {
            section #discovery-progress .panel aria-live="polite" aria-busy="true"
                hx-get=(poll) hx-trigger="every 1s" hx-swap="outerHTML" {
                (progress_body(d, badge, label, p))
            }
        } @else {
            section #discovery-progress .panel aria-live="polite" data-status=(d.status) {
                (progress_body(d, badge, label, p))
            }
        }
    }
}

fn progress_body(d: &DiscoveryView, badge: &str, label: &str, p: &ProgressView) -> Markup {
    let now = Utc::now();
    html! {
        div.progress-head {
            h2 { "Discovery" }
            span class={ "badge " (badge) } data-state=(d.status) { span.dot aria-hidden="true" {} (label) }
            span.sub {
                "started " (super::ago(d.started_at, now))
                @if let Some(r) = &d.started_by { " on " span.mono.replica-host { (r.host) } }
                @if let Some(f) = d.finished_at { (sep()) "took " ((f - d.started_at).num_seconds().max(0)) " s" }
            }
        }
        dl.counts {
            div { dt { "Subscriptions" } dd { (p.subscriptions_scanned) " / " (p.subscriptions_total) } }
            div { dt { "Accounts" } dd { (p.accounts_scanned) " / " (p.accounts_total) } }
            div { dt { "Deployments found" } dd { (p.deployments_found) } }
        }
        @if d.running() {
            progress max=(p.accounts_total.max(1)) value=(p.accounts_scanned) aria-label="Accounts scanned" {}
        }
        @if !d.errors.is_empty() {
            div class=(if d.status == "failed" { "alert" } else { "warnings" }) role=[(!d.running()).then_some("alert")] {
                strong {
                    @if d.status == "failed" { "Discovery failed." }
                    @else { (d.errors.len()) " scope(s) could not be read; their deployments are missing below." }
                }
                ul.scope-errors {
                    @for e in &d.errors {
                        li {
                            span.mono.wrap { (e.scope) } ": " (e.message)
                            @if let Some(perm) = &e.permission {
                                br; "Missing permission: " code { (perm) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn results(
    op: &Operator,
    d: &DiscoveryView,
    selection: &Selection,
    problem: Option<&Problem>,
) -> Markup {
    if d.deployments.is_empty() {
        let message = if d.status == "failed" {
            "Nothing was found: fix the problem above, then run the discovery again."
        } else {
            "The credential sees no Azure OpenAI deployments."
        };
        return html! { section #discovery-results { (empty_state(message, None)) } };
    }
    let models: BTreeSet<&str> = d.deployments.iter().map(|x| x.model_name.as_str()).collect();
    let versions: BTreeSet<&str> = d.deployments.iter().map(|x| x.model_version.as_str()).collect();
    let imported = d.deployments.iter().filter(|x| x.endpoint_id.is_some()).count();
    let checked = |x: &DeploymentView| match selection {
        Selection::Default => x.endpoint_id.is_none(),
        Selection::Ids(ids) => ids.contains(&x.id),
    };
    let can = op.can(Role::Operator);
    html! {
        section #discovery-results {
            h2 { "Deployments" }
            p.sub {
                (d.deployments.len()) " found" (sep()) (imported) " already imported"
            }
            (form_alert(problem, &["deployment_ids", "auth"], ("Nothing imported.", "The reason is below the table.")))
            form method="post" action={ "/import/" (d.id) } {
                (csrf_field(op))
                div.toolbar {
                    div.filter {
                        label for="filter-model" { "Model" }
                        input #filter-model type="search" list="filter-models" placeholder="All models"
                            data-filter-rows="deployments-table" data-filter-key="model" autocomplete="off";
                        datalist #filter-models { @for m in &models { option value=(m) {} } }
                    }
                    div.filter {
                        label for="filter-version" { "Version" }
                        input #filter-version type="search" list="filter-versions" placeholder="All versions"
                            data-filter-rows="deployments-table" data-filter-key="version" autocomplete="off";
                        datalist #filter-versions { @for v in &versions { option value=(v) {} } }
                    }
                }
                div.table-wrap {
                    table #deployments-table {
                        thead { tr {
                            th scope="col" .check {
                                @if can {
                                    input #select-all type="checkbox" data-select-all="ids" aria-label="Select all shown deployments";
                                }
                            }
                            th scope="col" { "Deployment" }
                            th scope="col" { "Model" }
                            th scope="col" { "Version" }
                            th scope="col" { "SKU" }
                            th scope="col" { "Region" }
                            th scope="col" { "Subscription / resource group" }
                            th scope="col" { "Status" }
                        } }
                        tbody {
                            @for x in &d.deployments {
                                @let label_id = format!("dep-{}", short_hash(&x.id));
                                tr data-deployment=(x.id) data-model=(x.model_name.to_lowercase()) data-version=(x.model_version.to_lowercase())
                                    class=[x.endpoint_id.is_some().then_some("imported")] {
                                    td.check {
                                        input type="checkbox" name="ids" value=(x.id) checked[checked(x)]
                                            disabled[!can] aria-labelledby=(label_id);
                                    }
                                    td {
                                        span id=(label_id) { strong { (x.deployment) } span.sub { " on " (x.account) } }
                                        @for w in &x.warnings { p.row-warning { "⚠ " (w) } }
                                    }
                                    td.nowrap { (x.model_name) }
                                    td.mono.nowrap { (x.model_version) }
                                    td { (x.sku) @if let Some(c) = x.capacity { span.sub { " · " (c) } } }
                                    td { (x.location) }
                                    td { span.mono.sub { (x.subscription_id) } br; span.sub { (x.resource_group) } }
                                    td {
                                        @if let Some(e) = &x.endpoint_id {
                                            a href={ "/endpoints/" (e) } { "Already imported" }
                                        } @else {
                                            span.sub { "New" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                (field_errors(problem, "deployment_ids"))
                @if can {
                    div.import-bar {
                        div.field {
                            label for="auth" { "Authentication" }
                            select #auth name="auth" aria-describedby="hint-auth" {
                                option value="api_key" selected { "API key (read from each account now)" }
                                option value="entra" { "Entra ID (the data plane's identity; no key stored)" }
                            }
                            (field_errors(problem, "auth"))
                            span.hint #hint-auth { "Applies to every selected deployment, also to those imported before." }
                        }
                        button #import type="submit" { "Import selected" }
                    }
                }
            }
        }
    }
}

/// A short, stable id fragment for element ids (ARM ids hold `/`).
fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// `POST /import/{id}`: import the checked deployments (repeated `ids` fields, so the body is
/// read as pairs), and show what the import did above the refreshed table.
///
/// The result is the answer to the post itself, not a redirect: it is a one-time outcome (which
/// endpoints were created, updated, unchanged) that no GET can show again, and posting it again
/// is harmless (an import of unchanged deployments changes nothing).
pub(crate) async fn import(
    op: Operator,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let id = discovery_id(&id)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| {
        ConsoleError::Refused(Box::new(Problem {
            status: 400,
            detail: "The form could not be read.".to_owned(),
            ..Problem::default()
        }))
    })?;
    let ids: Vec<String> =
        pairs.iter().filter(|(k, _)| k == "ids").map(|(_, v)| v.clone()).collect();
    let auth = pairs.iter().find(|(k, _)| k == "auth").map(|(_, v)| v.clone());
    let mut request = json!({ "deployment_ids": ids });
    if let Some(auth) = auth {
        request["auth"] = json!(auth);
    }
    let reply = op.api.send(Method::POST, "/api/v1/azure/imports", Some(&request)).await?;
    // listKeys refused at Azure: the operator can act on it (permission, or Entra ID mode).
    let result = if reply.status == StatusCode::BAD_GATEWAY {
        Err(reply.problem())
    } else {
        reply.form_result::<ImportResultView>()?
    };
    let Some(discovery) = fetch(&op, id).await? else {
        return Ok(Redirect::to("/import?gone=1").into_response());
    };
    match result {
        Ok(done) => {
            let endpoints: Vec<EndpointView> = op.api.get("/api/v1/inference-endpoints").await?;
            let names: HashMap<&str, &str> =
                endpoints.iter().map(|e| (e.id.as_str(), e.name.as_str())).collect();
            let outcome = outcome_block(&done, &names);
            Ok(page(&op, &discovery, &Selection::Default, None, Some(outcome)).into_response())
        }
        Err(problem) => {
            let selection = Selection::Ids(ids.into_iter().collect());
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            Ok((status, page(&op, &discovery, &selection, Some(&problem), None)).into_response())
        }
    }
}

fn outcome_block(done: &ImportResultView, names: &HashMap<&str, &str>) -> Markup {
    let group = |title: &str, ids: &[String]| {
        html! {
            div.outcome {
                h3 { (title) " " span.count { (ids.len()) } }
                @if !ids.is_empty() {
                    ul {
                        @for id in ids {
                            li { a href={ "/endpoints/" (id) } { (names.get(id.as_str()).copied().unwrap_or(id.as_str())) } }
                        }
                    }
                }
            }
        }
    };
    html! {
        section #import-result .success role="status" aria-labelledby="import-result-head" {
            h2 #import-result-head { "Imported" }
            p {
                (done.created.len()) " created" (sep()) (done.updated.len()) " updated" (sep())
                (done.unchanged.len()) " unchanged. "
                a href="/endpoints" { "See all inference endpoints" } " or " a href="/gateways" { "create a gateway over them" } "."
            }
            div.outcomes {
                (group("Created", &done.created))
                (group("Updated", &done.updated))
                (group("Unchanged", &done.unchanged))
            }
        }
    }
}
