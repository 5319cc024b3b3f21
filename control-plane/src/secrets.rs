//! Secrets at rest: endpoint API keys are sealed with XChaCha20-Poly1305 under a master key.
//!
//! Sealed form: `v1:<base64(nonce || ciphertext-with-tag)>` with a random 24-byte nonce per
//! seal (XChaCha's nonce is large enough that random nonces never realistically collide).
//! The caller binds each ciphertext to its row through the associated data (the endpoint id),
//! so a ciphertext copied into another row does not decrypt.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use modelgw_model::{GatewayId, PinKey};
use rand::TryRngCore as _;

/// Length of the master key in bytes (XChaCha20-Poly1305 uses 256-bit keys).
const KEY_LEN: usize = 32;
/// Length of an XChaCha20-Poly1305 nonce.
const NONCE_LEN: usize = 24;
/// Prefix of the current sealed format; a future format (e.g. key rotation) gets `v2:`.
const SEALED_V1_PREFIX: &str = "v1:";

/// The 256-bit key that seals endpoint API keys in the database.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("master key must be 32 bytes, base64-encoded (got {0} bytes)")]
    Length(usize),
    #[error("master key is not valid base64")]
    Encoding,
    #[error("master key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Why a sealed value could not be opened (or a value sealed). Never carries the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SealError {
    #[error("sealed value has an unknown format")]
    Format,
    #[error("authentication failed (wrong master key, or the value was moved or altered)")]
    Open,
    #[error("encryption failed")]
    Seal,
}

impl MasterKey {
    /// Parses a base64 (standard) 32-byte key, as given in `MODELGW_MASTER_KEY`.
    pub fn from_base64(s: &str) -> Result<MasterKey, MasterKeyError> {
        let decoded = STANDARD.decode(s.trim()).map_err(|_| MasterKeyError::Encoding)?;
        let bytes: [u8; KEY_LEN] =
            decoded.as_slice().try_into().map_err(|_| MasterKeyError::Length(decoded.len()))?;
        Ok(MasterKey { bytes })
    }

    /// Reads a key file holding the base64 key.
    pub fn from_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| io_error(path, source))?;
        warn_if_readable_by_others(path);
        MasterKey::from_base64(&text)
    }

    /// Reads the key file, or creates it (mode 0600) with a new random key. Returns whether
    /// it was created, so the caller can warn that this is a development key.
    pub fn load_or_generate(path: &Path) -> Result<(MasterKey, bool), MasterKeyError> {
        let mut options = std::fs::OpenOptions::new();
        // `create_new` so two processes starting at once cannot both write a key: the loser
        // gets `AlreadyExists` and reads the winner's.
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                let key = MasterKey::generate();
                let mut line = STANDARD.encode(key.bytes);
                line.push('\n');
                file.write_all(line.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|source| io_error(path, source))?;
                Ok((key, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((MasterKey::from_file(path)?, false))
            }
            Err(source) => Err(io_error(path, source)),
        }
    }

    /// A key for another purpose, derived from this one: SHA-256 over a domain-separation
    /// label, the purpose and the key. With a uniformly random 256-bit master key this is a
    /// sound KDF, and no derived key reveals the master key or another purpose's key. Used for
    /// the console's session cookies, so every control-plane replica opens every session.
    pub fn derive(&self, purpose: &str) -> [u8; KEY_LEN] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"modelgw key derivation v1\0");
        h.update(purpose.as_bytes());
        h.update(b"\0");
        h.update(self.bytes);
        h.finalize().into()
    }

    /// The pin key of gateway `gateway`: HMAC-SHA256(master key, "modelgw pin key v1" ‖
    /// gateway id as its canonical hyphenated string). It signs the response ids the
    /// gateway's data planes mint (ARCHITECTURE.md, "Pinned stateful calls"); derived, never
    /// stored, so every control-plane replica sends the same key and nothing new is kept in
    /// the database. Different per gateway, so an id minted through one gateway is refused by
    /// another; a new master key invalidates every id minted under the old one.
    pub fn pin_key(&self, gateway: GatewayId) -> PinKey {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.bytes);
        let mut context = ring::hmac::Context::with_key(&key);
        context.update(b"modelgw pin key v1");
        context.update(gateway.to_string().as_bytes());
        let tag = context.sign();
        let mut bytes = [0u8; PinKey::LEN];
        bytes.copy_from_slice(tag.as_ref());
        PinKey::new(bytes)
    }

    pub fn generate() -> MasterKey {
        let mut bytes = [0u8; KEY_LEN];
        random_bytes(&mut bytes);
        MasterKey { bytes }
    }

    /// Seals `plaintext`, binding it to `aad` (which must be given again to open it).
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<String, SealError> {
        let cipher = XChaCha20Poly1305::new((&self.bytes).into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext =
            cipher.encrypt(&nonce, Payload { msg: plaintext, aad }).map_err(|_| SealError::Seal)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(format!("{SEALED_V1_PREFIX}{}", STANDARD.encode(blob)))
    }

    /// Opens a value produced by [`MasterKey::seal`] with the same `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, SealError> {
        let encoded = sealed.strip_prefix(SEALED_V1_PREFIX).ok_or(SealError::Format)?;
        let blob = STANDARD.decode(encoded).map_err(|_| SealError::Format)?;
        if blob.len() < NONCE_LEN {
            return Err(SealError::Format);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.bytes).into());
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| SealError::Open)
    }
}

/// Fills `buf` from the operating system's CSPRNG. Used for keys and tokens.
#[allow(
    clippy::expect_used,
    reason = "the OS RNG failing means the platform cannot produce secrets at all; continuing \
              with anything weaker would be worse than stopping"
)]
pub(crate) fn random_bytes(buf: &mut [u8]) {
    rand::rngs::OsRng.try_fill_bytes(buf).expect("the operating system's random source failed");
}

fn io_error(path: &Path, source: std::io::Error) -> MasterKeyError {
    MasterKeyError::Io { path: path.display().to_string(), source }
}

/// The key is as sensitive as every endpoint key it protects: say so when the file is not
/// private, but keep working (the operator may have reasons, e.g. a read-only secret mount).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "master key file is accessible by group or others; restrict it to mode 0600"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_same_aad_only() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"row-1", b"sk-plaintext-value").expect("seal");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("plaintext"));
        assert_eq!(key.open(b"row-1", &sealed).expect("open"), b"sk-plaintext-value");
        assert_eq!(key.open(b"row-2", &sealed), Err(SealError::Open));
        assert_eq!(MasterKey::generate().open(b"row-1", &sealed), Err(SealError::Open));
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let key = MasterKey::generate();
        assert_ne!(key.seal(b"a", b"same").expect("seal"), key.seal(b"a", b"same").expect("seal"));
    }

    #[test]
    fn malformed_sealed_values_are_format_errors() {
        let key = MasterKey::generate();
        assert_eq!(key.open(b"a", "plain"), Err(SealError::Format));
        assert_eq!(key.open(b"a", "v1:!!!"), Err(SealError::Format));
        assert_eq!(key.open(b"a", "v1:AAAA"), Err(SealError::Format));
    }

    #[test]
    fn base64_keys_must_be_32_bytes() {
        let good = STANDARD.encode([7u8; 32]);
        assert!(MasterKey::from_base64(&format!(" {good}\n")).is_ok());
        assert!(matches!(
            MasterKey::from_base64(&STANDARD.encode([7u8; 16])),
            Err(MasterKeyError::Length(16))
        ));
        assert!(matches!(MasterKey::from_base64("not base64!"), Err(MasterKeyError::Encoding)));
    }

    #[test]
    fn pin_keys_are_per_gateway_and_the_same_from_the_same_master_key() {
        let master = MasterKey::from_base64(&STANDARD.encode([0x11u8; 32])).expect("key");
        let replica = MasterKey::from_base64(&STANDARD.encode([0x11u8; 32])).expect("key");
        let (a, b) = (GatewayId::new(), GatewayId::new());
        assert_eq!(master.pin_key(a), replica.pin_key(a), "every replica derives the same key");
        assert_ne!(master.pin_key(a), master.pin_key(b), "one key per gateway");
        assert_ne!(master.pin_key(a), MasterKey::generate().pin_key(a), "bound to the master key");
        assert_ne!(master.pin_key(a).expose(), &[0x11u8; 32], "not the master key itself");
        // HMAC-SHA256 of the documented input, computed independently of `pin_key`.
        let expected = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x11u8; 32]),
            format!("modelgw pin key v1{a}").as_bytes(),
        );
        assert_eq!(&master.pin_key(a).expose()[..], expected.as_ref());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = MasterKey::from_base64(&STANDARD.encode([0xabu8; 32])).expect("key");
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn generated_key_files_are_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let (first, created) = MasterKey::load_or_generate(&path).expect("generate");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, created) = MasterKey::load_or_generate(&path).expect("load");
        assert!(!created);
        assert_eq!(first.bytes, second.bytes);
    }
}
