//! Shared helpers for the mock's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use modelgw_mock_openai::{MockAzure, MockConfig};
use serde_json::{Value, json};

pub const KEY: &str = "mock-key-0123456789abcdefWXYZ";
pub const DEP: &str = "gpt-4o-mini";
pub const OTHER_DEP: &str = "text-embedding-3-small";
pub const REGION: &str = "East US";
pub const MODEL: &str = "gpt-4o-mini-2024-07-18";
pub const API_VERSION: &str = "2024-10-21";
/// Upper bound for anything a test waits on, so a broken mock fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub async fn start() -> MockAzure {
    MockAzure::start(
        "127.0.0.1:0".parse().expect("addr"),
        MockConfig {
            region: REGION.into(),
            api_key: KEY.into(),
            deployments: vec![DEP.into(), OTHER_DEP.into()],
            model: MODEL.into(),
        },
    )
    .await
    .expect("mock starts")
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(DEADLINE).build().expect("client")
}

pub fn dated_url(mock: &MockAzure, dep: &str, op: &str) -> String {
    format!("{}/openai/deployments/{dep}/{op}?api-version={API_VERSION}", mock.base_url())
}

pub fn chat_body() -> Value {
    json!({"model": DEP, "messages": [{"role": "user", "content": "say hello"}]})
}

/// POSTs a chat request with the right key.
pub async fn chat(client: &reqwest::Client, mock: &MockAzure, body: &Value) -> reqwest::Response {
    client
        .post(dated_url(mock, DEP, "chat/completions"))
        .header("api-key", KEY)
        .json(body)
        .send()
        .await
        .expect("response")
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data frame: {f:?}")).to_owned()
        })
        .collect()
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .expect("ascii header")
}
