//! Gateway keys on the gateway's detail page: the list (never the keys) with each key's place
//! in the tree, limits, last use and current usage; creating one — with an optional parent,
//! expiry and limits, shown once, in the answer to the POST itself (`Cache-Control:
//! no-store`), never in a cookie, a URL or a later page —, revoking one (with its subtree) and
//! resetting a key's usage counters.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use http::{HeaderValue, Method, StatusCode, header};
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{DetailExtras, KeyView, detail_page, path_uuid};
use crate::Console;
use crate::error::ConsoleError;
use crate::layout::{self, empty_state, field_errors};
use crate::operator::Operator;
use crate::pages::{GatewayView, ago};

/// `POST /api/v1/gateways/{id}/keys` answer: the key is in it, once.
#[derive(Deserialize)]
pub(crate) struct CreatedKeyView {
    pub name: String,
    pub key: String,
}

/// One window's limits as the API shows them (`null`/absent = not limited).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct WindowLimitsView {
    pub requests: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct KeyLimitsView {
    #[serde(default)]
    pub per_minute: WindowLimitsView,
    #[serde(default)]
    pub per_hour: WindowLimitsView,
    #[serde(default)]
    pub per_day: WindowLimitsView,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct UsageView {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A key's usage in its current minute, hour and day.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct CurrentUsageView {
    pub minute: UsageView,
    pub hour: UsageView,
    pub day: UsageView,
}

/// The limits the form offers: (form field, API window, API measure, label). The product's
/// named limits: requests and tokens per minute, the three token measures per hour and day.
const LIMIT_FIELDS: [(&str, &str, &str, &str); 8] = [
    ("limit_minute_requests", "per_minute", "requests", "Requests / minute"),
    ("limit_minute_total_tokens", "per_minute", "total_tokens", "Tokens / minute"),
    ("limit_hour_prompt_tokens", "per_hour", "prompt_tokens", "Prompt tokens / hour"),
    ("limit_hour_completion_tokens", "per_hour", "completion_tokens", "Completion tokens / hour"),
    ("limit_hour_total_tokens", "per_hour", "total_tokens", "Total tokens / hour"),
    ("limit_day_prompt_tokens", "per_day", "prompt_tokens", "Prompt tokens / day"),
    ("limit_day_completion_tokens", "per_day", "completion_tokens", "Completion tokens / day"),
    ("limit_day_total_tokens", "per_day", "total_tokens", "Total tokens / day"),
];

/// The key form. Empty fields are left out of the request.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct KeyForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub parent_id: String,
    /// `datetime-local`, read as UTC.
    #[serde(default)]
    pub expires_at: String,
    #[serde(default)]
    pub limit_minute_requests: String,
    #[serde(default)]
    pub limit_minute_total_tokens: String,
    #[serde(default)]
    pub limit_hour_prompt_tokens: String,
    #[serde(default)]
    pub limit_hour_completion_tokens: String,
    #[serde(default)]
    pub limit_hour_total_tokens: String,
    #[serde(default)]
    pub limit_day_prompt_tokens: String,
    #[serde(default)]
    pub limit_day_completion_tokens: String,
    #[serde(default)]
    pub limit_day_total_tokens: String,
}

impl KeyForm {
    fn limit(&self, field: &str) -> &str {
        match field {
            "limit_minute_requests" => &self.limit_minute_requests,
            "limit_minute_total_tokens" => &self.limit_minute_total_tokens,
            "limit_hour_prompt_tokens" => &self.limit_hour_prompt_tokens,
            "limit_hour_completion_tokens" => &self.limit_hour_completion_tokens,
            "limit_hour_total_tokens" => &self.limit_hour_total_tokens,
            "limit_day_prompt_tokens" => &self.limit_day_prompt_tokens,
            "limit_day_completion_tokens" => &self.limit_day_completion_tokens,
            "limit_day_total_tokens" => &self.limit_day_total_tokens,
            _ => "",
        }
    }

    /// The API request. A value that is not a whole number goes as the text it is, so the
    /// API names the field that is wrong.
    fn body(&self) -> Value {
        let mut body = json!({ "name": self.name });
        if !self.parent_id.trim().is_empty() {
            body["parent_id"] = json!(self.parent_id.trim());
        }
        let expires = self.expires_at.trim();
        if !expires.is_empty() {
            // `datetime-local` sends `YYYY-MM-DDTHH:MM[:SS]`, without a zone: UTC, as labelled.
            let rfc3339 = if expires.len() == 16 {
                format!("{expires}:00Z")
            } else if expires.ends_with('Z') || expires.contains('+') {
                expires.to_owned()
            } else {
                format!("{expires}Z")
            };
            body["expires_at"] = json!(rfc3339);
        }
        let mut limits = Map::new();
        for (field, window, measure, _) in LIMIT_FIELDS {
            let raw = self.limit(field).trim();
            if raw.is_empty() {
                continue;
            }
            let value = raw.replace([',', '_', ' '], "");
            let value = value.parse::<u64>().map_or_else(|_| json!(raw), |n| json!(n));
            let entry = limits.entry(window).or_insert_with(|| json!({}));
            entry[measure] = value;
        }
        if !limits.is_empty() {
            body["limits"] = Value::Object(limits);
        }
        body
    }
}

/// "10,000" for 10000.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The key's limits in words, e.g. "10,000 total tokens / hour · 60 requests / minute".
pub(super) fn limits_summary(l: &KeyLimitsView) -> Vec<String> {
    let mut parts = Vec::new();
    for (w, name) in [(&l.per_minute, "minute"), (&l.per_hour, "hour"), (&l.per_day, "day")] {
        for (v, what) in [
            (w.requests, "requests"),
            (w.prompt_tokens, "prompt tokens"),
            (w.completion_tokens, "completion tokens"),
            (w.total_tokens, "total tokens"),
        ] {
            if let Some(v) = v {
                parts.push(format!("{} {what} / {name}", thousands(v)));
            }
        }
    }
    parts
}

/// The key's current usage against its limits, e.g. "4,000 / 10,000 total tokens this hour";
/// without limits, this hour's requests and tokens.
fn usage_summary(k: &KeyView) -> Vec<String> {
    let mut parts = Vec::new();
    let windows = [
        (&k.limits.per_minute, &k.usage.minute, "minute"),
        (&k.limits.per_hour, &k.usage.hour, "hour"),
        (&k.limits.per_day, &k.usage.day, "day"),
    ];
    for (limits, used, name) in windows {
        for (limit, used, what) in [
            (limits.requests, used.requests, "requests"),
            (limits.prompt_tokens, used.prompt_tokens, "prompt tokens"),
            (limits.completion_tokens, used.completion_tokens, "completion tokens"),
            (limits.total_tokens, used.total_tokens, "total tokens"),
        ] {
            if let Some(limit) = limit {
                parts.push(format!(
                    "{} / {} {what} this {name}",
                    thousands(used),
                    thousands(limit)
                ));
            }
        }
    }
    if parts.is_empty() {
        let h = &k.usage.hour;
        parts.push(format!(
            "{} requests, {} tokens this hour",
            thousands(h.requests),
            thousands(h.total_tokens)
        ));
    }
    parts
}

/// The key's state as a badge: revoked, expired, or active (until its expiry).
pub(super) fn state_badge(k: &KeyView, now: DateTime<Utc>) -> Markup {
    html! {
        @match (k.revoked_at, k.expires_at) {
            (Some(at), _) => span.badge.muted data-state="revoked" title=(at.to_rfc3339()) { "Revoked " (ago(at, now)) },
            (None, Some(at)) if at <= now => span.badge.muted data-state="expired" title=(at.to_rfc3339()) { "Expired" },
            (None, Some(at)) => span.badge.ok data-state="active" title={ "Expires " (at.to_rfc3339()) } { "Active until " (at.format("%Y-%m-%d %H:%M UTC")) },
            (None, None) => span.badge.ok data-state="active" { "Active" },
        }
    }
}

/// The keys in tree order (each active key after its parent, children indented), revoked keys
/// last; with each key's depth.
fn tree_order(keys: &[KeyView]) -> Vec<(&KeyView, usize)> {
    let mut ordered = Vec::with_capacity(keys.len());
    let mut roots: Vec<&KeyView> = keys
        .iter()
        .filter(|k| k.parent_id.as_ref().is_none_or(|p| !keys.iter().any(|o| &o.id == p)))
        .collect();
    // Active first, newest first.
    let order = |a: &&KeyView, b: &&KeyView| {
        (a.revoked_at.is_some(), std::cmp::Reverse(a.created_at))
            .cmp(&(b.revoked_at.is_some(), std::cmp::Reverse(b.created_at)))
    };
    roots.sort_by(order);
    fn visit<'a>(
        key: &'a KeyView,
        depth: usize,
        keys: &'a [KeyView],
        out: &mut Vec<(&'a KeyView, usize)>,
        order: &dyn Fn(&&KeyView, &&KeyView) -> std::cmp::Ordering,
    ) {
        out.push((key, depth));
        let mut children: Vec<&KeyView> =
            keys.iter().filter(|k| k.parent_id.as_deref() == Some(key.id.as_str())).collect();
        children.sort_by(order);
        for c in children {
            // The tree is at most 8 deep; the bound also stops a (corrupt) cycle.
            if depth < 16 {
                visit(c, depth + 1, keys, out, order);
            }
        }
    }
    for root in roots {
        visit(root, 0, keys, &mut ordered, &order);
    }
    ordered
}

/// The keys section of the detail page.
pub(super) fn section(
    op: &Operator,
    gateway: &GatewayView,
    keys: &[KeyView],
    extras: &DetailExtras,
    now: DateTime<Utc>,
) -> Markup {
    let ordered = tree_order(keys);
    let can_change = op.can(Role::Operator);
    let problem = extras.key_problem.as_ref();
    let form = &extras.key_form;
    let invalid = |field: &str| problem.is_some_and(|p| p.reasons_for(field).next().is_some());
    let name_of = |id: &str| keys.iter().find(|k| k.id == id).map(|k| k.name.clone());
    let parents: Vec<&KeyView> = ordered
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|t| t > now))
        .collect();
    html! {
        section aria-labelledby="h-keys" {
            h2 #h-keys { "Gateway keys" }
            @if let Some(new) = &extras.new_key {
                div.new-key role="status" {
                    p { strong { "Key " (new.name) " created." } " Copy it now: " strong { "it will not be shown again" }
                        ". Store it in your client's secret store; if it is lost, revoke it and create another." }
                    div.copy-row {
                        code.secret #new-key { (new.key) }
                        button type="button" data-copy="new-key" { "Copy key" }
                    }
                }
            }
            @if can_change {
                form.key-form method="post" action={ "/gateways/" (gateway.id) "/keys" } {
                    (layout::csrf_field(op))
                    div.field {
                        label for="key-name" { "New key's name" }
                        div.inline-field {
                            input #key-name type="text" name="name" value=(form.name)
                                placeholder="e.g. billing-service" required
                                aria-invalid=[invalid("name").then_some("true")]
                                aria-describedby=[invalid("name").then_some("error-name")];
                            button #create-key type="submit" { "Create key" }
                        }
                        (field_errors(problem, "name"))
                        span.hint { "What the key is for, e.g. the client team. The key is shown once." }
                    }
                    details #key-options open[problem.is_some() && (invalid("parent_id") || invalid("expires_at") || invalid("limits"))] {
                        summary { "Parent, expiry and limits (optional)" }
                        div.field {
                            label for="key-parent" { "Parent key" }
                            select #key-parent name="parent_id" aria-invalid=[invalid("parent_id").then_some("true")] {
                                option value="" { "None (a root key)" }
                                @for p in &parents {
                                    option value=(p.id) selected[form.parent_id == p.id] { (p.name) " (" (p.hint) ")" }
                                }
                            }
                            (field_errors(problem, "parent_id"))
                            span.hint { "The parent's limits also apply to this key's traffic; revoking the parent revokes this key." }
                        }
                        div.field {
                            label for="key-expires" { "Expires at (UTC)" }
                            input #key-expires type="datetime-local" name="expires_at" value=(form.expires_at)
                                aria-invalid=[invalid("expires_at").then_some("true")];
                            (field_errors(problem, "expires_at"))
                            span.hint { "Empty: never. Data planes refuse the key (and the keys under it) from then on." }
                        }
                        fieldset.group #key-limits {
                            legend { "Limits (empty: not limited)" }
                            @for (field, window, measure, label) in LIMIT_FIELDS {
                                @let api_field = format!("limits.{window}.{measure}");
                                div.field {
                                    label for={ "key-" (field) } { (label) }
                                    input id={ "key-" (field) } type="number" min="1" step="1" name=(field)
                                        value=(form.limit(field))
                                        aria-invalid=[invalid(&api_field).then_some("true")];
                                    (field_errors(problem, &api_field))
                                }
                            }
                            span.hint { "Windows are UTC minutes, hours and days. A limit applies to the key and every key under it." }
                        }
                    }
                }
            }
            @if ordered.is_empty() {
                (empty_state("No keys yet: clients cannot call this gateway until it has one.", None))
            } @else {
                div.table-wrap {
                    table #keys-table {
                        thead {
                            tr {
                                th scope="col" { "Name" }
                                th scope="col" { "Key" }
                                th scope="col" { "Limits" }
                                th scope="col" { "Usage" }
                                th scope="col" { "Created" }
                                th scope="col" { "Last used" }
                                th scope="col" { "Status" }
                                @if can_change { th scope="col" { span.sub { "Actions" } } }
                            }
                        }
                        tbody {
                            @for (k, depth) in &ordered {
                                tr data-key=(k.id) data-depth=(depth) class=[k.revoked_at.is_some().then_some("revoked")] {
                                    td {
                                        @if *depth > 0 { span.sub aria-hidden="true" { "└ " } }
                                        a href={ "/gateways/" (gateway.id) "/keys/" (k.id) } { (k.name) }
                                        @if let Some(parent) = k.parent_id.as_deref().and_then(name_of) {
                                            br; span.sub.parent-name { "under " (parent) }
                                        }
                                    }
                                    td.mono { (k.hint) }
                                    td.key-limits {
                                        @let limits = limits_summary(&k.limits);
                                        @if limits.is_empty() { span.sub { "None" } }
                                        @for l in &limits { div { (l) } }
                                    }
                                    td.key-usage {
                                        @for u in usage_summary(k) { div { (u) } }
                                    }
                                    td { span title=(k.created_at.to_rfc3339()) { (ago(k.created_at, now)) } }
                                    td {
                                        @match k.last_used_at {
                                            Some(at) => span title=(at.to_rfc3339()) { (ago(at, now)) },
                                            None => span.sub { "Never" },
                                        }
                                    }
                                    td { (state_badge(k, now)) }
                                    @if can_change {
                                        td {
                                            form.inline method="post" action={ "/gateways/" (gateway.id) "/keys/" (k.id) "/reset-usage" }
                                                data-confirm={ "Reset the usage counters of key " (k.name) "? Its usage in the current minute, hour and day counts from zero again." } {
                                                (layout::csrf_field(op))
                                                button.secondary.small.reset-usage type="submit" aria-label={ "Reset usage of key " (k.name) } { "Reset usage" }
                                            }
                                            @if k.revoked_at.is_none() {
                                                " "
                                                form.inline method="post" action={ "/gateways/" (gateway.id) "/keys/" (k.id) "/revoke" }
                                                    data-confirm={ "Revoke key " (k.name) " (" (k.hint) ") and every key under it? Clients using them are refused from the next configuration update." } {
                                                    (layout::csrf_field(op))
                                                    button.danger.small.revoke-key type="submit" aria-label={ "Revoke key " (k.name) } { "Revoke" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /gateways/{id}/keys`: creates a key and answers with the detail page showing it once.
/// No redirect: the key must not travel in a URL or a cookie to reach a second page.
pub(super) async fn create(
    State(console): State<Console>,
    op: Operator,
    Path(id): Path<String>,
    Form(form): Form<KeyForm>,
) -> Result<Response, ConsoleError> {
    let gateway_id = path_uuid(&id, "gateway")?;
    let reply = op
        .api
        .send(Method::POST, &format!("/api/v1/gateways/{gateway_id}/keys"), Some(&form.body()))
        .await?;
    let (status, extras) = match reply.form_result::<CreatedKeyView>()? {
        Ok(created) => {
            (StatusCode::OK, DetailExtras { new_key: Some(created), ..DetailExtras::default() })
        }
        Err(problem) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            DetailExtras { key_problem: Some(problem), key_form: form, ..DetailExtras::default() },
        ),
    };
    let page = detail_page(&console, &op, &gateway_id, extras).await?;
    let mut response = (status, page).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /gateways/{id}/keys/{key_id}/revoke`.
pub(super) async fn revoke(
    op: Operator,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Response, ConsoleError> {
    let gateway_id = path_uuid(&id, "gateway")?;
    let key_id = path_uuid(&key_id, "gateway key")?;
    let reply = op
        .api
        .send(Method::DELETE, &format!("/api/v1/gateways/{gateway_id}/keys/{key_id}"), None)
        .await?;
    if !reply.status.is_success() {
        return Err(ConsoleError::from_problem(reply.status, reply.problem()));
    }
    Ok(Redirect::to(&format!("/gateways/{gateway_id}?revoked=1#h-keys")).into_response())
}

/// The reset form: where it was sent from.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ResetForm {
    /// `key` from the key's own page (the answer goes back there); else the gateway's page.
    #[serde(default)]
    back: String,
}

/// `POST /gateways/{id}/keys/{key_id}/reset-usage`.
pub(super) async fn reset_usage(
    op: Operator,
    Path((id, key_id)): Path<(String, String)>,
    Form(form): Form<ResetForm>,
) -> Result<Response, ConsoleError> {
    let gateway_id = path_uuid(&id, "gateway")?;
    let key_id = path_uuid(&key_id, "gateway key")?;
    let path = format!("/api/v1/gateways/{gateway_id}/keys/{key_id}/usage/reset");
    let reply = op.api.send(Method::POST, &path, None).await?;
    if !reply.status.is_success() {
        return Err(ConsoleError::from_problem(reply.status, reply.problem()));
    }
    let to = if form.back == "key" {
        format!("/gateways/{gateway_id}/keys/{key_id}?reset=1")
    } else {
        format!("/gateways/{gateway_id}?reset=1#h-keys")
    };
    Ok(Redirect::to(&to).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_api_request() {
        let form = KeyForm {
            name: "team".into(),
            parent_id: " 0b7f3c2e-0000-4000-8000-000000000001 ".into(),
            expires_at: "2027-01-31T10:00".into(),
            limit_hour_total_tokens: "10,000".into(),
            limit_minute_requests: "60".into(),
            limit_day_prompt_tokens: "lots".into(),
            ..KeyForm::default()
        };
        assert_eq!(
            form.body(),
            json!({
                "name": "team",
                "parent_id": "0b7f3c2e-0000-4000-8000-000000000001",
                "expires_at": "2027-01-31T10:00:00Z",
                "limits": {
                    "per_minute": {"requests": 60},
                    "per_hour": {"total_tokens": 10000},
                    "per_day": {"prompt_tokens": "lots"},
                },
            })
        );
        assert_eq!(KeyForm { name: "k".into(), ..KeyForm::default() }.body(), json!({"name": "k"}));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
