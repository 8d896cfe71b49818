//! The agent's configuration: one TOML file (see `configs/edge-agent.example.toml`), every key overridable by
//! an environment variable `LODESTONE_AGENT__{SECTION}__{KEY}`. Loaded by
//! [`lodestone_kit::config::load`], which runs [`Validate::validate`]: values that parse but make
//! no sense are refused. Every `Default` here equals the documented default.

use std::net::SocketAddr;
use std::path::PathBuf;

use lodestone_kit::config::{InvalidValue, Validate};
use lodestone_kit::ShutdownConfig;
use lodestone_model::validate_name;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This agent's identity: the last level of its MQTT data topics and the `source.device_id`
    /// of its envelopes.
    pub device_id: String,
    /// Destination of readings that do not name one (`?database=` / `?table=` on HTTP writes, and
    /// the simulated sensors).
    pub database: String,
    pub table: String,
    /// `[shutdown] timeout_ms` bounds a clean shutdown: HTTP writes still running after it are
    /// abandoned (they were never acknowledged); a commit already in progress always finishes.
    pub shutdown: ShutdownConfig,
    /// `[tls]`: the HTTP listener's certificate (or `plaintext = true`), and the CA its calls trust.
    pub tls: lodestone_kit::tls::TlsConfig,
    /// `[auth]`: the token file every request but `/health` and `/ready` is checked against (or `anonymous = true`).
    pub auth: lodestone_kit::auth::AuthConfig,
    /// `[telemetry]`: traces and metrics over OTLP (off unless an endpoint is configured).
    pub telemetry: lodestone_kit::telemetry::TelemetryConfig,
    pub http: HttpConfig,
    pub outbox: OutboxConfig,
    pub mqtt: MqttConfig,
    pub forward: ForwardConfig,
    pub simulated: SimulatedConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the write API; port 0 picks a free port (the log line `listening on https://…`
    /// names the bound address).
    pub listen: SocketAddr,
    /// Largest request body; a larger one is refused with 413 `payload_too_large`.
    pub body_bytes_max: usize,
    /// Bytes of request bodies handled at once (each request claims its `Content-Length`, or
    /// `body_bytes_max` when sent in chunks); a request whose claim does not fit is answered 503
    /// `overloaded`. At least `body_bytes_max`.
    pub bodies_bytes_max: usize,
    /// Most records in one request; more is refused with 413 `too_many_records`.
    pub records_per_request_max: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Directory of the LMDB environment (created if missing).
    pub path: PathBuf,
    /// LMDB map size: the outbox file never grows past it. Writes are refused with 507
    /// `outbox_full` once the stored readings would take more than 90% of it (the rest is kept
    /// for LMDB's copy-on-write pages, so that acknowledgements can always delete).
    pub bytes_max: u64,
    /// What a write does when the outbox is full: `reject_new` refuses it (507 `outbox_full`,
    /// counted as `rejected`); `drop_oldest` deletes the oldest unacknowledged readings to make
    /// room (counted as `dropped`) and stores it.
    pub full_policy: FullPolicy,
    /// Most records the writer puts into one commit (one group commit, ~2 fsyncs). A single
    /// request larger than this is still committed whole.
    pub commit_batch_max: usize,
    /// Writes waiting for the next commit. At the bound, writers wait (backpressure); nothing is
    /// refused.
    pub pending_requests_max: usize,
}

/// The outbox's behaviour at its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse new writes; the caller keeps the reading and retries (backpressure).
    #[default]
    RejectNew,
    /// Keep the newest readings: delete the oldest unacknowledged ones to make room.
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// MQTT keep-alive; 0 turns it off, otherwise at least 1.
    pub keep_alive_s: u64,
    /// Defaults to `device_id`.
    pub client_id: Option<String>,
    /// Reconnect delays grow exponentially from the minimum to the maximum, with jitter.
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// PEM: the CA the bridge's certificate is checked against.
    pub ca_path: String,
    /// PEM: this agent's device certificate (`lodestone-admin tls device --id DEVICE_ID`): its
    /// identity on MQTT, which must be `device_id` (the client id).
    pub cert_path: String,
    pub key_path: String,
    /// Connect in plain text, without a certificate (only to a bridge with `mqtt.plaintext`).
    pub plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Most records in one published envelope.
    pub batch_records_max: usize,
    /// Most bytes in one published envelope (also the MQTT client's outgoing packet bound, plus
    /// room for the topic). The bridge's broker must accept packets this large.
    pub envelope_bytes_max: usize,
    /// Envelopes published but not yet acknowledged end to end. At the bound, forwarding waits
    /// for acks; readings keep accumulating in the outbox.
    pub inflight_envelopes_max: usize,
    /// When envelopes are in flight and no ack has advanced for this long, everything not yet
    /// acknowledged is sent again, from the oldest.
    pub ack_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedConfig {
    /// A built-in source of fake readings, written through the same path as HTTP writes.
    pub enabled: bool,
    /// Readings per tick, one per sensor (dimension `sensor` = `sensor-0`, `sensor-1`, …).
    pub sensors: usize,
    pub interval_ms: u64,
    pub measure_name: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            device_id: "edge-agent-1".into(),
            database: "iot".into(),
            table: "readings".into(),
            shutdown: ShutdownConfig::default(),
            tls: Default::default(),
            auth: Default::default(),
            telemetry: Default::default(),
            http: HttpConfig::default(),
            outbox: OutboxConfig::default(),
            mqtt: MqttConfig::default(),
            forward: ForwardConfig::default(),
            simulated: SimulatedConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8181)),
            body_bytes_max: 16 * 1024 * 1024,
            bodies_bytes_max: 64 * 1024 * 1024,
            records_per_request_max: 100_000,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            path: PathBuf::from("data/edge-agent/outbox"),
            bytes_max: 1 << 30,
            full_policy: FullPolicy::RejectNew,
            commit_batch_max: 10_000,
            pending_requests_max: 1024,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            keep_alive_s: 30,
            client_id: None,
            reconnect_backoff_min_ms: 100,
            reconnect_backoff_max_ms: 30_000,
            ca_path: "certs/ca.pem".into(),
            cert_path: "certs/device.pem".into(),
            key_path: "certs/device.key".into(),
            plaintext: false,
        }
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig { batch_records_max: 500, envelope_bytes_max: 256 * 1024, inflight_envelopes_max: 16, ack_timeout_ms: 30_000 }
    }
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig { enabled: false, sensors: 4, interval_ms: 1000, measure_name: "temperature".into() }
    }
}

/// Longest device id: it is part of every MQTT topic, which must fit beside an envelope in
/// the MQTT client's packet bound.
pub const DEVICE_ID_BYTES_MAX: usize = 128;

/// Smallest `envelope_bytes_max`: one record at the 2 KiB quota, with room for its envelope.
pub const ENVELOPE_BYTES_MIN: usize = 4096;

impl AgentConfig {
    /// The MQTT client id: `mqtt.client_id`, else the device id.
    pub fn client_id(&self) -> &str {
        self.mqtt.client_id.as_deref().filter(|id| !id.is_empty()).unwrap_or(&self.device_id)
    }

}

impl Validate for AgentConfig {
    /// Refuses values that parse but cannot work, naming the key.
    fn validate(&self) -> Result<(), InvalidValue> {
        let invalid = |key, detail: &str| Err(InvalidValue::new(key, detail));
        let device_ok = !self.device_id.is_empty() && self.device_id.len() <= DEVICE_ID_BYTES_MAX && !self.device_id.contains(['/', '+', '#']);
        if !device_ok {
            return invalid("device_id", "must be 1 to 128 bytes and hold no '/', '+' or '#'");
        }
        validate_name("database", &self.database).map_err(|detail| InvalidValue::new("database", detail))?;
        validate_name("table", &self.table).map_err(|detail| InvalidValue::new("table", detail))?;
        self.shutdown.validate()?;
        self.tls.validate()?;
        self.auth.validate()?;
        self.telemetry.validate()?;
        let positive: [(&'static str, u64); 7] = [
            ("http.body_bytes_max", self.http.body_bytes_max as u64),
            ("http.records_per_request_max", self.http.records_per_request_max as u64),
            ("outbox.commit_batch_max", self.outbox.commit_batch_max as u64),
            ("outbox.pending_requests_max", self.outbox.pending_requests_max as u64),
            ("forward.batch_records_max", self.forward.batch_records_max as u64),
            ("forward.inflight_envelopes_max", self.forward.inflight_envelopes_max as u64),
            ("forward.ack_timeout_ms", self.forward.ack_timeout_ms),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return invalid(key, "must be at least 1");
        }
        if self.http.bodies_bytes_max < self.http.body_bytes_max {
            return invalid("http.bodies_bytes_max", "must be at least http.body_bytes_max");
        }
        if self.forward.inflight_envelopes_max > usize::from(u16::MAX / 2) {
            return invalid("forward.inflight_envelopes_max", "must be at most 32767");
        }
        if self.forward.envelope_bytes_max < ENVELOPE_BYTES_MIN {
            return invalid("forward.envelope_bytes_max", "must be at least 4096");
        }
        if self.outbox.bytes_max < 1 << 20 {
            return invalid("outbox.bytes_max", "must be at least 1048576 (1 MiB)");
        }
        if self.mqtt.reconnect_backoff_min_ms == 0 || self.mqtt.reconnect_backoff_min_ms > self.mqtt.reconnect_backoff_max_ms {
            return invalid("mqtt.reconnect_backoff_min_ms", "must be at least 1 and at most mqtt.reconnect_backoff_max_ms");
        }
        if self.simulated.enabled && (self.simulated.sensors == 0 || self.simulated.interval_ms == 0) {
            return invalid("simulated", "sensors and interval_ms must be at least 1 when enabled");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_example_file_matches_them() {
        AgentConfig::default().validate().unwrap();
        let example = &lodestone_kit::config::crate_path("../configs/edge-agent.example.toml");
        let loaded: AgentConfig = lodestone_kit::config::load(Some(example.as_ref()), "LODESTONE_AGENT_TEST_UNUSED").unwrap();
        assert_eq!(loaded, AgentConfig::default());
    }

    #[test]
    fn bad_values_name_their_key() {
        let check = |edit: fn(&mut AgentConfig), key: &str| {
            let mut config = AgentConfig::default();
            edit(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        };
        check(|c| c.device_id = "a/b".into(), "device_id");
        check(|c| c.device_id = "d".repeat(DEVICE_ID_BYTES_MAX + 1), "device_id");
        check(|c| c.table = "x".into(), "table");
        check(|c| c.forward.inflight_envelopes_max = 0, "forward.inflight_envelopes_max");
        check(|c| c.forward.envelope_bytes_max = ENVELOPE_BYTES_MIN - 1, "forward.envelope_bytes_max");
        check(|c| c.mqtt.reconnect_backoff_min_ms = 40_000, "mqtt.reconnect_backoff_min_ms");
    }

    #[test]
    fn client_id_defaults_to_device_id() {
        let mut config = AgentConfig::default();
        assert_eq!(config.client_id(), "edge-agent-1");
        config.mqtt.client_id = Some("c".into());
        assert_eq!(config.client_id(), "c");
    }
}
