//! The `/_mock/` control API: the Rust API over HTTP, so another process can script a mock.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::fault::Fault;
use crate::quota::{Quota, QuotaCounts};
use crate::server::{Body, CONTROL_PREFIX, full};

/// Runtime settings of a mock, as `GET/POST /_mock/settings` shows them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_gap_ms: Option<u64>,
}

/// `GET /_mock/quota`: the quota (or `null`) and its counts.
#[derive(Serialize)]
struct QuotaStatus {
    quota: Option<Quota>,
    #[serde(flatten)]
    counts: QuotaCounts,
}

pub(crate) fn handle(shared: &Shared, method: &Method, path: &str, body: &Bytes) -> Response<Body> {
    let route = path.strip_prefix(CONTROL_PREFIX).unwrap_or(path);
    match (method, route) {
        (&Method::POST, "reset") => {
            tracing::debug!(region = %shared.config.region, "mock reset over the control API");
            shared.state().reset();
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::GET, "calls") => {
            let state = shared.state();
            let mut calls: BTreeMap<&str, u64> =
                shared.config.deployments.iter().map(|d| (d.as_str(), 0)).collect();
            for (dep, n) in state.all_calls() {
                calls.insert(dep.as_str(), *n);
            }
            json(StatusCode::OK, &calls)
        }
        (&Method::GET, "requests") => {
            let requests: Vec<_> = shared.state().requests().iter().map(|r| r.redacted()).collect();
            json(StatusCode::OK, &requests)
        }
        (&Method::GET, r) if r.starts_with("responses/") => {
            let id = &r["responses/".len()..];
            match shared.state().responses.get(id) {
                Some(stored) => json(
                    StatusCode::OK,
                    &serde_json::json!({"id": id, "deployment": stored.deployment}),
                ),
                None => empty(StatusCode::NOT_FOUND),
            }
        }
        (&Method::GET, "settings") => json(
            StatusCode::OK,
            &Settings {
                latency_ms: Some(shared.latency_ms.load(Ordering::Relaxed)),
                stream_gap_ms: Some(shared.stream_gap_ms.load(Ordering::Relaxed)),
            },
        ),
        (&Method::POST, "settings") => match serde_json::from_slice::<Settings>(body) {
            Ok(s) => {
                if let Some(ms) = s.latency_ms {
                    shared.latency_ms.store(ms, Ordering::Relaxed);
                }
                if let Some(ms) = s.stream_gap_ms {
                    shared.stream_gap_ms.store(ms, Ordering::Relaxed);
                }
                tracing::debug!(region = %shared.config.region, settings = ?s, "mock settings changed");
                empty(StatusCode::NO_CONTENT)
            }
            Err(e) => bad_request(&e),
        },
        (&Method::GET, "quota") => {
            let state = shared.state();
            json(
                StatusCode::OK,
                &QuotaStatus { quota: state.quota(), counts: state.quota_counts() },
            )
        }
        (&Method::POST, "quota") => match serde_json::from_slice::<Option<Quota>>(body) {
            Ok(quota) => {
                if let Some(Err(e)) = quota.as_ref().map(Quota::validate) {
                    return text(StatusCode::BAD_REQUEST, &e.to_string());
                }
                tracing::debug!(region = %shared.config.region, quota = ?quota, "mock quota set over the control API");
                shared.state().set_quota(quota);
                empty(StatusCode::NO_CONTENT)
            }
            Err(e) => bad_request(&e),
        },
        (&Method::POST, r) if r.starts_with("faults/") => {
            let deployment = &r["faults/".len()..];
            if deployment.is_empty() || deployment.contains('/') {
                return not_found();
            }
            match serde_json::from_slice::<Fault>(body) {
                Ok(fault) => {
                    tracing::debug!(region = %shared.config.region, deployment, fault = ?fault, "mock fault scripted over the control API");
                    shared.state().script(deployment, fault);
                    empty(StatusCode::NO_CONTENT)
                }
                Err(e) => bad_request(&e),
            }
        }
        _ => not_found(),
    }
}

pub(crate) fn too_large() -> Response<Body> {
    text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn bad_request(e: &serde_json::Error) -> Response<Body> {
    text(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}"))
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "unknown mock control route")
}
