//! Who is using the console, for every page and action: the session guard (a middleware that
//! opens the session cookie, refuses unsafe requests without the session's CSRF token or from
//! another site, and keeps the session's idle clock running) and the [`Operator`] extractor
//! (the session checked by the admin API, with an API client acting as the operator).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use modelgw_admin_api::identity::Role;

use crate::Console;
use crate::api::{ApiCaller, Me};
use crate::error::ConsoleError;
use crate::session::{NoSession, Session};

/// The largest form body the console accepts: the gateway form sends a priority and a weight for
/// every endpoint (~100 bytes each), so 1,000 endpoints are ~100 KiB.
pub(crate) const MAX_FORM_BYTES: usize = 1024 * 1024;
/// The header htmx requests carry the CSRF token in (console.js sets it from the page's meta).
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// The form field plain form posts carry it in.
pub(crate) const CSRF_FIELD: &str = "_csrf";

/// Middleware on every console route except the sign-in page and assets.
///
/// - Opens the session (the extractor reads it from the request's extensions).
/// - Unsafe methods (anything but GET/HEAD) must come from this site (`Sec-Fetch-Site` and
///   `Origin`, when the browser sends them) and carry the session's CSRF token, in the
///   `x-csrf-token` header or the `_csrf` form field; otherwise 403 and nothing happens.
/// - Refreshes the cookie's last-activity mark (at most once a minute).
/// - Turns a sign-in redirect into `HX-Redirect` for htmx requests.
pub(crate) async fn guard(
    State(console): State<Console>,
    request: Request,
    next: Next,
) -> Response {
    let htmx = request.headers().contains_key("hx-request");
    let response = match guarded(&console, request, next).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    if htmx
        && response.status() == StatusCode::SEE_OTHER
        && response.headers().contains_key("hx-redirect")
    {
        let mut r = StatusCode::OK.into_response();
        if let Some(to) = response.headers().get("hx-redirect") {
            r.headers_mut().insert("hx-redirect", to.clone());
        }
        return r;
    }
    response
}

async fn guarded(
    console: &Console,
    request: Request,
    next: Next,
) -> Result<Response, ConsoleError> {
    let session = match console.sessions().open(request.headers()) {
        Ok(session) => session,
        Err(NoSession::Expired) => {
            return Err(ConsoleError::SignedOut { reason: "your session expired" });
        }
        Err(NoSession::Absent | NoSession::Invalid) => {
            return Err(ConsoleError::SignedOut { reason: "sign in to continue" });
        }
    };
    let request = if is_safe(request.method()) {
        request
    } else {
        check_same_site(request.headers())?;
        check_csrf(&session, request).await?
    };
    let touched = console.sessions().touch(request.headers(), &session);
    let mut request = request;
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    if let Some(cookie) = touched.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Refuses a request the browser says came from another site: `Sec-Fetch-Site` when the browser
/// sends it (every current one does); otherwise `Origin` against `Host`. `Origin` is not
/// compared when `Sec-Fetch-Site` is present, because a proxy in front (Azure Front Door, an
/// ingress) may rewrite `Host` to the backend's name.
pub(crate) fn check_same_site(headers: &HeaderMap) -> Result<(), ConsoleError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site == "same-origin" || site == "none" {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        };
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Err(ConsoleError::Csrf);
        }
    }
    Ok(())
}

/// Checks the CSRF token of an unsafe request: the header, or the `_csrf` field of a form body
/// (the body is read, bounded, and put back for the handler).
async fn check_csrf(session: &Session, request: Request) -> Result<Request, ConsoleError> {
    if let Some(token) = request.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return if session.csrf_matches(token) { Ok(request) } else { Err(ConsoleError::Csrf) };
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
        ConsoleError::Refused(Box::new(crate::api::Problem {
            title: "Form too large".to_owned(),
            status: 413,
            detail: format!("A form may carry at most {} KiB.", MAX_FORM_BYTES / 1024),
            ..crate::api::Problem::default()
        }))
    })?;
    let presented = form_urlencoded_field(&bytes, CSRF_FIELD);
    if !presented.is_some_and(|t| session.csrf_matches(&t)) {
        return Err(ConsoleError::Csrf);
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The first value of `name` in an `application/x-www-form-urlencoded` body.
fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// The signed-in operator: who they are (checked by the API on this request), their session
/// (for the CSRF token the page embeds), and the API acting as them.
pub(crate) struct Operator {
    pub me: Me,
    pub session: Session,
    pub api: ApiCaller,
}

impl Operator {
    pub fn can(&self, role: Role) -> bool {
        self.me.can(role)
    }

    /// A page or form that only `role` and up are offered: 403 below it, saying `why` (the
    /// API would refuse the change anyway; this keeps the form from being shown at all).
    pub fn require(&self, role: Role, why: &str) -> Result<(), ConsoleError> {
        if self.can(role) {
            return Ok(());
        }
        Err(ConsoleError::Forbidden(Box::new(crate::api::Problem {
            title: "Forbidden".to_owned(),
            status: 403,
            detail: why.to_owned(),
            ..crate::api::Problem::default()
        })))
    }
}

impl FromRequestParts<Console> for Operator {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(ConsoleError::SignedOut { reason: "sign in to continue" })?;
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| *a);
        let api = console.api().as_caller(&session.token, peer);
        let me = api.me().await?;
        tracing::Span::current().record("actor", tracing::field::display(&me.actor));
        Ok(Operator { me, session, api })
    }
}
