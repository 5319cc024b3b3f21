//! Azure OpenAI wire shapes (as the Azure OpenAI REST reference and real responses show them): exact error bodies, success bodies
//! and SSE frames. Everything here is pure: no state, no I/O.

use base64::Engine as _;
use serde_json::{Value, json};

/// 404 for a missing api-version or an unknown path (§1.2). Note the space after `"message":`.
pub const RESOURCE_NOT_FOUND: &str = r#"{"error":{"code":"404","message": "Resource not found"}}"#;

/// 404 for a deployment that does not exist (§1.6).
pub const DEPLOYMENT_NOT_FOUND: &str = r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}"#;

/// 401 for a wrong `api-key` (§1.6).
pub const INVALID_KEY: &str = r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#;

/// 401 when no credential was sent at all: API Management's wording for a missing key.
pub const MISSING_KEY: &str = r#"{"error":{"code":"401","message":"Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API."}}"#;

/// 401 for a bearer token that is not accepted (§1.6; no `error` wrapper).
pub const INVALID_TOKEN: &str = r#"{"statusCode":401,"message":"Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}"#;

/// 400 prompt content filter, byte for byte from §1.6.
pub const CONTENT_FILTER: &str = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":true,"detected":true},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}}}"#;

/// 400 when the body is not JSON (OpenAI's wording, which Azure passes through).
pub const INVALID_JSON: &str = r#"{"error":{"message":"We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)","type":"invalid_request_error","param":null,"code":null}}"#;

/// 400 on a v1 path whose body names no model (the deployment).
pub const MISSING_MODEL: &str = r#"{"error":{"message":"you must provide a model parameter","type":"invalid_request_error","param":null,"code":null}}"#;

/// 413 when the request body exceeds the mock's limit.
pub const BODY_TOO_LARGE: &str =
    r#"{"error":{"code":"RequestEntityTooLarge","message":"The request body is too large."}}"#;

/// Azure's first streamed frame: prompt annotations only (§1.7).
pub const FIRST_SSE_FRAME: &str = r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}]}"#;

/// `system_fingerprint` reported by every answer.
pub const SYSTEM_FINGERPRINT: &str = "fp_b705f0c291";

/// Dimensions of the mock embedding vector when the request names none: small, so tests and
/// logs stay readable.
pub const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;

/// Upper bound for a requested `dimensions` (text-embedding-3-large's size).
pub const MAX_EMBEDDING_DIMENSIONS: usize = 3072;

/// The API operation a request asks for; [`Operation::azure_name`] is how Azure names it in 429
/// messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
    /// `POST responses`.
    Responses,
    /// `GET responses/{id}`.
    ResponseGet,
    /// `DELETE responses/{id}`.
    ResponseDelete,
    /// `POST responses/{id}/cancel`.
    ResponseCancel,
    /// `GET responses/{id}/input_items`.
    ResponseInputItems,
    ImageGenerations,
    /// Multipart.
    ImageEdits,
    /// Multipart.
    AudioTranscriptions,
    /// Multipart.
    AudioTranslations,
    /// JSON in, binary audio out.
    AudioSpeech,
    /// `GET models`.
    Models,
}

impl Operation {
    /// The operation id in Azure's messages. Chat, completions and embeddings are from Azure's
    /// spec and observed 429s; the others follow the spec's `<Thing>_<Verb>` ids [G].
    pub fn azure_name(self) -> &'static str {
        match self {
            Operation::Chat => "ChatCompletions_Create",
            Operation::Completions => "Completions_Create",
            Operation::Embeddings => "Embeddings_Create",
            Operation::Responses => "Responses_Create",
            Operation::ResponseGet => "Responses_Get",
            Operation::ResponseDelete => "Responses_Delete",
            Operation::ResponseCancel => "Responses_Cancel",
            Operation::ResponseInputItems => "Responses_ListInputItems",
            Operation::ImageGenerations => "ImageGenerations_Create",
            Operation::ImageEdits => "ImageEdits_Create",
            Operation::AudioTranscriptions => "Transcriptions_Create",
            Operation::AudioTranslations => "Translations_Create",
            Operation::AudioSpeech => "Speech_Create",
            Operation::Models => "Models_List",
        }
    }

    /// Whether the request body is `multipart/form-data`.
    pub fn is_multipart(self) -> bool {
        matches!(
            self,
            Operation::ImageEdits | Operation::AudioTranscriptions | Operation::AudioTranslations
        )
    }

    /// Whether the operation names a stored response in its path.
    pub fn names_a_response(self) -> bool {
        matches!(
            self,
            Operation::ResponseGet
                | Operation::ResponseDelete
                | Operation::ResponseCancel
                | Operation::ResponseInputItems
        )
    }
}

/// The 429 body (§1.6). The "Please retry after N seconds." sentence is present only when
/// `retry_after_secs` is given: with a retry hint header ([`crate::Fault::Status`]), on its own
/// ([`crate::Fault::ThrottledByMessage`]), or not at all, so a gateway can be tested without any
/// hint.
pub fn too_many_requests(
    op: Operation,
    api_version: &str,
    retry_after_secs: Option<u64>,
) -> String {
    let retry =
        retry_after_secs.map(|s| format!(" Please retry after {s} seconds.")).unwrap_or_default();
    let message = format!(
        "Requests to the {} Operation under Azure OpenAI API version {api_version} have exceeded token rate limit of your current OpenAI S0 pricing tier.{retry} Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
        op.azure_name()
    );
    json!({"error": {"code": "429", "message": message}}).to_string()
}

/// The 500 body (§1.6), naming the request id like Azure does.
pub fn server_error(request_id: &str) -> String {
    format!(
        r#"{{"error":{{"message":"The server had an error while processing your request. Sorry about that! You can retry your request, or contact us through an Azure support request at: https://go.microsoft.com/fwlink/?linkid=2213926 if the error persists. (Please include the request ID {request_id} in your message.)","type":"server_error","param":null,"code":null}}}}"#
    )
}

/// The 503 body (§1.6).
pub fn overloaded(request_id: &str) -> String {
    format!(
        r#"{{"error":{{"message":"That model is currently overloaded with other requests. You can retry your request, or contact us through an Azure support request at: https://go.microsoft.com/fwlink/?linkid=2213926 if the error persists. (Please include the request ID {request_id} in your message.)","type":"server_error","param":null,"code":null}}}}"#
    )
}

/// Body for a scripted status without a specific Azure body.
pub fn generic_error(status: http::StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    json!({"error": {"code": status.as_str(), "message": reason}}).to_string()
}

/// 400 for a body that parses but misses what the operation needs.
pub fn invalid_request(message: &str) -> String {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
        .to_string()
}

/// The deterministic assistant reply of a region: tests read it to learn which region answered.
pub fn reply_text(region: &str) -> String {
    format!("Hello from {region}. This is a mock reply.")
}

/// The reply split into one-word stream deltas (a leading space on all but the first); joined
/// they give back [`reply_text`]. Always at least 8 pieces.
pub fn reply_chunks(region: &str) -> Vec<String> {
    reply_text(region)
        .split(' ')
        .enumerate()
        .map(|(i, w)| if i == 0 { w.to_owned() } else { format!(" {w}") })
        .collect()
}

/// A function call the mock answers with instead of text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_…`.
    pub id: String,
    /// The function called.
    pub name: String,
}

/// What one completion answers, shared by the JSON and the streamed form so both agree.
#[derive(Clone, Debug)]
pub struct Completion {
    pub id: String,
    pub created: i64,
    pub model: String,
    /// What is streamed one piece per frame: the reply's words, or a tool call's arguments.
    pub chunks: Vec<String>,
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    /// Set when the answer is a call of one of the request's function tools.
    pub tool_call: Option<ToolCall>,
}

impl Completion {
    /// Builds the answer to a chat or completions request: the region's reply, cut to
    /// `max_tokens`/`max_completion_tokens` (one token per word) with `finish_reason: "length"`;
    /// or, for a chat request offering function tools ([`function_call`]), a call of one with
    /// `finish_reason: "tool_calls"` (never cut: its arguments must stay valid JSON).
    pub fn new(id: String, created: i64, model: &str, region: &str, request: &Value) -> Completion {
        let prompt_tokens = prompt_tokens(request);
        if let Some((name, arguments)) = function_call(request, region) {
            // OpenAI's call ids are `call_` and 24 alphanumerics; derived from the completion's
            // id so a fixed id gives a fixed call id.
            let tail = id.len().saturating_sub(24);
            let call_id = format!("call_{}", id.get(tail..).unwrap_or("fixed"));
            return Completion {
                id,
                created,
                model: model.to_owned(),
                chunks: argument_pieces(&arguments),
                finish_reason: "tool_calls",
                prompt_tokens,
                tool_call: Some(ToolCall { id: call_id, name }),
            };
        }
        let mut chunks = reply_chunks(region);
        let limit = ["max_tokens", "max_completion_tokens"]
            .iter()
            .find_map(|k| request.get(*k).and_then(Value::as_u64))
            .filter(|n| *n > 0);
        let mut finish_reason = "stop";
        if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok())
            && limit < chunks.len()
        {
            chunks.truncate(limit);
            finish_reason = "length";
        }
        Completion {
            id,
            created,
            model: model.to_owned(),
            chunks,
            finish_reason,
            prompt_tokens,
            tool_call: None,
        }
    }

    pub fn content(&self) -> String {
        self.chunks.concat()
    }

    pub fn completion_tokens(&self) -> u64 {
        self.chunks.len() as u64
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens()
    }

    /// The assistant message of a non-streamed chat answer.
    fn message(&self) -> Value {
        match &self.tool_call {
            None => json!({"role": "assistant", "content": self.content()}),
            Some(call) => json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": self.content()},
                }],
            }),
        }
    }

    fn usage(&self) -> Value {
        json!({
            "completion_tokens": self.completion_tokens(),
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.total_tokens(),
        })
    }

    /// Non-streamed chat completion (§1.4).
    pub fn chat_json(&self) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "prompt_filter_results": prompt_filter_results(),
            "choices": [{
                "index": 0,
                "finish_reason": self.finish_reason,
                "message": self.message(),
                "content_filter_results": choice_filter_results(),
            }],
            "usage": self.usage(),
        })
        .to_string()
    }

    /// Non-streamed legacy completion.
    pub fn text_json(&self) -> String {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "prompt_filter_results": prompt_filter_results(),
            "choices": [{
                "text": self.content(),
                "index": 0,
                "finish_reason": self.finish_reason,
                "logprobs": null,
                "content_filter_results": choice_filter_results(),
            }],
            "usage": self.usage(),
        })
        .to_string()
    }

    /// Every `data:` payload of a chat stream, in order, `[DONE]` last (§1.7). Keys are written
    /// alphabetically, as current deployments send them.
    pub fn chat_sse_payloads(&self, include_usage: bool) -> Vec<String> {
        let mut out = vec![FIRST_SSE_FRAME.to_owned()];
        let role_delta = match &self.tool_call {
            None => json!({"content": "", "refusal": null, "role": "assistant"}),
            Some(call) => json!({
                "content": null,
                "refusal": null,
                "role": "assistant",
                "tool_calls": [{
                    "function": {"arguments": "", "name": call.name},
                    "id": call.id,
                    "index": 0,
                    "type": "function",
                }],
            }),
        };
        out.push(self.chat_chunk(json!({
            "content_filter_results": {},
            "delta": role_delta,
            "finish_reason": null,
            "index": 0,
            "logprobs": null,
        })));
        for piece in &self.chunks {
            let delta = match &self.tool_call {
                None => json!({"content": piece}),
                Some(_) => json!({"tool_calls": [{"function": {"arguments": piece}, "index": 0}]}),
            };
            out.push(self.chat_chunk(json!({
                "content_filter_results": stream_filter_results(),
                "delta": delta,
                "finish_reason": null,
                "index": 0,
                "logprobs": null,
            })));
        }
        out.push(self.chat_chunk(json!({
            "content_filter_results": {},
            "delta": {},
            "finish_reason": self.finish_reason,
            "index": 0,
            "logprobs": null,
        })));
        if include_usage {
            out.push(
                json!({
                    "choices": [],
                    "created": self.created,
                    "id": self.id,
                    "model": self.model,
                    "object": "chat.completion.chunk",
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "usage": self.usage(),
                })
                .to_string(),
            );
        }
        out.push("[DONE]".to_owned());
        out
    }

    fn chat_chunk(&self, choice: Value) -> String {
        json!({
            "choices": [choice],
            "created": self.created,
            "id": self.id,
            "model": self.model,
            "object": "chat.completion.chunk",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        })
        .to_string()
    }

    /// Every `data:` payload of a legacy completions stream, `[DONE]` last.
    pub fn text_sse_payloads(&self, include_usage: bool) -> Vec<String> {
        let mut out = vec![FIRST_SSE_FRAME.to_owned()];
        let last = self.chunks.len().saturating_sub(1);
        for (i, piece) in self.chunks.iter().enumerate() {
            let finish = if i == last { Value::from(self.finish_reason) } else { Value::Null };
            out.push(
                json!({
                    "choices": [{
                        "content_filter_results": stream_filter_results(),
                        "finish_reason": finish,
                        "index": 0,
                        "logprobs": null,
                        "text": piece,
                    }],
                    "created": self.created,
                    "id": self.id,
                    "model": self.model,
                    "object": "text_completion",
                })
                .to_string(),
            );
        }
        if include_usage {
            out.push(
                json!({
                    "choices": [],
                    "created": self.created,
                    "id": self.id,
                    "model": self.model,
                    "object": "text_completion",
                    "usage": self.usage(),
                })
                .to_string(),
            );
        }
        out.push("[DONE]".to_owned());
        out
    }
}

/// The function call a chat request gets instead of text, as `(name, arguments JSON)`: when it
/// offers function `tools`, its `tool_choice` is not `"none"`, and its last message is not a
/// `tool` result (which is answered with text, closing the round trip). The function is the one
/// `tool_choice` names, else the first. Its arguments give each *required* parameter a short
/// value: the region's name for a string (so a test can tell which region called), the first
/// value of an `enum`, `1`, `true`, `[]` or `{}` for the other types.
pub fn function_call(request: &Value, region: &str) -> Option<(String, String)> {
    let tools = request.get("tools")?.as_array()?;
    let choice = request.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let last_role = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    if last_role == Some("tool") {
        return None;
    }
    let functions = tools
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|t| t.get("function"));
    let named = choice.and_then(|c| c.pointer("/function/name")).and_then(Value::as_str);
    let function = match named {
        Some(name) => {
            functions.into_iter().find(|f| f.get("name").and_then(Value::as_str) == Some(name))?
        }
        None => functions.into_iter().next()?,
    };
    let name = function.get("name")?.as_str()?.to_owned();
    Some((name, function_arguments(function.get("parameters"), region)))
}

/// The arguments JSON for a function whose JSON-schema `parameters` are given (see
/// [`function_call`]).
pub fn function_arguments(parameters: Option<&Value>, region: &str) -> String {
    let mut args = serde_json::Map::new();
    let properties = parameters.and_then(|p| p.get("properties"));
    let required = parameters.and_then(|p| p.get("required")).and_then(Value::as_array);
    for name in required.into_iter().flatten().filter_map(Value::as_str) {
        let schema = properties.and_then(|p| p.get(name));
        let value = if let Some(first) =
            schema.and_then(|s| s.get("enum")).and_then(Value::as_array).and_then(|e| e.first())
        {
            first.clone()
        } else {
            match schema.and_then(|s| s.get("type")).and_then(Value::as_str) {
                Some("integer" | "number") => json!(1),
                Some("boolean") => json!(true),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ => json!(region),
            }
        };
        args.insert(name.to_owned(), value);
    }
    Value::Object(args).to_string()
}

/// A tool call's arguments cut into streamed pieces of at most 6 characters (at least two
/// pieces for anything longer than one character), as models stream them.
pub fn argument_pieces(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let size = 6.min(chars.len().div_ceil(2)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Checks that every `tool` message answers a call of an earlier assistant message, as OpenAI
/// does; `Err` carries the 400 body.
pub fn check_tool_messages(messages: &[Value]) -> Result<(), String> {
    let mut calls: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(tool_calls) = m.get("tool_calls").and_then(Value::as_array) {
            calls.extend(tool_calls.iter().filter_map(|c| c.get("id")).filter_map(Value::as_str));
        }
        if m.get("role").and_then(Value::as_str) != Some("tool") {
            continue;
        }
        let answered = m.get("tool_call_id").and_then(Value::as_str);
        if !answered.is_some_and(|id| calls.contains(&id)) {
            return Err(json!({"error": {
                "message": "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                "type": "invalid_request_error",
                "param": format!("messages.[{i}].role"),
                "code": null,
            }})
            .to_string());
        }
    }
    Ok(())
}

fn safe() -> Value {
    json!({"filtered": false, "severity": "safe"})
}

fn prompt_filter_results() -> Value {
    json!([{
        "prompt_index": 0,
        "content_filter_results": {
            "hate": safe(),
            "jailbreak": {"filtered": false, "detected": false},
            "self_harm": safe(),
            "sexual": safe(),
            "violence": safe(),
        },
    }])
}

fn choice_filter_results() -> Value {
    json!({
        "hate": safe(),
        "protected_material_text": {"filtered": false, "detected": false},
        "self_harm": safe(),
        "sexual": safe(),
        "violence": safe(),
    })
}

fn stream_filter_results() -> Value {
    json!({"hate": safe(), "self_harm": safe(), "sexual": safe(), "violence": safe()})
}

/// A stable token estimate for a request: one per word of every text it carries, plus OpenAI's
/// per-message overhead for chat. Deterministic so tests can predict `usage`.
pub fn prompt_tokens(request: &Value) -> u64 {
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        let words: u64 =
            messages.iter().map(|m| 3 + m.get("content").map(text_words).unwrap_or(0)).sum();
        return words + 3;
    }
    let source = request.get("prompt").or_else(|| request.get("input"));
    source.map(text_words).unwrap_or(0).max(1)
}

/// Words in a string, in an array of strings, or in `[{"type":"text","text":…}]` content parts.
fn text_words(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(part) => part.get("text").map(text_words).unwrap_or(0),
                // Token-id arrays count one per id.
                Value::Number(_) => 1,
                other => text_words(other),
            })
            .sum(),
        _ => 0,
    }
}

/// Why an embeddings request was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum EmbeddingsError {
    MissingInput,
    EmptyInput,
}

/// The embeddings answer (§1.4): one deterministic unit vector per input (a string, an array of
/// strings, an array of token ids, or an array of token-id arrays). Returns the body and the
/// token count it reports.
pub fn embeddings(model: &str, request: &Value) -> Result<(String, u64), EmbeddingsError> {
    let input = request.get("input").ok_or(EmbeddingsError::MissingInput)?;
    let items: Vec<String> = match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.is_empty() => return Err(EmbeddingsError::EmptyInput),
        Value::Array(a) if a.iter().all(Value::is_number) => vec![input.to_string()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
            .collect(),
        _ => return Err(EmbeddingsError::MissingInput),
    };
    let dims = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=MAX_EMBEDDING_DIMENSIONS).contains(d))
        .unwrap_or(DEFAULT_EMBEDDING_DIMENSIONS);
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embedding_vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = prompt_tokens(request);
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
    .to_string();
    Ok((body, tokens))
}

/// A unit vector derived from FNV-1a hashes of the text, so equal inputs embed equally.
pub fn embedding_vector(text: &str, dims: usize) -> Vec<f32> {
    let mut raw: Vec<f32> = (0..dims)
        .map(|i| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in text.bytes().chain((i as u64).to_le_bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            // Top 24 bits → [-1, 1).
            ((h >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        raw.iter_mut().for_each(|x| *x /= norm);
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_bodies_are_valid_json() {
        for body in [
            RESOURCE_NOT_FOUND,
            DEPLOYMENT_NOT_FOUND,
            INVALID_KEY,
            MISSING_KEY,
            INVALID_TOKEN,
            CONTENT_FILTER,
            INVALID_JSON,
            MISSING_MODEL,
            BODY_TOO_LARGE,
            FIRST_SSE_FRAME,
        ] {
            serde_json::from_str::<Value>(body).expect(body);
        }
        serde_json::from_str::<Value>(&server_error("x")).expect("500 body");
        serde_json::from_str::<Value>(&overloaded("x")).expect("503 body");
    }

    #[test]
    fn chunks_rebuild_the_reply_and_are_single_words() {
        let chunks = reply_chunks("East US");
        assert!(chunks.len() >= 5);
        assert_eq!(chunks.concat(), reply_text("East US"));
        assert!(chunks.iter().all(|c| c.trim().split(' ').count() == 1));
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let c = Completion::new("id".into(), 1, "m", "East US", &json!({"max_tokens": 2}));
        assert_eq!(c.content(), "Hello from");
        assert_eq!(c.finish_reason, "length");
    }

    #[test]
    fn too_many_requests_mentions_retry_only_with_a_hint() {
        assert!(
            too_many_requests(Operation::Chat, "v1", Some(6))
                .contains("Please retry after 6 seconds.")
        );
        assert!(!too_many_requests(Operation::Chat, "v1", None).contains("retry after"));
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_vector("hello", 8);
        assert_eq!(a, embedding_vector("hello", 8));
        assert_ne!(a, embedding_vector("world", 8));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(embeddings("m", &json!({})), Err(EmbeddingsError::MissingInput));
    }
}
