//! The Responses API's wire shapes (OpenAI's, which Azure serves on `/openai/responses` and
//! `/openai/v1/responses`): the `response` object, its input items, its streamed events, the
//! errors for ids a region does not hold. Shapes follow the `openai` SDK's `types/responses`
//! (3.x). Everything here is pure; the store lives in [`crate::state`].

use serde_json::{Map, Value, json};

use crate::wire::{self, reply_chunks};

/// Most responses a region keeps (oldest forgotten first): far above any test or demo, and a
/// bound on a long-running mock's memory.
pub const MAX_STORED_RESPONSES: usize = 10_000;

/// Earliest dated api-version that serves the Responses API (`2025-03-01-preview` added it).
pub const FIRST_RESPONSES_API_VERSION: &str = "2025-03-01";

/// The 404 for an id this region does not hold (OpenAI's body; the SDK raises `NotFoundError`).
pub fn not_found(id: &str) -> String {
    json!({"error": {
        "message": format!("Response with id '{id}' not found."),
        "type": "invalid_request_error",
        "param": null,
        "code": null,
    }})
    .to_string()
}

/// The 400 for a `previous_response_id` this region does not hold: what a request load-balanced
/// away from the region that created the response gets.
pub fn previous_not_found(id: &str) -> String {
    json!({"error": {
        "message": format!("Previous response with id '{id}' not found."),
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }})
    .to_string()
}

/// The 400 for cancelling a response not created with `background: true` (OpenAI refuses it;
/// the wording is the mock's).
pub const CANCEL_NOT_BACKGROUND: &str = r#"{"error":{"message":"Only responses created with background=true can be cancelled.","type":"invalid_request_error","param":null,"code":null}}"#;

/// The 400 for a create without `input`.
pub const MISSING_INPUT: &str = r#"{"error":{"message":"Missing required parameter: 'input'.","type":"invalid_request_error","param":"input","code":"missing_required_parameter"}}"#;

/// `DELETE responses/{id}`'s answer.
pub fn deleted(id: &str) -> String {
    json!({"id": id, "object": "response", "deleted": true}).to_string()
}

/// Whether a create names an `input` the mock can answer: a non-empty string or array.
pub fn has_input(request: &Value) -> bool {
    match request.get("input") {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        _ => false,
    }
}

/// The create's `input` as stored input items, each with an id (from `id`, by item prefix):
/// a string is one user message; messages get `input_text` content parts.
pub fn input_items(request: &Value, id: &mut dyn FnMut(&str) -> String) -> Vec<Value> {
    let items = match request.get("input") {
        Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Object(mut item) = item else { return item };
            let kind = match item.get("type").and_then(Value::as_str) {
                Some(t) => t.to_owned(),
                None if item.contains_key("role") => "message".to_owned(),
                None => "item".to_owned(),
            };
            if kind == "message" {
                if let Some(Value::String(text)) = item.get("content") {
                    let text = text.clone();
                    item.insert("content".into(), json!([{"type": "input_text", "text": text}]));
                }
                item.insert("type".into(), json!("message"));
                item.entry("status").or_insert(json!("completed"));
            }
            if !item.contains_key("id") {
                let prefix = match kind.as_str() {
                    "message" => "msg_",
                    "function_call" => "fc_",
                    "function_call_output" => "fco_",
                    _ => "item_",
                };
                item.insert("id".into(), json!(id(prefix)));
            }
            Value::Object(item)
        })
        .collect()
}

/// Words in the input (and instructions): the mock's stable token estimate.
fn input_tokens(request: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(items) => items.iter().map(words).sum(),
            Value::Object(o) => {
                ["content", "text", "output"].iter().filter_map(|k| o.get(*k)).map(words).sum()
            }
            _ => 0,
        }
    }
    let n = request.get("input").map(words).unwrap_or(0)
        + request.get("instructions").map(words).unwrap_or(0);
    n.max(1)
}

/// The function call a create gets instead of text, as `(name, arguments)`: when it offers
/// function `tools` (the Responses API's flat `{"type":"function","name",…}` shape), its
/// `tool_choice` is not `"none"`, and its input does not end with a `function_call_output` (which
/// is answered with text). Arguments as in [`wire::function_arguments`].
pub fn function_call(request: &Value, region: &str) -> Option<(String, String)> {
    let tools = request.get("tools")?.as_array()?;
    let choice = request.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let last_type = request
        .get("input")
        .and_then(Value::as_array)
        .and_then(|i| i.last())
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str);
    if last_type == Some("function_call_output") {
        return None;
    }
    let mut functions =
        tools.iter().filter(|t| t.get("type").and_then(Value::as_str) == Some("function"));
    let named = choice.and_then(|c| c.get("name")).and_then(Value::as_str);
    let function = match named {
        Some(name) => functions.find(|f| f.get("name").and_then(Value::as_str) == Some(name))?,
        None => functions.next()?,
    };
    let name = function.get("name")?.as_str()?.to_owned();
    Some((name, wire::function_arguments(function.get("parameters"), region)))
}

/// What one create answers; the JSON object and the streamed events are built from it so both
/// agree.
#[derive(Clone, Debug)]
pub struct Created {
    pub id: String,
    pub created_at: i64,
    pub model: String,
    /// The request's echoed settings (`instructions`, `tools`, `store`…).
    echo: Map<String, Value>,
    /// The output item's id (`msg_…` or `fc_…`).
    pub item_id: String,
    /// Set for a function call: `(call_id, name)`.
    pub call: Option<(String, String)>,
    /// Text words or argument pieces, one per streamed delta.
    pub pieces: Vec<String>,
    pub input_tokens: u64,
}

impl Created {
    /// Builds the answer to `request` in `region`; `id` makes ids (`resp_`, `msg_`, `fc_`,
    /// `call_`).
    pub fn new(
        request: &Value,
        region: &str,
        model: &str,
        created_at: i64,
        id: &mut dyn FnMut(&str) -> String,
    ) -> Created {
        let get = |k: &str, default: Value| request.get(k).cloned().unwrap_or(default);
        let mut echo = Map::new();
        echo.insert("background".into(), get("background", json!(false)));
        echo.insert("instructions".into(), get("instructions", Value::Null));
        echo.insert("max_output_tokens".into(), get("max_output_tokens", Value::Null));
        echo.insert("metadata".into(), get("metadata", json!({})));
        echo.insert("parallel_tool_calls".into(), get("parallel_tool_calls", json!(true)));
        echo.insert("previous_response_id".into(), get("previous_response_id", Value::Null));
        echo.insert("store".into(), get("store", json!(true)));
        echo.insert("temperature".into(), get("temperature", json!(1.0)));
        echo.insert("text".into(), get("text", json!({"format": {"type": "text"}})));
        echo.insert("tool_choice".into(), get("tool_choice", json!("auto")));
        echo.insert("tools".into(), get("tools", json!([])));
        echo.insert("top_p".into(), get("top_p", json!(1.0)));
        echo.insert("truncation".into(), get("truncation", json!("disabled")));
        echo.insert("user".into(), get("user", Value::Null));
        let response_id = id("resp_");
        let (item_id, call, pieces) = match function_call(request, region) {
            Some((name, arguments)) => {
                (id("fc_"), Some((id("call_"), name)), wire::argument_pieces(&arguments))
            }
            None => (id("msg_"), None, reply_chunks(region)),
        };
        Created {
            id: response_id,
            created_at,
            model: model.to_owned(),
            echo,
            item_id,
            call,
            pieces,
            input_tokens: input_tokens(request),
        }
    }

    fn text(&self) -> String {
        self.pieces.concat()
    }

    fn usage(&self) -> Value {
        let output = self.pieces.len() as u64;
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + output,
        })
    }

    fn text_part(&self, text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    }

    /// The output item, complete or (`done == false`) as first announced.
    fn item(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        match &self.call {
            Some((call_id, name)) => json!({
                "id": self.item_id,
                "type": "function_call",
                "status": status,
                "arguments": if done { self.text() } else { String::new() },
                "call_id": call_id,
                "name": name,
            }),
            None => json!({
                "id": self.item_id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": if done { json!([self.text_part(&self.text())]) } else { json!([]) },
            }),
        }
    }

    /// The `response` object in `status` (`queued`, `in_progress` or `completed`): output and
    /// usage only once completed.
    pub fn object(&self, status: &str) -> Value {
        let completed = status == "completed";
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(self.created_at));
        o.insert("status".into(), json!(status));
        o.insert(
            "completed_at".into(),
            if completed { json!(self.created_at) } else { Value::Null },
        );
        o.insert("error".into(), Value::Null);
        o.insert("incomplete_details".into(), Value::Null);
        o.insert("model".into(), json!(self.model));
        o.insert("output".into(), if completed { json!([self.item(true)]) } else { json!([]) });
        o.insert("reasoning".into(), json!({"effort": null, "summary": null}));
        o.insert("service_tier".into(), json!("default"));
        o.insert("usage".into(), if completed { self.usage() } else { Value::Null });
        for (k, v) in &self.echo {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }

    /// The streamed events, in order, as `(type, data)`; `data` carries `type` and
    /// `sequence_number` (from 0). Text: created, in_progress, output_item.added,
    /// content_part.added, one output_text.delta per word, output_text.done, content_part.done,
    /// output_item.done, completed. A function call: created, in_progress, output_item.added,
    /// function_call_arguments.delta per piece, function_call_arguments.done, output_item.done,
    /// completed.
    pub fn events(&self) -> Vec<(&'static str, Value)> {
        let mut events: Vec<(&'static str, Value)> = Vec::new();
        let mut push = |kind: &'static str, mut data: Value| {
            if let Value::Object(o) = &mut data {
                o.insert("type".into(), json!(kind));
                o.insert("sequence_number".into(), json!(events.len()));
            }
            events.push((kind, data));
        };
        let item_id = &self.item_id;
        push("response.created", json!({"response": self.object("in_progress")}));
        push("response.in_progress", json!({"response": self.object("in_progress")}));
        push("response.output_item.added", json!({"output_index": 0, "item": self.item(false)}));
        if self.call.is_some() {
            for piece in &self.pieces {
                push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": piece}),
                );
            }
            push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "arguments": self.text()}),
            );
        } else {
            let part = |text: &str| self.text_part(text);
            push(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
            );
            for piece in &self.pieces {
                push(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}),
                );
            }
            push(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": self.text(), "logprobs": []}),
            );
            push(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(&self.text())}),
            );
        }
        push("response.output_item.done", json!({"output_index": 0, "item": self.item(true)}));
        push("response.completed", json!({"response": self.object("completed")}));
        events
    }
}

/// The `input_items` list page: `order` `asc` or `desc` (OpenAI's default), up to `limit`
/// (1–100, default 20) items after the item `after`.
pub fn item_page(
    items: &[Value],
    order: Option<&str>,
    limit: Option<&str>,
    after: Option<&str>,
) -> String {
    let limit = limit.and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).clamp(1, 100);
    let mut ordered: Vec<&Value> = items.iter().collect();
    if order != Some("asc") {
        ordered.reverse();
    }
    let start = after
        .and_then(|a| ordered.iter().position(|i| i.get("id").and_then(Value::as_str) == Some(a)))
        .map_or(0, |p| p + 1);
    let rest = ordered.get(start..).unwrap_or_default();
    let page: Vec<&Value> = rest.iter().take(limit).copied().collect();
    let id_of = |i: Option<&&Value>| i.and_then(|v| v.get("id")).cloned().unwrap_or(Value::Null);
    json!({
        "object": "list",
        "data": page,
        "first_id": id_of(page.first()),
        "last_id": id_of(page.last()),
        "has_more": rest.len() > page.len(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut(&str) -> String {
        let mut n = 0;
        move |p: &str| {
            n += 1;
            format!("{p}{n}")
        }
    }

    #[test]
    fn text_events_rebuild_the_completed_response() {
        let c = Created::new(&json!({"input": "hi"}), "East US", "m", 1, &mut ids());
        let events = c.events();
        assert_eq!(events[0].0, "response.created");
        assert_eq!(events.last().map(|e| e.0), Some("response.completed"));
        let text: String = events
            .iter()
            .filter(|e| e.0 == "response.output_text.delta")
            .filter_map(|e| e.1["delta"].as_str())
            .collect();
        assert_eq!(text, wire::reply_text("East US"));
        for (i, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], i);
        }
        assert_eq!(events.last().map(|e| &e.1["response"]), Some(&c.object("completed")));
    }

    #[test]
    fn a_function_tool_is_called_until_its_output_comes_back() {
        let tools = json!([{"type": "function", "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
        let first = json!({"input": "weather?", "tools": tools});
        let (name, args) = function_call(&first, "East US").expect("a call");
        assert_eq!(name, "get_weather");
        assert_eq!(args, r#"{"city":"East US"}"#);
        let follow = json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "sunny"}], "tools": tools});
        assert_eq!(function_call(&follow, "East US"), None);
    }

    #[test]
    fn items_page_in_either_order() {
        let items: Vec<Value> = (1..=3).map(|i| json!({"id": format!("m{i}")})).collect();
        let page: Value =
            serde_json::from_str(&item_page(&items, None, Some("2"), None)).expect("json");
        assert_eq!(page["first_id"], "m3");
        assert_eq!(page["last_id"], "m2");
        assert_eq!(page["has_more"], true);
        let page: Value =
            serde_json::from_str(&item_page(&items, Some("asc"), None, Some("m1"))).expect("json");
        assert_eq!(page["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(page["has_more"], false);
    }
}
