//! Throwaway certificate authorities and certificates for the tests' TLS (and `modelgw demo`'s
//! mTLS between its own processes): the distribution port is TLS by default, so every test that
//! starts a control plane, a data plane or a fake of either makes its certificates here, in
//! process, with `rcgen` (ring). Nothing here is ever used by a production path.
//!
//! [`TestPki::write`] is the common case: one CA, a server certificate for `localhost`,
//! `127.0.0.1` and `::1`, written as PEM files into a directory, plus client certificates per
//! node id on demand ([`TestPki::client_files`]). [`TestCa`] is the building block for the
//! rest: a second, untrusted CA, a rotated server certificate.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// What went wrong making or writing test certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The names a test server certificate covers: every way a test addresses loopback.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").finish_non_exhaustive()
    }
}

impl CertifiedKey {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns (cert file, key file).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write(&cert, &self.cert_pem)?;
        write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// A self-signed certificate authority that issues server and client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose common name is `name`.
    pub fn new(name: &str) -> Result<TestCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = common_name(name);
        let cert = params.self_signed(&key)?;
        Ok(TestCa { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate, PEM (what a peer trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str]) -> Result<CertifiedKey, PkiError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = common_name("modelgw test control plane");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate naming `identity`: a URI SAN when it looks like a URI
    /// (`spiffe://…`), else a DNS SAN.
    pub fn client_cert(&self, identity: &str) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let san = if identity.contains("://") {
            SanType::URI(identity.try_into()?)
        } else {
            SanType::DnsName(identity.try_into()?)
        };
        params.subject_alt_names = vec![san];
        params.distinguished_name = common_name(identity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<CertifiedKey, PkiError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// One CA and a loopback server certificate, written as files into a directory: what a
/// control plane (`MODELGW_GRPC_TLS_CERT_FILE`, `…_KEY_FILE`, `MODELGW_GRPC_CLIENT_CA_FILE`)
/// and its data planes (`MODELGW_CONTROL_PLANE_CA_FILE`, `MODELGW_DATA_PLANE_CERT_FILE`, …)
/// are pointed at.
pub struct TestPki {
    pub ca: TestCa,
    pub dir: PathBuf,
    /// The CA certificate: trusted by data planes for the server, and by the control plane
    /// for client certificates.
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl TestPki {
    /// A new CA and a server certificate for [`LOOPBACK_NAMES`], written into `dir` (which must
    /// exist) as `ca.crt`, `server.crt` and `server.key`.
    pub fn write(dir: &Path) -> Result<TestPki, PkiError> {
        let ca = TestCa::new("modelgw test CA")?;
        let ca_file = dir.join("ca.crt");
        write(&ca_file, ca.cert_pem())?;
        let (server_cert_file, server_key_file) =
            ca.server_cert(&LOOPBACK_NAMES)?.write(dir, "server")?;
        Ok(TestPki { ca, dir: dir.to_owned(), ca_file, server_cert_file, server_key_file })
    }

    /// A client certificate for `node_id` from this CA, written as `client-<n>.crt/.key`;
    /// returns (cert file, key file).
    pub fn client_files(&self, node_id: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let stem: String = node_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        self.ca.client_cert(node_id)?.write(&self.dir, &format!("client-{stem}"))
    }

    /// Replaces the server certificate and key files with a new certificate for
    /// [`LOOPBACK_NAMES`] (a rotation); returns the new certificate, PEM.
    pub fn rotate_server_cert(&self) -> Result<String, PkiError> {
        let next = self.ca.server_cert(&LOOPBACK_NAMES)?;
        // The key first: a reader that sees the new certificate with the old key fails to
        // pair them and keeps the previous pair until the next poll.
        write_atomically(&self.server_key_file, &next.key_pem)?;
        write_atomically(&self.server_cert_file, &next.cert_pem)?;
        Ok(next.cert_pem)
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(|source| PkiError::Write { path: path.to_owned(), source })
}

/// Writes through a temporary file and a rename, as deployment tools (kubelet, cert-manager)
/// replace mounted certificates, so a reader never sees half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    write(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(|source| PkiError::Write { path: path.to_owned(), source })
}
