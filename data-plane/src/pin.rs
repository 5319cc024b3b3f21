//! Pinned response ids: the ids of Responses API objects as the gateway's clients see them.
//!
//! A response (`resp_…`) lives in the Azure resource that created it, so every follow-up
//! (`previous_response_id`, `responses/{id}` retrieve, delete, cancel, input items) must reach
//! that endpoint — from any data plane, with no shared state and no database on the request
//! path. The gateway therefore mints the ids its clients see: on the way out the upstream's id
//! is replaced by a *pinned id* that names the endpoint holding it and carries a MAC under the
//! gateway's pin key; on the way in the pinned id is verified and decoded back to (endpoint,
//! upstream id). See ARCHITECTURE.md, "Pinned stateful calls".
//!
//! Format (ASCII, URL-path safe, `[A-Za-z0-9_-]` only):
//! `resp_mgw1` + T + M + S + R where
//! - T: 8 lowercase hex, the first 4 bytes of SHA-256 of the endpoint id's canonical string
//!   (its *tag*, precomputed per endpoint);
//! - M: 16 lowercase hex, the first 8 bytes of HMAC-SHA256(pin key, endpoint id ‖ 0x00 ‖
//!   upstream id);
//! - S: `_` when the upstream id is `resp_` + R (the common case: the prefix is not repeated),
//!   `-` when the upstream id is R itself (an upstream whose ids lack the `resp_` prefix).
//!
//! Minting is deterministic: the same upstream id from the same endpoint through the same
//! gateway always gives the same pinned id. So every response id in an answer from endpoint E
//! can be minted as held by E without learning anything first (a chain of responses only ever
//! exists inside one resource), and the pinned id a client sent as `previous_response_id` is
//! exactly what the echo of it in the answer becomes.

use std::sync::{Arc, LazyLock};

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use modelgw_model::{EndpointId, PinKey};
use ring::hmac;
use subtle::ConstantTimeEq as _;

use crate::routing_table::CompiledEndpoint;

/// What every pinned id starts with (`mgw1`: the format's version).
pub(crate) const PINNED_PREFIX: &str = "resp_mgw1";
/// The prefix of the upstream ids the common format leaves out.
const UPSTREAM_PREFIX: &[u8] = b"resp_";
/// Bytes of the endpoint tag and of the MAC (each written as twice as many hex digits).
const TAG_BYTES: usize = 4;
const MAC_BYTES: usize = 8;
/// The separator after the MAC when the upstream id is `resp_` + what follows.
const SEP_STRIPPED: u8 = b'_';
/// The separator when the upstream id follows whole.
const SEP_WHOLE: u8 = b'-';
/// Longest upstream id the gateway mints (Azure's and OpenAI's are ~55 characters); longer
/// ones pass through as they are, and a pinned id is bounded by this plus 34.
pub(crate) const MAX_UPSTREAM_ID: usize = 200;
/// Longest pinned id accepted on the way in.
pub(crate) const MAX_PINNED_ID: usize =
    PINNED_PREFIX.len() + 2 * TAG_BYTES + 2 * MAC_BYTES + 1 + MAX_UPSTREAM_ID;

/// The first 4 bytes of SHA-256 of an endpoint id's canonical string: which endpoint a pinned
/// id names. Not a secret; the MAC is what makes an id unforgeable.
pub type EndpointTag = [u8; TAG_BYTES];

/// An endpoint's tag; computed once per endpoint when a snapshot is compiled.
pub fn endpoint_tag(id: EndpointId) -> EndpointTag {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(id.to_string().as_bytes());
    let mut tag = [0u8; TAG_BYTES];
    tag.copy_from_slice(&digest[..TAG_BYTES]);
    tag
}

/// Whether `b` may be part of an id (upstream or pinned): `[A-Za-z0-9_-]`.
#[inline]
fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether `s` is a non-empty id of `[A-Za-z0-9_-]` only.
pub(crate) fn is_id(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| is_id_byte(*b))
}

/// A gateway's pin key as HMAC state, built once per snapshot.
#[derive(Clone)]
pub(crate) struct GatewayPinKey(hmac::Key);

impl GatewayPinKey {
    pub(crate) fn new(key: &PinKey) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key.expose()))
    }
}

impl std::fmt::Debug for GatewayPinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayPinKey(<redacted>)")
    }
}

/// Mints and verifies the pinned ids of one (gateway, endpoint) pair: the HMAC state with the
/// gateway's key, the endpoint id and the 0x00 separator already absorbed, so one id costs one
/// clone and the hash of the id itself.
#[derive(Clone)]
pub(crate) struct PinSigner {
    tag: EndpointTag,
    tag_hex: [u8; 2 * TAG_BYTES],
    absorbed: hmac::Context,
}

impl std::fmt::Debug for PinSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tag is public (it is in every id); the HMAC state is never printed.
        f.debug_struct("PinSigner").field("tag", &hex(&self.tag)).finish_non_exhaustive()
    }
}

impl PinSigner {
    pub(crate) fn new(key: &GatewayPinKey, endpoint: EndpointId, tag: EndpointTag) -> Self {
        let mut absorbed = hmac::Context::with_key(&key.0);
        absorbed.update(endpoint.to_string().as_bytes());
        absorbed.update(&[0]);
        let mut tag_hex = [0u8; 2 * TAG_BYTES];
        write_hex(&tag, &mut tag_hex);
        Self { tag, tag_hex, absorbed }
    }

    fn mac(&self, upstream_id: &[u8]) -> [u8; MAC_BYTES] {
        let mut context = self.absorbed.clone();
        context.update(upstream_id);
        let full = context.sign();
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&full.as_ref()[..MAC_BYTES]);
        mac
    }

    /// Appends the pinned id of `upstream_id` to `out`; `false` (nothing appended) when it is
    /// not an id the gateway mints (empty, longer than [`MAX_UPSTREAM_ID`], or a byte outside
    /// `[A-Za-z0-9_-]`).
    pub(crate) fn mint_into(&self, upstream_id: &[u8], out: &mut Vec<u8>) -> bool {
        if upstream_id.len() > MAX_UPSTREAM_ID || !is_id(upstream_id) {
            return false;
        }
        let mut mac_hex = [0u8; 2 * MAC_BYTES];
        write_hex(&self.mac(upstream_id), &mut mac_hex);
        out.extend_from_slice(PINNED_PREFIX.as_bytes());
        out.extend_from_slice(&self.tag_hex);
        out.extend_from_slice(&mac_hex);
        match upstream_id.strip_prefix(UPSTREAM_PREFIX) {
            Some(rest) if !rest.is_empty() => {
                out.push(SEP_STRIPPED);
                out.extend_from_slice(rest);
            }
            _ => {
                out.push(SEP_WHOLE);
                out.extend_from_slice(upstream_id);
            }
        }
        true
    }

    /// The pinned id of `upstream_id`, if it is one the gateway mints (see [`Self::mint_into`]).
    #[cfg(test)]
    pub(crate) fn mint(&self, upstream_id: &str) -> Option<String> {
        let mut out = Vec::with_capacity(upstream_id.len() + 40);
        self.mint_into(upstream_id.as_bytes(), &mut out).then(|| {
            // Only `[A-Za-z0-9_-]` was written.
            String::from_utf8_lossy(&out).into_owned()
        })
    }

    /// Whether `id` was minted by this pair: its tag is this endpoint's and its MAC verifies
    /// (compared in constant time).
    pub(crate) fn verifies(&self, id: &PinnedId<'_>) -> bool {
        if id.tag != self.tag {
            return false;
        }
        let expected = self.mac(id.upstream().as_bytes());
        bool::from(expected[..].ct_eq(&id.mac[..]))
    }

    pub(crate) fn tag(&self) -> EndpointTag {
        self.tag
    }
}

/// A pinned id as a client sent it: decoded, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PinnedId<'a> {
    tag: EndpointTag,
    mac: [u8; MAC_BYTES],
    /// `true` when the upstream id is `resp_` + `rest`.
    stripped: bool,
    rest: &'a str,
}

impl<'a> PinnedId<'a> {
    /// Decodes `id`; `None` when it is not in the pinned format (a raw upstream id, another
    /// gateway's format, a byte outside `[A-Za-z0-9_-]`, uppercase hex, too long).
    pub(crate) fn parse(id: &'a str) -> Option<PinnedId<'a>> {
        if id.len() > MAX_PINNED_ID || !is_id(id.as_bytes()) {
            return None;
        }
        let body = id.strip_prefix(PINNED_PREFIX)?.as_bytes();
        let hex_len = 2 * (TAG_BYTES + MAC_BYTES);
        if body.len() < hex_len + 2 {
            return None;
        }
        let mut tag = [0u8; TAG_BYTES];
        let mut mac = [0u8; MAC_BYTES];
        read_hex(&body[..2 * TAG_BYTES], &mut tag)?;
        read_hex(&body[2 * TAG_BYTES..hex_len], &mut mac)?;
        let stripped = match body[hex_len] {
            SEP_STRIPPED => true,
            SEP_WHOLE => false,
            _ => return None,
        };
        // ASCII only (checked above): any byte offset is a char boundary.
        let rest = &id[PINNED_PREFIX.len() + hex_len + 1..];
        Some(PinnedId { tag, mac, stripped, rest })
    }

    /// The tag of the endpoint the id names.
    pub(crate) fn tag(&self) -> EndpointTag {
        self.tag
    }

    /// The upstream's id.
    pub(crate) fn upstream(&self) -> std::borrow::Cow<'a, str> {
        if self.stripped {
            let mut id = String::with_capacity(UPSTREAM_PREFIX.len() + self.rest.len());
            id.push_str("resp_");
            id.push_str(self.rest);
            std::borrow::Cow::Owned(id)
        } else {
            std::borrow::Cow::Borrowed(self.rest)
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    write_hex(bytes, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Lowercase hex only: one spelling per id, so an id cannot be varied without changing it.
fn read_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(())
}

// ---- a gateway's pins, compiled with the routing table ----

/// A gateway's pinning state, compiled once per snapshot: its key and one signer per member
/// (enabled or disabled), sorted by tag.
#[derive(Debug)]
pub struct GatewayPins {
    key: GatewayPinKey,
    members: Vec<PinnedMember>,
}

#[derive(Debug)]
struct PinnedMember {
    signer: PinSigner,
    endpoint: Arc<CompiledEndpoint>,
    /// Where an enabled member is in the gateway (`groups[g].members[m]`); `None`: disabled.
    place: Option<(usize, usize)>,
}

/// Where a verified pinned id leads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PinTarget<'g> {
    /// Held by the enabled member `groups[group].members[member]`.
    Member { group: usize, member: usize },
    /// Minted through this gateway, but the endpoint holding it is disabled in it, or no
    /// longer one of its members.
    Gone { endpoint: &'g str },
    /// Not an id this gateway minted (raw, forged, altered, another gateway's), or its
    /// endpoint is no longer configured at all: the two cannot be told apart.
    Unknown,
}

impl GatewayPins {
    pub(crate) fn new(key: GatewayPinKey) -> Self {
        Self { key, members: Vec::new() }
    }

    /// Adds a member; `place` is `None` for a disabled one.
    pub(crate) fn add(&mut self, endpoint: &Arc<CompiledEndpoint>, place: Option<(usize, usize)>) {
        let signer = self.signer(endpoint);
        self.members.push(PinnedMember { signer, endpoint: Arc::clone(endpoint), place });
    }

    /// Sorts the members by tag; call once all are added.
    pub(crate) fn seal(&mut self) {
        self.members.sort_by_key(|m| m.signer.tag());
    }

    /// The signer of `endpoint` under this gateway's key.
    pub(crate) fn signer(&self, endpoint: &CompiledEndpoint) -> PinSigner {
        PinSigner::new(&self.key, endpoint.id, endpoint.pin_tag)
    }

    /// Where `id` leads in this gateway. `configured` finds the endpoints of the whole table
    /// with a tag (for the message about an endpoint that left the gateway).
    pub(crate) fn resolve<'g>(
        &'g self,
        id: &PinnedId<'_>,
        configured: &'g [Arc<CompiledEndpoint>],
    ) -> PinTarget<'g> {
        let tag = id.tag();
        let start = self.members.partition_point(|m| m.signer.tag() < tag);
        // Tags are 32 bits: two members may share one, so each is checked.
        for m in self.members[start..].iter().take_while(|m| m.signer.tag() == tag) {
            if m.signer.verifies(id) {
                return match m.place {
                    Some((group, member)) => PinTarget::Member { group, member },
                    None => PinTarget::Gone { endpoint: &m.endpoint.name },
                };
            }
        }
        for endpoint in configured {
            if self.signer(endpoint).verifies(id) {
                return PinTarget::Gone { endpoint: &endpoint.name };
            }
        }
        PinTarget::Unknown
    }
}

// ---- response ids in answers ----

/// The JSON members whose `resp_…` string values are response ids: the object's own `id`, the
/// `previous_response_id` it continues, and a `response_id` that refers to one.
const ID_KEYS: [&[u8]; 3] = [b"\"id\"", b"\"previous_response_id\"", b"\"response_id\""];
/// How far back from a value its key is looked for: the longest key, a colon and some
/// whitespace.
const LOOKBEHIND: usize = 64;
/// The start of a response id as a JSON string value.
const ID_START: &[u8] = b"\"resp_";
static ID_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(ID_START));

/// Whether the bytes before a value's opening quote end with one of [`ID_KEYS`] and a colon.
/// A JSON string cannot hold an unescaped quote, so `"id":"resp_` found in the bytes is always
/// a member `id` whose value starts with `resp_`, never text inside a string.
fn after_id_key(before: &[u8]) -> bool {
    let trim = |b: &[u8]| -> usize {
        b.iter().rposition(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r')).map_or(0, |i| i + 1)
    };
    let end = trim(before);
    if end == 0 || before[end - 1] != b':' {
        return false;
    }
    let key = &before[..trim(&before[..end - 1])];
    ID_KEYS.iter().any(|k| key.ends_with(k))
}

/// Rewrites the response ids in `work[from..]` (bytes before `from` are context only). With
/// `complete`, `work` ends where the text does; otherwise a value (or the start of one) cut by
/// the end of `work` is held back. Returns the output for `work[from..hold]` — `None` when it
/// is those bytes unchanged — and `hold`.
fn rewrite(
    signer: &PinSigner,
    work: &[u8],
    from: usize,
    complete: bool,
) -> (Option<Vec<u8>>, usize) {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = from;
    let mut hold = work.len();
    for at in ID_FINDER.find_iter(&work[from..]).map(|i| i + from) {
        if at < copied {
            continue;
        }
        if !after_id_key(&work[at.saturating_sub(LOOKBEHIND)..at]) {
            continue;
        }
        let value = &work[at + 1..];
        let Some(len) = value.iter().position(|b| !is_id_byte(*b)) else {
            // Cut by the end of `work`: the rest comes with the next chunk.
            if !complete && value.len() <= MAX_UPSTREAM_ID {
                hold = at;
                break;
            }
            continue;
        };
        if value[len] != b'"' {
            continue;
        }
        let buf = out.get_or_insert_with(|| Vec::with_capacity(work.len() - from + 64));
        buf.extend_from_slice(&work[copied..=at]);
        if !signer.mint_into(&value[..len], buf) {
            buf.extend_from_slice(&value[..len]);
        }
        copied = at + 1 + len;
    }
    if !complete && hold == work.len() {
        // The text may end inside `"resp_` itself.
        let tail = &work[copied.max(from)..];
        if let Some(k) = (1..ID_START.len()).rev().find(|k| tail.ends_with(&ID_START[..*k])) {
            hold = work.len() - k;
        }
    }
    if let Some(buf) = &mut out {
        buf.extend_from_slice(&work[copied..hold]);
    }
    (out, hold)
}

/// Replaces the upstream's response ids in a Responses API answer by the ids pinned to the
/// endpoint that gave it (see the module docs): whole bodies and framed SSE events at once,
/// a body relayed in chunks with a small carry so that no id is missed across chunks.
pub(crate) struct ResponseIds {
    signer: PinSigner,
    /// The last bytes already passed on: context for the key of a value in the next chunk.
    tail: Vec<u8>,
    /// Bytes held back: the start of a value (or of `"resp_`) cut by the end of a chunk.
    held: Vec<u8>,
}

impl ResponseIds {
    pub(crate) fn new(signer: PinSigner) -> Self {
        Self { signer, tail: Vec::new(), held: Vec::new() }
    }

    /// `text` (a whole body, or whole SSE events) with its response ids pinned; the same
    /// bytes, without a copy, when it has none.
    pub(crate) fn whole(&self, text: Bytes) -> Bytes {
        if ID_FINDER.find(&text).is_none() {
            return text;
        }
        match rewrite(&self.signer, &text, 0, true) {
            (Some(out), _) => Bytes::from(out),
            (None, _) => text,
        }
    }

    /// One chunk of a body relayed as it comes: what may go to the client now.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.held.is_empty() && ID_FINDER.find(&chunk).is_none() {
            // Nothing cut, nothing found; `"resp_` may still start at the chunk's end.
            let (_, hold) = rewrite(&self.signer, &chunk, 0, false);
            self.remember(&chunk[..hold]);
            self.held.extend_from_slice(&chunk[hold..]);
            return chunk.slice(..hold);
        }
        let mut work = Vec::with_capacity(self.tail.len() + self.held.len() + chunk.len());
        work.extend_from_slice(&self.tail);
        work.extend_from_slice(&self.held);
        work.extend_from_slice(&chunk);
        let from = self.tail.len();
        let (out, hold) = rewrite(&self.signer, &work, from, false);
        self.held = work[hold..].to_vec();
        let out = out.map_or_else(|| Bytes::copy_from_slice(&work[from..hold]), Bytes::from);
        self.remember(&work[from..hold]);
        out
    }

    /// What was held back, at the end of the body.
    pub(crate) fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Bytes::new();
        }
        let mut work = std::mem::take(&mut self.tail);
        let from = work.len();
        work.extend_from_slice(&held);
        match rewrite(&self.signer, &work, from, true) {
            (Some(out), _) => Bytes::from(out),
            (None, _) => Bytes::copy_from_slice(&work[from..]),
        }
    }

    fn remember(&mut self, passed: &[u8]) {
        if passed.len() >= LOOKBEHIND {
            self.tail.clear();
            self.tail.extend_from_slice(&passed[passed.len() - LOOKBEHIND..]);
        } else {
            self.tail.extend_from_slice(passed);
            let excess = self.tail.len().saturating_sub(LOOKBEHIND);
            self.tail.drain(..excess);
        }
    }
}

/// `frames` joined into one buffer (without a copy when there is one).
pub(crate) fn joined<'a>(frames: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let mut frames = frames.filter(|f| !f.is_empty());
    let Some(first) = frames.next() else { return Bytes::new() };
    let Some(second) = frames.next() else { return first.clone() };
    let mut out = BytesMut::from(&first[..]);
    out.extend_from_slice(second);
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> GatewayPinKey {
        GatewayPinKey::new(&PinKey::new([byte; 32]))
    }

    fn signer(byte: u8, endpoint: EndpointId) -> PinSigner {
        PinSigner::new(&key(byte), endpoint, endpoint_tag(endpoint))
    }

    #[test]
    fn a_minted_id_round_trips_and_verifies_for_its_endpoint_and_gateway_only() {
        let (e1, e2) = (EndpointId::new(), EndpointId::new());
        let s1 = signer(1, e1);
        let upstream = "resp_68af3c9e0b5c8190a1b2c3d4e5f60718";
        let pinned = s1.mint(upstream).expect("mintable");
        assert!(pinned.starts_with("resp_mgw1"), "{pinned}");
        assert_eq!(pinned.len(), upstream.len() + 9 + 8 + 16 + 1 - 5);
        assert!(is_id(pinned.as_bytes()));
        assert_eq!(s1.mint(upstream).as_deref(), Some(&*pinned), "deterministic");
        let id = PinnedId::parse(&pinned).expect("parses");
        assert_eq!(id.tag(), endpoint_tag(e1));
        assert_eq!(id.upstream(), upstream);
        assert!(s1.verifies(&id));
        assert!(!signer(1, e2).verifies(&id), "another endpoint");
        assert!(!signer(2, e1).verifies(&id), "another gateway's key");
        // The tag names the endpoint: the same key and endpoint id under another tag fails.
        assert!(!PinSigner::new(&key(1), e1, [0; 4]).verifies(&id));
    }

    #[test]
    fn an_upstream_id_without_the_resp_prefix_is_kept_whole() {
        let s = signer(1, EndpointId::new());
        for upstream in ["chatcmpl-abc_1", "resp_", "x"] {
            let pinned = s.mint(upstream).expect("mintable");
            assert_eq!(pinned.as_bytes()[9 + 24], b'-', "{pinned}");
            let id = PinnedId::parse(&pinned).expect("parses");
            assert_eq!(id.upstream(), upstream);
            assert!(s.verifies(&id));
        }
    }

    #[test]
    fn what_is_not_minted_or_was_altered_is_refused() {
        let s = signer(1, EndpointId::new());
        assert_eq!(s.mint("resp_a.b"), None, "charset");
        assert_eq!(s.mint(""), None);
        assert_eq!(s.mint(&format!("resp_{}", "a".repeat(MAX_UPSTREAM_ID))), None, "too long");
        let pinned = s.mint("resp_abc123").expect("mintable");
        // Every single-character change either fails to parse or fails to verify.
        for i in 0..pinned.len() {
            for c in ['0', 'f', 'A', '_', '-', 'z'] {
                let mut altered = pinned.clone().into_bytes();
                if altered[i] == c as u8 {
                    continue;
                }
                altered[i] = c as u8;
                let altered = String::from_utf8(altered).expect("ascii");
                let verified = PinnedId::parse(&altered).is_some_and(|id| s.verifies(&id));
                assert!(!verified, "{altered} verified");
            }
        }
        for raw in [
            "resp_abc123",
            "resp_mgw1",
            "resp_mgw1zzzzzzzz0000000000000000_abc",
            "resp_mgw1ABCDEF000000000000000000000_abc",
            "resp_mgw10000000000000000000000000+abc",
            "resp_mgw100000000000000000000000000_",
            "resp_mgw1000000000000000000000000/_abc",
        ] {
            assert!(
                PinnedId::parse(raw).is_none_or(|id| !s.verifies(&id)),
                "{raw} must not verify"
            );
        }
        assert!(PinnedId::parse(&format!("{pinned}{}", "a".repeat(MAX_PINNED_ID))).is_none());
    }

    fn rewritten(s: &PinSigner, text: &str) -> String {
        let ids = ResponseIds::new(s.clone());
        String::from_utf8(ids.whole(Bytes::copy_from_slice(text.as_bytes())).to_vec())
            .expect("utf-8")
    }

    #[test]
    fn ids_in_a_body_are_pinned_where_they_are_response_ids_only() {
        let s = signer(3, EndpointId::new());
        let pin = |id: &str| s.mint(id).expect("mintable");
        let body = r#"{"id":"resp_1","object":"response","previous_response_id": "resp_0","output":[{"id":"msg_1","content":[{"text":"see \"id\":\"resp_9\" and resp_8"}]}],"metadata":{"note":"resp_7"},"response_id" :"resp_1"}"#;
        let expected = body
            .replace(r#""id":"resp_1""#, &format!(r#""id":"{}""#, pin("resp_1")))
            .replace(r#""resp_0""#, &format!(r#""{}""#, pin("resp_0")))
            .replace(r#":"resp_1"}"#, &format!(r#":"{}"}}"#, pin("resp_1")));
        assert_eq!(rewritten(&s, body), expected);
        assert!(expected.contains(r#"\"id\":\"resp_9\""#), "text inside a string is kept");
        assert!(expected.contains(r#""note":"resp_7""#), "other members are kept");
        let none = Bytes::from_static(br#"{"object":"list","data":[{"id":"msg_1"}]}"#);
        let out = ResponseIds::new(s.clone()).whole(none.clone());
        assert_eq!(out.as_ptr(), none.as_ptr(), "no copy without ids");
    }

    #[test]
    fn a_relayed_body_pins_ids_cut_anywhere_across_chunks() {
        let s = signer(4, EndpointId::new());
        let text = r#"data: {"type":"response.created","response":{"id":"resp_abcdef0123","previous_response_id":"resp_0"}}

data: {"type":"response.completed","response":{"id":"resp_abcdef0123","usage":{"input_tokens":3}}}

"#;
        let expected = rewritten(&s, text);
        assert_ne!(expected, text);
        for cut in 0..=text.len() {
            for second in [cut, (cut + 7).min(text.len())] {
                let mut ids = ResponseIds::new(s.clone());
                let mut out = Vec::new();
                for (a, b) in [(0, cut), (cut, second), (second, text.len())] {
                    out.extend_from_slice(
                        &ids.push(Bytes::copy_from_slice(&text.as_bytes()[a..b])),
                    );
                }
                out.extend_from_slice(&ids.finish());
                assert_eq!(
                    String::from_utf8(out).expect("utf-8"),
                    expected,
                    "cut at {cut}/{second}"
                );
            }
        }
    }

    #[test]
    fn a_body_ending_inside_a_value_is_passed_on_as_it_is() {
        let s = signer(5, EndpointId::new());
        let mut ids = ResponseIds::new(s);
        let mut out = ids.push(Bytes::from_static(br#"{"id":"resp_abc"#)).to_vec();
        out.extend_from_slice(&ids.finish());
        assert_eq!(out, br#"{"id":"resp_abc"#);
    }

    #[test]
    fn joined_frames_copy_only_when_there_are_several() {
        let one = Bytes::from_static(b"abc");
        assert_eq!(joined([Bytes::new(), one.clone()].iter()).as_ptr(), one.as_ptr());
        assert_eq!(&joined([one.clone(), Bytes::from_static(b"de")].iter())[..], b"abcde");
        assert!(joined(std::iter::empty()).is_empty());
    }
}
