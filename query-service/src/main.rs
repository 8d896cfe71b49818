//! `query-service [--config PATH]`: SQL over REST until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use lodestone_kit::Shutdown;
use query_service::engine::Engine;
use query_service::memory::MemoryClient;
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
    lodestone_kit::log::init("info");
    let args = Args::parse();
    let config: QueryConfig = lodestone_kit::config::load(args.config.as_deref(), "LODESTONE_QUERY")?;
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
    let router = api::router(engine).merge(timestream_api::router(timestream));
    let mut shutdown = Shutdown::on_signal();
    let mut server = lodestone_kit::http::serve_service(&config.http.listen, router, &config.tls, &config.auth, shutdown.clone()).await?;
    shutdown.cancelled().await;
    // The service keeps no state: queries still running at the deadline are simply cut off.
    if tokio::time::timeout(config.shutdown.timeout(), server.stopped()).await.is_err() {
        tracing::warn!(timeout_ms = config.shutdown.timeout_ms, "queries still running at the shutdown deadline are cut off");
        server.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
