//! The page shell every console page shares (navigation, the operator's name and role, sign
//! out), the security headers of every console response, and small pieces pages reuse (state
//! badges, field errors, empty states, confirmations, the pager of cursor-paged lists).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, header};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use modelgw_admin_api::identity::Role;

use crate::api::Problem;
use crate::assets;
use crate::operator::{CSRF_FIELD, Operator};

/// The sections of the navigation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Endpoints,
    Import,
    Gateways,
    DataPlanes,
    Playground,
    Traces,
    Audit,
}

impl Nav {
    const ALL: [Nav; 8] = [
        Nav::Overview,
        Nav::Endpoints,
        Nav::Import,
        Nav::Gateways,
        Nav::DataPlanes,
        Nav::Playground,
        Nav::Traces,
        Nav::Audit,
    ];

    fn label(self) -> &'static str {
        match self {
            Nav::Overview => "Overview",
            Nav::Endpoints => "Inference Endpoints",
            Nav::Import => "Import from Azure",
            Nav::Gateways => "Gateways",
            Nav::DataPlanes => "Data Planes",
            Nav::Playground => "Playground",
            Nav::Traces => "Request Traces",
            Nav::Audit => "Audit Log",
        }
    }

    /// The least role the section is for: importing and the playground change configuration
    /// (the playground makes a short-lived gateway key), so they are not offered to viewers.
    fn role(self) -> Role {
        match self {
            Nav::Import | Nav::Playground => Role::Operator,
            _ => Role::Viewer,
        }
    }

    fn href(self) -> &'static str {
        match self {
            Nav::Overview => "/",
            Nav::Endpoints => "/endpoints",
            Nav::Import => "/import",
            Nav::Gateways => "/gateways",
            Nav::DataPlanes => "/data-planes",
            Nav::Playground => "/playground",
            Nav::Traces => "/traces",
            Nav::Audit => "/audit",
        }
    }
}

/// `<head>`: title, the console's stylesheet and scripts (all from this server), and the
/// session's CSRF token for console.js to put on htmx requests.
fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // htmx must not inject inline styles (the CSP forbids them) or evaluate code.
            meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
            @if let Some(csrf) = csrf {
                meta name="csrf-token" content=(csrf);
            }
            title { (title) " · Model Gateway" }
            link rel="stylesheet" href=(assets::url(&assets::CSS));
            link rel="icon" href=(assets::url(&assets::ICON));
            script src=(assets::url(&assets::HTMX)) defer {}
            script src=(assets::url(&assets::HTMX_SSE)) defer {}
            script src=(assets::url(&assets::JS)) defer {}
        }
    }
}

/// A full console page for a signed-in operator.
pub(crate) fn page(op: &Operator, title: &str, current: Nav, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&op.session.csrf)))
            body {
                a.skip href="#main" { "Skip to content" }
                header.topbar {
                    a.brand href="/" { span.logo aria-hidden="true" { "◆" } " Model Gateway" }
                    div.who {
                        span.actor title="Signed in as" { (op.me.actor) }
                        span.role-tag { (op.me.role) }
                        form method="post" action="/sign-out" {
                            (csrf_field(op))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                div.shell {
                    nav.sidebar aria-label="Sections" {
                        ul {
                            @for item in Nav::ALL.into_iter().filter(|n| op.can(n.role())) {
                                li {
                                    a href=(item.href())
                                        aria-current=[(item == current).then_some("page")] { (item.label()) }
                                }
                            }
                        }
                    }
                    main #main tabindex="-1" { (content) }
                }
            }
        }
    }
}

/// A page outside the session (sign-in, errors).
pub(crate) fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body.bare { (content) }
        }
    }
}

/// The hidden field that carries the session's CSRF token in a plain form post.
pub(crate) fn csrf_field(op: &Operator) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(op.session.csrf); }
}

/// An endpoint or gateway state as a coloured badge.
pub(crate) fn state_badge(state: &str, detail: Option<&str>) -> Markup {
    let (class, label) = match state {
        "healthy" => ("ok", "Healthy"),
        "throttling" => ("warn", "Throttling"),
        "degraded" => ("warn", "Degraded"),
        "error" => ("bad", "Error"),
        "unknown" | "" => ("muted", "Unknown"),
        other => ("muted", other),
    };
    html! {
        span class={ "badge " (class) } data-state=(state) title=[detail] {
            span.dot aria-hidden="true" {} (label)
            @if let Some(d) = detail { span.badge-detail { " · " (d) } }
        }
    }
}

/// The API's reasons for `field`, shown under it.
pub(crate) fn field_errors(problem: Option<&Problem>, field: &str) -> Markup {
    html! {
        @if let Some(p) = problem {
            @for reason in p.reasons_for(field) {
                p.field-error id={ "error-" (field) } role="alert" { (reason) }
            }
        }
    }
}

/// A problem's summary, above a form.
pub(crate) fn problem_summary(problem: Option<&Problem>, fields: &[&str]) -> Markup {
    html! {
        @if let Some(p) = problem {
            div.alert role="alert" {
                strong { (p.title) }
                @if !p.detail.is_empty() { " " (p.detail) }
                ul {
                    @for e in p.other_errors(fields) { li { code { (e.field) } ": " (e.reason) } }
                }
            }
        }
    }
}

/// What an empty table shows instead of rows.
pub(crate) fn empty_state(message: &str, action: Option<Markup>) -> Markup {
    html! {
        div.empty {
            p { (message) }
            @if let Some(a) = action { (a) }
        }
    }
}

/// A list's query string: its filters, then the API's paging cursor when there is one.
pub(crate) fn paged_query(filters: &[(&str, &str)], cursor: Option<&str>) -> String {
    let mut pairs = filters.to_vec();
    if let Some(c) = cursor {
        pairs.push(("cursor", c));
    }
    serde_urlencoded::to_string(&pairs).unwrap_or_default()
}

/// The links between the pages of a list the API pages with a cursor (`path` with `filters`):
/// to the newest page unless `paged` says this is it, and to the next, older one when the API
/// gave a `next_cursor`.
pub(crate) fn pager(
    path: &str,
    filters: &[(&str, &str)],
    paged: bool,
    next_cursor: Option<&str>,
) -> Markup {
    html! {
        @if paged || next_cursor.is_some() {
            nav.pager aria-label="Pages" {
                @if paged {
                    a #newest href={ (path) "?" (paged_query(filters, None)) } { "← Newest" }
                }
                @if let Some(next) = next_cursor {
                    a #older rel="next" href={ (path) "?" (paged_query(filters, Some(next))) } { "Older →" }
                }
            }
        }
    }
}

/// A non-breaking separator for inline lists.
pub(crate) fn sep() -> Markup {
    PreEscaped("&nbsp;·&nbsp;".to_owned())
}

/// Middleware: the security headers of every console response.
///
/// The content security policy allows only this server's scripts, styles and connections (no
/// inline script or style, nothing from elsewhere), and no framing.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages show configuration and, once, new secrets: never cached.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
