//! Failed authentications, quiet under abuse: counted per client address and logged in
//! aggregate — one line per address per window with its count, never one line per attempt
//! (a client hammering wrong keys cost one `info` line each, thousands a second). Optionally
//! (`MODELGW_FAILED_AUTH_LIMIT`) an address that failed that often within one window is
//! answered 429 for a window, before its key is even looked at.
//!
//! The address is the TCP peer's, which no header can forge; behind a proxy or Azure Front
//! Door it is the proxy's, which is why the limit is off unless configured.
//!
//! Cost: nothing on a request that authenticates, unless the limit is on (then one lock-free
//! load of the blocked set, empty while nobody is blocked). Failures take one short mutex.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{debug, warn};

/// Most addresses counted separately per window; failures from further addresses are counted
/// together, so a flood from many addresses cannot grow the map without bound.
pub(crate) const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Failed authentications per client address, and the addresses refused for a while.
#[derive(Debug)]
pub(crate) struct FailedAuths {
    /// The log interval, and the window the limit counts in and refuses for.
    window: Duration,
    /// Failures per address per window before its requests are refused; `None`: never.
    limit: Option<u32>,
    tallies: Mutex<Tallies>,
    /// Addresses over the limit, and until when they are refused. Copy-on-write: read on
    /// every request while the limit is on, written only when an address crosses it.
    blocked: ArcSwap<HashMap<IpAddr, Instant>>,
}

#[derive(Debug, Default)]
struct Tallies {
    by_address: HashMap<IpAddr, u64>,
    /// Failures from addresses beyond [`MAX_TRACKED_ADDRESSES`] or without one.
    others: u64,
}

impl FailedAuths {
    pub(crate) fn new(window: Duration, limit: Option<u32>) -> Self {
        Self {
            window: window.max(Duration::from_secs(1)),
            limit: limit.filter(|l| *l > 0),
            tallies: Mutex::new(Tallies::default()),
            blocked: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// How long `peer` is still refused, if it is over the limit.
    #[inline]
    pub(crate) fn refused_for(&self, peer: Option<IpAddr>, now: Instant) -> Option<Duration> {
        self.limit?;
        let blocked = self.blocked.load();
        if blocked.is_empty() {
            return None;
        }
        let until = *blocked.get(&peer?)?;
        (until > now).then(|| until - now)
    }

    /// Counts one failed authentication from `peer`; blocks it when it reaches the limit.
    pub(crate) fn record(&self, peer: Option<IpAddr>, now: Instant) {
        let count = {
            let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
            let tracked = tallies.by_address.len() < MAX_TRACKED_ADDRESSES;
            match peer {
                Some(ip) if tracked || tallies.by_address.contains_key(&ip) => {
                    let count = tallies.by_address.entry(ip).or_default();
                    *count += 1;
                    *count
                }
                _ => {
                    tallies.others += 1;
                    return;
                }
            }
        };
        if let (Some(limit), Some(ip)) = (self.limit, peer)
            && count == u64::from(limit)
        {
            let until = now + self.window;
            self.blocked.rcu(|blocked| {
                let mut next = HashMap::clone(blocked);
                next.insert(ip, until);
                next
            });
            warn!(
                client = %ip,
                failed = count,
                refused_for_s = self.window.as_secs(),
                "failed-authentication limit reached; refusing the address"
            );
        }
    }

    /// Logs one line per address that failed in the window now ending, with its count, and
    /// starts the next window; forgets blocks that ended.
    pub(crate) fn flush(&self, now: Instant) {
        let tallies = {
            let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *tallies)
        };
        let window_s = self.window.as_secs();
        for (ip, failed) in &tallies.by_address {
            warn!(client = %ip, failed, window_s, "failed authentications");
        }
        if tallies.others > 0 {
            warn!(failed = tallies.others, window_s, "failed authentications from other addresses");
        }
        if self.blocked.load().values().any(|until| *until <= now) {
            self.blocked.rcu(|blocked| {
                let mut next = HashMap::clone(blocked);
                next.retain(|_, until| *until > now);
                next
            });
            debug!("failed-authentication blocks expired");
        }
    }
}

/// Flushes `failed` every window until the task is aborted.
pub(crate) async fn report(failed: Arc<FailedAuths>) {
    let mut tick = tokio::time::interval(failed.window());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        failed.flush(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_for_a_window_once_it_reaches_the_limit() {
        let failed = FailedAuths::new(Duration::from_secs(60), Some(3));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let now = Instant::now();
        for _ in 0..2 {
            failed.record(Some(ip), now);
        }
        assert_eq!(failed.refused_for(Some(ip), now), None);
        failed.record(Some(ip), now);
        assert_eq!(failed.refused_for(Some(ip), now), Some(Duration::from_secs(60)));
        assert_eq!(failed.refused_for(Some(other), now), None);
        assert_eq!(failed.refused_for(None, now), None);
        let later = now + Duration::from_secs(61);
        assert_eq!(failed.refused_for(Some(ip), later), None);
        failed.flush(later);
        assert!(failed.blocked.load().is_empty());
        assert!(failed.tallies.lock().expect("lock").by_address.is_empty());
    }

    #[test]
    fn without_a_limit_nobody_is_refused_and_the_map_is_bounded() {
        let failed = FailedAuths::new(Duration::from_secs(60), None);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 10) {
            failed.record(Some(IpAddr::from(i.to_be_bytes())), now);
        }
        failed.record(None, now);
        let tallies = failed.tallies.lock().expect("lock");
        assert_eq!(tallies.by_address.len(), MAX_TRACKED_ADDRESSES);
        assert_eq!(tallies.others, 11);
        drop(tallies);
        assert_eq!(failed.refused_for(Some(IpAddr::from([0, 0, 0, 1])), now), None);
    }
}
