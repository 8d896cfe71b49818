use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use query_service::engine::Engine;
use query_service::memory::MemoryClient;
use query_service::{api, QueryConfig};

/// Lodestone's query service: SQL over REST.
#[derive(Parser)]
struct Args {
    /// TOML configuration file; every key can be overridden with LODESTONE_QUERY__SECTION__KEY.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config: QueryConfig = lodestone_model::config::load(args.config.as_deref(), "LODESTONE_QUERY")?;
    let store = config.store.open().with_context(|| format!("opening store {}", config.store.describe()))?;
    let engine = Arc::new(Engine::new(store, config.limits.clone()).with_memory(MemoryClient::new(&config.memory)));
    let listener = tokio::net::TcpListener::bind(&config.http.listen).await.with_context(|| format!("binding {}", config.http.listen))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, api::router(engine)).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
