//! TLS for every listener and every call between services, with rustls and its `ring` provider
//! (named explicitly, so no process-wide default provider is needed).
//!
//! `[tls]` in a service's config ([`TlsConfig`]) names its certificate chain and key (PEM) and
//! the CA its own outgoing calls trust. Plain text is served only when the config says
//! `plaintext = true`. rustls speaks TLS 1.2 and 1.3 only, so older versions are refused by
//! construction. Handshakes run in their own tasks under `handshake_timeout_ms`
//! ([`crate::http::serve`]): a client that connects and says nothing holds up no one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::{ensure, positive, InvalidValue};

/// `[tls]`: this service's certificate, and the CA its calls to other services trust.
///
/// The defaults are the files `lodestone-admin tls init --dir certs` writes, relative to the
/// service's working folder; a service whose files are missing refuses to start, naming them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file: this service's certificate, then its chain.
    pub cert_path: String,
    /// PEM file: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: String,
    /// PEM file: the CA certificate(s) this service trusts when it calls another Lodestone
    /// service over HTTPS (e.g. the query service reading the ingest workers' memory). Empty:
    /// only plain-text peers can be called.
    pub ca_path: String,
    /// Serve plain HTTP instead (the paths above are then not read). Only for a machine where
    /// nothing else runs.
    pub plaintext: bool,
    /// A TLS handshake not finished within this is dropped.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_path: "certs/server.pem".into(),
            key_path: "certs/server.key".into(),
            ca_path: "certs/ca.pem".into(),
            plaintext: false,
            handshake_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {detail} (`lodestone-admin tls init --dir DIR` makes a CA and a server certificate; or set tls.plaintext = true)")]
    Read { what: &'static str, path: String, detail: String },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: String },
    #[error("TLS set-up with {path}: {detail}")]
    Rustls { path: String, detail: String },
}

impl TlsConfig {
    /// A certificate and key, unless `plaintext = true` says otherwise explicitly.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        positive("tls.handshake_timeout_ms", self.handshake_timeout_ms)?;
        if self.plaintext {
            return Ok(());
        }
        ensure(!self.cert_path.is_empty(), "tls.cert_path", || {
            "must name a PEM certificate (lodestone-admin tls init makes one), or set tls.plaintext = true to serve plain HTTP".into()
        })?;
        ensure(!self.key_path.is_empty(), "tls.key_path", || "must name the certificate's PEM private key".into())
    }

    /// What the listener serves: plain text, or TLS with the certificate loaded now.
    pub fn server(&self) -> Result<ServerTls, TlsError> {
        if self.plaintext {
            tracing::warn!("tls.plaintext = true: serving plain HTTP");
            return Ok(ServerTls::Plain);
        }
        let config = server_config(Path::new(&self.cert_path), Path::new(&self.key_path))?;
        Ok(ServerTls::Rustls { config: Arc::new(config), handshake_timeout: Duration::from_millis(self.handshake_timeout_ms) })
    }

    /// The client configuration for this service's calls to other services: trusting `ca_path`,
    /// or `None` when it is empty (plain-text peers only).
    pub fn client(&self) -> Result<Option<rustls::ClientConfig>, TlsError> {
        if self.ca_path.is_empty() {
            return Ok(None);
        }
        client_config(Path::new(&self.ca_path)).map(Some)
    }
}

/// How a listener speaks.
#[derive(Clone)]
pub enum ServerTls {
    Plain,
    Rustls { config: Arc<rustls::ServerConfig>, handshake_timeout: Duration },
}

impl ServerTls {
    /// `https` or `http`, for log lines and URLs.
    pub fn scheme(&self) -> &'static str {
        match self {
            ServerTls::Plain => "http",
            ServerTls::Rustls { .. } => "https",
        }
    }
}

/// The crypto provider of every TLS configuration Lodestone builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting the chain in `cert_path` with the key in `key_path`; no
/// client certificate asked for (HTTP callers authenticate with tokens). TLS 1.2 and 1.3.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates(cert_path)?;
    let key = private_key(key_path)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls { path: cert_path.display().to_string(), detail: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls { path: cert_path.display().to_string(), detail: e.to_string() })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration trusting exactly the CA certificates in `ca_path`.
pub fn client_config(ca_path: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(ca_path)? {
        roots.add(certificate).map_err(|e| TlsError::Rustls { path: ca_path.display().to_string(), detail: e.to_string() })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls { path: ca_path.display().to_string(), detail: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// A client configuration trusting the CA certificates in `ca_path` and presenting the
/// certificate chain and key given as PEM text (a device's identity on MQTT).
pub fn client_config_with_identity(ca_path: &Path, cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(ca_path)? {
        roots.add(certificate).map_err(|e| TlsError::Rustls { path: ca_path.display().to_string(), detail: e.to_string() })?;
    }
    let identity = |detail: String| TlsError::Rustls { path: "(client certificate)".into(), detail };
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| identity(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| identity(e.to_string()))?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| identity(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| identity(e.to_string()))
}

/// Every certificate in a PEM file, in order.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |detail: String| TlsError::Read { what: "certificates", path: path.display().to_string(), detail };
    let chain = CertificateDer::pem_file_iter(path).map_err(|e| read(e.to_string()))?.collect::<Result<Vec<_>, _>>().map_err(|e| read(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Empty { what: "certificate", path: path.display().to_string() });
    }
    Ok(chain)
}

/// The private key in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read { what: "private key", path: path.display().to_string(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_a_certificate_or_an_explicit_plaintext() {
        assert!(TlsConfig::default().validate().is_ok());
        let no_cert = TlsConfig { cert_path: String::new(), ..Default::default() };
        assert_eq!(no_cert.validate().unwrap_err().key, "tls.cert_path");
        let plaintext = TlsConfig { plaintext: true, cert_path: String::new(), ..Default::default() };
        assert!(plaintext.validate().is_ok());
        let no_key = TlsConfig { key_path: String::new(), ..Default::default() };
        assert_eq!(no_key.validate().unwrap_err().key, "tls.key_path");
        let zero = TlsConfig { plaintext: true, handshake_timeout_ms: 0, ..Default::default() };
        assert_eq!(zero.validate().unwrap_err().key, "tls.handshake_timeout_ms");
    }

    #[test]
    fn a_missing_certificate_file_is_an_error_naming_it() {
        let config = TlsConfig { cert_path: "/nonexistent/c.pem".into(), key_path: "/nonexistent/k.pem".into(), ..Default::default() };
        let error = config.server().err().unwrap().to_string();
        assert!(error.contains("/nonexistent/c.pem"), "{error}");
    }
}
