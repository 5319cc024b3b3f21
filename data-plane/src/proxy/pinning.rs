//! Pinned stateful calls on the request path (the id codec and the rewrite of answers are
//! `crate::pin`): which endpoint a call about a stored response must reach — `responses/{id}`
//! and its `cancel` and `input_items`, or a create whose `previous_response_id` continues
//! one —, the gateway's own answers when the id is not one it minted or its endpoint is gone
//! or cannot answer, and the upstream's id put back in the body.
//!
//! Everything here runs only for those calls: any other request pays one `match` on its
//! operation and one `Option` check.

use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};
use tracing::{debug, info};

use super::operations::Operation;
use super::rewrite::{ModelField, ModelProbe, splice};
use super::route::Call;
use super::{ProxyBody, reply};
use crate::balance::Candidate;
use crate::health::Unavailable;
use crate::pin::{MAX_PINNED_ID, PinTarget, PinnedId, is_id};
use crate::routing_table::{CompiledEndpoint, CompiledGateway, RoutingTable};

/// Where a pinned call goes: the member holding the response, and the response's id as the
/// upstream knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pinned {
    /// The member's place in the gateway: `groups[group].members[member]`.
    pub group: usize,
    pub member: usize,
    /// The upstream's id of the response (what its path or the body's
    /// `previous_response_id` carries upstream).
    pub upstream_id: String,
    /// The pinned id the client sent (for messages).
    pub client_id: String,
}

/// Why a pinned call is answered by the gateway itself; [`Self::response`] is the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PinRefusal {
    /// `previous_response_id` is neither a string nor `null`: 400.
    NotAString,
    /// Not an id this gateway minted, or the endpoint holding it left the gateway: 404 for a
    /// call on the response, 400 `previous_response_not_found` for a create.
    NotFound { asked: Asked, message: String },
}

impl PinRefusal {
    pub(super) fn response(&self) -> Response<ProxyBody> {
        match self {
            PinRefusal::NotAString => reply::invalid_request(
                StatusCode::BAD_REQUEST,
                "invalid_type",
                "'previous_response_id' must be a string: the id of a response created through this gateway.",
                Some("previous_response_id"),
            ),
            PinRefusal::NotFound { asked: Asked::ById, message } => {
                reply::invalid_request(StatusCode::NOT_FOUND, "NotFound", message, None)
            }
            PinRefusal::NotFound { asked: Asked::Previous, message } => reply::invalid_request(
                StatusCode::BAD_REQUEST,
                "previous_response_not_found",
                message,
                Some("previous_response_id"),
            ),
        }
    }
}

/// Which kind of call names the response: the answers differ (404 for a call on the response,
/// OpenAI's 400 `previous_response_not_found` for a create that continues it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asked {
    ById,
    Previous,
}

/// The member a call about a stored response must reach, `None` for any other call (and a
/// create without `previous_response_id`), or the gateway's own answer when the id is not one
/// this gateway minted or the endpoint holding it left the gateway. Nothing is sent upstream
/// in those cases.
pub(super) fn pinned_target(
    call: &Call<'_>,
    previous: Option<&ModelField>,
    body: &[u8],
    table: &RoutingTable,
    gateway: &CompiledGateway,
    rid: &str,
) -> Result<Option<Pinned>, PinRefusal> {
    if let Some(id) = call.object {
        return resolve(id, Asked::ById, table, gateway, rid).map(Some);
    }
    if call.operation != Operation::Responses {
        return Ok(None);
    }
    let Some(field) = previous else { return Ok(None) };
    match &field.value {
        Some(id) => resolve(id, Asked::Previous, table, gateway, rid).map(Some),
        // `null` is the API's "none".
        None if body.get(field.span.clone()) == Some(b"null") => Ok(None),
        None => {
            info!(request_id = rid, "previous_response_id is not a string");
            Err(PinRefusal::NotAString)
        }
    }
}

fn resolve(
    id: &str,
    asked: Asked,
    table: &RoutingTable,
    gateway: &CompiledGateway,
    rid: &str,
) -> Result<Pinned, PinRefusal> {
    let parsed = PinnedId::parse(id);
    let target = parsed.as_ref().map_or(PinTarget::Unknown, |pinned| {
        gateway.pins.resolve(pinned, table.endpoints_tagged(pinned.tag()))
    });
    match (target, parsed) {
        (PinTarget::Member { group, member }, Some(pinned)) => {
            debug!(
                request_id = rid,
                group, member, "call pinned to the endpoint holding the response"
            );
            Ok(Pinned {
                group,
                member,
                upstream_id: pinned.upstream().into_owned(),
                client_id: id.to_owned(),
            })
        }
        (PinTarget::Gone { endpoint }, _) => {
            info!(
                request_id = rid,
                endpoint, "the endpoint holding the response is no longer part of the gateway"
            );
            let message = format!(
                "{} '{}' is held by endpoint '{endpoint}', which is no longer part of gateway '{}'.",
                asked.noun(),
                shown(id),
                gateway.name,
            );
            Err(PinRefusal::NotFound { asked, message })
        }
        (PinTarget::Unknown | PinTarget::Member { .. }, _) => {
            debug!(request_id = rid, "not a response id minted by this gateway");
            let message = format!(
                "{} with id '{}' not found. Only responses created through this gateway can be used through it.",
                asked.noun(),
                shown(id),
            );
            Err(PinRefusal::NotFound { asked, message })
        }
    }
}

impl Asked {
    fn noun(self) -> &'static str {
        match self {
            Asked::ById => "Response",
            Asked::Previous => "Previous response",
        }
    }
}

/// A client's id as a message may quote it: only when it is an id at all.
fn shown(id: &str) -> &str {
    if id.len() <= MAX_PINNED_ID && is_id(id.as_bytes()) { id } else { "(not an id)" }
}

/// The one candidate of a pinned call: the member holding the response, whatever its health
/// says (it is the only one that can answer).
pub(super) fn candidate(gateway: &CompiledGateway, pinned: &Pinned) -> Vec<Candidate> {
    let Some(m) = gateway.groups.get(pinned.group).and_then(|g| g.members.get(pinned.member))
    else {
        return Vec::new();
    };
    vec![Candidate {
        endpoint: std::sync::Arc::clone(&m.endpoint),
        skip: None,
        short: false,
        group: pinned.group,
        member: pinned.member,
    }]
}

/// The body with the upstream's id in place of the pinned `previous_response_id`, and the
/// `model` span moved by as much if it follows it.
pub(super) fn with_upstream_previous(
    body: &Bytes,
    field: &ModelField,
    upstream_id: &str,
    model: &mut ModelProbe,
) -> Bytes {
    // An id is `[A-Za-z0-9_-]` only: quoting is all the JSON string needs.
    let mut value = Vec::with_capacity(upstream_id.len() + 2);
    value.push(b'"');
    value.extend_from_slice(upstream_id.as_bytes());
    value.push(b'"');
    let spliced = splice(body, field.span.clone(), &value);
    if let ModelProbe::Present(model) = model {
        model.span = shifted(&model.span, &field.span, value.len());
    }
    spliced
}

/// `span` after `replaced` was replaced by `len` bytes (the two never overlap: they are two
/// members' values).
fn shifted(span: &Range<usize>, replaced: &Range<usize>, len: usize) -> Range<usize> {
    if span.start < replaced.end {
        return span.clone();
    }
    let moved = |at: usize| at - replaced.len() + len;
    moved(span.start)..moved(span.end)
}

/// The answer when the endpoint holding the response could not answer: 429 with
/// `Retry-After` while it throttles, else 503 (with `Retry-After` when its recovery is
/// known). Never another endpoint's answer: no other endpoint holds the response.
pub(super) fn unavailable(
    endpoint: &CompiledEndpoint,
    pinned: &Pinned,
    why: Unavailable,
    now: Instant,
) -> Response<ProxyBody> {
    let (status, state) = if why.is_throttling() {
        (StatusCode::TOO_MANY_REQUESTS, "is throttling")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "cannot be reached right now")
    };
    let message = format!(
        "The response '{}' is held by endpoint '{}', which {state}; retry later.",
        pinned.client_id, endpoint.name,
    );
    let response = reply::azure_error(status, "PinnedEndpointUnavailable", &message);
    let wait = why
        .until()
        .map_or(std::time::Duration::from_secs(1), |until| until.saturating_duration_since(now));
    reply::with_retry_after(response, wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_span_follows_a_previous_response_id_spliced_before_it() {
        let body =
            Bytes::from_static(br#"{"previous_response_id":"resp_mgw1long_x","model":"gw"}"#);
        let probed = super::super::rewrite::probe_body(&body).expect("valid");
        let mut model = probed.model.clone();
        let field = probed.previous_response.expect("present");
        let out = with_upstream_previous(&body, &field, "resp_x", &mut model);
        assert_eq!(&out[..], br#"{"previous_response_id":"resp_x","model":"gw"}"#);
        let ModelProbe::Present(model) = model else { panic!("model") };
        assert_eq!(&out[model.span], br#""gw""#);

        let body = Bytes::from_static(br#"{"model":"gw","previous_response_id":"resp_mgw1a_b"}"#);
        let probed = super::super::rewrite::probe_body(&body).expect("valid");
        let mut model = probed.model.clone();
        let field = probed.previous_response.expect("present");
        let out = with_upstream_previous(&body, &field, "resp_b", &mut model);
        assert_eq!(&out[..], br#"{"model":"gw","previous_response_id":"resp_b"}"#);
        let ModelProbe::Present(model) = model else { panic!("model") };
        assert_eq!(&out[model.span], br#""gw""#);
    }

    #[test]
    fn only_ids_are_quoted_back() {
        assert_eq!(shown("resp_mgw1abc_1"), "resp_mgw1abc_1");
        assert_eq!(shown("resp' or \"x\""), "(not an id)");
        assert_eq!(shown(&"a".repeat(MAX_PINNED_ID + 1)), "(not an id)");
    }
}
