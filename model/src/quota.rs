//! Quota-aware routing: a gateway's `routing.quota` settings, and the messages through which
//! data planes share what they spend on each endpoint so that N replicas do not each spend
//! the same remaining quota (issue #18; ARCHITECTURE.md, "Quota-aware routing").
//!
//! Flow: every data plane sends a [`QuotaReport`] about once a second with what it sent to
//! each endpoint over its last few report intervals (requests and estimated tokens; each
//! report replaces the previous one); the control plane sums
//! the recent reports per endpoint and pushes [`FleetQuota`] to every data plane at most
//! once a second; each data plane takes `own rate / fleet rate` as its share of an endpoint's
//! refill. Staleness: one report interval plus one push interval (≤ 2 s).

use crate::EndpointId;
use crate::protocol::InvalidMessage;

/// Most entries in one [`QuotaReport`] or [`FleetQuota`]; a data plane with more active
/// endpoints sends its busiest, the control plane pushes the busiest. Bounds a message at
/// ~300 KiB whatever a peer sends.
pub const MAX_QUOTA_ENTRIES: usize = 4096;

/// Most requests per minute one data plane can claim for one endpoint (a hostile or broken
/// report cannot push every other data plane's share to zero beyond what this allows).
pub const MAX_REPORTED_REQUESTS_PER_MIN: u64 = 10_000_000;

/// Most tokens per minute one data plane can claim for one endpoint.
pub const MAX_REPORTED_TOKENS_PER_MIN: u64 = 10_000_000_000;

/// How data planes read and spend the quota their endpoints report in `x-ratelimit-*`
/// headers. The default is what Azure's standard deployments need; `enabled: false` is the
/// reactive router (429s and `Retry-After` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaPolicy {
    /// Spread a priority group's traffic by each member's estimated remaining quota, and skip
    /// a member only when this request would not fit in it.
    pub enabled: bool,
    /// The period over which an endpoint's request limit refills, when its answers carry no
    /// `x-ratelimit-reset-requests`: 10 s, Azure's `renewalPeriod` for requests.
    pub request_window_secs: u32,
    /// The same for tokens (`x-ratelimit-reset-tokens`): 60 s, Azure's `renewalPeriod` for
    /// tokens.
    pub token_window_secs: u32,
    /// Percent of each endpoint's quota never planned for (0–50): room for other clients of
    /// the same deployment outside the gateway.
    pub reserve_percent: u8,
}

impl QuotaPolicy {
    /// Azure's request renewal period (ARM `rateLimits[key=request].renewalPeriod`).
    pub const DEFAULT_REQUEST_WINDOW_SECS: u32 = 10;
    /// Azure's token renewal period (ARM `rateLimits[key=token].renewalPeriod`).
    pub const DEFAULT_TOKEN_WINDOW_SECS: u32 = 60;
    /// Accepted windows: a second to a day.
    pub const WINDOW_SECS_RANGE: std::ops::RangeInclusive<u32> = 1..=86_400;
    /// Accepted reserves.
    pub const RESERVE_PERCENT_RANGE: std::ops::RangeInclusive<u8> = 0..=50;
}

impl Default for QuotaPolicy {
    fn default() -> Self {
        QuotaPolicy {
            enabled: true,
            request_window_secs: Self::DEFAULT_REQUEST_WINDOW_SECS,
            token_window_secs: Self::DEFAULT_TOKEN_WINDOW_SECS,
            reserve_percent: 0,
        }
    }
}

/// What one data plane sent to endpoints over the span it reports (its last few report
/// intervals).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaReport {
    /// The span the counts cover, in milliseconds (1..=60,000).
    pub interval_ms: u32,
    /// Endpoints sent to in the interval (at most [`MAX_QUOTA_ENTRIES`]).
    pub endpoints: Vec<EndpointSpend>,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<InvalidMessage>,
}

/// Requests (and their estimated tokens) sent to one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSpend {
    pub endpoint_id: EndpointId,
    pub requests: u64,
    pub tokens: u64,
}

/// The fleet's spend per endpoint, as the control plane sums the data planes' recent reports;
/// sorted by endpoint id so that equal states compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetQuota {
    pub endpoints: Vec<FleetSpend>,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<InvalidMessage>,
}

/// One endpoint's fleet-wide spend rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetSpend {
    pub endpoint_id: EndpointId,
    /// Requests per minute the whole fleet sends it (the reporting data plane included).
    pub requests_per_min: u64,
    /// Estimated tokens per minute the whole fleet sends it.
    pub tokens_per_min: u64,
    /// Data planes whose recent reports sent to it.
    pub data_planes: u32,
}

impl EndpointSpend {
    /// The per-minute rates of this spend over `interval_ms`, capped at what one data plane
    /// may claim.
    pub fn per_minute(&self, interval_ms: u32) -> (u64, u64) {
        let interval = u128::from(interval_ms.max(1));
        let scale = |n: u64, cap: u64| {
            u64::try_from((u128::from(n) * 60_000).div_ceil(interval)).unwrap_or(cap).min(cap)
        };
        (
            scale(self.requests, MAX_REPORTED_REQUESTS_PER_MIN),
            scale(self.tokens, MAX_REPORTED_TOKENS_PER_MIN),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_becomes_a_capped_rate_per_minute() {
        let spend = EndpointSpend { endpoint_id: EndpointId::new(), requests: 5, tokens: 750 };
        assert_eq!(spend.per_minute(1000), (300, 45_000));
        assert_eq!(spend.per_minute(0), (300_000, 45_000_000), "a zero interval counts as 1 ms");
        let huge = EndpointSpend { endpoint_id: EndpointId::new(), requests: u64::MAX, tokens: 1 };
        assert_eq!(huge.per_minute(1000).0, MAX_REPORTED_REQUESTS_PER_MIN);
    }
}
