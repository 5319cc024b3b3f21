//! Gateway keys' limits and usage, and the lease protocol that enforces them across data
//! planes (issue #14), in domain form.
//!
//! A key's usage is counted per UTC-aligned [`Window`] (minute, hour, day) in four
//! [`Measure`]s. A limit on a key applies to the sum of its subtree: a request is charged to
//! its key and every ancestor. The control plane lends each data-plane instance budget
//! ([`LeaseGrant`], cumulative per window); the instance admits a request only when its
//! worst case fits what it holds on every limited counter of the chain, and reports what it
//! charged ([`KeyUsage`], cumulative per window), so resending a report never counts twice.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::GatewayKeyId;

/// At most this many entries in one usage report (a data plane with more sends several).
pub const MAX_USAGE_ENTRIES_PER_REPORT: usize = 5_000;
/// At most this many grants in one `Leases` message (a control plane with more sends several).
pub const MAX_GRANTS_PER_LEASES: usize = 10_000;

/// The deepest key tree: a root key and this many levels below it, at most.
pub const MAX_KEY_DEPTH: usize = 8;

/// A UTC-aligned counting window.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Minute,
    Hour,
    Day,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::Minute, Window::Hour, Window::Day];

    pub const fn len_ms(self) -> i64 {
        match self {
            Window::Minute => 60_000,
            Window::Hour => 3_600_000,
            Window::Day => 86_400_000,
        }
    }

    pub const fn len(self) -> Duration {
        Duration::from_millis(self.len_ms() as u64)
    }

    /// Start (Unix ms) of the window holding `unix_ms`.
    pub const fn start_of(self, unix_ms: i64) -> i64 {
        unix_ms - unix_ms.rem_euclid(self.len_ms())
    }

    /// Whether `unix_ms` is the start of a window of this kind.
    pub const fn is_start(self, unix_ms: i64) -> bool {
        unix_ms.rem_euclid(self.len_ms()) == 0
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    pub const fn index(self) -> usize {
        match self {
            Window::Minute => 0,
            Window::Hour => 1,
            Window::Day => 2,
        }
    }
}

/// What a window counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Requests,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
}

impl Measure {
    pub const ALL: [Measure; 4] =
        [Measure::Requests, Measure::PromptTokens, Measure::CompletionTokens, Measure::TotalTokens];

    pub const fn as_str(self) -> &'static str {
        match self {
            Measure::Requests => "requests",
            Measure::PromptTokens => "prompt_tokens",
            Measure::CompletionTokens => "completion_tokens",
            Measure::TotalTokens => "total_tokens",
        }
    }

    pub const fn index(self) -> usize {
        match self {
            Measure::Requests => 0,
            Measure::PromptTokens => 1,
            Measure::CompletionTokens => 2,
            Measure::TotalTokens => 3,
        }
    }
}

/// An amount of each measure: usage, a reservation, a charge.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Usage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// One request of `prompt_tokens` and `completion_tokens` (total: their sum).
    pub const fn request(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            requests: 1,
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }

    pub const fn get(&self, m: Measure) -> u64 {
        match m {
            Measure::Requests => self.requests,
            Measure::PromptTokens => self.prompt_tokens,
            Measure::CompletionTokens => self.completion_tokens,
            Measure::TotalTokens => self.total_tokens,
        }
    }

    pub fn set(&mut self, m: Measure, value: u64) {
        match m {
            Measure::Requests => self.requests = value,
            Measure::PromptTokens => self.prompt_tokens = value,
            Measure::CompletionTokens => self.completion_tokens = value,
            Measure::TotalTokens => self.total_tokens = value,
        }
    }

    pub fn saturating_add(self, o: Usage) -> Usage {
        Usage {
            requests: self.requests.saturating_add(o.requests),
            prompt_tokens: self.prompt_tokens.saturating_add(o.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_add(o.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(o.total_tokens),
        }
    }

    pub fn saturating_sub(self, o: Usage) -> Usage {
        Usage {
            requests: self.requests.saturating_sub(o.requests),
            prompt_tokens: self.prompt_tokens.saturating_sub(o.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_sub(o.completion_tokens),
            total_tokens: self.total_tokens.saturating_sub(o.total_tokens),
        }
    }

    /// Each measure's larger value.
    pub fn max(self, o: Usage) -> Usage {
        Usage {
            requests: self.requests.max(o.requests),
            prompt_tokens: self.prompt_tokens.max(o.prompt_tokens),
            completion_tokens: self.completion_tokens.max(o.completion_tokens),
            total_tokens: self.total_tokens.max(o.total_tokens),
        }
    }

    pub const fn is_zero(&self) -> bool {
        self.requests == 0
            && self.prompt_tokens == 0
            && self.completion_tokens == 0
            && self.total_tokens == 0
    }
}

/// Limits of one window; `None` = not limited.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct WindowLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
}

impl WindowLimits {
    pub const fn get(&self, m: Measure) -> Option<u64> {
        match m {
            Measure::Requests => self.requests,
            Measure::PromptTokens => self.prompt_tokens,
            Measure::CompletionTokens => self.completion_tokens,
            Measure::TotalTokens => self.total_tokens,
        }
    }

    pub fn set(&mut self, m: Measure, value: Option<u64>) {
        match m {
            Measure::Requests => self.requests = value,
            Measure::PromptTokens => self.prompt_tokens = value,
            Measure::CompletionTokens => self.completion_tokens = value,
            Measure::TotalTokens => self.total_tokens = value,
        }
    }

    pub const fn is_unlimited(&self) -> bool {
        self.requests.is_none()
            && self.prompt_tokens.is_none()
            && self.completion_tokens.is_none()
            && self.total_tokens.is_none()
    }
}

/// A key's limits per window. The product's named limits are `per_minute.requests`,
/// `per_minute.total_tokens` and the three token measures per hour and per day; every
/// combination is accepted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "WindowLimits::is_unlimited")]
    pub per_minute: WindowLimits,
    #[serde(default, skip_serializing_if = "WindowLimits::is_unlimited")]
    pub per_hour: WindowLimits,
    #[serde(default, skip_serializing_if = "WindowLimits::is_unlimited")]
    pub per_day: WindowLimits,
}

impl KeyLimits {
    pub const fn window(&self, w: Window) -> &WindowLimits {
        match w {
            Window::Minute => &self.per_minute,
            Window::Hour => &self.per_hour,
            Window::Day => &self.per_day,
        }
    }

    pub fn window_mut(&mut self, w: Window) -> &mut WindowLimits {
        match w {
            Window::Minute => &mut self.per_minute,
            Window::Hour => &mut self.per_hour,
            Window::Day => &mut self.per_day,
        }
    }

    pub const fn is_unlimited(&self) -> bool {
        self.per_minute.is_unlimited()
            && self.per_hour.is_unlimited()
            && self.per_day.is_unlimited()
    }
}

/// Completion tokens reserved for a request that sets no `max_tokens` /
/// `max_completion_tokens`, when the gateway configures none.
pub const DEFAULT_COMPLETION_RESERVATION: u32 = 1_024;

/// How a gateway enforces its keys' limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyLimitPolicy {
    /// Completion tokens reserved when the client sets no maximum; `None` =
    /// [`DEFAULT_COMPLETION_RESERVATION`].
    pub default_completion_tokens: Option<u32>,
    /// With the leases expired (control plane away): refuse (`true`) or admit and log
    /// (`false`, the default).
    pub fail_closed: bool,
}

impl KeyLimitPolicy {
    pub fn completion_reservation(&self) -> u64 {
        u64::from(self.default_completion_tokens.unwrap_or(DEFAULT_COMPLETION_RESERVATION))
    }
}

/// The control plane's loan to one data-plane instance for one limited (key, window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub key_id: GatewayKeyId,
    pub window: Window,
    /// Unix ms, UTC-aligned to `window`.
    pub window_start_unix_ms: i64,
    /// Cumulative allowance of this instance in the window; `None` = not limited.
    pub granted: WindowLimits,
    /// Charged + reserved across the fleet when the grant was computed, and of that, this
    /// instance's part: remaining = limit − fleet_used − (own now − own_used).
    pub fleet_used: Usage,
    pub own_used: Usage,
    /// Per limited measure, the most this instance could be granted when the grant was
    /// computed: the limit less what every other instance holds (its live grant, or its use
    /// when more). A request whose reservation does not fit under it waits for the window's
    /// end, not for a top-up; `None` = not sent (an older control plane): `fleet_used` decides.
    pub ceiling: WindowLimits,
}

/// Budget for one data-plane instance: every grant it holds, renewed by the next `Leases`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leases {
    pub grants: Vec<LeaseGrant>,
    /// How long after receipt the unspent part may be used.
    pub valid_for: Duration,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<crate::protocol::InvalidMessage>,
}

/// What one data-plane instance charged to one key in one window (cumulative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    pub key_id: GatewayKeyId,
    pub window: Window,
    pub window_start_unix_ms: i64,
    /// Settled: actual usage of completed requests, reservations of cut streams.
    pub charged: Usage,
    /// Reserved for requests still in flight.
    pub reserved: Usage,
    /// The reservation of the last request this instance refused because its own grant was
    /// short while the limit had room (zero: none since its grant last rose): the control
    /// plane tops the grant up to cover it when the limit allows.
    pub wanted: Usage,
}

/// A data-plane instance's usage report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    pub keys: Vec<KeyUsage>,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<crate::protocol::InvalidMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_aligned() {
        // 2026-12-07T10:17:42.500Z
        let t = 1_796_638_662_500;
        assert_eq!(Window::Minute.start_of(t), 1_796_638_620_000);
        assert_eq!(Window::Hour.start_of(t), 1_796_637_600_000);
        assert_eq!(Window::Day.start_of(t), 1_796_601_600_000);
        assert!(Window::Day.is_start(Window::Day.start_of(t)));
        assert!(!Window::Day.is_start(t));
    }

    #[test]
    fn usage_arithmetic_saturates_and_limits_read_by_measure() {
        let u = Usage::request(100, 50);
        assert_eq!(u.total_tokens, 150);
        assert_eq!(u.saturating_sub(Usage::request(200, 0)).prompt_tokens, 0);
        let mut l = KeyLimits::default();
        assert!(l.is_unlimited());
        l.window_mut(Window::Hour).set(Measure::TotalTokens, Some(10_000));
        assert_eq!(l.window(Window::Hour).get(Measure::TotalTokens), Some(10_000));
        assert!(!l.is_unlimited());
        let json = serde_json::to_value(l).expect("json");
        assert_eq!(json, serde_json::json!({"per_hour": {"total_tokens": 10000}}));
    }
}
