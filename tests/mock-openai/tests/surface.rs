//! The Azure surface: paths, auth, bodies, headers, SSE framing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use modelgw_mock_openai::{Fault, wire};
use serde_json::{Value, json};

fn assert_azure_headers(resp: &reqwest::Response) {
    let apim = header(resp, "apim-request-id");
    assert_eq!(apim.len(), 36, "uuid apim-request-id: {apim}");
    assert_eq!(header(resp, "x-request-id").len(), 36);
    assert_eq!(header(resp, "x-ms-region"), REGION);
    assert!(header(resp, "azureml-model-session").starts_with('d'));
}

#[tokio::test]
async fn chat_json_has_the_azure_shape_and_headers() {
    let mock = start().await;
    let client = client();
    let started = chrono::Utc::now().timestamp();
    let resp = chat(&client, &mock, &chat_body()).await;
    assert_eq!(resp.status(), 200);
    assert_azure_headers(&resp);
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert_eq!(header(&resp, "x-ms-client-request-id"), header(&resp, "apim-request-id"));
    assert_eq!(header(&resp, "x-ms-deployment-name"), DEP);
    let remaining_1: u64 = header(&resp, "x-ratelimit-remaining-requests").parse().expect("number");
    let tokens_1: u64 = header(&resp, "x-ratelimit-remaining-tokens").parse().expect("number");
    let content_length: usize = header(&resp, "content-length").parse().expect("number");
    let bytes = resp.bytes().await.expect("body");
    assert_eq!(bytes.len(), content_length);
    let body: Value = serde_json::from_slice(&bytes).expect("json");

    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-") && id.len() > 20, "{id}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_i64().expect("created") >= started);
    assert_eq!(body["model"], MODEL);
    assert!(body["system_fingerprint"].as_str().expect("fp").starts_with("fp_"));
    assert_eq!(body["prompt_filter_results"][0]["prompt_index"], 0);
    assert_eq!(
        body["prompt_filter_results"][0]["content_filter_results"]["hate"]["severity"],
        "safe"
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello from East US. This is a mock reply.");
    assert_eq!(choice["message"]["content"], mock.reply_text());
    assert_eq!(choice["content_filter_results"]["protected_material_text"]["detected"], false);
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 9);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().expect("prompt") + 9)
    );

    // The quota headers count down; a client's request id is echoed.
    let resp = client
        .post(dated_url(&mock, DEP, "chat/completions"))
        .header("api-key", KEY)
        .header("x-ms-client-request-id", "client-chosen-id")
        .json(&chat_body())
        .send()
        .await
        .expect("response");
    assert_eq!(header(&resp, "x-ms-client-request-id"), "client-chosen-id");
    let remaining_2: u64 = header(&resp, "x-ratelimit-remaining-requests").parse().expect("number");
    let tokens_2: u64 = header(&resp, "x-ratelimit-remaining-tokens").parse().expect("number");
    assert_eq!(remaining_2, remaining_1 - 1);
    assert!(tokens_2 < tokens_1);
}

#[tokio::test]
async fn max_tokens_cuts_the_reply_with_length() {
    let mock = start().await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let resp: Value = chat(&client(), &mock, &body).await.json().await.expect("json");
    assert_eq!(resp["choices"][0]["message"]["content"], "Hello from East");
    assert_eq!(resp["choices"][0]["finish_reason"], "length");
    assert_eq!(resp["usage"]["completion_tokens"], 3);
}

async fn stream_chat(include_usage: Option<bool>) -> (Vec<Value>, Vec<String>) {
    let mock = start().await;
    let mut body = chat_body();
    body["stream"] = json!(true);
    if let Some(u) = include_usage {
        body["stream_options"] = json!({"include_usage": u});
    }
    let resp = chat(&client(), &mock, &body).await;
    assert_eq!(resp.status(), 200);
    assert_azure_headers(&resp);
    assert_eq!(header(&resp, "content-type"), "text/event-stream; charset=utf-8");
    assert_eq!(header(&resp, "x-accel-buffering"), "no");
    assert!(resp.headers().get("content-length").is_none(), "SSE is chunked");
    let text = resp.text().await.expect("body");
    let payloads = sse_payloads(&text);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"), "[DONE] last");
    let frames: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("JSON frame"))
        .collect();
    (frames, payloads)
}

fn check_stream_prefix(frames: &[Value]) -> String {
    // Azure's first frame: prompt annotations only.
    let first = &frames[0];
    assert_eq!(first["id"], "");
    assert_eq!(first["model"], "");
    assert_eq!(first["object"], "");
    assert_eq!(first["created"], 0);
    assert_eq!(first["choices"], json!([]));
    assert_eq!(first["prompt_filter_results"][0]["prompt_index"], 0);
    // Role frame.
    let role = &frames[1];
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role["choices"][0]["delta"]["content"], "");
    assert_eq!(role["object"], "chat.completion.chunk");
    assert_eq!(role["model"], MODEL);
    let id = role["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("chatcmpl-"));
    // One word per content frame, all with the same id, then the finish frame.
    let mut content = String::new();
    let mut words = 0;
    for f in &frames[2..] {
        let choice = &f["choices"][0];
        if choice["finish_reason"].is_string() {
            assert_eq!(choice["finish_reason"], "stop");
            assert_eq!(choice["delta"], json!({}));
            break;
        }
        assert_eq!(f["id"], id.as_str());
        let piece = choice["delta"]["content"].as_str().expect("content delta");
        assert_eq!(piece.trim().split(' ').count(), 1, "one word per frame: {piece:?}");
        content.push_str(piece);
        words += 1;
    }
    assert!(words >= 5, "at least 5 content frames, got {words}");
    assert_eq!(content, wire::reply_text(REGION));
    id
}

#[tokio::test]
async fn chat_sse_without_usage() {
    for include_usage in [None, Some(false)] {
        let (frames, _) = stream_chat(include_usage).await;
        check_stream_prefix(&frames);
        let last = frames.last().expect("frames");
        assert_eq!(
            last["choices"][0]["finish_reason"], "stop",
            "finish frame is last before [DONE]"
        );
        assert!(frames.iter().all(|f| f.get("usage").is_none()));
    }
}

#[tokio::test]
async fn chat_sse_with_usage() {
    let (frames, payloads) = stream_chat(Some(true)).await;
    let id = check_stream_prefix(&frames);
    let usage = frames.last().expect("frames");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["id"], id.as_str());
    assert_eq!(usage["usage"]["completion_tokens"], 9);
    assert_eq!(frames[frames.len() - 2]["choices"][0]["finish_reason"], "stop");
    // 1 annotation + 1 role + 9 words + finish + usage + [DONE].
    assert_eq!(payloads.len(), 14);
}

#[tokio::test]
async fn chat_sse_first_frame_arrives_before_the_last_is_sent() {
    let mock = start().await;
    // The stream cannot finish for a minute, so receiving its first frame proves real chunking.
    mock.script(DEP, Fault::StreamStall { after_chunks: 1, ms: 60_000, times: 1 });
    let mut body = chat_body();
    body["stream"] = json!(true);
    let mut resp = chat(&client(), &mock, &body).await;
    let first = tokio::time::timeout(DEADLINE, resp.chunk())
        .await
        .expect("first frame before the stall ends")
        .expect("chunk")
        .expect("some bytes");
    assert_eq!(
        std::str::from_utf8(&first).expect("utf8"),
        format!("data: {}\n\n", wire::FIRST_SSE_FRAME)
    );
}

#[tokio::test]
async fn chat_sse_frames_arrive_one_by_one() {
    let mock = start().await;
    let gap = Duration::from_millis(60);
    mock.set_stream_gap(gap);
    let mut body = chat_body();
    body["stream"] = json!(true);
    let mut resp = chat(&client(), &mock, &body).await;
    let started = Instant::now();
    let mut reads = 0;
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        reads += 1;
        text.push_str(std::str::from_utf8(&chunk).expect("utf8"));
    }
    let frames = sse_payloads(&text).len();
    assert_eq!(frames, 13);
    // Frames are paced by the gap and reach the client as separate reads.
    assert!(started.elapsed() >= gap * (frames as u32 - 2), "{:?}", started.elapsed());
    assert!(reads >= frames / 2, "{reads} reads for {frames} frames");
}

#[tokio::test]
async fn legacy_completions_answer_text() {
    let mock = start().await;
    let resp = client()
        .post(dated_url(&mock, DEP, "completions"))
        .header("api-key", KEY)
        .json(&json!({"prompt": "say hi"}))
        .send()
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], mock.reply_text());
}

#[tokio::test]
async fn embeddings_are_small_deterministic_vectors() {
    let mock = start().await;
    let client = client();
    let post = |input: Value, format: Option<&str>| {
        let mut body = json!({"input": input});
        if let Some(f) = format {
            body["encoding_format"] = json!(f);
        }
        client
            .post(dated_url(&mock, OTHER_DEP, "embeddings"))
            .header("api-key", KEY)
            .json(&body)
            .send()
    };
    let one: Value = post(json!("hello"), None).await.expect("resp").json().await.expect("json");
    assert_eq!(one["object"], "list");
    assert_eq!(one["model"], MODEL);
    assert_eq!(one["data"][0]["object"], "embedding");
    assert_eq!(one["data"][0]["index"], 0);
    let v = one["data"][0]["embedding"].as_array().expect("vector").clone();
    assert_eq!(v.len(), wire::DEFAULT_EMBEDDING_DIMENSIONS);
    assert_eq!(one["usage"]["prompt_tokens"], one["usage"]["total_tokens"]);

    let many: Value =
        post(json!(["hello", "world"]), None).await.expect("resp").json().await.expect("json");
    let data = many["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["embedding"].as_array().expect("v"), &v, "same input, same vector");
    assert_ne!(data[1]["embedding"], data[0]["embedding"]);
    assert_eq!(data[1]["index"], 1);

    // The openai SDK asks for base64 by default: little-endian f32s.
    let b64: Value =
        post(json!("hello"), Some("base64")).await.expect("resp").json().await.expect("json");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().expect("base64 string"))
        .expect("valid base64");
    let floats: Vec<f64> =
        raw.chunks(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
    let expected: Vec<f64> = v.iter().map(|x| x.as_f64().expect("float")).collect();
    assert_eq!(floats, expected);

    let missing = client
        .post(dated_url(&mock, OTHER_DEP, "embeddings"))
        .header("api-key", KEY)
        .json(&json!({}))
        .send()
        .await
        .expect("resp");
    assert_eq!(missing.status(), 400);
}

#[tokio::test]
async fn v1_paths_take_the_deployment_from_the_body_and_accept_a_bearer_key() {
    let mock = start().await;
    let client = client();
    let url = format!("{}/openai/v1/chat/completions", mock.base_url());
    let resp = client.post(&url).bearer_auth(KEY).json(&chat_body()).send().await.expect("resp");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-ms-deployment-name"), DEP);
    assert_eq!(mock.calls(DEP), 1);
    let recorded = mock.requests();
    assert_eq!(recorded[0].deployment.as_deref(), Some(DEP));
    assert_eq!(recorded[0].query, None);

    let unknown = json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]});
    let resp = client.post(&url).header("api-key", KEY).json(&unknown).send().await.expect("resp");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.expect("body"), wire::DEPLOYMENT_NOT_FOUND);

    let no_model = json!({"messages": [{"role": "user", "content": "x"}]});
    let resp = client.post(&url).header("api-key", KEY).json(&no_model).send().await.expect("resp");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.expect("body"), wire::MISSING_MODEL);

    let emb = format!("{}/openai/v1/embeddings?api-version=v1", mock.base_url());
    let resp = client
        .post(&emb)
        .header("api-key", KEY)
        .json(&json!({"model": OTHER_DEP, "input": "x"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 200);

    // The SDK's `AzureOpenAI(base_url=…/openai/v1/, api_version="preview")` shape.
    let sdk = format!(
        "{}/openai/v1/deployments/{DEP}/chat/completions?api-version=preview",
        mock.base_url()
    );
    let resp =
        client.post(&sdk).header("api-key", KEY).json(&chat_body()).send().await.expect("resp");
    assert_eq!(resp.status(), 200);
    // The model-less request named no deployment, so it is not counted.
    assert_eq!(mock.calls(DEP), 2);
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_before_the_deployment_is_checked() {
    let mock = start().await;
    let client = client();
    let url = dated_url(&mock, DEP, "chat/completions");
    let wrong =
        client.post(&url).header("api-key", "nope").json(&chat_body()).send().await.expect("resp");
    assert_eq!(wrong.status(), 401);
    assert_azure_headers(&wrong);
    assert_eq!(wrong.text().await.expect("body"), wire::INVALID_KEY);

    let missing = client.post(&url).json(&chat_body()).send().await.expect("resp");
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.text().await.expect("body"), wire::MISSING_KEY);

    // A bearer key is a v1 feature; on dated paths it reads as a bad Entra token.
    let bearer = client.post(&url).bearer_auth(KEY).json(&chat_body()).send().await.expect("resp");
    assert_eq!(bearer.status(), 401);
    assert_eq!(bearer.text().await.expect("body"), wire::INVALID_TOKEN);

    let unknown_dep = client
        .post(dated_url(&mock, "nope", "chat/completions"))
        .header("api-key", "nope")
        .json(&chat_body())
        .send()
        .await
        .expect("resp");
    assert_eq!(unknown_dep.status(), 401);

    // Auth failures still count as calls for the deployment.
    assert_eq!(mock.calls(DEP), 3);
}

#[tokio::test]
async fn unknown_deployment_is_404_deployment_not_found() {
    let mock = start().await;
    let resp = client()
        .post(dated_url(&mock, "gpt-5-nope", "chat/completions"))
        .header("api-key", KEY)
        .json(&chat_body())
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 404);
    assert_azure_headers(&resp);
    assert!(resp.headers().get("x-ms-deployment-name").is_none());
    assert_eq!(resp.text().await.expect("body"), wire::DEPLOYMENT_NOT_FOUND);
    assert_eq!(mock.calls("gpt-5-nope"), 1);
}

#[tokio::test]
async fn missing_api_version_or_unknown_path_is_resource_not_found() {
    let mock = start().await;
    let client = client();
    let base = mock.base_url();
    for (method, url) in [
        (reqwest::Method::POST, format!("{base}/openai/deployments/{DEP}/chat/completions")),
        (
            reqwest::Method::POST,
            format!("{base}/openai/deployments/{DEP}/chat/completions?api-version=latest"),
        ),
        (
            reqwest::Method::POST,
            format!("{base}/openai/deployments/{DEP}/speak?api-version={API_VERSION}"),
        ),
        (reqwest::Method::POST, format!("{base}/somewhere")),
        (reqwest::Method::GET, dated_url(&mock, DEP, "chat/completions")),
    ] {
        let resp = client
            .request(method, &url)
            .header("api-key", KEY)
            .json(&chat_body())
            .send()
            .await
            .expect("resp");
        assert_eq!(resp.status(), 404, "{url}");
        assert_eq!(header(&resp, "x-ms-region"), REGION);
        assert_eq!(
            resp.text().await.expect("body"),
            r#"{"error":{"code":"404","message": "Resource not found"}}"#,
            "{url}"
        );
    }
}

#[tokio::test]
async fn malformed_chat_bodies_are_400() {
    let mock = start().await;
    let client = client();
    let url = dated_url(&mock, DEP, "chat/completions");
    let not_json =
        client.post(&url).header("api-key", KEY).body("{not json").send().await.expect("resp");
    assert_eq!(not_json.status(), 400);
    assert_eq!(not_json.text().await.expect("body"), wire::INVALID_JSON);

    for body in [json!({"model": DEP}), json!({"messages": []}), json!([1, 2])] {
        let resp = client.post(&url).header("api-key", KEY).json(&body).send().await.expect("resp");
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["type"], "invalid_request_error", "{body}");
    }
}

/// Every operation of the surface, dated and v1: `(method, path)`.
fn every_operation() -> Vec<(reqwest::Method, String)> {
    let (post, get, delete) =
        (reqwest::Method::POST, reqwest::Method::GET, reqwest::Method::DELETE);
    let mut ops = Vec::new();
    for tail in [
        "chat/completions",
        "completions",
        "embeddings",
        "images/generations",
        "images/edits",
        "audio/transcriptions",
        "audio/translations",
        "audio/speech",
    ] {
        ops.push((
            post.clone(),
            format!("/openai/deployments/{DEP}/{tail}?api-version={API_VERSION}"),
        ));
        ops.push((post.clone(), format!("/openai/v1/{tail}")));
    }
    for (prefix, query) in [("/openai", "?api-version=2025-04-01-preview"), ("/openai/v1", "")] {
        ops.push((post.clone(), format!("{prefix}/responses{query}")));
        ops.push((get.clone(), format!("{prefix}/responses/resp_x{query}")));
        ops.push((delete.clone(), format!("{prefix}/responses/resp_x{query}")));
        ops.push((post.clone(), format!("{prefix}/responses/resp_x/cancel{query}")));
        ops.push((get.clone(), format!("{prefix}/responses/resp_x/input_items{query}")));
        ops.push((get.clone(), format!("{prefix}/models{query}")));
    }
    ops
}

#[tokio::test]
async fn a_wrong_key_is_401_on_every_operation_and_a_right_one_is_never_resource_not_found() {
    let mock = start().await;
    let client = client();
    for (method, path) in every_operation() {
        let url = format!("{}{path}", mock.base_url());
        let wrong = client
            .request(method.clone(), &url)
            .header("api-key", "wrong")
            .json(&chat_body())
            .send()
            .await
            .expect("resp");
        assert_eq!(wrong.status(), 401, "{method} {path}");
        assert_eq!(wrong.text().await.expect("body"), wire::INVALID_KEY, "{method} {path}");
        let right = client
            .request(method.clone(), &url)
            .header("api-key", KEY)
            .json(&chat_body())
            .send()
            .await
            .expect("resp");
        let status = right.status();
        let body = right.text().await.expect("body");
        assert_ne!(body, wire::RESOURCE_NOT_FOUND, "{method} {path} is routed ({status})");
    }
}
