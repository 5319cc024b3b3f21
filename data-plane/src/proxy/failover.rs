//! Failover: the gateway's candidates tried in order until one answers with something to pass
//! on, skipping members whose health refuses them; when none can, an optional wait for the
//! earliest recovery within the deadline, else an Azure-shaped 429/503 (or 504 past the
//! deadline). Also the record of it all: one line per attempt or skip, and the
//! `x-modelgw-attempts` list.
//!
//! A pinned call (`pinning.rs`) has one candidate, the member holding its response, tried
//! whatever its health says and never failed over: when it cannot answer, the client is told
//! so (429/503 `PinnedEndpointUnavailable`), not sent to a region that would answer 404.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Response, StatusCode};
use tracing::{debug, info, warn};

use super::attempt::{Outcome, Side};
use super::relay::Committed;
use super::upstream::RequestPlan;
use super::{ATTEMPTS_HEADER, Proxy, ProxyBody, Tally, pinning, reply, trace_context};
use crate::balance::Candidate;
use crate::health::{
    GatewayState, HealthEvent, HealthRegistry, RateLimits, Unavailable, gateway_state,
};
use crate::metrics::{RouteMetrics, skip_index};
use crate::routing_table::{CompiledEndpoint, CompiledGateway, CompiledMember};

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
/// Longest one request is held, in all, for a refill its quota estimate foresees when every
/// member is out by the estimate alone and the gateway does not wait for recovery: the
/// shortest `Retry-After` the gateway's 429 could say, so a client loses nothing by the hold
/// (it would have slept at least that long before retrying).
const MAX_QUOTA_HOLD: Duration = Duration::from_secs(1);

impl Proxy {
    /// Tries the gateway's candidates in order until one answers with something to pass on;
    /// when none can and the gateway asks for it, waits for the earliest recovery that fits
    /// in the deadline and tries again.
    pub(super) async fn forward(
        &self,
        plan: &mut RequestPlan<'_>,
        gateway: &CompiledGateway,
        deadline: Instant,
        tally: &mut Tally<'_>,
    ) -> Response<ProxyBody> {
        let rid = plan.request_id;
        let mut attempts = String::new();
        let mut attempt = 0u32;
        let mut round = 0u32;
        let mut quota_held = Duration::ZERO;
        loop {
            let demand = plan.demand;
            let candidates = match &plan.pinned {
                Some(pinned) => pinning::candidate(gateway, pinned),
                None => self.selector.candidates(gateway, &self.health, Instant::now(), &demand),
            };
            let mut unavailable: Vec<Unavailable> = Vec::with_capacity(candidates.len());
            for candidate in &candidates {
                let endpoint = &candidate.endpoint;
                let admitted = match candidate.skip {
                    Some(skip) => Err(skip),
                    None if plan.pinned.is_some() => {
                        Ok(self.health.admit_pinned(endpoint.id, demand.tokens, Instant::now()))
                    }
                    None => self.health.admit_for(endpoint.id, Instant::now(), &demand),
                };
                let mut admission = match admitted {
                    Ok(admission) => admission,
                    Err(skip) => {
                        if let Some(counters) = member_metrics(gateway, candidate) {
                            counters.attempt(self.shard, skip_index(skip.as_str()), false);
                        }
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
                let tried = Tried { rid, endpoint, attempt, trial: admission.is_trial() };
                let started = Instant::now();
                let span = trace_context::attempt_started(plan, endpoint, &gateway.name);
                let result = self.attempt(plan, endpoint, deadline).await;
                trace_context::attempt_finished(plan, span, endpoint, &result);
                let now = Instant::now();
                tally.waited += now - started;
                let ms = (now - started).as_millis() as u64;
                let member = member_metrics(gateway, candidate);
                let counters = member.map(|m| &**m);
                match result {
                    Ok(answer) => {
                        if let Some(counters) = counters {
                            counters.attempt(self.shard, answer.outcome.index(), false);
                            counters.time_to_first_byte(self.shard, answer.ttfb);
                        }
                        let limits = RateLimits::from_headers(&answer.headers);
                        if let (Some(quota), Some(limits)) = (endpoint.metrics.get(), &limits) {
                            quota.remaining(limits);
                        }
                        tally.served = true;
                        let event = answer.health_event();
                        let reason = event.as_ref().map_or("", HealthEvent::reason);
                        log_attempt(&tried, answer.outcome, Some(answer.status), ms, reason);
                        if let Some(event) = &event {
                            self.health.record(endpoint.id, event, now);
                        }
                        admission.finish_trial();
                        if answer.outcome == Outcome::Ok {
                            // A quick rejection says nothing about how fast it serves.
                            self.health.record_latency(endpoint.id, now - started, now);
                        }
                        let mark = admission.mark();
                        self.health.record_quota(
                            endpoint.id,
                            limits.as_ref(),
                            mark,
                            now,
                            &demand.policy,
                        );
                        note(&mut attempts, endpoint, answer.outcome.label(), ms);
                        let status = Some(answer.status.as_u16());
                        trace_attempt(tally, endpoint, status, answer.outcome.label(), ms);
                        let charge = plan.charge.take();
                        // The answer's response ids become ids pinned to this member.
                        let pin = if plan.call.operation.mints_response_ids() {
                            member_of(gateway, candidate).map(|m| m.pin.clone())
                        } else {
                            None
                        };
                        return self.pass_through(
                            plan,
                            *answer,
                            endpoint,
                            Committed {
                                admission,
                                accounting: member,
                                deadline,
                                attempts: &attempts,
                                trace: tally.trace.take(),
                                charge,
                                pin,
                            },
                        );
                    }
                    Err(error) if error.may_fail_over() => {
                        if let Some(counters) = counters {
                            counters.attempt(self.shard, error.outcome.index(), true);
                        }
                        log_attempt(&tried, error.outcome, error.status, ms, &error.reason);
                        note(&mut attempts, endpoint, error.label(), ms);
                        let status = error.status.map(|s| s.as_u16());
                        trace_attempt(tally, endpoint, status, error.label(), ms);
                        // A 429 says how much quota is left too (an error without the
                        // headers, or without an answer at all, says nothing).
                        if let Some(limits) = error.limits.as_ref() {
                            self.health.record_quota(
                                endpoint.id,
                                Some(limits),
                                admission.mark(),
                                now,
                                &demand.policy,
                            );
                        }
                        if let Some(event) = error.health_event() {
                            self.health.record(endpoint.id, &event, now);
                        }
                        let why = self.unavailable_now(endpoint, now);
                        if let Some(pinned) = &plan.pinned {
                            // No other endpoint holds the response: say so, now.
                            warn!(
                                request_id = rid,
                                endpoint = %endpoint.name,
                                attempts = %attempts,
                                "the endpoint holding the response could not answer"
                            );
                            let mut response = pinning::unavailable(endpoint, pinned, why, now);
                            if let Ok(value) = HeaderValue::from_str(&attempts) {
                                response.headers_mut().insert(ATTEMPTS_HEADER, value);
                            }
                            return response;
                        }
                        unavailable.push(why);
                    }
                    // Nothing to pass on and no other endpoint may answer: the deadline.
                    Err(error) => {
                        if let Some(counters) = counters {
                            counters.attempt(self.shard, error.outcome.index(), false);
                        }
                        log_attempt(&tried, error.outcome, error.status, ms, &error.reason);
                        note(&mut attempts, endpoint, error.label(), ms);
                        let status = error.status.map(|s| s.as_u16());
                        trace_attempt(tally, endpoint, status, error.label(), ms);
                        return self.deadline_exceeded(rid, gateway, &attempts);
                    }
                }
            }
            let now = Instant::now();
            // Endpoints held back only until their first answer are waited for whatever the
            // gateway's setting: nothing says they are out of quota.
            let first_answers = unavailable.iter().all(|u| u.awaits_first_answer());
            let for_quota = !unavailable.is_empty() && unavailable.iter().all(|u| u.is_quota());
            let recovery = unavailable
                .iter()
                .map(|u| u.until().unwrap_or(now + TRIAL_BUSY_RETRY))
                .min()
                .unwrap_or(now)
                .max(now + MIN_RECOVERY_WAIT)
                // Requests waiting for the same refill wake spread over a few ms, not as one
                // herd of which all but one wait again.
                + if for_quota { Duration::from_micros(rand::random_range(0..20_000)) } else { Duration::ZERO };
            // Every member is out by this data plane's estimate alone (no upstream said 429):
            // a refill it foresees within `MAX_QUOTA_HOLD` is waited for whatever the
            // gateway's setting, since the 429 it would answer instead says "retry after 1 s"
            // at least and the estimate may be pessimistic (a stalled process, a burst).
            let quota_hold = for_quota && quota_held + (recovery - now) <= MAX_QUOTA_HOLD;
            if (gateway.routing.wait_for_recovery || first_answers || quota_hold)
                && !unavailable.is_empty()
                && round < MAX_RECOVERY_ROUNDS
                && recovery < deadline
            {
                let wait_ms = (recovery - now).as_millis() as u64;
                if for_quota {
                    // Waiting for a refill the estimate foresees is bounded by the
                    // deadline (and `MAX_QUOTA_HOLD` when the gateway does not wait for
                    // recovery), not by rounds: each is cheap, and many requests may queue.
                    debug!(
                        request_id = rid,
                        wait_ms, "every endpoint out of quota; waiting for the refill"
                    );
                } else {
                    round += 1;
                    info!(
                        request_id = rid,
                        wait_ms, round, "no endpoint available; waiting for the earliest recovery"
                    );
                }
                tokio::time::sleep_until(recovery.into()).await;
                let waited = now.elapsed();
                tally.waited += waited;
                if for_quota {
                    quota_held += waited;
                }
                continue;
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

/// The structured line every upstream attempt gets: `warn` when the endpoint or the gateway
/// failed; `debug` when it served or the client's request was refused (the request's own
/// `info` line names the endpoint and every attempt).
fn log_attempt(
    tried: &Tried<'_>,
    outcome: Outcome,
    status: Option<StatusCode>,
    ms: u64,
    reason: &str,
) {
    let Tried { rid, endpoint, attempt, trial: half_open_trial } = *tried;
    let status = status.map(|s| s.as_u16());
    let (name, region, level) = (&endpoint.name, &endpoint.region, outcome.side());
    let outcome = outcome.label();
    if let None | Some(Side::Client) = level {
        debug!(request_id = rid, endpoint = %name, region = %region, attempt, outcome, status, ms, half_open_trial, reason, "upstream attempt");
    } else {
        warn!(request_id = rid, endpoint = %name, region = %region, attempt, outcome, status, ms, half_open_trial, reason, "upstream attempt");
    }
}

/// The line for a member that is not tried, with why and until when (`debug` for quota:
/// an endpoint out of quota is skipped by many requests; its state change has its own line).
fn log_skip(rid: &str, endpoint: &CompiledEndpoint, skip: Unavailable) {
    let wait_ms = skip.until().map(|until| until.saturating_duration_since(Instant::now()));
    let wait_ms = wait_ms.map(|w| w.as_millis() as u64);
    macro_rules! skipped {
        ($level:ident) => {
            $level!(
                request_id = rid,
                endpoint = %endpoint.name,
                region = %endpoint.region,
                reason = skip.as_str(),
                wait_ms,
                "endpoint skipped"
            )
        };
    }
    if skip.is_quota() {
        skipped!(debug);
    } else {
        skipped!(info);
    }
}

/// The counters of a candidate's (gateway, endpoint) pair, by reference (`None` with
/// metrics off).
#[inline]
fn member_metrics<'g>(
    gateway: &'g CompiledGateway,
    candidate: &Candidate,
) -> Option<&'g Arc<RouteMetrics>> {
    member_of(gateway, candidate)?.metrics.as_ref()
}

/// The gateway's member a candidate is.
#[inline]
fn member_of<'g>(
    gateway: &'g CompiledGateway,
    candidate: &Candidate,
) -> Option<&'g CompiledMember> {
    gateway.groups.get(candidate.group)?.members.get(candidate.member)
}

/// Records an attempt in the request's trace, when it has one.
#[inline]
fn trace_attempt(
    tally: &mut Tally<'_>,
    endpoint: &CompiledEndpoint,
    status: Option<u16>,
    outcome: &'static str,
    ms: u64,
) {
    if let Some(trace) = tally.trace.as_deref_mut() {
        trace.attempt(endpoint.id, status, outcome, ms);
    }
}

/// Appends `<endpoint>:<outcome>:<ms>` to the `x-modelgw-attempts` list.
#[inline]
fn note(out: &mut String, endpoint: &CompiledEndpoint, outcome: &str, ms: u64) {
    if !out.is_empty() {
        out.push(',');
    }
    let _ = write!(out, "{}:{outcome}:{ms}", endpoint.attempt_label);
}
