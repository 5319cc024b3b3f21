//! Every request is logged at debug level, and no credential ever is.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use modelgw_mock_openai::Fault;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the mock's tasks run on this thread, under the thread-local subscriber.
#[tokio::test]
async fn requests_are_logged_without_credentials() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = start().await;
    let client = client();
    mock.script(DEP, Fault::throttled(1, 1));
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 429);
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);
    let wrong_key = "wrong-key-that-must-not-be-logged";
    let resp = client
        .post(dated_url(&mock, DEP, "chat/completions"))
        .header("api-key", wrong_key)
        .json(&chat_body())
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 401);
    let resp = client
        .post(format!("{}/openai/v1/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .json(&chat_body())
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 200);
    tracing::debug!(config = ?modelgw_mock_openai::MockConfig {
        region: REGION.into(),
        api_key: KEY.into(),
        deployments: vec![],
        model: MODEL.into(),
    }, "config debug output");

    let logs = String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("utf8");
    assert!(logs.contains("mock answered"), "{logs}");
    assert!(logs.contains("deployment=gpt-4o-mini"), "{logs}");
    assert!(logs.contains("fault=status"), "{logs}");
    assert!(logs.contains("status=401"), "{logs}");
    assert!(!logs.contains(KEY), "the key leaked into logs");
    assert!(!logs.contains(wrong_key), "a presented key leaked into logs");
    assert!(!logs.contains(&KEY[..12]), "part of the key leaked into logs");
}
