//! The gateway form (`/gateways/new`, `/gateways/{id}/edit`) and proposals from the inventory
//! (`/gateways/proposals`).
//!
//! Members: one row per inference endpoint, members first (enabled, then disabled), with a
//! checkbox `member` (checked = a member that receives traffic), `priority_<id>` and
//! `weight_<id>`. Unchecking a current member keeps it as a disabled member (its priority and
//! weight stay configured); its "Remove" checkbox takes it out of the gateway. Every value goes
//! to the API as typed: the API validates, and its errors (`endpoints[i].weight`, …) are shown
//! in the row of the endpoint they name.
//!
//! Proposals: `POST /api/v1/azure/gateway-proposals` (which creates nothing) lists one gateway
//! per model and version, PTU deployments first. "Create" posts the proposal as is to
//! `POST /api/v1/gateways` and goes to the new gateway; "Review" opens this form pre-filled.
//! When the API refuses a proposal (e.g. the name is taken), the pre-filled form shows why.
//!
//! Quota-aware routing (`routing.quota`): the checkbox `quota_enabled` follows a hidden
//! `quota_enabled=false`, so an unchecked box says "off" while a post without the fieldset
//! leaves the API's default; the windows and the reserve go as typed, blank = the default.

use std::collections::{HashMap, HashSet};

use axum::Form;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use http::{Method, StatusCode};
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ProposalView, ProposalsView, path_uuid, strategy_label};
use crate::api::{FieldError, Problem};
use crate::error::ConsoleError;
use crate::layout::{self, Nav, empty_state, field_errors, problem_summary, state_badge};
use crate::operator::Operator;
use crate::pages::{EndpointView, GatewayView};
use modelgw_model::QuotaPolicy;

/// The routing strategies the API accepts (`RoutingStrategy` in its OpenAPI document).
const STRATEGIES: [&str; 2] = ["weighted", "fastest"];

/// What the form holds: what the operator typed (or the gateway as it is).
#[derive(Debug, Default)]
struct GatewayForm {
    name: String,
    /// By endpoint id.
    members: HashMap<String, MemberInput>,
    strategy: String,
    wait_for_recovery: bool,
    request_timeout_ms: String,
    /// `None`: not posted (the API's default).
    quota_enabled: Option<bool>,
    quota_request_window_secs: String,
    quota_token_window_secs: String,
    quota_reserve_percent: String,
}

/// The form's names of the quota fields, each `routing.quota.<name without quota_>` in the API.
const QUOTA_FIELDS: [&str; 4] = [
    "quota_enabled",
    "quota_request_window_secs",
    "quota_token_window_secs",
    "quota_reserve_percent",
];

#[derive(Debug, Default, Clone)]
struct MemberInput {
    enabled: bool,
    /// The endpoint is a member now (edit form): unchecked, it stays as a disabled member.
    current: bool,
    remove: bool,
    priority: String,
    weight: String,
}

impl GatewayForm {
    fn from_gateway(g: &GatewayView) -> GatewayForm {
        GatewayForm {
            name: g.name.clone(),
            members: g
                .endpoints
                .iter()
                .map(|m| {
                    (
                        m.endpoint_id.clone(),
                        MemberInput {
                            enabled: m.enabled,
                            current: true,
                            remove: false,
                            priority: m.priority.to_string(),
                            weight: m.weight.to_string(),
                        },
                    )
                })
                .collect(),
            strategy: g.routing.strategy.clone(),
            wait_for_recovery: g.routing.wait_for_recovery,
            request_timeout_ms: g
                .routing
                .request_timeout_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
            quota_enabled: Some(g.routing.quota.enabled),
            quota_request_window_secs: g.routing.quota.request_window_secs.to_string(),
            quota_token_window_secs: g.routing.quota.token_window_secs.to_string(),
            quota_reserve_percent: g.routing.quota.reserve_percent.to_string(),
        }
    }

    fn from_proposal(p: &ProposalView) -> GatewayForm {
        GatewayForm {
            name: p.name.clone(),
            members: p
                .endpoints
                .iter()
                .map(|m| {
                    (
                        m.endpoint_id.clone(),
                        MemberInput {
                            enabled: m.enabled,
                            current: false,
                            remove: false,
                            priority: m.priority.to_string(),
                            weight: m.weight.to_string(),
                        },
                    )
                })
                .collect(),
            strategy: p.routing.strategy.clone(),
            wait_for_recovery: p.routing.wait_for_recovery,
            ..GatewayForm::default()
        }
    }

    /// From the posted fields (repeated `member`, `keep`, `remove`; `priority_<id>`, …).
    fn from_fields(fields: Vec<(String, String)>) -> GatewayForm {
        let mut f = GatewayForm::default();
        for (key, value) in fields {
            match key.as_str() {
                "name" => f.name = value,
                "strategy" => f.strategy = value,
                "wait_for_recovery" => f.wait_for_recovery = true,
                "request_timeout_ms" => f.request_timeout_ms = value,
                // The hidden `false` comes first; a checked box's `true` after it wins.
                "quota_enabled" => f.quota_enabled = Some(value == "true"),
                "quota_request_window_secs" => f.quota_request_window_secs = value,
                "quota_token_window_secs" => f.quota_token_window_secs = value,
                "quota_reserve_percent" => f.quota_reserve_percent = value,
                "member" => f.members.entry(value).or_default().enabled = true,
                "keep" => f.members.entry(value).or_default().current = true,
                "remove" => f.members.entry(value).or_default().remove = true,
                _ => {
                    if let Some(id) = key.strip_prefix("priority_") {
                        f.members.entry(id.to_owned()).or_default().priority = value;
                    } else if let Some(id) = key.strip_prefix("weight_") {
                        f.members.entry(id.to_owned()).or_default().weight = value;
                    }
                }
            }
        }
        f
    }

    fn is_member(m: &MemberInput) -> bool {
        (m.enabled || m.current) && !m.remove
    }

    /// The API's request body, and the endpoint id of each `endpoints[i]` in it.
    fn to_request(&self, endpoints: &[EndpointView]) -> (Value, Vec<String>) {
        // Members in the order the form lists endpoints, so errors map back row by row.
        let mut order: Vec<&String> = self.members.keys().collect();
        let rank: HashMap<&str, usize> =
            endpoints.iter().enumerate().map(|(i, e)| (e.id.as_str(), i)).collect();
        order.sort_by_key(|id| (rank.get(id.as_str()).copied().unwrap_or(usize::MAX), *id));
        let mut ids = Vec::new();
        let mut members = Vec::new();
        for id in order {
            let m = &self.members[id];
            if !Self::is_member(m) {
                continue;
            }
            let mut member = Map::new();
            member.insert("endpoint_id".into(), json!(id));
            member.insert("enabled".into(), json!(m.enabled));
            if let Some(v) = number_or_text(&m.priority) {
                member.insert("priority".into(), v);
            }
            if let Some(v) = number_or_text(&m.weight) {
                member.insert("weight".into(), v);
            }
            members.push(Value::Object(member));
            ids.push(id.clone());
        }
        let mut routing = Map::new();
        if !self.strategy.is_empty() {
            routing.insert("strategy".into(), json!(self.strategy));
        }
        routing.insert("wait_for_recovery".into(), json!(self.wait_for_recovery));
        routing.insert(
            "request_timeout_ms".into(),
            number_or_text(&self.request_timeout_ms).unwrap_or(Value::Null),
        );
        let mut quota = Map::new();
        if let Some(enabled) = self.quota_enabled {
            quota.insert("enabled".into(), json!(enabled));
        }
        for (name, value) in [
            ("request_window_secs", &self.quota_request_window_secs),
            ("token_window_secs", &self.quota_token_window_secs),
            ("reserve_percent", &self.quota_reserve_percent),
        ] {
            if let Some(v) = number_or_text(value) {
                quota.insert(name.into(), v);
            }
        }
        routing.insert("quota".into(), Value::Object(quota));
        let body = json!({ "name": self.name, "endpoints": members, "routing": routing });
        (body, ids)
    }
}

/// A typed number as a JSON number; other text as is (the API names it as mistyped); blank as
/// absent (the API's default).
fn number_or_text(s: &str) -> Option<Value> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    Some(s.parse::<i64>().map_or_else(|_| json!(s), |n| json!(n)))
}

/// The API's problem with its field names turned into the form's: `endpoints[i].weight` becomes
/// `weight_<endpoint id>`, `routing.strategy` becomes `strategy`, `routing.quota.reserve_percent`
/// becomes `quota_reserve_percent`.
fn form_problem(mut problem: Problem, ids: &[String]) -> Problem {
    for e in &mut problem.errors {
        e.field = form_field(&e.field, ids);
    }
    if !problem.errors.is_empty() {
        // The API's detail names its own fields; each reason is shown by its input instead.
        problem.detail = "Nothing was saved: correct the fields marked below.".to_owned();
    }
    problem
}

fn form_field(api_field: &str, ids: &[String]) -> String {
    if let Some(rest) = api_field.strip_prefix("routing.") {
        return rest.replacen("quota.", "quota_", 1);
    }
    if let Some(rest) = api_field.strip_prefix("endpoints[")
        && let Some((index, tail)) = rest.split_once(']')
        && let Some(id) = index.parse::<usize>().ok().and_then(|i| ids.get(i))
    {
        return match tail.strip_prefix('.') {
            Some("priority") => format!("priority_{id}"),
            Some("weight") => format!("weight_{id}"),
            _ => format!("member_{id}"),
        };
    }
    api_field.to_owned()
}

/// Where a form posts and what it is.
enum Target {
    New,
    Edit { id: String },
}

/// `GET /gateways/new` (`?proposal=<name>` pre-fills it from that proposal).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NewQuery {
    #[serde(default)]
    proposal: Option<String>,
}

pub(super) async fn new(op: Operator, Query(q): Query<NewQuery>) -> Result<Markup, ConsoleError> {
    may_change(&op)?;
    let endpoints: Vec<EndpointView> = op.api.get("/api/v1/inference-endpoints").await?;
    let mut form = GatewayForm { strategy: "weighted".to_owned(), ..GatewayForm::default() };
    let mut notice = None;
    if let Some(name) = &q.proposal {
        match proposals_now(&op).await?.into_iter().find(|p| &p.name == name) {
            Some(p) => {
                form = GatewayForm::from_proposal(&p);
                notice = Some("Pre-filled from the proposal: review the members and save.");
            }
            None => notice = Some("That proposal is no longer offered (the inventory changed)."),
        }
    }
    Ok(render(&op, &Target::New, &form, &endpoints, None, notice))
}

/// `POST /gateways`.
pub(super) async fn create(
    op: Operator,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    let form = GatewayForm::from_fields(fields);
    let endpoints: Vec<EndpointView> = op.api.get("/api/v1/inference-endpoints").await?;
    let (body, ids) = form.to_request(&endpoints);
    let reply = op.api.send(Method::POST, "/api/v1/gateways", Some(&body)).await?;
    match reply.form_result::<GatewayView>()? {
        Ok(g) => Ok(Redirect::to(&format!("/gateways/{}?created=1", g.id)).into_response()),
        Err(problem) => {
            let problem = form_problem(problem, &ids);
            Ok(refused(render(&op, &Target::New, &form, &endpoints, Some(&problem), None)))
        }
    }
}

/// `GET /gateways/{id}/edit`.
pub(super) async fn edit(op: Operator, Path(id): Path<String>) -> Result<Markup, ConsoleError> {
    may_change(&op)?;
    let id = path_uuid(&id, "gateway")?;
    let path = format!("/api/v1/gateways/{id}");
    let (gateway, endpoints) = tokio::try_join!(
        op.api.get::<GatewayView>(&path),
        op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
    )?;
    let form = GatewayForm::from_gateway(&gateway);
    Ok(render(&op, &Target::Edit { id }, &form, &endpoints, None, None))
}

/// `POST /gateways/{id}/edit`.
pub(super) async fn update(
    op: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    let id = path_uuid(&id, "gateway")?;
    let form = GatewayForm::from_fields(fields);
    let endpoints: Vec<EndpointView> = op.api.get("/api/v1/inference-endpoints").await?;
    let (body, ids) = form.to_request(&endpoints);
    let reply = op.api.send(Method::PATCH, &format!("/api/v1/gateways/{id}"), Some(&body)).await?;
    match reply.form_result::<GatewayView>()? {
        Ok(g) => Ok(Redirect::to(&format!("/gateways/{}?saved=1", g.id)).into_response()),
        Err(problem) => {
            let problem = form_problem(problem, &ids);
            Ok(refused(render(&op, &Target::Edit { id }, &form, &endpoints, Some(&problem), None)))
        }
    }
}

fn may_change(op: &Operator) -> Result<(), ConsoleError> {
    op.require(Role::Operator, "Changing gateways needs the operator role.")
}

/// A form the API refused, re-rendered with its reasons.
fn refused(page: Markup) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, page).into_response()
}

/// Membership order in the form: enabled members (by priority), disabled members, the rest.
fn row_rank(m: Option<&MemberInput>) -> (u8, i64) {
    match m {
        Some(m) if m.enabled && !m.remove => (0, m.priority.trim().parse().unwrap_or(0)),
        Some(m) if GatewayForm::is_member(m) => (1, 0),
        _ => (2, 0),
    }
}

fn render(
    op: &Operator,
    target: &Target,
    form: &GatewayForm,
    endpoints: &[EndpointView],
    problem: Option<&Problem>,
    notice: Option<&str>,
) -> Markup {
    let mut rows: Vec<&EndpointView> = endpoints.iter().collect();
    rows.sort_by(|a, b| {
        (row_rank(form.members.get(&a.id)), &a.name)
            .cmp(&(row_rank(form.members.get(&b.id)), &b.name))
    });
    let (title, action, cancel) = match target {
        Target::New => ("New gateway".to_owned(), "/gateways".to_owned(), "/gateways".to_owned()),
        Target::Edit { id } => (
            format!("Edit {}", form.name),
            format!("/gateways/{id}/edit"),
            format!("/gateways/{id}"),
        ),
    };
    // Fields shown next to their input; the summary lists the others.
    let known: HashSet<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
    let mut inline: Vec<String> = ["name", "strategy", "wait_for_recovery", "request_timeout_ms"]
        .into_iter()
        .chain(QUOTA_FIELDS)
        .map(str::to_owned)
        .collect();
    if let Some(p) = problem {
        for FieldError { field, .. } in &p.errors {
            let id = field.split_once('_').map(|(_, id)| id).unwrap_or("");
            if known.contains(id) && field.contains('_') && !inline.contains(field) {
                inline.push(field.clone());
            }
        }
    }
    let inline: Vec<&str> = inline.iter().map(String::as_str).collect();
    let has_error = |field: &str| problem.is_some_and(|p| p.reasons_for(field).next().is_some());
    let invalid = |field: &str| has_error(field).then_some("true");
    let described = |field: &str| has_error(field).then(|| format!("error-{field}"));
    let member_count = form.members.values().filter(|m| GatewayForm::is_member(m)).count();
    let content = html! {
        div.page-head {
            div {
                p.crumbs { a href="/gateways" { "Gateways" } " /" }
                h1 { (title) }
                p { "Members are the inference endpoints this gateway routes over. Every change is validated by the admin API and audited." }
            }
        }
        @if let Some(n) = notice { div.notice role="status" { (n) } }
        (problem_summary(problem, &inline))
        form.stacked.wide method="post" action=(action) novalidate {
            (layout::csrf_field(op))
            div.field {
                label for="name" { "Name" }
                input #name type="text" name="name" value=(form.name) required autocomplete="off"
                    aria-invalid=[invalid("name")] aria-describedby=[described("name")];
                (field_errors(problem, "name"))
                span.hint { "What clients put in the URL as the deployment: " code { "/openai/deployments/<name>/…" } "." }
            }
            fieldset.members {
                legend { "Members" }
                @if endpoints.is_empty() {
                    (empty_state("There are no inference endpoints to add yet.",
                        Some(html! { a href="/import" { "Import from Azure" } " or " a href="/endpoints/new" { "add one by hand" } })))
                } @else {
                    div.toolbar {
                        input type="search" data-filter="members-table" placeholder="Filter by name, model, region or deployment" aria-label="Filter endpoints";
                        span.sub { (member_count) (if member_count == 1 { " member" } else { " members" }) " · " (endpoints.len()) " endpoints" }
                    }
                    p.hint { "Checked endpoints receive traffic. Lower priority is preferred (0–100; higher groups are used only when the lower ones are all unavailable); weight shares traffic within a group. Blank takes the API's default." }
                    div.table-wrap.members-wrap {
                        table #members-table {
                            thead {
                                tr {
                                    th scope="col" { "Enabled" }
                                    th scope="col" { "Endpoint" }
                                    th scope="col" { "State" }
                                    th scope="col" { "Model" }
                                    th scope="col" { "Region" }
                                    th.num scope="col" { "Priority" }
                                    th.num scope="col" { "Weight" }
                                }
                            }
                            tbody {
                                @for e in &rows {
                                    @let m = form.members.get(&e.id);
                                    @let enabled = m.is_some_and(|m| m.enabled && !m.remove);
                                    @let disabled_member = m.is_some_and(|m| m.current && !m.enabled);
                                    @let member_field = format!("member_{}", e.id);
                                    @let priority_field = format!("priority_{}", e.id);
                                    @let weight_field = format!("weight_{}", e.id);
                                    tr data-endpoint=(e.id) class=[m.filter(|m| GatewayForm::is_member(m)).map(|_| "member")] {
                                        td {
                                            input type="checkbox" name="member" value=(e.id) id=(member_field) checked[enabled]
                                                aria-invalid=[invalid(&member_field)] aria-describedby=[described(&member_field)];
                                        }
                                        td {
                                            label for=(member_field) { (e.name) }
                                            @if m.is_some_and(|m| m.current) {
                                                input type="hidden" name="keep" value=(e.id);
                                            }
                                            @if disabled_member {
                                                div.sub {
                                                    "Disabled member · "
                                                    label.inline-check {
                                                        input type="checkbox" name="remove" value=(e.id) checked[m.is_some_and(|m| m.remove)];
                                                        " Remove from gateway"
                                                    }
                                                }
                                            }
                                            (field_errors(problem, &member_field))
                                        }
                                        td { (state_badge(&e.state, None)) }
                                        td { (e.model_name) " " span.sub { (e.model_version) } }
                                        td { (e.region) }
                                        td.num {
                                            label.sr-only for=(priority_field) { "Priority of " (e.name) }
                                            input.num type="number" inputmode="numeric" name=(priority_field) id=(priority_field)
                                                value=(m.map(|m| m.priority.as_str()).unwrap_or("")) placeholder="0"
                                                aria-invalid=[invalid(&priority_field)] aria-describedby=[described(&priority_field)];
                                            (field_errors(problem, &priority_field))
                                        }
                                        td.num {
                                            label.sr-only for=(weight_field) { "Weight of " (e.name) }
                                            input.num type="number" inputmode="numeric" name=(weight_field) id=(weight_field)
                                                value=(m.map(|m| m.weight.as_str()).unwrap_or("")) placeholder="1"
                                                aria-invalid=[invalid(&weight_field)] aria-describedby=[described(&weight_field)];
                                            (field_errors(problem, &weight_field))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            fieldset {
                legend { "Routing" }
                div.row2 {
                    div.field {
                        label for="strategy" { "Strategy" }
                        select #strategy name="strategy" aria-invalid=[invalid("strategy")] aria-describedby=[described("strategy")] {
                            @for s in STRATEGIES {
                                option value=(s) selected[form.strategy == s] { (strategy_label(s)) }
                            }
                            @if !form.strategy.is_empty() && !STRATEGIES.contains(&form.strategy.as_str()) {
                                option value=(form.strategy) selected { (form.strategy) }
                            }
                        }
                        (field_errors(problem, "strategy"))
                        span.hint { "Weighted: random by weight within the best priority group. Fastest: prefers the member with the lowest recent time to first byte." }
                    }
                    div.field {
                        label for="request_timeout_ms" { "Request timeout (ms)" }
                        input #request_timeout_ms type="number" inputmode="numeric" name="request_timeout_ms"
                            value=(form.request_timeout_ms) placeholder="Data plane default"
                            aria-invalid=[invalid("request_timeout_ms")] aria-describedby=[described("request_timeout_ms")];
                        (field_errors(problem, "request_timeout_ms"))
                        span.hint { "End-to-end deadline of one request. Blank: the data plane's default." }
                    }
                }
                div.field.check {
                    label {
                        input #wait_for_recovery type="checkbox" name="wait_for_recovery" value="true" checked[form.wait_for_recovery]
                            aria-describedby=[described("wait_for_recovery")];
                        " Wait for recovery"
                    }
                    (field_errors(problem, "wait_for_recovery"))
                    span.hint { "When every member is unavailable, wait for the first to recover if that fits in the request's deadline, instead of answering 429/503 at once." }
                }
            }
            (quota_fieldset(form, problem))
            div.actions {
                button #save type="submit" { (match target { Target::New => "Create gateway", Target::Edit { .. } => "Save changes" }) }
                a.button.secondary href=(cancel) { "Cancel" }
            }
        }
    };
    let title = match target {
        Target::New => "New gateway".to_owned(),
        Target::Edit { .. } => format!("Edit {}", form.name),
    };
    layout::page(op, &title, Nav::Gateways, content)
}

/// "Quota-aware routing": `routing.quota`, each field with the API's reasons next to it.
fn quota_fieldset(form: &GatewayForm, problem: Option<&Problem>) -> Markup {
    let defaults = QuotaPolicy::default();
    let has_error = |field: &str| problem.is_some_and(|p| p.reasons_for(field).next().is_some());
    let invalid = |field: &str| has_error(field).then_some("true");
    let described = |field: &str| has_error(field).then(|| format!("error-{field}"));
    let number =
        |field: &'static str, label: &str, value: &str, placeholder: String, hint: &str| {
            html! {
                div.field {
                    label for=(field) { (label) }
                    input id=(field) type="number" inputmode="numeric" name=(field) value=(value)
                        placeholder=(placeholder)
                        aria-invalid=[invalid(field)] aria-describedby=[described(field)];
                    (field_errors(problem, field))
                    span.hint { (hint) }
                }
            }
        };
    html! {
        fieldset #quota {
            legend { "Quota-aware routing" }
            div.field.check {
                input type="hidden" name="quota_enabled" value="false";
                label {
                    input #quota_enabled type="checkbox" name="quota_enabled" value="true"
                        checked[form.quota_enabled.unwrap_or(defaults.enabled)]
                        aria-describedby=[described("quota_enabled")];
                    " Spread by remaining quota"
                }
                (field_errors(problem, "quota_enabled"))
                span.hint { "Weights each member by the quota its " code { "x-ratelimit-*" } " headers say is left, and skips a member only when a request would not fit. Off: members are skipped only after a 429." }
            }
            div.row2 {
                (number("quota_request_window_secs", "Request window (s)", &form.quota_request_window_secs,
                    defaults.request_window_secs.to_string(),
                    "How long an endpoint's request limit takes to refill when its answers do not say, 1–86400. Blank: Azure's 10 s."))
                (number("quota_token_window_secs", "Token window (s)", &form.quota_token_window_secs,
                    defaults.token_window_secs.to_string(),
                    "The same for its token limit, 1–86400. Blank: Azure's 60 s."))
            }
            (number("quota_reserve_percent", "Reserve (%)", &form.quota_reserve_percent,
                defaults.reserve_percent.to_string(),
                "Share of each endpoint's quota never planned for, 0–50: room for other clients of the same deployments. Blank: none."))
        }
    }
}

/// The API's proposals now (it computes them from the imported endpoints; nothing is created).
async fn proposals_now(op: &Operator) -> Result<Vec<ProposalView>, ConsoleError> {
    let reply = op.api.send(Method::POST, "/api/v1/azure/gateway-proposals", None).await?;
    Ok(reply.json::<ProposalsView>()?.proposals)
}

/// `GET /gateways/proposals`: the proposals, each with "Create" and "Review".
pub(super) async fn proposals(op: Operator) -> Result<Markup, ConsoleError> {
    let (proposals, endpoints, gateways) = tokio::try_join!(
        proposals_now(&op),
        op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
        op.api.get::<Vec<GatewayView>>("/api/v1/gateways"),
    )?;
    Ok(proposals_page(&op, &proposals, &endpoints, &gateways))
}

fn proposals_page(
    op: &Operator,
    proposals: &[ProposalView],
    endpoints: &[EndpointView],
    gateways: &[GatewayView],
) -> Markup {
    let names: HashMap<&str, &EndpointView> =
        endpoints.iter().map(|e| (e.id.as_str(), e)).collect();
    let existing: HashMap<&str, &str> =
        gateways.iter().map(|g| (g.name.as_str(), g.id.as_str())).collect();
    // A gateway over exactly a proposal's endpoints, under another name.
    let member_set = |ids: Vec<&str>| -> Vec<String> {
        let mut ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
        ids.sort();
        ids
    };
    let same_members: HashMap<Vec<String>, &GatewayView> = gateways
        .iter()
        .map(|g| (member_set(g.endpoints.iter().map(|m| m.endpoint_id.as_str()).collect()), g))
        .collect();
    let can_change = op.can(Role::Operator);
    let content = html! {
        div.page-head {
            div {
                p.crumbs { a href="/gateways" { "Gateways" } " /" }
                h1 { "Gateway proposals" }
                p { "One gateway per model and version over the endpoints imported from Azure: provisioned (PTU) deployments at priority 0, standard ones at priority 1 as overflow, weights from capacity. Nothing is created until you choose." }
            }
        }
        @if proposals.is_empty() {
            (empty_state("No proposals: there are no endpoints imported from Azure yet.",
                can_change.then(|| html! { a.button href="/import" { "Import from Azure" } })))
        } @else {
            div.table-wrap {
                table #proposals-table {
                    thead {
                        tr {
                            th scope="col" { "Gateway" }
                            th scope="col" { "Members (priority · weight)" }
                            th scope="col" { "Routing" }
                            th scope="col" { span.sr-only { "Actions" } }
                        }
                    }
                    tbody {
                        @for p in proposals {
                            tr data-proposal=(p.name) {
                                td {
                                    span.mono { (p.name) }
                                    @if !existing.contains_key(p.name.as_str())
                                        && let Some(g) = same_members.get(&member_set(p.endpoints.iter().map(|m| m.endpoint_id.as_str()).collect())) {
                                        div.sub { "Same endpoints as " a href={ "/gateways/" (g.id) } { (g.name) } }
                                    }
                                }
                                td {
                                    ul.plain {
                                        @for m in &p.endpoints {
                                            li {
                                                (names.get(m.endpoint_id.as_str()).map_or(m.endpoint_id.as_str(), |e| e.name.as_str()))
                                                span.sub { " · " @if m.priority == 0 { "PTU, " } "priority " (m.priority) " · weight " (m.weight) }
                                            }
                                        }
                                    }
                                }
                                td { (strategy_label(&p.routing.strategy)) }
                                td {
                                    @if let Some(id) = existing.get(p.name.as_str()) {
                                        span.sub { "Exists: " } a href={ "/gateways/" (id) } { "open" }
                                    } @else if can_change {
                                        div.actions {
                                            form.inline method="post" action="/gateways/proposals" {
                                                (layout::csrf_field(op))
                                                input type="hidden" name="name" value=(p.name);
                                                button.small.create-proposal type="submit" aria-label={ "Create gateway " (p.name) } { "Create" }
                                            }
                                            a.button.secondary.small href={ "/gateways/new?proposal=" (super::urlencode(&p.name)) }
                                                aria-label={ "Review gateway " (p.name) " before creating it" } { "Review…" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(op, "Gateway proposals", Nav::Gateways, content)
}

#[derive(Deserialize)]
pub(crate) struct ProposalForm {
    #[serde(default)]
    name: String,
}

/// `POST /gateways/proposals`: creates the proposal named `name` as proposed.
pub(super) async fn create_from_proposal(
    op: Operator,
    Form(f): Form<ProposalForm>,
) -> Result<Response, ConsoleError> {
    let (proposals, endpoints) = tokio::try_join!(
        proposals_now(&op),
        op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
    )?;
    let Some(proposal) = proposals.into_iter().find(|p| p.name == f.name) else {
        return Err(ConsoleError::NotFound(Box::new(Problem {
            title: "Not found".to_owned(),
            status: 404,
            detail: "That proposal is no longer offered (the inventory changed).".to_owned(),
            ..Problem::default()
        })));
    };
    let body = serde_json::to_value(&proposal)
        .map_err(|e| ConsoleError::Internal(format!("encoding a proposal: {e}")))?;
    let reply = op.api.send(Method::POST, "/api/v1/gateways", Some(&body)).await?;
    match reply.form_result::<GatewayView>()? {
        Ok(g) => Ok(Redirect::to(&format!("/gateways/{}?created=1", g.id)).into_response()),
        Err(problem) => {
            let ids: Vec<String> =
                proposal.endpoints.iter().map(|m| m.endpoint_id.clone()).collect();
            let problem = form_problem(problem, &ids);
            let form = GatewayForm::from_proposal(&proposal);
            Ok(refused(render(&op, &Target::New, &form, &endpoints, Some(&problem), None)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_fields_map_to_the_rows_they_name() {
        let ids = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(form_field("endpoints[1].weight", &ids), "weight_b");
        assert_eq!(form_field("endpoints[0].priority", &ids), "priority_a");
        assert_eq!(form_field("endpoints[0].endpoint_id", &ids), "member_a");
        assert_eq!(form_field("endpoints[7].weight", &ids), "endpoints[7].weight");
        assert_eq!(form_field("routing.request_timeout_ms", &ids), "request_timeout_ms");
        assert_eq!(form_field("routing.quota.reserve_percent", &ids), "quota_reserve_percent");
        for field in QUOTA_FIELDS {
            let api = format!("routing.quota.{}", field.trim_start_matches("quota_"));
            assert_eq!(form_field(&api, &ids), field);
        }
        assert_eq!(form_field("name", &ids), "name");
    }

    #[test]
    fn the_quota_checkbox_says_off_only_when_posted() {
        let posted = |fields: &[(&str, &str)]| {
            let fields = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            GatewayForm::from_fields(fields).to_request(&[]).0["routing"]["quota"].clone()
        };
        // Unchecked: only the hidden field. Checked: the box's value follows it.
        assert_eq!(posted(&[("quota_enabled", "false")]), json!({"enabled": false}));
        assert_eq!(
            posted(&[("quota_enabled", "false"), ("quota_enabled", "true")]),
            json!({"enabled": true})
        );
        // Not posted at all, and blank numbers: the API's defaults.
        assert_eq!(posted(&[("quota_reserve_percent", " ")]), json!({}));
        assert_eq!(
            posted(&[("quota_request_window_secs", "5"), ("quota_token_window_secs", "x")]),
            json!({"request_window_secs": 5, "token_window_secs": "x"})
        );
    }

    #[test]
    fn values_go_to_the_api_as_typed() {
        assert_eq!(number_or_text(" 12 "), Some(json!(12)));
        assert_eq!(number_or_text("1e3"), Some(json!("1e3")));
        assert_eq!(number_or_text("  "), None);
    }
}
