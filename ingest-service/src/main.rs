//! `ingest-service [--config PATH]`: one ingest worker, until SIGINT or SIGTERM. Only wiring: the
//! loop and its order (persist → dead letters delivered → commit) are in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ingest_service::offsets::Rebalances;
use ingest_service::receipts::Receipts;
use ingest_service::{http, kafka, maintenance, Counters, IngestConfig, Ingestor, Worker};
use lodestone_kit::Shutdown;

/// Lodestone's ingest worker: consumes the ingest topic into the store.
#[derive(Parser)]
struct Args {
    /// TOML configuration file; every key can be overridden with LODESTONE_INGEST__SECTION__KEY.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// How long the runtime waits, after the worker stopped, for blocking calls still in librdkafka
/// (a commit to a broker that does not answer): what they did not commit is replayed anyway.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ingest-service: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ingest-service: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config: IngestConfig = lodestone_kit::config::load(args.config.as_deref(), "LODESTONE_INGEST")?;
    let _telemetry = lodestone_kit::telemetry::init("ingest", "info", &config.telemetry);
    let shutdown = Shutdown::on_signal();
    let counters = Arc::new(Counters::default());
    let exported = counters.clone();
    lodestone_kit::telemetry::export_metrics(move || exported.render());

    let store = config.store.open().with_context(|| format!("opening store {}", config.store.describe()))?;
    let maintenance = config
        .maintenance
        .enabled
        .then(|| tokio::spawn(maintenance::run(store.clone(), config.maintenance.clone(), counters.clone(), shutdown.clone())));
    let ingestor = Ingestor::open(store, config.persist.hot_rows_max, config.tables.clone(), counters.clone()).await?;
    let receipts = Arc::new(Receipts::default());
    let router = http::router(counters.clone(), ingestor.memory(), receipts.clone());
    let http = lodestone_kit::http::serve_service(&config.http.listen, router, &config.tls, &config.auth, shutdown.clone()).await?;

    let rebalances = Rebalances::default();
    let consumer = kafka::consumer(&config.kafka, rebalances.clone(), counters.clone(), receipts.clone()).context("creating the Kafka consumer")?;
    let log = kafka::KafkaLog::new(&config.kafka, consumer.clone()).context("creating the dead-letter producer")?;
    tracing::info!(topic = %config.kafka.ingest_topic, group = %config.kafka.group_id, instance = %config.kafka.instance_id, "consuming");
    let mut worker = Worker::new(ingestor, log, rebalances, config.kafka.dead_letter_topic.clone(), config.persist.hot_rows_max, counters).with_receipts(receipts);
    let result = kafka::run(&mut worker, &consumer, &config.persist, shutdown.clone(), config.shutdown.timeout()).await;
    // librdkafka's close can block while a broker is unreachable; everything acknowledged is
    // committed (or will be replayed), so the clients are closed on a thread nobody waits for.
    std::thread::spawn(move || drop((worker, consumer)));

    let mut tasks = vec![http.into_task()];
    tasks.extend(maintenance);
    if let Err(error) = &result {
        // The HTTP server and maintenance stop on the signal; a failed loop stops them itself.
        tracing::error!(%error, "the worker stopped; everything after the last commit is replayed from Kafka");
        tasks.iter().for_each(|task| task.abort());
    }
    let _ = tokio::time::timeout(config.shutdown.timeout(), futures::future::join_all(tasks)).await;
    tracing::info!("stopped");
    Ok(result?)
}
