//! The request path: authenticate, pick endpoints, rewrite, forward, fail over, stream back.
//!
//! Per request: one `SnapshotStore::load`, one SHA-256 of the client key, one body read into
//! `Bytes` (re-sent on failover without copying unless `model` must change). No lock is held
//! across an await and nothing here talks to the control plane.

mod reply;
mod rewrite;
mod route;
pub(crate) mod server;
mod upstream;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use modelgw_model::gateway_key_hash;
use tracing::{Instrument, Span, debug, field, info, warn};

use crate::balance::{EndpointSelector, Skip};
use crate::health::{
    DEFAULT_THROTTLE, ERROR_COOLDOWN, HealthEvent, HealthRegistry, MAX_THROTTLE,
    retry_after_from_headers, retry_after_from_message,
};
use crate::snapshot::{CompiledEndpoint, CompiledGateway, SnapshotStore};
use rewrite::{ModelProbe, probe_model};
use route::{Route, client_key, parse_route};
use upstream::{CLIENT_REQUEST_ID, RequestPlan, downstream_headers, upstream_headers};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the gateway sends.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// Names the endpoint that served the response.
const ENDPOINT_HEADER: HeaderName = HeaderName::from_static("x-modelgw-endpoint");
/// `<endpoint>:<outcome>:<ms>,…` for every member considered, in order.
const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-modelgw-attempts");

/// How much of a 429 body is read to find "retry after N seconds" when the headers give no
/// delay. Azure's 429 bodies are a few hundred bytes.
const THROTTLE_BODY_LIMIT: usize = 16 * 1024;
/// How long reading that 429 body may take before the default window is used instead.
const THROTTLE_BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest client-supplied request id that is adopted (and logged); longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Request-path settings, from `DataPlaneConfig`.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub client_body_timeout: Duration,
}

/// Shared state of the request path.
pub(crate) struct Proxy {
    pub store: Arc<SnapshotStore>,
    pub health: Arc<HealthRegistry>,
    pub selector: Arc<dyn EndpointSelector>,
    pub http: reqwest::Client,
    pub limits: Limits,
}

/// How one attempt (or skip) ended, as logged and listed in `x-modelgw-attempts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// 1xx–3xx: served.
    Ok,
    /// 4xx other than 401/403/429: the client's problem, passed through.
    ClientError,
    /// 401/403: the endpoint rejected the gateway's credential; passed through.
    CredentialRejected,
    Throttled,
    ServerError,
    ConnectError,
    Timeout,
    /// The connection failed after the request was sent (reset, protocol error).
    Transport,
    SkippedThrottling,
    SkippedError,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::CredentialRejected => "credential_rejected",
            Outcome::Throttled => "throttled",
            Outcome::ServerError => "server_error",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Transport => "transport_error",
            Outcome::SkippedThrottling => "skipped_throttling",
            Outcome::SkippedError => "skipped_error",
        }
    }
}

/// Result of one upstream attempt.
enum Attempt {
    /// An answer to pass to the client (success or a non-retryable client error).
    Answer(reqwest::Response, Outcome),
    /// 429: try the next endpoint; this one is throttled for `retry_after`.
    Throttled { retry_after: Duration, status: StatusCode },
    /// Retryable failure: try the next endpoint; this one cools down.
    Failed { outcome: Outcome, status: Option<StatusCode>, reason: String },
}

/// What happened to one member that did not serve the request, for the final answer.
#[derive(Clone, Copy)]
enum Unavailable {
    Throttling { until: Instant },
    Error { until: Instant },
}

impl Proxy {
    /// Serves one request. Infallible: every failure becomes an Azure-shaped response.
    pub(crate) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        let route = parse_route(&parts.method, parts.uri.path());
        match route {
            Route::Healthz => return reply::text(StatusCode::OK, "ok\n"),
            Route::Readyz => {
                return if self.store.is_ready() {
                    reply::text(StatusCode::OK, "ready\n")
                } else {
                    reply::text(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet\n")
                };
            }
            _ => {}
        }
        let request_id = request_id(&parts.headers);
        let span = tracing::info_span!(
            "request",
            request_id = request_id.to_str().unwrap_or_default(),
            method = %parts.method,
            path = parts.uri.path(),
            gateway = field::Empty,
            status = field::Empty,
            ms = field::Empty,
        );
        let started = Instant::now();
        let mut response =
            self.serve(&parts, body, route, &request_id, &span).instrument(span.clone()).await;
        response.headers_mut().entry(CLIENT_REQUEST_ID).or_insert(request_id);
        let status = response.status().as_u16();
        let ms = started.elapsed().as_millis() as u64;
        span.record("status", status);
        span.record("ms", ms);
        // Logged when the response head is ready; a streamed body may still be flowing.
        span.in_scope(|| info!(status, ms, "request answered"));
        response
    }

    async fn serve(
        &self,
        parts: &Parts,
        body: Incoming,
        route: Route<'_>,
        request_id: &HeaderValue,
        span: &Span,
    ) -> Response<ProxyBody> {
        if route == Route::NotFound {
            debug!("unknown path");
            return reply::resource_not_found();
        }
        let table = self.store.load();
        if table.version().0 == 0 {
            return reply::not_ready();
        }
        let Some(key) = client_key(&parts.headers) else {
            info!("no gateway key");
            return reply::access_denied();
        };
        let Some(gateway) = table.gateway_for_key(&gateway_key_hash(key)) else {
            info!("unknown gateway key");
            return reply::access_denied();
        };
        span.record("gateway", gateway.name.as_str());
        if let Some(deployment) = route.deployment()
            && deployment != "auto"
            && deployment != gateway.name
        {
            info!(deployment, "deployment is neither auto nor the gateway");
            return reply::deployment_not_found();
        }
        let body = match self.read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let model = probe_model(&body);
        if let Route::V1 { .. } = route
            && let ModelProbe::Present(field) = &model
            && let Some(name) = field.value.as_deref()
            && name != "auto"
            && name != gateway.name
        {
            info!(model = name, "model is neither auto nor the gateway");
            return reply::deployment_not_found();
        }
        let plan = RequestPlan {
            method: parts.method.clone(),
            route,
            query: parts.uri.query(),
            headers: upstream_headers(&parts.headers, request_id),
            body,
            model,
        };
        self.forward(&plan, gateway).await
    }

    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, Response<ProxyBody>> {
        let limit = self.limits.max_body_bytes;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            info!(content_length = declared, limit, "request body too large");
            return Err(reply::payload_too_large(limit));
        }
        let read = Limited::new(body, limit).collect();
        match tokio::time::timeout(self.limits.client_body_timeout, read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
                info!(limit, "request body too large");
                Err(reply::payload_too_large(limit))
            }
            Ok(Err(err)) => {
                info!(error = %err, "could not read the request body");
                Err(reply::bad_body())
            }
            Err(_) => {
                info!(
                    timeout_ms = self.limits.client_body_timeout.as_millis() as u64,
                    "request body too slow"
                );
                Err(reply::body_timeout(self.limits.client_body_timeout))
            }
        }
    }

    /// Tries the gateway's candidates in order until one answers with something to pass on.
    async fn forward(
        &self,
        plan: &RequestPlan<'_>,
        gateway: &CompiledGateway,
    ) -> Response<ProxyBody> {
        let candidates = self.selector.candidates(gateway, &self.health, Instant::now());
        let mut attempts = String::new();
        let mut unavailable: Vec<Unavailable> = Vec::with_capacity(candidates.len());
        let mut attempt = 0u32;
        for candidate in &candidates {
            let endpoint = &candidate.endpoint;
            if let Some(skip) = candidate.skip {
                let wait = skip.until().saturating_duration_since(Instant::now());
                info!(
                    endpoint = %endpoint.name,
                    region = %endpoint.region,
                    reason = skip.as_str(),
                    wait_ms = wait.as_millis() as u64,
                    "endpoint skipped"
                );
                let (outcome, state) = match skip {
                    Skip::Throttling { until } => {
                        (Outcome::SkippedThrottling, Unavailable::Throttling { until })
                    }
                    Skip::Error { until } => (Outcome::SkippedError, Unavailable::Error { until }),
                };
                note_attempt(&mut attempts, endpoint, outcome, 0);
                unavailable.push(state);
                continue;
            }
            attempt += 1;
            let started = Instant::now();
            let result = self.attempt(plan, endpoint).await;
            let ms = started.elapsed().as_millis() as u64;
            let now = Instant::now();
            match result {
                Attempt::Answer(response, outcome) => {
                    let status = response.status();
                    let event = if outcome == Outcome::CredentialRejected {
                        let reason = format!("credential rejected ({status})");
                        log_attempt(endpoint, attempt, outcome, Some(status), ms, &reason);
                        HealthEvent::Failed { reason }
                    } else {
                        log_attempt(endpoint, attempt, outcome, Some(status), ms, "");
                        HealthEvent::Answered
                    };
                    self.health.record(endpoint.id, &event, now);
                    note_attempt(&mut attempts, endpoint, outcome, ms);
                    return self.pass_through(response, endpoint, &attempts);
                }
                Attempt::Throttled { retry_after, status } => {
                    let retry_after = retry_after.min(MAX_THROTTLE);
                    let reason = format!("throttled; retry after {} ms", retry_after.as_millis());
                    log_attempt(endpoint, attempt, Outcome::Throttled, Some(status), ms, &reason);
                    self.health.record(
                        endpoint.id,
                        &HealthEvent::Throttled { retry_after, reason },
                        now,
                    );
                    note_attempt(&mut attempts, endpoint, Outcome::Throttled, ms);
                    unavailable.push(Unavailable::Throttling { until: now + retry_after });
                }
                Attempt::Failed { outcome, status, reason } => {
                    log_attempt(endpoint, attempt, outcome, status, ms, &reason);
                    self.health.record(endpoint.id, &HealthEvent::Failed { reason }, now);
                    note_attempt(&mut attempts, endpoint, outcome, ms);
                    unavailable.push(Unavailable::Error { until: now + ERROR_COOLDOWN });
                }
            }
        }
        let mut response = exhausted(gateway, &unavailable, Instant::now());
        if let Ok(value) = HeaderValue::from_str(&attempts) {
            response.headers_mut().insert(ATTEMPTS_HEADER, value);
        }
        warn!(
            status = response.status().as_u16(),
            attempts = %attempts,
            "no endpoint could serve the request"
        );
        response
    }

    /// One upstream request; classifies the answer without reading a body the client gets.
    async fn attempt(&self, plan: &RequestPlan<'_>, endpoint: &CompiledEndpoint) -> Attempt {
        let mut headers = plan.headers.clone();
        headers.insert(endpoint.auth_name.clone(), endpoint.auth_value.clone());
        let request = self
            .http
            .request(plan.method.clone(), plan.url(endpoint))
            .headers(headers)
            .body(plan.body(endpoint));
        let timeout = self.limits.upstream_timeout;
        let response = match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => {
                return Attempt::Failed {
                    outcome: Outcome::Timeout,
                    status: None,
                    reason: format!("no response head within {} ms", timeout.as_millis()),
                };
            }
            Ok(Err(err)) => {
                let outcome = if err.is_connect() {
                    Outcome::ConnectError
                } else if err.is_timeout() {
                    Outcome::Timeout
                } else {
                    Outcome::Transport
                };
                return Attempt::Failed {
                    outcome,
                    status: None,
                    reason: error_chain(&err.without_url()),
                };
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = match retry_after_from_headers(response.headers(), SystemTime::now())
            {
                Some(wait) => wait,
                None => {
                    let body = read_prefix(response, THROTTLE_BODY_LIMIT).await;
                    retry_after_from_message(&body).unwrap_or(DEFAULT_THROTTLE)
                }
            };
            return Attempt::Throttled { retry_after, status };
        }
        if status.is_server_error() {
            return Attempt::Failed {
                outcome: Outcome::ServerError,
                status: Some(status),
                reason: format!("upstream answered {status}"),
            };
        }
        let outcome = match status.as_u16() {
            401 | 403 => Outcome::CredentialRejected,
            400..=499 => Outcome::ClientError,
            _ => Outcome::Ok,
        };
        Attempt::Answer(response, outcome)
    }

    /// Streams the upstream answer to the client frame by frame. A failure after this point
    /// ends the client's body with an error (connection abort), never with a clean end.
    fn pass_through(
        &self,
        response: reqwest::Response,
        endpoint: &Arc<CompiledEndpoint>,
        attempts: &str,
    ) -> Response<ProxyBody> {
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let health = Arc::clone(&self.health);
        let failed = Arc::clone(endpoint);
        let span = Span::current();
        let body = body
            .map_err(move |err| -> BoxError {
                let reason = error_chain(&err.without_url());
                span.in_scope(|| {
                    warn!(
                        endpoint = %failed.name,
                        region = %failed.region,
                        reason = %reason,
                        "upstream stream failed after the response started; aborting the client stream"
                    );
                });
                let event = HealthEvent::Failed { reason: format!("stream cut: {reason}") };
                health.record(failed.id, &event, Instant::now());
                "upstream stream failed".into()
            })
            .boxed();
        let mut out = Response::new(body);
        *out.status_mut() = parts.status;
        *out.headers_mut() = downstream_headers(parts.headers);
        out.headers_mut().insert(ENDPOINT_HEADER, endpoint.name_header.clone());
        if let Ok(value) = HeaderValue::from_str(attempts) {
            out.headers_mut().insert(ATTEMPTS_HEADER, value);
        }
        out
    }
}

/// The answer when no candidate served: 429 when every member is throttling (Retry-After =
/// the earliest recovery), else 503 (Retry-After = the earliest recovery of any member).
fn exhausted(
    gateway: &CompiledGateway,
    unavailable: &[Unavailable],
    now: Instant,
) -> Response<ProxyBody> {
    let total = unavailable.len();
    if total == 0 {
        let message = format!("Gateway '{}' has no enabled inference endpoint.", gateway.name);
        return reply::azure_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NoEndpointAvailable",
            &message,
        );
    }
    let throttling =
        unavailable.iter().filter(|u| matches!(u, Unavailable::Throttling { .. })).count();
    let until = |u: &Unavailable| match *u {
        Unavailable::Throttling { until } | Unavailable::Error { until } => until,
    };
    let earliest = unavailable.iter().map(until).min().unwrap_or(now);
    let wait = earliest.saturating_duration_since(now);
    let secs = reply::retry_after_secs(wait);
    let plural = if total == 1 { "" } else { "s" };
    if throttling == total {
        let message = format!(
            "All {total} inference endpoint{plural} of gateway '{}' are throttling; retry after {secs} second{}.",
            gateway.name,
            if secs == 1 { "" } else { "s" },
        );
        let response = reply::azure_error(StatusCode::TOO_MANY_REQUESTS, "429", &message);
        return reply::with_retry_after(response, wait);
    }
    let message = format!(
        "No inference endpoint of gateway '{}' is available: {} of {total} failed, {throttling} throttling; retry after {secs} second{}.",
        gateway.name,
        total - throttling,
        if secs == 1 { "" } else { "s" },
    );
    let response =
        reply::azure_error(StatusCode::SERVICE_UNAVAILABLE, "NoEndpointAvailable", &message);
    reply::with_retry_after(response, wait)
}

/// The structured line every upstream attempt gets: info when served, warn otherwise.
fn log_attempt(
    endpoint: &CompiledEndpoint,
    attempt: u32,
    outcome: Outcome,
    status: Option<StatusCode>,
    ms: u64,
    reason: &str,
) {
    let status = status.map(|s| s.as_u16());
    let (name, region, outcome) = (&endpoint.name, &endpoint.region, outcome.as_str());
    if matches!(outcome, "ok" | "client_error") {
        info!(endpoint = %name, region = %region, attempt, outcome, status, ms, reason, "upstream attempt");
    } else {
        warn!(endpoint = %name, region = %region, attempt, outcome, status, ms, reason, "upstream attempt");
    }
}

fn note_attempt(out: &mut String, endpoint: &CompiledEndpoint, outcome: Outcome, ms: u64) {
    if !out.is_empty() {
        out.push(',');
    }
    let _ = write!(out, "{}:{}:{ms}", endpoint.attempt_label, outcome.as_str());
}

/// The client's `x-ms-client-request-id` when it is a sane header value, else a new UUID.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(CLIENT_REQUEST_ID)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .expect("a UUID is a valid header value")
        })
}

/// Up to `limit` bytes of a response body, within [`THROTTLE_BODY_TIMEOUT`]; whatever arrived
/// when the limit, the deadline or an error is hit.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        while out.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    out.extend_from_slice(&chunk[..chunk.len().min(limit - out.len())])
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(THROTTLE_BODY_TIMEOUT, read).await;
    out
}

/// An error and its sources, `: `-joined (reqwest's own message alone says little).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
