//! The OpenAPI 3.1 document of the admin API, served at `GET /api/v1/openapi.json`.
//!
//! The document is public (no token needed): it describes the API's shape only, and tooling
//! fetches it to learn how to authenticate. Every other operation requires the `admin_token`
//! bearer scheme with the least role the role table (`lib.rs`) gives it: stated as the
//! requirement's role list (OpenAPI 3.1 allows role names for non-OAuth schemes), in the
//! operation's description, and by a 403 response where a role below it exists.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, header};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use crate::contract::Rules as ContractRules;
use crate::identity::Role;
use crate::problem::ApiError;
use crate::{
    api_tokens, audit, azure, data_plane_tokens, endpoints, gateways, keys, me, problem,
    request_traces, route_roles, stats, status,
};

/// Name of the security scheme every protected operation requires.
const SECURITY_SCHEME: &str = "admin_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Model Gateway admin API",
        description = "Manage inference endpoints, gateways and gateway keys, and see data-plane \
            status. Every operation except this document requires `Authorization: Bearer \
            <token>` (the bootstrap admin token or an API token) whose role includes the one the \
            operation names: `viewer` reads, `operator` also changes configuration, `admin` also \
            manages API tokens and data-plane tokens. Errors are `application/problem+json` (RFC 9457) with `errors[]` \
            naming each rejected field; a rejected request writes nothing. Every change is \
            recorded in the audit log with its actor. Secrets are write-only: endpoint API keys \
            are never returned (only `api_key_hint`), and gateway keys, API tokens and data-plane tokens are shown \
            once, in the response that creates them (sent with `Cache-Control: no-store`).",
    ),
    paths(
        endpoints::create,
        endpoints::list,
        endpoints::get,
        endpoints::update,
        endpoints::delete,
        endpoints::reset_health,
        gateways::create,
        gateways::list,
        gateways::get,
        gateways::update,
        gateways::delete,
        keys::create,
        keys::list,
        keys::get,
        keys::update,
        keys::revoke,
        keys::usage,
        keys::reset_usage,
        status::get,
        data_plane_tokens::create,
        data_plane_tokens::list,
        data_plane_tokens::revoke,
        azure::discovery::start_discovery,
        azure::discovery::get_discovery,
        azure::import::import,
        azure::proposals::propose_gateways,
        api_tokens::create,
        api_tokens::list,
        api_tokens::revoke,
        audit::list,
        stats::gateways,
        stats::endpoints,
        stats::regions,
        request_traces::list,
        request_traces::get,
        me::get,
        openapi_json,
    ),
    components(schemas(problem::Problem, problem::FieldError, Role)),
    modifiers(&Security, &CommonResponses, &ContractRules, &Roles),
    tags(
        (name = "inference-endpoints", description = "Upstream model deployments"),
        (name = "gateways", description = "Names clients call, routing over inference endpoints"),
        (name = "gateway-keys", description = "Keys clients present to a gateway: a tree per gateway, each key with an optional expiry and limits per UTC minute, hour and day on its subtree, and its usage"),
        (name = "status", description = "Configuration version and data planes"),
        (name = "data-plane-tokens", description = "Join tokens data planes present on the gRPC distribution port"),
        (name = "azure", description = "Discover Azure OpenAI deployments, import them, propose gateways"),
        (name = "api-tokens", description = "Named bearer tokens for this API, each with a role"),
        (name = "audit-log", description = "Every change: who, what, when, from where"),
        (name = "stats", description = "Traffic per gateway, endpoint and region, per minute for up to 24 hours, as the data planes connected to this control plane reported it"),
        (name = "traces", description = "Request traces of gateways that record them: every endpoint tried, latency, tokens; captured payloads for operator and admin"),
        (name = "meta", description = "This document, and who the caller is"),
    )
)]
struct AdminApiDoc;

/// The OpenAPI document (OpenAPI 3.1).
pub fn openapi() -> utoipa::openapi::OpenApi {
    AdminApiDoc::openapi()
}

/// This OpenAPI document. Public: no admin token is needed.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "get_openapi_document",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json",
        body = Object))
)]
#[allow(dead_code)] // Only its generated path item is used; `serve` answers the route.
async fn openapi_json() {}

/// A handler serving `doc`, serialized once here rather than per request.
pub fn serve(
    doc: utoipa::openapi::OpenApi,
) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    let json = doc.to_json().map(Bytes::from).map_err(|e| e.to_string());
    move || {
        let response = match &json {
            Ok(body) => {
                let mut r = body.clone().into_response();
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Err(e) => ApiError::Internal(format!("OpenAPI document: {e}")).into_response(),
        };
        std::future::ready(response)
    }
}

/// Declares the bearer scheme and requires it everywhere (operations that declare their own
/// `security`, like this document's, keep theirs).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The bootstrap admin token (role `admin`: MODELGW_ADMIN_TOKEN or \
                         MODELGW_ADMIN_TOKEN_FILE, or generated and printed once on the control \
                         plane's first start), or an API token from `POST /api/v1/api-tokens` \
                         (its own role). Each operation lists the least role it requires.",
                    ))
                    .build(),
            ),
        );
        openapi.security =
            Some(vec![SecurityRequirement::new(SECURITY_SCHEME, Vec::<String>::new())]);
    }
}

/// Adds the error responses every operation shares, so each handler lists only its own.
struct CommonResponses;

/// (status, component name, description, applies to).
const COMMON: [(&str, &str, &str, Applies); 8] = [
    ("400", "MalformedBody", "The body is not valid JSON", Applies::WithBody),
    ("401", "Unauthorized", "Missing, unknown, revoked or expired token", Applies::Protected),
    ("404", "NotFound", "No resource with this id", Applies::WithPathId),
    ("413", "PayloadTooLarge", "The body is larger than 1 MiB", Applies::WithBody),
    ("415", "UnsupportedMediaType", "The body is not application/json", Applies::WithBody),
    (
        "422",
        "ValidationFailed",
        "Unknown, missing, mistyped or invalid fields, all named in \
        `errors`",
        Applies::WithBody,
    ),
    (
        "500",
        "InternalError",
        "Internal error; details are in the control-plane log under \
        `request_id`",
        Applies::Protected,
    ),
    (
        "503",
        "AuthUnavailable",
        "An OpenID Connect bearer token cannot be checked now: the identity provider's \
        signing keys are unavailable",
        Applies::Protected,
    ),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Applies {
    Protected,
    WithBody,
    WithPathId,
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (_, name, description, _) in COMMON {
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    problem::PROBLEM_JSON,
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                )
                .build();
            components.responses.insert(name.to_owned(), RefOr::T(response));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_id = path.contains('{');
            for op in
                [&mut item.get, &mut item.post, &mut item.patch, &mut item.delete, &mut item.put]
                    .into_iter()
                    .flatten()
            {
                add_common(op, has_path_id);
            }
        }
    }
}

fn add_common(op: &mut Operation, has_path_id: bool) {
    // An empty requirement (`security(())`) marks a public operation.
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
    if public {
        return;
    }
    let has_body = op.request_body.is_some();
    for (status, name, _, applies) in COMMON {
        let applies = match applies {
            Applies::Protected => true,
            Applies::WithBody => has_body,
            Applies::WithPathId => has_path_id,
        };
        if applies {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
        }
    }
}

/// States each operation's role from the role table: the security requirement's role list, a
/// sentence in the description, and a 403 where a caller can have a lower role.
struct Roles;

/// Name of the response component of a 403.
const FORBIDDEN: &str = "Forbidden";

impl Modify for Roles {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let forbidden = ResponseBuilder::new()
            .description(
                "The caller's role is below the one this operation requires (named in \
                 `required_role`)",
            )
            .content(problem::PROBLEM_JSON, Content::new(Some(Ref::from_schema_name("Problem"))))
            .build();
        components.responses.insert(FORBIDDEN.to_owned(), RefOr::T(forbidden));
        let roles = route_roles();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                (http::Method::GET, &mut item.get),
                (http::Method::POST, &mut item.post),
                (http::Method::PATCH, &mut item.patch),
                (http::Method::DELETE, &mut item.delete),
                (http::Method::PUT, &mut item.put),
            ];
            for (method, op) in ops {
                let Some(op) = op.as_mut() else { continue };
                // Operations outside the table are public (the contract test checks that
                // only this document is).
                let Some(route) = roles.iter().find(|r| r.method == method && r.path == *path)
                else {
                    continue;
                };
                set_role(op, route.role);
            }
        }
    }
}

fn set_role(op: &mut Operation, role: Role) {
    op.security = Some(vec![SecurityRequirement::new(SECURITY_SCHEME, [role.as_str()])]);
    let sentence = format!("Requires the `{role}` role.");
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
        _ => sentence,
    });
    if role > Role::Viewer {
        op.responses
            .responses
            .entry("403".to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(FORBIDDEN)));
    }
}
