//! Devices' identities on MQTT: each simulated device gets its own certificate, made in memory
//! from a CA folder as `lodestone-admin tls init` leaves it (`ca.pem`, `ca.key`), so a fleet of
//! 10,000 devices needs no 10,000 files. The device id is in the certificate's SAN URI and CN.

use std::path::PathBuf;
use std::sync::Arc;

use lodestone_admin::pki::Authority;

use crate::SimError;

/// How long the certificates made here are valid.
const DEVICE_CERT_DAYS: u32 = 7;

/// The CA that vouches for every simulated device, and the CA the bridge's certificate is
/// checked against (the same one).
#[derive(Clone)]
pub struct DeviceIdentities {
    ca_path: PathBuf,
    authority: Arc<Authority>,
}

impl std::fmt::Debug for DeviceIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentities").field("ca_path", &self.ca_path).finish_non_exhaustive()
    }
}

impl DeviceIdentities {
    /// The CA in `dir` (`ca.pem` and `ca.key`).
    pub fn open(dir: &std::path::Path) -> Result<DeviceIdentities, SimError> {
        let refused = |detail: String| SimError::Access { detail };
        if !dir.join("ca.key").exists() {
            return Err(refused(format!("{} holds no ca.key: give a folder made by lodestone-admin tls init", dir.display())));
        }
        let authority = Authority::open_or_create(dir, DEVICE_CERT_DAYS).map_err(|e| refused(e.to_string()))?;
        Ok(DeviceIdentities { ca_path: authority.ca_path(), authority: Arc::new(authority) })
    }

    /// TLS for `device_id`: a fresh certificate for it, and the CA for the bridge.
    pub fn tls_for(&self, device_id: &str) -> Result<Arc<rustls::ClientConfig>, SimError> {
        let refused = |detail: String| SimError::Access { detail: format!("device {device_id}: {detail}") };
        let pem = self.authority.device_pem(device_id, 0, DEVICE_CERT_DAYS).map_err(|e| refused(e.to_string()))?;
        let config = lodestone_kit::tls::client_config_with_identity(&self.ca_path, pem.cert.as_bytes(), pem.key.as_bytes()).map_err(|e| refused(e.to_string()))?;
        Ok(Arc::new(config))
    }
}
