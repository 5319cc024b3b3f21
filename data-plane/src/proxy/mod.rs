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
//!
//! Where each step lives, in the order a request meets them: `server` (the listener, its
//! threads and the connection limits), `route` + `operations` (what it asks for, from the one
//! table of operations a key reaches), `failed_auth` (addresses refused after failed keys),
//! `auth` (which gateway it may use), `body` (its body, read once), `rewrite` (its `model`,
//! read strictly), `deadline` (its budget),
//! `failover` (candidates in order, recovery waits, the 429/503/504 answers), `exchange` (one
//! request to an endpoint, up to the moment its answer may be committed), `attempt` (what it
//! came to: `Outcome`, `AttemptError`), `upstream` + `rewrite` (the request each endpoint
//! gets), `upstream_client` (the pooled hyper client, its connect-time address guard in `egress`),
//! `relay` + `sse` (streaming a committed answer; bounded SSE framing), `reply` (the gateway's
//! own answers), `access_log` (the line per request), `trace_context` (OpenTelemetry spans
//! and W3C trace context, when tracing is on).

mod access_log;
mod attempt;
mod auth;
mod body;
pub(crate) mod connection;
mod deadline;
pub(crate) mod egress;
mod exchange;
mod failed_auth;
mod failover;
pub(crate) mod operations;
#[cfg(test)]
mod properties;
mod relay;
mod reply;
mod rewrite;
mod route;
pub(crate) mod server;
mod sse;
pub(crate) mod trace_context;
mod upstream;
pub(crate) mod upstream_client;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tracing::{Instrument, Span, debug, field, info};

use crate::balance::EndpointSelector;
use crate::health::HealthRegistry;
use crate::routing_table::SnapshotStore;
use operations::BodyKind;
use rewrite::{ModelProbe, probe_model};
use route::{Route, parse_route};
use upstream::{CLIENT_REQUEST_ID, RequestPlan, upstream_headers, upstream_query};

pub(crate) use failed_auth::{FailedAuths, report as report_failed_auths};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the gateway sends.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// Names the endpoint that served the response.
const ENDPOINT_HEADER: HeaderName = HeaderName::from_static("x-modelgw-endpoint");
/// `<endpoint>:<outcome>:<ms>,…` for every member considered, in order.
const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-modelgw-attempts");

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
    /// Largest SSE event relayed; a larger one ends the stream with an error event.
    pub max_sse_event_bytes: usize,
    /// Forward `X-Forwarded-*` / `Forwarded` from the client.
    pub forward_client_address_headers: bool,
}

/// Shared state of the request path.
pub(crate) struct Proxy {
    pub store: Arc<SnapshotStore>,
    pub health: Arc<HealthRegistry>,
    pub selector: Arc<dyn EndpointSelector>,
    pub http: upstream_client::UpstreamClient,
    pub entra: Arc<crate::entra::EntraTokens>,
    pub limits: Limits,
    /// Failed authentications per client address (shared by every serving thread).
    pub failed_auths: Arc<FailedAuths>,
    /// Spans for requests and attempts (`trace_context`); `None`: tracing off, no cost.
    pub tracer: Option<trace_context::RequestTracer>,
}

impl Proxy {
    /// Serves one request from `peer`. Infallible: every failure becomes an Azure-shaped
    /// response.
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: Option<IpAddr>,
    ) -> Response<ProxyBody> {
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
        let request_id = access_log::request_id(&parts.headers);
        let span = tracing::debug_span!(
            "request",
            request_id = request_id.to_str().unwrap_or_default(),
            method = %parts.method,
            path = parts.uri.path(),
            gateway = field::Empty,
            status = field::Empty,
        );
        let started = Instant::now();
        let mut trace = trace_context::start(self.tracer.as_ref(), &parts, &route);
        let mut gateway = None;
        // Boxed: the request's future (body read, failover, upstream exchange) is kilobytes,
        // and unboxed every future around it — up to the one hyper stores per request — has
        // its size and is copied whole when it is created and moved; one allocation is cheaper.
        let mut response = Box::pin(
            self.serve(&parts, body, route, peer, &request_id, started, &mut gateway, &mut trace)
                .instrument(span.clone()),
        )
        .await;
        response.headers_mut().entry(CLIENT_REQUEST_ID).or_insert(request_id);
        let ms = started.elapsed().as_millis() as u64;
        access_log::log_request(&span, &parts, gateway.as_deref(), &response, ms);
        trace_context::finish(trace, gateway.as_deref(), response)
    }

    /// Everything between the request's head and its answer: the gateway it may use, its
    /// body, its deadline, then failover across the gateway's endpoints.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        parts: &Parts,
        body: Incoming,
        route: Route<'_>,
        peer: Option<IpAddr>,
        request_id: &HeaderValue,
        started: Instant,
        gateway_name: &mut Option<String>,
        trace: &mut Option<Box<trace_context::RequestTrace>>,
    ) -> Response<ProxyBody> {
        // Lines logged before the answer carry the request id themselves: the `request` span
        // is debug-level, so at `info` they have no span context.
        let rid = request_id.to_str().unwrap_or_default();
        let call = match route {
            Route::Call(call) => call,
            Route::NotFound(reason) => {
                // Before any key check or upstream: the table has no such operation.
                debug!(request_id = rid, reason, "not an operation the gateway serves");
                return reply::resource_not_found();
            }
            Route::Healthz | Route::Readyz => return reply::resource_not_found(),
        };
        debug!(operation = call.operation.label(), "operation");
        if let Some(wait) = self.failed_auths.refused_for(peer, started) {
            debug!(request_id = rid, "client address over the failed-authentication limit");
            return reply::too_many_failed_authentications(wait);
        }
        let table = self.store.load();
        if table.version().0 == 0 {
            return reply::not_ready();
        }
        let (gateway, key) = match auth::gateway_for_key(&table, &parts.headers, rid) {
            Ok(found) => found,
            Err(refusal) => {
                self.failed_auths.record(peer, started);
                return refusal.response();
            }
        };
        Span::current().record("gateway", gateway.name.as_str());
        *gateway_name = Some(gateway.name.clone());
        if let Err(refusal) = auth::check_deployment(call, gateway, rid) {
            return refusal.response();
        }
        let body = match body::read_body(&self.limits, &parts.headers, body, rid).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let model = match call.operation.body() {
            BodyKind::Json => match probe_model(&body) {
                Ok(model) => model,
                Err(refusal) => {
                    info!(request_id = rid, reason = refusal.label(), "request body refused");
                    return reply::bad_request(&refusal.message());
                }
            },
            BodyKind::Multipart => ModelProbe::Unread,
            BodyKind::Empty if body.is_empty() => ModelProbe::Unread,
            BodyKind::Empty => {
                info!(request_id = rid, "request body where the operation takes none");
                return reply::bad_request("This operation takes no request body.");
            }
        };
        if let Err(refusal) = auth::check_model(call, &model, gateway, rid) {
            return refusal.response();
        }
        let forward_address = self.limits.forward_client_address_headers;
        let (prepared, client_identity) =
            upstream_headers(&parts.headers, request_id, forward_address);
        let query = upstream_query(parts.uri.query(), Some(key));
        // Borrowed: nothing was removed (the common case); owned or gone: something was.
        if !matches!(query, Some(Cow::Borrowed(_)))
            && parts.uri.query().is_some_and(|q| !q.is_empty())
        {
            debug!(request_id = rid, "credential parameters removed from the query");
        }
        let client_scoped_auth = client_identity
            || query.as_deref().is_some_and(|q| {
                q.split('&').any(|pair| !pair.is_empty() && !pair.starts_with("api-version="))
            });
        let mut plan = RequestPlan {
            request_id: rid,
            method: parts.method.clone(),
            call,
            query,
            client_headers: &parts.headers,
            request_id_header: request_id,
            client_address_headers: forward_address,
            prepared: Some(prepared),
            client_scoped_auth,
            body,
            model,
            trace: trace.as_deref_mut(),
        };
        let timeout = deadline::request_timeout(
            gateway.routing.request_timeout_ms,
            self.limits.request_timeout,
            &parts.headers,
        );
        debug!(timeout_ms = timeout.as_millis() as u64, "request deadline");
        self.forward(&mut plan, gateway, started + timeout).await
    }
}
