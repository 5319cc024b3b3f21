//! Streamed answers as a trace captures them. A chat completion stream is reassembled into
//! the message a non-streamed answer would carry (`object: "chat.completion"`, each choice's
//! `message` with its `content`, `refusal` and `tool_calls`, its `finish_reason`, and the
//! `usage` when the stream had it); any other stream keeps its events as they came, each
//! `data:` payload redacted, up to the cap. Both stop growing at the cap, so a long stream
//! costs at most the cap in memory.

use serde_json::{Map, Value, json};

use super::CompiledTraces;
use super::redact::{Captured, capped, capture_value, redact};

/// The `data:` payloads of complete SSE events (one per line; `[DONE]` included).
fn data_lines(events: &[u8]) -> impl Iterator<Item = &[u8]> {
    events.split(|b| *b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let data = line.strip_prefix(b"data:")?;
        Some(data.strip_prefix(b" ").unwrap_or(data))
    })
}

/// One tool call as its deltas built it.
#[derive(Debug, Default)]
struct ToolCall {
    index: u64,
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

/// One choice as its deltas built it.
#[derive(Debug, Default)]
struct Choice {
    index: u64,
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<Value>,
}

/// A chat completion stream merged into one answer.
#[derive(Debug, Default)]
pub(crate) struct ChatReassembly {
    /// `id`, `created`, `model`, `system_fingerprint`: the first value each stream chunk had.
    head: Map<String, Value>,
    choices: Vec<Choice>,
    usage: Option<Value>,
    /// An error event in the stream (`{"error": …}`).
    error: Option<Value>,
    /// Text appended so far (content, refusals, tool names and arguments), against the cap.
    appended: usize,
    cap: usize,
    truncated: bool,
}

impl ChatReassembly {
    pub(crate) fn new(cap: usize) -> Self {
        ChatReassembly { cap, ..Default::default() }
    }

    /// Merges whole events.
    pub(crate) fn on_events(&mut self, events: &[u8]) {
        for data in data_lines(events) {
            if data == b"[DONE]" {
                continue;
            }
            if let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(data) {
                self.merge(chunk);
            }
        }
    }

    /// Appends `piece` to `to` within the cap.
    fn append(
        appended: &mut usize,
        cap: usize,
        truncated: &mut bool,
        to: &mut String,
        piece: &str,
    ) {
        if *truncated {
            return;
        }
        if *appended + piece.len() > cap {
            *truncated = true;
            return;
        }
        *appended += piece.len();
        to.push_str(piece);
    }

    fn merge(&mut self, mut chunk: Map<String, Value>) {
        if let Some(error) = chunk.remove("error") {
            self.error = Some(error);
        }
        for key in ["id", "created", "model", "system_fingerprint"] {
            if let Some(value) = chunk.get(key).filter(|v| !v.is_null())
                && !self.head.contains_key(key)
            {
                self.head.insert(key.to_owned(), value.clone());
            }
        }
        if let Some(usage) = chunk.remove("usage").filter(Value::is_object) {
            self.usage = Some(usage);
        }
        let Some(Value::Array(choices)) = chunk.remove("choices") else { return };
        for choice in choices {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let at = match self.choices.iter().position(|c| c.index == index) {
                Some(at) => at,
                None => {
                    self.choices.push(Choice { index, ..Default::default() });
                    self.choices.len() - 1
                }
            };
            let (appended, cap, truncated) = (&mut self.appended, self.cap, &mut self.truncated);
            let state = &mut self.choices[at];
            if let Some(reason) = choice.get("finish_reason").filter(|v| !v.is_null()) {
                state.finish_reason = Some(reason.clone());
            }
            let Some(delta) = choice.get("delta") else { continue };
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                state.role = Some(role.to_owned());
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                let content = state.content.get_or_insert_with(String::new);
                Self::append(appended, cap, truncated, content, text);
            }
            if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
                let refusal = state.refusal.get_or_insert_with(String::new);
                Self::append(appended, cap, truncated, refusal, text);
            }
            let Some(Value::Array(calls)) = delta.get("tool_calls") else { continue };
            for call in calls {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let at = match state.tool_calls.iter().position(|c| c.index == index) {
                    Some(at) => at,
                    None => {
                        state.tool_calls.push(ToolCall { index, ..Default::default() });
                        state.tool_calls.len() - 1
                    }
                };
                let tool = &mut state.tool_calls[at];
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    tool.id = Some(id.to_owned());
                }
                if let Some(kind) = call.get("type").and_then(Value::as_str) {
                    tool.kind = Some(kind.to_owned());
                }
                let function = call.get("function");
                if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) {
                    Self::append(appended, cap, truncated, &mut tool.name, name);
                }
                if let Some(args) =
                    function.and_then(|f| f.get("arguments")).and_then(Value::as_str)
                {
                    Self::append(appended, cap, truncated, &mut tool.arguments, args);
                }
            }
        }
    }

    /// The answer as one non-streamed chat completion.
    pub(crate) fn message(&self) -> Value {
        let mut out = Map::new();
        if let Some(id) = self.head.get("id") {
            out.insert("id".into(), id.clone());
        }
        out.insert("object".into(), json!("chat.completion"));
        for key in ["created", "model", "system_fingerprint"] {
            if let Some(value) = self.head.get(key) {
                out.insert(key.into(), value.clone());
            }
        }
        let mut choices: Vec<&Choice> = self.choices.iter().collect();
        choices.sort_by_key(|c| c.index);
        let choices: Vec<Value> = choices
            .into_iter()
            .map(|c| {
                let mut message = Map::new();
                message.insert("role".into(), json!(c.role.as_deref().unwrap_or("assistant")));
                message.insert("content".into(), json!(c.content));
                if let Some(refusal) = &c.refusal {
                    message.insert("refusal".into(), json!(refusal));
                }
                if !c.tool_calls.is_empty() {
                    let mut calls: Vec<&ToolCall> = c.tool_calls.iter().collect();
                    calls.sort_by_key(|t| t.index);
                    let calls: Vec<Value> = calls
                        .into_iter()
                        .map(|t| {
                            json!({
                                "id": t.id,
                                "type": t.kind.as_deref().unwrap_or("function"),
                                "function": {"name": t.name, "arguments": t.arguments},
                            })
                        })
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                json!({"index": c.index, "message": message, "finish_reason": c.finish_reason})
            })
            .collect();
        out.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = &self.usage {
            out.insert("usage".into(), usage.clone());
        }
        if let Some(error) = &self.error {
            out.insert("error".into(), error.clone());
        }
        Value::Object(out)
    }

    pub(crate) fn finish(self, traces: &CompiledTraces) -> Captured {
        let truncated = self.truncated;
        let mut captured = capture_value(self.message(), traces);
        captured.truncated |= truncated;
        captured
    }
}

/// Any other stream: its events, each `data:` payload redacted, up to the cap.
#[derive(Debug, Default)]
pub(crate) struct RawEvents {
    text: String,
    truncated: bool,
}

impl RawEvents {
    pub(crate) fn on_events(&mut self, events: &[u8], traces: &CompiledTraces) {
        if self.truncated {
            return;
        }
        let cap = traces.payload_cap;
        if traces.redact_fields.is_empty() {
            self.text.push_str(&String::from_utf8_lossy(events));
        } else {
            for line in events.split_inclusive(|b| *b == b'\n') {
                let data = line.strip_prefix(b"data:").map(|d| d.strip_prefix(b" ").unwrap_or(d));
                let json = data.and_then(|d| serde_json::from_slice::<Value>(d.trim_ascii()).ok());
                match json {
                    Some(mut value) => {
                        redact(&mut value, traces);
                        self.text.push_str("data: ");
                        self.text.push_str(&value.to_string());
                        self.text.push('\n');
                    }
                    None => self.text.push_str(&String::from_utf8_lossy(line)),
                }
                if self.text.len() > cap {
                    break;
                }
            }
        }
        if self.text.len() > cap {
            let cut = capped(std::mem::take(&mut self.text), cap);
            self.text = cut.text;
            self.truncated = true;
        }
    }

    pub(crate) fn finish(self) -> Captured {
        Captured { text: self.text, truncated: self.truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::redact::tests::traces;

    fn sse(chunks: &[Value]) -> String {
        let mut out = String::new();
        for c in chunks {
            out.push_str(&format!("data: {c}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }

    #[test]
    fn chat_deltas_become_one_message_with_content_and_tool_calls() {
        let head = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4o-mini"});
        let chunk = |choice: Value| {
            let mut c = head.clone();
            c["choices"] = json!([choice]);
            c
        };
        let stream = sse(&[
            json!({"choices": [], "prompt_filter_results": [{"prompt_index": 0}]}),
            chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}})),
            chunk(json!({"index": 0, "delta": {"content": "Hello"}})),
            chunk(json!({"index": 0, "delta": {"content": " there"}})),
            chunk(
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}),
            ),
            chunk(
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}}),
            ),
            chunk(
                json!({"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "get_time", "arguments": "{}"}}]}}),
            ),
            chunk(
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}}),
            ),
            chunk(json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"})),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}),
        ]);
        let mut chat = ChatReassembly::new(64 * 1024);
        // Events come in several chunks of whole events.
        let mid = stream[..stream.len() / 2].rfind("\n\n").map_or(0, |i| i + 2);
        let (first, rest) = stream.split_at(mid);
        chat.on_events(first.as_bytes());
        chat.on_events(rest.as_bytes());
        let captured = chat.finish(&traces(&[], 64 * 1024));
        assert!(!captured.truncated);
        let message: Value = serde_json::from_str(&captured.text).expect("json");
        assert_eq!(
            message,
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 7,
                "model": "gpt-4o-mini",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello there",
                        "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                        ]
                    },
                    "finish_reason": "tool_calls"
                }],
                "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
            })
        );
    }

    #[test]
    fn reassembly_stops_at_the_cap_and_redacts_the_message() {
        let mut chat = ChatReassembly::new(8);
        let chunk = |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}}]});
        chat.on_events(sse(&[chunk("1234"), chunk("5678"), chunk("9abc")]).as_bytes());
        let t = traces(&["content"], 1024);
        let captured = chat.finish(&t);
        assert!(captured.truncated, "more text than the cap");
        assert!(!captured.text.contains("1234"), "content redacted: {}", captured.text);
        assert!(captured.text.contains("[REDACTED]"));
    }

    #[test]
    fn other_streams_keep_their_events_redacted_and_capped() {
        let t = traces(&["delta"], 1024);
        let mut raw = RawEvents::default();
        raw.on_events(
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"secret words\"}\n\n",
            &t,
        );
        let captured = raw.finish();
        assert!(!captured.truncated);
        assert_eq!(
            captured.text,
            "event: response.output_text.delta\ndata: {\"delta\":\"[REDACTED]\",\"type\":\"response.output_text.delta\"}\n\n"
        );
        let small = traces(&[], 10);
        let mut raw = RawEvents::default();
        raw.on_events(b"data: {\"a\":1}\n\n", &small);
        raw.on_events(b"data: {\"b\":2}\n\n", &small);
        let captured = raw.finish();
        assert_eq!((captured.text.as_str(), captured.truncated), ("data: {\"a\"", true));
    }
}
