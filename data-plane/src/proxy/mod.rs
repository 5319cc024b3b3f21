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
//! Where each step lives, in the order a request meets them: `route` (what it asks for),
//! `auth` (which gateway it may use), `body` (its body, read once), `deadline` (its budget),
//! `failover` (candidates in order, recovery waits, the 429/503/504 answers), `exchange` (one
//! request to an endpoint, up to the moment its answer may be committed), `attempt` (what it
//! came to: `Outcome`, `AttemptError`), `upstream` + `rewrite` (the request each endpoint
//! gets), `upstream_client` (the pooled hyper client), `relay` (streaming a committed answer),
//! `reply` (the gateway's own answers), `access_log` (the line per request), `server` (the
//! listener and its threads).

mod access_log;
mod attempt;
mod auth;
mod body;
mod deadline;
mod exchange;
mod failover;
mod relay;
mod reply;
mod rewrite;
mod route;
pub(crate) mod server;
mod upstream;
pub(crate) mod upstream_client;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tracing::{Instrument, Span, debug, field};

use crate::balance::EndpointSelector;
use crate::health::HealthRegistry;
use crate::routing_table::SnapshotStore;
use rewrite::probe_model;
use route::{Route, parse_route};
use upstream::{CLIENT_REQUEST_ID, RequestPlan, upstream_headers};

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
}

/// Shared state of the request path.
pub(crate) struct Proxy {
    pub store: Arc<SnapshotStore>,
    pub health: Arc<HealthRegistry>,
    pub selector: Arc<dyn EndpointSelector>,
    pub http: upstream_client::UpstreamClient,
    pub entra: Arc<crate::entra::EntraTokens>,
    pub limits: Limits,
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
        let mut gateway = None;
        let mut response = self
            .serve(&parts, body, route, &request_id, started, &mut gateway)
            .instrument(span.clone())
            .await;
        response.headers_mut().entry(CLIENT_REQUEST_ID).or_insert(request_id);
        let ms = started.elapsed().as_millis() as u64;
        access_log::log_request(&span, &parts, gateway.as_deref(), &response, ms);
        response
    }

    /// Everything between the request's head and its answer: the gateway it may use, its
    /// body, its deadline, then failover across the gateway's endpoints.
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
        let gateway = match auth::gateway_for_key(&table, &parts.headers, rid) {
            Ok(gateway) => gateway,
            Err(refusal) => return refusal.response(),
        };
        Span::current().record("gateway", gateway.name.as_str());
        *gateway_name = Some(gateway.name.clone());
        if let Err(refusal) = auth::check_deployment(route, gateway, rid) {
            return refusal.response();
        }
        let body = match body::read_body(&self.limits, &parts.headers, body, rid).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let model = probe_model(&body);
        if let Err(refusal) = auth::check_model(route, &model, gateway, rid) {
            return refusal.response();
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
        let timeout = deadline::request_timeout(
            gateway.routing.request_timeout_ms,
            self.limits.request_timeout,
            &parts.headers,
        );
        debug!(timeout_ms = timeout.as_millis() as u64, "request deadline");
        self.forward(&mut plan, gateway, started + timeout).await
    }
}
