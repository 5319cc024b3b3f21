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
//! `auth` (which gateway it may use; `models` answers the model list itself), `body` (its
//! body, read once), `rewrite` + `multipart` (its `model`, read strictly from JSON or a
//! form), `deadline` (its budget), `pinning` (a call about a stored response: the endpoint
//! holding it, or the gateway's own answer), `failover` (candidates in order, recovery waits,
//! the 429/503/504 answers), `exchange` (one request to an endpoint, up to the moment its
//! answer may be committed), `attempt` (what it came to: `Outcome`, `AttemptError`),
//! `upstream` + `rewrite` (the request each endpoint gets), `upstream_client` (the pooled
//! hyper client, its connect-time address guard in `egress`),
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
pub(crate) mod models;
mod multipart;
pub(crate) mod operations;
mod pinning;
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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tracing::{Instrument, Span, debug, field, info};

use crate::balance::EndpointSelector;
use crate::health::HealthRegistry;
use crate::limits::{self, OutputCap};
use crate::metrics::{GatewayMetrics, Local, Metrics};
use crate::routing_table::{CompiledKey, SnapshotStore};
use models::ModelById;
use operations::{BodyKind, Operation, Surface};
use rewrite::{ModelProbe, ProbedBody, StreamUsage, probe_body};
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
    /// What the request path counts (shared by every serving thread).
    pub metrics: Arc<Metrics>,
    /// This serving thread's shard of every counter (its index among the serving threads).
    pub shard: usize,
    /// Spans for requests and attempts (`trace_context`); `None`: tracing off, no cost.
    pub tracer: Option<trace_context::RequestTracer>,
    /// Where the request traces of gateways that record them go (`crate::traces`).
    pub traces: Arc<crate::traces::TraceQueue>,
    /// Whether the data plane is draining (shutting down): `/readyz` then fails.
    pub lifecycle: Arc<crate::shutdown::Lifecycle>,
}

/// What a request's accounting needs, filled in as it goes; recorded once its answer's head
/// is ready.
#[derive(Default)]
pub(super) struct Tally<'t> {
    /// The gateway's counters, once the key named it (and metrics are on); borrowed from the
    /// routing table the request holds.
    gateway: Option<&'t GatewayMetrics>,
    /// The request's key, once known: its limits' headers go on the answer.
    key: Option<&'t CompiledKey>,
    /// Why the gateway answered itself, where the status alone does not say.
    local: Option<Local>,
    /// An endpoint's answer was passed on (not a local answer).
    served: bool,
    /// Time spent waiting on others: the client's body, upstream attempts, recovery waits.
    waited: Duration,
    /// The request's trace, when its gateway records them; taken by the answer that ends it
    /// (`pass_through`), else ended with the gateway's own answer.
    trace: Option<Box<crate::traces::TraceRecorder>>,
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
        let mut body = Some(body);
        let route = parse_route(&parts.method, parts.uri.path());
        match route {
            Route::Healthz => return reply::text(StatusCode::OK, "ok\n"),
            Route::Readyz => {
                // Draining first: a balancer must stop sending here even with a snapshot.
                if self.lifecycle.is_draining() {
                    return reply::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
                }
                return match self.store.stale() {
                    // Serving, so ready; the body says the configuration may be out of date.
                    Some(origin) => reply::text(
                        StatusCode::OK,
                        format!(
                            "ready (stale snapshot from disk, version {}, age {} s)\n",
                            self.store.version().0,
                            origin.age().as_secs()
                        ),
                    ),
                    None if self.store.is_ready() => reply::text(StatusCode::OK, "ready\n"),
                    None => reply::text(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet\n"),
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
        let mut tally = Tally::default();
        let table = self.store.load();
        // Boxed: the request's future (body read, failover, upstream exchange) is kilobytes,
        // and unboxed every future around it — up to the one hyper stores per request — has
        // its size and is copied whole when it is created and moved; one allocation is cheaper.
        let mut response = Box::pin(
            self.serve(
                &parts,
                &mut body,
                Context { route, peer, request_id: &request_id, started, table: &table },
                &mut gateway,
                &mut tally,
                &mut trace,
            )
            .instrument(span.clone()),
        )
        .await;
        if let Some(unread) = body.take() {
            // Refused before its body was needed (a wrong key, an unserved path…).
            body::discard(unread, &self.limits);
        }
        if let Some(trace) = tally.trace.take() {
            trace.finish_local(response.status().as_u16());
        }
        if self.metrics.enabled() {
            let counters = tally.gateway.unwrap_or(&self.metrics.unrouted);
            if !tally.served {
                let status = response.status().as_u16();
                let why = tally.local.unwrap_or_else(|| Local::of_status(status));
                counters.local(self.shard, why);
            }
            counters.overhead(self.shard, started.elapsed().saturating_sub(tally.waited));
        }
        if let Some(chain) = tally.key.and_then(|key| key.chain.as_ref()) {
            crate::limits::set_headers(chain, response.headers_mut());
        }
        response.headers_mut().entry(CLIENT_REQUEST_ID).or_insert(request_id);
        let ms = started.elapsed().as_millis() as u64;
        access_log::log_request(&span, &parts, gateway.as_deref(), &response, ms);
        trace_context::finish(trace, gateway.as_deref(), response)
    }

    /// Everything between the request's head and its answer: the gateway it may use, its
    /// body, its deadline, then failover across the gateway's endpoints.
    async fn serve<'t>(
        &self,
        parts: &Parts,
        body: &mut Option<Incoming>,
        context: Context<'_, 't>,
        gateway_name: &mut Option<String>,
        tally: &mut Tally<'t>,
        trace: &mut Option<Box<trace_context::RequestTrace>>,
    ) -> Response<ProxyBody> {
        let Context { route, peer, request_id, started, table } = context;
        // Lines logged before the answer carry the request id themselves: the `request` span
        // is debug-level, so at `info` they have no span context.
        let rid = request_id.to_str().unwrap_or_default();
        // Under `/openai/` what the table does not serve (`Err`) is answered only once the key
        // is known: a wrong key gets 401 there, as on the operations it serves.
        let call: Result<route::Call<'_>, &'static str> = match route {
            Route::Call(call) => Ok(call),
            Route::NotFound(reason) if route::authenticates_first(parts.uri.path()) => Err(reason),
            Route::NotFound(reason) => {
                // Before any key check or upstream: the table has no such operation.
                debug!(request_id = rid, reason, "not an operation the gateway serves");
                return reply::resource_not_found();
            }
            Route::Healthz | Route::Readyz => return reply::resource_not_found(),
        };
        if let Ok(call) = call {
            debug!(operation = call.operation.label(), "operation");
        }
        if let Some(wait) = self.failed_auths.refused_for(peer, started) {
            debug!(request_id = rid, "client address over the failed-authentication limit");
            tally.local = Some(Local::AuthLimited);
            return reply::too_many_failed_authentications(wait);
        }
        if table.version().0 == 0 {
            tally.local = Some(Local::NotReady);
            return reply::not_ready();
        }
        let (gateway, compiled_key, key) = match auth::gateway_for_key(table, &parts.headers, rid) {
            Ok(found) => found,
            Err(refusal) => {
                self.failed_auths.record(peer, started);
                if self.metrics.enabled() {
                    self.metrics.failed_authentications.fetch_add(1, Ordering::Relaxed);
                }
                return refusal.response();
            }
        };
        tally.gateway = gateway.metrics.as_deref();
        tally.key = Some(compiled_key);
        let call = match call {
            Ok(call) => call,
            Err(reason) => {
                Span::current().record("gateway", gateway.name.as_str());
                *gateway_name = Some(gateway.name.clone());
                return unserved_answer(parts, gateway, reason, rid, tally);
            }
        };
        if let Some(traces) = &gateway.traces {
            let start = crate::traces::TraceStart {
                gateway_id: gateway.id,
                key_id: compiled_key.id,
                operation: call.operation.label(),
                request_id: rid,
                client_request_id: parts.headers.get(CLIENT_REQUEST_ID),
                started,
            };
            tally.trace = Some(crate::traces::TraceRecorder::start(&self.traces, traces, start));
        }
        Span::current().record("gateway", gateway.name.as_str());
        *gateway_name = Some(gateway.name.clone());
        if let Err(refusal) = auth::check_deployment(call, gateway, rid) {
            return refusal.response();
        }
        let Some(incoming) = body.take() else { return reply::bad_body() };
        let reading = Instant::now();
        let body = body::read_body(&self.limits, &parts.headers, incoming, rid).await;
        tally.waited += reading.elapsed();
        let mut body = match body {
            Ok(body) => body,
            Err(response) => return response,
        };
        let unread = ProbedBody {
            model: ModelProbe::Unread,
            stream_usage: StreamUsage::NotStreamed,
            cap: OutputCap::default(),
            previous_response: None,
        };
        let ProbedBody { mut model, stream_usage, cap, previous_response } =
            match call.operation.body() {
                BodyKind::Json => match probe_body(&body) {
                    Ok(probed) => probed,
                    Err(refusal) => {
                        info!(request_id = rid, reason = refusal.label(), "request body refused");
                        return reply::bad_request(&refusal.message());
                    }
                },
                // A form's `model` part, read as strictly as JSON's `model` and under the same
                // rules: checked where it names the deployment, rewritten where `body()` says.
                BodyKind::Multipart => match multipart::probe_form(&parts.headers, &body) {
                    Ok(model) => ProbedBody { model, ..unread },
                    Err(refusal) => {
                        info!(request_id = rid, reason = refusal.label(), "request form refused");
                        return reply::bad_request(&refusal.message());
                    }
                },
                BodyKind::Empty if body.is_empty() => unread,
                BodyKind::Empty => {
                    info!(request_id = rid, "request body where the operation takes none");
                    return reply::bad_request("This operation takes no request body.");
                }
            };
        if call.operation == Operation::Models {
            // The gateway's own list: no upstream, no key limit (it costs nothing).
            debug!(request_id = rid, "models listed by the gateway");
            tally.local = Some(Local::Models);
            return gateway.models.list(call.surface);
        }
        if let Some(trace) = tally.trace.as_deref_mut() {
            let asked = match &model {
                ModelProbe::Present(field) => field.value.as_deref(),
                ModelProbe::Unread | ModelProbe::Absent => None,
            };
            trace.request(&body, asked, stream_usage != StreamUsage::NotStreamed);
        }
        if let Err(refusal) = auth::check_model(call, &model, gateway, rid) {
            return refusal.response();
        }
        // A call about a stored response goes to the endpoint holding it, or nowhere.
        let pinned = match pinning::pinned_target(
            &call,
            previous_response.as_ref(),
            &body,
            table,
            gateway,
            rid,
        ) {
            Ok(pinned) => pinned,
            Err(refusal) => return refusal.response(),
        };
        if let (Some(pinned), Some(field)) = (&pinned, &previous_response) {
            body = pinning::with_upstream_previous(&body, field, &pinned.upstream_id, &mut model);
        }
        let body_len = body.len();
        let policy = &gateway.key_limits;
        let charge = match limits::admit_request(
            compiled_key,
            policy,
            call.operation,
            body.len(),
            &cap,
            rid,
        ) {
            Ok(charge) => charge,
            Err(refusal) => {
                tally.local = Some(Local::KeyLimit);
                return reply::key_limit_reached(&refusal);
            }
        };
        // Streams count their tokens from the usage chunk: ask for it when the client did
        // not (and the API version knows `stream_options`), and take it out again on the way
        // back (`strip_usage`) — for the metrics, the key's limits and the request's trace.
        let strip_usage = stream_usage == StreamUsage::Unrequested
            && (gateway.metrics.is_some()
                || tally.trace.is_some()
                || charge.as_ref().is_some_and(limits::Ticket::limited))
            && call.operation.takes_stream_options()
            && stream_options_supported(call.surface, parts.uri.query());
        if strip_usage {
            debug!(request_id = rid, "asking the upstream for the stream's usage");
            body = crate::metrics::usage::request_usage(&body);
        }
        let forward_address = self.limits.forward_client_address_headers;
        let prepared = upstream_headers(&parts.headers, request_id, forward_address);
        let query = upstream_query(parts.uri.query(), Some(key));
        // Borrowed: nothing was removed (the common case); owned or gone: something was.
        if !matches!(query, Some(Cow::Borrowed(_)))
            && parts.uri.query().is_some_and(|q| !q.is_empty())
        {
            debug!(request_id = rid, "credential parameters removed from the query");
        }
        // Query parameters besides `api-version` may be something the upstream authorises by:
        // a 401/403 is then possibly the client's doing (`Outcome::of_status`).
        let client_scoped_auth = query.as_deref().is_some_and(|q| {
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
            strip_usage,
            started,
            trace: trace.as_deref_mut(),
            charge,
            pinned,
            demand: crate::health::Demand {
                tokens: limits::reservation(call.operation, body_len, &cap, &gateway.key_limits)
                    .total_tokens,
                policy: gateway.routing.quota,
            },
        };
        let timeout = deadline::request_timeout(
            gateway.routing.request_timeout_ms,
            self.limits.request_timeout,
            &parts.headers,
        );
        debug!(timeout_ms = timeout.as_millis() as u64, "request deadline");
        let response = self.forward(&mut plan, gateway, started + timeout, tally).await;
        // Still here: no answer was passed on, the gateway answered itself.
        if let Some(charge) = plan.charge.take() {
            charge.settle_error();
        }
        response
    }
}

/// The answer to a path under `/openai/` the operations table does not serve, once the key
/// named a gateway: `…/models/{id}` for the two names a key may use, else Azure's 404.
fn unserved_answer(
    parts: &Parts,
    gateway: &crate::routing_table::CompiledGateway,
    reason: &'static str,
    rid: &str,
    tally: &mut Tally<'_>,
) -> Response<ProxyBody> {
    match gateway.models.model(&parts.method, parts.uri.path()) {
        Some(ModelById::Found(response)) => {
            debug!(request_id = rid, "model described by the gateway");
            tally.local = Some(Local::Models);
            response
        }
        Some(ModelById::Unknown) => {
            debug!(request_id = rid, "model id is neither auto nor the gateway");
            reply::deployment_not_found()
        }
        None => {
            debug!(request_id = rid, reason, "not an operation the gateway serves");
            reply::resource_not_found()
        }
    }
}

/// What `serve` is given about the request besides its head and body.
struct Context<'r, 't> {
    route: Route<'r>,
    peer: Option<IpAddr>,
    request_id: &'r HeaderValue,
    started: Instant,
    /// The routing table, loaded once for the whole request.
    table: &'t crate::routing_table::RoutingTable,
}

/// Whether the request's API version accepts `stream_options` (Azure added it in
/// `2024-09-01-preview`; older versions refuse unknown parameters). The v1 surface always
/// does.
fn stream_options_supported(surface: Surface, query: Option<&str>) -> bool {
    if surface == Surface::V1 {
        return true;
    }
    let version =
        query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("api-version=")));
    // Dated versions compare as text: `YYYY-MM-DD` with an optional `-preview`.
    version.is_some_and(|v| v.get(..10).is_some_and(|date| date >= "2024-09-01"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_are_sent_only_to_api_versions_that_know_them() {
        let dated = |q| stream_options_supported(Surface::Dated, Some(q));
        assert!(dated("api-version=2024-10-21"));
        assert!(dated("api-version=2024-09-01-preview"));
        assert!(dated("foo=1&api-version=2025-04-01-preview"));
        assert!(!dated("api-version=2024-06-01"));
        assert!(!dated("api-version=2024-08-01-preview"));
        assert!(!dated("api-version=preview"));
        assert!(!stream_options_supported(Surface::Dated, None));
        assert!(stream_options_supported(Surface::V1, None));
    }
}
