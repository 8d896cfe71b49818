//! `edge-agent [--config PATH]`: runs the agent until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use edge_agent::{Agent, AgentConfig};
use tracing_subscriber::EnvFilter;

/// Lodestone edge agent: buffers sensor readings in an LMDB outbox and forwards them over MQTT.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; without it every key takes its default. Any key can be
    /// overridden by LODESTONE_AGENT__{SECTION}__{KEY}.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edge-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config: AgentConfig = lodestone_model::config::load(args.config.as_deref(), "LODESTONE_AGENT").context("invalid configuration")?;
    config.check().context("invalid configuration")?;
    let agent = Agent::start(config).await.context("cannot start the edge agent")?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
