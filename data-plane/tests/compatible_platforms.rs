//! `openai_compatible` endpoints against mocks of the servers people point them at — OpenAI,
//! vLLM and Ollama, each speaking its own dialect (`modelgw_mock_openai::CompatibleMock`) — and
//! mixed with an Azure region in one gateway. What a client sends is the gateway's Azure
//! surface (dated or v1); what each server must receive is its own: `{base}/chat/completions`
//! without `api-version`, `Authorization: Bearer <the endpoint's key>`, `model` = the
//! endpoint's model name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::time::Instant;

use anyhow::{Context, Result};
use modelgw_mock_openai::{
    CompatibleConfig, CompatibleFault, CompatibleMock, Dialect, Fault, RecordedRequest,
};
use modelgw_model::{EndpointState, Platform, RoutingPolicy, Snapshot};
use serde_json::{Value, json};
use support::{
    API_VERSION, CLIENT_KEY, GATEWAY, Region, TestGateway, chat_body, fast_config, header, id,
    region, snapshot, start,
};

/// The model an operator would configure as the endpoint's deployment for each server.
fn model(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::OpenAi => "gpt-4o-mini",
        Dialect::Vllm => "meta-llama/Llama-3.1-8B-Instruct",
        // Pulled as `llama3.2:latest`; the untagged name resolves to it.
        Dialect::Ollama => "llama3.2",
    }
}

/// The key the server accepts (Ollama accepts anything; the operator still stores one).
fn key(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::OpenAi => "sk-proj-modelgw-test-0123456789abcdef",
        Dialect::Vllm => "vllm-token-0123456789abcdef",
        Dialect::Ollama => "ollama",
    }
}

/// A running mock of `dialect` and the endpoint (as a [`Region`] for the snapshot helpers)
/// that names `deployment` at it with `key`.
struct Upstream {
    dialect: Dialect,
    mock: CompatibleMock,
    endpoint: Region,
}

async fn upstream(dialect: Dialect) -> Result<Upstream> {
    let models = match dialect {
        Dialect::OpenAi => vec!["gpt-4o-mini".to_owned(), "text-embedding-3-small".to_owned()],
        Dialect::Vllm => vec![model(dialect).to_owned()],
        Dialect::Ollama => vec!["llama3.2:latest".to_owned(), "nomic-embed-text:latest".to_owned()],
    };
    let api_key = (dialect != Dialect::Ollama).then(|| key(dialect).to_owned());
    let config = CompatibleConfig { label: format!("{} mock", dialect.name()), models, api_key };
    let mock = CompatibleMock::start(dialect, config).await?;
    let endpoint = endpoint_at(&mock, model(dialect), key(dialect));
    Ok(Upstream { dialect, mock, endpoint })
}

/// An endpoint at `mock` naming `deployment`, with `key`.
fn endpoint_at(mock: &CompatibleMock, deployment: &str, key: &str) -> Region {
    let name = mock.dialect().name();
    Region::elsewhere(name, "local", deployment, key, &mock.base_url())
}

/// Gateway `chat` over `members`; those in `compatible` are `openai_compatible` endpoints.
fn mixed(
    version: u64,
    members: &[(&Region, u32, u32)],
    compatible: &[&Region],
) -> Result<Snapshot> {
    let mut snap = snapshot(version, members, RoutingPolicy::default())?;
    for endpoint in &mut snap.endpoints {
        if compatible.iter().any(|r| id(r) == endpoint.id) {
            endpoint.platform = Platform::OpenaiCompatible;
        }
    }
    Ok(snap)
}

async fn gateway(members: &[(&Region, u32, u32)], compatible: &[&Region]) -> Result<TestGateway> {
    let gw = start(fast_config()).await?;
    gw.install(mixed(1, members, compatible)?)?;
    Ok(gw)
}

/// The last request `mock` received.
fn last(mock: &CompatibleMock) -> RecordedRequest {
    mock.requests().pop().expect("the mock received a request")
}

/// What every request to a compatible server must look like: its path under the base URL,
/// no query (no `api-version`), the endpoint's key as a bearer token and nothing of the
/// client's credential, the endpoint's model in the body.
fn assert_dialect_request(up: &Upstream, seen: &RecordedRequest, path: &str) {
    let what = format!("{} {path}", up.dialect.name());
    assert_eq!(seen.method, "POST", "{what}");
    assert_eq!(seen.path, path, "{what}");
    assert_eq!(seen.query, None, "{what}: no api-version or other query");
    let bearer = format!("Bearer {}", key(up.dialect));
    assert_eq!(seen.header("authorization"), Some(bearer.as_str()), "{what}");
    assert_eq!(seen.header("api-key"), None, "{what}: no Azure key header");
    assert!(
        seen.headers.values().all(|v| !v.contains(CLIENT_KEY)),
        "{what}: the client's key never reaches the upstream: {:?}",
        seen.headers
    );
    let body = seen.json().expect("a JSON body");
    assert_eq!(body["model"], model(up.dialect), "{what}: the endpoint's model");
}

/// The `data:` payloads of an SSE body, `[DONE]` included.
fn sse_payloads(text: &str) -> Vec<&str> {
    text.split("\n\n").filter_map(|event| event.strip_prefix("data: ")).collect()
}

/// The concatenated `delta.content` of chat chunks.
fn streamed_content(payloads: &[&str]) -> String {
    payloads
        .iter()
        .filter(|p| **p != "[DONE]")
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn each_dialect_gets_its_path_bearer_key_and_model_from_the_dated_and_v1_surfaces()
-> Result<()> {
    for dialect in Dialect::ALL {
        let up = upstream(dialect).await?;
        let gw = gateway(&[(&up.endpoint, 0, 1)], &[&up.endpoint]).await?;
        let name = dialect.name();

        // Dated surface, deployment `auto`, the client's key as `api-key`.
        let response = gw.request(false).send().await?;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(header(&response, "x-modelgw-endpoint"), name);
        let body: Value = response.json().await?;
        assert_eq!(body["choices"][0]["message"]["content"], up.mock.reply_text(), "{name}");
        assert_eq!(body["model"], model(dialect), "{name}: the server's answer, unchanged");
        assert_dialect_request(&up, &last(&up.mock), "/v1/chat/completions");

        // v1 surface, the gateway's name as `model`, the client's key as a bearer token.
        let response = gw
            .http
            .post(format!("{}/openai/v1/chat/completions", gw.base))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("content-type", "application/json")
            .body(
                json!({"model": GATEWAY, "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            )
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{name}: {:?}", response.text().await);
        assert_dialect_request(&up, &last(&up.mock), "/v1/chat/completions");

        // Embeddings, both surfaces.
        let path = format!("/openai/deployments/auto/embeddings?{API_VERSION}");
        let response = gw.post(&path, &json!({"input": "hello"})).send().await?;
        assert_eq!(response.status(), 200, "{name}");
        let body: Value = response.json().await?;
        assert_eq!(body["data"][0]["embedding"].as_array().map(Vec::len), Some(8), "{name}");
        assert_dialect_request(&up, &last(&up.mock), "/v1/embeddings");
        let response = gw
            .post("/openai/v1/embeddings", &json!({"model": GATEWAY, "input": ["a", "b"]}))
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{name}");
        let body: Value = response.json().await?;
        assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{name}");
        assert_dialect_request(&up, &last(&up.mock), "/v1/embeddings");
    }
    Ok(())
}

#[tokio::test]
async fn streamed_chats_reach_each_dialect_and_usage_comes_back_only_when_asked_for() -> Result<()>
{
    for dialect in Dialect::ALL {
        let up = upstream(dialect).await?;
        let gw = gateway(&[(&up.endpoint, 0, 1)], &[&up.endpoint]).await?;
        let name = dialect.name();
        let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");

        // Asked for: the usage chunk reaches the client.
        let mut body = chat_body(true);
        body["stream_options"] = json!({"include_usage": true});
        let response = gw.post(&path, &body).send().await?;
        assert_eq!(response.status(), 200, "{name}");
        assert!(header(&response, "content-type").starts_with("text/event-stream"), "{name}");
        let text = response.text().await?;
        assert!(text.ends_with("data: [DONE]\n\n"), "{name}: {text}");
        let payloads = sse_payloads(&text);
        assert_eq!(streamed_content(&payloads), up.mock.reply_text(), "{name}");
        let usage_chunk: Value = serde_json::from_str(payloads[payloads.len() - 2])?;
        assert_eq!(usage_chunk["choices"], json!([]), "{name}: {text}");
        assert!(usage_chunk["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0, "{name}: {text}");
        assert_dialect_request(&up, &last(&up.mock), "/v1/chat/completions");

        // Not asked for: the gateway asks (for its accounting) and takes it out again.
        let response = gw.post(&path, &chat_body(true)).send().await?;
        assert_eq!(response.status(), 200, "{name}");
        let text = response.text().await?;
        assert!(!text.contains("\"usage\""), "{name}: usage the client did not ask for: {text}");
        assert_eq!(streamed_content(&sse_payloads(&text)), up.mock.reply_text(), "{name}");
        let seen = last(&up.mock);
        assert_dialect_request(&up, &seen, "/v1/chat/completions");
        let sent = seen.json().context("json")?;
        assert_eq!(sent["stream_options"]["include_usage"], true, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn a_mixed_gateway_fails_over_from_azure_to_each_dialect_and_back() -> Result<()> {
    for dialect in Dialect::ALL {
        let name = dialect.name();
        let eus = region("eus").await?;
        let up = upstream(dialect).await?;

        // Azure first: its 503 sends the request on to the compatible server.
        let gw = gateway(&[(&eus, 0, 1), (&up.endpoint, 1, 1)], &[&up.endpoint]).await?;
        eus.script(Fault::Status {
            status: 503,
            retry_after: None,
            retry_after_ms: None,
            times: 1,
        });
        let response = gw.chat().await?;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(header(&response, "x-modelgw-endpoint"), name);
        let attempts = header(&response, "x-modelgw-attempts").to_owned();
        assert!(attempts.starts_with("eus:server_error"), "{name}: {attempts}");
        assert!(attempts.contains(&format!("{name}:ok")), "{name}: {attempts}");
        let body: Value = response.json().await?;
        assert_eq!(body["choices"][0]["message"]["content"], up.mock.reply_text(), "{name}");
        assert_eq!(eus.calls(), 1, "{name}");
        assert_dialect_request(&up, &last(&up.mock), "/v1/chat/completions");

        // The compatible server first: its 429 sends the same request to Azure, in Azure's
        // shape (deployment path, api-version kept, `api-key`), and keeps it away for the
        // window it asked for.
        eus.reset();
        up.mock.reset();
        let gw = gateway(&[(&up.endpoint, 0, 1), (&eus, 1, 1)], &[&up.endpoint]).await?;
        up.mock.script(CompatibleFault::Status { status: 429, retry_after: Some(30), times: 1 });
        let response = gw.chat().await?;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(header(&response, "x-modelgw-endpoint"), "eus");
        let attempts = header(&response, "x-modelgw-attempts").to_owned();
        assert!(attempts.starts_with(&format!("{name}:throttled")), "{name}: {attempts}");
        let body: Value = response.json().await?;
        assert_eq!(body["choices"][0]["message"]["content"], eus.mock().reply_text(), "{name}");
        let azure = &eus.mock().requests()[0];
        assert_eq!(azure.path, "/openai/deployments/gpt-4o-eus/chat/completions", "{name}");
        assert_eq!(azure.query.as_deref(), Some(API_VERSION), "{name}");
        assert_eq!(azure.header("api-key"), Some(eus.key.as_str()), "{name}");
        assert_eq!(azure.header("authorization"), None, "{name}");
        assert_eq!(azure.json().context("json")?["model"], "gpt-4o-eus", "{name}");
        assert_eq!(
            gw.health.state(id(&up.endpoint), Instant::now()),
            EndpointState::Throttling,
            "{name}"
        );
        let response = gw.chat().await?;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(header(&response, "x-modelgw-endpoint"), "eus");
        assert_eq!(up.mock.requests().len(), 1, "{name}: skipped while throttled");
    }
    Ok(())
}

/// The body each dialect answers for a model it does not serve.
fn unknown_model_body(dialect: Dialect, model: &str) -> String {
    match dialect {
        Dialect::OpenAi => format!(
            r#"{{"error":{{"message":"The model `{model}` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}}}"#
        ),
        Dialect::Vllm => format!(
            r#"{{"error":{{"message":"The model `{model}` does not exist.","type":"NotFoundError","param":null,"code":404}}}}"#
        ),
        Dialect::Ollama => format!(
            "{{\"error\":{{\"message\":\"model '{model}' not found\",\"type\":\"not_found_error\",\"param\":null,\"code\":null}}}}\n"
        ),
    }
}

#[tokio::test]
async fn dialect_errors_pass_through_unchanged_and_only_a_rejected_key_fails_the_endpoint()
-> Result<()> {
    for dialect in Dialect::ALL {
        let name = dialect.name();
        let up = upstream(dialect).await?;

        // A model the server does not have: its own 404, byte for byte; the endpoint stays
        // healthy (the request, or the configuration, is wrong — not the server).
        let missing = endpoint_at(&up.mock, "no-such-model", key(dialect));
        let gw = gateway(&[(&missing, 0, 1)], &[&missing]).await?;
        let response = gw.chat().await?;
        assert_eq!(response.status(), 404, "{name}");
        assert!(header(&response, "x-modelgw-attempts").contains("client_error"), "{name}");
        assert_eq!(response.text().await?, unknown_model_body(dialect, "no-such-model"), "{name}");
        assert_eq!(gw.health.state(id(&missing), Instant::now()), EndpointState::Healthy);
        assert_eq!(up.mock.requests().len(), 1, "{name}: not retried");

        // A wrong key: the endpoint is marked failed (nothing of the client's reached the
        // server to be refused) and the server's 401 does not reach the client — OpenAI's
        // body carries a hint of the key, and the client's own key is fine: with no other
        // member the client gets the gateway's own 503. Ollama has no auth: any key works.
        let wrong = endpoint_at(&up.mock, model(dialect), "sk-wrong-key-0000000000xyz");
        let gw = gateway(&[(&wrong, 0, 1)], &[&wrong]).await?;
        let response = gw.chat().await?;
        if dialect == Dialect::Ollama {
            assert_eq!(response.status(), 200, "{name}: auth is not checked");
            assert_eq!(gw.health.state(id(&wrong), Instant::now()), EndpointState::Healthy);
            continue;
        }
        assert_eq!(response.status(), 503, "{name}");
        assert!(header(&response, "x-modelgw-attempts").contains("credential_rejected"), "{name}");
        let text = response.text().await?;
        assert!(text.contains("NoEndpointAvailable"), "{name}: {text}");
        for hint in ["sk-wr", "xyz", "Unauthorized", "Incorrect API key"] {
            assert!(!text.contains(hint), "{name}: the upstream's 401 reached the client: {text}");
        }
        assert_eq!(gw.health.state(id(&wrong), Instant::now()), EndpointState::Error, "{name}");
    }
    Ok(())
}

/// OpenAI's own answer headers (request id, processing time, quota) reach the client, and
/// the Responses API goes to `/v1/responses` like the other operations.
#[tokio::test]
async fn openai_headers_pass_through_and_responses_reach_v1_responses() -> Result<()> {
    let up = upstream(Dialect::OpenAi).await?;
    let gw = gateway(&[(&up.endpoint, 0, 1)], &[&up.endpoint]).await?;
    let response = gw.chat().await?;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "x-request-id").starts_with("req_"));
    assert!(!header(&response, "openai-processing-ms").is_empty());
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), "10000");
    assert!(!header(&response, "x-ratelimit-remaining-tokens").is_empty());

    let response = gw
        .post("/openai/v1/responses", &json!({"model": GATEWAY, "input": "Say hello"}))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text)?;
    assert_eq!(body["output"][0]["content"][0]["text"], up.mock.reply_text());
    assert_dialect_request(&up, &last(&up.mock), "/v1/responses");
    Ok(())
}
