//! Secrets at rest: endpoint API keys are sealed with XChaCha20-Poly1305 under a master key.
//!
//! CONTRACT: signatures fixed; bodies being implemented.

use std::path::Path;

/// The 256-bit key that seals endpoint API keys in the database.
#[derive(Clone)]
pub struct MasterKey {
    _bytes: [u8; 32],
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

#[allow(unused_variables, clippy::unimplemented)]
impl MasterKey {
    /// Parses a base64 (standard) 32-byte key, as given in `MODELGW_MASTER_KEY`.
    pub fn from_base64(s: &str) -> Result<MasterKey, MasterKeyError> {
        unimplemented!()
    }
    /// Reads a key file holding the base64 key.
    pub fn from_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
        unimplemented!()
    }
    /// Reads the key file, or creates it (mode 0600) with a new random key. Returns whether
    /// it was created, so the caller can warn that this is a development key.
    pub fn load_or_generate(path: &Path) -> Result<(MasterKey, bool), MasterKeyError> {
        unimplemented!()
    }
    pub fn generate() -> MasterKey {
        unimplemented!()
    }
}
