//! `query-service [--config PATH]`: SQL over REST until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use lodestone_kit::Shutdown;
use query_service::engine::Engine;
use query_service::memory::MemoryClient;
use query_service::alerts::{self, Evaluator};
use query_service::console;
use query_service::memory::service_client;
use query_service::pipeline::{Kind, Pipeline, Target};
use query_service::timestream_api::{self, write::RecordWriter, TimestreamApi};
use query_service::{api, QueryConfig};

/// Lodestone's query service: SQL over REST.
#[derive(Parser)]
struct Args {
    /// TOML configuration file; every key can be overridden with LODESTONE_QUERY__SECTION__KEY.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Stack of each runtime thread. Planning walks syntax trees and plans recursively; their depth is
/// bounded by `limits.sql_operators_max` ([`query_service::complexity`]), and DataFusion grows its
/// own recursion onto the heap (`recursive_protection`), but the rewrites before it use the thread's stack.
const THREAD_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    // Two runtimes: one answers HTTP (small, never busy for long), the other executes plans, one
    // thread per core as DataFusion partitions them. A query busy in long batches on every core
    // leaves /health, cancels and new requests their own threads, which the OS schedules beside it.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = |name: &str, threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .thread_stack_size(THREAD_STACK_BYTES)
            .build()
    };
    let executor = runtime("query-exec", cores)?;
    let answered = runtime("query-http", cores)?.block_on(serve(executor.handle().clone()));
    executor.shutdown_background();
    answered
}

async fn serve(executor: tokio::runtime::Handle) -> anyhow::Result<()> {
    let args = Args::parse();
    let config: QueryConfig = lodestone_kit::config::load(args.config.as_deref(), "LODESTONE_QUERY")?;
    let _telemetry = lodestone_kit::telemetry::init("query", "info", &config.telemetry);
    let store = config.store.open().with_context(|| format!("opening store {}", config.store.describe()))?;
    let memory = MemoryClient::new(&config.memory, &config.tls).context("setting up the calls to the ingest workers' memory")?;
    let writer = match config.kafka.bootstrap_servers.is_empty() {
        true => None,
        false => {
            let timeout = std::time::Duration::from_millis(config.timestream.write_timeout_ms);
            Some(RecordWriter::new(&config.kafka, memory.clone(), timeout).context("creating the Kafka producer of WriteRecords")?)
        }
    };
    let engine = Arc::new(Engine::new(store, config.limits.clone()).with_memory(memory).with_executor(executor));
    let timestream = Arc::new(TimestreamApi::new(engine.clone(), writer, &config));
    let exported = engine.clone();
    lodestone_kit::telemetry::export_metrics(move || exported.metrics().render(exported.running()));
    let shutdown = Shutdown::on_signal();
    // The other services' /health and /metrics for the console, and the alert webhooks: over
    // HTTPS trusting [tls] ca_path, with the service token.
    let calls = service_client(&config.memory, &config.tls, !config.tls.ca_path.is_empty()).context("setting up the calls to the other services")?;
    let pipeline = Pipeline::new(pipeline_targets(&config), calls.clone());
    tokio::spawn(pipeline.clone().run(shutdown.clone()));
    if config.console.alerts {
        tokio::spawn(Evaluator::new(engine.clone(), calls, config.console_url()).run(shutdown.clone()));
    }
    let router = api::router(engine.clone())
        .merge(timestream_api::router(timestream))
        .merge(alerts::router(engine))
        .merge(pipeline_router(pipeline));
    let mut shutdown = shutdown;
    let mut server = lodestone_kit::http::serve_service_with_public(&config.http.listen, router, console::router(), &config.tls, &config.auth, shutdown.clone()).await?;
    shutdown.cancelled().await;
    // The service keeps no state: queries still running at the deadline are simply cut off.
    if tokio::time::timeout(config.shutdown.timeout(), server.stopped()).await.is_err() {
        tracing::warn!(timeout_ms = config.shutdown.timeout_ms, "queries still running at the shutdown deadline are cut off");
        server.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The services the console's pipeline page shows.
fn pipeline_targets(config: &QueryConfig) -> Vec<Target> {
    let named = |kind: Kind, prefix: &str, urls: &[String]| -> Vec<Target> {
        urls.iter().enumerate().map(|(i, url)| Target { kind, name: format!("{prefix}-{i}"), url: url.clone() }).collect()
    };
    let mut targets = named(Kind::BrokerBridge, "broker-bridge", &config.console.bridges);
    targets.extend(named(Kind::IngestService, "ingest", &config.memory.workers));
    targets.extend(named(Kind::EdgeAgent, "edge-agent", &config.console.agents));
    targets
}

/// `GET /v1/pipeline` (scope `metrics`).
fn pipeline_router(pipeline: Arc<Pipeline>) -> axum::Router {
    let route = axum::Router::new().route("/v1/pipeline", axum::routing::get(move || {
        let pipeline = pipeline.clone();
        async move { axum::Json(pipeline.figures()) }
    }));
    lodestone_kit::auth::with_scope(route, lodestone_kit::auth::Scope::Metrics)
}
