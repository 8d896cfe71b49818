//! `edge-agent [--config PATH]`: runs the agent until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use edge_agent::{Agent, AgentConfig};

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
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edge-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config: AgentConfig = lodestone_kit::config::load(args.config.as_deref(), "LODESTONE_AGENT").context("invalid configuration")?;
    let _telemetry = lodestone_kit::telemetry::init("edge-agent", "info", &config.telemetry);
    let agent = Agent::start(config).await.context("cannot start the edge agent")?;
    lodestone_kit::shutdown::signal().await;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(())
}
