//! The HTTP listener every service serves its axum router through, so that what every listener
//! needs (TLS, authentication, request bounds) is added here once.

use std::net::SocketAddr;

use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on http://{listen}: {source}")]
pub struct BindError {
    pub listen: String,
    pub source: std::io::Error,
}

/// A running HTTP server.
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Binds `listen` (`host:port`; port 0 picks a free one) and serves `router` until `shutdown`
/// fires, then stops accepting and finishes the requests in flight. Returns once listening; the
/// log line `listening on http://ADDR` has been written.
pub async fn serve(listen: &str, router: axum::Router, mut shutdown: Shutdown) -> Result<Server, BindError> {
    let bind_error = |source| BindError { listen: listen.to_string(), source };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    tracing::info!("listening on http://{addr}");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    });
    Ok(Server { addr, task })
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves when the server has stopped: after the shutdown signal, once the requests in
    /// flight are answered. Bound it with the service's shutdown timeout.
    pub fn stopped(&mut self) -> &mut JoinHandle<()> {
        &mut self.task
    }

    /// The server's task, for callers that wait for several tasks alike.
    pub fn into_task(self) -> JoinHandle<()> {
        self.task
    }

    /// Stops at once, dropping requests in flight (after the shutdown deadline).
    pub fn abort(&self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::shutdown_channel;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_until_the_signal() {
        let (trigger, shutdown) = shutdown_channel();
        let router = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let mut server = serve("127.0.0.1:0", router, shutdown).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("ok"), "{response}");
        trigger.trigger();
        server.stopped().await.unwrap();
        assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err());
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let (_trigger, shutdown) = shutdown_channel();
        let error = serve(&listen, axum::Router::new(), shutdown).await.err().unwrap();
        assert!(error.to_string().starts_with(&format!("cannot listen on http://{listen}")), "{error}");
    }
}
