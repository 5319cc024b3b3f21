//! What a console request can fail with, and the page (or htmx redirect) each failure shows.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use maud::html;

use crate::api::Problem;
use crate::layout;

#[derive(Debug)]
pub(crate) enum ConsoleError {
    /// No session, an expired one, or a credential the API no longer accepts: sign in again.
    SignedOut { reason: &'static str },
    /// The operator's role does not allow it (the API said 403).
    Forbidden(Box<Problem>),
    /// What the path names does not exist (the API said 404).
    NotFound(Box<Problem>),
    /// A form or action the API refused with a problem the page cannot show inline.
    Refused(Box<Problem>),
    /// The API cannot answer now (503: e.g. the identity provider's keys are unreachable).
    Unavailable(Box<Problem>),
    /// A form post without the session's CSRF token, or from another site.
    Csrf,
    /// Anything else: logged, shown as a 500 with the request id.
    Internal(String),
}

impl ConsoleError {
    pub fn from_problem(status: StatusCode, problem: Problem) -> ConsoleError {
        match status {
            StatusCode::FORBIDDEN => ConsoleError::Forbidden(Box::new(problem)),
            StatusCode::NOT_FOUND => ConsoleError::NotFound(Box::new(problem)),
            StatusCode::SERVICE_UNAVAILABLE => ConsoleError::Unavailable(Box::new(problem)),
            s if s.is_server_error() => ConsoleError::Internal(format!(
                "the admin API answered {s}: {} (request {})",
                problem.title,
                problem.request_id.as_deref().unwrap_or("-")
            )),
            _ => ConsoleError::Refused(Box::new(problem)),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            ConsoleError::SignedOut { reason } => {
                tracing::info!(reason, "console session refused");
                return signed_out(reason);
            }
            ConsoleError::Forbidden(p) => (
                StatusCode::FORBIDDEN,
                "Not allowed",
                format!("Your role does not allow this. {}", p.detail),
            ),
            ConsoleError::NotFound(p) => (StatusCode::NOT_FOUND, "Not found", p.detail),
            ConsoleError::Unavailable(p) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                format!(
                    "The control plane cannot answer this now. {} Try again shortly.",
                    p.detail
                ),
            ),
            ConsoleError::Refused(p) => {
                let detail = if p.errors.is_empty() {
                    p.detail.clone()
                } else {
                    let fields: Vec<String> =
                        p.errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect();
                    format!("{} {}", p.detail, fields.join("; "))
                };
                (
                    StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST),
                    "Refused",
                    detail,
                )
            }
            ConsoleError::Csrf => {
                tracing::warn!(
                    "console form refused: missing or wrong CSRF token, or a cross-site request"
                );
                (
                    StatusCode::FORBIDDEN,
                    "Request refused",
                    "This form was not sent from a page of this console (its security token is missing or \
                     stale). Reload the page and try again."
                        .to_owned(),
                )
            }
            ConsoleError::Internal(e) => {
                tracing::error!(error = %e, "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The console could not complete this request. The control plane's log has the \
                     details under this request's id (the x-request-id response header)."
                        .to_owned(),
                )
            }
        };
        let body = layout::bare(
            title,
            html! {
                main.narrow {
                    h1 { (title) }
                    p.error-text role="alert" { (message) }
                    p { a href="/" { "Back to the overview" } }
                }
            },
        );
        (status, body).into_response()
    }
}

/// To the sign-in page: a redirect for a page load, `HX-Redirect` for an htmx request (which
/// would otherwise swap the sign-in page into a fragment).
fn signed_out(reason: &'static str) -> Response {
    let location = format!("/sign-in?signed_out={}", reason_code(reason));
    let mut response = (StatusCode::SEE_OTHER, "").into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value.clone());
        response.headers_mut().insert("hx-redirect", value);
    }
    response
}

/// Short codes the sign-in page turns back into a sentence (no free text in the URL).
fn reason_code(reason: &str) -> &'static str {
    if reason.contains("expired") && reason.contains("session") {
        "expired"
    } else if reason.contains("revoked") {
        "revoked"
    } else {
        "required"
    }
}
