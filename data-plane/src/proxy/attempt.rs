//! What one upstream attempt came to (the exchange itself is in `exchange.rs`).
//!
//! The classification lives here, in one table: [`Outcome::of_status`] and
//! [`Outcome::of_request_error`] name what happened, and each [`Outcome`] knows which side it
//! lies with, whether another endpoint may be tried, and what it means for the endpoint's
//! health. The failover loop only reads those answers.
//!
//! Health accounting a client cannot poison: an answer the request itself caused (400, 404,
//! 413, 422 and every other 4xx but 401/403/429, `content_filter` included) never changes
//! the endpoint's health ([`HealthImpact::Unchanged`]), and a 401/403 marks the endpoint
//! `error` only when nothing client-controlled reached the upstream that it could authorise
//! by — with the header allowlist (which drops `openai-organization`/`-project` too) that
//! leaves the endpoint's own credential, unless the client sent query parameters besides
//! `api-version` ([`Outcome::of_status`]'s `client_scoped_auth`).
//!
//! A rejected endpoint credential is the gateway's fault, not the client's: the request goes on
//! to the next endpoint, and the upstream's 401/403 body never reaches the client (some
//! platforms' bodies carry a hint of the key, e.g. OpenAI's `sk-ab***cd`, and a 401 would
//! tell the client's SDK that *its* key is wrong). With no endpoint left the client gets the
//! gateway's own 503.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;

use super::exchange::ReadAhead;
use crate::health::{HealthEvent, RateLimits};

/// How an attempt ended: the `outcome` of its log line and its entry in `x-modelgw-attempts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// 1xx–3xx: served.
    Ok,
    /// 4xx other than 429 (401/403 only when the request carried something of the client's
    /// an upstream may authorise by): the client's problem, passed through.
    ClientError,
    /// A 5xx that another endpoint would answer the same way (501, 505, …): passed through.
    ServerErrorPassedThrough,
    /// 401/403 to a request that carried only the gateway's credential: the endpoint rejected
    /// it. Not passed through (its body may hint at the key, and the client's key is fine):
    /// the next endpoint is tried.
    CredentialRejected,
    /// 429: the endpoint's quota is used up for now.
    Throttled,
    /// 500, 502, 503, 504: the endpoint failed; another may not.
    ServerError,
    /// No connection (refused, DNS, TLS, the connect timeout).
    ConnectError,
    /// No response head (or first SSE frame, or next body chunk) within its timeout.
    Timeout,
    /// The connection failed after the request was sent (reset, protocol error), or a
    /// stream broke before its first byte.
    Transport,
    /// The request's deadline ended the attempt (not the endpoint's fault).
    Deadline,
    /// Nothing was sent: the endpoint's credential is not available (no Entra ID token yet).
    NoCredential,
}

/// Which side a failed attempt lies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// The request itself: another endpoint would refuse it too.
    Client,
    /// The gateway: its credential for the endpoint, or its deadline for the request.
    Gateway,
    /// The endpoint.
    Upstream,
}

/// Whether the request may go on to the next candidate after an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// Nothing reached the client: the next endpoint may answer instead.
    NextEndpoint,
    /// The outcome is the request's: passed through, or the deadline is spent.
    Never,
}

/// What an outcome says about the endpoint's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HealthImpact {
    /// It answered: closes a half-open endpoint.
    Answered,
    /// It throttles: skip it for the window the 429 asked for.
    Throttled,
    /// It failed: cool down with the next backoff step.
    Failed,
    /// Nothing: the attempt ended for a reason that is not the endpoint's.
    Unchanged,
}

impl Outcome {
    /// What a response head's status makes of an attempt. `client_scoped_auth`: the request
    /// carried something of the client's that the upstream may authorise by, so a 401/403
    /// may be the client's doing.
    #[inline]
    pub(super) fn of_status(status: StatusCode, client_scoped_auth: bool) -> Self {
        match status.as_u16() {
            429 => Outcome::Throttled,
            500 | 502 | 503 | 504 => Outcome::ServerError,
            401 | 403 if !client_scoped_auth => Outcome::CredentialRejected,
            400..=499 => Outcome::ClientError,
            500..=599 => Outcome::ServerErrorPassedThrough,
            _ => Outcome::Ok,
        }
    }

    /// What a request that got no response head makes of an attempt. The connector's own
    /// timeout (`upstream_connect_timeout`) is a connect error too.
    pub(super) fn of_request_error(err: &hyper_util::client::legacy::Error) -> Self {
        if err.is_connect() { Outcome::ConnectError } else { Outcome::Transport }
    }

    /// The outcome's index in `metrics::ATTEMPT_OUTCOMES` (its declaration order).
    #[inline]
    pub(super) const fn index(self) -> usize {
        self as usize
    }

    /// The outcome's name in logs and `x-modelgw-attempts` (a documented contract).
    #[inline]
    pub(super) const fn label(self) -> &'static str {
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

    /// Which side failed; `None` when nothing did.
    #[inline]
    pub(super) const fn side(self) -> Option<Side> {
        match self {
            Outcome::Ok => None,
            Outcome::ClientError => Some(Side::Client),
            Outcome::CredentialRejected | Outcome::Deadline | Outcome::NoCredential => {
                Some(Side::Gateway)
            }
            Outcome::ServerErrorPassedThrough
            | Outcome::Throttled
            | Outcome::ServerError
            | Outcome::ConnectError
            | Outcome::Timeout
            | Outcome::Transport => Some(Side::Upstream),
        }
    }

    #[inline]
    pub(super) const fn retry(self) -> Retry {
        match self {
            Outcome::Throttled
            | Outcome::ServerError
            | Outcome::ConnectError
            | Outcome::Timeout
            | Outcome::Transport
            | Outcome::CredentialRejected
            | Outcome::NoCredential => Retry::NextEndpoint,
            Outcome::Ok
            | Outcome::ClientError
            | Outcome::ServerErrorPassedThrough
            | Outcome::Deadline => Retry::Never,
        }
    }

    #[inline]
    pub(super) const fn health(self) -> HealthImpact {
        match self {
            Outcome::Ok | Outcome::ServerErrorPassedThrough => HealthImpact::Answered,
            Outcome::Throttled => HealthImpact::Throttled,
            Outcome::CredentialRejected
            | Outcome::ServerError
            | Outcome::ConnectError
            | Outcome::Timeout
            | Outcome::Transport
            | Outcome::NoCredential => HealthImpact::Failed,
            // The request caused it (another endpoint would answer the same), or the request
            // ran out of time: nothing about the endpoint.
            Outcome::ClientError | Outcome::Deadline => HealthImpact::Unchanged,
        }
    }
}

/// An attempt that produced nothing to pass on to the client.
#[derive(Debug)]
pub(super) struct AttemptError {
    pub(super) outcome: Outcome,
    /// The upstream's status, when it sent a head.
    pub(super) status: Option<StatusCode>,
    /// Why, for the attempt's log line and the endpoint's health report.
    pub(super) reason: Cow<'static, str>,
    /// The window a 429 asked for, capped (set for `Throttled` only).
    retry_after: Option<Duration>,
    /// The quota a 429 reported (`x-ratelimit-*`).
    pub(super) limits: Option<RateLimits>,
}

impl AttemptError {
    pub(super) fn new(
        outcome: Outcome,
        status: Option<StatusCode>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self { outcome, status, reason: reason.into(), retry_after: None, limits: None }
    }

    pub(super) fn throttled(
        status: StatusCode,
        retry_after: Duration,
        limits: Option<RateLimits>,
    ) -> Self {
        let reason = format!("throttled; retry after {} ms", retry_after.as_millis());
        Self {
            retry_after: Some(retry_after),
            limits,
            ..Self::new(Outcome::Throttled, Some(status), reason)
        }
    }

    pub(super) fn deadline() -> Self {
        let reason = "the request deadline passed before the answer was complete";
        Self::new(Outcome::Deadline, None, reason)
    }

    /// A wait that ran out: the deadline when it was the deadline that bound, else a timeout.
    pub(super) fn timed_out(
        by_deadline: bool,
        status: Option<StatusCode>,
        reason: impl FnOnce() -> String,
    ) -> Self {
        if by_deadline { Self::deadline() } else { Self::new(Outcome::Timeout, status, reason()) }
    }

    #[inline]
    pub(super) fn label(&self) -> &'static str {
        self.outcome.label()
    }

    /// Whether the next candidate may be tried.
    #[inline]
    pub(super) fn may_fail_over(&self) -> bool {
        self.outcome.retry() == Retry::NextEndpoint
    }

    /// What the attempt means for the endpoint's health; `None` when it says nothing.
    pub(super) fn health_event(self) -> Option<HealthEvent> {
        match self.outcome.health() {
            HealthImpact::Unchanged => None,
            HealthImpact::Answered => Some(HealthEvent::Answered),
            HealthImpact::Failed => Some(HealthEvent::Failed { reason: self.reason.into_owned() }),
            HealthImpact::Throttled => {
                // `throttled` is the only constructor of a `Throttled` error.
                let retry_after = self.retry_after.unwrap_or_default();
                Some(HealthEvent::Throttled { retry_after, reason: self.reason.into_owned() })
            }
        }
    }
}

/// An answer to pass on: head, the body frames read ahead before committing, the rest.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) ahead: ReadAhead,
    pub(super) body: Incoming,
    /// `Ok`, or an outcome that is passed through ([`Retry::Never`]).
    pub(super) outcome: Outcome,
    /// From sending the request to its response head.
    pub(super) ttfb: Duration,
}

impl Answer {
    /// What passing this answer on means for the endpoint's health: an answer the client
    /// caused says nothing (`None`), anything else it answered closes it (a rejected
    /// credential is never passed on: it is an [`AttemptError`]).
    pub(super) fn health_event(&self) -> Option<HealthEvent> {
        match self.outcome.health() {
            HealthImpact::Failed => Some(HealthEvent::Failed {
                reason: format!("credential rejected ({})", self.status),
            }),
            HealthImpact::Unchanged => None,
            HealthImpact::Answered | HealthImpact::Throttled => Some(HealthEvent::Answered),
        }
    }
}

/// A body that stopped coming before it was committed to the client: within the idle gap
/// (a timeout), or because the deadline bound (`by_deadline`).
pub(super) fn body_stalled(
    by_deadline: bool,
    status: StatusCode,
    idle: Duration,
    read: usize,
) -> AttemptError {
    AttemptError::timed_out(by_deadline, Some(status), || {
        format!("no body data for {} ms after {read} bytes", idle.as_millis())
    })
}

/// A body that broke before it was committed to the client.
pub(super) fn body_broke(status: StatusCode, read: usize, err: &hyper::Error) -> AttemptError {
    let reason =
        format!("body broke after {read} bytes, before the client got any: {}", error_chain(err));
    AttemptError::new(Outcome::Transport, Some(status), reason)
}

/// An error and its sources, `: `-joined (hyper's own message alone says little).
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
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

    /// The metrics' outcome labels are indexed by `Outcome::index`, skips after them.
    #[test]
    fn metric_outcome_labels_follow_the_outcomes() {
        use crate::health::Unavailable;
        use crate::metrics::{ATTEMPT_OUTCOMES, skip_index};
        let all = [
            Outcome::Ok,
            Outcome::ClientError,
            Outcome::ServerErrorPassedThrough,
            Outcome::CredentialRejected,
            Outcome::Throttled,
            Outcome::ServerError,
            Outcome::ConnectError,
            Outcome::Timeout,
            Outcome::Transport,
            Outcome::Deadline,
            Outcome::NoCredential,
        ];
        for outcome in all {
            assert_eq!(ATTEMPT_OUTCOMES[outcome.index()], outcome.label());
        }
        let now = std::time::Instant::now();
        for skip in [
            Unavailable::Throttling { until: now, remote: false },
            Unavailable::Throttling { until: now, remote: true },
            Unavailable::Error { until: now, remote: false },
            Unavailable::Error { until: now, remote: true },
            Unavailable::TrialBusy,
            Unavailable::Quota { until: now, first_answer: false },
        ] {
            let label = ATTEMPT_OUTCOMES[skip_index(skip.as_str())];
            assert_eq!(label, format!("skipped_{}", skip.as_str()));
        }
    }

    /// (status, label, side, retry, health): every family and the statuses singled out.
    #[test]
    fn statuses_classify_by_label_side_retry_and_health() {
        use HealthImpact::{Answered, Failed, Throttled, Unchanged};
        use Retry::{Never, NextEndpoint};
        use Side::{Client, Gateway, Upstream};
        let table = [
            (100, "ok", None, Never, Answered),
            (200, "ok", None, Never, Answered),
            (204, "ok", None, Never, Answered),
            (302, "ok", None, Never, Answered),
            (400, "client_error", Some(Client), Never, Unchanged),
            (404, "client_error", Some(Client), Never, Unchanged),
            (413, "client_error", Some(Client), Never, Unchanged),
            (422, "client_error", Some(Client), Never, Unchanged),
            (401, "credential_rejected", Some(Gateway), NextEndpoint, Failed),
            (403, "credential_rejected", Some(Gateway), NextEndpoint, Failed),
            (429, "throttled", Some(Upstream), NextEndpoint, Throttled),
            (500, "server_error", Some(Upstream), NextEndpoint, Failed),
            (502, "server_error", Some(Upstream), NextEndpoint, Failed),
            (503, "server_error", Some(Upstream), NextEndpoint, Failed),
            (504, "server_error", Some(Upstream), NextEndpoint, Failed),
            (501, "server_error_passed_through", Some(Upstream), Never, Answered),
            (505, "server_error_passed_through", Some(Upstream), Never, Answered),
            (599, "server_error_passed_through", Some(Upstream), Never, Answered),
        ];
        for (code, label, side, retry, health) in table {
            let outcome = Outcome::of_status(StatusCode::from_u16(code).expect("status"), false);
            assert_eq!(
                (outcome.label(), outcome.side(), outcome.retry(), outcome.health()),
                (label, side, retry, health),
                "{code}"
            );
        }
    }

    /// A 401/403 to a request carrying something of the client's the upstream may authorise
    /// by (a query parameter besides `api-version`) may be the client's doing: passed
    /// through, health unchanged.
    #[test]
    fn a_401_the_client_may_have_caused_leaves_health_alone() {
        for code in [401u16, 403] {
            let outcome = Outcome::of_status(StatusCode::from_u16(code).expect("status"), true);
            assert_eq!(outcome, Outcome::ClientError, "{code}");
            assert_eq!(outcome.health(), HealthImpact::Unchanged);
            assert_eq!(outcome.retry(), Retry::Never);
        }
        for code in [429u16, 500, 503] {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(Outcome::of_status(status, true), Outcome::of_status(status, false));
        }
    }

    #[test]
    fn failures_without_an_answer_classify_by_label_side_retry_and_health() {
        use HealthImpact::{Failed, Unchanged};
        use Retry::{Never, NextEndpoint};
        use Side::{Gateway, Upstream};
        let table = [
            (Outcome::ConnectError, "connect_error", Upstream, NextEndpoint, Failed),
            (Outcome::Timeout, "timeout", Upstream, NextEndpoint, Failed),
            (Outcome::Transport, "transport_error", Upstream, NextEndpoint, Failed),
            (Outcome::NoCredential, "no_credential", Gateway, NextEndpoint, Failed),
            (Outcome::Deadline, "deadline", Gateway, Never, Unchanged),
        ];
        for (outcome, label, side, retry, health) in table {
            assert_eq!(
                (outcome.label(), outcome.side(), outcome.retry(), outcome.health()),
                (label, Some(side), retry, health),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn a_wait_that_runs_out_is_a_timeout_unless_the_deadline_bound() {
        let ok = Some(StatusCode::OK);
        let timeout = AttemptError::timed_out(false, ok, || "no stream data within 5 ms".into());
        assert_eq!((timeout.label(), timeout.status), ("timeout", ok));
        assert!(timeout.may_fail_over());
        assert_eq!(
            timeout.health_event(),
            Some(HealthEvent::Failed { reason: "no stream data within 5 ms".into() })
        );
        let deadline = AttemptError::timed_out(true, ok, || unreachable!("no reason is built"));
        assert_eq!((deadline.label(), deadline.status), ("deadline", None));
        assert!(!deadline.may_fail_over());
        assert_eq!(deadline.health_event(), None);
    }

    #[test]
    fn a_429_throttles_for_the_window_it_asked_for() {
        let throttled =
            AttemptError::throttled(StatusCode::TOO_MANY_REQUESTS, Duration::from_secs(6), None);
        assert_eq!(throttled.reason, "throttled; retry after 6000 ms");
        assert_eq!(
            throttled.health_event(),
            Some(HealthEvent::Throttled {
                retry_after: Duration::from_secs(6),
                reason: "throttled; retry after 6000 ms".into()
            })
        );
    }

    #[test]
    fn a_body_that_stops_before_it_is_committed_fails_over() {
        let idle = Duration::from_millis(5);
        let stalled = body_stalled(false, StatusCode::OK, idle, 3);
        assert_eq!((stalled.label(), stalled.status), ("timeout", Some(StatusCode::OK)));
        assert_eq!(stalled.reason, "no body data for 5 ms after 3 bytes");
        assert!(stalled.may_fail_over());
        assert_eq!(body_stalled(true, StatusCode::OK, idle, 3).label(), "deadline");
    }

    /// Real request errors from the upstream client: a refused connection and a connection
    /// closed before any answer.
    #[tokio::test]
    async fn request_errors_classify_as_connect_or_transport() {
        use crate::proxy::upstream_client::{ClientSettings, UpstreamBody, build, tls_config};
        use http::Request;
        let settings = ClientSettings {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(1),
            tcp_keepalive: Duration::from_secs(30),
            egress: crate::proxy::egress::EgressPolicy { allow_loopback: true },
        };
        let client = build(settings, tls_config().expect("platform roots"));
        let send = |addr: std::net::SocketAddr| {
            let mut request = Request::new(UpstreamBody::default());
            *request.uri_mut() = format!("http://{addr}/").parse().expect("uri");
            client.request(request)
        };

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let err = send(addr).await.expect_err("refused");
        let outcome = Outcome::of_request_error(&err);
        assert_eq!((outcome.label(), outcome.side()), ("connect_error", Some(Side::Upstream)));
        assert_eq!(outcome.retry(), Retry::NextEndpoint);

        let hangs_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = hangs_up.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (socket, _) = hangs_up.accept().await.expect("accept");
            drop(socket);
        });
        let err = send(addr).await.expect_err("closed before an answer");
        server.await.expect("server");
        let outcome = Outcome::of_request_error(&err);
        assert_eq!((outcome.label(), outcome.side()), ("transport_error", Some(Side::Upstream)));
        assert_eq!(outcome.retry(), Retry::NextEndpoint);
    }
}
