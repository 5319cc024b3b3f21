//! Where the gateway may connect: checked at connect time on the address actually dialled,
//! whatever an endpoint's URL or its DNS answer says, so neither a URL saved before the rule
//! existed nor a name that later resolves elsewhere (DNS rebinding) reaches what an Azure VM
//! must keep private.
//!
//! Never: link-local addresses (169.254.0.0/16 — the instance metadata services of Azure, AWS,
//! GCP and Oracle live there — and fe80::/10), AWS's IPv6 metadata address fd00:ec2::254,
//! Azure's WireServer 168.63.129.16, Alibaba's metadata 100.100.100.200, unspecified,
//! broadcast and multicast addresses, 0.0.0.0/8 ("this host"), and the same addresses written
//! as IPv4-mapped or NAT64 IPv6. Loopback only when allowed (`MODELGW_ALLOW_LOOPBACK_UPSTREAMS`,
//! for the demo and tests). Private ranges stay allowed: Azure Private Link resolves to them.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;
use tracing::warn;

/// Which destination addresses upstream connections may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EgressPolicy {
    /// Loopback (127.0.0.0/8, ::1) upstreams, e.g. mock regions in tests and the demo.
    pub allow_loopback: bool,
}

/// Why an address may not be dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forbidden {
    LinkLocal,
    Metadata,
    Loopback,
    NotUnicast,
}

impl Forbidden {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Forbidden::LinkLocal => "link-local",
            Forbidden::Metadata => "a cloud metadata or platform service",
            Forbidden::Loopback => "loopback (MODELGW_ALLOW_LOOPBACK_UPSTREAMS is off)",
            Forbidden::NotUnicast => "not a unicast host address",
        }
    }
}

/// Azure's WireServer (platform agent and DHCP/DNS virtual IP).
const AZURE_WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
/// Alibaba Cloud's metadata service.
const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
/// AWS's IPv6 instance metadata service.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254);

impl EgressPolicy {
    /// Whether `ip` may be dialled.
    pub(crate) fn check(self, ip: IpAddr) -> Result<(), Forbidden> {
        match ip {
            IpAddr::V4(v4) => self.check_v4(v4),
            IpAddr::V6(v6) => {
                // The same IPv4 address written as IPv6 (mapped, compatible or NAT64 64:ff9b::/96)
                // reaches the same host.
                if let Some(v4) = embedded_v4(v6) {
                    return self.check_v4(v4);
                }
                if v6 == AWS_METADATA_V6 {
                    return Err(Forbidden::Metadata);
                }
                if v6.is_loopback() {
                    return if self.allow_loopback { Ok(()) } else { Err(Forbidden::Loopback) };
                }
                if v6.is_unspecified() || v6.is_multicast() {
                    return Err(Forbidden::NotUnicast);
                }
                if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                    return Err(Forbidden::LinkLocal);
                }
                Ok(())
            }
        }
    }

    fn check_v4(self, v4: Ipv4Addr) -> Result<(), Forbidden> {
        if v4.is_link_local() {
            return Err(Forbidden::LinkLocal);
        }
        if v4 == AZURE_WIRESERVER || v4 == ALIBABA_METADATA {
            return Err(Forbidden::Metadata);
        }
        if v4.is_loopback() {
            return if self.allow_loopback { Ok(()) } else { Err(Forbidden::Loopback) };
        }
        if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || v4.octets()[0] == 0 {
            return Err(Forbidden::NotUnicast);
        }
        Ok(())
    }
}

/// The IPv4 address an IPv6 address stands for, if any: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some stacks) and NAT64
/// (`64:ff9b::a.b.c.d`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6].iter().all(|x| *x == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0);
    (compatible || nat64).then_some(tail)
}

/// The error of a refused address: a connect error, so the attempt fails over.
fn refused(addr: IpAddr, why: Forbidden) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("upstream address {addr} is not allowed: {}", why.as_str()),
    )
}

/// The DNS resolver of upstream connections: the system's (getaddrinfo), with every answer
/// the policy refuses removed; none left is an error.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    inner: GaiResolver,
    policy: EgressPolicy,
}

impl GuardedResolver {
    pub(crate) fn new(policy: EgressPolicy) -> Self {
        Self { inner: GaiResolver::new(), policy }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        let resolving = self.inner.call(name.clone());
        Box::pin(async move {
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = resolving
                .await?
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        warn!(host = name.as_str(), address = %addr.ip(), reason = why.as_str(), "upstream address refused at connect time");
                        refusal.get_or_insert((addr.ip(), why));
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refusal) {
                (true, Some((ip, why))) => Err(refused(ip, why)),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// Wraps the TCP connector: an endpoint whose URL names an IP address directly (which the
/// connector dials without asking the resolver) is checked here.
#[derive(Clone)]
pub(crate) struct GuardedConnector<C> {
    inner: C,
    policy: EgressPolicy,
}

impl<C> GuardedConnector<C> {
    pub(crate) fn new(inner: C, policy: EgressPolicy) -> Self {
        Self { inner, policy }
    }
}

impl<C> Service<http::Uri> for GuardedConnector<C>
where
    C: Service<http::Uri>,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let literal = uri.host().and_then(|host| {
            host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok()
        });
        if let Some(ip) = literal
            && let Err(why) = self.policy.check(ip)
        {
            warn!(address = %ip, reason = why.as_str(), "upstream address refused at connect time");
            return Box::pin(async move { Err(refused(ip, why).into()) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn metadata_link_local_and_unusable_addresses_are_never_dialled() {
        let strict = EgressPolicy { allow_loopback: false };
        let loose = EgressPolicy { allow_loopback: true };
        for addr in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "168.63.129.16",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(strict.check(ip(addr)).is_err(), "{addr}");
            assert!(loose.check(ip(addr)).is_err(), "{addr} even with loopback allowed");
        }
    }

    #[test]
    fn loopback_only_when_allowed_and_private_ranges_always() {
        let strict = EgressPolicy { allow_loopback: false };
        let loose = EgressPolicy { allow_loopback: true };
        for addr in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(strict.check(ip(addr)), Err(Forbidden::Loopback), "{addr}");
            assert_eq!(loose.check(ip(addr)), Ok(()), "{addr}");
        }
        for addr in ["10.0.0.7", "172.16.4.4", "192.168.1.10", "fd12:3456::1", "20.42.0.1"] {
            assert_eq!(strict.check(ip(addr)), Ok(()), "{addr}");
        }
    }
}
