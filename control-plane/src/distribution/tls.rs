//! TLS of the distribution port: the control plane's certificate, the CA its data planes'
//! client certificates must come from (mTLS mode), both reloaded from disk when the files
//! change, and the accept loop that hands tonic finished TLS connections.
//!
//! tonic's own `ServerTlsConfig` reads its PEM once; rotation without a restart needs the
//! rustls config to ask for the certificate per handshake. So the server config holds a
//! [`ReloadingCert`] (a `ResolvesServerCert` over an `ArcSwap`) and, in mTLS mode, a
//! [`ReloadingClientVerifier`] (a `ClientCertVerifier` over an `ArcSwap`); a task polls the
//! files' modification times every [`TLS_RELOAD_INTERVAL`] and swaps in what it reads. A file
//! that does not parse (half written, key and certificate not yet a pair) is logged and the
//! previous one kept, so a rotation can never take the port down. Connections already open
//! keep the certificate they were made with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::Stream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the certificate files are checked for changes. A rotation tool (cert-manager,
/// an operator's script) replaces files well ahead of expiry, so seconds are plenty; each
/// check is three `stat` calls.
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a TLS handshake may take before the connection is dropped: a client that connects
/// and stalls must not hold a task and a socket for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; beyond it new connections wait in the kernel's backlog.
/// Bounds the memory and CPU a connection flood can take.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Finished connections not yet picked up by the server.
const ACCEPTED_QUEUE: usize = 64;

/// Where the distribution port's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain, PEM (leaf first) (`MODELGW_GRPC_TLS_CERT_FILE`).
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1) (`MODELGW_GRPC_TLS_KEY_FILE`).
    pub key: PathBuf,
    /// mTLS: the CA (bundle, PEM) data planes' client certificates must chain to
    /// (`MODELGW_GRPC_CLIENT_CA_FILE`). `None`: data planes authenticate with join tokens.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn invalid(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid { path: path.to_owned(), reason: reason.to_string() }
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no certificate"));
    }
    Ok(certs)
}

/// Reads the server certificate and key and checks that they are a pair.
fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| invalid(&files.key, format!("not a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| invalid(&files.key, format!("does not match {}: {e}", files.cert.display())))
}

/// Builds the verifier of client certificates issued by the CA(s) in `path`.
fn client_verifier(path: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| invalid(path, e))
}

/// The server certificate, swapped when its files change.
pub(crate) struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The verifier of client certificates, swapped when the CA file changes.
pub(crate) struct ReloadingClientVerifier {
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints cannot borrow from a swappable value; they are optional, and a data plane has
        // exactly one certificate to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current.load().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

/// The server side of the distribution port's TLS: one rustls config whose certificate and
/// client verifier reload from disk.
pub(crate) struct ServerTls {
    files: TlsFiles,
    cert: Arc<ReloadingCert>,
    verifier: Option<Arc<ReloadingClientVerifier>>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks every file now, so a bad path or a mismatched key fails the start.
    pub(crate) fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let cert =
            Arc::new(ReloadingCert { current: ArcSwap::from_pointee(certified_key(&files)?) });
        let verifier = files
            .client_ca
            .as_deref()
            .map(|ca| {
                client_verifier(ca).map(|v| {
                    Arc::new(ReloadingClientVerifier { current: ArcSwap::from_pointee(v) })
                })
            })
            .transpose()?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone() as Arc<dyn ClientCertVerifier>),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone() as Arc<dyn ResolvesServerCert>);
        // gRPC is HTTP/2 only; tonic's client insists on negotiating it.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(ServerTls { files, cert, verifier, acceptor })
    }

    /// Whether data planes present client certificates (mTLS) rather than join tokens.
    pub(crate) fn client_certificates(&self) -> bool {
        self.verifier.is_some()
    }

    /// Polls the files every `interval` and swaps in what changed, until dropped.
    pub(crate) async fn keep_fresh(self: Arc<Self>, interval: Duration) {
        let mut seen = Modified::of(&self.files);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let now = Modified::of(&self.files);
            if now.cert_and_key != seen.cert_and_key {
                match certified_key(&self.files) {
                    Ok(key) => {
                        self.cert.current.store(Arc::new(key));
                        seen.cert_and_key = now.cert_and_key;
                        tracing::info!(cert = %self.files.cert.display(), "distribution TLS certificate reloaded");
                    }
                    // Retried at the next tick (the files may be mid-rotation).
                    Err(e) => {
                        tracing::warn!(error = %e, "changed TLS certificate not usable; keeping the previous one")
                    }
                }
            }
            if let (Some(verifier), Some(ca)) = (&self.verifier, &self.files.client_ca)
                && now.client_ca != seen.client_ca
            {
                match client_verifier(ca) {
                    Ok(v) => {
                        verifier.current.store(Arc::new(v));
                        seen.client_ca = now.client_ca;
                        tracing::info!(client_ca = %ca.display(), "data-plane client CA reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "changed client CA not usable; keeping the previous one")
                    }
                }
            }
        }
    }

    /// TLS connections accepted on `listener`: each handshake runs on its own task (bounded
    /// in number and time), and a failed one is logged with the peer and the reason.
    pub(crate) fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + use<> {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // E.g. out of file descriptors: wait a little rather than spin.
                        tracing::warn!(error = %e, "accepting a config connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not disable Nagle on a config connection");
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, reason = %e, "config connection refused: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::warn!(%peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "config connection refused: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Modification times (and sizes) of the files, to notice a change.
#[derive(Clone, PartialEq, Eq)]
struct Modified {
    cert_and_key: [Option<(SystemTime, u64)>; 2],
    client_ca: Option<(SystemTime, u64)>,
}

impl Modified {
    fn of(files: &TlsFiles) -> Modified {
        let stamp =
            |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Modified {
            cert_and_key: [stamp(&files.cert), stamp(&files.key)],
            client_ca: files.client_ca.as_deref().and_then(stamp),
        }
    }
}

/// The identities a client certificate names: its DNS and URI subject alternative names.
/// Empty when it cannot be parsed (it was verified in the handshake, so that is a bug).
pub(crate) fn certificate_identities(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => {
            cert.valid_dns_names().chain(cert.valid_uri_names()).map(str::to_owned).collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, "client certificate could not be parsed for its names");
            Vec::new()
        }
    }
}
