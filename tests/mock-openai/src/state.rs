//! Mutable per-mock state: fault queues, call counts, recorded requests, rate-limit budgets.
//! Guarded by one `std::sync::Mutex`, never held across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::fault::{Fault, FaultQueue};
use crate::quota::{Admission, Buckets, Cost, Quota, QuotaCounts, Reading};

/// Most requests kept by [`crate::MockAzure::requests`]; older ones are dropped so a long demo
/// does not grow without bound. Far more than any test sends.
pub const MAX_RECORDED_REQUESTS: usize = 4096;

/// Length of the window behind the `x-ratelimit-*` headers: Azure reports per-minute quotas.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Requests per [`RATE_WINDOW`] reported in `x-ratelimit-limit-requests`; a plausible S0 value
/// that a demo will not exhaust.
pub const REQUEST_LIMIT: u64 = 1_000;

/// Tokens per [`RATE_WINDOW`] reported in `x-ratelimit-limit-tokens`.
pub const TOKEN_LIMIT: u64 = 150_000;

/// Headers whose values are credentials: the control API shows only a hint of them.
pub const SECRET_HEADERS: [&str; 4] =
    ["api-key", "authorization", "ocp-apim-subscription-key", "proxy-authorization"];

/// One request as the mock received it (control-API requests are not recorded).
///
/// As JSON (the control API), `body` is the body as a UTF-8 lossy string, and a body that is not
/// UTF-8 (a multipart upload of audio or images) also comes as `body_base64`, its exact bytes:
/// reading it back gives the same bytes, so a test driving a mock process can compare uploads
/// byte for byte too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RecordedRequestJson", into = "RecordedRequestJson")]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string without `?`, if any.
    pub query: Option<String>,
    /// Header names lower-case; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body bytes, exactly as received.
    pub body: Bytes,
    /// The deployment the request targeted (path, or body `model` on v1 paths), if any.
    pub deployment: Option<String>,
}

impl RecordedRequest {
    /// The record of a request with this head and body (repeated headers joined with `", "`),
    /// for every mock of this crate.
    pub(crate) fn new(
        parts: &http::request::Parts,
        body: &Bytes,
        deployment: Option<String>,
    ) -> RecordedRequest {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers,
            body: body.clone(),
            deployment,
        }
    }

    /// A header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A copy whose credential headers show only a hint (`…` + last 4 characters, keeping a
    /// `Bearer ` prefix), as the control API returns it.
    pub fn redacted(&self) -> RecordedRequest {
        let mut copy = self.clone();
        for name in SECRET_HEADERS {
            if let Some(v) = copy.headers.get_mut(name) {
                *v = redact(v);
            }
        }
        copy
    }
}

fn redact(value: &str) -> String {
    let (prefix, secret) = match value.split_once(' ') {
        Some((scheme, rest)) => (format!("{scheme} "), rest),
        None => (String::new(), value),
    };
    // Short secrets show nothing: four characters of an 8-character secret is half of it.
    let chars: Vec<char> = secret.chars().collect();
    let tail: String =
        if chars.len() >= 12 { chars[chars.len() - 4..].iter().collect() } else { String::new() };
    format!("{prefix}…{tail}")
}

/// [`RecordedRequest`]'s JSON form.
#[derive(Serialize, Deserialize)]
struct RecordedRequestJson {
    method: String,
    path: String,
    query: Option<String>,
    headers: BTreeMap<String, String>,
    body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    deployment: Option<String>,
}

impl From<RecordedRequest> for RecordedRequestJson {
    fn from(r: RecordedRequest) -> Self {
        let (body, body_base64) = match std::str::from_utf8(&r.body) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (
                String::from_utf8_lossy(&r.body).into_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(&r.body)),
            ),
        };
        RecordedRequestJson {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body,
            body_base64,
            deployment: r.deployment,
        }
    }
}

impl From<RecordedRequestJson> for RecordedRequest {
    fn from(r: RecordedRequestJson) -> Self {
        let exact = r
            .body_base64
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(Bytes::from);
        RecordedRequest {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body: exact.unwrap_or_else(|| Bytes::from(r.body)),
            deployment: r.deployment,
        }
    }
}

/// A deployment's quota window, reported in the `x-ratelimit-*` headers while the region has
/// no [`Quota`]: then the mock never throttles on its own, only a scripted fault answers 429.
#[derive(Debug)]
struct Budget {
    window_start: Instant,
    requests: u64,
    tokens: u64,
}

/// Remaining quota to report on one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remaining {
    pub requests: u64,
    pub tokens: u64,
}

/// One response a region holds (Responses API, `store` true).
#[derive(Clone, Debug)]
pub struct StoredResponse {
    /// The deployment that created it: follow-ups on it count against, and meet the faults of,
    /// this deployment.
    pub deployment: String,
    /// The `response` object as `GET responses/{id}` returns it.
    pub response: serde_json::Value,
    /// Its input items, ids assigned, in the order sent.
    pub input_items: Vec<serde_json::Value>,
    /// Created with `background: true`: the only kind that can be cancelled.
    pub background: bool,
    /// A background response's completed form, served from its first retrieval on (the mock
    /// "finishes" a background response as soon as someone looks).
    pub pending: Option<serde_json::Value>,
}

/// The responses a region holds, bounded to [`crate::responses::MAX_STORED_RESPONSES`] (oldest
/// forgotten first).
#[derive(Debug, Default)]
pub struct ResponseStore {
    by_id: HashMap<String, StoredResponse>,
    /// Ids in creation order; may name deleted ones, skipped when evicting.
    order: VecDeque<String>,
}

impl ResponseStore {
    pub fn insert(&mut self, id: String, response: StoredResponse) {
        while self.by_id.len() >= crate::responses::MAX_STORED_RESPONSES {
            let Some(old) = self.order.pop_front() else { break };
            self.by_id.remove(&old);
        }
        if self.by_id.insert(id.clone(), response).is_none() {
            self.order.push_back(id);
        }
    }

    pub fn get(&self, id: &str) -> Option<&StoredResponse> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut StoredResponse> {
        self.by_id.get_mut(id)
    }

    pub fn remove(&mut self, id: &str) -> Option<StoredResponse> {
        let removed = self.by_id.remove(id);
        if removed.is_some() && self.order.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
        }
        removed
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[derive(Debug, Default)]
pub struct State {
    faults: HashMap<String, FaultQueue>,
    calls: HashMap<String, u64>,
    requests: VecDeque<RecordedRequest>,
    budgets: HashMap<String, Budget>,
    /// The region's token-bucket quota, if set: it then throttles on its own. Kept across
    /// [`State::reset`] (it describes the region); its buckets and counts are not.
    quota: Option<Quota>,
    /// Each deployment's buckets, created full on first use: the same as full at the moment
    /// the quota was set, since a bucket never holds more than its capacity.
    quota_buckets: HashMap<String, Buckets>,
    quota_counts: QuotaCounts,
    /// Stored Responses API objects. Kept across [`State::reset`]: they are the region's data,
    /// like an Azure resource's, not a test step's.
    pub responses: ResponseStore,
}

impl State {
    pub fn script(&mut self, deployment: &str, fault: Fault) {
        self.faults.entry(deployment.to_owned()).or_default().push(fault);
    }

    pub fn take_fault(&mut self, deployment: &str) -> Option<Fault> {
        self.faults.get_mut(deployment)?.take()
    }

    pub fn record(&mut self, request: RecordedRequest) {
        if let Some(dep) = &request.deployment {
            *self.calls.entry(dep.clone()).or_default() += 1;
        }
        if self.requests.len() == MAX_RECORDED_REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    pub fn calls(&self, deployment: &str) -> u64 {
        self.calls.get(deployment).copied().unwrap_or(0)
    }

    pub fn all_calls(&self) -> &HashMap<String, u64> {
        &self.calls
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.iter().cloned().collect()
    }

    /// Spends one request and `tokens` tokens of the deployment's window and says what is left.
    pub fn spend(&mut self, deployment: &str, requests: u64, tokens: u64) -> Remaining {
        let now = Instant::now();
        let budget = self.budgets.entry(deployment.to_owned()).or_insert(Budget {
            window_start: now,
            requests: 0,
            tokens: 0,
        });
        if now.duration_since(budget.window_start) >= RATE_WINDOW {
            *budget = Budget { window_start: now, requests: 0, tokens: 0 };
        }
        budget.requests = budget.requests.saturating_add(requests);
        budget.tokens = budget.tokens.saturating_add(tokens);
        Remaining {
            requests: REQUEST_LIMIT.saturating_sub(budget.requests),
            tokens: TOKEN_LIMIT.saturating_sub(budget.tokens),
        }
    }

    /// Sets (or with `None` removes) the region's quota: buckets full, counts zero.
    pub fn set_quota(&mut self, quota: Option<Quota>) {
        self.quota = quota;
        self.quota_buckets.clear();
        self.quota_counts = QuotaCounts::default();
    }

    pub fn quota(&self) -> Option<Quota> {
        self.quota
    }

    /// Charges `cost` to `deployment`'s buckets at `now` if they have room (`None` without a
    /// quota), and counts the outcome.
    pub fn admit(&mut self, deployment: &str, cost: Cost, now: Instant) -> Option<Admission> {
        let quota = self.quota?;
        let admission = self
            .quota_buckets
            .entry(deployment.to_owned())
            .or_insert_with(|| Buckets::new(&quota, now))
            .admit(cost, now);
        match admission {
            Admission::Admitted(_) => self.quota_counts.admitted += 1,
            Admission::Throttled { .. } => self.quota_counts.throttled += 1,
        }
        Some(admission)
    }

    /// `deployment`'s quota reading at `now`, charging nothing (`None` without a quota).
    pub fn quota_reading(&mut self, deployment: &str, now: Instant) -> Option<Reading> {
        let quota = self.quota?;
        Some(
            self.quota_buckets
                .entry(deployment.to_owned())
                .or_insert_with(|| Buckets::new(&quota, now))
                .peek(now),
        )
    }

    /// One more inference request answered 2xx.
    pub fn count_served(&mut self) {
        self.quota_counts.served += 1;
    }

    pub fn quota_counts(&self) -> QuotaCounts {
        self.quota_counts
    }

    /// Clears faults, counts, records, rate-limit windows and quota buckets; stored responses
    /// and the quota's settings stay.
    pub fn reset(&mut self) {
        let responses = std::mem::take(&mut self.responses);
        let quota = self.quota;
        *self = State { responses, quota, ..State::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dep: Option<&str>) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            path: "/".into(),
            query: None,
            headers: BTreeMap::new(),
            body: Bytes::new(),
            deployment: dep.map(str::to_owned),
        }
    }

    #[test]
    fn records_are_bounded_and_count_per_deployment() {
        let mut s = State::default();
        for _ in 0..MAX_RECORDED_REQUESTS + 10 {
            s.record(req(Some("a")));
        }
        s.record(req(None));
        assert_eq!(s.requests().len(), MAX_RECORDED_REQUESTS);
        assert_eq!(s.calls("a"), (MAX_RECORDED_REQUESTS + 10) as u64);
        assert_eq!(s.calls("b"), 0);
    }

    #[test]
    fn a_binary_body_survives_json_exactly() {
        let mut r = req(Some("d"));
        r.body = Bytes::from_static(b"--b\r\n\xff\xfe\x00audio");
        let json = serde_json::to_value(&r).expect("serializes");
        assert!(json["body"].as_str().is_some_and(|b| b.contains("audio")));
        assert!(json.get("body_base64").is_some());
        let back: RecordedRequest = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, r);
        r.body = Bytes::from_static(b"{\"model\":\"d\"}");
        let json = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["body"], "{\"model\":\"d\"}");
        assert!(json.get("body_base64").is_none(), "text bodies stay readable and small");
        assert_eq!(serde_json::from_value::<RecordedRequest>(json).expect("back"), r);
    }

    #[test]
    fn redaction_keeps_only_a_hint() {
        let mut r = req(None);
        r.headers.insert("api-key".into(), "0123456789abcdefWXYZ".into());
        r.headers.insert("authorization".into(), "Bearer short".into());
        r.headers.insert("user-agent".into(), "ua".into());
        let red = r.redacted();
        assert_eq!(red.header("api-key"), Some("…WXYZ"));
        assert_eq!(red.header("authorization"), Some("Bearer …"));
        assert_eq!(red.header("user-agent"), Some("ua"));
    }

    #[test]
    fn the_response_store_is_bounded_and_survives_reset() {
        let mut s = State::default();
        let stored = |d: &str| StoredResponse {
            deployment: d.into(),
            response: serde_json::Value::Null,
            input_items: Vec::new(),
            background: false,
            pending: None,
        };
        let max = crate::responses::MAX_STORED_RESPONSES;
        for i in 0..max + 5 {
            s.responses.insert(format!("resp_{i}"), stored("d"));
        }
        assert_eq!(s.responses.len(), max);
        assert!(s.responses.get("resp_4").is_none(), "oldest forgotten");
        assert!(s.responses.get(&format!("resp_{}", max + 4)).is_some());
        assert!(s.responses.remove("resp_5").is_some());
        assert!(s.responses.get("resp_5").is_none());
        s.reset();
        assert_eq!(s.responses.len(), max - 1);
    }

    #[test]
    fn reset_refills_the_quota_and_zeroes_its_counts_but_keeps_it() {
        let mut s = State::default();
        let now = Instant::now();
        let cost = Cost { requests: 1, tokens: 10 };
        assert_eq!(s.admit("d", cost, now), None, "no quota, no verdict");
        s.set_quota(Some(Quota {
            requests_per_sec: 1.0,
            tokens_per_sec: 100.0,
            window: Duration::from_secs(1),
            headers: crate::QuotaHeaders::Full,
        }));
        assert!(matches!(s.admit("d", cost, now), Some(Admission::Admitted(_))));
        assert!(matches!(s.admit("d", cost, now), Some(Admission::Throttled { .. })));
        assert!(
            matches!(s.admit("other", cost, now), Some(Admission::Admitted(_))),
            "per deployment"
        );
        s.count_served();
        assert_eq!(s.quota_counts(), QuotaCounts { admitted: 2, served: 1, throttled: 1 });
        s.reset();
        assert_eq!(s.quota_counts(), QuotaCounts::default());
        assert!(s.quota().is_some());
        assert!(matches!(s.admit("d", cost, now), Some(Admission::Admitted(_))), "full again");
    }

    #[test]
    fn budget_counts_down() {
        let mut s = State::default();
        let a = s.spend("d", 1, 10);
        let b = s.spend("d", 1, 10);
        assert_eq!(a, Remaining { requests: REQUEST_LIMIT - 1, tokens: TOKEN_LIMIT - 10 });
        assert_eq!(b, Remaining { requests: REQUEST_LIMIT - 2, tokens: TOKEN_LIMIT - 20 });
    }
}
