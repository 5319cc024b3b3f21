//! `MODELGW_METRICS_ADDR`, the Prometheus listener of both processes: `off` or an address of
//! its own, never the admin API's port or the Gateway URL, so the metrics are not exposed
//! wherever those are (behind Front Door, to operators' browsers).
//!
//! Both processes serve `GET /metrics` with one listener implementation,
//! `modelgw_data_plane::metrics::server` (HTTP/1.1, a header deadline, a connection cap; it
//! takes any `prometheus_client` registry): the control plane's is bound here.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

/// A listen address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

/// `off` (any case) or a socket address.
pub fn parse_listen_addr(value: &str) -> Result<ListenAddr, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(ListenAddr(None));
    }
    value.trim().parse::<SocketAddr>().map(|addr| ListenAddr(Some(addr))).map_err(|err| {
        format!("`{value}` is neither `off` nor an address like 127.0.0.1:4003: {err}")
    })
}

/// Binds the metrics listener `addr` asks for (`None` when it is `off`).
pub(crate) async fn bind(addr: ListenAddr) -> anyhow::Result<Option<TcpListener>> {
    match addr.0 {
        None => Ok(None),
        Some(addr) => Ok(Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?,
        )),
    }
}

/// The URL of a bound metrics listener (`off` when there is none).
pub(crate) fn url(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_off_disables() {
        assert_eq!(parse_listen_addr("off"), Ok(ListenAddr(None)));
        assert_eq!(parse_listen_addr(" OFF "), Ok(ListenAddr(None)));
        assert_eq!(
            parse_listen_addr("127.0.0.1:4004"),
            Ok(ListenAddr(Some("127.0.0.1:4004".parse().expect("address"))))
        );
        assert!(parse_listen_addr("localhost").is_err());
        assert_eq!(url(None), "off");
    }
}
