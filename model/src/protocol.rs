//! The control-plane ↔ data-plane protocol in domain form: every message on the `Stream`
//! (`proto/modelgw/config/v1/config.proto`) as a plain type. Only `wire` (feature `wire`)
//! converts between these and the generated types; everything else speaks these.
//!
//! One health fact has one shape end to end: a data plane reports [`EndpointHealth`] entries
//! in a [`HealthReport`], the control plane aggregates them and pushes the same entries back
//! to every data plane in [`FleetHealth`].

use std::sync::Arc;
use std::time::SystemTime;

pub use crate::keys::{KeyUsage, LeaseGrant, Leases, UsageReport};
use crate::limits::{MAX_NODE_ID_CHARS, MAX_REASON_CHARS, truncate_chars};
pub use crate::quota::{EndpointSpend, FleetQuota, FleetSpend, QuotaReport};
pub use crate::stats::StatsReport;
pub use crate::traces::{RequestTrace, TraceAttempt, TraceBatch};
use crate::{ConfigVersion, EndpointId, EndpointState, NodeId, Snapshot};

/// What a data plane sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataPlaneMessage {
    /// The first message of every stream.
    Hello(Hello),
    /// The snapshot at `version` is applied (or was already).
    Ack { version: ConfigVersion },
    /// The snapshot at `version` was rejected; the data plane keeps its last good one.
    Nack(Nack),
    /// Still alive, serving `applied_version`.
    Heartbeat { applied_version: ConfigVersion },
    /// Endpoint health changes as this data plane sees them.
    Health(HealthReport),
    /// Traffic served since the previous statistics report (deltas).
    Stats(StatsReport),
    /// What this instance charged to limited keys (cumulative per window).
    Usage(UsageReport),
    /// Request traces of gateways that record them.
    Traces(TraceBatch),
    /// What this data plane sent to each endpoint over its last interval.
    Quota(QuotaReport),
}

/// What the control plane sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlPlaneMessage {
    /// The whole configuration at one version.
    Snapshot(Arc<Snapshot>),
    /// The fleet's aggregate of every data plane's health reports.
    FleetHealth(FleetHealth),
    /// Budget for this instance's limited keys.
    Leases(Leases),
    /// What the fleet sends each endpoint, for this data plane's share of its quota.
    FleetQuota(FleetQuota),
}

/// Opens a stream: who the data plane is and what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// 1..=[`MAX_NODE_ID_CHARS`] printable characters (see [`valid_node_id`]).
    pub node_id: NodeId,
    /// `ConfigVersion(0)` when it serves nothing yet.
    pub applied_version: ConfigVersion,
    /// The data plane's build, for operators; at most `MAX_BUILD_VERSION_CHARS` kept.
    pub build_version: String,
    /// Random, drawn once per process start; `None` (0 on the wire) from a data plane that
    /// enforces no key limits. Usage and leases belong to an instance.
    pub instance: Option<std::num::NonZeroU64>,
}

/// A rejected snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    pub version: ConfigVersion,
    /// Names the field, never a secret; at most [`MAX_REASON_CHARS`] kept.
    pub reason: String,
}

/// One endpoint's health as one data plane (in a report) or the fleet (in fleet health) sees
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointHealth {
    pub endpoint_id: EndpointId,
    pub state: EndpointState,
    /// Until when the endpoint should not be used (throttling / error); `None` when healthy
    /// or unknown.
    pub until: Option<SystemTime>,
    /// Short, secret-free description of the last failure; at most [`MAX_REASON_CHARS`].
    pub reason: Option<String>,
}

/// A data plane's health changes. Decoding keeps every readable entry: one malformed entry
/// must not cost the others, so it is listed in `skipped` instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthReport {
    pub endpoints: Vec<EndpointHealth>,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<InvalidMessage>,
}

/// Endpoints currently unavailable somewhere in the fleet (healthy ones are omitted), sorted
/// by endpoint id so that equal states compare equal. Decoded like [`HealthReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetHealth {
    pub endpoints: Vec<EndpointHealth>,
    /// Operator health resets still relevant to a data plane, sorted by endpoint id.
    pub resets: Vec<HealthReset>,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<InvalidMessage>,
}

/// An operator cleared an endpoint's health at `at`: every report received before it stops
/// counting, and each data plane forgets the local window it opened before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthReset {
    pub endpoint_id: EndpointId,
    pub at: SystemTime,
}

/// Why a protocol message (or one entry of it) could not be read. Names the message and the
/// field; `reason` never quotes more than a bounded, sanitised part of the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}.{field}: {reason}")]
pub struct InvalidMessage {
    pub message: &'static str,
    pub field: String,
    pub reason: String,
}

impl InvalidMessage {
    pub fn new(
        message: &'static str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> InvalidMessage {
        InvalidMessage { message, field: field.into(), reason: reason.into() }
    }
}

/// Whether `id` is a usable node id: 1..=[`MAX_NODE_ID_CHARS`] characters, none of them a
/// control character (it is logged and shown to operators).
pub fn valid_node_id(id: &str) -> bool {
    let chars = id.chars().count();
    (1..=MAX_NODE_ID_CHARS).contains(&chars) && !id.chars().any(char::is_control)
}

/// A reason from a data plane as the control plane keeps it: `None` when empty, else cut to
/// [`MAX_REASON_CHARS`].
pub fn bounded_reason(reason: &str) -> Option<String> {
    (!reason.is_empty()).then(|| truncate_chars(reason, MAX_REASON_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_bounded_and_printable() {
        assert!(valid_node_id("dp-1.example.internal"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("dp\n2026-12-06T00:00:00Z INFO forged"));
        assert!(valid_node_id(&"a".repeat(253)));
        assert!(!valid_node_id(&"a".repeat(254)));
    }

    #[test]
    fn reasons_are_cut_at_512_characters() {
        assert_eq!(bounded_reason(""), None);
        let long = "x".repeat(600);
        let kept = bounded_reason(&long).expect("some");
        assert_eq!(kept.chars().count(), 513, "512 characters and the cut mark");
        assert!(kept.ends_with('…'));
    }
}
