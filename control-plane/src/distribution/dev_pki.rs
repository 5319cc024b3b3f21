//! A development CA and server certificate for the distribution port, made when a control
//! plane runs on SQLite with no TLS settings (as the development master key is): the port is
//! never plaintext by accident, `modelgw control-plane` still starts in one command, and a
//! data plane on the same machine trusts it with `MODELGW_CONTROL_PLANE_CA_FILE=<the CA file>`.
//!
//! The CA's private key is not kept: it signs the one server certificate and is dropped, so
//! the files next to the database cannot be used to mint anything else. Data planes use join
//! tokens in this mode. With PostgreSQL (production) the control plane refuses to start
//! without TLS settings instead.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::tls::{TlsError, TlsFiles};

/// File names, in the database's directory.
const CA_FILE: &str = "modelgw-grpc-ca.crt";
const CERT_FILE: &str = "modelgw-grpc-server.crt";
const KEY_FILE: &str = "modelgw-grpc-server.key";

/// The development certificate's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevelopmentPki {
    /// The CA certificate data planes trust (`MODELGW_CONTROL_PLANE_CA_FILE`).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Made by this call (false: the files were already there).
    pub created: bool,
}

impl DevelopmentPki {
    /// The server's files (join-token mode: no client CA).
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles { cert: self.cert_file.clone(), key: self.key_file.clone(), client_ca: None }
    }
}

/// Uses the development CA and certificate in `dir`, making them first if any is missing.
/// The server certificate names `localhost`, `127.0.0.1`, `::1` and this host's name.
pub fn load_or_generate(dir: &Path) -> Result<DevelopmentPki, TlsError> {
    let pki = DevelopmentPki {
        ca_file: dir.join(CA_FILE),
        cert_file: dir.join(CERT_FILE),
        key_file: dir.join(KEY_FILE),
        created: false,
    };
    if pki.ca_file.exists() && pki.cert_file.exists() && pki.key_file.exists() {
        return Ok(pki);
    }
    let generate = |e: rcgen::Error| TlsError::Invalid {
        path: dir.to_owned(),
        reason: format!("generating the development certificate: {e}"),
    };
    let ca_key = KeyPair::generate().map_err(generate)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name = common_name("modelgw development CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(generate)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Some(host) = hostname() {
        names.push(host);
    }
    let mut server = CertificateParams::new(names).map_err(generate)?;
    server.distinguished_name = common_name("modelgw development control plane");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().map_err(generate)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(generate)?;

    write(&pki.ca_file, &ca_cert.pem(), false)?;
    write(&pki.cert_file, &server_cert.pem(), false)?;
    write(&pki.key_file, &server_key.serialize_pem(), true)?;
    Ok(DevelopmentPki { created: true, ..pki })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// This host's name when it is a usable DNS name (so a data plane on another machine of a
/// development network can connect by name).
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    let usable = !name.is_empty()
        && name != "localhost"
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    usable.then_some(name)
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Read { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write as _;
    options.open(path).and_then(|mut f| f.write_all(text.as_bytes())).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_reused_and_the_key_is_private() {
        let dir = tempfile::tempdir().expect("dir");
        let first = load_or_generate(dir.path()).expect("generated");
        assert!(first.created);
        let cert = std::fs::read(&first.cert_file).expect("cert");
        let again = load_or_generate(dir.path()).expect("reused");
        assert!(!again.created);
        assert_eq!(std::fs::read(&again.cert_file).expect("cert"), cert);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&first.key_file).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
        }
        super::super::tls::ServerTls::load(first.tls_files()).expect("a usable certificate");
    }
}
