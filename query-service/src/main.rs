use std::path::PathBuf;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use query_service::engine::Engine;
use query_service::memory::MemoryClient;
use query_service::{api, QueryConfig};

/// How long queries in flight at SIGINT/SIGTERM may still run before the process exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    let (signalled_tx, signalled) = tokio::sync::oneshot::channel();
    let server = axum::serve(listener, api::router(engine)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(());
    });
    // The service keeps no state: queries still running at the deadline are simply cut off.
    let deadline = async move {
        if signalled.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server.into_future() => served?,
        () = deadline => tracing::warn!(grace_ms = SHUTDOWN_GRACE.as_millis() as u64, "queries still running at the shutdown deadline are cut off"),
    }
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
