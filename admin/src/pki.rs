//! A local certificate authority kept in one folder, and the certificates it issues.
//!
//! Files, all PEM: `ca.pem` (give it to every client), `ca.key` (the CA's private key: keep it on
//! the machine that issues certificates), `{name}.pem` and `{name}.key` for each certificate.
//! Keys are ECDSA P-256; private keys are written readable by their owner only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// The SAN URI prefix that carries a device's id: `urn:lodestone:device:{id}`.
pub const DEVICE_URI_PREFIX: &str = "urn:lodestone:device:";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0:?} is not a host name or an IP address")]
    BadHost(String),
}

/// A CA loaded from (or created in) a folder.
pub struct Authority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// The files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Authority {
    /// The CA in `dir`: loaded when `ca.pem` and `ca.key` exist, else created there, valid for
    /// `days`.
    pub fn open_or_create(dir: &Path, days: u32) -> Result<Authority, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() && key_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?)?;
            let issuer = Issuer::from_ca_cert_pem(&read(&cert_path)?, key)?;
            return Ok(Authority { dir: dir.to_path_buf(), issuer });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "Lodestone local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 0, days);
        let certificate = params.self_signed(&key)?;
        write(&cert_path, certificate.pem().as_bytes(), false)?;
        write(&key_path, key.serialize_pem().as_bytes(), true)?;
        Ok(Authority { dir: dir.to_path_buf(), issuer: Issuer::new(params, key) })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate `{name}.pem` for `hosts` (DNS names or IP addresses), valid for
    /// `days`.
    pub fn issue_server(&self, name: &str, hosts: &[String], days: u32) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, hosts.first().map_or(name, String::as_str));
        params.subject_alt_names = hosts.iter().map(|host| san(host)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 0, days);
        self.issue(name, params)
    }

    /// A device certificate `device-{id}.pem`: the id in the CN and in the SAN URI
    /// `urn:lodestone:device:{id}`, for client authentication; valid from `from_days` (may be
    /// negative, to make one already expired in a test) for `days`.
    pub fn issue_device(&self, id: &str, from_days: i64, days: u32) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, id);
        let uri = format!("{DEVICE_URI_PREFIX}{id}");
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, from_days, days);
        self.issue(&format!("device-{id}"), params)
    }

    fn issue(&self, name: &str, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        let issued = Issued { cert_path: self.dir.join(format!("{name}.pem")), key_path: self.dir.join(format!("{name}.key")) };
        write(&issued.cert_path, certificate.pem().as_bytes(), false)?;
        write(&issued.key_path, key.serialize_pem().as_bytes(), true)?;
        Ok(issued)
    }
}

fn san(host: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = host.try_into().map_err(|_| PkiError::BadHost(host.to_string()))?;
    Ok(SanType::DnsName(dns))
}

/// Valid from `from_days` days from now (an hour earlier, for clocks that differ a little) for
/// `days` days.
fn validity(params: &mut CertificateParams, from_days: i64, days: u32) {
    let start = time::OffsetDateTime::now_utc() + time::Duration::days(from_days) - time::Duration::hours(1);
    params.not_before = start;
    params.not_after = start + time::Duration::days(i64::from(days));
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.display().to_string(), source }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_certificate_is_trusted_through_the_ca_it_was_issued_by() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open_or_create(dir.path(), 30).unwrap();
        let server = authority.issue_server("server", &["127.0.0.1".into(), "localhost".into()], 30).unwrap();
        // The CA is loaded, not made again, the second time.
        let ca_before = std::fs::read(authority.ca_path()).unwrap();
        let again = Authority::open_or_create(dir.path(), 30).unwrap();
        again.issue_device("truck-7", 0, 30).unwrap();
        assert_eq!(std::fs::read(again.ca_path()).unwrap(), ca_before);
        // rustls accepts the pair as a server identity and the CA as a root.
        lodestone_kit::tls::server_config(&server.cert_path, &server.key_path).unwrap();
        lodestone_kit::tls::client_config(&authority.ca_path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the CA key is readable by others");
    }

    #[test]
    fn a_bad_host_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open_or_create(dir.path(), 30).unwrap();
        assert!(matches!(authority.issue_server("s", &["hôst".into()], 30), Err(PkiError::BadHost(_)) | Err(PkiError::Certificate(_))));
    }
}
