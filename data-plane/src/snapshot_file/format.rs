//! The sealed snapshot file, byte by byte:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `MGWSNAP\0` |
//! | 8 | 2 | format version, big-endian (1) |
//! | 10 | 2 | flags, big-endian (0; anything else is a format this build cannot read) |
//! | 12 | 8 | the snapshot's config version, big-endian |
//! | 20 | 8 | when a control plane last sent or confirmed it, unix ms, big-endian |
//! | 28 | 24 | XChaCha20-Poly1305 nonce (random per write) |
//! | 52 | n + 16 | the snapshot's protobuf encoding, encrypted, and the tag |
//!
//! The first 28 bytes are in clear so a file's age and version can be judged before
//! decrypting, and are the associated data: changing any of them (or the magic and format
//! version, which are the domain tag) fails authentication. Nothing else is bound in: every
//! data plane of a fleet gets the same snapshot, and a node id (often the pod's name) changes
//! with every new pod, so binding it would lose the file on reschedule and protect nothing —
//! whoever holds the key reads any file sealed with it.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use modelgw_model::ConfigVersion;

use super::{SnapshotFileError, SnapshotKey};

/// Identifies a sealed snapshot file.
const MAGIC: [u8; 8] = *b"MGWSNAP\0";
/// The one format this build writes and reads.
const FORMAT_VERSION: u16 = 1;
/// Length of the clear, authenticated header.
pub(crate) const HEADER_LEN: usize = 28;
/// Length of an XChaCha20-Poly1305 nonce.
const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag.
const TAG_LEN: usize = 16;
/// The shortest file that can be whole: header, nonce and tag around an empty plaintext.
pub(crate) const MIN_FILE_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// What the encryption adds to the plaintext's length.
pub(crate) const OVERHEAD: usize = MIN_FILE_LEN;

/// The clear part of a sealed file: readable without the key, trusted only once the file
/// opened (it is the associated data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The snapshot's configuration version.
    pub version: ConfigVersion,
    /// When a control plane last sent this snapshot or confirmed it current, unix ms.
    pub confirmed_unix_ms: i64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        // 10..12: flags, zero.
        out[12..20].copy_from_slice(&self.version.0.to_be_bytes());
        out[20..28].copy_from_slice(&self.confirmed_unix_ms.to_be_bytes());
        out
    }

    /// Reads the header of `file` (not yet authenticated).
    pub fn parse(file: &[u8]) -> Result<Header, SnapshotFileError> {
        // The magic first: a file that is not ours at all says so, whatever its length.
        if file.len() < MAGIC.len() || file[0..8] != MAGIC {
            return Err(if MAGIC.starts_with(file) {
                SnapshotFileError::Truncated { bytes: file.len() }
            } else {
                SnapshotFileError::NotASnapshotFile
            });
        }
        if file.len() < MIN_FILE_LEN {
            return Err(SnapshotFileError::Truncated { bytes: file.len() });
        }
        let format = u16::from_be_bytes([file[8], file[9]]);
        let flags = u16::from_be_bytes([file[10], file[11]]);
        if format != FORMAT_VERSION || flags != 0 {
            return Err(SnapshotFileError::UnsupportedFormat { format, flags });
        }
        let mut version = [0u8; 8];
        version.copy_from_slice(&file[12..20]);
        let mut confirmed = [0u8; 8];
        confirmed.copy_from_slice(&file[20..28]);
        Ok(Header {
            version: ConfigVersion(u64::from_be_bytes(version)),
            confirmed_unix_ms: i64::from_be_bytes(confirmed),
        })
    }
}

/// Seals `plaintext` (a snapshot's protobuf encoding) under `key` with `header` in clear.
pub fn seal(
    key: &SnapshotKey,
    header: Header,
    plaintext: &[u8],
) -> Result<Vec<u8>, SnapshotFileError> {
    let aad = header.encode();
    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad: &aad })
        .map_err(|_| SnapshotFileError::Seal)?;
    let mut file = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ciphertext.len());
    file.extend_from_slice(&aad);
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&ciphertext);
    Ok(file)
}

/// Opens a file made by [`seal`]: its header and the plaintext. Refuses a file that is not
/// one, is cut short, or fails authentication (wrong key, any byte changed).
pub fn open(key: &SnapshotKey, file: &[u8]) -> Result<(Header, Vec<u8>), SnapshotFileError> {
    let header = Header::parse(file)?;
    let (aad, rest) = file.split_at(HEADER_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let plaintext = cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| SnapshotFileError::Unauthentic)?;
    Ok((header, plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SnapshotKey {
        SnapshotKey::from_bytes([byte; 32])
    }

    const HEADER: Header =
        Header { version: ConfigVersion(42), confirmed_unix_ms: 1_700_000_000_123 };

    #[test]
    fn a_sealed_file_opens_with_its_key_and_its_header_reads_without_it() {
        let plaintext = b"snapshot bytes with upstream-key-0123456789 inside";
        let file = seal(&key(1), HEADER, plaintext).unwrap();
        assert_eq!(file.len(), plaintext.len() + OVERHEAD);
        assert_eq!(&file[..8], b"MGWSNAP\0");
        assert_eq!(Header::parse(&file).unwrap(), HEADER);
        let (header, opened) = open(&key(1), &file).unwrap();
        assert_eq!(header, HEADER);
        assert_eq!(opened, plaintext);
        // Neither the plaintext nor a piece of it is in the file.
        assert!(!file.windows(12).any(|w| w == b"upstream-key"));
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let a = seal(&key(1), HEADER, b"same").unwrap();
        let b = seal(&key(1), HEADER, b"same").unwrap();
        assert_eq!(a[..HEADER_LEN], b[..HEADER_LEN]);
        assert_ne!(a[HEADER_LEN..HEADER_LEN + NONCE_LEN], b[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let file = seal(&key(1), HEADER, b"plaintext").unwrap();
        let err = open(&key(2), &file).unwrap_err();
        assert!(matches!(err, SnapshotFileError::Unauthentic), "{err:?}");
        assert!(err.to_string().contains("wrong MODELGW_SNAPSHOT_KEY"), "{err}");
    }

    #[test]
    fn any_changed_byte_is_refused_header_included() {
        let file = seal(&key(1), HEADER, b"plaintext of some length").unwrap();
        for i in 0..file.len() {
            let mut tampered = file.clone();
            tampered[i] ^= 0x01;
            let err = open(&key(1), &tampered).unwrap_err();
            match i {
                0..8 => assert!(matches!(err, SnapshotFileError::NotASnapshotFile), "{i}: {err:?}"),
                8..12 => assert!(
                    matches!(err, SnapshotFileError::UnsupportedFormat { .. }),
                    "{i}: {err:?}"
                ),
                // The version and the time are authenticated: a younger-looking file fails.
                _ => assert!(matches!(err, SnapshotFileError::Unauthentic), "{i}: {err:?}"),
            }
        }
    }

    #[test]
    fn a_truncated_file_is_refused_at_every_length() {
        let file = seal(&key(1), HEADER, b"plaintext").unwrap();
        for len in 0..file.len() {
            let err = open(&key(1), &file[..len]).unwrap_err();
            if len < MIN_FILE_LEN {
                assert!(
                    matches!(err, SnapshotFileError::Truncated { bytes } if bytes == len),
                    "{len}: {err:?}"
                );
            } else {
                assert!(matches!(err, SnapshotFileError::Unauthentic), "{len}: {err:?}");
            }
        }
        // Bytes appended are refused as well.
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(open(&key(1), &longer), Err(SnapshotFileError::Unauthentic)));
    }

    #[test]
    fn other_files_and_formats_are_named() {
        let err =
            open(&key(1), b"{\"version\": 3, \"endpoints\": []} and more bytes to be long enough")
                .unwrap_err();
        assert!(matches!(err, SnapshotFileError::NotASnapshotFile), "{err:?}");
        let mut newer = seal(&key(1), HEADER, b"x").unwrap();
        newer[9] = 2;
        let err = open(&key(1), &newer).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported snapshot file format 2 (flags 0); this build reads format 1"
        );
    }
}
