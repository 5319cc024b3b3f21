//! `/events/health`: server-sent events that keep every state badge on a page current without
//! a reload. Pages connect with htmx's SSE extension; each badge listens for its own event
//! (`ep-<endpoint id>`, `gw-<gateway id>`) and swaps in the HTML the event carries.
//!
//! Once a second the stream reads the endpoints and gateways through the admin API as the
//! signed-in operator (the same fleet-wide state the API serves, merged from every data
//! plane's reports) and sends the badges that changed since the last tick. A credential that is
//! revoked ends the stream at the next tick; so does the session's idle or maximum age.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::Utc;
use futures::Stream;
use futures::stream;

use crate::Console;
use crate::api::ApiCaller;
use crate::layout::state_badge;
use crate::operator::Operator;
use crate::pages::{EndpointView, GatewayView, endpoint_state_detail};
use axum::extract::State;

/// How often the stream looks for changes (the acceptance bound for a badge is 2 s).
const TICK: Duration = Duration::from_secs(1);

struct Tick {
    api: ApiCaller,
    sent: HashMap<String, String>,
    pending: Vec<Event>,
    interval: tokio::time::Interval,
    ends_at: tokio::time::Instant,
}

/// `GET /events/health`.
pub(crate) async fn health(
    State(console): State<Console>,
    op: Operator,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let now = Utc::now().timestamp();
    let settings = console.settings();
    let idle_left = settings
        .idle_timeout
        .as_secs()
        .saturating_sub((now - op.session.active).max(0).unsigned_abs());
    let age_left =
        settings.max_age.as_secs().saturating_sub((now - op.session.issued).max(0).unsigned_abs());
    let ends_at = tokio::time::Instant::now() + Duration::from_secs(idle_left.min(age_left));
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Tick { api: op.api, sent: HashMap::new(), pending: Vec::new(), interval, ends_at };
    let events = stream::unfold(state, |mut t| async move {
        loop {
            if let Some(event) = t.pending.pop() {
                return Some((Ok(event), t));
            }
            if tokio::time::Instant::now() >= t.ends_at {
                return None;
            }
            t.interval.tick().await;
            match badges(&t.api).await {
                Some(badges) => {
                    for (name, html) in badges {
                        if t.sent.get(&name) != Some(&html) {
                            t.pending.push(Event::default().event(name.clone()).data(html.clone()));
                            t.sent.insert(name, html);
                        }
                    }
                }
                // Signed out (revoked) or the API failing: end; the browser reconnects, and the
                // session guard decides.
                None => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Every badge's event name and HTML, now.
async fn badges(api: &ApiCaller) -> Option<Vec<(String, String)>> {
    let (endpoints, gateways) = match tokio::try_join!(
        api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
        api.get::<Vec<GatewayView>>("/api/v1/gateways"),
    ) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = ?e, "health stream ends");
            return None;
        }
    };
    let now = Utc::now();
    let mut out = Vec::with_capacity(endpoints.len() + gateways.len());
    for e in &endpoints {
        let badge = state_badge(&e.state, endpoint_state_detail(e, now).as_deref());
        out.push((format!("ep-{}", e.id), badge.into_string()));
    }
    for g in &gateways {
        out.push((format!("gw-{}", g.id), state_badge(&g.state, None).into_string()));
    }
    Some(out)
}
