use std::fmt;

/// A credential in memory. `Debug` and `Display` never print it; only `expose` does, and
/// only code that sends it upstream or encrypts it at rest should call that.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call sites are the upstream request builder and the at-rest encryption.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A hint safe to show operators: the last four characters, e.g. `…a1b2`.
    pub fn hint(&self) -> String {
        let tail: String = {
            let chars: Vec<char> = self.0.chars().collect();
            let start = chars.len().saturating_sub(4);
            // Short secrets get no hint at all: four characters of an eight-character
            // secret would be half of it.
            if chars.len() < 12 {
                return "…".to_owned();
            }
            chars[start..].iter().collect()
        };
        format!("…{tail}")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A gateway's pin key: 32 bytes that sign the response ids the gateway mints for clients
/// (see ARCHITECTURE.md, "Pinned stateful calls"). Derived by the control plane from its
/// master key and the gateway id, carried to data planes in the snapshot. Like [`Secret`],
/// `Debug` never prints it; only `expose` does, and only the data plane's pin codec calls it.
#[derive(Clone, PartialEq, Eq)]
pub struct PinKey([u8; PinKey::LEN]);

impl PinKey {
    /// Length in bytes (an HMAC-SHA256 key as long as its output).
    pub const LEN: usize = 32;

    pub const fn new(bytes: [u8; PinKey::LEN]) -> Self {
        Self(bytes)
    }

    /// The key from a byte slice of exactly [`PinKey::LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The key's bytes. Call sites: the wire encoding and the data plane's pin codec.
    pub fn expose(&self) -> &[u8; PinKey::LEN] {
        &self.0
    }
}

impl fmt::Debug for PinKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinKey(<redacted>)")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let s = Secret::new("sk-very-secret-value-a1b2");
        assert!(!format!("{s:?}").contains("very-secret"));
        assert!(!format!("{s}").contains("very-secret"));
        assert_eq!(s.hint(), "…a1b2");
    }

    #[test]
    fn pin_keys_never_print_and_take_exactly_32_bytes() {
        let key = PinKey::new([0xab; 32]);
        assert_eq!(format!("{key:?}"), "PinKey(<redacted>)");
        assert_eq!(PinKey::from_slice(&[0xab; 32]), Some(key));
        assert_eq!(PinKey::from_slice(&[0xab; 31]), None);
        assert_eq!(PinKey::from_slice(&[0xab; 33]), None);
    }

    #[test]
    fn short_secrets_get_no_hint() {
        assert_eq!(Secret::new("abcdefgh").hint(), "…");
    }
}
