//! Inference endpoint detail, create, edit, delete and health reset (`/endpoints/new`,
//! `/endpoints/{id}`, …). Every change is one admin API call as the operator; a refused form
//! comes back with the API's reasons next to its fields.

use std::collections::BTreeSet;

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::Utc;
use http::{Method, StatusCode};
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::endpoints::{auth_label, platform_label};
use super::{EndpointView, GatewayView, ago, endpoint_state_detail, until};
use crate::Console;
use crate::api::Problem;
use crate::error::ConsoleError;
use crate::layout::{self, Nav, csrf_field, field_errors, problem_summary, state_badge};
use crate::operator::Operator;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/endpoints/new", get(new_form).post(create))
        .route("/endpoints/{id}", get(detail))
        .route("/endpoints/{id}/edit", get(edit_form).post(update))
        .route("/endpoints/{id}/delete", post(delete))
        .route("/endpoints/{id}/reset-health", post(reset_health))
}

/// The fields of the form, named like the API's JSON fields.
const FIELDS: [&str; 9] = [
    "name",
    "platform",
    "endpoint",
    "deployment",
    "model_name",
    "model_version",
    "region",
    "auth",
    "api_key",
];

/// What the operator typed. `api_key` is never rendered back.
#[derive(Default, Deserialize)]
pub(crate) struct EndpointForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    platform: String,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    deployment: String,
    #[serde(default)]
    model_name: String,
    #[serde(default)]
    model_version: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    api_key: String,
}

impl std::fmt::Debug for EndpointForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointForm").field("name", &self.name).finish_non_exhaustive()
    }
}

impl EndpointForm {
    fn from_endpoint(e: &EndpointView) -> Self {
        EndpointForm {
            name: e.name.clone(),
            platform: e.platform.clone(),
            endpoint: e.endpoint.clone(),
            deployment: e.deployment.clone(),
            model_name: e.model_name.clone(),
            model_version: e.model_version.clone(),
            region: e.region.clone(),
            auth: e.auth.clone(),
            api_key: String::new(),
        }
    }

    fn text(&self, field: &str) -> &str {
        match field {
            "name" => &self.name,
            "platform" => &self.platform,
            "endpoint" => &self.endpoint,
            "deployment" => &self.deployment,
            "model_name" => &self.model_name,
            "model_version" => &self.model_version,
            "region" => &self.region,
            "auth" => &self.auth,
            _ => "",
        }
    }

    /// The create request: every field as typed; an empty key is no key (the API says whether
    /// the auth mode needs one).
    fn create_body(&self) -> Value {
        let mut body = Map::new();
        for field in FIELDS.iter().filter(|f| **f != "api_key") {
            body.insert((*field).to_owned(), Value::String(self.text(field).to_owned()));
        }
        if !self.api_key.is_empty() {
            body.insert("api_key".to_owned(), Value::String(self.api_key.clone()));
        }
        Value::Object(body)
    }

    /// The update request: only what differs from `current` (the PATCH leaves the rest as it
    /// is), so an untouched form changes nothing and an empty key keeps the stored one.
    fn patch_body(&self, current: &EndpointForm) -> Map<String, Value> {
        let mut body = Map::new();
        for field in FIELDS.iter().filter(|f| **f != "api_key") {
            if self.text(field) != current.text(field) {
                body.insert((*field).to_owned(), Value::String(self.text(field).to_owned()));
            }
        }
        if !self.api_key.is_empty() {
            body.insert("api_key".to_owned(), Value::String(self.api_key.clone()));
        }
        body
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DetailQuery {
    #[serde(default)]
    saved: Option<u8>,
    #[serde(default)]
    reset: Option<u8>,
    #[serde(default)]
    unchanged: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeleteForm {
    #[serde(default)]
    force: Option<bool>,
}

/// An endpoint id from the path, checked before it goes into an API path.
fn endpoint_id(raw: &str) -> Result<Uuid, ConsoleError> {
    super::path_id(raw, "inference endpoint")
}

fn api_path(id: Uuid) -> String {
    format!("/api/v1/inference-endpoints/{id}")
}

fn operators_only(op: &Operator) -> Result<(), ConsoleError> {
    op.require(Role::Operator, "Changing inference endpoints needs the operator role.")
}

/// `GET /endpoints/{id}`.
pub(crate) async fn detail(
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Markup, ConsoleError> {
    let id = endpoint_id(&id)?;
    let e: EndpointView = op.api.get(&api_path(id)).await?;
    let notice = if q.saved.is_some() {
        Some("Saved. The data planes receive the change within seconds.")
    } else if q.reset.is_some() {
        Some("Health reset: every data plane uses the endpoint again; new reports count as usual.")
    } else if q.unchanged.is_some() {
        Some("Nothing changed: the form had the values the endpoint already has.")
    } else {
        None
    };
    Ok(detail_page(&op, &e, notice, None))
}

/// The gateways a refused delete named, with links where the name is still a gateway.
struct InUse {
    gateways: Vec<(String, Option<String>)>,
}

fn detail_page(
    op: &Operator,
    e: &EndpointView,
    notice: Option<&str>,
    in_use: Option<&InUse>,
) -> Markup {
    let now = Utc::now();
    let content = html! {
        div.page-head {
            div {
                p.crumbs { a href="/endpoints" { "Inference Endpoints" } }
                h1 { (e.name) }
                p {
                    (platform_label(&e.platform)) " · " (e.model_name) " " (e.model_version) " · " (e.region)
                }
            }
            @if op.can(Role::Operator) {
                div.actions {
                    a.button.secondary #edit-endpoint href={ "/endpoints/" (e.id) "/edit" } { "Edit" }
                    form.inline method="post" action={ "/endpoints/" (e.id) "/reset-health" } {
                        (csrf_field(op))
                        button.secondary #reset-health type="submit"
                            title="Forget every health report so far: all data planes use the endpoint again" { "Reset health" }
                    }
                    form.inline method="post" action={ "/endpoints/" (e.id) "/delete" }
                        data-confirm={ "Delete the inference endpoint “" (e.name) "”? This cannot be undone." } {
                        (csrf_field(op))
                        button.danger #delete-endpoint type="submit" { "Delete" }
                    }
                }
            }
        }
        @if let Some(n) = notice { div.success role="status" { (n) } }
        @if let Some(in_use) = in_use {
            div.alert #delete-in-use role="alert" {
                strong { "Not deleted: gateways use this endpoint." }
                p { "It is a member of these gateways:" }
                ul {
                    @for (name, href) in &in_use.gateways {
                        li { @if let Some(h) = href { a href=(h) { (name) } } @else { (name) } }
                    }
                }
                p { "Force delete removes it from them first, then deletes it. Their traffic goes to their other endpoints." }
                form.inline method="post" action={ "/endpoints/" (e.id) "/delete" }
                    data-confirm={ "Remove “" (e.name) "” from " (in_use.gateways.len()) " gateway(s) and delete it?" } {
                    (csrf_field(op))
                    input type="hidden" name="force" value="true";
                    button.danger #force-delete type="submit" { "Force delete" }
                }
            }
        }
        div.detail-grid {
            section.panel aria-labelledby="facts-head" {
                h2 #facts-head { "Configuration" }
                dl.facts {
                    dt { "State" }
                    dd hx-ext="sse" sse-connect="/events/health" {
                        span #{ "ep-state-" (e.id) } sse-swap={ "ep-" (e.id) } {
                            (state_badge(&e.state, endpoint_state_detail(e, now).as_deref()))
                        }
                    }
                    dt { "Platform" } dd { (platform_label(&e.platform)) }
                    dt { "Endpoint URL" } dd.mono.wrap { (e.endpoint) }
                    dt { "Deployment" } dd.mono { (e.deployment) }
                    dt { "Model" } dd { (e.model_name) " " span.sub { "version " } (e.model_version) }
                    dt { "Region" } dd { (e.region) }
                    dt { "Auth" } dd { (auth_label(&e.auth)) }
                    dt { "API key" } dd {
                        @if e.api_key_hint.is_empty() { span.sub { "none (Entra ID)" } }
                        @else { span.mono { (e.api_key_hint) } span.sub { " (only its last characters are shown)" } }
                    }
                    dt { "Updated" } dd { time datetime=(e.updated_at.to_rfc3339()) title=(e.updated_at.format("%Y-%m-%d %H:%M:%S UTC")) { (ago(e.updated_at, now)) } }
                    dt { "Id" } dd.mono.sub { (e.id) }
                }
            }
            section.panel aria-labelledby="last-error-head" {
                h2 #last-error-head { "Last error" }
                @if let Some(l) = &e.last_error {
                    p.error-text { (l.reason) }
                    p.sub {
                        "Reported " time datetime=(l.at.to_rfc3339()) { (ago(l.at, now)) } " by data plane "
                        span.mono { (l.node_id) }
                    }
                } @else {
                    p.sub { "No failure reported in the last day." }
                }
            }
        }
        h2 { "Health per data plane" }
        p.sub { "What each data plane last reported. The state above is the fleet's: throttling if any data plane is in a 429 window, else error if any is in an error window." }
        div.table-wrap {
            table #endpoint-data-planes {
                thead { tr {
                    th scope="col" { "Data plane" }
                    th scope="col" { "State" }
                    th scope="col" { "Avoided until" }
                    th scope="col" { "Reason" }
                    th scope="col" { "Reported" }
                } }
                tbody {
                    @for d in &e.data_planes {
                        tr data-node=(d.node_id) {
                            td.mono { (d.node_id) }
                            td { (state_badge(&d.state, None)) }
                            td { @if let Some(u) = d.until { (until(u, now)) } @else { span.sub { "—" } } }
                            td { @if let Some(r) = &d.reason { (r) } @else { span.sub { "—" } } }
                            td { (ago(d.updated_at, now)) }
                        }
                    }
                    @if e.data_planes.is_empty() {
                        tr { td.empty colspan="5" { "No data plane has reported on this endpoint yet." } }
                    }
                }
            }
        }
    };
    layout::page(op, &e.name, Nav::Endpoints, content)
}

/// Above a refused form: when every reason is already shown next to its field, one line that
/// points there (the API's detail repeats them); otherwise the API's whole summary.
pub(crate) fn form_alert(
    problem: Option<&Problem>,
    fields: &[&str],
    (lead, pointer): (&str, &str),
) -> Markup {
    match problem {
        Some(p) if !p.errors.is_empty() && p.other_errors(fields).next().is_none() => html! {
            div.alert role="alert" { strong { (lead) } " " (pointer) }
        },
        _ => problem_summary(problem, fields),
    }
}

/// The regions, model names and versions already in the inventory, for the pickers.
struct Pickers {
    regions: BTreeSet<String>,
    models: BTreeSet<String>,
    versions: BTreeSet<String>,
}

async fn pickers(op: &Operator) -> Result<Pickers, ConsoleError> {
    let all: Vec<EndpointView> = op.api.get("/api/v1/inference-endpoints").await?;
    Ok(Pickers {
        regions: all.iter().map(|e| e.region.clone()).collect(),
        models: all.iter().map(|e| e.model_name.clone()).collect(),
        versions: all.iter().map(|e| e.model_version.clone()).collect(),
    })
}

/// Where the form is.
enum Mode<'a> {
    New,
    Edit(&'a EndpointView),
}

/// One labelled input with its hint and the API's reasons for it.
struct Input<'a> {
    field: &'a str,
    label: &'a str,
    kind: &'a str,
    hint: Option<&'a str>,
    list: Option<&'a str>,
    required: bool,
}

fn input(i: &Input<'_>, value: &str, problem: Option<&Problem>) -> Markup {
    let invalid = problem.is_some_and(|p| p.reasons_for(i.field).next().is_some());
    let hint_id = format!("hint-{}", i.field);
    let described =
        if invalid { Some(format!("error-{}", i.field)) } else { i.hint.map(|_| hint_id.clone()) };
    html! {
        div.field {
            label for=(i.field) { (i.label) }
            input type=(i.kind) id=(i.field) name=(i.field) value=(value) list=[i.list]
                required[i.required] autocomplete="off" spellcheck="false"
                aria-invalid=[invalid.then_some("true")] aria-describedby=[described];
            (field_errors(problem, i.field))
            @if let Some(h) = i.hint { span.hint id=(hint_id) { (h) } }
        }
    }
}

fn select(
    field: &str,
    label: &str,
    options: &[(&str, &str)],
    value: &str,
    hint: &str,
    problem: Option<&Problem>,
) -> Markup {
    let invalid = problem.is_some_and(|p| p.reasons_for(field).next().is_some());
    let described = if invalid { format!("error-{field}") } else { format!("hint-{field}") };
    html! {
        div.field {
            label for=(field) { (label) }
            select id=(field) name=(field) aria-invalid=[invalid.then_some("true")] aria-describedby=(described) {
                @for (v, text) in options {
                    option value=(v) selected[*v == value] { (text) }
                }
            }
            (field_errors(problem, field))
            span.hint id={ "hint-" (field) } { (hint) }
        }
    }
}

fn form_page(
    op: &Operator,
    mode: &Mode<'_>,
    values: &EndpointForm,
    problem: Option<&Problem>,
    pickers: &Pickers,
) -> Markup {
    let (title, action, cancel) = match mode {
        Mode::New => (
            "New inference endpoint".to_owned(),
            "/endpoints/new".to_owned(),
            "/endpoints".to_owned(),
        ),
        Mode::Edit(e) => (
            format!("Edit {}", e.name),
            format!("/endpoints/{}/edit", e.id),
            format!("/endpoints/{}", e.id),
        ),
    };
    let key_hint = match mode {
        Mode::Edit(e) if !e.api_key_hint.is_empty() => format!(
            "Write-only. The stored key ends in {}; leave empty to keep it, type a new one to rotate it. Not used with Entra ID.",
            e.api_key_hint
        ),
        Mode::Edit(_) => "Write-only. Needed only when switching to API key auth.".to_owned(),
        Mode::New => "Write-only: stored sealed, never shown again (only its last characters). Required for API key auth, empty for Entra ID.".to_owned(),
    };
    let content = html! {
        div.page-head {
            div {
                p.crumbs {
                    a href="/endpoints" { "Inference Endpoints" }
                    @if let Mode::Edit(e) = mode { " / " a href={ "/endpoints/" (e.id) } { (e.name) } }
                }
                h1 { (title) }
                p { "One model deployment at one upstream resource. Gateways route over endpoints." }
            }
        }
        (form_alert(problem, &FIELDS, ("Not saved.", "Check the marked fields below.")))
        form.stacked method="post" action=(action) novalidate {
            (csrf_field(op))
            fieldset.group {
                legend { "Upstream" }
                (input(&Input { field: "name", label: "Name", kind: "text", hint: Some("Unique, e.g. gpt-4o-eastus."), list: None, required: true }, &values.name, problem))
                (select("platform", "Platform", &[("azure_openai", "Azure OpenAI"), ("openai_compatible", "OpenAI-compatible")],
                    &values.platform, "Which API the upstream speaks.", problem))
                (input(&Input { field: "endpoint", label: "Endpoint URL", kind: "url", hint: Some("Base URL of the resource, e.g. https://contoso-eastus.openai.azure.com (no key or query in it)."), list: None, required: true }, &values.endpoint, problem))
                (input(&Input { field: "deployment", label: "Deployment", kind: "text", hint: Some("Deployment name at Azure, or the model id for an OpenAI-compatible API."), list: None, required: true }, &values.deployment, problem))
            }
            fieldset.group {
                legend { "Model" }
                div.row2 {
                    (input(&Input { field: "model_name", label: "Model name", kind: "text", hint: Some("e.g. gpt-4o."), list: Some("model-names"), required: true }, &values.model_name, problem))
                    (input(&Input { field: "model_version", label: "Model version", kind: "text",
                        hint: Some("Required, exact: the version deployed, e.g. 2024-11-20 — not “latest”. Gateways balance only over endpoints of the same model and version."),
                        list: Some("model-versions"), required: true }, &values.model_version, problem))
                }
                (input(&Input { field: "region", label: "Region", kind: "text", hint: Some("The Azure region of the resource, e.g. eastus."), list: Some("regions"), required: true }, &values.region, problem))
                datalist #model-names { @for m in &pickers.models { option value=(m) {} } }
                datalist #model-versions { @for v in &pickers.versions { option value=(v) {} } }
                datalist #regions { @for r in &pickers.regions { option value=(r) {} } }
            }
            fieldset.group {
                legend { "Authentication" }
                (select("auth", "Auth", &[("api_key", "API key"), ("entra", "Entra ID (the data plane's managed identity)")],
                    &values.auth, "How the data planes authenticate to the upstream.", problem))
                // Never re-shown: the value attribute stays empty, also after a refused post.
                (input(&Input { field: "api_key", label: "API key", kind: "password", hint: Some(&key_hint), list: None, required: false }, "", problem))
            }
            div.actions {
                button #save type="submit" { (match mode { Mode::New => "Create endpoint", Mode::Edit(_) => "Save changes" }) }
                a.button.secondary href=(cancel) { "Cancel" }
            }
        }
    };
    layout::page(op, &title, Nav::Endpoints, content)
}

/// `GET /endpoints/new`.
pub(crate) async fn new_form(op: Operator) -> Result<Markup, ConsoleError> {
    operators_only(&op)?;
    let values = EndpointForm {
        platform: "azure_openai".to_owned(),
        auth: "api_key".to_owned(),
        ..EndpointForm::default()
    };
    Ok(form_page(&op, &Mode::New, &values, None, &pickers(&op).await?))
}

/// `POST /endpoints/new`: create through the API; 303 to the endpoint, or the form again with
/// the API's reasons.
pub(crate) async fn create(
    op: Operator,
    Form(form): Form<EndpointForm>,
) -> Result<Response, ConsoleError> {
    let reply =
        op.api.send(Method::POST, "/api/v1/inference-endpoints", Some(&form.create_body())).await?;
    match reply.form_result::<EndpointView>()? {
        Ok(created) => {
            Ok(Redirect::to(&format!("/endpoints/{}?saved=1", created.id)).into_response())
        }
        Err(problem) => {
            let page = form_page(&op, &Mode::New, &form, Some(&problem), &pickers(&op).await?);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
    }
}

/// `GET /endpoints/{id}/edit`.
pub(crate) async fn edit_form(
    op: Operator,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    operators_only(&op)?;
    let id = endpoint_id(&id)?;
    let e: EndpointView = op.api.get(&api_path(id)).await?;
    let values = EndpointForm::from_endpoint(&e);
    Ok(form_page(&op, &Mode::Edit(&e), &values, None, &pickers(&op).await?))
}

/// `POST /endpoints/{id}/edit`: a PATCH of what changed.
pub(crate) async fn update(
    op: Operator,
    Path(id): Path<String>,
    Form(form): Form<EndpointForm>,
) -> Result<Response, ConsoleError> {
    let id = endpoint_id(&id)?;
    let e: EndpointView = op.api.get(&api_path(id)).await?;
    let body = form.patch_body(&EndpointForm::from_endpoint(&e));
    if body.is_empty() {
        return Ok(Redirect::to(&format!("/endpoints/{id}?unchanged=1")).into_response());
    }
    let reply = op.api.send(Method::PATCH, &api_path(id), Some(&Value::Object(body))).await?;
    match reply.form_result::<EndpointView>()? {
        Ok(_) => Ok(Redirect::to(&format!("/endpoints/{id}?saved=1")).into_response()),
        Err(problem) => {
            let page = form_page(&op, &Mode::Edit(&e), &form, Some(&problem), &pickers(&op).await?);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
    }
}

/// `POST /endpoints/{id}/delete` (`force=true` also removes it from its gateways): 303 to the
/// list, or — when gateways use it — the detail page naming them, with a force delete.
pub(crate) async fn delete(
    op: Operator,
    Path(id): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, ConsoleError> {
    let id = endpoint_id(&id)?;
    let e: EndpointView = op.api.get(&api_path(id)).await?;
    let path = if form.force == Some(true) {
        format!("{}?force=true", api_path(id))
    } else {
        api_path(id)
    };
    let reply = op.api.send(Method::DELETE, &path, None).await?;
    if reply.status.is_success() {
        let to = format!("/endpoints?deleted={}", super::endpoints::urlencode(&e.name));
        return Ok(Redirect::to(&to).into_response());
    }
    let problem = reply.problem();
    let names = match problem.gateways.clone() {
        Some(names) if reply.status == StatusCode::CONFLICT => names,
        _ => return Err(ConsoleError::from_problem(reply.status, problem)),
    };
    let gateways: Vec<GatewayView> = op.api.get("/api/v1/gateways").await?;
    let in_use = InUse {
        gateways: names
            .into_iter()
            .map(|name| {
                let href =
                    gateways.iter().find(|g| g.name == name).map(|g| format!("/gateways/{}", g.id));
                (name, href)
            })
            .collect(),
    };
    Ok((StatusCode::CONFLICT, detail_page(&op, &e, None, Some(&in_use))).into_response())
}

/// `POST /endpoints/{id}/reset-health`.
pub(crate) async fn reset_health(
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = endpoint_id(&id)?;
    let path = format!("{}/health:reset", api_path(id));
    op.api.send(Method::POST, &path, None).await?.json::<EndpointView>()?;
    Ok(Redirect::to(&format!("/endpoints/{id}?reset=1")).into_response())
}
