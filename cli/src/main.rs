//! `modelgw`: one binary for every Model Gateway process.
//!
//! - `modelgw control-plane`: configuration store, admin API, snapshot distribution (gRPC).
//! - `modelgw data-plane`: the Azure OpenAI-compatible proxy apps call.
//! - `modelgw mock-azure`: a faithful mock of one Azure OpenAI region, for tests and the demo.
//! - `modelgw demo`: all of the above on one machine, ready to `curl`.
//! - `modelgw import`: discover Azure OpenAI deployments via the control plane and import them.
//!
//! Every flag has an environment-variable twin, as container platforms expect. Each process
//! prints one `modelgw <component> ready: key=value …` line on stdout once it listens; logs go
//! to stderr.

mod admin_server;
mod control_plane;
mod data_plane;
mod demo;
mod import;
mod log_line;
mod log_writer;
mod metrics_server;
mod mock_azure;
mod stdout;
mod telemetry;
#[cfg(test)]
mod test_output;

use clap::{Parser, Subcommand};
use telemetry::SpanExport;

/// jemalloc instead of glibc's malloc: the data plane allocates many small, short-lived buffers
/// per request (headers, body chunks, log lines); jemalloc takes 7 % fewer instructions per
/// request than glibc at the same idle RSS (mimalloc saved as much but started 14 MiB larger);
/// see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "modelgw",
    version,
    about = "Model Gateway: one Azure OpenAI URL in front of many deployments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: configuration store, admin API and snapshot distribution.
    ControlPlane(control_plane::Args),
    /// Run a data plane: the gateway that proxies Azure OpenAI traffic.
    DataPlane(data_plane::Args),
    /// Run a mock Azure OpenAI region (tests and demos only).
    MockAzure(mock_azure::Args),
    /// Run a complete local gateway: control plane on SQLite, a data plane, three mock regions.
    Demo(demo::Args),
    /// Discover Azure OpenAI deployments through the control plane and import them.
    Import(import::Args),
}

fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider (ring, not aws-lc): install it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            // Each guard lives until its process's work is done: dropping it exports the spans
            // still queued.
            Command::ControlPlane(args) => {
                let _telemetry =
                    telemetry::init("modelgw-control-plane", SpanExport::TracingSpans)?;
                control_plane::run(args, shutdown_signal()).await
            }
            Command::DataPlane(args) => {
                let telemetry = telemetry::init("modelgw-data-plane", SpanExport::RequestPathOnly)?;
                data_plane::run(args, telemetry.request_tracer(), shutdown_requests()).await
            }
            Command::MockAzure(args) => {
                let _telemetry = telemetry::init("modelgw-mock-azure", SpanExport::TracingSpans)?;
                mock_azure::run(args, shutdown_signal()).await
            }
            Command::Import(args) => import::run(args).await,
            Command::Demo(args) => {
                let telemetry = telemetry::init("modelgw-demo", SpanExport::TracingSpans)?;
                demo::run(args, telemetry.request_tracer(), shutdown_signal()).await
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM (what container platforms send before killing a replica).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received, draining");
}

/// Every SIGINT or SIGTERM, as one shutdown request each: the data plane drains on the first,
/// ends its drain period on the second and cuts in-flight requests on the third.
fn shutdown_requests() -> modelgw_data_plane::Shutdown {
    let (trigger, shutdown) = modelgw_data_plane::shutdown_channel();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let term_signal = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term_signal = std::future::pending::<()>();
            let signal = tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                () = term_signal => "SIGTERM",
            };
            let count = trigger.request();
            tracing::info!(signal, count, "shutdown signal received");
        }
    });
    shutdown
}
