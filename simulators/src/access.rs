//! How the simulator reaches Lodestone's HTTP APIs (edge agents, the query service): the CA it
//! trusts for `https://` URLs and the bearer token it sends. Both come from files, never from a
//! command-line value that `ps` would show.

use std::path::PathBuf;
use std::time::Duration;

use crate::SimError;

#[derive(Debug, Clone, Default)]
pub struct HttpAccess {
    /// PEM CA certificate(s) trusted for `https://` URLs; none: plain HTTP only.
    pub ca_path: Option<PathBuf>,
    /// A file holding the token (`ID.SECRET`) sent as `Authorization: Bearer`; none: no token.
    pub token_path: Option<PathBuf>,
}

impl HttpAccess {
    /// An HTTP client with this access and `timeout` per request.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::Client, SimError> {
        let refused = |detail: String| SimError::Access { detail };
        let tls = match &self.ca_path {
            Some(path) => Some(lodestone_kit::tls::client_config(path).map_err(|e| refused(e.to_string()))?),
            None => None,
        };
        let builder = match &self.token_path {
            Some(path) => {
                let bearer = lodestone_kit::auth::read_bearer(path).map_err(|e| refused(format!("{}: {e}", path.display())))?;
                lodestone_kit::http::client_with_token(tls, &bearer)
            }
            None => lodestone_kit::http::client(tls),
        };
        builder.timeout(timeout).build().map_err(SimError::HttpClient)
    }
}
