//! `lodestone-sim`: seeded load generators for Lodestone. Prints one JSON summary line on
//! stdout (progress and logs go to stderr). Exit codes: 0 when every reading was acknowledged,
//! 1 when some were not (timeout or failed deliveries; the summary is still printed), 2 when the
//! run could not start or had to stop (bad arguments, a refused write, ...).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lodestone_model::ContentType;
use lodestone_simulators::agent::{run_agent, AgentRun, WriteApi};
use lodestone_simulators::kafka::{run_kafka, KafkaRun};
use lodestone_simulators::mqtt::{run_mqtt, MqttRun, PACKET_BYTES_MAX_DEFAULT};
use lodestone_simulators::wire::{random_boot_id, Destination};
use lodestone_simulators::{FleetSpec, Profile, SeriesKind, Summary};

#[derive(Parser)]
#[command(name = "lodestone-sim", version, about = "Seeded, reproducible load generators for Lodestone")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Give every envelope a fresh W3C traceparent, sampled for this share of them (0.01: 1%),
    /// as devices that trace do; 0: no traceparent.
    #[arg(long, global = true, default_value_t = 0.0)]
    traceparent_ratio: f64,
}

#[derive(Subcommand)]
enum Command {
    /// Devices with one MQTT connection each, publishing envelopes and awaiting the bridge's acks.
    Mqtt(MqttArgs),
    /// Runs a scenario (configs/scenarios/*.toml) against a running stack and measures throughput,
    /// publish-to-queryable latency and each service's CPU and memory: a live progress line, then
    /// a table, a JSON report, an SVG chart and `figure` lines.
    Load(LoadArgs),
    /// The same envelopes written straight to the Kafka ingest topic.
    Kafka(KafkaArgs),
    /// Sensors posting JSON records to an edge agent's POST /v1/write.
    Agent(AgentArgs),
    /// Sensors writing through Timestream's WriteRecords on a query service (SigV4-signed with
    /// the token of --token-file as AWS keys), at most --clients requests at once.
    Timestream(TimestreamArgs),
}

#[derive(Args)]
struct TimestreamArgs {
    /// The query service's base URL; give it once per service to spread the sensors over several.
    #[arg(long, default_values = ["https://127.0.0.1:8080"])]
    url: Vec<String>,
    #[arg(long, default_value_t = 10)]
    sensors: u32,
    #[arg(long, default_value_t = 100)]
    readings_per_sensor: u64,
    #[arg(long, default_value = "sensor-")]
    sensor_prefix: String,
    /// WriteRecords calls in flight at once.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// The region of the signatures.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    data: DataArgs,
}

/// What every subcommand shares: the data and its destination.
#[derive(Args)]
struct DataArgs {
    /// Seed of the generated values: the same seed gives the same readings.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Records per envelope (or per HTTP write).
    #[arg(long, default_value_t = 50)]
    batch: u32,
    /// Readings per second across all devices or sensors (token bucket); 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Readings per second of each device or sensor (0.1 = one every 10 s); 0 = unpaced. Both
    /// rates apply when both are given.
    #[arg(long, default_value_t = 0.0)]
    rate_per_device: f64,
    /// What each device or sensor measures.
    #[arg(long, value_enum, default_value_t = Profile::Walk)]
    profile: Profile,
    /// Destination database (3–256 of A-Z a-z 0-9 _ - .).
    #[arg(long, default_value = "sim")]
    database: String,
    #[arg(long, default_value = "readings")]
    table: String,
    /// Time between two readings of one device or sensor.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Time of each series' first reading, ns since the epoch [default: now minus readings × interval].
    #[arg(long)]
    start_ns: Option<i64>,
    /// Give up after this long; readings not yet acknowledged are reported and the exit code is 1.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Cbor,
    Json,
}

impl From<Format> for ContentType {
    fn from(format: Format) -> ContentType {
        match format {
            Format::Cbor => ContentType::Cbor,
            Format::Json => ContentType::Json,
        }
    }
}

#[derive(Args)]
struct MqttArgs {
    /// The MQTT broker (the broker-bridge's listener).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Simulated devices, each with its own MQTT connection.
    #[arg(long, default_value_t = 100)]
    devices: u32,
    #[arg(long, default_value_t = 1000)]
    readings_per_device: u64,
    #[arg(long, default_value = "sim-")]
    device_prefix: String,
    /// Envelope encoding.
    #[arg(long, value_enum, default_value_t = Format::Cbor)]
    format: Format,
    /// Envelopes a device may have beyond its latest ack.
    #[arg(long, default_value_t = 8)]
    inflight: u16,
    /// Largest MQTT packet to send; match the broker's bound (the bridge's `packet_bytes_max`).
    #[arg(long, default_value_t = PACKET_BYTES_MAX_DEFAULT)]
    packet_bytes_max: usize,
    /// Publish unacknowledged envelopes again after this long without an ack.
    #[arg(long, default_value_t = 10_000)]
    resend_after_ms: u64,
    /// MQTT keep-alive interval.
    #[arg(long, default_value_t = 30)]
    keep_alive_s: u64,
    /// New connections per second while the fleet comes up; 0 = all devices at once.
    #[arg(long, default_value_t = 0)]
    connect_rate: u32,
    /// Boot id of every device [default: 32 random hex digits, new each run].
    #[arg(long)]
    boot_id: Option<String>,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    data: DataArgs,
}

/// Devices' identities on MQTT.
#[derive(Args)]
struct IdentityArgs {
    /// A CA folder (ca.pem, ca.key, as lodestone-admin tls init makes it): each device gets its
    /// own certificate from it and connects over TLS. Without it devices connect in plain text
    /// (only to a bridge with mqtt.plaintext).
    #[arg(long, env = "LODESTONE_DEVICE_CA_DIR")]
    device_ca_dir: Option<std::path::PathBuf>,
}

impl IdentityArgs {
    fn identities(&self) -> Result<Option<lodestone_simulators::identity::DeviceIdentities>, lodestone_simulators::SimError> {
        self.device_ca_dir.as_deref().map(lodestone_simulators::identity::DeviceIdentities::open).transpose()
    }
}

#[derive(Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The ingest topic.
    #[arg(long, default_value = "lodestone.ingest")]
    topic: String,
    /// Simulated devices (one Kafka key each).
    #[arg(long, default_value_t = 10)]
    devices: u32,
    #[arg(long, default_value_t = 1000)]
    readings_per_device: u64,
    #[arg(long, default_value = "sim-")]
    device_prefix: String,
    /// Envelope encoding.
    #[arg(long, value_enum, default_value_t = Format::Cbor)]
    format: Format,
    /// Envelopes awaiting delivery at once, across all devices.
    #[arg(long, default_value_t = 1024)]
    inflight: usize,
    /// Extra librdkafka producer setting, KEY=VALUE (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    producer_config: Vec<(String, String)>,
    /// Boot id in every envelope [default: 32 random hex digits, new each run].
    #[arg(long)]
    boot_id: Option<String>,
    #[command(flatten)]
    data: DataArgs,
}

/// How to reach Lodestone's HTTP APIs.
#[derive(Args)]
struct AccessArgs {
    /// PEM CA certificate trusted for https:// URLs (make up: .stack/certs/ca.pem).
    #[arg(long, env = "LODESTONE_CA")]
    ca: Option<std::path::PathBuf>,
    /// A file holding the API token (ID.SECRET) to send as `Authorization: Bearer`.
    #[arg(long, env = "LODESTONE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
}

impl AccessArgs {
    fn access(&self) -> lodestone_simulators::access::HttpAccess {
        lodestone_simulators::access::HttpAccess { ca_path: self.ca.clone(), token_path: self.token_file.clone() }
    }
}

#[derive(Args)]
struct AgentArgs {
    /// An edge agent's base URL; give it once per agent to spread the sensors over several.
    #[arg(long, default_values = ["http://127.0.0.1:8181"])]
    url: Vec<String>,
    /// Simulated sensors, one `sensor_id` dimension value each.
    #[arg(long, default_value_t = 10)]
    sensors: u32,
    #[arg(long, default_value_t = 100)]
    readings_per_sensor: u64,
    #[arg(long, default_value = "sensor-")]
    sensor_prefix: String,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct LoadArgs {
    /// The scenario file.
    #[arg(long)]
    scenario: std::path::PathBuf,
    /// Kafka bootstrap servers (phases with `transport = "kafka"`, and probes).
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "lodestone.ingest")]
    topic: String,
    /// The broker-bridge's MQTT listener (phases with `transport = "mqtt"`).
    #[arg(long, default_value = "127.0.0.1")]
    mqtt_host: String,
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// An edge agent's base URL (phases with `transport = "agent"`); repeat it for several
    /// agents: the phase's sensors are spread over them.
    #[arg(long)]
    agent_url: Vec<String>,
    /// The query service, polled for probes and row counts.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    query_url: String,
    /// Where the JSON report goes.
    #[arg(long, default_value = "load-report.json")]
    report: std::path::PathBuf,
    /// Where the SVG chart goes.
    #[arg(long, default_value = "load-report.svg")]
    chart: std::path::PathBuf,
    /// Process names (as in /proc/PID/comm) whose CPU and memory are sampled; repeatable.
    #[arg(long = "watch", default_values = ["tansu", "broker-bridge", "ingest-service", "query-service", "edge-agent", "lodestone-sim"])]
    watch: Vec<String>,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    identity: IdentityArgs,
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let scenario = lodestone_simulators::load::Scenario::load(&args.scenario)?;
    let target = lodestone_simulators::load::Target {
        bootstrap: args.bootstrap,
        topic: args.topic,
        mqtt_host: args.mqtt_host,
        mqtt_port: args.mqtt_port,
        query_url: args.query_url,
        agent_urls: args.agent_url,
        watch: args.watch,
        access: args.access.access(),
        identities: args.identity.identities()?,
    };
    let report = lodestone_simulators::load::run_load(&scenario, &target).await?;
    print!("{}", report.table());
    std::fs::write(&args.report, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", args.report.display()))?;
    std::fs::write(&args.chart, report.svg()).with_context(|| format!("writing {}", args.chart.display()))?;
    for (name, value, unit) in report.figures() {
        println!("figure {name} {value:.1} {unit}");
    }
    eprintln!("report: {}, chart: {}", args.report.display(), args.chart.display());
    Ok(())
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

fn fleet(kind: SeriesKind, prefix: String, count: u32, readings: u64, data: &DataArgs, now_ns: i64) -> FleetSpec {
    FleetSpec {
        seed: data.seed,
        kind,
        id_prefix: prefix,
        series_count: count,
        readings_per_series: readings,
        batch_records_max: data.batch,
        start_ns: data.start_ns.unwrap_or_else(|| FleetSpec::default_start_ns(now_ns, readings, data.interval_ms)),
        interval_ms: data.interval_ms,
        profile: data.profile,
        series_rate_per_s: data.rate_per_device,
    }
}

fn boot_id(given: Option<String>) -> String {
    given.unwrap_or_else(|| random_boot_id(&mut rand::thread_rng()))
}

async fn run(command: Command, now_ns: i64) -> anyhow::Result<(Summary, &'static str, u64)> {
    match command {
        // Handled by `main` before: it prints a report, not a summary.
        Command::Load(_) => anyhow::bail!("`load` does not produce a summary"),
        Command::Mqtt(args) => {
            let run = MqttRun {
                identities: args.identity.identities()?,
                host: args.host,
                port: args.port,
                fleet: fleet(SeriesKind::Device, args.device_prefix, args.devices, args.readings_per_device, &args.data, now_ns),
                database: args.data.database.clone(),
                table: args.data.table.clone(),
                format: args.format.into(),
                boot_id: boot_id(args.boot_id),
                rate_per_s: args.data.rate,
                inflight_envelopes_max: args.inflight,
                packet_bytes_max: args.packet_bytes_max,
                resend_after: Duration::from_millis(args.resend_after_ms),
                keep_alive: Duration::from_secs(args.keep_alive_s),
                connect_rate_per_s: args.connect_rate,
                timeout: Duration::from_secs(args.data.timeout_s),
            };
            run.validate(now_ns)?;
            tracing::info!(devices = args.devices, boot_id = run.boot_id, broker = %format!("{}:{}", run.host, run.port), "mqtt run");
            let summary = run_mqtt(run).await.context("MQTT run")?;
            Ok((summary, "devices", args.data.timeout_s))
        }
        Command::Kafka(args) => {
            let run = KafkaRun {
                bootstrap: args.bootstrap,
                topic: args.topic,
                fleet: fleet(SeriesKind::Device, args.device_prefix, args.devices, args.readings_per_device, &args.data, now_ns),
                destination: Destination { database: args.data.database.clone(), table: args.data.table.clone() },
                format: args.format.into(),
                boot_id: boot_id(args.boot_id),
                rate_per_s: args.data.rate,
                inflight_envelopes_max: args.inflight,
                producer_config: args.producer_config,
                timeout: Duration::from_secs(args.data.timeout_s),
            };
            run.validate(now_ns)?;
            tracing::info!(devices = args.devices, boot_id = run.boot_id, topic = run.topic, "kafka run");
            let summary = run_kafka(run).await.context("Kafka run")?;
            Ok((summary, "devices", args.data.timeout_s))
        }
        Command::Agent(args) => {
            let run = AgentRun {
                urls: args.url,
                fleet: fleet(SeriesKind::Sensor, args.sensor_prefix, args.sensors, args.readings_per_sensor, &args.data, now_ns),
                database: args.data.database.clone(),
                table: args.data.table.clone(),
                rate_per_s: args.data.rate,
                timeout: Duration::from_secs(args.data.timeout_s),
                access: args.access.access(),
                api: WriteApi::EdgeAgent,
                clients: 0,
            };
            run.validate(now_ns)?;
            tracing::info!(sensors = args.sensors, urls = ?run.urls, "agent run");
            let summary = run_agent(run).await.context("edge-agent run")?;
            Ok((summary, "sensors", args.data.timeout_s))
        }
        Command::Timestream(args) => {
            let token = args.access.token_file.as_ref().context("--token-file (or LODESTONE_TOKEN_FILE) names the token that signs")?;
            let bearer = lodestone_kit::auth::read_bearer(token).with_context(|| format!("reading {}", token.display()))?;
            let (key, secret) = bearer.split_once('.').context("a token is ID.SECRET")?;
            let run = AgentRun {
                urls: args.url,
                fleet: fleet(SeriesKind::Sensor, args.sensor_prefix, args.sensors, args.readings_per_sensor, &args.data, now_ns),
                database: args.data.database.clone(),
                table: args.data.table.clone(),
                rate_per_s: args.data.rate,
                timeout: Duration::from_secs(args.data.timeout_s),
                access: args.access.access(),
                api: WriteApi::Timestream { key: key.to_string(), secret: secret.to_string(), region: args.region },
                clients: args.clients,
            };
            run.validate(now_ns)?;
            tracing::info!(sensors = args.sensors, clients = args.clients, urls = ?run.urls, "timestream run");
            let summary = run_agent(run).await.context("WriteRecords run")?;
            Ok((summary, "sensors", args.data.timeout_s))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    lodestone_kit::log::init("info");
    let cli = Cli::parse();
    lodestone_simulators::wire::set_traceparent_ratio(cli.traceparent_ratio);
    if let Command::Load(args) = cli.command {
        return match run_load(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(error),
        };
    }
    let now_ns = lodestone_kit::now_ns();
    if now_ns < 0 {
        return fail(anyhow::anyhow!("the system clock is before 1970"));
    }
    let (summary, series_noun, timeout_s) = match run(cli.command, now_ns).await {
        Ok(done) => done,
        Err(error) => return fail(error),
    };
    println!("{}", summary.to_json_line());
    if summary.unacked > 0 {
        eprintln!(
            "lodestone-sim: {} readings on {} {series_noun} were not acknowledged (delivery failed, or --timeout-s {timeout_s} elapsed)",
            summary.unacked, summary.unacked_series,
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Reports a run that could not start or finish; the whole cause chain, no backtrace.
fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("lodestone-sim: error: {error:#}");
    ExitCode::from(2)
}
