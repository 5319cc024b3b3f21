//! Limits and reserved names of the configuration: the one home of every bound the admin API
//! enforces on input, the Azure import respects when it proposes gateways, and the protocol
//! applies to what data planes send.

use std::ops::RangeInclusive;

/// Longest free-text value (names, deployments, model names, regions). Generous for real
/// names; bounds what one row and one snapshot entry can carry.
pub const MAX_TEXT_CHARS: usize = 256;

/// Longest gateway name. Gateway names are a path segment of client URLs
/// (`/openai/deployments/{name}/…`), where Azure allows 64 characters for deployment names.
pub const MAX_GATEWAY_NAME_CHARS: usize = 64;

/// Gateway names that would be ambiguous in client URLs: `auto` is reserved for gateway-side
/// deployment selection, and `.`/`..` are dot segments that URL normalisers rewrite.
/// Compared without regard to ASCII case.
pub const RESERVED_GATEWAY_NAMES: [&str; 3] = ["auto", ".", ".."];

/// Longest accepted endpoint API key. Azure keys are 32–84 characters; OpenAI-compatible
/// bearer tokens (JWTs included) stay well below this.
pub const MAX_API_KEY_CHARS: usize = 4096;

/// Accepted `priority` range; lower is preferred.
pub const PRIORITY_RANGE: RangeInclusive<i64> = 0..=100;

/// Accepted `weight` range: relative share within a priority group. 1000 gives 0.1% steps.
pub const WEIGHT_RANGE: RangeInclusive<i64> = 1..=1000;

/// Accepted `routing.request_timeout_ms`: end-to-end deadline of one request. Below 1 s not
/// even a short completion's first token arrives reliably; above 10 min a client has long
/// given up (Azure itself ends idle streams well before).
pub const REQUEST_TIMEOUT_MS_RANGE: RangeInclusive<i64> = 1_000..=600_000;

/// Most members one gateway can have; well above any real failover set, and it bounds the
/// work of one request.
pub const MAX_GATEWAY_MEMBERS: usize = 256;

/// Longest data-plane node id: a fully qualified host name is at most 253 characters.
pub const MAX_NODE_ID_CHARS: usize = 253;

/// Longest NACK or health reason kept from a data plane; reasons are for operators, and the
/// control plane keeps them in memory for the life of the process, so a misbehaving client
/// cannot grow it unboundedly. Longer reasons are cut, not refused.
pub const MAX_REASON_CHARS: usize = 512;

/// Longest data-plane build version kept (it is only logged).
pub const MAX_BUILD_VERSION_CHARS: usize = 64;

/// Whether `name` is one of [`RESERVED_GATEWAY_NAMES`].
pub fn is_reserved_gateway_name(name: &str) -> bool {
    RESERVED_GATEWAY_NAMES.iter().any(|r| name.eq_ignore_ascii_case(r))
}

/// Whether `c` may appear in a gateway name (it is a URL path segment and a log value).
pub fn is_gateway_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// `s` cut to at most `max` characters (on a character boundary), with `…` marking a cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_ignore_case_and_include_dot_segments() {
        for name in ["auto", "AUTO", "Auto", ".", ".."] {
            assert!(is_reserved_gateway_name(name), "{name}");
        }
        for name in ["autos", "...", "gpt-4o"] {
            assert!(!is_reserved_gateway_name(name), "{name}");
        }
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("ééé", 2), "éé…");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
