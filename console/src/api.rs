//! The admin API, called in process: every read and change the console makes is a request to
//! the API's own router, with the signed-in operator's credential and the browser's address
//! (for the audit log), so the console shares every rule of the API and adds none.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt as _;

use crate::error::ConsoleError;

/// The largest API answer the console reads (the biggest lists are far below it).
const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// The admin API's router, to be called in process.
#[derive(Clone)]
pub(crate) struct Api {
    router: Router,
}

impl Api {
    pub fn new(router: Router) -> Api {
        Api { router }
    }

    /// An API client acting as the holder of `token`, from `peer`.
    pub fn as_caller(&self, token: &str, peer: Option<SocketAddr>) -> ApiCaller {
        ApiCaller { api: self.clone(), token: token.to_owned(), peer }
    }
}

/// The API as one signed-in operator.
#[derive(Clone)]
pub(crate) struct ApiCaller {
    api: Api,
    token: String,
    peer: Option<SocketAddr>,
}

impl std::fmt::Debug for ApiCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCaller").field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// One API answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as `T`, when the call succeeded; the API's problem as an error otherwise.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, ConsoleError> {
        if !self.status.is_success() {
            return Err(ConsoleError::from_problem(self.status, self.problem()));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ConsoleError::Internal(format!(
                "the admin API answered a shape the console does not read: {e}"
            ))
        })
    }

    /// The body as `T` on success, or the problem the API answered (for a form to show next to
    /// its fields). Being signed out, forbidden or an internal error is still an `Err`.
    pub fn form_result<T: DeserializeOwned>(self) -> Result<Result<T, Problem>, ConsoleError> {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                Ok(Err(self.problem()))
            }
            _ => self.json().map(Ok),
        }
    }

    /// The problem details of a failed call (a generic one when the body is not one).
    pub fn problem(&self) -> Problem {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Problem {
            title: format!("The admin API answered {}", self.status),
            status: self.status.as_u16(),
            ..Problem::default()
        })
    }
}

impl ApiCaller {
    /// `method path` with an optional JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ConsoleError> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(headers) = request.headers_mut() {
            let bearer =
                HeaderValue::from_str(&format!("Bearer {}", self.token)).map_err(|_| {
                    ConsoleError::SignedOut { reason: "the session's token is not valid" }
                })?;
            headers.insert(header::AUTHORIZATION, bearer);
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            if body.is_some() {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
        }
        let bytes = match body {
            Some(value) => serde_json::to_vec(value)
                .map_err(|e| ConsoleError::Internal(format!("encoding a request: {e}")))?,
            None => Vec::new(),
        };
        let mut request = request
            .body(Body::from(bytes))
            .map_err(|e| ConsoleError::Internal(format!("building an API request: {e}")))?;
        if let Some(peer) = self.peer {
            // The audit log records the browser's address, as for a direct API call.
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let response = self
            .api
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| ConsoleError::Internal(format!("calling the admin API: {e}")))?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), MAX_REPLY_BYTES)
            .await
            .map_err(|e| ConsoleError::Internal(format!("reading an API answer: {e}")))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(ConsoleError::SignedOut {
                reason: "your credential is no longer accepted (revoked or expired)",
            });
        }
        Ok(Reply { status, body })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ConsoleError> {
        self.send(Method::GET, path, None).await?.json()
    }

    pub async fn me(&self) -> Result<Me, ConsoleError> {
        self.get("/api/v1/me").await
    }
}

/// `GET /api/v1/me`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Me {
    pub actor: String,
    pub role: Role,
    #[allow(dead_code)]
    pub sign_in: String,
}

impl Me {
    /// May this operator do what `role` may?
    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// The API's problem details (`application/problem+json`).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Problem {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
    /// The gateways that use an endpoint (`in-use` problems).
    #[serde(default)]
    pub gateways: Option<Vec<String>>,
    #[serde(default)]
    pub request_id: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct FieldError {
    pub field: String,
    pub reason: String,
}

impl Problem {
    /// The reasons given for `field` (exactly, or for an element or member of it).
    pub fn reasons_for<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.errors
            .iter()
            .filter(move |e| {
                e.field == field
                    || e.field
                        .strip_prefix(field)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
            .map(|e| e.reason.as_str())
    }

    /// Errors that name none of `fields` (shown above the form).
    pub fn other_errors<'a>(
        &'a self,
        fields: &'a [&'a str],
    ) -> impl Iterator<Item = &'a FieldError> + 'a {
        self.errors.iter().filter(move |e| {
            !fields.iter().any(|f| {
                e.field == *f
                    || e.field
                        .strip_prefix(f)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
        })
    }
}
