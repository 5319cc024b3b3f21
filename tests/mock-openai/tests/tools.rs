//! Tool calls in chat completions: the call, its streamed deltas, and the round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use common::*;
use modelgw_mock_openai::{Fault, wire};
use serde_json::{Value, json};

fn tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    }, {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }])
}

fn ask() -> Value {
    json!({"model": DEP, "messages": [{"role": "user", "content": "weather in town?"}], "tools": tools()})
}

#[tokio::test]
async fn a_request_with_tools_gets_a_call_of_the_first_one() {
    let mock = start().await;
    let resp = chat(&client(), &mock, &ask()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    let id = call["id"].as_str().expect("id");
    assert!(id.starts_with("call_") && id.len() == 5 + 24, "{id}");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("string"))
        .expect("json");
    // Required properties only; strings name the region, enums take their first value.
    assert_eq!(args, json!({"city": REGION, "unit": "celsius"}));
    assert!(body["usage"]["completion_tokens"].as_u64().expect("tokens") > 0);
}

#[tokio::test]
async fn tool_choice_picks_the_function_or_none() {
    let mock = start().await;
    let mut named = ask();
    named["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let body: Value = chat(&client(), &mock, &named).await.json().await.expect("json");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_time");
    assert_eq!(call["function"]["arguments"], "{}");

    let mut none = ask();
    none["tool_choice"] = json!("none");
    let body: Value = chat(&client(), &mock, &none).await.json().await.expect("json");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["content"], wire::reply_text(REGION));
    assert!(body["choices"][0]["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn the_tool_result_gets_a_text_answer() {
    let mock = start().await;
    let first: Value = chat(&client(), &mock, &ask()).await.json().await.expect("json");
    let assistant = first["choices"][0]["message"].clone();
    let call_id = assistant["tool_calls"][0]["id"].as_str().expect("id").to_owned();
    let mut follow = ask();
    let messages = follow["messages"].as_array_mut().expect("messages");
    messages.push(assistant);
    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": "sunny"}));
    let resp = chat(&client(), &mock, &follow).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["content"], wire::reply_text(REGION));

    // A tool message answering no call is refused, as OpenAI does.
    let mut orphan = ask();
    orphan["messages"]
        .as_array_mut()
        .expect("messages")
        .push(json!({"role": "tool", "tool_call_id": "call_nope", "content": "x"}));
    let resp = chat(&client(), &mock, &orphan).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["param"], "messages.[1].role");
}

#[tokio::test]
async fn a_streamed_call_sends_its_arguments_in_pieces() {
    let mock = start().await;
    let mut body = ask();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = chat(&client(), &mock, &body).await.text().await.expect("body");
    let payloads = sse_payloads(&text);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let frames: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("json"))
        .collect();
    assert_eq!(frames[0]["choices"], json!([]), "Azure's annotation frame first");
    let first = &frames[1]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    let head = &first["tool_calls"][0];
    assert_eq!(head["index"], 0);
    assert_eq!(head["type"], "function");
    assert!(head["id"].as_str().expect("id").starts_with("call_"));
    assert_eq!(head["function"]["name"], "get_weather");
    assert_eq!(head["function"]["arguments"], "");

    let mut arguments = String::new();
    let mut pieces = 0;
    let mut rest = frames[2..].iter();
    for f in rest.by_ref() {
        let choice = &f["choices"][0];
        if choice["finish_reason"].is_string() {
            assert_eq!(choice["finish_reason"], "tool_calls");
            break;
        }
        let delta = &choice["delta"]["tool_calls"][0];
        assert_eq!(delta["index"], 0);
        assert!(delta.get("id").is_none(), "only the first delta carries the id");
        arguments.push_str(delta["function"]["arguments"].as_str().expect("piece"));
        pieces += 1;
    }
    assert!(pieces >= 3, "{pieces} argument pieces");
    let args: Value = serde_json::from_str(&arguments).expect("the pieces join into JSON");
    assert_eq!(args, json!({"city": REGION, "unit": "celsius"}));
    let usage = rest.next().expect("usage frame");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], pieces);
    assert!(rest.next().is_none());
}

#[tokio::test]
async fn a_scripted_fault_applies_to_a_tool_request() {
    let mock = start().await;
    mock.script(DEP, Fault::ContentFilter { times: 1 });
    let resp = chat(&client(), &mock, &ask()).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.expect("body"), wire::CONTENT_FILTER);
}
