use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use broker_bridge::config::ENV_PREFIX;
use broker_bridge::{Bridge, BridgeConfig};
use clap::Parser;

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
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("broker-bridge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config: BridgeConfig = lodestone_kit::config::load(args.config.as_deref(), ENV_PREFIX)?;
    let _telemetry = lodestone_kit::telemetry::init("broker-bridge", DEFAULT_LOG_FILTER, &config.telemetry);
    // One socket per device (over TLS the front links sessions to the broker in-process), and
    // room for Kafka, HTTP and files besides.
    let wanted = config.mqtt.connections_max as u64 + 1024;
    if let Err(error) = lodestone_kit::fdlimit::raise_open_files(wanted) {
        tracing::warn!(%error, devices_max = error.hard.saturating_sub(1024), "fewer devices than mqtt.connections_max can connect");
    }
    let bridge = Bridge::start(config).await.context("starting the bridge")?;
    bridge.run_until(lodestone_kit::shutdown::signal()).await.context("bridge stopped")
}
