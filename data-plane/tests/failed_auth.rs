//! Failed authentications are quiet under abuse: counted per client address and logged as one
//! line per window with the count, never one line per attempt at `info`; with a limit, the
//! address is answered 429 (before its key is looked at) for a window. Its own test binary: it
//! installs the global tracing subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use modelgw_data_plane::DataPlaneConfig;
use modelgw_model::RoutingPolicy;
use support::{API_VERSION, chat_body, fast_config, region_at};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn wrong_keys_are_logged_in_aggregate_and_limited_per_address() -> Result<()> {
    let at_info = Captured::default();
    let writer = at_info.clone();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(LevelFilter::INFO),
        )
        .init();
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let config = DataPlaneConfig {
        failed_auth_window: Duration::from_secs(1),
        failed_auth_limit: Some(40),
        ..fast_config()
    };
    let gw = support::gateway(&[(&eus, 0, 1)], RoutingPolicy::default(), config).await?;
    let url = format!("{}/openai/deployments/auto/chat/completions?{API_VERSION}", gw.base);
    for i in 0..40 {
        let response = gw
            .http
            .post(&url)
            .header("api-key", format!("wrong-key-{i}"))
            .body(chat_body(false).to_string())
            .send()
            .await?;
        assert_eq!(response.status(), 401);
    }
    // Over the limit: even the right key gets 429 now, before it is looked at.
    let refused = gw.chat().await?;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(eus.calls(), 0);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = at_info.text();
        if text.contains("failed authentications") && text.contains("failed=40") {
            break;
        }
        if Instant::now() > deadline {
            bail!("no aggregate line: {text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = at_info.text();
    assert_eq!(text.matches("unknown gateway key").count(), 0, "no line per attempt at info");
    assert_eq!(text.matches("failed authentications").count(), 1, "{text}");
    assert!(text.contains("client=127.0.0.1"), "{text}");
    assert!(!text.contains("wrong-key"), "no key in the logs");

    // The block ends with its window.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.chat().await?.status() != 200 {
        if Instant::now() > deadline {
            bail!("still refused after the window");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
