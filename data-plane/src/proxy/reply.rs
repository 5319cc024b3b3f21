//! Responses the gateway produces itself, shaped like Azure OpenAI's so SDKs map them to the
//! same exceptions (Azure's error body: `{"error":{"code","message",…}}`, its status and
//! `Retry-After` headers).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{BoxError, ProxyBody};

fn body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| -> BoxError { match never {} }).boxed()
}

pub(crate) fn text(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(body(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn json(status: StatusCode, bytes: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(body(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"error":{"code":…,"message":…}}` with proper JSON escaping of both.
pub(crate) fn azure_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let value = serde_json::json!({ "error": { "code": code, "message": message } });
    json(status, value.to_string())
}

/// An error about the request itself in the shape both Azure and OpenAI use for one:
/// `{"error":{"code","message","type":"invalid_request_error","param"}}` (the SDKs read
/// `code` and `param`).
pub(crate) fn invalid_request(
    status: StatusCode,
    code: &str,
    message: &str,
    param: Option<&str>,
) -> Response<ProxyBody> {
    let value = serde_json::json!({ "error": {
        "code": code,
        "message": message,
        "type": "invalid_request_error",
        "param": param,
    } });
    json(status, value.to_string())
}

/// Azure's answer to an unknown path, byte for byte (including the space after `message:`).
pub(crate) fn resource_not_found() -> Response<ProxyBody> {
    json(StatusCode::NOT_FOUND, &br#"{"error":{"code":"404","message": "Resource not found"}}"#[..])
}

/// Azure's answer to a missing or wrong key.
pub(crate) fn access_denied() -> Response<ProxyBody> {
    azure_error(
        StatusCode::UNAUTHORIZED,
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to \
         provide a valid key for an active subscription and use a correct regional API endpoint \
         for your resource.",
    )
}

/// Azure's answer to a deployment that does not exist (here: neither `auto` nor the gateway).
pub(crate) fn deployment_not_found() -> Response<ProxyBody> {
    azure_error(
        StatusCode::NOT_FOUND,
        "DeploymentNotFound",
        "The API deployment for this resource does not exist. Use 'auto' or the gateway's name \
         as the deployment (or as `model` on /openai/v1 paths).",
    )
}

pub(crate) fn payload_too_large(limit: usize) -> Response<ProxyBody> {
    azure_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "413",
        &format!("The request body is larger than the gateway's limit of {limit} bytes."),
    )
}

pub(crate) fn body_timeout(limit: Duration) -> Response<ProxyBody> {
    azure_error(
        StatusCode::REQUEST_TIMEOUT,
        "408",
        &format!("The request body was not received within {} seconds.", limit.as_secs()),
    )
}

/// 400 in Azure's shape with `message`.
pub(crate) fn bad_request(message: &str) -> Response<ProxyBody> {
    azure_error(StatusCode::BAD_REQUEST, "400", message)
}

/// 429 for a client address over the failed-authentication limit.
pub(crate) fn too_many_failed_authentications(wait: Duration) -> Response<ProxyBody> {
    with_retry_after(
        azure_error(
            StatusCode::TOO_MANY_REQUESTS,
            "429",
            "Too many failed authentications from this address; retry later.",
        ),
        wait,
    )
}

/// 429 for a request over its key's limits: Azure's shape, the window and measure named,
/// `Retry-After` as the limits computed it.
pub(crate) fn key_limit_reached(refusal: &crate::limits::Refusal) -> Response<ProxyBody> {
    with_retry_after(
        azure_error(StatusCode::TOO_MANY_REQUESTS, "429", &refusal.message()),
        Duration::from_secs(refusal.retry_after_secs()),
    )
}

pub(crate) fn bad_body() -> Response<ProxyBody> {
    azure_error(StatusCode::BAD_REQUEST, "400", "The request body could not be read.")
}

pub(crate) fn not_ready() -> Response<ProxyBody> {
    with_retry_after(
        azure_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NoConfiguration",
            "The gateway has not received its configuration yet; retry shortly.",
        ),
        Duration::from_secs(1),
    )
}

/// Sets `Retry-After` in whole seconds, rounded up and at least 1 (0 would invite a retry
/// storm, and the SDKs ignore non-positive values anyway).
pub(crate) fn with_retry_after(
    mut response: Response<ProxyBody>,
    wait: Duration,
) -> Response<ProxyBody> {
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    response
}

pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
