use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use broker_bridge::config::ENV_PREFIX;
use broker_bridge::{Bridge, BridgeConfig};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// rumqttd logs every ordinary client disconnect as an error (`rumqttd::server::broker`), and a
/// skipped segment without naming the filter (`rumqttd::segments`); its router still warns with
/// the filter name when a reader falls behind a log (`Read cursor start jumped ... on FILTER`).
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttd::server::broker=off,rumqttd::segments=error";

/// Lodestone's MQTT broker and Kafka bridge.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration (see configs/broker-bridge.example.toml); every key can also be set with
    /// LODESTONE_BRIDGE__{SECTION}__{KEY}.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stdout().is_terminal()).init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("broker-bridge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config: BridgeConfig = lodestone_model::config::load(args.config.as_deref(), ENV_PREFIX)?;
    let bridge = Bridge::start(config).await.context("starting the bridge")?;
    bridge.run_until(shutdown_signal()).await.context("bridge stopped")
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
