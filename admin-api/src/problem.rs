//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error the admin API answers goes through [`ApiError`], so each one has the same shape:
//! `{type, title, status, detail, errors?: [{field, reason}], gateways?, request_id?}`.
//! Messages name fields and reasons, never values: a rejected `api_key` must not come back in
//! the body that rejects it.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use modelgw_control_plane::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::Role;
use crate::trace::current_request_id;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One reason a request was rejected, naming the field (a JSON path such as
/// `endpoints[1].weight`, `body` for the body as a whole, or `query` for the query string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    #[schema(example = "endpoint")]
    pub field: String,
    #[schema(example = "must be an absolute http(s) URL")]
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// An error response body (RFC 9457 problem details).
///
/// Its `title` and `detail` never quote a value the client sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:modelgw:problem:<kind>`, stable for tooling to match on.
    #[serde(rename = "type")]
    #[schema(example = "urn:modelgw:problem:validation")]
    pub problem_type: String,
    #[schema(example = "Request validation failed")]
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    pub detail: String,
    /// Every field that was rejected, all at once (validation and body errors).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Names of the gateways that use an inference endpoint (`in-use` problems only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<String>>,
    /// The least role the operation requires (`forbidden` problems only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_role: Option<Role>,
    /// Id of the request in the control-plane log (also in the `x-request-id` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Everything a handler or extractor can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// No `Authorization: Bearer` header, or a malformed one.
    MissingToken,
    /// A bearer token that authenticates no one (unknown, revoked, expired, or a JWT that was
    /// not verified).
    InvalidToken,
    /// The caller is authenticated, but its role is below the one the route requires.
    Forbidden {
        required: Role,
        actual: Role,
    },
    /// An id in the path that names nothing (or is not an id at all).
    NotFound {
        detail: String,
    },
    /// No route under `/api/v1` matches the path.
    RouteNotFound,
    MethodNotAllowed,
    /// The body is not JSON (syntax error, truncated, trailing data).
    MalformedBody {
        detail: String,
    },
    /// The query string could not be parsed.
    BadQuery {
        reason: String,
    },
    /// One query parameter has a value outside what it accepts (the field is named).
    BadParameter {
        field: &'static str,
        reason: String,
    },
    UnsupportedMediaType,
    PayloadTooLarge {
        limit_bytes: usize,
    },
    /// The body is JSON but not an acceptable request: all the reasons at once.
    Validation(Vec<FieldError>),
    /// A uniqueness rule would be broken.
    Conflict(FieldError),
    /// The inference endpoint is still a member of these gateways.
    InUse {
        gateways: Vec<String>,
    },
    /// Azure Resource Manager failed a call the request needed (e.g. `listKeys` at import).
    /// The detail names the scope and ARM's reason; it never contains a key or token.
    AzureUnavailable {
        detail: String,
    },
    /// A bearer token could not be checked now (the OpenID Connect provider's keys are
    /// unavailable); retrying later may succeed.
    AuthUnavailable,
    /// Anything else. The message is logged, never sent.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MalformedBody { .. }
            | ApiError::BadQuery { .. }
            | ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) | ApiError::InUse { .. } => StatusCode::CONFLICT,
            ApiError::AzureUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem body. The `Internal` message is deliberately not part of it.
    pub fn to_problem(&self) -> Problem {
        let status = self.status();
        let (kind, title, detail, errors, gateways) = match self {
            ApiError::MissingToken => (
                "unauthorized",
                "Unauthorized",
                "an `Authorization: Bearer <token>` header is required".to_owned(),
                vec![],
                None,
            ),
            ApiError::Forbidden { required, actual } => (
                "forbidden",
                "Forbidden",
                format!("this operation requires the `{required}` role; the caller has `{actual}`"),
                vec![],
                None,
            ),
            ApiError::InvalidToken => (
                "unauthorized",
                "Unauthorized",
                "the bearer token is not valid".to_owned(),
                vec![],
                None,
            ),
            ApiError::AuthUnavailable => (
                "auth-unavailable",
                "Service unavailable",
                "the bearer token cannot be checked now (the identity provider's signing keys \
                 are unavailable); retry later"
                    .to_owned(),
                vec![],
                None,
            ),
            ApiError::NotFound { detail } => {
                ("not-found", "Not found", detail.clone(), vec![], None)
            }
            ApiError::RouteNotFound => (
                "not-found",
                "Not found",
                "no such route; see /api/v1/openapi.json".to_owned(),
                vec![],
                None,
            ),
            ApiError::MethodNotAllowed => (
                "method-not-allowed",
                "Method not allowed",
                "this route does not support the method; the Allow header lists the ones it does"
                    .to_owned(),
                vec![],
                None,
            ),
            ApiError::MalformedBody { detail } => (
                "malformed-body",
                "Malformed request body",
                detail.clone(),
                vec![FieldError::new("body", "must be a valid JSON document")],
                None,
            ),
            ApiError::BadQuery { reason } => (
                "bad-query",
                "Invalid query string",
                format!("query string: {reason}"),
                vec![FieldError::new("query", reason.clone())],
                None,
            ),
            ApiError::BadParameter { field, reason } => (
                "bad-query",
                "Invalid query string",
                format!("{field}: {reason}"),
                vec![FieldError::new(*field, reason.clone())],
                None,
            ),
            ApiError::UnsupportedMediaType => (
                "unsupported-media-type",
                "Unsupported media type",
                "the request body must be JSON (`content-type: application/json`)".to_owned(),
                vec![FieldError::new("content-type", "must be application/json")],
                None,
            ),
            ApiError::PayloadTooLarge { limit_bytes } => (
                "payload-too-large",
                "Payload too large",
                format!("the request body is larger than {limit_bytes} bytes"),
                vec![FieldError::new("body", format!("must be at most {limit_bytes} bytes"))],
                None,
            ),
            ApiError::Validation(errors) => {
                let detail = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                ("validation", "Request validation failed", detail, errors.clone(), None)
            }
            ApiError::Conflict(e) => (
                "conflict",
                "Conflict",
                format!("{}: {}", e.field, e.reason),
                vec![e.clone()],
                None,
            ),
            ApiError::InUse { gateways } => (
                "in-use",
                "Inference endpoint in use",
                format!(
                    "the inference endpoint is a member of the gateways {}; remove it from them \
                     first, or delete with `?force=true` to remove it from them as well",
                    gateways.join(", ")
                ),
                vec![],
                Some(gateways.clone()),
            ),
            ApiError::AzureUnavailable { detail } => (
                "azure-unavailable",
                "Azure Resource Manager call failed",
                detail.clone(),
                vec![],
                None,
            ),
            ApiError::Internal(_) => (
                "internal",
                "Internal server error",
                "the control plane could not complete the request; its log has the details \
                 under this request_id"
                    .to_owned(),
                vec![],
                None,
            ),
        };
        Problem {
            problem_type: format!("urn:modelgw:problem:{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
            gateways,
            required_role: match self {
                ApiError::Forbidden { required, .. } => Some(*required),
                _ => None,
            },
            request_id: current_request_id().map(|id| id.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => {
                ApiError::NotFound { detail: format!("{entity} {id} not found") }
            }
            StoreError::Conflict { field, reason } => {
                ApiError::Conflict(FieldError { field, reason })
            }
            StoreError::UnknownEndpoint { field, endpoint_id } => {
                ApiError::Validation(vec![FieldError::new(
                    field,
                    format!("unknown inference endpoint {endpoint_id}"),
                )])
            }
            StoreError::Invalid { field, reason } => {
                ApiError::Validation(vec![FieldError::new(field, reason)])
            }
            StoreError::InUse { gateways } => ApiError::InUse { gateways },
            other @ (StoreError::Crypto(_)
            | StoreError::Database(_)
            | StoreError::Migration(_)
            | StoreError::InvalidSnapshot(_)) => ApiError::Internal(format!("store: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let problem = self.to_problem();
        match &self {
            // Runs inside the request span, so the log line carries the request id.
            ApiError::Internal(message) => {
                tracing::error!(error = %message, "admin request failed")
            }
            _ => {
                tracing::debug!(problem = %problem.problem_type, detail = %problem.detail, "request rejected")
            }
        }
        let body = match serde_json::to_vec(&problem) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "problem body could not be serialized");
                br#"{"type":"urn:modelgw:problem:internal","title":"Internal server error","status":500}"#
                    .to_vec()
            }
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            ApiError::MissingToken => {
                headers
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
            }
            ApiError::InvalidToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(BEARER_CHALLENGE_INVALID),
                );
            }
            _ => {}
        }
        response
    }
}

/// RFC 6750 challenge for a request without credentials.
const BEARER_CHALLENGE: &str = r#"Bearer realm="modelgw-admin""#;
/// RFC 6750 challenge for a request with a wrong token.
const BEARER_CHALLENGE_INVALID: &str = r#"Bearer realm="modelgw-admin", error="invalid_token""#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_reach_the_body() {
        let problem =
            ApiError::Internal("database error: disk I/O at /var/lib/x".into()).to_problem();
        let body = serde_json::to_string(&problem).expect("serializes");
        assert!(!body.contains("disk"), "{body}");
        assert_eq!(problem.status, 500);
        assert_eq!(problem.problem_type, "urn:modelgw:problem:internal");
    }

    #[test]
    fn validation_problems_list_every_field() {
        let problem = ApiError::Validation(vec![
            FieldError::new("name", "must not be empty"),
            FieldError::new("endpoints[0].weight", "must be between 1 and 1000"),
        ])
        .to_problem();
        assert_eq!(problem.errors.len(), 2);
        assert_eq!(
            problem.detail,
            "name: must not be empty; endpoints[0].weight: must be between 1 and 1000"
        );
    }

    #[test]
    fn unknown_member_endpoints_are_validation_errors_naming_the_member() {
        let id = modelgw_model::EndpointId::new();
        let err = ApiError::from(StoreError::UnknownEndpoint {
            field: "endpoints[1].endpoint_id".into(),
            endpoint_id: id,
        });
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem = err.to_problem();
        assert_eq!(problem.errors[0].field, "endpoints[1].endpoint_id");
    }

    #[test]
    fn forbidden_problems_name_the_required_role() {
        let err = ApiError::Forbidden { required: Role::Operator, actual: Role::Viewer };
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        let body = serde_json::to_value(err.to_problem()).expect("serializes");
        assert_eq!(body["type"], "urn:modelgw:problem:forbidden");
        assert_eq!(body["required_role"], "operator");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains("`operator`")), "{body}");
    }
}
