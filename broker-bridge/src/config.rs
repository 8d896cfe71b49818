//! The bridge's configuration (`configs/broker-bridge.example.toml` documents every key) and the embedded
//! broker's settings derived from it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use lodestone_kit::config::{ensure, InvalidValue, Validate};
use lodestone_kit::kafka::guarantee_overridden;
use lodestone_kit::ShutdownConfig;
use serde::Deserialize;

/// Environment variables `LODESTONE_BRIDGE__{SECTION}__{KEY}` override the file.
pub const ENV_PREFIX: &str = "LODESTONE_BRIDGE";

/// Smallest segment rumqttd accepts (it panics below 1 KiB).
const SEGMENT_BYTES_MIN: usize = 1024;

/// Per-device ack logs inside rumqttd: one 1 KiB segment plus one previous (about 30 acks). Acks
/// are cumulative, so a device that reads only the newest loses nothing; the small bound keeps
/// 20 000 subscribed devices within a few tens of MiB.
const ACK_FILTER: &str = "lodestone/v1/ack/+";
const ACK_SEGMENT_BYTES: usize = SEGMENT_BYTES_MIN;
const ACK_SEGMENTS_MAX: usize = 2;

/// Bounds on `kafka.bundle_bytes_max`: a bundle must fit librdkafka's default `message.max.bytes`
/// (1,000,000) with room for one more envelope's framing.
const BUNDLE_BYTES_MIN: usize = 1024;
const BUNDLE_BYTES_MAX: usize = 900_000;
const BUNDLE_LINGER_MS_MAX: u64 = 1000;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub mqtt: MqttConfig,
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub shutdown: ShutdownConfig,
    /// `[tls]`: the HTTP listener's certificate (or `plaintext = true`), and the CA its calls trust.
    pub tls: lodestone_kit::tls::TlsConfig,
    /// `[auth]`: the token file every request but `/health` and `/ready` is checked against (or `anonymous = true`).
    pub auth: lodestone_kit::auth::AuthConfig,
    /// `[telemetry]`: traces and metrics over OTLP (off unless an endpoint is configured).
    pub telemetry: lodestone_kit::telemetry::TelemetryConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The devices' listener: MQTT over TLS with client certificates, 3.1.1 and 5 on one port
    /// (the front, `front.rs`). Port 0 picks a free port (logged as `mqtt listening on ADDR`).
    pub listen: SocketAddr,
    /// Only with `plaintext`: a separate MQTT 5 listener (over TLS both versions share `listen`).
    pub listen_v5: Option<SocketAddr>,
    /// Serve MQTT in plain text, without device identities or topic rules: any client may
    /// publish anything and read every topic. Only where nothing else runs.
    pub plaintext: bool,
    /// PEM: the CA that issues device certificates (`lodestone-admin tls device`). The front
    /// presents the bridge's own `[tls]` certificate.
    pub device_ca_path: String,
    /// PEM: certificate revocation lists of the device CA (`lodestone-admin tls revoke`); a
    /// revoked certificate fails the handshake. Empty: none. Read again within a second of a
    /// change, as are the certificate and the device CA.
    pub crl_path: String,
    /// MQTT passwords for devices without a certificate (`lodestone-admin device-password`):
    /// user name = device id. Empty: every device needs a certificate.
    pub passwords_path: String,
    /// Which databases and tables devices may write (`[[mqtt.policies]]`: `devices` patterns,
    /// `write` = `"database/table"` patterns, `*` for any run of characters). None: no device may
    /// write anything.
    pub policies: Vec<crate::gate::PolicyRule>,
    /// Largest envelope payload accepted; a larger one goes to the dead-letter topic
    /// (`payload_too_large`) and the device stays connected.
    pub payload_bytes_max: usize,
    /// Largest MQTT packet rumqttd reads (payload + topic + properties). A bigger packet makes
    /// rumqttd close the connection: it must exceed `payload_bytes_max` by at least 1 KiB.
    pub packet_bytes_max: usize,
    /// Concurrent device connections; rumqttd refuses more.
    pub connections_max: usize,
    /// Unacknowledged QoS 1/2 packets per connection (rumqttd `max_inflight_count`).
    pub inflight_packets_max: usize,
    /// How long a new TCP connection may take to send CONNECT before it is closed.
    pub connect_timeout_ms: u16,
    /// rumqttd keeps publishes in memory only, in segments per subscription. The bridge's log
    /// holds at most `log_segment_bytes * (log_segments_max + 1)`; when the bridge falls further
    /// behind (Kafka backpressure) the oldest segment is dropped and its devices resend (they are
    /// never acked for what was dropped: see `acks`).
    pub log_segment_bytes: usize,
    pub log_segments_max: usize,
    /// Distinct data topics devices may publish on (rumqttd keeps state for each, forever); a
    /// publish on one more is refused and its connection closed (metric denied `topics_max`).
    /// Checked by the TLS front, so not with `plaintext`.
    pub topics_max: usize,
    /// Per-device sequence watermarks kept to detect gaps. At the bound, devices with nothing in
    /// flight are forgotten; their next envelope starts a new watermark.
    pub devices_tracked_max: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listen_v5: None,
            plaintext: false,
            device_ca_path: "certs/ca.pem".into(),
            crl_path: String::new(),
            passwords_path: String::new(),
            policies: Vec::new(),
            payload_bytes_max: 262_144,
            packet_bytes_max: 524_288,
            connections_max: 20_000,
            inflight_packets_max: 100,
            connect_timeout_ms: 10_000,
            log_segment_bytes: 16 * 1024 * 1024,
            log_segments_max: 4,
            devices_tracked_max: 100_000,
            topics_max: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub ingest_topic: String,
    pub dead_letter_topic: String,
    /// Envelopes read from MQTT whose Kafka delivery is not yet known. At the bound the bridge
    /// stops reading from the broker (backpressure).
    pub inflight_envelopes_max: usize,
    /// Payload bytes of those envelopes; same behaviour at the bound.
    pub inflight_bytes_max: usize,
    /// librdkafka `message.timeout.ms`: how long a message is retried while Kafka is unreachable
    /// before its envelope counts as failed (not acked; the device resends).
    pub message_timeout_ms: u64,
    /// Envelopes bound for one partition travel together in one Kafka message (a bundle, content
    /// type `application/vnd.lodestone.bundle.v1+cbor`), sealed at this many envelopes, ...
    /// `1` turns bundling off: each envelope is its own message, keyed by device id.
    pub bundle_envelopes_max: usize,
    /// ... before the next envelope would take it past this many bytes (an envelope larger than
    /// this travels alone; keep it well under the producer's `message.max.bytes`, 1,000,000) ...
    pub bundle_bytes_max: usize,
    /// ... or this long after its first envelope: what bundling adds to latency at low rates.
    pub bundle_linger_ms: u64,
    /// Extra librdkafka producer properties, applied last: they may override the above and the
    /// bridge's own `linger.ms=5`, but not the settings acks depend on ([`lodestone_kit::kafka::GUARANTEE_PROPERTIES`]).
    pub properties: BTreeMap<String, PropertyValue>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            ingest_topic: "lodestone.ingest".into(),
            dead_letter_topic: "lodestone.dead-letter".into(),
            inflight_envelopes_max: 10_000,
            inflight_bytes_max: 256 * 1024 * 1024,
            message_timeout_ms: 300_000,
            bundle_envelopes_max: 1000,
            bundle_bytes_max: 256 * 1024,
            bundle_linger_ms: 10,
            properties: BTreeMap::new(),
        }
    }
}

/// A librdkafka property value: written as a TOML string, integer, float or boolean (environment
/// overrides such as `LODESTONE_BRIDGE__KAFKA__PROPERTIES__BATCH_SIZE=1000` arrive as integers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

impl std::fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyValue::Text(v) => f.write_str(v),
            PropertyValue::Integer(v) => write!(f, "{v}"),
            PropertyValue::Float(v) => write!(f, "{v}"),
            PropertyValue::Boolean(v) => write!(f, "{v}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/health` and `/metrics`. Port 0 picks a free port (logged as `listening on https://ADDR`).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 9181)) }
    }
}

impl Validate for BridgeConfig {
    /// Checks the bounds that serde cannot: each error names the key.
    fn validate(&self) -> Result<(), InvalidValue> {
        self.shutdown.validate()?;
        self.tls.validate()?;
        self.auth.validate()?;
        self.telemetry.validate()?;
        let (m, k) = (&self.mqtt, &self.kafka);
        let names: Vec<String> = k.properties.keys().map(|name| name.replace('_', ".")).collect();
        let overridden = guarantee_overridden(names.iter().map(String::as_str));
        let min = |bound: &str| format!("must be at least {bound}");
        ensure(overridden.is_none(), "kafka.properties", || {
            format!(
                "must not set {:?}: acks promise durability only with an idempotent producer and acks=all",
                overridden.unwrap_or_default()
            )
        })?;
        ensure(m.plaintext || m.listen_v5.is_none(), "mqtt.listen_v5", || "is only for mqtt.plaintext = true; over TLS, MQTT 5 is served on mqtt.listen".into())?;
        ensure(m.plaintext || !m.device_ca_path.is_empty(), "mqtt.device_ca_path", || "must name the device CA (or set mqtt.plaintext = true)".into())?;
        for rule in &m.policies {
            let bad = rule.write.iter().find(|target| !target.contains('/'));
            ensure(bad.is_none(), "mqtt.policies", || format!("write target {:?} must be \"database/table\"", bad.cloned().unwrap_or_default()))?;
        }
        ensure(m.payload_bytes_max >= 1, "mqtt.payload_bytes_max", || min("1"))?;
        let packet_min = m.payload_bytes_max.saturating_add(1024);
        ensure(m.packet_bytes_max >= packet_min, "mqtt.packet_bytes_max", || min(&format!("mqtt.payload_bytes_max + 1024 = {packet_min}")))?;
        ensure(m.connections_max >= 1, "mqtt.connections_max", || min("1"))?;
        ensure(m.inflight_packets_max >= 1, "mqtt.inflight_packets_max", || min("1"))?;
        ensure(m.log_segment_bytes >= SEGMENT_BYTES_MIN, "mqtt.log_segment_bytes", || min(&SEGMENT_BYTES_MIN.to_string()))?;
        ensure(m.log_segments_max >= 1, "mqtt.log_segments_max", || min("1"))?;
        ensure(m.devices_tracked_max >= 1, "mqtt.devices_tracked_max", || min("1"))?;
        ensure(m.topics_max >= 1, "mqtt.topics_max", || min("1"))?;
        ensure(!k.bootstrap_servers.trim().is_empty(), "kafka.bootstrap_servers", || "must not be empty".into())?;
        let topics_ok = !k.ingest_topic.is_empty() && !k.dead_letter_topic.is_empty() && k.ingest_topic != k.dead_letter_topic;
        ensure(topics_ok, "kafka.ingest_topic", || "and kafka.dead_letter_topic must be set and differ".into())?;
        let between = |low: &str, high: &str| format!("must be between {low} and {high}");
        ensure((1..=u32::MAX as usize).contains(&k.inflight_envelopes_max), "kafka.inflight_envelopes_max", || between("1", "4294967295"))?;
        ensure((m.packet_bytes_max..=u32::MAX as usize).contains(&k.inflight_bytes_max), "kafka.inflight_bytes_max", || {
            between(&format!("mqtt.packet_bytes_max ({})", m.packet_bytes_max), "4294967295")
        })?;
        ensure((1..=k.inflight_envelopes_max).contains(&k.bundle_envelopes_max), "kafka.bundle_envelopes_max", || {
            between("1", "kafka.inflight_envelopes_max")
        })?;
        ensure((BUNDLE_BYTES_MIN..=BUNDLE_BYTES_MAX).contains(&k.bundle_bytes_max), "kafka.bundle_bytes_max", || {
            between(&BUNDLE_BYTES_MIN.to_string(), &BUNDLE_BYTES_MAX.to_string())
        })?;
        ensure(k.bundle_linger_ms <= BUNDLE_LINGER_MS_MAX, "kafka.bundle_linger_ms", || format!("must be at most {BUNDLE_LINGER_MS_MAX}"))
    }
}

impl BridgeConfig {
    /// rumqttd's configuration, with plain-text listeners on `listeners` (3.1.1, and 5 if given;
    /// concrete, non-zero ports) or none (the TLS front links sessions in-process).
    pub fn rumqttd_config(&self, listeners: Option<(SocketAddr, Option<SocketAddr>)>) -> rumqttd::Config {
        let m = &self.mqtt;
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: m.connect_timeout_ms,
            max_payload_size: m.packet_bytes_max,
            max_inflight_count: m.inflight_packets_max,
            auth: None,
            external_auth: None,
            // Without dynamic filters rumqttd disconnects a client that publishes to a topic no
            // one subscribes to; the bridge subscribes to `#`, so every topic has a filter.
            dynamic_filters: false,
        };
        let server = |name: &str, listen| rumqttd::ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: connections.clone(),
        };
        let ack_segments = rumqttd::SegmentConfig { max_segment_size: ACK_SEGMENT_BYTES, max_segment_count: ACK_SEGMENTS_MAX };
        rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                // The bridge's own link and the readiness probe are connections too.
                max_connections: m.connections_max + 2,
                max_outgoing_packet_count: 200,
                max_segment_size: m.log_segment_bytes,
                max_segment_count: m.log_segments_max,
                custom_segment: Some(HashMap::from([(ACK_FILTER.to_string(), ack_segments)])),
                initialized_filters: None,
                ..Default::default()
            },
            v4: listeners.map(|(listen, _)| HashMap::from([("1".to_string(), server("mqtt-v4", listen))])),
            v5: listeners.and_then(|(_, listen_v5)| listen_v5).map(|addr| HashMap::from([("1".to_string(), server("mqtt-v5", addr))])),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edit: impl FnOnce(&mut BridgeConfig), expected: Result<(), &str>) {
        let mut config = BridgeConfig::default();
        edit(&mut config);
        let got = config.validate().map_err(|e| e.to_string());
        match expected {
            Ok(()) => assert!(got.is_ok(), "{got:?}"),
            Err(key) => assert!(got.as_ref().is_err_and(|e| e.contains(key)), "expected an error naming {key}, got {got:?}"),
        }
    }

    #[test]
    fn bounds() {
        check(|_| {}, Ok(()));
        check(|c| c.mqtt.packet_bytes_max = c.mqtt.payload_bytes_max + 1024, Ok(()));
        check(|c| c.mqtt.packet_bytes_max = c.mqtt.payload_bytes_max + 1023, Err("mqtt.packet_bytes_max"));
        check(|c| c.mqtt.log_segment_bytes = 1024, Ok(()));
        check(|c| c.mqtt.log_segment_bytes = 1023, Err("mqtt.log_segment_bytes"));
        check(|c| c.mqtt.log_segments_max = 0, Err("mqtt.log_segments_max"));
        check(|c| c.kafka.inflight_envelopes_max = 0, Err("kafka.inflight_envelopes_max"));
        check(|c| c.kafka.inflight_bytes_max = c.mqtt.packet_bytes_max, Ok(()));
        check(|c| c.kafka.inflight_bytes_max = c.mqtt.packet_bytes_max - 1, Err("kafka.inflight_bytes_max"));
        check(|c| c.kafka.dead_letter_topic = c.kafka.ingest_topic.clone(), Err("kafka.dead_letter_topic"));
        check(|c| c.kafka.bootstrap_servers = " ".into(), Err("kafka.bootstrap_servers"));
        check(|c| c.kafka.bundle_envelopes_max = 1, Ok(()));
        check(|c| c.kafka.bundle_envelopes_max = 0, Err("kafka.bundle_envelopes_max"));
        check(|c| c.kafka.bundle_envelopes_max = c.kafka.inflight_envelopes_max, Ok(()));
        check(|c| c.kafka.bundle_envelopes_max = c.kafka.inflight_envelopes_max + 1, Err("kafka.bundle_envelopes_max"));
        check(|c| c.kafka.bundle_bytes_max = 900_000, Ok(()));
        check(|c| c.kafka.bundle_bytes_max = 900_001, Err("kafka.bundle_bytes_max"));
        check(|c| c.kafka.bundle_bytes_max = 1023, Err("kafka.bundle_bytes_max"));
        check(|c| c.kafka.bundle_linger_ms = 1000, Ok(()));
        check(|c| c.kafka.bundle_linger_ms = 1001, Err("kafka.bundle_linger_ms"));
        check(|c| c.kafka.properties = [("batch_size".into(), PropertyValue::Integer(1000))].into(), Ok(()));
        for name in ["acks", "request_required_acks", "enable.idempotence"] {
            check(|c| c.kafka.properties = [(name.into(), PropertyValue::Text("1".into()))].into(), Err("kafka.properties must not set"));
        }
    }

    #[test]
    fn example_file_is_the_defaults() {
        let path = &lodestone_kit::config::crate_path("../configs/broker-bridge.example.toml");
        let loaded: BridgeConfig = lodestone_kit::config::load(Some(path.as_ref()), "LODESTONE_BRIDGE_TEST_EXAMPLE").unwrap();
        assert_eq!(loaded, BridgeConfig::default());
    }

    #[test]
    fn environment_overrides_and_properties() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "[kafka.properties]\n\"compression.type\" = \"zstd\"\n").unwrap();
        std::env::set_var("LODESTONE_BRIDGE_TEST_ENV__MQTT__LISTEN", "127.0.0.1:1884");
        std::env::set_var("LODESTONE_BRIDGE_TEST_ENV__KAFKA__PROPERTIES__BATCH_SIZE", "1000");
        let loaded: BridgeConfig = lodestone_kit::config::load(Some(file.path()), "LODESTONE_BRIDGE_TEST_ENV").unwrap();
        assert_eq!(loaded.mqtt.listen, "127.0.0.1:1884".parse().unwrap());
        let properties: Vec<(String, String)> = loaded.kafka.properties.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        assert_eq!(properties, vec![("batch_size".into(), "1000".into()), ("compression.type".into(), "zstd".into())]);
    }

    #[test]
    fn unknown_key_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "[mqtt]\npayload_byte_max = 5\n").unwrap();
        let err = lodestone_kit::config::load::<BridgeConfig>(Some(file.path()), "LODESTONE_BRIDGE_TEST_UNKNOWN").unwrap_err();
        assert!(err.to_string().contains("payload_byte_max"), "{err}");
    }
}
