//! Gateway keys on the gateway's detail page: the list (never the keys), creating one — shown
//! once, in the answer to the POST itself (`Cache-Control: no-store`), never in a cookie, a
//! URL or a later page — and revoking one.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use http::{HeaderValue, Method, StatusCode, header};
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;
use serde_json::json;

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

#[derive(Deserialize)]
pub(crate) struct KeyForm {
    #[serde(default)]
    name: String,
}

/// The keys section of the detail page.
pub(super) fn section(
    op: &Operator,
    gateway: &GatewayView,
    keys: &[KeyView],
    extras: &DetailExtras,
    now: DateTime<Utc>,
) -> Markup {
    let mut keys: Vec<&KeyView> = keys.iter().collect();
    // Active keys first, newest first.
    keys.sort_by(|a, b| {
        (a.revoked_at.is_some(), std::cmp::Reverse(a.created_at))
            .cmp(&(b.revoked_at.is_some(), std::cmp::Reverse(b.created_at)))
    });
    let can_change = op.can(Role::Operator);
    let problem = extras.key_problem.as_ref();
    let invalid = problem.is_some_and(|p| p.reasons_for("name").next().is_some());
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
                            input #key-name type="text" name="name" value=(extras.key_name)
                                placeholder="e.g. billing-service" required
                                aria-invalid=[invalid.then_some("true")]
                                aria-describedby=[invalid.then_some("error-name")];
                            button #create-key type="submit" { "Create key" }
                        }
                        (field_errors(problem, "name"))
                        span.hint { "What the key is for, e.g. the client team. The key is shown once." }
                    }
                }
            }
            @if keys.is_empty() {
                (empty_state("No keys yet: clients cannot call this gateway until it has one.", None))
            } @else {
                div.table-wrap {
                    table #keys-table {
                        thead {
                            tr {
                                th scope="col" { "Name" }
                                th scope="col" { "Key" }
                                th scope="col" { "Created" }
                                th scope="col" { "Last used" }
                                th scope="col" { "Status" }
                                @if can_change { th scope="col" { span.sr-only { "Actions" } } }
                            }
                        }
                        tbody {
                            @for k in &keys {
                                tr data-key=(k.id) class=[k.revoked_at.is_some().then_some("revoked")] {
                                    td { (k.name) }
                                    td.mono { (k.hint) }
                                    td { span title=(k.created_at.to_rfc3339()) { (ago(k.created_at, now)) } }
                                    // The admin API does not report key use (yet).
                                    td.sub title="The admin API does not report when a key was last used" { "Not reported" }
                                    td {
                                        @match k.revoked_at {
                                            Some(at) => span.badge.muted data-state="revoked" title=(at.to_rfc3339()) { "Revoked " (ago(at, now)) },
                                            None => span.badge.ok data-state="active" { "Active" },
                                        }
                                    }
                                    @if can_change {
                                        td {
                                            @if k.revoked_at.is_none() {
                                                form.inline method="post" action={ "/gateways/" (gateway.id) "/keys/" (k.id) "/revoke" }
                                                    data-confirm={ "Revoke key " (k.name) " (" (k.hint) ")? Clients using it are refused from the next configuration update." } {
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
        .send(
            Method::POST,
            &format!("/api/v1/gateways/{gateway_id}/keys"),
            Some(&json!({ "name": form.name })),
        )
        .await?;
    let (status, extras) = match reply.form_result::<CreatedKeyView>()? {
        Ok(created) => {
            (StatusCode::OK, DetailExtras { new_key: Some(created), ..DetailExtras::default() })
        }
        Err(problem) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            DetailExtras {
                key_problem: Some(problem),
                key_name: form.name,
                ..DetailExtras::default()
            },
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
