//! Signing in and out. The sign-in form takes an admin credential — an API token, the
//! bootstrap admin token, or an OpenID Connect access token (e.g. from
//! `az account get-access-token --resource <audience>`) when the control plane accepts them —
//! and asks the admin API who it is (`GET /api/v1/me`) before it opens a session.

use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::{Markup, html};
use serde::Deserialize;

use crate::Console;
use crate::error::ConsoleError;
use crate::layout;
use crate::operator::check_same_site;
use crate::session::Session;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SignInQuery {
    /// Why the operator is here: `expired`, `revoked`, `required` or `out`.
    #[serde(default)]
    signed_out: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    #[serde(default)]
    token: String,
}

/// `GET /sign-in`.
pub(crate) async fn page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<SignInQuery>,
) -> Response {
    if console.sessions().open(&headers).is_ok() && q.signed_out.is_none() {
        return Redirect::to("/").into_response();
    }
    let notice = match q.signed_out.as_deref() {
        Some("expired") => Some("Your session expired. Sign in again."),
        Some("revoked") => {
            Some("Your credential is no longer accepted (revoked or expired). Sign in again.")
        }
        Some("out") => Some("You are signed out."),
        _ => None,
    };
    form(&console, notice, None).into_response()
}

fn form(console: &Console, notice: Option<&str>, error: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            main.narrow #main {
                h1 { "Sign in to Model Gateway" }
                p.sub { "Use an API token, the bootstrap admin token, or an OpenID Connect access token issued for this control plane." }
                @if let Some(n) = notice { div.notice role="status" { (n) } }
                @if let Some(oidc) = console.oidc() {
                    p { a.button #sign-in-sso href="/sign-in/oidc" { "Sign in with " (oidc.provider_name()) } }
                    p.sub { "or with a token:" }
                }
                form.stacked method="post" action="/sign-in" {
                    div.field {
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="off" required
                            autofocus aria-invalid=[error.map(|_| "true")]
                            aria-describedby=[error.map(|_| "error-token")];
                        @if let Some(e) = error { p.field-error #error-token role="alert" { (e) } }
                    }
                    div { button #sign-in type="submit" { "Sign in" } }
                }
            }
        },
    )
}

/// `POST /sign-in`.
pub(crate) async fn submit(
    State(console): State<Console>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(f): Form<SignInForm>,
) -> Result<Response, ConsoleError> {
    check_same_site(&headers)?;
    let token = f.token.trim();
    if token.is_empty() {
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            form(&console, None, Some("Enter a token.")),
        )
            .into_response());
    }
    let api = console.api().as_caller(token, peer.map(|Extension(ConnectInfo(a))| a));
    let me = match api.me().await {
        Ok(me) => me,
        Err(ConsoleError::SignedOut { .. }) => {
            tracing::info!("console sign-in refused: the token was not accepted");
            return Ok((
                StatusCode::UNAUTHORIZED,
                form(
                    &console,
                    None,
                    Some("This token was not accepted: it is unknown, revoked or expired."),
                ),
            )
                .into_response());
        }
        Err(ConsoleError::Unavailable(_)) => {
            return Ok((
                StatusCode::SERVICE_UNAVAILABLE,
                form(&console, None, Some("The identity provider cannot be reached to check this token. Try again shortly.")),
            )
                .into_response());
        }
        Err(e) => return Err(e),
    };
    tracing::info!(actor = %me.actor, role = %me.role, "console sign-in");
    let cookie = console.sessions().set_cookie(&headers, &Session::new(token.to_owned()));
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// `POST /sign-out` (behind the session guard, so it needs the CSRF token).
pub(crate) async fn sign_out(State(console): State<Console>, headers: HeaderMap) -> Response {
    tracing::info!("console sign-out");
    let mut response = Redirect::to("/sign-in?signed_out=out").into_response();
    if let Ok(v) = HeaderValue::from_str(&console.sessions().clear_cookie(&headers)) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}
