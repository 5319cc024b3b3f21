//! Upstream TLS is verified against the platform's roots: an endpoint presenting a certificate
//! nobody vouches for is a failed attempt, and it never receives the request — nor the
//! endpoint's API key, which travels in the request's headers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use modelgw_model::RoutingPolicy;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{fast_config, gateway, header, unmocked};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate for 127.0.0.1 (and its key), trusted by no platform.
const CERT: &[u8] = include_bytes!("fixtures/untrusted-upstream.cert.pem");
const KEY: &[u8] = include_bytes!("fixtures/untrusted-upstream.key.pem");

/// What the untrusted server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    request_bytes: AtomicUsize,
}

/// Serves TLS with the untrusted certificate; records connections, completed handshakes and
/// any bytes of a request.
async fn untrusted_server() -> Result<(SocketAddr, Arc<Seen>)> {
    let cert = CertificateDer::from_pem_slice(CERT).context("certificate")?;
    let key = PrivateKeyDer::from_pem_slice(KEY).context("key")?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("server config")?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Seen::default());
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            record.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, record) = (acceptor.clone(), Arc::clone(&record));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                record.handshakes.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    record.request_bytes.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    Ok((addr, seen))
}

#[tokio::test]
async fn an_upstream_certificate_nobody_trusts_is_a_connect_error_and_gets_no_request() -> Result<()>
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (addr, seen) = untrusted_server().await?;
    let region = unmocked("untrusted", format!("https://{addr}"));
    let gw = gateway(&[(&region, 0, 1)], RoutingPolicy::default(), fast_config()).await?;

    let res = gw.chat().await?;
    let attempts = header(&res, "x-modelgw-attempts").to_owned();
    let status = res.status().as_u16();
    let body = res.text().await?;
    assert_eq!(status, 503, "nothing else can serve: {body}");
    assert!(attempts.starts_with("untrusted:connect_error:"), "attempts: {attempts}");

    assert!(seen.connections.load(Ordering::SeqCst) >= 1, "the gateway did try the endpoint");
    assert_eq!(seen.handshakes.load(Ordering::SeqCst), 0, "the handshake was refused");
    assert_eq!(seen.request_bytes.load(Ordering::SeqCst), 0, "no request (or key) was sent");
    Ok(())
}
