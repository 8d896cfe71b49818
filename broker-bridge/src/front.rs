//! The MQTT front: devices connect here over TLS with a client certificate, and only what their
//! [`Gate`] allows reaches the embedded broker, which then has no listener of its own.
//!
//! rumqttd 0.20 cannot do this itself: its TLS handshake runs inline in its accept loop with no
//! timeout (one silent client blocks every new connection), it trusts only the first CA of its
//! file, reads no CRL, takes the identity only from the subject's O field, and has no topic ACL.
//! So the front:
//! - accepts TCP, and runs each TLS handshake in its own task under `handshake_timeout`, at most
//!   [`HANDSHAKES_MAX`] at once;
//! - verifies the client certificate against the device CA and the CRLs (rustls/webpki: expired,
//!   foreign and revoked certificates fail the handshake);
//! - takes the device id from the certificate ([`device_identity`]: the SAN URI
//!   `urn:lodestone:device:{id}`, else the subject's CN);
//! - serves the MQTT session itself ([`crate::session`]: 3.1.1 and 5 on one port, by the CONNECT's
//!   protocol level), checking every client packet with the [`Gate`] and handing it to rumqttd's
//!   router over an in-process link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;


use crate::session::{self, Ending, SessionSettings};
use crate::service::Shared;

/// TLS handshakes under way at once; a connection beyond is closed at once.
pub const HANDSHAKES_MAX: usize = 1024;
/// The SAN URI prefix that carries a device's id.
pub const DEVICE_URI_PREFIX: &str = "urn:lodestone:device:";

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("cannot read {what} {path}: {detail}")]
    Read { what: &'static str, path: String, detail: String },
    #[error("MQTT TLS set-up: {0}")]
    Rustls(String),
    #[error("MQTT listener on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// The files the front's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub device_ca: std::path::PathBuf,
    pub crl: Option<std::path::PathBuf>,
    /// Whether a client may shake hands without a certificate (to log in with a device
    /// password in its CONNECT).
    pub certificate_optional: bool,
}

/// The front's TLS configuration, made again when one of its files changes (looked at at most
/// once a second, as connections arrive): a revoked device is refused, and a renewed
/// certificate served, without a restart. A change that does not load keeps the configuration
/// before it, with a warning.
pub struct FrontTls {
    files: TlsFiles,
    current: std::sync::RwLock<(Arc<rustls::ServerConfig>, Vec<Option<std::time::SystemTime>>)>,
    checked: std::sync::Mutex<std::time::Instant>,
}

impl FrontTls {
    pub fn load(files: TlsFiles) -> Result<FrontTls, FrontError> {
        let config = server_config(&files)?;
        let stamps = stamps(&files);
        Ok(FrontTls { files, current: std::sync::RwLock::new((Arc::new(config), stamps)), checked: std::sync::Mutex::new(std::time::Instant::now()) })
    }

    /// The configuration for the next handshake.
    fn config(&self) -> Arc<rustls::ServerConfig> {
        let due = {
            let mut checked = self.checked.lock().expect("front TLS lock");
            let due = checked.elapsed() >= Duration::from_secs(1);
            if due {
                *checked = std::time::Instant::now();
            }
            due
        };
        if due {
            let now = stamps(&self.files);
            let changed = self.current.read().expect("front TLS lock").1 != now;
            if changed {
                match server_config(&self.files) {
                    Ok(config) => {
                        tracing::info!("MQTT TLS files changed: certificate, CA and revocation list read again");
                        *self.current.write().expect("front TLS lock") = (Arc::new(config), now);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "MQTT TLS files changed but do not load; keeping the previous ones");
                        self.current.write().expect("front TLS lock").1 = now;
                    }
                }
            }
        }
        self.current.read().expect("front TLS lock").0.clone()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<std::time::SystemTime>> {
    [Some(&files.cert), Some(&files.key), Some(&files.device_ca), files.crl.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

/// What the front needs besides its listener.
pub struct FrontSettings {
    pub tls: FrontTls,
    pub handshake_timeout: Duration,
    pub session: SessionSettings,
    /// Where the front's counters go.
    pub shared: Arc<Shared>,
}

/// A running front.
pub struct Front {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Front {
    /// Stops accepting; sessions already served run until they end.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// The server configuration of the front: the bridge's certificate (`cert`, `key`), client
/// certificates verified against `device_ca` and the CRLs in `crl` (none when `None`), and
/// required unless `certificate_optional`.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, FrontError> {
    let (cert_path, key_path, device_ca_path, crl_path) = (files.cert.as_path(), files.key.as_path(), files.device_ca.as_path(), files.crl.as_deref());
    let chain = lodestone_kit::tls::certificates(cert_path).map_err(|e| FrontError::Rustls(e.to_string()))?;
    let key = lodestone_kit::tls::private_key(key_path).map_err(|e| FrontError::Rustls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in lodestone_kit::tls::certificates(device_ca_path).map_err(|e| FrontError::Rustls(e.to_string()))? {
        roots.add(ca).map_err(|e| FrontError::Rustls(format!("{}: {e}", device_ca_path.display())))?;
    }
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), lodestone_kit::tls::provider());
    if let Some(path) = crl_path {
        let read = |detail: String| FrontError::Read { what: "CRL", path: path.display().to_string(), detail };
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(path).map_err(|e| read(e.to_string()))?.collect::<Result<_, _>>().map_err(|e| read(e.to_string()))?;
        verifier = verifier.with_crls(crls);
    }
    if files.certificate_optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| FrontError::Rustls(e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(lodestone_kit::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FrontError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| FrontError::Rustls(e.to_string()))
}

/// The device id a verified certificate proves: its SAN URI `urn:lodestone:device:{id}`, else its
/// subject's common name; `None` when it has neither.
pub fn device_identity(certificate: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(certificate.as_ref()).ok()?;
    if let Ok(Some(names)) = parsed.subject_alternative_name() {
        for name in &names.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(DEVICE_URI_PREFIX).filter(|id| !id.is_empty()) {
                    return Some(id.to_string());
                }
            }
        }
    }
    let common_name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    (!common_name.is_empty()).then(|| common_name.to_string())
}

/// Binds `listen` and serves devices until [`Front::stop`].
pub async fn start(listen: SocketAddr, settings: FrontSettings) -> Result<Front, FrontError> {
    let listener = TcpListener::bind(listen).await.map_err(|source| FrontError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| FrontError::Listen { addr: listen, source })?;
    let settings = Arc::new(settings);
    let task = tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(HANDSHAKES_MAX));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an MQTT connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "{HANDSHAKES_MAX} MQTT TLS handshakes under way; connection closed");
                settings.shared.metrics.mqtt_refused("handshakes_max");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(settings.tls.config());
            let settings = settings.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream)).await;
                drop(permit);
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "MQTT TLS handshake refused");
                        settings.shared.metrics.mqtt_refused("handshake");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "MQTT TLS handshake timed out");
                        settings.shared.metrics.mqtt_refused("handshake_timeout");
                        return;
                    }
                };
                // Without a certificate (allowed only with device passwords) the CONNECT names the device.
                let certified = match tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
                    None => None,
                    Some(certificate) => match device_identity(certificate) {
                        Some(device_id) => Some(device_id),
                        None => {
                            tracing::info!(%peer, "a client certificate names no device (no SAN URI urn:lodestone:device:ID, no CN)");
                            settings.shared.metrics.mqtt_refused("identity");
                            return;
                        }
                    },
                };
                let device_id = certified.clone().unwrap_or_default();
                settings.shared.metrics.mqtt_session(true);
                let ending = session::serve(tls, certified, &settings.session).await;
                settings.shared.metrics.mqtt_session(false);
                match ending {
                    Ending::Refused { denied, detail } => {
                        tracing::info!(%peer, device_id, denied, %detail, "MQTT packet refused; connection closed");
                        settings.shared.metrics.mqtt_denied(denied);
                    }
                    Ending::Protocol(detail) => tracing::info!(%peer, device_id, %detail, "MQTT session ended: protocol error"),
                    Ending::Router(detail) => tracing::info!(%peer, device_id, %detail, "MQTT session ended by the broker"),
                    Ending::KeepAlive => tracing::debug!(%peer, device_id, "MQTT session ended: keep-alive expired"),
                    Ending::Disconnected | Ending::Gone => {}
                }
            });
        }
    });
    Ok(Front { addr, task })
}

