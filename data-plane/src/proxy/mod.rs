//! The request path: authenticate, pick endpoints, rewrite, forward, fail over, stream back.
//!
//! Per request: one `SnapshotStore::load`, one SHA-256 of the client key, one body read into
//! `Bytes` (re-sent on failover without copying unless `model` must change). No lock is held
//! across an await and nothing here talks to the control plane.
//!
//! An endpoint's answer is committed to the client (head sent, no failover any more) only
//! once nothing can make it fail any more that another endpoint could fix:
//! - SSE: after its first data frame; a cut after that ends with an SSE error event.
//! - Any other 2xx answer (chat or embeddings JSON): after its whole body was read, up to
//!   `max_buffered_response_bytes` (then committed and the rest streamed). A reset in the
//!   middle of the body is a failed attempt like a refused connection: the endpoint cools
//!   down and the next candidate answers. Holding the body back costs no latency — a
//!   non-streamed answer is only sent once generation finished, so its body follows its head
//!   at network speed and the client could not use a partial JSON document anyway — and the
//!   memory is bounded by the cap. Reading it keeps the attempt's limits: each chunk within
//!   the idle gap, all of it within the request's deadline.
//! - Other statuses: at their head, passed through byte for byte (error bodies are small and
//!   nothing is gained by failing over an answer that says no).

pub(crate) mod client;
mod reply;
mod rewrite;
mod route;
pub(crate) mod server;
mod upstream;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use modelgw_model::gateway_key_hash;
use tracing::{Instrument, Span, debug, field, info, warn};

use crate::balance::EndpointSelector;
use crate::health::{
    Admission, GatewayState, HealthEvent, HealthRegistry, Unavailable, gateway_state,
    retry_after_from_headers, retry_after_from_message,
};
use crate::snapshot::{CompiledEndpoint, CompiledGateway, SnapshotStore, UpstreamAuth};
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
/// Client header that shortens the request's deadline (milliseconds); it can never extend
/// the gateway's.
pub(crate) const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-modelgw-timeout-ms");
/// Most times one request waits for a recovery (`routing.wait_for_recovery`) before giving
/// up; the deadline bounds the total anyway, this only stops a flapping endpoint from
/// turning one request into many attempts.
const MAX_RECOVERY_ROUNDS: u32 = 8;
/// Assumed recovery time of a member whose half-open trial is in flight: a trial usually
/// answers within a second.
const TRIAL_BUSY_RETRY: Duration = Duration::from_secs(1);
/// Shortest wait before trying again after a recovery wait, so a window ending "now" (e.g.
/// `retry-after-ms: 0`) cannot turn into a busy loop.
const MIN_RECOVERY_WAIT: Duration = Duration::from_millis(50);
/// Pause between sending the SSE error event and aborting the body. hyper discards buffered
/// bytes when a body fails, so the event needs a moment on the wire first; 100 ms is plenty
/// on any live connection and invisible next to the failure itself.
const STREAM_ERROR_FLUSH_GRACE: Duration = Duration::from_millis(100);
/// Longest client-supplied request id that is adopted (and logged); longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Request-path settings, from `DataPlaneConfig`.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    /// First-byte timeout of one attempt.
    pub upstream_timeout: Duration,
    /// Longest gap between two body chunks of an upstream answer.
    pub idle_timeout: Duration,
    /// End-to-end deadline when the gateway sets none.
    pub request_timeout: Duration,
    /// Most bytes of a non-streamed 2xx answer read before committing it to the client.
    pub max_buffered_response_bytes: usize,
    pub client_body_timeout: Duration,
}

/// Shared state of the request path.
pub(crate) struct Proxy {
    pub store: Arc<SnapshotStore>,
    pub health: Arc<HealthRegistry>,
    pub selector: Arc<dyn EndpointSelector>,
    pub http: client::UpstreamClient,
    pub entra: Arc<crate::entra::EntraTokens>,
    pub limits: Limits,
}

/// How one attempt ended, as logged and listed in `x-modelgw-attempts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// 1xx–3xx: served.
    Ok,
    /// 4xx other than 401/403/429: the client's problem, passed through.
    ClientError,
    /// A 5xx that another endpoint would answer the same way (501, 505, …): passed through.
    ServerErrorPassedThrough,
    /// 401/403: the endpoint rejected the gateway's credential; passed through.
    CredentialRejected,
    Throttled,
    ServerError,
    ConnectError,
    Timeout,
    /// The connection failed after the request was sent (reset, protocol error), or a
    /// stream broke before its first byte.
    Transport,
    /// The request's deadline ended the attempt (not the endpoint's fault).
    Deadline,
    /// Nothing was sent: the endpoint's credential is not available (no Entra ID token yet).
    NoCredential,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ServerErrorPassedThrough => "server_error_passed_through",
            Outcome::CredentialRejected => "credential_rejected",
            Outcome::Throttled => "throttled",
            Outcome::ServerError => "server_error",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Transport => "transport_error",
            Outcome::Deadline => "deadline",
            Outcome::NoCredential => "no_credential",
        }
    }
}

/// An answer to pass on: head, the body frames read ahead before committing, the rest.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    ahead: ReadAhead,
    body: Incoming,
    outcome: Outcome,
}

/// Body frames read before an answer is committed to the client.
#[derive(Default)]
struct ReadAhead {
    frames: VecDeque<Bytes>,
    /// The upstream body ended: `frames` is all of it.
    complete: bool,
}

/// Result of one upstream attempt.
enum Attempt {
    /// An answer to pass to the client (success or a non-retryable client error).
    Answer(Box<Answer>),
    /// 429: try the next endpoint; this one is throttled for `retry_after`.
    Throttled { retry_after: Duration, status: StatusCode },
    /// Retryable failure: try the next endpoint; this one cools down.
    Failed { outcome: Outcome, status: Option<StatusCode>, reason: String },
    /// The request's deadline passed while waiting for this endpoint.
    Deadline,
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
        let span = tracing::debug_span!(
            "request",
            request_id = request_id.to_str().unwrap_or_default(),
            method = %parts.method,
            path = parts.uri.path(),
            gateway = field::Empty,
            status = field::Empty,
        );
        let started = Instant::now();
        let mut gateway = None;
        let mut response = self
            .serve(&parts, body, route, &request_id, started, &mut gateway)
            .instrument(span.clone())
            .await;
        response.headers_mut().entry(CLIENT_REQUEST_ID).or_insert(request_id);
        let status = response.status().as_u16();
        let ms = started.elapsed().as_millis() as u64;
        span.record("status", status);
        // The access-log line (target `modelgw::access`), one per request: logged when the
        // response head is ready (a streamed body may still be flowing). A served first attempt
        // logs nothing else at `info`; every failed or skipped member has its own `warn`/`info`
        // line before this. Every field is a `&str` or a number: the cheapest values for a
        // formatter to write (this line was a seventh of the request path's instructions).
        let header = |name: &HeaderName| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-")
        };
        span.in_scope(|| {
            info!(
                target: "modelgw::access",
                request_id = header(&CLIENT_REQUEST_ID),
                method = parts.method.as_str(),
                path = parts.uri.path(),
                gateway = gateway.as_deref().unwrap_or("-"),
                status,
                ms,
                endpoint = header(&ENDPOINT_HEADER),
                attempts = header(&ATTEMPTS_HEADER),
                "request answered"
            )
        });
        response
    }

    async fn serve(
        &self,
        parts: &Parts,
        body: Incoming,
        route: Route<'_>,
        request_id: &HeaderValue,
        started: Instant,
        gateway_name: &mut Option<String>,
    ) -> Response<ProxyBody> {
        // Lines logged before the answer carry the request id themselves: the `request` span
        // is debug-level, so at `info` they have no span context.
        let rid = request_id.to_str().unwrap_or_default();
        if route == Route::NotFound {
            debug!("unknown path");
            return reply::resource_not_found();
        }
        let table = self.store.load();
        if table.version().0 == 0 {
            return reply::not_ready();
        }
        let Some(key) = client_key(&parts.headers) else {
            info!(request_id = rid, "no gateway key");
            return reply::access_denied();
        };
        let Some(gateway) = table.gateway_for_key(&gateway_key_hash(key)) else {
            info!(request_id = rid, "unknown gateway key");
            return reply::access_denied();
        };
        Span::current().record("gateway", gateway.name.as_str());
        *gateway_name = Some(gateway.name.clone());
        if let Some(deployment) = route.deployment()
            && deployment != "auto"
            && deployment != gateway.name
        {
            info!(request_id = rid, deployment, "deployment is neither auto nor the gateway");
            return reply::deployment_not_found();
        }
        let body = match self.read_body(&parts.headers, body, rid).await {
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
            info!(request_id = rid, model = name, "model is neither auto nor the gateway");
            return reply::deployment_not_found();
        }
        let mut plan = RequestPlan {
            request_id: rid,
            method: parts.method.clone(),
            route,
            query: parts.uri.query(),
            client_headers: &parts.headers,
            request_id_header: request_id,
            prepared: Some(upstream_headers(&parts.headers, request_id)),
            body,
            model,
        };
        let timeout = request_timeout(
            gateway.routing.request_timeout_ms,
            self.limits.request_timeout,
            &parts.headers,
        );
        debug!(timeout_ms = timeout.as_millis() as u64, "request deadline");
        self.forward(&mut plan, gateway, started + timeout).await
    }

    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        rid: &str,
    ) -> Result<Bytes, Response<ProxyBody>> {
        let limit = self.limits.max_body_bytes;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            info!(request_id = rid, content_length = declared, limit, "request body too large");
            return Err(reply::payload_too_large(limit));
        }
        let read = Limited::new(body, limit).collect();
        match tokio::time::timeout(self.limits.client_body_timeout, read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
                info!(request_id = rid, limit, "request body too large");
                Err(reply::payload_too_large(limit))
            }
            Ok(Err(err)) => {
                info!(request_id = rid, error = %err, "could not read the request body");
                Err(reply::bad_body())
            }
            Err(_) => {
                info!(
                    request_id = rid,
                    timeout_ms = self.limits.client_body_timeout.as_millis() as u64,
                    "request body too slow"
                );
                Err(reply::body_timeout(self.limits.client_body_timeout))
            }
        }
    }

    /// Tries the gateway's candidates in order until one answers with something to pass on;
    /// when none can and the gateway asks for it, waits for the earliest recovery that fits
    /// in the deadline and tries again.
    async fn forward(
        &self,
        plan: &mut RequestPlan<'_>,
        gateway: &CompiledGateway,
        deadline: Instant,
    ) -> Response<ProxyBody> {
        let rid = plan.request_id;
        let mut attempts = String::new();
        let mut attempt = 0u32;
        let mut round = 0u32;
        loop {
            let candidates = self.selector.candidates(gateway, &self.health, Instant::now());
            let mut unavailable: Vec<Unavailable> = Vec::with_capacity(candidates.len());
            for candidate in candidates.iter().filter(|c| c.low_headroom && c.skip.is_none()) {
                let endpoint = &candidate.endpoint;
                info!(
                    request_id = rid,
                    endpoint = %endpoint.name,
                    region = %endpoint.region,
                    reason = "low_quota_headroom",
                    "endpoint deferred after the others of its group"
                );
            }
            for candidate in &candidates {
                let endpoint = &candidate.endpoint;
                let admitted = match candidate.skip {
                    Some(skip) => Err(skip),
                    None => self.health.admit(endpoint.id, Instant::now()),
                };
                let admission = match admitted {
                    Ok(admission) => admission,
                    Err(skip) => {
                        log_skip(rid, endpoint, skip);
                        note(&mut attempts, endpoint, &format!("skipped_{}", skip.as_str()), 0);
                        unavailable.push(skip);
                        continue;
                    }
                };
                if Instant::now() >= deadline {
                    return self.deadline_exceeded(rid, gateway, &attempts);
                }
                attempt += 1;
                let trial = admission.is_trial();
                let tried = Tried { rid, endpoint, attempt, trial };
                let started = Instant::now();
                let result = self.attempt(plan, endpoint, deadline).await;
                let ms = started.elapsed().as_millis() as u64;
                let now = Instant::now();
                match result {
                    Attempt::Answer(answer) => {
                        let status = answer.status;
                        let outcome = answer.outcome;
                        let event = if outcome == Outcome::CredentialRejected {
                            let reason = format!("credential rejected ({status})");
                            log_attempt(&tried, outcome, Some(status), ms, &reason);
                            HealthEvent::Failed { reason }
                        } else {
                            log_attempt(&tried, outcome, Some(status), ms, "");
                            HealthEvent::Answered
                        };
                        self.health.record(endpoint.id, &event, now);
                        let mut admission = admission;
                        admission.finish_trial();
                        if outcome == Outcome::Ok {
                            // A quick rejection says nothing about how fast it serves.
                            self.health.record_latency(endpoint.id, now - started, now);
                        }
                        self.health.record_headroom(endpoint.id, &answer.headers, now);
                        note(&mut attempts, endpoint, outcome.as_str(), ms);
                        return self
                            .pass_through(rid, *answer, endpoint, admission, deadline, &attempts);
                    }
                    Attempt::Throttled { retry_after, status } => {
                        let retry_after = retry_after.min(self.health.policy().max_throttle);
                        let reason =
                            format!("throttled; retry after {} ms", retry_after.as_millis());
                        log_attempt(&tried, Outcome::Throttled, Some(status), ms, &reason);
                        let event = HealthEvent::Throttled { retry_after, reason };
                        self.health.record(endpoint.id, &event, now);
                        note(&mut attempts, endpoint, Outcome::Throttled.as_str(), ms);
                        unavailable.push(self.unavailable_now(endpoint, now));
                    }
                    Attempt::Failed { outcome, status, reason } => {
                        log_attempt(&tried, outcome, status, ms, &reason);
                        self.health.record(endpoint.id, &HealthEvent::Failed { reason }, now);
                        note(&mut attempts, endpoint, outcome.as_str(), ms);
                        unavailable.push(self.unavailable_now(endpoint, now));
                    }
                    Attempt::Deadline => {
                        let reason = "the request deadline passed before the answer was complete";
                        log_attempt(&tried, Outcome::Deadline, None, ms, reason);
                        note(&mut attempts, endpoint, Outcome::Deadline.as_str(), ms);
                        return self.deadline_exceeded(rid, gateway, &attempts);
                    }
                }
            }
            let now = Instant::now();
            if gateway.routing.wait_for_recovery
                && !unavailable.is_empty()
                && round < MAX_RECOVERY_ROUNDS
            {
                let recovery = unavailable
                    .iter()
                    .map(|u| u.until().unwrap_or(now + TRIAL_BUSY_RETRY))
                    .min()
                    .unwrap_or(now)
                    .max(now + MIN_RECOVERY_WAIT);
                if recovery < deadline {
                    round += 1;
                    info!(
                        request_id = rid,
                        wait_ms = (recovery - now).as_millis() as u64,
                        round,
                        "no endpoint available; waiting for the earliest recovery"
                    );
                    tokio::time::sleep_until(recovery.into()).await;
                    continue;
                }
            }
            let mut response = exhausted(gateway, &unavailable, now);
            if let Ok(value) = HeaderValue::from_str(&attempts) {
                response.headers_mut().insert(ATTEMPTS_HEADER, value);
            }
            warn!(
                request_id = rid,
                gateway = %gateway.name,
                status = response.status().as_u16(),
                attempts = %attempts,
                gateway_state = gateway_state_now(gateway, &self.health, now).as_str(),
                "no endpoint could serve the request"
            );
            return response;
        }
    }

    /// Why `endpoint` is unavailable right after an attempt recorded its failure.
    fn unavailable_now(&self, endpoint: &CompiledEndpoint, now: Instant) -> Unavailable {
        self.health.view(endpoint.id, now).unavailable.unwrap_or(Unavailable::Error {
            until: now + self.health.policy().error_backoff_base,
            remote: false,
        })
    }

    /// 504 when the request's deadline passed before any endpoint answered. Not 429/503: the
    /// endpoints may be fine, the request just ran out of time (the client may retry).
    fn deadline_exceeded(
        &self,
        rid: &str,
        gateway: &CompiledGateway,
        attempts: &str,
    ) -> Response<ProxyBody> {
        warn!(request_id = rid, gateway = %gateway.name, attempts = %attempts, "request deadline reached");
        let mut response = reply::azure_error(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            "No inference endpoint answered within the request's deadline.",
        );
        if let Ok(value) = HeaderValue::from_str(attempts) {
            response.headers_mut().insert(ATTEMPTS_HEADER, value);
        }
        response
    }

    /// One upstream request; classifies the answer without passing on a byte of a body the
    /// client gets. Waits at most the first-byte timeout for the head (and an SSE answer's
    /// first frame), reads a non-streamed 2xx body ahead (see the module docs), and never
    /// waits past `deadline`.
    async fn attempt(
        &self,
        plan: &mut RequestPlan<'_>,
        endpoint: &CompiledEndpoint,
        deadline: Instant,
    ) -> Attempt {
        let mut headers = plan.headers();
        match &endpoint.auth {
            UpstreamAuth::Static { name, value } => {
                headers.insert(name.clone(), value.clone());
            }
            UpstreamAuth::Entra { scope } => match self.entra.header(scope) {
                Some(value) => {
                    headers.insert(http::header::AUTHORIZATION, value);
                }
                None => {
                    return Attempt::Failed {
                        outcome: Outcome::NoCredential,
                        status: None,
                        reason: "no Entra token".to_owned(),
                    };
                }
            },
        }
        let uri = match plan.url(endpoint) {
            Ok(uri) => uri,
            Err(err) => {
                return Attempt::Failed {
                    outcome: Outcome::Transport,
                    status: None,
                    reason: format!("could not build the upstream URI: {err}"),
                };
            }
        };
        let mut request = Request::new(client::UpstreamBody::new(plan.body(endpoint)));
        *request.method_mut() = plan.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let first_byte = self.limits.upstream_timeout;
        let attempt_started = Instant::now();
        let (limit, by_deadline) = bounded(first_byte, deadline);
        let response = match tokio::time::timeout(limit, self.http.request(request)).await {
            Err(_) if by_deadline => return Attempt::Deadline,
            Err(_) => {
                return Attempt::Failed {
                    outcome: Outcome::Timeout,
                    status: None,
                    reason: format!("no response head within {} ms", first_byte.as_millis()),
                };
            }
            Ok(Err(err)) => {
                let outcome = if err.is_connect() {
                    // The connector's own timeout (`upstream_connect_timeout`) lands here too.
                    Outcome::ConnectError
                } else {
                    Outcome::Transport
                };
                return Attempt::Failed { outcome, status: None, reason: error_chain(&err) };
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
                    retry_after_from_message(&body).unwrap_or(self.health.policy().default_throttle)
                }
            };
            return Attempt::Throttled { retry_after, status };
        }
        if matches!(status.as_u16(), 500 | 502 | 503 | 504) {
            return Attempt::Failed {
                outcome: Outcome::ServerError,
                status: Some(status),
                reason: format!("upstream answered {status}"),
            };
        }
        let outcome = match status.as_u16() {
            401 | 403 => Outcome::CredentialRejected,
            400..=499 => Outcome::ClientError,
            500..=599 => Outcome::ServerErrorPassedThrough,
            _ => Outcome::Ok,
        };
        let (parts, mut body) = response.into_parts();
        let sse = is_event_stream(&parts.headers);
        // A stream that breaks before its first byte reached the client can still fail over:
        // read the first frame before committing to this endpoint.
        let ahead = if sse && outcome == Outcome::Ok {
            // The first data frame is the first byte: it shares the first-byte budget.
            let left = first_byte.saturating_sub(attempt_started.elapsed());
            let (limit, by_deadline) = bounded(left, deadline);
            match tokio::time::timeout(limit, next_data(&mut body)).await {
                Err(_) if by_deadline => return Attempt::Deadline,
                Err(_) => {
                    return Attempt::Failed {
                        outcome: Outcome::Timeout,
                        status: Some(status),
                        reason: format!("no stream data within {} ms", first_byte.as_millis()),
                    };
                }
                Ok(Err(err)) => {
                    return Attempt::Failed {
                        outcome: Outcome::Transport,
                        status: Some(status),
                        reason: format!(
                            "stream broke before its first byte: {}",
                            error_chain(&err)
                        ),
                    };
                }
                Ok(Ok(first)) => {
                    ReadAhead { complete: first.is_none(), frames: first.into_iter().collect() }
                }
            }
        } else if status.is_success() {
            match self.read_ahead(endpoint, &parts.headers, &mut body, status, deadline).await {
                Ok(ahead) => ahead,
                Err(failed) => return failed,
            }
        } else {
            ReadAhead::default()
        };
        Attempt::Answer(Box::new(Answer { status, headers: parts.headers, ahead, body, outcome }))
    }

    /// Reads a non-streamed 2xx body before it is committed, so that a cut inside it fails
    /// over: all of it, or the first `max_buffered_response_bytes` (nothing when
    /// `Content-Length` already says more) after which the rest is streamed. Each chunk must
    /// come within the idle gap, and all of it before `deadline`.
    async fn read_ahead(
        &self,
        endpoint: &CompiledEndpoint,
        headers: &HeaderMap,
        body: &mut Incoming,
        status: StatusCode,
        deadline: Instant,
    ) -> Result<ReadAhead, Attempt> {
        let cap = self.limits.max_buffered_response_bytes;
        let idle = self.limits.idle_timeout;
        let mut ahead = ReadAhead::default();
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > cap as u64) {
            debug!(
                endpoint = %endpoint.name,
                content_length = declared,
                cap,
                "answer larger than the read-ahead cap; streaming it"
            );
            return Ok(ahead);
        }
        let mut read = 0usize;
        while read < cap {
            let (limit, by_deadline) = bounded(idle, deadline);
            match tokio::time::timeout(limit, next_data(body)).await {
                Err(_) if by_deadline => return Err(Attempt::Deadline),
                Err(_) => {
                    return Err(Attempt::Failed {
                        outcome: Outcome::Timeout,
                        status: Some(status),
                        reason: format!(
                            "no body data for {} ms after {read} bytes",
                            idle.as_millis()
                        ),
                    });
                }
                Ok(Err(err)) => {
                    return Err(Attempt::Failed {
                        outcome: Outcome::Transport,
                        status: Some(status),
                        reason: format!(
                            "body broke after {read} bytes, before the client got any: {}",
                            error_chain(&err)
                        ),
                    });
                }
                Ok(Ok(None)) => {
                    ahead.complete = true;
                    return Ok(ahead);
                }
                Ok(Ok(Some(chunk))) => {
                    read += chunk.len();
                    ahead.frames.push_back(chunk);
                }
            }
        }
        debug!(
            endpoint = %endpoint.name,
            read,
            cap,
            "answer reached the read-ahead cap; streaming the rest"
        );
        Ok(ahead)
    }

    /// Streams the upstream answer to the client frame by frame. A failure after this point
    /// cannot fail over: an SSE stream gets a final `data: {"error":…}` frame (the SDKs raise
    /// it) and then an aborted body; any other body is aborted. Never a clean end.
    fn pass_through(
        &self,
        rid: &str,
        answer: Answer,
        endpoint: &Arc<CompiledEndpoint>,
        admission: Admission,
        deadline: Instant,
        attempts: &str,
    ) -> Response<ProxyBody> {
        let Answer { status, headers, ahead, body, .. } = answer;
        let sse = is_event_stream(&headers);
        let relay = Relay {
            body,
            ahead: ahead.frames,
            ended: ahead.complete,
            framer: sse.then(BytesMut::new),
            idle: self.limits.idle_timeout,
            deadline,
            health: Arc::clone(&self.health),
            endpoint: Arc::clone(endpoint),
            span: Span::current(),
            request_id: Box::from(rid),
            _admission: admission,
            phase: Phase::Streaming,
        };
        let body = http_body_util::StreamBody::new(futures::stream::unfold(relay, Relay::step));
        let mut out = Response::new(BodyExt::boxed(body));
        *out.status_mut() = status;
        *out.headers_mut() = downstream_headers(headers);
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
    let throttling = unavailable.iter().filter(|u| u.is_throttling()).count();
    let earliest = unavailable
        .iter()
        .map(|u| u.until().unwrap_or(now + TRIAL_BUSY_RETRY))
        .min()
        .unwrap_or(now);
    let wait = earliest.saturating_duration_since(now);
    let secs = reply::retry_after_secs(wait);
    let plural = if total == 1 { "" } else { "s" };
    let secs_plural = if secs == 1 { "" } else { "s" };
    if throttling == total {
        let message = format!(
            "All {total} inference endpoint{plural} of gateway '{}' are throttling; retry after {secs} second{secs_plural}.",
            gateway.name,
        );
        let response = reply::azure_error(StatusCode::TOO_MANY_REQUESTS, "429", &message);
        return reply::with_retry_after(response, wait);
    }
    let message = format!(
        "No inference endpoint of gateway '{}' is available: {} of {total} failed, {throttling} throttling; retry after {secs} second{secs_plural}.",
        gateway.name,
        total - throttling,
    );
    let response =
        reply::azure_error(StatusCode::SERVICE_UNAVAILABLE, "NoEndpointAvailable", &message);
    reply::with_retry_after(response, wait)
}

/// The gateway's state from this data plane's view, for the log line of a refused request.
fn gateway_state_now(
    gateway: &CompiledGateway,
    health: &HealthRegistry,
    now: Instant,
) -> GatewayState {
    let states: Vec<_> = gateway
        .groups
        .iter()
        .flat_map(|g| &g.members)
        .map(|m| health.state(m.endpoint.id, now))
        .collect();
    gateway_state(&states)
}

/// Which try an attempt line is about: the request, the endpoint, the attempt number, and
/// whether it was the endpoint's half-open trial.
struct Tried<'a> {
    rid: &'a str,
    endpoint: &'a CompiledEndpoint,
    attempt: u32,
    trial: bool,
}

/// The structured line every upstream attempt gets: `warn` when it failed; `debug` when it was
/// answered (the request's own `info` line names the endpoint and every attempt).
fn log_attempt(
    tried: &Tried<'_>,
    outcome: Outcome,
    status: Option<StatusCode>,
    ms: u64,
    reason: &str,
) {
    let Tried { rid, endpoint, attempt, trial: half_open_trial } = *tried;
    let status = status.map(|s| s.as_u16());
    let (name, region, outcome) = (&endpoint.name, &endpoint.region, outcome.as_str());
    if matches!(outcome, "ok" | "client_error") {
        debug!(request_id = rid, endpoint = %name, region = %region, attempt, outcome, status, ms, half_open_trial, reason, "upstream attempt");
    } else {
        warn!(request_id = rid, endpoint = %name, region = %region, attempt, outcome, status, ms, half_open_trial, reason, "upstream attempt");
    }
}

/// The line for a member that is not tried, with why and until when.
fn log_skip(rid: &str, endpoint: &CompiledEndpoint, skip: Unavailable) {
    let wait_ms = skip.until().map(|until| until.saturating_duration_since(Instant::now()));
    info!(
        request_id = rid,
        endpoint = %endpoint.name,
        region = %endpoint.region,
        reason = skip.as_str(),
        wait_ms = wait_ms.map(|w| w.as_millis() as u64),
        "endpoint skipped"
    );
}

fn note(out: &mut String, endpoint: &CompiledEndpoint, outcome: &str, ms: u64) {
    if !out.is_empty() {
        out.push(',');
    }
    let _ = write!(out, "{}:{outcome}:{ms}", endpoint.attempt_label);
}

/// The shorter of a timeout and the time left before `deadline`, and whether it is the
/// deadline that binds.
fn bounded(timeout: Duration, deadline: Instant) -> (Duration, bool) {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < timeout { (left, true) } else { (timeout, false) }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// The next data frame of `body` (trailers are skipped); `None` at the end.
async fn next_data(body: &mut Incoming) -> Result<Option<Bytes>, hyper::Error> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(err)) => return Err(err),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The SSE frame that tells the client a stream broke: the openai SDK raises `APIError` on a
/// data frame with an `error` key.
fn stream_error_event(message: &str) -> Bytes {
    let value = serde_json::json!({
        "error": { "code": "stream_interrupted", "message": message }
    });
    Bytes::from(format!("data: {value}\n\n"))
}

enum Phase {
    Streaming,
    /// The error event was sent; the next poll aborts the body.
    Failing(String),
    Done,
}

/// Relays one upstream body to the client, with the idle-gap and deadline limits. For SSE it
/// forwards whole events only (up to the last blank line), so that an error event after a
/// cut never lands inside a half-sent one.
struct Relay {
    body: Incoming,
    /// Frames read before the answer was committed; sent first.
    ahead: VecDeque<Bytes>,
    /// The upstream body already ended: nothing more to read from it.
    ended: bool,
    framer: Option<BytesMut>,
    idle: Duration,
    deadline: Instant,
    health: Arc<HealthRegistry>,
    endpoint: Arc<CompiledEndpoint>,
    span: Span,
    /// Named in the line logged when the stream breaks (the span is debug-level).
    request_id: Box<str>,
    /// Keeps the request counted in flight (and a half-open trial slot) until the body ends.
    _admission: Admission,
    phase: Phase,
}

type RelayItem = Result<Frame<Bytes>, BoxError>;

impl Relay {
    async fn step(mut self) -> Option<(RelayItem, Relay)> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Failing(reason) => {
                    // hyper drops what it has buffered when a body fails; let it flush the
                    // error event to the client first.
                    tokio::time::sleep(STREAM_ERROR_FLUSH_GRACE).await;
                    return Some((Err(reason.into()), self));
                }
                Phase::Streaming => self.phase = Phase::Streaming,
            }
            let next = match self.ahead.pop_front() {
                Some(frame) => Ok(Ok(Some(frame))),
                None if self.ended => Ok(Ok(None)),
                None => {
                    let (limit, by_deadline) = bounded(self.idle, self.deadline);
                    tokio::time::timeout(limit, next_data(&mut self.body))
                        .await
                        .map_err(|_| by_deadline)
                }
            };
            let failure = match next {
                Ok(Ok(Some(bytes))) => {
                    let out = match &mut self.framer {
                        None => bytes,
                        Some(pending) => {
                            pending.extend_from_slice(&bytes);
                            match last_event_end(pending) {
                                Some(end) => pending.split_to(end).freeze(),
                                None => continue,
                            }
                        }
                    };
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Ok(Frame::data(out)), self));
                }
                Ok(Ok(None)) => {
                    let rest = self.framer.take().filter(|p| !p.is_empty());
                    return rest.map(|rest| (Ok(Frame::data(rest.freeze())), self));
                }
                Ok(Err(err)) => (format!("upstream stream failed: {}", error_chain(&err)), true),
                Err(false) => (format!("no upstream data for {} ms", self.idle.as_millis()), true),
                Err(true) => ("the request deadline was reached".to_owned(), false),
            };
            let (reason, endpoint_fault) = failure;
            self.span.in_scope(|| {
                warn!(
                    request_id = &*self.request_id,
                    endpoint = %self.endpoint.name,
                    region = %self.endpoint.region,
                    reason = %reason,
                    "stream ended early after the response started; telling the client"
                );
            });
            if endpoint_fault {
                let event = HealthEvent::Failed { reason: format!("stream cut: {reason}") };
                self.health.record(self.endpoint.id, &event, Instant::now());
            }
            if self.framer.take().is_some() {
                self.phase = Phase::Failing(reason.clone());
                return Some((Ok(Frame::data(stream_error_event(&reason))), self));
            }
            return Some((Err(reason.into()), self));
        }
    }
}

/// End of the last complete SSE event in `buf` (after its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).rposition(|w| w == b"\r\n\r\n").map(|i| i + 4);
    lf.max(crlf)
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

/// The request's end-to-end budget: the gateway's `request_timeout_ms`, else `default`,
/// shortened (never extended) by the client's `x-modelgw-timeout-ms`.
fn request_timeout(gateway_ms: Option<u32>, default: Duration, headers: &HeaderMap) -> Duration {
    let configured = gateway_ms.map_or(default, |ms| Duration::from_millis(u64::from(ms)));
    let asked = headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    match asked {
        Some(asked) => asked.min(configured),
        None => configured,
    }
}

/// Up to `limit` bytes of a response body, within [`THROTTLE_BODY_TIMEOUT`]; whatever arrived
/// when the limit, the deadline or an error is hit.
async fn read_prefix(response: Response<Incoming>, limit: usize) -> Vec<u8> {
    let mut body = response.into_body();
    let mut out = Vec::new();
    let read = async {
        while out.len() < limit {
            match next_data(&mut body).await {
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

/// An error and its sources, `: `-joined (hyper's own message alone says little).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_may_shorten_the_deadline_but_never_extend_it() {
        let default = Duration::from_secs(600);
        let mut headers = HeaderMap::new();
        assert_eq!(request_timeout(None, default, &headers), default);
        assert_eq!(request_timeout(Some(30_000), default, &headers), Duration::from_secs(30));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("1500"));
        assert_eq!(request_timeout(Some(30_000), default, &headers), Duration::from_millis(1500));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("90000"));
        assert_eq!(request_timeout(Some(30_000), default, &headers), Duration::from_secs(30));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(request_timeout(None, default, &headers), default, "garbage is ignored");
    }

    #[test]
    fn sse_relay_cuts_at_event_boundaries_and_the_error_event_is_a_data_frame() {
        assert_eq!(last_event_end(b"data: {}\n\ndata: {\"a\""), Some(10));
        assert_eq!(last_event_end(b"data: {}\r\n\r\n"), Some(12));
        assert_eq!(last_event_end(b"data: {\"partial"), None);
        let event = stream_error_event("upstream \"cut\"");
        let text = std::str::from_utf8(&event).expect("utf-8");
        assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
        let value: serde_json::Value =
            serde_json::from_str(text.trim_start_matches("data: ").trim_end()).expect("json");
        assert_eq!(value["error"]["code"], "stream_interrupted");
        assert_eq!(value["error"]["message"], "upstream \"cut\"");
    }
}
