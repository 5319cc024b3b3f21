//! Token usage read from answers, without parsing them whole: the last `"usage": {…}` object
//! of a non-streamed body or of an SSE event (chat and completions put it at the top level,
//! the Responses API inside `response`; both name it `usage`, and a `"usage"` string inside
//! generated text is escaped, so only a key matches). For streams, also the first token's
//! arrival, and — when the gateway itself asked the upstream for usage — removing what the
//! client did not ask for.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;

/// Tokens of one answer: prompt / input and completion / output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub input: u64,
    pub output: u64,
}

impl Usage {
    /// As the key limits charge it: one request of these tokens.
    pub(crate) fn charge(self) -> modelgw_model::keys::Usage {
        modelgw_model::keys::Usage::request(self.input, self.output)
    }
}

#[derive(Deserialize)]
struct Fields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

const USAGE_KEY: &[u8] = b"\"usage\"";

/// The `usage` object that starts at `at` (the key's opening quote), if the key is followed
/// by `:` and an object with token counts.
fn usage_at(bytes: &[u8], at: usize) -> Option<Usage> {
    let rest = &bytes[at + USAGE_KEY.len()..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let value = &rest[colon + 1..];
    let open = value.iter().position(|b| !b.is_ascii_whitespace())?;
    if value[open] != b'{' {
        return None;
    }
    let mut values = serde_json::Deserializer::from_slice(&value[open..]).into_iter::<Fields>();
    let fields = values.next()?.ok()?;
    let input = fields.prompt_tokens.or(fields.input_tokens)?;
    let output = fields.completion_tokens.or(fields.output_tokens).unwrap_or(0);
    Some(Usage { input, output })
}

/// Searchers for the key, built once (a searcher's set-up costs more than a short search).
static USAGE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(USAGE_KEY));
static USAGE_REV: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(USAGE_KEY));

/// The last `usage` object in `bytes` (a JSON body or SSE events).
pub(crate) fn find_usage(bytes: &[u8]) -> Option<Usage> {
    USAGE_REV.rfind_iter(bytes).find_map(|at| usage_at(bytes, at))
}

/// The `usage` of a non-streamed answer read whole, from its frames. The object is at the end
/// of the body, so only the last frames are looked at (at most `TAIL` bytes of them, copied
/// only when the answer came in more than one frame).
pub(crate) fn usage_of_frames<'a>(
    frames: impl DoubleEndedIterator<Item = &'a Bytes>,
) -> Option<Usage> {
    const TAIL: usize = 16 * 1024;
    let mut tail: Vec<&Bytes> = Vec::new();
    let mut len = 0;
    for frame in frames.rev() {
        tail.push(frame);
        len += frame.len();
        if len >= TAIL {
            break;
        }
    }
    match tail.as_slice() {
        [] => None,
        [one] => find_usage(one),
        many => {
            let mut joined = Vec::with_capacity(len);
            for frame in many.iter().rev() {
                joined.extend_from_slice(frame);
            }
            find_usage(&joined)
        }
    }
}

/// Markers of an event that carries output: a non-empty content or text delta, a tool call,
/// a Responses API output delta.
static TOKEN_MARKERS: [&[u8]; 4] =
    [b"\"content\":\"", b"\"text\":\"", b"\"tool_calls\":[", b".delta\""];

/// Whether `events` carry the stream's first output (not the prompt-filter frame, not the
/// role frame with an empty content).
pub(crate) fn has_token(events: &[u8]) -> bool {
    TOKEN_MARKERS.iter().any(|marker| {
        memmem::find_iter(events, marker).any(|at| {
            let after = events.get(at + marker.len());
            // `"content":""` is the role frame's empty content, not a token.
            !(marker.ends_with(b"\"") && after == Some(&b'"'))
        })
    })
}

/// What a stream's relay learns from the events it passes on.
#[derive(Debug, Default)]
pub(crate) struct StreamUsage {
    /// The gateway added `stream_options.include_usage` to the request: remove the usage
    /// chunk and `"usage":null` members the client did not ask for.
    strip: bool,
    pub(crate) first_token_seen: bool,
    pub(crate) usage: Option<Usage>,
}

impl StreamUsage {
    pub(crate) fn new(strip: bool) -> Self {
        StreamUsage { strip, ..Default::default() }
    }

    /// Looks at complete events on their way to the client; returns what the client gets
    /// (the same bytes unless usage the client did not ask for must go) and whether they held
    /// the first token.
    pub(crate) fn on_events(&mut self, events: Bytes) -> (Bytes, bool) {
        let first = !self.first_token_seen && has_token(&events);
        if first {
            self.first_token_seen = true;
        }
        if USAGE.find(&events).is_none() {
            return (events, first);
        }
        if !self.strip {
            if let Some(usage) = find_usage(&events) {
                self.usage = Some(usage);
            }
            return (events, first);
        }
        let mut out = BytesMut::with_capacity(events.len());
        for event in split_events(&events) {
            if let Some(usage) = find_usage(event) {
                self.usage = Some(usage);
                // The extra chunk the gateway asked for: no choices, only usage.
                if memmem::find(event, b"\"choices\":[]").is_some() {
                    continue;
                }
            }
            out.extend_from_slice(&without_null_usage(event));
        }
        (out.freeze(), first)
    }
}

/// `events` cut after each blank line (LF, CRLF or CR line ends), the last piece being
/// whatever follows the last boundary.
fn split_events(events: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut line_start = true;
    while i < events.len() {
        let b = events[i];
        if b == b'\n' || b == b'\r' {
            let end = if b == b'\r' && events.get(i + 1) == Some(&b'\n') { i + 2 } else { i + 1 };
            if line_start {
                out.push(&events[start..end]);
                start = end;
            }
            line_start = true;
            i = end;
        } else {
            line_start = false;
            i += 1;
        }
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// `event` without its `"usage":null` members (what OpenAI adds to every chunk once
/// `include_usage` is set), with the comma that joined them.
fn without_null_usage(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    loop {
        let current: &[u8] = out.as_deref().unwrap_or(event);
        let Some(range) = null_usage_member(current) else { break };
        let mut next = current[..range.start].to_vec();
        next.extend_from_slice(&current[range.end..]);
        out = Some(next);
    }
    match out {
        Some(bytes) => std::borrow::Cow::Owned(bytes),
        None => std::borrow::Cow::Borrowed(event),
    }
}

/// The byte range of one `"usage": null` member with its joining comma, if any.
fn null_usage_member(event: &[u8]) -> Option<std::ops::Range<usize>> {
    let skip_ws = |from: usize| {
        event[from..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map_or(event.len(), |p| from + p)
    };
    for at in memmem::find_iter(event, USAGE_KEY) {
        let colon = skip_ws(at + USAGE_KEY.len());
        if event.get(colon) != Some(&b':') {
            continue;
        }
        let value = skip_ws(colon + 1);
        if !event[value..].starts_with(b"null") {
            continue;
        }
        let end = value + 4;
        // A comma before (the member is not the first) goes with it, else the one after.
        let before = event[..at].iter().rposition(|b| !b.is_ascii_whitespace())?;
        if event[before] == b',' {
            return Some(before..end);
        }
        let after = skip_ws(end);
        if event.get(after) == Some(&b',') {
            return Some(at..after + 1);
        }
        return Some(at..end);
    }
    None
}

/// `body` (one JSON object, already checked) with `"stream_options":{"include_usage":true}`
/// added as its last member. Inserted before the closing brace, so byte offsets of earlier
/// members (the `model` span) stay valid.
pub(crate) fn request_usage(body: &Bytes) -> Bytes {
    const MEMBER: &[u8] = b",\"stream_options\":{\"include_usage\":true}";
    let Some(close) = body.iter().rposition(|b| *b == b'}') else { return body.clone() };
    let mut out = BytesMut::with_capacity(body.len() + MEMBER.len());
    out.extend_from_slice(&body[..close]);
    out.extend_from_slice(MEMBER);
    out.extend_from_slice(&body[close..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_chat_embeddings_and_responses_bodies() {
        let chat = br#"{"choices":[{"message":{"content":"the \"usage\": {\"prompt_tokens\":99}"}}],"usage":{"prompt_tokens":11,"completion_tokens":40,"total_tokens":51}}"#;
        assert_eq!(find_usage(chat), Some(Usage { input: 11, output: 40 }));
        let embeddings = br#"{"data":[],"usage": {"prompt_tokens":4,"total_tokens":4}}"#;
        assert_eq!(find_usage(embeddings), Some(Usage { input: 4, output: 0 }));
        let responses = br#"{"object":"response","usage":{"input_tokens":7,"output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":10}}"#;
        assert_eq!(find_usage(responses), Some(Usage { input: 7, output: 3 }));
        assert_eq!(find_usage(br#"{"usage":null}"#), None);
        assert_eq!(find_usage(br#"{"content":"usage"}"#), None);
    }

    #[test]
    fn usage_split_across_frames_is_found() {
        let frames = [
            Bytes::from_static(b"{\"id\":1,\"usa"),
            Bytes::from_static(b"ge\":{\"prompt_tokens\":2,\"completion_tokens\":5}}"),
        ];
        assert_eq!(usage_of_frames(frames.iter()), Some(Usage { input: 2, output: 5 }));
    }

    #[test]
    fn the_first_token_is_the_first_non_empty_output() {
        assert!(!has_token(
            br#"data: {"choices":[],"prompt_filter_results":[{"content_filter_results":{}}]}"#
        ));
        assert!(!has_token(br#"data: {"choices":[{"delta":{"content":"","role":"assistant"}}]}"#));
        assert!(has_token(br#"data: {"choices":[{"delta":{"content":" date"}}]}"#));
        assert!(has_token(br#"data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#));
        assert!(has_token(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}"));
    }

    #[test]
    fn stripping_removes_exactly_what_the_gateway_added() {
        let with = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"id\":\"x\",\"usage\":null}\n\n\
                    data: {\"choices\":[],\"id\":\"x\",\"usage\":{\"completion_tokens\":9,\"prompt_tokens\":12,\"total_tokens\":21}}\n\n\
                    data: [DONE]\n\n";
        let without = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"id\":\"x\"}\n\n\
                       data: [DONE]\n\n";
        let mut stream = StreamUsage::new(true);
        let (out, first) = stream.on_events(Bytes::from(with));
        assert!(first);
        assert_eq!(std::str::from_utf8(&out).unwrap(), without);
        assert_eq!(stream.usage, Some(Usage { input: 12, output: 9 }));

        // The client asked for it: nothing removed.
        let mut asked = StreamUsage::new(false);
        let (out, _) = asked.on_events(Bytes::from(with));
        assert_eq!(std::str::from_utf8(&out).unwrap(), with);
        assert_eq!(asked.usage, Some(Usage { input: 12, output: 9 }));
    }

    #[test]
    fn null_usage_members_go_with_their_comma() {
        assert_eq!(&*without_null_usage(br#"{"a":1,"usage":null}"#), br#"{"a":1}"#);
        assert_eq!(&*without_null_usage(br#"{"usage": null ,"a":1}"#), br#"{"a":1}"#);
        assert_eq!(&*without_null_usage(br#"{"usage":null}"#), br#"{}"#);
        assert_eq!(
            &*without_null_usage(br#"{"a":"\"usage\":null"}"#),
            br#"{"a":"\"usage\":null"}"#
        );
    }

    #[test]
    fn usage_is_requested_as_the_last_member() {
        let body = Bytes::from_static(br#"{"model":"gw","stream":true} "#);
        assert_eq!(
            &request_usage(&body)[..],
            br#"{"model":"gw","stream":true,"stream_options":{"include_usage":true}} "#
        );
    }
}
