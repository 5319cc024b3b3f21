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

/// Most (gateway, endpoint) entries in one statistics report; a data plane with more active
/// pairs in one interval sends several reports. At the worst case of every count at
/// `u64::MAX` an entry encodes to ~451 bytes, so 2,000 of them and
/// [`MAX_STATS_GATEWAYS_PER_REPORT`] gateway entries (~62 bytes each) stay under the control
/// plane's 1 MiB message cap; a decoder keeps the first ones and names the rest as skipped.
pub const MAX_STATS_ROUTES_PER_REPORT: usize = 2_000;

/// Most gateway entries in one statistics report (see [`MAX_STATS_ROUTES_PER_REPORT`]).
pub const MAX_STATS_GATEWAYS_PER_REPORT: usize = 1_000;

/// Most deployment ids one Azure import accepts (and at least one): far above any real tenant's
/// OpenAI deployments, low enough that one request cannot hold the write transaction for long.
pub const MAX_IMPORT_IDS: usize = 1000;

/// The characters `char::is_whitespace` matches (Unicode `White_Space`), as inclusive ranges:
/// what `str::trim` removes from the free-text values and API keys the admin API trims.
pub const WHITESPACE: [(char, char); 10] = [
    ('\u{9}', '\u{D}'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{A0}', '\u{A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// The characters `char::is_control` matches (Unicode `Cc`), as inclusive ranges: refused
/// anywhere in a free-text value.
pub const CONTROL: [(char, char); 2] = [('\u{0}', '\u{1F}'), ('\u{7F}', '\u{9F}')];

/// The characters an API key consists of once trimmed: printable ASCII without the space (it
/// is sent upstream as an HTTP header value).
pub const API_KEY_CHARS: (char, char) = ('!', '~');

/// `ranges` as the body of a regular-expression character class, every character spelled as a
/// `\uXXXX` escape, which ECMA-262 (the dialect of JSON Schema `pattern`), Python and Rust
/// read alike.
fn class_body(ranges: &[(char, char)]) -> String {
    let escape = |c: char| format!("\\u{:04X}", u32::from(c));
    ranges
        .iter()
        .map(
            |&(lo, hi)| {
                if lo == hi { escape(lo) } else { format!("{}-{}", escape(lo), escape(hi)) }
            },
        )
        .collect()
}

/// The document's `pattern` of a free-text value ([`MAX_TEXT_CHARS`] is its `maxLength`): no
/// control character, and at least one character that trimming keeps.
pub fn text_pattern() -> String {
    let control = class_body(&CONTROL);
    let spaces: Vec<(char, char)> =
        WHITESPACE.iter().copied().filter(|&(lo, hi)| !(lo..=hi).any(char::is_control)).collect();
    let spaces = class_body(&spaces);
    format!("^[^{control}]*[^{control}{spaces}][^{control}]*$")
}

/// The document's `pattern` of an API key ([`MAX_API_KEY_CHARS`] is its `maxLength`): one or
/// more of [`API_KEY_CHARS`], with whitespace around it that trimming removes.
pub fn api_key_pattern() -> String {
    let space = class_body(&WHITESPACE);
    let key = class_body(&[API_KEY_CHARS]);
    format!("^[{space}]*[{key}]+[{space}]*$")
}

/// The document's `pattern` of a gateway name: 1 to [`MAX_GATEWAY_NAME_CHARS`] characters
/// allowed by [`is_gateway_name_char`], and none of [`RESERVED_GATEWAY_NAMES`] in any ASCII case
/// (a negative lookahead each, which ECMA-262 and Python support).
pub fn gateway_name_pattern() -> String {
    let reserved: String = RESERVED_GATEWAY_NAMES
        .iter()
        .map(|name| {
            let spelled: String = name
                .chars()
                .map(|c| match c {
                    c if c.is_ascii_alphabetic() => {
                        format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                    }
                    c => format!("\\{c}"),
                })
                .collect();
            format!("(?!{spelled}$)")
        })
        .collect();
    format!("^{reserved}[A-Za-z0-9._-]{{1,{MAX_GATEWAY_NAME_CHARS}}}$")
}

/// The document's `pattern` of an id in a request body: a UUID in its hyphenated form.
pub const UUID_PATTERN: &str =
    "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

/// The document's `pattern` of an upstream base URL, which the validator also applies: `http`
/// or `https`, a host name (labels of letters and digits joined by single hyphens, the last
/// starting with a letter) or a dotted IPv4 address, an optional port, a path of URL
/// characters, no credentials, query or fragment, and whitespace around it that trimming
/// removes. No lookaround, so that ECMA-262, Python and the `regex` crate read it alike.
pub fn base_url_pattern() -> String {
    let space = class_body(&WHITESPACE);
    let label = "[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*";
    let last = "[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*";
    let host = format!("(?:{label}\\.)*{last}");
    let octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let ipv4 = format!("(?:{octet}\\.){{3}}{octet}");
    let port =
        "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    let path = "(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*";
    format!("^[{space}]*[Hh][Tt][Tt][Pp][Ss]?://(?:{host}|{ipv4})(?::{port})?{path}[{space}]*$")
}

/// Whether `c` is in one of `ranges`.
pub fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

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
    fn the_character_ranges_are_the_std_predicates() {
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            assert_eq!(in_ranges(&WHITESPACE, c), c.is_whitespace(), "{c:?}");
            assert_eq!(in_ranges(&CONTROL, c), c.is_control(), "{c:?}");
            assert_eq!(
                in_ranges(&[API_KEY_CHARS], c),
                c.is_ascii() && (c as u8).is_ascii_graphic(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn patterns_spell_the_limits() {
        assert_eq!(
            gateway_name_pattern(),
            r"^(?![Aa][Uu][Tt][Oo]$)(?!\.$)(?!\.\.$)[A-Za-z0-9._-]{1,64}$"
        );
        assert!(text_pattern().starts_with(r"^[^\u0000-\u001F\u007F-\u009F]*[^"));
        assert_eq!(
            api_key_pattern(),
            r"^[\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028-\u2029\u202F\u205F\u3000]*[\u0021-\u007E]+[\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028-\u2029\u202F\u205F\u3000]*$"
        );
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("ééé", 2), "éé…");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
