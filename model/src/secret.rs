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
    fn short_secrets_get_no_hint() {
        assert_eq!(Secret::new("abcdefgh").hint(), "…");
    }
}
