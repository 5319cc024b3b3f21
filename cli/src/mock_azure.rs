//! `modelgw mock-azure`: one mock Azure OpenAI region (tests and demos only).

use std::future::Future;
use std::net::SocketAddr;

use modelgw_mock_openai::{MockAzure, MockConfig};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Listen address (port 0 picks a free port; the ready line says which).
    #[arg(long, env = "MODELGW_MOCK_ADDR", default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Region display name reported in `x-ms-region`.
    #[arg(long, default_value = "East US")]
    pub region: String,
    /// The only `api-key` this region accepts.
    #[arg(long, env = "MODELGW_MOCK_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Deployments that exist (repeat the flag for several).
    #[arg(long = "deployment", default_value = "gpt-4o-mini")]
    pub deployments: Vec<String>,
    /// Model name reported in responses.
    #[arg(long, default_value = "gpt-4o-mini-2024-07-18")]
    pub model: String,
}

pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mock = MockAzure::start(
        args.addr,
        MockConfig {
            region: args.region.clone(),
            api_key: args.api_key,
            deployments: args.deployments,
            model: args.model,
        },
    )
    .await?;
    tracing::info!(addr = %mock.addr(), region = %args.region, "mock Azure OpenAI region listening");
    crate::stdout::print_ready(
        "mock-azure",
        &[("url", mock.base_url()), ("region", args.region.replace(' ', "_"))],
    );
    shutdown.await;
    mock.shutdown();
    Ok(())
}
