//! The last applied snapshot on local disk, sealed, so a data plane that starts while no
//! control plane answers can serve (Kong hybrid mode's cached configuration).
//!
//! A snapshot carries every endpoint's credential, every gateway key's hash and every
//! gateway's pin key, so the file is never plaintext: the snapshot's protobuf encoding is
//! sealed with XChaCha20-Poly1305 under a 256-bit key the data plane gets from its
//! environment (`MODELGW_SNAPSHOT_KEY` or `MODELGW_SNAPSHOT_KEY_FILE`, e.g. from a Kubernetes
//! Secret). A stolen disk or volume without that key reveals nothing; a changed, cut or
//! swapped-in file does not open ([`format`]).
//!
//! Writing ([`writer`]): after each snapshot the control-plane client applies (or sees again
//! as current), a background task seals and writes it — temp file in the same directory,
//! mode 0600, fsync, rename, fsync of the directory — coalescing to the newest version, never
//! on the path that applies snapshots. While connected it refreshes the file's time now and
//! then, so an unchanged configuration does not age out.
//!
//! Reading ([`load`]): once, at start. A file older than the configured maximum age, or one
//! that does not open, is logged and ignored: the data plane then starts as without a file.

mod format;
pub(crate) mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use modelgw_model::{ConfigVersion, InvalidSnapshot, Snapshot};

pub use format::{Header, open, seal};

/// Default longest a saved snapshot is served after a control plane last sent or confirmed
/// it (`MODELGW_SNAPSHOT_MAX_AGE`): 24 h. It rides out a control-plane outage through a night
/// and the data-plane restarts during it; past a day, a configuration that may still hold a
/// revoked gateway key or a removed endpoint is riskier than not serving. Kong serves its
/// cache without a limit; raise it where availability matters more.
pub const DEFAULT_SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Largest file read: the largest snapshot the control-plane client accepts, sealed.
const MAX_FILE_BYTES: u64 =
    (crate::control_plane_client::MAX_SNAPSHOT_BYTES + format::OVERHEAD) as u64;

/// Length of the key (XChaCha20-Poly1305 uses 256-bit keys).
const KEY_LEN: usize = 32;

/// The 256-bit key that seals the snapshot file. Never logged (`Debug` is redacted).
#[derive(Clone)]
pub struct SnapshotKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotKey(<redacted>)")
    }
}

/// Why the snapshot key cannot be used. Never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotKeyError {
    #[error(
        "the snapshot key must be 32 bytes, base64-encoded (got {0} bytes; make one with `openssl rand -base64 32`)"
    )]
    Length(usize),
    #[error("the snapshot key is not valid base64 (make one with `openssl rand -base64 32`)")]
    Encoding,
    #[error("reading the snapshot key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl SnapshotKey {
    /// Parses a base64 (standard) 32-byte key, as given in `MODELGW_SNAPSHOT_KEY`.
    pub fn from_base64(text: &str) -> Result<SnapshotKey, SnapshotKeyError> {
        let decoded = STANDARD.decode(text.trim()).map_err(|_| SnapshotKeyError::Encoding)?;
        let bytes: [u8; KEY_LEN] =
            decoded.as_slice().try_into().map_err(|_| SnapshotKeyError::Length(decoded.len()))?;
        Ok(SnapshotKey { bytes })
    }

    /// Reads a file holding the base64 key (`MODELGW_SNAPSHOT_KEY_FILE`).
    pub fn from_file(path: &Path) -> Result<SnapshotKey, SnapshotKeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SnapshotKeyError::Io { path: path.display().to_string(), source })?;
        SnapshotKey::from_base64(&text)
    }

    /// A key from raw bytes (tests, tools).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SnapshotKey {
        SnapshotKey { bytes }
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

/// Where the snapshot is kept, sealed with what, and how old it may be when served.
#[derive(Clone, Debug)]
pub struct SnapshotFileConfig {
    /// The file (`MODELGW_SNAPSHOT_FILE`); its directory must exist and be writable.
    pub path: PathBuf,
    /// `MODELGW_SNAPSHOT_KEY` / `MODELGW_SNAPSHOT_KEY_FILE`.
    pub key: SnapshotKey,
    /// `MODELGW_SNAPSHOT_MAX_AGE`; see [`DEFAULT_SNAPSHOT_MAX_AGE`].
    pub max_age: Duration,
}

impl SnapshotFileConfig {
    /// A file at `path` sealed with `key`, served up to [`DEFAULT_SNAPSHOT_MAX_AGE`] old.
    pub fn new(path: impl Into<PathBuf>, key: SnapshotKey) -> SnapshotFileConfig {
        SnapshotFileConfig { path: path.into(), key, max_age: DEFAULT_SNAPSHOT_MAX_AGE }
    }

    /// The directory the file is written in (where the temp file goes too).
    pub(crate) fn directory(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// Refuses a configuration that could never write: a missing directory, or a path that
    /// names a directory. Checked at start so the operator hears of it at once.
    pub(crate) fn check(&self) -> Result<(), String> {
        let dir = self.directory();
        if !dir.is_dir() {
            return Err(format!(
                "the snapshot file's directory {} does not exist (MODELGW_SNAPSHOT_FILE={})",
                dir.display(),
                self.path.display()
            ));
        }
        if self.path.is_dir() {
            return Err(format!(
                "MODELGW_SNAPSHOT_FILE={} is a directory; name a file in it",
                self.path.display()
            ));
        }
        if self.path.file_name().is_none() {
            return Err(format!("MODELGW_SNAPSHOT_FILE={} names no file", self.path.display()));
        }
        Ok(())
    }
}

/// Why a snapshot file was not served (or could not be written). Says what to do; never
/// carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("no snapshot file yet")]
    Missing,
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the file is {bytes} bytes, more than the largest snapshot ({MAX_FILE_BYTES} bytes)")]
    TooLarge { bytes: u64 },
    #[error("the file is cut short ({bytes} bytes, not a whole sealed snapshot)")]
    Truncated { bytes: usize },
    #[error("not a sealed snapshot file (no MGWSNAP header)")]
    NotASnapshotFile,
    #[error("unsupported snapshot file format {format} (flags {flags}); this build reads format 1")]
    UnsupportedFormat { format: u16, flags: u16 },
    #[error(
        "authentication failed: wrong MODELGW_SNAPSHOT_KEY, or the file was altered or truncated"
    )]
    Unauthentic,
    #[error(
        "too old: version {version} was last confirmed by a control plane {age_s} s ago, more than MODELGW_SNAPSHOT_MAX_AGE ({max_age_s} s)"
    )]
    TooOld { version: u64, age_s: u64, max_age_s: u64 },
    #[error("the sealed snapshot is not valid: {0}")]
    Invalid(InvalidSnapshot),
    #[error("the header says version {header} but the snapshot holds version {snapshot}")]
    VersionMismatch { header: u64, snapshot: u64 },
    #[error("encryption failed")]
    Seal,
}

/// A snapshot read back from disk.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub snapshot: Snapshot,
    /// When a control plane last sent or confirmed it, unix ms.
    pub confirmed_unix_ms: i64,
    /// How old that was when it was read.
    pub age: Duration,
}

/// Reads, opens and decodes the snapshot file, refusing one older than `config.max_age`
/// (judged from the clear header before anything is decrypted, and trusted only because the
/// header is authenticated with the rest).
pub fn load(config: &SnapshotFileConfig) -> Result<LoadedSnapshot, SnapshotFileError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SnapshotFileError::Missing
        } else {
            SnapshotFileError::Io { path: config.path.display().to_string(), source }
        }
    };
    let length = std::fs::metadata(&config.path).map_err(io)?.len();
    if length > MAX_FILE_BYTES {
        return Err(SnapshotFileError::TooLarge { bytes: length });
    }
    let file = std::fs::read(&config.path).map_err(io)?;
    let header = Header::parse(&file)?;
    let age = age_of(header.confirmed_unix_ms, now_unix_ms());
    if age > config.max_age {
        return Err(SnapshotFileError::TooOld {
            version: header.version.0,
            age_s: age.as_secs(),
            max_age_s: config.max_age.as_secs(),
        });
    }
    let (header, plaintext) = open(&config.key, &file)?;
    let snapshot =
        modelgw_model::wire::decode_snapshot(&plaintext).map_err(SnapshotFileError::Invalid)?;
    if snapshot.version != header.version {
        return Err(SnapshotFileError::VersionMismatch {
            header: header.version.0,
            snapshot: snapshot.version.0,
        });
    }
    Ok(LoadedSnapshot { snapshot, confirmed_unix_ms: header.confirmed_unix_ms, age })
}

/// Seals `snapshot`, confirmed at `confirmed_unix_ms`, into the bytes of a snapshot file.
pub fn seal_snapshot(
    key: &SnapshotKey,
    snapshot: &Snapshot,
    confirmed_unix_ms: i64,
) -> Result<Vec<u8>, SnapshotFileError> {
    let plaintext = modelgw_model::wire::encode_snapshot(snapshot);
    seal(key, Header { version: snapshot.version, confirmed_unix_ms }, &plaintext)
}

/// How long ago `then_unix_ms` was at `now_unix_ms`; zero for a time ahead of the clock
/// (the clock was set back since).
pub(crate) fn age_of(then_unix_ms: i64, now_unix_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_unix_ms.saturating_sub(then_unix_ms)).unwrap_or(0))
}

/// The wall clock in unix ms.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the data plane serves from disk until a control plane's snapshot replaces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOrigin {
    /// When a control plane last sent or confirmed it, unix ms.
    pub confirmed_unix_ms: i64,
}

impl DiskOrigin {
    /// Its age now.
    pub fn age(&self) -> Duration {
        age_of(self.confirmed_unix_ms, now_unix_ms())
    }
}

/// The version a file holds, from its clear header (for tools and tests: not authenticated).
pub fn peek_version(file: &[u8]) -> Result<ConfigVersion, SnapshotFileError> {
    Header::parse(file).map(|h| h.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing_table::tests::{endpoint, gateway, member};
    use modelgw_model::{Credential, Platform, Secret};

    const ENDPOINT_KEY: &str = "upstream-endpoint-key-7f3a9c";

    fn snapshot(version: u64) -> Snapshot {
        let mut e = endpoint("eus", Platform::AzureOpenai, "gpt-4o");
        e.credential = Credential::ApiKey(Secret::new(ENDPOINT_KEY));
        let gw = gateway("chat", "client-key", vec![member(&e, true, 0, 1)]);
        Snapshot { version: ConfigVersion(version), endpoints: vec![e], gateways: vec![gw] }
    }

    fn config(dir: &Path, key: u8) -> SnapshotFileConfig {
        SnapshotFileConfig::new(dir.join("snapshot.sealed"), SnapshotKey::from_bytes([key; 32]))
    }

    #[test]
    fn a_saved_snapshot_loads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 7);
        let now = now_unix_ms();
        let saved = snapshot(9);
        let file = seal_snapshot(&config.key, &saved, now - 5_000).unwrap();
        assert!(!file.windows(ENDPOINT_KEY.len()).any(|w| w == ENDPOINT_KEY.as_bytes()));
        std::fs::write(&config.path, &file).unwrap();
        let loaded = load(&config).unwrap();
        assert_eq!(loaded.snapshot, saved);
        assert_eq!(loaded.confirmed_unix_ms, now - 5_000);
        assert!(loaded.age >= Duration::from_secs(5) && loaded.age < Duration::from_secs(60));
        assert_eq!(peek_version(&file).unwrap(), ConfigVersion(9));
    }

    #[test]
    fn a_file_older_than_the_maximum_age_is_refused_before_decrypting() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), 7);
        config.max_age = Duration::from_secs(60);
        let old = now_unix_ms() - 61_000;
        std::fs::write(&config.path, seal_snapshot(&config.key, &snapshot(3), old).unwrap())
            .unwrap();
        let err = load(&config).unwrap_err();
        assert!(
            matches!(err, SnapshotFileError::TooOld { version: 3, age_s: 61..=70, max_age_s: 60 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("MODELGW_SNAPSHOT_MAX_AGE"), "{err}");
        // Judged from the header alone: even with a wrong key the reason is the age.
        let mut wrong = config.clone();
        wrong.key = SnapshotKey::from_bytes([8; 32]);
        assert!(matches!(load(&wrong), Err(SnapshotFileError::TooOld { .. })));
        // A time ahead of the clock (set back since) counts as new.
        assert_eq!(age_of(now_unix_ms() + 10_000, now_unix_ms()), Duration::ZERO);
    }

    #[test]
    fn wrong_key_tampered_truncated_missing_and_foreign_files_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 7);
        assert!(matches!(load(&config), Err(SnapshotFileError::Missing)));
        let file = seal_snapshot(&config.key, &snapshot(4), now_unix_ms()).unwrap();

        std::fs::write(&config.path, &file).unwrap();
        let mut wrong = config.clone();
        wrong.key = SnapshotKey::from_bytes([8; 32]);
        assert!(matches!(load(&wrong), Err(SnapshotFileError::Unauthentic)));

        let mut tampered = file.clone();
        let last = tampered.len() - 1;
        tampered[last / 2] ^= 0x80;
        std::fs::write(&config.path, &tampered).unwrap();
        assert!(matches!(load(&config), Err(SnapshotFileError::Unauthentic)));

        std::fs::write(&config.path, &file[..file.len() - 1]).unwrap();
        assert!(matches!(load(&config), Err(SnapshotFileError::Unauthentic)));
        std::fs::write(&config.path, &file[..20]).unwrap();
        assert!(matches!(load(&config), Err(SnapshotFileError::Truncated { bytes: 20 })));

        std::fs::write(&config.path, b"endpoints: [{key: plaintext}] -- not ours at all").unwrap();
        assert!(matches!(load(&config), Err(SnapshotFileError::NotASnapshotFile)));

        std::fs::remove_file(&config.path).unwrap();
        std::fs::create_dir(&config.path).unwrap();
        assert!(matches!(load(&config), Err(SnapshotFileError::Io { .. })));
    }

    #[test]
    fn a_sealed_file_that_is_not_a_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 7);
        let header = Header { version: ConfigVersion(4), confirmed_unix_ms: now_unix_ms() };
        std::fs::write(&config.path, seal(&config.key, header, b"\xff\xff\xff").unwrap()).unwrap();
        let err = load(&config).unwrap_err();
        assert!(matches!(err, SnapshotFileError::Invalid(_)), "{err:?}");
        // A version in the header that the snapshot does not hold (cannot be written by us).
        let header = Header { version: ConfigVersion(5), confirmed_unix_ms: now_unix_ms() };
        let plaintext = modelgw_model::wire::encode_snapshot(&snapshot(4));
        std::fs::write(&config.path, seal(&config.key, header, &plaintext).unwrap()).unwrap();
        assert!(matches!(
            load(&config),
            Err(SnapshotFileError::VersionMismatch { header: 5, snapshot: 4 })
        ));
    }

    #[test]
    fn keys_parse_from_base64_and_never_show() {
        let key = SnapshotKey::from_base64(&format!(" {}\n", STANDARD.encode([3u8; 32]))).unwrap();
        assert_eq!(key.bytes(), &[3u8; 32]);
        assert_eq!(format!("{key:?}"), "SnapshotKey(<redacted>)");
        assert!(matches!(
            SnapshotKey::from_base64(&STANDARD.encode([3u8; 16])),
            Err(SnapshotKeyError::Length(16))
        ));
        assert!(matches!(SnapshotKey::from_base64("not base64!"), Err(SnapshotKeyError::Encoding)));
        let dir = tempfile::tempdir().unwrap();
        let err = SnapshotKey::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(err.to_string().starts_with("reading the snapshot key file"), "{err}");
        let file = dir.path().join("key");
        std::fs::write(&file, STANDARD.encode([4u8; 32])).unwrap();
        assert_eq!(SnapshotKey::from_file(&file).unwrap().bytes(), &[4u8; 32]);
    }

    #[test]
    fn a_missing_directory_or_a_directory_path_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(config(dir.path(), 1).check().is_ok());
        let absent = config(&dir.path().join("absent"), 1);
        assert!(absent.check().unwrap_err().contains("does not exist"));
        let mut directory = config(dir.path(), 1);
        directory.path = dir.path().to_path_buf();
        assert!(directory.check().unwrap_err().contains("is a directory"));
    }
}
