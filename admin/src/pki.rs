//! A local certificate authority kept in one folder, and the certificates it issues.
//!
//! Files, all PEM: `ca.pem` (give it to every client), `ca.key` (the CA's private key: keep it on
//! the machine that issues certificates), `{name}.pem` and `{name}.key` for each certificate, and
//! `crl.pem`, the revocation list (with `revoked.txt`, the serial numbers it lists). Keys are
//! ECDSA P-256; private keys are written readable by their owner only. Serial numbers are 128
//! random bits.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};

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
    #[error("{0}: not a certificate this tool can read")]
    BadCertificate(String),
}

/// A certificate and its key, as PEM text.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
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

    /// A device certificate `device-{id}.pem`: see [`Authority::device_pem`].
    pub fn issue_device(&self, id: &str, from_days: i64, days: u32) -> Result<Issued, PkiError> {
        let pem = self.device_pem(id, from_days, days)?;
        self.save(&format!("device-{id}"), &pem)
    }

    /// A device certificate in memory: the id in the CN and in the SAN URI
    /// `urn:lodestone:device:{id}`, for client authentication; valid from `from_days` (may be
    /// negative, to make one already expired in a test) for `days`.
    pub fn device_pem(&self, id: &str, from_days: i64, days: u32) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, id);
        let uri = format!("{DEVICE_URI_PREFIX}{id}");
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, from_days, days);
        self.sign(params)
    }

    fn issue(&self, name: &str, params: CertificateParams) -> Result<Issued, PkiError> {
        let pem = self.sign(params)?;
        self.save(name, &pem)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Pem, PkiError> {
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(Pem { cert: certificate.pem(), key: key.serialize_pem() })
    }

    fn save(&self, name: &str, pem: &Pem) -> Result<Issued, PkiError> {
        let issued = Issued { cert_path: self.dir.join(format!("{name}.pem")), key_path: self.dir.join(format!("{name}.key")) };
        write(&issued.cert_path, pem.cert.as_bytes(), false)?;
        write(&issued.key_path, pem.key.as_bytes(), true)?;
        Ok(issued)
    }

    /// The CRL file of this CA: `crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// Adds the certificate in `cert_path` to the revocation list and writes `crl.pem` anew
    /// (valid for `days`); returns its path. Services read it at start.
    pub fn revoke(&self, cert_path: &Path, days: u32) -> Result<PathBuf, PkiError> {
        let pem = read(cert_path)?;
        let der = rustls_pki_types_der(&pem).ok_or_else(|| PkiError::BadCertificate(cert_path.display().to_string()))?;
        let serial = serial_of(&der).ok_or_else(|| PkiError::BadCertificate(cert_path.display().to_string()))?;
        let revoked_path = self.dir.join("revoked.txt");
        let mut serials: Vec<String> = std::fs::read_to_string(&revoked_path).unwrap_or_default().lines().map(str::to_string).collect();
        let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
        if !serials.contains(&hex) {
            serials.push(hex);
        }
        write(&revoked_path, format!("{}\n", serials.join("\n")).as_bytes(), false)?;
        self.write_crl(&serials, days)
    }

    /// Writes `crl.pem` listing `serials` (hex), valid for `days`.
    pub fn write_crl(&self, serials: &[String], days: u32) -> Result<PathBuf, PkiError> {
        let now = time::OffsetDateTime::now_utc();
        let revoked = serials
            .iter()
            .filter_map(|hex| unhex(hex))
            .map(|bytes| RevokedCertParams { serial_number: SerialNumber::from_slice(&bytes), revocation_time: now, reason_code: None, invalidity_date: None })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(i64::from(days)),
            crl_number: SerialNumber::from_slice(&(now.unix_timestamp() as u64).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        let path = self.crl_path();
        write(&path, crl.pem()?.as_bytes(), false)?;
        Ok(path)
    }
}

/// 128 random bits, the top one clear (a positive DER integer of a fixed length).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out).expect("the system's random source works");
    out
}

/// The DER of the first certificate in PEM text.
fn rustls_pki_types_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|der| der.to_vec())
}

/// A certificate's serial number, as its DER integer bytes.
fn serial_of(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    Some(certificate.raw_serial().to_vec())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
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
    fn a_revoked_device_is_listed_in_the_crl() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open_or_create(dir.path(), 30).unwrap();
        let device = authority.issue_device("truck-7", 0, 30).unwrap();
        let crl = authority.revoke(&device.cert_path, 30).unwrap();
        let again = authority.revoke(&device.cert_path, 30).unwrap();
        assert_eq!(crl, again);
        let revoked = std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap();
        assert_eq!(revoked.lines().count(), 1, "revoking twice lists the serial once");
        use rustls::pki_types::pem::PemObject;
        let crls: Vec<_> = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(&crl).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(crls.len(), 1);
    }

    #[test]
    fn a_bad_host_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open_or_create(dir.path(), 30).unwrap();
        assert!(matches!(authority.issue_server("s", &["hôst".into()], 30), Err(PkiError::BadHost(_)) | Err(PkiError::Certificate(_))));
    }
}
