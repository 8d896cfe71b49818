//! The MQTT front: devices connect here over TLS with a client certificate, and only what their
//! [`Gate`] allows reaches the embedded broker, which listens on 127.0.0.1 only.
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
//! - reads the CONNECT, picks rumqttd's 3.1.1 or 5 listener by its protocol level (both served on
//!   one port), and relays the connection, checking every client packet with the [`Gate`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::gate::{Framer, Gate, Policy, Verdict};
use crate::service::Shared;

/// TLS handshakes under way at once; a connection beyond is closed at once.
pub const HANDSHAKES_MAX: usize = 1024;
/// How long a device has, after its handshake, to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Where the front relays to: rumqttd's internal listeners.
#[derive(Debug, Clone, Copy)]
pub struct Upstream {
    pub v4: SocketAddr,
    pub v5: SocketAddr,
}

/// The files the front's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub device_ca: std::path::PathBuf,
    pub crl: Option<std::path::PathBuf>,
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
        let config = server_config(&files.cert, &files.key, &files.device_ca, files.crl.as_deref())?;
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
                match server_config(&self.files.cert, &self.files.key, &self.files.device_ca, self.files.crl.as_deref()) {
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
    pub upstream: Upstream,
    pub policy: Arc<Policy>,
    pub packet_bytes_max: usize,
    /// Where the front's counters go.
    pub shared: Arc<Shared>,
}

/// A running front.
pub struct Front {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Front {
    /// Stops accepting; connections already relayed run until either side closes.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// The server configuration of the front: the bridge's certificate (`cert_path`, `key_path`),
/// client certificates required and verified against `device_ca_path` and the CRLs in
/// `crl_path` (none when empty).
pub fn server_config(cert_path: &Path, key_path: &Path, device_ca_path: &Path, crl_path: Option<&Path>) -> Result<rustls::ServerConfig, FrontError> {
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
                let identity = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(device_identity);
                let Some(device_id) = identity else {
                    tracing::info!(%peer, "a client certificate names no device (no SAN URI urn:lodestone:device:ID, no CN)");
                    settings.shared.metrics.mqtt_refused("identity");
                    return;
                };
                relay(tls, device_id, peer, &settings).await;
            });
        }
    });
    Ok(Front { addr, task })
}

/// Reads the device's CONNECT, relays the connection to rumqttd and checks every client packet
/// on the way; returns when either side closes or the gate refuses a packet.
async fn relay(tls: tokio_rustls::server::TlsStream<TcpStream>, device_id: String, peer: SocketAddr, settings: &FrontSettings) {
    let (mut from_device, mut to_device) = tokio::io::split(tls);
    let mut gate = Gate::new(device_id.clone(), settings.policy.clone());
    let mut framer = Framer::default();
    let mut buffer = vec![0u8; 4 * 1024];
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, next_packet(&mut from_device, &mut framer, &mut buffer, settings.packet_bytes_max)).await {
        Ok(Some(packet)) => packet,
        _ => return,
    };
    let level = connect_level(&connect);
    match gate.check(&connect) {
        Verdict::Forward => {}
        Verdict::Refuse { denied, detail, reply } => {
            tracing::info!(%peer, device_id, denied = denied.as_str(), %detail, "MQTT connection refused");
            settings.shared.metrics.mqtt_denied(denied.as_str());
            if let Some(reply) = reply {
                let _ = to_device.write_all(&reply).await;
                let _ = to_device.shutdown().await;
            }
            return;
        }
    }
    let upstream = if level == Some(5) { settings.upstream.v5 } else { settings.upstream.v4 };
    let Ok(broker) = TcpStream::connect(upstream).await else {
        tracing::warn!(%upstream, "the embedded broker's listener does not answer");
        return;
    };
    let _ = broker.set_nodelay(true);
    let (mut from_broker, mut to_broker) = broker.into_split();
    if to_broker.write_all(&connect).await.is_err() {
        return;
    }
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_broker, &mut to_device).await;
        let _ = to_device.shutdown().await;
    });
    loop {
        let Some(packet) = next_packet(&mut from_device, &mut framer, &mut buffer, settings.packet_bytes_max).await else { break };
        match gate.check(&packet) {
            Verdict::Forward => {
                if to_broker.write_all(&packet).await.is_err() {
                    break;
                }
            }
            Verdict::Refuse { denied, detail, .. } => {
                tracing::info!(%peer, device_id, denied = denied.as_str(), %detail, "MQTT packet refused; connection closed");
                settings.shared.metrics.mqtt_denied(denied.as_str());
                break;
            }
        }
    }
    // Closing the broker side ends the downstream copy too.
    let _ = to_broker.shutdown().await;
    drop(to_broker);
    downstream.abort();
}

/// The next whole packet from the device; `None` at the end of the stream, on a read error or on
/// a packet over the bound.
async fn next_packet<R: AsyncReadExt + Unpin>(reader: &mut R, framer: &mut Framer, buffer: &mut [u8], bytes_max: usize) -> Option<Vec<u8>> {
    loop {
        match framer.next_packet(bytes_max) {
            Ok(Some(packet)) => return Some(packet),
            Ok(None) => {}
            Err(error) => {
                tracing::info!(%error, "MQTT stream refused");
                return None;
            }
        }
        let read = reader.read(buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        framer.push(&buffer[..read]);
    }
}

/// The protocol level of a CONNECT packet (4: 3.1.1, 5: 5.0).
fn connect_level(packet: &[u8]) -> Option<u8> {
    let (start, _) = crate::gate::remaining_length(packet)?;
    let body = packet.get(start..)?;
    let name_length = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_length).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_level_is_read_from_connect() {
        let connect = [0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x1e, 0x00, 0x00];
        assert_eq!(connect_level(&connect), Some(5));
        assert_eq!(connect_level(&[0x10, 0x01]), None);
    }
}
