//! Serves one mock region for manual checks (e.g. with the openai Python SDK):
//! `MOCK_ADDR=127.0.0.1:8089 MOCK_KEY=k cargo run -p modelgw-mock-openai --example serve`.
//! Deployment `gpt-4o-mini`, region "East US"; prints the base URL on stdout.

use modelgw_mock_openai::{MockAzure, MockConfig};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("MOCK_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    let addr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let config = MockConfig {
        region: "East US".into(),
        api_key: std::env::var("MOCK_KEY").unwrap_or_else(|_| "mock-key".into()),
        deployments: vec!["gpt-4o-mini".into(), "text-embedding-3-small".into()],
        model: "gpt-4o-mini-2024-07-18".into(),
    };
    let mock = MockAzure::start(addr, config).await?;
    #[allow(clippy::print_stdout, reason = "the base URL is this example's output")]
    {
        println!("{}", mock.base_url());
    }
    mock.stopped().await;
    Ok(())
}
