//! The Responses API: create (JSON and streamed events), tools, and the per-region store behind
//! retrieve, delete, cancel, input items and `previous_response_id`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use common::*;
use modelgw_mock_openai::{Fault, MockAzure, MockConfig, responses, wire};
use serde_json::{Value, json};

const RESPONSES_VERSION: &str = "2025-04-01-preview";

fn dated(mock: &MockAzure, tail: &str) -> String {
    format!("{}/openai/{tail}?api-version={RESPONSES_VERSION}", mock.base_url())
}

fn v1(mock: &MockAzure, tail: &str) -> String {
    format!("{}/openai/v1/{tail}", mock.base_url())
}

async fn send(method: reqwest::Method, url: &str, body: Option<&Value>) -> reqwest::Response {
    let mut req = client().request(method, url).header("api-key", KEY);
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.expect("response")
}

async fn create(url: &str, body: &Value) -> (u16, Value) {
    let resp = send(reqwest::Method::POST, url, Some(body)).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

/// The `output_text` the SDK computes: every output_text part of every message item.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["type"] == "output_text")
        .map(|c| c["text"].as_str().expect("text").to_owned())
        .collect()
}

fn check_response_shape(r: &Value) {
    let id = r["id"].as_str().expect("id");
    assert!(id.starts_with("resp_") && id.len() == 5 + 48, "{id}");
    assert!(id[5..].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], MODEL);
    assert!(r["created_at"].as_i64().expect("created_at") > 1_700_000_000);
    assert!(r.get("output_text").is_none(), "output_text is computed by the SDK");
    for field in ["parallel_tool_calls", "tool_choice", "tools", "error", "incomplete_details"] {
        assert!(r.get(field).is_some(), "required field {field}");
    }
    let usage = &r["usage"];
    let total = usage["input_tokens"].as_u64().expect("input")
        + usage["output_tokens"].as_u64().expect("output");
    assert_eq!(usage["total_tokens"], total);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn a_response_is_created_on_both_surfaces_naming_the_region() {
    let mock = start().await;
    for url in [dated(&mock, "responses"), v1(&mock, "responses")] {
        let (status, r) = create(&url, &json!({"model": DEP, "input": "say hello"})).await;
        assert_eq!(status, 200, "{url}: {r}");
        check_response_shape(&r);
        let item = &r["output"][0];
        assert_eq!(item["type"], "message");
        assert_eq!(item["role"], "assistant");
        assert!(item["id"].as_str().expect("msg id").starts_with("msg_"));
        assert_eq!(output_text(&r), wire::reply_text(REGION));
        assert_eq!(r["previous_response_id"], Value::Null);
        assert_eq!(r["store"], true);
    }
    assert_eq!(mock.calls(DEP), 2);
    let recorded = mock.requests();
    assert_eq!(recorded[0].path, "/openai/responses");
    assert_eq!(recorded[0].deployment.as_deref(), Some(DEP));
}

#[tokio::test]
async fn dated_responses_need_a_2025_03_preview_or_later_api_version() {
    let mock = start().await;
    let url = format!("{}/openai/responses?api-version=2024-10-21", mock.base_url());
    let resp = send(reqwest::Method::POST, &url, Some(&json!({"model": DEP, "input": "x"}))).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.expect("body"), wire::RESOURCE_NOT_FOUND);
    let url = format!("{}/openai/responses?api-version=2025-03-01-preview", mock.base_url());
    let (status, _) = create(&url, &json!({"model": DEP, "input": "x"})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn create_checks_key_then_model_then_input() {
    let mock = start().await;
    let url = dated(&mock, "responses");
    let wrong = client()
        .post(&url)
        .header("api-key", "nope")
        .json(&json!({"model": "nope", "input": "x"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(wrong.status(), 401, "401 before the unknown deployment");
    let (status, body) = create(&url, &json!({"model": "nope", "input": "x"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("DeploymentNotFound")));
    let (status, body) = create(&url, &json!({"input": "x"})).await;
    assert_eq!(status, 400);
    assert_eq!(body, serde_json::from_str::<Value>(wire::MISSING_MODEL).expect("json"));
    let (status, body) = create(&url, &json!({"model": DEP})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "input");
}

#[tokio::test]
async fn a_streamed_response_is_named_events_with_sequence_numbers() {
    let mock = start().await;
    let resp = send(
        reqwest::Method::POST,
        &v1(&mock, "responses"),
        Some(&json!({"model": DEP, "input": "say hello", "stream": true})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/event-stream; charset=utf-8");
    let text = resp.text().await.expect("body");
    let mut kinds = Vec::new();
    let mut datas = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
        let (event, data) = frame.split_once('\n').expect("event and data lines");
        let kind = event.strip_prefix("event: ").expect("event line");
        let data: Value =
            serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("json");
        assert_eq!(data["type"], kind, "the event names its data's type");
        assert_eq!(data["sequence_number"], datas.len(), "sequence numbers count from 0");
        kinds.push(kind.to_owned());
        datas.push(data);
    }
    let deltas = kinds.iter().filter(|k| *k == "response.output_text.delta").count();
    assert!(deltas >= 5, "{deltas} deltas");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(kinds, expected);
    assert_eq!(datas[0]["response"]["status"], "in_progress");
    let streamed: String = datas
        .iter()
        .filter(|d| d["type"] == "response.output_text.delta")
        .map(|d| d["delta"].as_str().expect("delta").to_owned())
        .collect();
    assert_eq!(streamed, wire::reply_text(REGION));
    let completed = &datas.last().expect("events")["response"];
    check_response_shape(completed);
    assert_eq!(output_text(completed), streamed);
    // The streamed response is stored like any other.
    let id = completed["id"].as_str().expect("id");
    assert!(mock.holds_response(id));
}

#[tokio::test]
async fn previous_response_id_works_only_in_the_region_that_holds_it() {
    let east = start().await;
    let west = MockAzure::start(
        "127.0.0.1:0".parse().expect("addr"),
        MockConfig {
            region: "West US".into(),
            api_key: KEY.into(),
            deployments: vec![DEP.into()],
            model: MODEL.into(),
        },
    )
    .await
    .expect("west");
    let (_, first) =
        create(&dated(&east, "responses"), &json!({"model": DEP, "input": "one"})).await;
    let id = first["id"].as_str().expect("id");
    assert!(east.holds_response(id) && !west.holds_response(id));

    let follow = json!({"model": DEP, "input": "two", "previous_response_id": id});
    let (status, second) = create(&dated(&east, "responses"), &follow).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], id);
    assert_ne!(second["id"], first["id"]);

    let (status, err) = create(&v1(&west, "responses"), &follow).await;
    assert_eq!(status, 400);
    assert_eq!(
        err,
        json!({"error": {
            "message": format!("Previous response with id '{id}' not found."),
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }})
    );
    let resp = send(reqwest::Method::GET, &v1(&west, &format!("responses/{id}")), None).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.expect("body"), responses::not_found(id));
}

#[tokio::test]
async fn retrieve_input_items_and_delete_a_stored_response() {
    let mock = start().await;
    let input = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "input_text", "text": "hi there"}]},
    ]);
    let (_, created) =
        create(&v1(&mock, "responses"), &json!({"model": DEP, "input": input})).await;
    let id = created["id"].as_str().expect("id");
    mock.reset();
    assert!(mock.holds_response(id), "a reset keeps stored responses");

    for surface in [dated(&mock, &format!("responses/{id}")), v1(&mock, &format!("responses/{id}"))]
    {
        let resp = send(reqwest::Method::GET, &surface, None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-ms-deployment-name"), DEP);
        let got: Value = resp.json().await.expect("json");
        assert_eq!(got, created, "retrieve gives back the created object");
    }
    // Follow-ups count for the deployment that created the response.
    assert_eq!(mock.calls(DEP), 2);
    assert_eq!(mock.requests()[0].deployment.as_deref(), Some(DEP));

    let items: Value = send(
        reqwest::Method::GET,
        &format!("{}?order=asc", v1(&mock, &format!("responses/{id}/input_items"))),
        None,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(items["object"], "list");
    assert_eq!(items["has_more"], false);
    let data = items["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["role"], "system");
    assert_eq!(data[0]["type"], "message");
    assert_eq!(data[0]["content"], json!([{"type": "input_text", "text": "be brief"}]));
    assert_eq!(data[1]["content"][0]["text"], "hi there");
    assert!(data.iter().all(|i| i["id"].as_str().is_some_and(|s| s.starts_with("msg_"))));
    assert_eq!(items["first_id"], data[0]["id"]);
    assert_eq!(items["last_id"], data[1]["id"]);
    // OpenAI's default order is newest first.
    let desc: Value =
        send(reqwest::Method::GET, &dated(&mock, &format!("responses/{id}/input_items")), None)
            .await
            .json()
            .await
            .expect("json");
    assert_eq!(desc["first_id"], data[1]["id"]);

    let resp = send(reqwest::Method::DELETE, &v1(&mock, &format!("responses/{id}")), None).await;
    assert_eq!(resp.status(), 200);
    let deleted: Value = resp.json().await.expect("json");
    assert_eq!(deleted, json!({"id": id, "object": "response", "deleted": true}));
    assert!(!mock.holds_response(id));
    let resp = send(reqwest::Method::GET, &v1(&mock, &format!("responses/{id}")), None).await;
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["message"], format!("Response with id '{id}' not found."));
    assert_eq!(err["error"]["type"], "invalid_request_error");
    let resp = send(reqwest::Method::DELETE, &v1(&mock, &format!("responses/{id}")), None).await;
    assert_eq!(resp.status(), 404, "deleted once");
}

#[tokio::test]
async fn an_unknown_id_is_401_without_the_key_and_404_with_it() {
    let mock = start().await;
    let url = v1(&mock, "responses/resp_0123/input_items");
    let resp = client().get(&url).header("api-key", "nope").send().await.expect("resp");
    assert_eq!(resp.status(), 401);
    let resp = send(reqwest::Method::GET, &url, None).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.expect("body"), responses::not_found("resp_0123"));
}

#[tokio::test]
async fn store_false_is_not_kept() {
    let mock = start().await;
    let (_, r) =
        create(&v1(&mock, "responses"), &json!({"model": DEP, "input": "x", "store": false})).await;
    let id = r["id"].as_str().expect("id");
    assert_eq!(r["store"], false);
    assert!(!mock.holds_response(id));
    let (status, _) = create(
        &v1(&mock, "responses"),
        &json!({"model": DEP, "input": "y", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn only_a_background_response_can_be_cancelled() {
    let mock = start().await;
    let (_, done) = create(&v1(&mock, "responses"), &json!({"model": DEP, "input": "x"})).await;
    let id = done["id"].as_str().expect("id");
    let resp =
        send(reqwest::Method::POST, &v1(&mock, &format!("responses/{id}/cancel")), None).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.expect("body"), responses::CANCEL_NOT_BACKGROUND);

    let background = json!({"model": DEP, "input": "x", "background": true});
    let (_, queued) = create(&dated(&mock, "responses"), &background).await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["output"], json!([]));
    let id = queued["id"].as_str().expect("id");
    let resp =
        send(reqwest::Method::POST, &dated(&mock, &format!("responses/{id}/cancel")), None).await;
    assert_eq!(resp.status(), 200);
    let cancelled: Value = resp.json().await.expect("json");
    assert_eq!(cancelled["status"], "cancelled");
    let got: Value = send(reqwest::Method::GET, &v1(&mock, &format!("responses/{id}")), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(got["status"], "cancelled", "a cancelled response stays cancelled");

    // Not cancelled: the first retrieval finds it completed.
    let (_, queued) = create(&dated(&mock, "responses"), &background).await;
    let id = queued["id"].as_str().expect("id");
    let got: Value = send(reqwest::Method::GET, &v1(&mock, &format!("responses/{id}")), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(got["status"], "completed");
    assert_eq!(output_text(&got), wire::reply_text(REGION));
    let again: Value =
        send(reqwest::Method::POST, &v1(&mock, &format!("responses/{id}/cancel")), None)
            .await
            .json()
            .await
            .expect("json");
    assert_eq!(again["status"], "completed", "cancelling a finished one changes nothing");
}

#[tokio::test]
async fn a_function_tool_round_trip() {
    let mock = start().await;
    let tools = json!([{
        "type": "function",
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    }]);
    let (status, r) = create(
        &v1(&mock, "responses"),
        &json!({"model": DEP, "input": "weather?", "tools": tools}),
    )
    .await;
    assert_eq!(status, 200);
    let call = &r["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["status"], "completed");
    assert!(call["id"].as_str().expect("id").starts_with("fc_"));
    let call_id = call["call_id"].as_str().expect("call_id");
    assert!(call_id.starts_with("call_"));
    let args: Value =
        serde_json::from_str(call["arguments"].as_str().expect("args")).expect("json");
    assert_eq!(args, json!({"city": REGION, "unit": "c"}));

    let follow = json!({
        "model": DEP,
        "previous_response_id": r["id"],
        "tools": tools,
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny"}],
    });
    let (status, r2) = create(&v1(&mock, "responses"), &follow).await;
    assert_eq!(status, 200, "{r2}");
    assert_eq!(output_text(&r2), wire::reply_text(REGION));
    let items: Value = send(
        reqwest::Method::GET,
        &v1(&mock, &format!("responses/{}/input_items", r2["id"].as_str().expect("id"))),
        None,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(items["data"][0]["type"], "function_call_output");
    assert_eq!(items["data"][0]["call_id"], call_id);

    // Streamed: the arguments arrive in pieces.
    let resp = send(
        reqwest::Method::POST,
        &v1(&mock, "responses"),
        Some(&json!({"model": DEP, "input": "weather?", "tools": tools, "stream": true})),
    )
    .await;
    let text = resp.text().await.expect("body");
    let pieces: Vec<String> = text
        .split("\n\n")
        .filter_map(|f| f.split_once("\ndata: "))
        .filter(|(e, _)| *e == "event: response.function_call_arguments.delta")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("json")["delta"]
                .as_str()
                .expect("delta")
                .to_owned()
        })
        .collect();
    assert!(pieces.len() >= 3, "{pieces:?}");
    assert_eq!(pieces.concat(), call["arguments"].as_str().expect("args"));
}

#[tokio::test]
async fn faults_apply_to_creates_and_to_follow_ups() {
    let mock = start().await;
    mock.script(DEP, Fault::throttled(3, 1));
    let resp = send(
        reqwest::Method::POST,
        &dated(&mock, "responses"),
        Some(&json!({"model": DEP, "input": "x"})),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "3");
    let body: Value = resp.json().await.expect("json");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(RESPONSES_VERSION) && message.contains("Responses_Create"),
        "{message}"
    );

    let (_, r) = create(&dated(&mock, "responses"), &json!({"model": DEP, "input": "x"})).await;
    let id = r["id"].as_str().expect("id");
    mock.script(
        DEP,
        Fault::Status { status: 503, retry_after: None, retry_after_ms: None, times: 1 },
    );
    let resp = send(reqwest::Method::GET, &v1(&mock, &format!("responses/{id}")), None).await;
    assert_eq!(resp.status(), 503, "a retrieve meets the creating deployment's faults");
    assert_eq!(
        send(reqwest::Method::GET, &v1(&mock, &format!("responses/{id}")), None).await.status(),
        200
    );

    // A cut stream stops after the scripted number of events.
    mock.script(DEP, Fault::StreamCut { after_chunks: 3, times: 1 });
    let mut resp = send(
        reqwest::Method::POST,
        &v1(&mock, "responses"),
        Some(&json!({"model": DEP, "input": "x", "stream": true})),
    )
    .await;
    let mut text = String::new();
    let outcome = loop {
        match resp.chunk().await {
            Ok(Some(c)) => text.push_str(std::str::from_utf8(&c).expect("utf8")),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "the stream is cut, not ended");
    assert_eq!(text.matches("event: ").count(), 3);
}
