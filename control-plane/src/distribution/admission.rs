//! Who may open a config stream, and as which node: the decisions between the transport's
//! authentication (TLS client certificate, join token, or nothing in insecure mode) and the
//! registry. Domain types only; `grpc.rs` maps each refusal to a gRPC status.
//!
//! Rules:
//! - mTLS: the node id must equal one of the client certificate's DNS or URI SANs exactly.
//! - Join token: the node id must be the token's name or `<name>-<suffix>`
//!   ([`node_id_bound_to_token`]).
//! - Insecure (plaintext, `--insecure-grpc`): any node id; a development mode only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use modelgw_model::limits::truncate_chars;

use super::join_tokens::{TokenGrant, node_id_bound_to_token};
use crate::store::DataPlaneTokenId;

/// How many identities of a certificate a refusal quotes in the log.
const LOGGED_IDENTITIES: usize = 4;
/// Longest identity quoted in a log line (values from the network are capped).
const LOGGED_IDENTITY_CHARS: usize = 128;

/// How a stream's peer authenticated.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// A client certificate from the configured CA, naming these identities (DNS and URI
    /// SANs).
    Certificate { identities: Vec<String> },
    /// An active join token.
    Token(Arc<TokenGrant>),
    /// Plaintext without authentication (`--insecure-grpc`).
    Unauthenticated,
}

/// Who a registry entry belongs to, for the per-token bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Certificate,
    Token(DataPlaneTokenId),
    Unauthenticated,
}

impl Peer {
    pub(crate) fn owner(&self) -> Owner {
        match self {
            Peer::Certificate { .. } => Owner::Certificate,
            Peer::Token(grant) => Owner::Token(grant.id),
            Peer::Unauthenticated => Owner::Unauthenticated,
        }
    }

    /// What the peer is, for logs: never the token, only its name.
    pub(crate) fn describe(&self) -> String {
        match self {
            Peer::Certificate { identities } => {
                let shown: Vec<String> = identities
                    .iter()
                    .take(LOGGED_IDENTITIES)
                    .map(|i| truncate_chars(i, LOGGED_IDENTITY_CHARS))
                    .collect();
                format!("certificate [{}]", shown.join(", "))
            }
            Peer::Token(grant) => format!("token {}", grant.name),
            Peer::Unauthenticated => "unauthenticated (insecure mode)".to_owned(),
        }
    }

    /// Whether this peer may register as `node_id`; the error says why not (no secret in it).
    pub(crate) fn may_register(&self, node_id: &str) -> Result<(), String> {
        match self {
            Peer::Certificate { identities } => {
                if identities.iter().any(|i| i == node_id) {
                    Ok(())
                } else {
                    Err("the node id is not a DNS or URI name of the client certificate".to_owned())
                }
            }
            Peer::Token(grant) => {
                if node_id_bound_to_token(node_id, &grant.name) {
                    Ok(())
                } else {
                    Err(format!(
                        "the node id of a data plane using token {:?} must be {:?} or start with \"{}-\"",
                        grant.name, grant.name, grant.name
                    ))
                }
            }
            Peer::Unauthenticated => Ok(()),
        }
    }
}

/// A token bucket on the messages of one stream: `burst` at once, then `per_second`.
#[derive(Debug)]
pub(crate) struct MessageBudget {
    available: f64,
    last: Instant,
    burst: f64,
    per_second: f64,
}

impl MessageBudget {
    pub(crate) fn new(burst: u32, per_second: u32) -> MessageBudget {
        MessageBudget {
            available: f64::from(burst),
            last: Instant::now(),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
        }
    }

    /// Takes one message from the budget; false when it is spent.
    pub(crate) fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.available = (self.available + elapsed.as_secs_f64() * self.per_second).min(self.burst);
    }

    /// Whether the bucket is back to its full burst (nothing to remember about its user).
    fn is_full_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.available >= self.burst
    }

    fn take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.available >= 1.0 {
            self.available -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Connections whose registration budgets are remembered at once; past it, budgets back at
/// their full burst are forgotten (a connection that registers again starts full anyway).
const MAX_TRACKED_CONNECTIONS: usize = 4096;

/// Registrations (admitted `Hello`s) per connection: one token bucket per peer address and
/// port, i.e. per TCP connection (a port reused by a later connection of the same host
/// inherits what is left of the bucket, which only matters to a host that spent it). A data
/// plane registers once per connection; a peer that opens and closes streams on one connection
/// to churn node ids is slowed to the rate.
pub(crate) struct RegistrationRate {
    buckets: Mutex<HashMap<SocketAddr, MessageBudget>>,
    burst: u32,
    per_second: u32,
}

impl RegistrationRate {
    pub(crate) fn new(burst: u32, per_second: u32) -> RegistrationRate {
        RegistrationRate { buckets: Mutex::default(), burst, per_second }
    }

    /// Takes one registration from `peer`'s budget; false when it is spent.
    pub(crate) fn allow(&self, peer: SocketAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_CONNECTIONS && !buckets.contains_key(&peer) {
            buckets.retain(|_, b| !b.is_full_at(now));
            if buckets.len() >= MAX_TRACKED_CONNECTIONS {
                // A flood of fresh connections: the registry's bounds still hold.
                buckets.clear();
            }
        }
        buckets
            .entry(peer)
            .or_insert_with(|| MessageBudget::new(self.burst, self.per_second))
            .take_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str) -> Peer {
        Peer::Token(Arc::new(TokenGrant {
            id: DataPlaneTokenId::new(),
            name: name.into(),
            max_data_planes: 10,
        }))
    }

    #[test]
    fn a_certificate_registers_only_the_names_it_holds() {
        let peer = Peer::Certificate {
            identities: vec!["dp-1.eastus.internal".into(), "spiffe://modelgw/dp-1".into()],
        };
        assert!(peer.may_register("dp-1.eastus.internal").is_ok());
        assert!(peer.may_register("spiffe://modelgw/dp-1").is_ok());
        assert!(peer.may_register("dp-2.eastus.internal").is_err());
        assert!(peer.may_register("dp-1").is_err(), "exact names only");
    }

    #[test]
    fn a_token_registers_its_name_and_suffixes() {
        let peer = grant("eastus");
        assert!(peer.may_register("eastus").is_ok());
        assert!(peer.may_register("eastus-7f9c").is_ok());
        let refused = peer.may_register("westus-1").expect_err("another token's node");
        assert!(refused.contains("eastus-"), "{refused}");
        assert!(!peer.describe().contains("mgwdp_"));
    }

    #[test]
    fn registrations_are_budgeted_per_connection() {
        let rate = RegistrationRate::new(2, 1);
        let (a, b) =
            (SocketAddr::from(([127, 0, 0, 1], 1000)), SocketAddr::from(([127, 0, 0, 1], 1001)));
        assert!(rate.allow(a) && rate.allow(a));
        assert!(!rate.allow(a), "a's burst is spent");
        assert!(rate.allow(b), "another connection has its own");
    }

    #[test]
    fn the_budget_allows_a_burst_then_the_rate() {
        let mut budget = MessageBudget::new(3, 10);
        let start = Instant::now();
        budget.last = start;
        assert!((0..3).all(|_| budget.take_at(start)));
        assert!(!budget.take_at(start), "burst spent");
        assert!(budget.take_at(start + Duration::from_millis(110)), "one refilled after 100 ms");
        assert!(!budget.take_at(start + Duration::from_millis(120)));
        assert!(
            (0..3).all(|_| budget.take_at(start + Duration::from_secs(60))),
            "capped at the burst"
        );
        assert!(!budget.take_at(start + Duration::from_secs(60)));
    }
}
