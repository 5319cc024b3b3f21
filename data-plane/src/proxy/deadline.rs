//! The request's end-to-end deadline, and every wait bounded by it.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};

/// Client header that shortens the request's deadline (milliseconds); it can never extend
/// the gateway's.
const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-modelgw-timeout-ms");

/// The request's end-to-end budget: the gateway's `request_timeout_ms`, else `default`,
/// shortened (never extended) by the client's `x-modelgw-timeout-ms`.
pub(super) fn request_timeout(
    gateway_ms: Option<u32>,
    default: Duration,
    headers: &HeaderMap,
) -> Duration {
    let configured = gateway_ms.map_or(default, |ms| Duration::from_millis(u64::from(ms)));
    let asked = headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    match asked {
        Some(asked) => asked.min(configured),
        None => configured,
    }
}

/// The shorter of a timeout and the time left before `deadline`, and whether it is the
/// deadline that binds.
#[inline]
pub(super) fn bounded(timeout: Duration, deadline: Instant) -> (Duration, bool) {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < timeout { (left, true) } else { (timeout, false) }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn the_client_may_shorten_the_deadline_but_never_extend_it() {
        let default = Duration::from_secs(600);
        let mut headers = HeaderMap::new();
        assert_eq!(request_timeout(None, default, &headers), default);
        assert_eq!(request_timeout(Some(30_000), default, &headers), Duration::from_secs(30));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("1500"));
        assert_eq!(request_timeout(Some(30_000), default, &headers), Duration::from_millis(1500));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("90000"));
        assert_eq!(request_timeout(Some(30_000), default, &headers), Duration::from_secs(30));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(request_timeout(None, default, &headers), default, "garbage is ignored");
    }
}
