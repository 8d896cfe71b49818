//! Everything a local stack or a test stack runs with, made in one folder: a CA, a server
//! certificate for `127.0.0.1` and `localhost`, and a token file holding an `admin` token (which
//! also signs AWS requests) and a `service` token (whose secrets are also kept in files, `admin.token` and `service.token`,
//! for the tools and services that send them). Device certificates come from the same CA
//! ([`Credentials::issue_device`]).

use std::path::{Path, PathBuf};

use lodestone_kit::auth::{AuthConfig, Scope, TokenFile};
use lodestone_kit::tls::TlsConfig;

use crate::pki::{Authority, PkiError};

/// How long the certificates of a local stack are valid.
const LOCAL_DAYS: u32 = 825;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tokens(#[from] lodestone_kit::auth::TokenFileError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A folder of credentials; see the module's doc.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub dir: PathBuf,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub tokens_path: PathBuf,
    /// The device CA's revocation list (empty at first; [`Authority::revoke`] adds to it).
    pub crl_path: PathBuf,
    /// `ID.SECRET` of the admin token, also in `admin_token_path`.
    pub admin_bearer: String,
    pub admin_token_path: PathBuf,
    /// `ID.SECRET` of the service token (the query service's calls to the workers).
    pub service_bearer: String,
    pub service_token_path: PathBuf,
}

impl Credentials {
    /// Makes the CA, the server certificate and the two tokens in `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<Credentials, CredentialsError> {
        let authority = Authority::open_or_create(dir, LOCAL_DAYS)?;
        let server = authority.issue_server("server", &["127.0.0.1".to_string(), "localhost".to_string()], LOCAL_DAYS)?;
        let crl_path = match authority.crl_path().exists() {
            true => authority.crl_path(),
            false => authority.write_crl(&[], LOCAL_DAYS)?,
        };
        let tokens_path = dir.join("tokens.toml");
        let mut tokens = TokenFile::read(&tokens_path)?;
        // The admin token also signs AWS requests (the Timestream API, boto3, the AWS CLI).
        let admin = tokens.issue_signing("admin", &[Scope::Admin], None);
        // The query service's calls to the others: the workers' memory and receipts, and every
        // service's /metrics for the console's pipeline page.
        let service = tokens.issue("query service", &[Scope::Service, Scope::Metrics], None);
        tokens.write(&tokens_path)?;
        let credentials = Credentials {
            dir: dir.to_path_buf(),
            ca_path: authority.ca_path(),
            cert_path: server.cert_path,
            key_path: server.key_path,
            tokens_path,
            crl_path,
            admin_bearer: admin.bearer,
            admin_token_path: dir.join("admin.token"),
            service_bearer: service.bearer,
            service_token_path: dir.join("service.token"),
        };
        write_secret(&credentials.admin_token_path, &credentials.admin_bearer)?;
        write_secret(&credentials.service_token_path, &credentials.service_bearer)?;
        Ok(credentials)
    }

    /// Adds a token with `scopes` (expiring at `expires`, if given) and returns its `ID.SECRET`.
    pub fn issue(&self, name: &str, scopes: &[Scope], expires: Option<chrono::DateTime<chrono::Utc>>) -> Result<String, CredentialsError> {
        let mut tokens = TokenFile::read(&self.tokens_path)?;
        let issued = tokens.issue(name, scopes, expires);
        tokens.write(&self.tokens_path)?;
        Ok(issued.bearer)
    }

    /// [`Credentials::issue`] for a token that also signs AWS requests: (access key id, secret
    /// access key).
    pub fn issue_signing(&self, name: &str, scopes: &[Scope]) -> Result<(String, String), CredentialsError> {
        let mut tokens = TokenFile::read(&self.tokens_path)?;
        let issued = tokens.issue_signing(name, scopes, None);
        tokens.write(&self.tokens_path)?;
        let (id, secret) = issued.bearer.split_once('.').expect("a bearer is ID.SECRET");
        Ok((id.to_string(), secret.to_string()))
    }

    /// The admin token as AWS credentials: (access key id, secret access key).
    pub fn admin_aws_keys(&self) -> (String, String) {
        let (id, secret) = self.admin_bearer.split_once('.').expect("a bearer is ID.SECRET");
        (id.to_string(), secret.to_string())
    }

    /// `[tls]` of a service serving with this folder's certificate and trusting its CA.
    pub fn tls(&self) -> TlsConfig {
        TlsConfig {
            cert_path: self.cert_path.display().to_string(),
            key_path: self.key_path.display().to_string(),
            ca_path: self.ca_path.display().to_string(),
            ..TlsConfig::default()
        }
    }

    /// `[auth]` of a service checking this folder's token file.
    pub fn auth(&self) -> AuthConfig {
        AuthConfig { tokens_path: self.tokens_path.display().to_string(), ..AuthConfig::default() }
    }

    /// The environment overrides that give the service with variable prefix `prefix`
    /// (`LODESTONE_QUERY`) [`Credentials::tls`] and [`Credentials::auth`].
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("TLS__CERT_PATH", &self.cert_path),
            ("TLS__KEY_PATH", &self.key_path),
            ("TLS__CA_PATH", &self.ca_path),
            ("AUTH__TOKENS_PATH", &self.tokens_path),
        ]
        .into_iter()
        .map(|(key, path)| (format!("{prefix}__{key}"), path.display().to_string()))
        .collect()
    }

    /// The CA that issues this folder's certificates, for device certificates and revocation.
    pub fn authority(&self) -> Authority {
        Authority::open_or_create(&self.dir, LOCAL_DAYS).expect("the CA of these credentials is readable")
    }

    /// A device certificate for `id` in this folder (`device-{id}.pem`, `.key`).
    pub fn issue_device(&self, id: &str) -> Result<crate::pki::Issued, CredentialsError> {
        Ok(self.authority().issue_device(id, 0, LOCAL_DAYS)?)
    }

    /// A client configuration trusting this folder's CA.
    pub fn client_tls(&self) -> rustls::ClientConfig {
        lodestone_kit::tls::client_config(&self.ca_path).expect("the CA just written is readable")
    }
}

fn write_secret(path: &Path, bearer: &str) -> Result<(), CredentialsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CredentialsError::Io { path: path.display().to_string(), source };
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(format!("{bearer}\n").as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_credentials_configure_a_service_and_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::create(dir.path()).unwrap();
        credentials.tls().validate().unwrap();
        credentials.tls().server().unwrap();
        let authenticator = credentials.auth().authenticator().unwrap();
        assert!(authenticator.check(&credentials.admin_bearer).unwrap().is_admin());
        let service = authenticator.check(&credentials.service_bearer).unwrap();
        assert!(service.has(&Scope::Service) && !service.is_admin());
        assert_eq!(lodestone_kit::auth::read_bearer(&credentials.admin_token_path).unwrap(), credentials.admin_bearer);
        let reader = credentials.issue("reader", &["fleet:read".parse().unwrap()], None).unwrap();
        assert!(credentials.auth().authenticator().unwrap().check(&reader).unwrap().can_read("fleet"));
    }
}
