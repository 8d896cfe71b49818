//! The HTTP listener every service serves its axum router through, so that what every listener
//! needs (TLS, request bounds) is added here once; authentication is [`crate::auth::require_token`]
//! around the router. With the `client` feature, [`client`] builds the HTTP client services and
//! tools call each other with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;

use crate::shutdown::Shutdown;
use crate::auth::AuthConfig;
use crate::tls::{ServerTls, TlsConfig};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen}: {source}")]
pub struct BindError {
    pub listen: String,
    pub source: std::io::Error,
}

/// Why a service's listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokenFileError),
}

/// Serves a service's `router` as its `[tls]` and `[auth]` say: TLS (or plain text, said
/// explicitly), and a token checked on every path but `/health` and `/ready`
/// ([`crate::auth::require_token`]). Every service's listener starts here.
pub async fn serve_service(listen: &str, router: axum::Router, tls: &TlsConfig, auth: &AuthConfig, shutdown: Shutdown) -> Result<Server, ServeError> {
    serve_service_with_public(listen, router, axum::Router::new(), tls, auth, shutdown).await
}

/// [`serve_service`] with `public` routes besides, served without a token: static assets that
/// hold no data (the query service's console page, which then asks for a token itself).
pub async fn serve_service_with_public(
    listen: &str,
    router: axum::Router,
    public: axum::Router,
    tls: &TlsConfig,
    auth: &AuthConfig,
    shutdown: Shutdown,
) -> Result<Server, ServeError> {
    let server_tls = tls.server()?;
    let authenticator = Arc::new(auth.authenticator()?);
    Ok(serve(listen, public.merge(crate::auth::require_token(router, authenticator)), &server_tls, shutdown).await?)
}

/// A running HTTP server.
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Binds `listen` (`host:port`; port 0 picks a free one) and serves `router` until `shutdown`
/// fires, then stops accepting and finishes the requests in flight. Returns once listening; the
/// log line `listening on http(s)://ADDR` has been written.
///
/// With [`ServerTls::Rustls`], each connection's handshake runs in a task of its own under the
/// handshake timeout, at most [`HANDSHAKES_MAX`] at once (connections beyond are closed at
/// once): a client that connects and stalls holds up no one, and a flood of them is bounded.
pub async fn serve(listen: &str, router: axum::Router, tls: &ServerTls, mut shutdown: Shutdown) -> Result<Server, BindError> {
    let router = bound_in_flight(router, REQUESTS_IN_FLIGHT_MAX);
    let bind_error = |source| BindError { listen: listen.to_string(), source };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    tracing::info!("listening on {}://{addr}", tls.scheme());
    let stopped = async move { shutdown.cancelled().await };
    let task = match tls {
        ServerTls::Plain => tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
                let _ = stream.set_nodelay(true);
            });
            report(axum::serve(listener, router).with_graceful_shutdown(stopped).await);
        }),
        ServerTls::Rustls { config, handshake_timeout } => {
            let handshakes = TlsListener::start(listener, tokio_rustls::TlsAcceptor::from(config.clone()), *handshake_timeout, addr);
            tokio::spawn(async move { report(axum::serve(handshakes, router).with_graceful_shutdown(stopped).await) })
        }
    };
    Ok(Server { addr, task })
}

fn report(served: std::io::Result<()>) {
    if let Err(error) = served {
        tracing::error!(%error, "HTTP server failed");
    }
}

/// Requests one listener handles at once, `/health` and `/ready` aside (they stay answerable
/// under load); one more is answered at once with 503 `overloaded`. A service bounds the memory
/// of each request (body size, query memory), so this bounds the memory of all of them.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// `router` answering 503 `overloaded` to a request that arrives while `max` are in flight.
pub fn bound_in_flight(router: axum::Router, max: usize) -> axum::Router {
    let permits = Arc::new(Semaphore::new(max));
    router.layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
        let permits = permits.clone();
        async move {
            if matches!(request.uri().path(), "/health" | "/ready") {
                return next.run(request).await;
            }
            let Ok(_permit) = permits.try_acquire_owned() else {
                let message = format!("{max} requests are in flight on this service; retry later");
                let body = axum::Json(serde_json::json!({"error": {"code": "overloaded", "message": message}}));
                return axum::response::IntoResponse::into_response((axum::http::StatusCode::SERVICE_UNAVAILABLE, body));
            };
            next.run(request).await
        }
    }))
}

/// `router` holding at most `budget` bytes of request bodies at once: a request claims its
/// `Content-Length` (or `body_bytes_max`, the most one body may be, when it is sent in chunks)
/// before its body is read, until it is answered; one whose claim does not fit is answered at
/// once with 503 `overloaded`. With the in-flight bound alone, a service taking 16 MiB bodies
/// could hold 256 of them.
pub fn bound_body_bytes(router: axum::Router, body_bytes_max: usize, budget: usize) -> axum::Router {
    let budget = budget.min(u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(budget));
    router.layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
        let permits = permits.clone();
        async move {
            let headers = request.headers();
            let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            let claim = match declared {
                Some(bytes) => bytes.min(body_bytes_max),
                None if headers.contains_key(axum::http::header::TRANSFER_ENCODING) => body_bytes_max,
                None => 0,
            };
            if claim == 0 {
                return next.run(request).await;
            }
            let Ok(_claimed) = permits.try_acquire_many_owned(claim.min(budget) as u32) else {
                let message = format!("request bodies of {budget} bytes in all are being handled on this service; retry later");
                let body = axum::Json(serde_json::json!({"error": {"code": "overloaded", "message": message}}));
                return axum::response::IntoResponse::into_response((axum::http::StatusCode::SERVICE_UNAVAILABLE, body));
            };
            next.run(request).await
        }
    }))
}

/// TLS handshakes under way at once on one listener; a connection beyond is closed at once.
pub const HANDSHAKES_MAX: usize = 1024;

/// Connections whose TLS handshake has finished, handed to axum one by one. The handshakes run
/// in tasks of their own (see [`serve`]); the accept loop stops when axum drops the listener.
struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn start(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, timeout: Duration, addr: SocketAddr) -> TlsListener {
        let (handshaken, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            let pending = Arc::new(Semaphore::new(HANDSHAKES_MAX));
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors, say: wait a moment rather than spin.
                            tracing::warn!(%error, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = handshaken.closed() => return,
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "{HANDSHAKES_MAX} TLS handshakes under way; connection closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, handshaken) = (acceptor.clone(), handshaken.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = handshaken.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, ?timeout, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { handshaken: receiver, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept loop ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
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

/// An HTTP client for calls between Lodestone services and from its tools: it trusts exactly
/// the CAs of `tls` (built by [`crate::tls::client_config`]), or speaks only plain HTTP when
/// `None`. Add timeouts on the builder.
#[cfg(feature = "client")]
pub fn client(tls: Option<rustls::ClientConfig>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().tls_built_in_root_certs(false);
    match tls {
        Some(config) => builder.use_preconfigured_tls(config),
        None => builder,
    }
}

/// [`client`] that sends `Authorization: Bearer {bearer}` with every request (marked sensitive,
/// so it never shows in a debug print).
#[cfg(feature = "client")]
pub fn client_with_token(tls: Option<rustls::ClientConfig>, bearer: &str) -> reqwest::ClientBuilder {
    let mut authorization = reqwest::header::HeaderValue::from_str(&format!("Bearer {bearer}")).unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    authorization.set_sensitive(true);
    client(tls).default_headers([(reqwest::header::AUTHORIZATION, authorization)].into_iter().collect())
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
        let mut server = serve("127.0.0.1:0", router, &ServerTls::Plain, shutdown).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("ok"), "{response}");
        trigger.trigger();
        server.stopped().await.unwrap();
        assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err());
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// A flood of slow requests gets 503 `overloaded` past the bound, while `/health` still
    /// answers and the requests in flight finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_past_the_in_flight_bound_are_answered_503_and_health_still_answers() {
        let release = Arc::new(tokio::sync::Notify::new());
        let entered = Arc::new(Semaphore::new(0));
        let (hold, arrived) = (release.clone(), entered.clone());
        let router = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(move || {
                    let (hold, arrived) = (hold.clone(), arrived.clone());
                    async move {
                        // Created before it is announced: it then receives notify_waiters.
                        let released = hold.notified();
                        arrived.add_permits(1);
                        released.await;
                        "done"
                    }
                }),
            );
        let (_trigger, shutdown) = shutdown_channel();
        let server = serve("127.0.0.1:0", bound_in_flight(router, 2), &ServerTls::Plain, shutdown).await.unwrap();
        let addr = server.addr();
        let slow: Vec<_> = (0..2).map(|_| tokio::spawn(get(addr, "/slow"))).collect();
        let _both_in = entered.acquire_many(2).await.unwrap();
        let refused = get(addr, "/slow").await;
        assert!(refused.starts_with("HTTP/1.1 503") && refused.contains(r#""code":"overloaded""#), "{refused}");
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        release.notify_waiters();
        for request in slow {
            assert!(request.await.unwrap().ends_with("done"));
        }
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
    }

    /// Bodies held at once are bounded in bytes: with 100 bytes of budget and a request of 80
    /// bytes held, one of 40 is answered 503 while one of 10 goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_past_the_byte_budget_are_answered_503() {
        let release = Arc::new(tokio::sync::Notify::new());
        let entered = Arc::new(Semaphore::new(0));
        let (hold, arrived) = (release.clone(), entered.clone());
        let router = axum::Router::new()
            .route(
                "/slow",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let (hold, arrived) = (hold.clone(), arrived.clone());
                    async move {
                        let released = hold.notified();
                        arrived.add_permits(1);
                        released.await;
                        format!("held {}", body.len())
                    }
                }),
            )
            .route("/fast", axum::routing::post(|body: axum::body::Bytes| async move { format!("took {}", body.len()) }));
        let (_trigger, shutdown) = shutdown_channel();
        let server = serve("127.0.0.1:0", bound_body_bytes(router, 80, 100), &ServerTls::Plain, shutdown).await.unwrap();
        let addr = server.addr();
        let post = |path: &'static str, bytes: usize| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {bytes}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&vec![b'x'; bytes]).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let held = tokio::spawn(post("/slow", 80));
        let _in = entered.acquire().await.unwrap();
        let refused = post("/fast", 40).await;
        assert!(refused.starts_with("HTTP/1.1 503") && refused.contains(r#""code":"overloaded""#), "{refused}");
        assert!(post("/fast", 10).await.ends_with("took 10"));
        release.notify_waiters();
        assert!(held.await.unwrap().ends_with("held 80"));
        assert!(post("/fast", 40).await.ends_with("took 40"), "the budget is given back");
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let (_trigger, shutdown) = shutdown_channel();
        let error = serve(&listen, axum::Router::new(), &ServerTls::Plain, shutdown).await.err().unwrap();
        assert!(error.to_string().starts_with(&format!("cannot listen on {listen}")), "{error}");
    }

    /// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
    fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, ServerTls) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let certificate = params.signed_by(&key, &ca).unwrap();
        let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&ca_path, ca.pem()).unwrap();
        std::fs::write(&cert_path, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let config = crate::tls::server_config(&cert_path, &key_path).unwrap();
        (ca_path, ServerTls::Rustls { config: std::sync::Arc::new(config), handshake_timeout: Duration::from_millis(500) })
    }

    /// One HTTPS GET of `/health` through a client trusting `ca_path`; the body.
    async fn get_health(ca_path: &std::path::Path, addr: SocketAddr) -> std::io::Result<String> {
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(crate::tls::client_config(ca_path).unwrap()));
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, stream).await?;
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut response = Vec::new();
        // A server may close a TLS stream without close_notify after a `Connection: close`.
        let _ = tls.read_to_end(&mut response).await;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    #[tokio::test]
    async fn tls_serves_while_stalled_handshakes_wait_and_plain_text_gets_no_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_path, tls) = certificates(dir.path());
        let (trigger, shutdown) = shutdown_channel();
        let router = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let mut server = serve("127.0.0.1:0", router, &tls, shutdown).await.unwrap();
        // 50 clients connect and never say a word: a real one is still served.
        let mut stalled = Vec::new();
        for _ in 0..50 {
            stalled.push(tokio::net::TcpStream::connect(server.addr()).await.unwrap());
        }
        let answer = get_health(&ca_path, server.addr()).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
        // The stalled ones are closed once their handshake timeout passes (500 ms here).
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(10), stalled[0].read(&mut byte)).await.expect("closed within 10 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "a stalled connection got data: {closed:?}");
        // Plain HTTP to the TLS port: no HTTP answer.
        let mut plain = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        plain.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut response)).await.expect("closed");
        assert!(!String::from_utf8_lossy(&response).contains("HTTP/1.1"), "plain text got an HTTP answer");
        // A client trusting another CA refuses the server.
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _) = certificates(other.path());
        assert!(get_health(&other_ca, server.addr()).await.is_err());
        trigger.trigger();
        server.stopped().await.unwrap();
    }
}
