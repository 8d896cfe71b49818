//! Who is calling: bearer tokens with scopes, checked by every HTTP service the same way.
//!
//! A token is `{id}.{secret}`, sent as `Authorization: Bearer {id}.{secret}`. The id is public
//! (it names the token in logs, metrics and the token file); the secret is shown once, when the
//! token is created, and only its SHA-256 is kept. Secrets are 32 random bytes, so a fast hash is
//! enough: nothing can be guessed from it.
//!
//! Tokens live in a TOML file ([`TokenFile`], `[auth] tokens_path`) that `lodestone-admin token`
//! creates, lists and revokes. Services re-read it when it changes (checked at most once a
//! second), so a new or revoked token takes effect without a restart.
//!
//! Scopes ([`Scope`]): `admin` (everything: databases, tables, retention, tokens, every
//! database's data), `{database}:read`, `{database}:write` (`*` for every database), `service`
//! (the ingest workers' memory, for the query service) and `metrics` (`/metrics`).
//!
//! Failures have stable codes ([`AuthError::code`]): 401 `missing_credentials`,
//! `invalid_credentials`, `expired_credentials` (with `WWW-Authenticate: Bearer`), 403 `forbidden`.
//! No secret is ever logged: only token ids are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{ensure, InvalidValue};
use crate::sigv4;

/// `[auth]`: where the tokens are, or that there are none on purpose. The default token file is
/// `tokens.toml` in the service's working folder; a service without it refuses to start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The token file (`lodestone-admin token create --file …`).
    pub tokens_path: String,
    /// Serve every request without a token, as if it had every scope (the token file is then
    /// not read). Only for a machine where nothing else runs; never on a network.
    pub anonymous: bool,
    /// AWS-signed requests (the Timestream API): `verify` checks each signature against the
    /// token whose id is the access key id; `open` accepts any signature with every scope, as
    /// moto and LocalStack do, for local tests only.
    pub sigv4: Sigv4Mode,
}

/// How AWS Signature V4 requests are checked (`[auth] sigv4`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sigv4Mode {
    #[default]
    Verify,
    Open,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { tokens_path: "tokens.toml".into(), anonymous: false, sigv4: Sigv4Mode::Verify }
    }
}

impl AuthConfig {
    /// A token file, unless `anonymous = true` says otherwise explicitly.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        ensure(self.anonymous || !self.tokens_path.is_empty(), "auth.tokens_path", || {
            "must name a token file (lodestone-admin token create), or set auth.anonymous = true to serve without tokens".into()
        })
    }

    /// The authenticator this config describes; reads the token file once to check it.
    pub fn authenticator(&self) -> Result<Authenticator, TokenFileError> {
        if self.anonymous {
            tracing::warn!("auth.anonymous = true: every request is served without a token");
            return Ok(Authenticator::anonymous());
        }
        let mut authenticator = Authenticator::from_file(Path::new(&self.tokens_path))?;
        if self.sigv4 == Sigv4Mode::Open {
            tracing::warn!("auth.sigv4 = \"open\": AWS-signed requests are served with every scope, their signatures unchecked");
            authenticator.sigv4 = Sigv4Mode::Open;
        }
        Ok(authenticator)
    }
}

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Read a database's tables (`*`: every database).
    Read(String),
    /// Write into a database (`*`: every database).
    Write(String),
    /// Internal calls between services (the ingest workers' memory).
    Service,
    /// Read `/metrics`.
    Metrics,
    /// A device's MQTT password (in the bridge's device password file, where a token's id is the
    /// device id); grants nothing over HTTP.
    Device,
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Scope, String> {
        match text {
            "admin" => return Ok(Scope::Admin),
            "service" => return Ok(Scope::Service),
            "metrics" => return Ok(Scope::Metrics),
            "device" => return Ok(Scope::Device),
            _ => {}
        }
        let bad = || format!("{text:?} is not a scope: admin, service, metrics, device, DATABASE:read or DATABASE:write (* for every database)");
        let (database, access) = text.rsplit_once(':').ok_or_else(bad)?;
        if database.is_empty() {
            return Err(bad());
        }
        match access {
            "read" => Ok(Scope::Read(database.to_string())),
            "write" => Ok(Scope::Write(database.to_string())),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Service => f.write_str("service"),
            Scope::Metrics => f.write_str("metrics"),
            Scope::Device => f.write_str("device"),
            Scope::Read(database) => write!(f, "{database}:read"),
            Scope::Write(database) => write!(f, "{database}:write"),
        }
    }
}

/// The caller of one request, once authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The token's id (`anonymous` without authentication).
    pub id: String,
    scopes: Vec<Scope>,
}

impl Principal {
    /// Every scope, no token: what `auth.anonymous = true` serves.
    pub fn anonymous() -> Principal {
        Principal { id: "anonymous".into(), scopes: vec![Scope::Admin] }
    }

    pub fn with_scopes(id: impl Into<String>, scopes: Vec<Scope>) -> Principal {
        Principal { id: id.into(), scopes }
    }

    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// Whether the token names a device (an MQTT password), whatever else it may do: an admin
    /// token is not a device's password.
    pub fn is_device(&self) -> bool {
        self.scopes.contains(&Scope::Device)
    }

    /// Whether the caller may read `database`'s tables.
    pub fn can_read(&self, database: &str) -> bool {
        self.is_admin() || self.scopes.iter().any(|s| matches!(s, Scope::Read(d) if d == "*" || d == database))
    }

    /// Whether the caller may read every database (and so the catalog as a whole).
    pub fn can_read_all(&self) -> bool {
        self.is_admin() || self.scopes.contains(&Scope::Read("*".into()))
    }

    /// Whether the caller may write into `database`.
    pub fn can_write(&self, database: &str) -> bool {
        self.is_admin() || self.scopes.iter().any(|s| matches!(s, Scope::Write(d) if d == "*" || d == database))
    }

    /// Whether the caller holds `scope` (admin holds them all).
    pub fn has(&self, scope: &Scope) -> bool {
        self.is_admin() || self.scopes.contains(scope)
    }

    /// `Ok` when the caller holds `scope`, else 403 `forbidden` naming it.
    pub fn require(&self, scope: &Scope) -> Result<(), AuthError> {
        match self.has(scope) {
            true => Ok(()),
            false => Err(AuthError::Forbidden(format!("token {} lacks the scope {scope}", self.id))),
        }
    }

    /// `Ok` when the caller may read `database`, else 403 `forbidden`.
    pub fn require_read(&self, database: &str) -> Result<(), AuthError> {
        match self.can_read(database) {
            true => Ok(()),
            false => Err(AuthError::Forbidden(format!("token {} may not read database {database:?}", self.id))),
        }
    }

    /// `Ok` when the caller may write into `database`, else 403 `forbidden`.
    pub fn require_write(&self, database: &str) -> Result<(), AuthError> {
        match self.can_write(database) {
            true => Ok(()),
            false => Err(AuthError::Forbidden(format!("token {} may not write into database {database:?}", self.id))),
        }
    }
}

/// Why a request is refused, with a stable code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs `Authorization: Bearer <token>`")]
    Missing,
    #[error("the bearer token is not valid here")]
    Invalid,
    #[error("token {id} expired at {expired}")]
    Expired { id: String, expired: String },
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::Invalid => "invalid_credentials",
            AuthError::Expired { .. } => "expired_credentials",
            AuthError::Forbidden(_) => "forbidden",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AuthError {
    /// `{"error": {"code", "message"}}`, as every Lodestone API answers errors; a 401 also says
    /// `WWW-Authenticate: Bearer`.
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}}));
        let mut response = (self.status(), body).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Why an AWS-signed request is refused, answered as the AWS SDKs expect (AWS JSON 1.0,
/// `{"__type": CODE, "Message": …}`, [`crate::sigv4::aws_json_error`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignedAuthError {
    #[error(transparent)]
    Signature(#[from] sigv4::SignatureError),
    #[error("token {0} cannot sign AWS requests: make one with `lodestone-admin token create --aws`")]
    NotSigning(String),
    #[error("The security token included in the request is expired (token {0})")]
    Expired(String),
    #[error("the request body is larger than the {0} bytes a signed request may carry")]
    BodyTooLarge(usize),
}

impl SignedAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            SignedAuthError::Signature(error) => error.code(),
            SignedAuthError::NotSigning(_) => "UnrecognizedClientException",
            SignedAuthError::Expired(_) => "ExpiredTokenException",
            SignedAuthError::BodyTooLarge(_) => "ValidationException",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            SignedAuthError::Signature(error) => error.status(),
            SignedAuthError::BodyTooLarge(_) => 400,
            _ => 403,
        }
    }
}

impl IntoResponse for SignedAuthError {
    fn into_response(self) -> Response {
        sigv4::aws_json_error(self.status(), self.code(), &self.to_string())
    }
}

/// Who signed an AWS request, besides its [`Principal`]: the access key id and the region of the
/// credential scope (Timestream's ARNs name it). Handlers find it as
/// `Option<axum::Extension<AwsCaller>>`; requests with a bearer token have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCaller {
    pub access_key_id: String,
    pub region: String,
}

/// The service name AWS-signed requests are scoped to: Lodestone's one AWS API is Timestream's.
pub const SIGNING_SERVICE: &str = "timestream";

/// The largest body an AWS-signed request may have: the signature covers it, so it is read whole
/// before the handler runs. Timestream's largest requests (100 records, a 256 KiB query) are far
/// below.
pub const SIGNED_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// One token as the token file keeps it: the secret's SHA-256, and the secret itself only for a
/// token that signs AWS requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub id: String,
    /// What it is for, for people: "grafana", "edge agent truck-7".
    #[serde(default)]
    pub name: String,
    pub scopes: Vec<String>,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// The secret itself, kept only for a token that signs AWS requests (made with
    /// [`TokenFile::issue_signing`], `lodestone-admin token create --aws`): AWS Signature V4 is
    /// an HMAC under the secret, so checking one needs the secret, not a hash of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

/// The token file: `[[tokens]]` entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("token file {path} does not exist (`lodestone-admin token create --file {path} --scope admin` makes one; or set auth.anonymous = true)")]
    Missing { path: String },
    #[error("token file {path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("cannot write token file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("token file {path} has no token {id}")]
    NoSuchToken { path: String, id: String },
}

/// A new token's secret, to show once: `{id}.{secret}`.
pub struct IssuedToken {
    pub entry: TokenEntry,
    /// What the caller sends after `Bearer `. Shown once; not kept anywhere.
    pub bearer: String,
}

/// A new secret for a chosen id (a device's MQTT password), to show once.
pub struct IssuedSecret {
    pub entry: TokenEntry,
    /// Shown once; not kept anywhere.
    pub secret: String,
}

impl TokenFile {
    /// Reads `path`; a missing file is an empty token file. Every scope is checked.
    pub fn read(path: &Path) -> Result<TokenFile, TokenFileError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
            Err(source) => return Err(TokenFileError::Read { path: shown, source }),
        };
        let file: TokenFile = toml::from_str(&text).map_err(|e| TokenFileError::Invalid { path: shown.clone(), detail: e.to_string() })?;
        for entry in &file.tokens {
            for scope in &entry.scopes {
                scope.parse::<Scope>().map_err(|detail| TokenFileError::Invalid { path: shown.clone(), detail: format!("token {}: {detail}", entry.id) })?;
            }
        }
        Ok(file)
    }

    /// Writes the file whole: to a temporary file beside it, then renamed into place, so a
    /// service reading it never sees half of it. The file is readable by its owner only.
    pub fn write(&self, path: &Path) -> Result<(), TokenFileError> {
        let error = |source| TokenFileError::Write { path: path.display().to_string(), source };
        let text = format!(
            "# Lodestone API tokens, managed with `lodestone-admin token`. SHA-256 hashes of the secrets are\n# kept here, and the secrets of tokens made to sign AWS requests (signing_secret): keep this file\n# readable by the services only. A lost secret cannot be recovered, only revoked and replaced.\n\n{}",
            toml::to_string(self).expect("a token file serializes")
        );
        let temporary = path.with_extension("tmp");
        write_private(&temporary, text.as_bytes()).map_err(error)?;
        std::fs::rename(&temporary, path).map_err(error)
    }

    /// Adds a token with `scopes`, valid until `expires` (forever when `None`), under a new id.
    pub fn issue(&mut self, name: &str, scopes: &[Scope], expires: Option<DateTime<Utc>>) -> IssuedToken {
        let id = format!("lt_{}", hex(&random_bytes::<8>()));
        let IssuedSecret { entry, secret } = self.issue_with_id(&id, name, scopes, expires);
        IssuedToken { entry, bearer: format!("{id}.{secret}") }
    }

    /// [`TokenFile::issue`] for a token that also signs AWS requests (the Timestream API): its id
    /// is the AWS access key id and its secret the secret access key. The file keeps the secret.
    pub fn issue_signing(&mut self, name: &str, scopes: &[Scope], expires: Option<DateTime<Utc>>) -> IssuedToken {
        let issued = self.issue(name, scopes, expires);
        let secret = issued.bearer.split_once('.').map(|(_, secret)| secret.to_string());
        let entry = self.tokens.last_mut().expect("the token just issued");
        entry.signing_secret = secret;
        IssuedToken { entry: entry.clone(), bearer: issued.bearer }
    }

    /// Adds (or replaces: the old secret stops working) the token `id`, e.g. a device's MQTT
    /// password under its device id. Its secret is what the holder presents with the id.
    pub fn issue_with_id(&mut self, id: &str, name: &str, scopes: &[Scope], expires: Option<DateTime<Utc>>) -> IssuedSecret {
        let secret = hex(&random_bytes::<32>());
        let entry = TokenEntry {
            id: id.to_string(),
            name: name.to_string(),
            scopes: scopes.iter().map(Scope::to_string).collect(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            created: Utc::now(),
            expires,
            signing_secret: None,
        };
        self.tokens.retain(|t| t.id != id);
        self.tokens.push(entry.clone());
        IssuedSecret { entry, secret }
    }

    /// Removes token `id`; false when there is none.
    pub fn revoke(&mut self, id: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.id != id);
        self.tokens.len() < before
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("the system's random source works");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// A token as checked at request time.
#[derive(Debug, Clone)]
struct KnownToken {
    secret_sha256: Vec<u8>,
    scopes: Vec<Scope>,
    expires: Option<DateTime<Utc>>,
    signing_secret: Option<String>,
}

/// How long a read of the token file is trusted before its modification time is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Checks bearer tokens against the token file (or lets everyone in, when anonymous).
pub struct Authenticator {
    source: Option<TokenSource>,
    sigv4: Sigv4Mode,
}

struct TokenSource {
    path: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    checked: Instant,
    modified: Option<SystemTime>,
    tokens: Arc<HashMap<String, KnownToken>>,
}

impl Authenticator {
    pub fn anonymous() -> Authenticator {
        Authenticator { source: None, sigv4: Sigv4Mode::Verify }
    }

    /// Reads the token file now (an unreadable or invalid one is an error) and again whenever it
    /// changes.
    pub fn from_file(path: &Path) -> Result<Authenticator, TokenFileError> {
        if !path.exists() {
            return Err(TokenFileError::Missing { path: path.display().to_string() });
        }
        let (modified, tokens) = load_tokens(path)?;
        tracing::info!(path = %path.display(), tokens = tokens.len(), "token file read");
        let loaded = Loaded { checked: Instant::now(), modified, tokens: Arc::new(tokens) };
        Ok(Authenticator { source: Some(TokenSource { path: path.to_path_buf(), state: Mutex::new(loaded) }), sigv4: Sigv4Mode::Verify })
    }

    pub fn is_anonymous(&self) -> bool {
        self.source.is_none()
    }

    /// The caller of a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let Some(source) = &self.source else { return Ok(Principal::anonymous()) };
        let value = headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Invalid)?;
        let (scheme, bearer) = value.trim().split_once(' ').ok_or(AuthError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Invalid);
        }
        self.check_bearer(source, bearer.trim())
    }

    /// The caller holding `bearer` (`{id}.{secret}`).
    pub fn check(&self, bearer: &str) -> Result<Principal, AuthError> {
        match &self.source {
            None => Ok(Principal::anonymous()),
            Some(source) => self.check_bearer(source, bearer),
        }
    }

    /// The holder of token `id` with `secret` (a device's MQTT user name and password); nobody
    /// is anonymous here.
    pub fn check_secret(&self, id: &str, secret: &str) -> Result<Principal, AuthError> {
        match &self.source {
            None => Err(AuthError::Invalid),
            Some(source) => self.check_parts(source, id, secret),
        }
    }

    /// The caller of an AWS-signed request: the token whose id is the access key id, when the
    /// request carries that token's signature over `service` within the allowed clock skew
    /// (see [`crate::sigv4::verify`]). Anonymous and `sigv4 = "open"` authenticators accept it
    /// unchecked, with every scope.
    pub fn check_signed(&self, request: &sigv4::Received<'_>, authorization: &sigv4::Authorization, service: &str, now_ns: i64) -> Result<Principal, SignedAuthError> {
        let Some(source) = &self.source else { return Ok(Principal::anonymous()) };
        if self.sigv4 == Sigv4Mode::Open {
            return Ok(Principal { id: authorization.access_key_id.clone(), scopes: vec![Scope::Admin] });
        }
        let id = &authorization.access_key_id;
        let tokens = source.tokens();
        let token = tokens.get(id).ok_or(SignedAuthError::Signature(sigv4::SignatureError::UnknownKey))?;
        let secret = token.signing_secret.as_deref().ok_or_else(|| SignedAuthError::NotSigning(id.clone()))?;
        sigv4::verify(request, authorization, secret, service, now_ns).map_err(SignedAuthError::Signature)?;
        if let Some(expires) = token.expires {
            if expires <= Utc::now() {
                return Err(SignedAuthError::Expired(id.clone()));
            }
        }
        Ok(Principal { id: id.clone(), scopes: token.scopes.clone() })
    }

    fn check_bearer(&self, source: &TokenSource, bearer: &str) -> Result<Principal, AuthError> {
        let (id, secret) = bearer.split_once('.').ok_or(AuthError::Invalid)?;
        self.check_parts(source, id, secret)
    }

    fn check_parts(&self, source: &TokenSource, id: &str, secret: &str) -> Result<Principal, AuthError> {
        let tokens = source.tokens();
        let token = tokens.get(id).ok_or(AuthError::Invalid)?;
        let presented = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        if !constant_time_eq(presented.as_ref(), &token.secret_sha256) {
            return Err(AuthError::Invalid);
        }
        if let Some(expires) = token.expires {
            if expires <= Utc::now() {
                return Err(AuthError::Expired { id: id.to_string(), expired: expires.to_rfc3339() });
            }
        }
        Ok(Principal { id: id.to_string(), scopes: token.scopes.clone() })
    }
}

impl TokenSource {
    /// The tokens, re-read first when the file changed since it was last looked at (at most
    /// once per [`RECHECK`]). A file that cannot be read keeps the tokens last read, with a
    /// warning: a bad edit must not lock everyone out, nor let anyone in.
    fn tokens(&self) -> Arc<HashMap<String, KnownToken>> {
        let mut state = self.state.lock().expect("token state lock");
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            if modified != state.modified {
                match load_tokens(&self.path) {
                    Ok((modified, tokens)) => {
                        tracing::info!(path = %self.path.display(), tokens = tokens.len(), "token file changed; read again");
                        state.modified = modified;
                        state.tokens = Arc::new(tokens);
                    }
                    Err(error) => tracing::warn!(%error, "token file changed but cannot be read; keeping the tokens read before"),
                }
            }
        }
        state.tokens.clone()
    }
}

fn load_tokens(path: &Path) -> Result<(Option<SystemTime>, HashMap<String, KnownToken>), TokenFileError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let file = TokenFile::read(path)?;
    let invalid = |detail: String| TokenFileError::Invalid { path: path.display().to_string(), detail };
    let mut tokens = HashMap::new();
    for entry in file.tokens {
        let secret_sha256 = unhex(&entry.secret_sha256).filter(|h| h.len() == 32).ok_or_else(|| invalid(format!("token {}: secret_sha256 is not 64 hex digits", entry.id)))?;
        let scopes = entry.scopes.iter().map(|s| s.parse::<Scope>()).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
        tokens.insert(entry.id.clone(), KnownToken { secret_sha256, scopes, expires: entry.expires, signing_secret: entry.signing_secret });
    }
    Ok((modified, tokens))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Paths any caller may reach without a token: liveness and readiness probes only.
pub const PUBLIC_PATHS: &[&str] = &["/health", "/ready"];

/// Wraps `router` so that every request but those to [`PUBLIC_PATHS`] is authenticated first;
/// handlers find the caller as `axum::Extension<Principal>`. Refusals answer 401 with a stable
/// code before any handler runs.
pub fn require_token(router: axum::Router, authenticator: Arc<Authenticator>) -> axum::Router {
    router.layer(axum::middleware::from_fn(move |mut request: axum::extract::Request, next: axum::middleware::Next| {
        let authenticator = authenticator.clone();
        async move {
            if PUBLIC_PATHS.contains(&request.uri().path()) {
                return next.run(request).await;
            }
            let signed = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(sigv4::Authorization::parse);
            if let Some(authorization) = signed {
                return match authorization {
                    Ok(authorization) => serve_signed(request, authorization, &authenticator, next).await,
                    Err(error) => SignedAuthError::from(error).into_response(),
                };
            }
            match authenticator.authenticate(request.headers()) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    next.run(request).await
                }
                Err(error) => {
                    tracing::debug!(code = error.code(), path = request.uri().path(), "request refused");
                    error.into_response()
                }
            }
        }
    }))
}

/// Reads a signed request's body (it is signed too), checks the signature, and runs the request
/// as its signer, with the body put back.
async fn serve_signed(request: axum::extract::Request, authorization: sigv4::Authorization, authenticator: &Authenticator, next: axum::middleware::Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, SIGNED_BODY_BYTES_MAX).await else {
        return SignedAuthError::BodyTooLarge(SIGNED_BODY_BYTES_MAX).into_response();
    };
    let received = sigv4::Received {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        authority: parts.uri.authority().map(|a| a.as_str()),
        body: &body,
    };
    match authenticator.check_signed(&received, &authorization, SIGNING_SERVICE, crate::now_ns()) {
        Ok(principal) => {
            let mut request = axum::extract::Request::from_parts(parts, axum::body::Body::from(body));
            request.extensions_mut().insert(principal);
            request.extensions_mut().insert(AwsCaller { access_key_id: authorization.access_key_id, region: authorization.region });
            next.run(request).await
        }
        Err(error) => {
            tracing::info!(code = error.code(), key = %authorization.access_key_id, "signed request refused");
            error.into_response()
        }
    }
}

/// Limits every route of `router` to callers holding `scope` (403 `forbidden` otherwise). Apply
/// inside [`require_token`], which finds the caller.
pub fn with_scope<S: Clone + Send + Sync + 'static>(router: axum::Router<S>, scope: Scope) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
        let scope = scope.clone();
        async move {
            let checked = match request.extensions().get::<Principal>() {
                Some(principal) => principal.require(&scope),
                None => Err(AuthError::Missing),
            };
            match checked {
                Ok(()) => next.run(request).await,
                Err(error) => error.into_response(),
            }
        }
    }))
}

/// A handler's caller, as [`require_token`] found it; a route outside it is refused (401), never
/// served anonymously by mistake.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Principal, AuthError> {
        parts.extensions.get::<Principal>().cloned().ok_or(AuthError::Missing)
    }
}

/// The bearer token a client sends, read from a file (a token file line or the `{id}.{secret}`
/// alone, surrounding whitespace ignored): services that call other services keep theirs in a
/// file, never in a config value that might be logged.
pub fn read_bearer(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let bearer = text.trim();
    if bearer.is_empty() || bearer.contains(char::is_whitespace) || !bearer.contains('.') {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} does not hold one `ID.SECRET` token", path.display())));
    }
    Ok(bearer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn scopes_parse_and_print_back() {
        for text in ["admin", "service", "metrics", "fleet:read", "fleet:write", "*:read", "my:db:write"] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        for bad in ["", "fleet", "fleet:delete", ":read", "root"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn read_and_write_are_per_database() {
        let fleet_reader = Principal::with_scopes("t", scopes(&["fleet:read"]));
        assert!(fleet_reader.can_read("fleet") && !fleet_reader.can_read("plant") && !fleet_reader.can_write("fleet"));
        assert!(!fleet_reader.can_read_all() && !fleet_reader.is_admin());
        let everything_reader = Principal::with_scopes("t", scopes(&["*:read"]));
        assert!(everything_reader.can_read("plant") && everything_reader.can_read_all() && !everything_reader.can_write("plant"));
        let admin = Principal::with_scopes("t", scopes(&["admin"]));
        assert!(admin.can_read("x") && admin.can_write("x") && admin.has(&Scope::Service) && admin.has(&Scope::Metrics));
        assert_eq!(fleet_reader.require(&Scope::Admin).unwrap_err().code(), "forbidden");
    }

    fn headers(bearer: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {bearer}").parse().unwrap());
        headers
    }

    #[test]
    fn a_device_password_is_a_token_under_the_device_id_and_a_new_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device-passwords.toml");
        let mut file = TokenFile::default();
        let first = file.issue_with_id("plant.boiler-7", "device", &[Scope::Device], None).secret;
        let second = file.issue_with_id("plant.boiler-7", "device", &[Scope::Device], None).secret;
        file.write(&path).unwrap();
        assert_eq!(file.tokens.len(), 1, "one password per device");
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&second), "the file holds a secret");

        let auth = Authenticator::from_file(&path).unwrap();
        // Ids may hold dots: user name and password arrive apart.
        let principal = auth.check_secret("plant.boiler-7", &second).unwrap();
        assert!(principal.is_device() && !principal.is_admin());
        assert_eq!(auth.check_secret("plant.boiler-7", &first).unwrap_err(), AuthError::Invalid, "the older password");
        assert_eq!(auth.check_secret("plant.boiler-8", &second).unwrap_err(), AuthError::Invalid);
        assert_eq!(Authenticator::anonymous().check_secret("plant.boiler-7", &second).unwrap_err(), AuthError::Invalid, "no password file lets no one in");
    }

    #[test]
    fn a_token_is_checked_against_its_hash_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut file = TokenFile::default();
        let reader = file.issue("grafana", &scopes(&["fleet:read"]), None);
        let expired = file.issue("old", &scopes(&["admin"]), Some(Utc::now() - chrono::Duration::seconds(1)));
        file.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let secret = reader.bearer.split_once('.').unwrap().1;
        assert!(!text.contains(secret), "the file holds a secret");

        let auth = Authenticator::from_file(&path).unwrap();
        let principal = auth.authenticate(&headers(&reader.bearer)).unwrap();
        assert_eq!(principal.id, reader.entry.id);
        assert!(principal.can_read("fleet"));
        assert_eq!(auth.authenticate(&HeaderMap::new()).unwrap_err(), AuthError::Missing);
        let wrong_secret = format!("{}.{}", reader.entry.id, "0".repeat(64));
        assert_eq!(auth.authenticate(&headers(&wrong_secret)).unwrap_err(), AuthError::Invalid);
        assert_eq!(auth.authenticate(&headers("lt_nosuch.abc")).unwrap_err(), AuthError::Invalid);
        assert_eq!(auth.authenticate(&headers("no-dot")).unwrap_err(), AuthError::Invalid);
        assert_eq!(auth.authenticate(&headers(&expired.bearer)).unwrap_err().code(), "expired_credentials");
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(auth.authenticate(&basic).unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn a_revoked_token_is_refused_once_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut file = TokenFile::default();
        let token = file.issue("ci", &scopes(&["admin"]), None);
        file.write(&path).unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        assert!(auth.check(&token.bearer).is_ok());
        assert!(file.revoke(&token.entry.id));
        assert!(!file.revoke(&token.entry.id));
        file.write(&path).unwrap();
        // Force the re-check instead of waiting for it: the file's time may not have moved
        // within its resolution, so the test also resets the remembered time.
        {
            let source = auth.source.as_ref().unwrap();
            let mut state = source.state.lock().unwrap();
            state.checked = Instant::now() - RECHECK;
            state.modified = None;
        }
        assert_eq!(auth.check(&token.bearer).unwrap_err(), AuthError::Invalid);
    }

    /// A request signed like botocore signs one, with `secret`, at `amz_date`.
    fn signed_request(key: &str, secret: &str, amz_date: &str, body: &str) -> (HeaderMap, sigv4::Authorization) {
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:8080".parse().unwrap());
        headers.insert("x-amz-date", amz_date.parse().unwrap());
        headers.insert("x-amz-target", "Timestream_20181101.ListDatabases".parse().unwrap());
        let unsigned = sigv4::Authorization {
            access_key_id: key.into(),
            date: amz_date[..8].into(),
            region: "eu-west-1".into(),
            service: SIGNING_SERVICE.into(),
            signed_headers: vec!["host".into(), "x-amz-date".into(), "x-amz-target".into()],
            signature: String::new(),
        };
        let received = sigv4::Received { method: "POST", path: "/", query: "", headers: &headers, authority: None, body: body.as_bytes() };
        let canonical = sigv4::canonical_request(&received, &unsigned.signed_headers);
        let signature = sigv4::signature(secret, &unsigned, &sigv4::string_to_sign(amz_date, &unsigned.scope(), &canonical));
        (headers.clone(), sigv4::Authorization { signature, ..unsigned })
    }

    #[test]
    fn a_signing_token_checks_aws_signatures_and_a_bearer_only_token_cannot_sign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut file = TokenFile::default();
        let signer = file.issue_signing("boto3", &scopes(&["fleet:write"]), None);
        let bearer_only = file.issue("grafana", &scopes(&["fleet:read"]), None);
        file.write(&path).unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        let now = crate::now_ns();
        let amz_date = sigv4::format_amz_date(now);
        let body = r#"{"MaxResults": 20}"#;
        let check = |bearer: &str, secret: &str| {
            let id = bearer.split_once('.').unwrap().0;
            let (headers, authorization) = signed_request(id, secret, &amz_date, body);
            let received = sigv4::Received { method: "POST", path: "/", query: "", headers: &headers, authority: None, body: body.as_bytes() };
            auth.check_signed(&received, &authorization, SIGNING_SERVICE, now)
        };
        let signer_secret = signer.bearer.split_once('.').unwrap().1;
        let principal = check(&signer.bearer, signer_secret).unwrap();
        assert_eq!(principal.id, signer.entry.id);
        assert!(principal.can_write("fleet") && !principal.is_admin(), "the token's scopes apply");
        assert_eq!(check(&signer.bearer, &"0".repeat(64)).unwrap_err().code(), "InvalidSignatureException");
        assert_eq!(check("lt_nosuch.x", signer_secret).unwrap_err().code(), "UnrecognizedClientException");
        let bearer_secret = bearer_only.bearer.split_once('.').unwrap().1;
        assert_eq!(check(&bearer_only.bearer, bearer_secret).unwrap_err(), SignedAuthError::NotSigning(bearer_only.entry.id.clone()));
        // The bearer of a signing token still works as a bearer.
        assert!(auth.check(&signer.bearer).is_ok());
    }

    #[test]
    fn config_needs_tokens_or_an_explicit_anonymous() {
        assert!(AuthConfig::default().validate().is_ok());
        let none = AuthConfig { tokens_path: String::new(), ..AuthConfig::default() };
        assert_eq!(none.validate().unwrap_err().key, "auth.tokens_path");
        assert!(AuthConfig { tokens_path: String::new(), anonymous: true, ..AuthConfig::default() }.validate().is_ok());
        let missing = AuthConfig { tokens_path: "/nonexistent/tokens.toml".into(), ..AuthConfig::default() };
        assert!(missing.authenticator().err().unwrap().to_string().contains("/nonexistent/tokens.toml"));
    }
}
