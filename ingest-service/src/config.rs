//! Configuration of an ingest worker; every key can be overridden by `LODESTONE_INGEST__…`.

use std::collections::BTreeMap;

use lodestone_kit::config::{non_empty, positive, InvalidValue, Validate};
use lodestone_kit::kafka::guarantee_overridden;
use lodestone_kit::ShutdownConfig;
use lodestone_store::StoreConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    pub persist: PersistConfig,
    pub tables: TablesConfig,
    pub maintenance: MaintenanceConfig,
    pub http: HttpConfig,
    pub shutdown: ShutdownConfig,
    /// `[tls]`: the HTTP listener's certificate (or `plaintext = true`), and the CA its calls trust.
    pub tls: lodestone_kit::tls::TlsConfig,
    /// `[auth]`: the token file every request but `/health` and `/ready` is checked against (or `anonymous = true`).
    pub auth: lodestone_kit::auth::AuthConfig,
    /// `[telemetry]`: traces and metrics over OTLP (off unless an endpoint is configured).
    pub telemetry: lodestone_kit::telemetry::TelemetryConfig,
}

impl Validate for IngestConfig {
    fn validate(&self) -> Result<(), InvalidValue> {
        let k = &self.kafka;
        non_empty("kafka.bootstrap_servers", &k.bootstrap_servers)?;
        non_empty("kafka.group_id", &k.group_id)?;
        non_empty("kafka.ingest_topic", &k.ingest_topic)?;
        non_empty("kafka.dead_letter_topic", &k.dead_letter_topic)?;
        if k.ingest_topic == k.dead_letter_topic {
            return Err(InvalidValue::new("kafka.dead_letter_topic", "must differ from kafka.ingest_topic"));
        }
        if let Some(name) = guarantee_overridden(k.properties.keys().map(String::as_str)) {
            return Err(InvalidValue::new(
                "kafka.properties",
                format!("must not set {name:?}: dead letters are delivered before offsets are committed only with an idempotent producer and acks=all"),
            ));
        }
        positive("persist.interval_ms", self.persist.interval_ms)?;
        positive("persist.hot_rows_max", self.persist.hot_rows_max as u64)?;
        positive("tables.memory_store_retention_hours", u64::from(self.tables.memory_store_retention_hours))?;
        positive("tables.magnetic_store_retention_days", u64::from(self.tables.magnetic_store_retention_days))?;
        if self.maintenance.enabled {
            positive("maintenance.interval_ms", self.maintenance.interval_ms)?;
            positive("maintenance.compact_input_bytes_max", self.maintenance.compact_input_bytes_max)?;
        }
        non_empty("http.listen", &self.http.listen)?;
        self.tls.validate()?;
        self.auth.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Run compaction and retention in this worker (safe with any number of workers).
    pub enabled: bool,
    /// Pause between two rounds.
    pub interval_ms: u64,
    /// A table-day partition is compacted once it has this many files.
    pub compact_files_min: usize,
    /// Most bytes of input one partition's compaction reads into memory.
    pub compact_input_bytes_max: u64,
    /// Replaced and expired files are deleted this long after they left the catalog.
    pub garbage_grace_ms: u64,
    /// A partition whose oldest fresh file is this old is compacted even below the file count.
    pub compact_fresh_age_ms: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: true,
            interval_ms: 10_000,
            compact_files_min: 8,
            compact_input_bytes_max: 256 * 1024 * 1024,
            garbage_grace_ms: 300_000,
            compact_fresh_age_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub ingest_topic: String,
    pub dead_letter_topic: String,
    /// This worker's static group membership (`group.instance.id`): a name unique in the group
    /// and stable across restarts, e.g. the host or pod name. A worker restarted within the
    /// session timeout takes its partitions back without a rebalance. Empty: dynamic membership.
    /// Needed on tansu 0.6.0, whose coordinator can leave a crashed member's partitions assigned
    /// to it for good (ARCHITECTURE.md, design notes).
    pub instance_id: String,
    /// Extra librdkafka properties for the consumer and the dead-letter producer.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PersistConfig {
    /// The hot tier is persisted (and offsets committed) at least this often.
    pub interval_ms: u64,
    /// Bound of the hot tier in rows; reaching it triggers a persist before more is consumed.
    pub hot_rows_max: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// Create a database and table on their first record (as InfluxDB does). When false, records
    /// for unknown tables are rejected with `table_not_found`.
    pub auto_create: bool,
    /// Retention properties of implicitly created tables.
    pub memory_store_retention_hours: u32,
    pub magnetic_store_retention_days: u32,
    pub magnetic_store_writes: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/health`, `/ready`, `/metrics` and `/v1/memory/{database}/{table}`.
    pub listen: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "lodestone-ingest".into(),
            ingest_topic: "lodestone.ingest".into(),
            dead_letter_topic: "lodestone.dead-letter".into(),
            instance_id: String::new(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig { interval_ms: 1_000, hot_rows_max: 1_000_000 }
    }
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig { auto_create: true, memory_store_retention_hours: 6, magnetic_store_retention_days: 73_000, magnetic_store_writes: false }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "127.0.0.1:9281".into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_holds_exactly_the_defaults() {
        let path = &lodestone_kit::config::crate_path("../configs/ingest-service.example.toml");
        let loaded: IngestConfig = lodestone_kit::config::load(Some(std::path::Path::new(path)), "LODESTONE_INGEST_EXAMPLE_TEST").unwrap();
        assert_eq!(loaded, IngestConfig::default());
    }

    #[test]
    fn values_that_cannot_work_are_refused_with_their_key() {
        let check = |edit: fn(&mut IngestConfig), key: &str| {
            let mut config = IngestConfig::default();
            edit(&mut config);
            assert_eq!(config.validate().map_err(|e| e.key), Err(key.to_string()));
        };
        assert!(IngestConfig::default().validate().is_ok());
        check(|c| c.persist.interval_ms = 0, "persist.interval_ms");
        check(|c| c.persist.hot_rows_max = 0, "persist.hot_rows_max");
        check(|c| c.maintenance.interval_ms = 0, "maintenance.interval_ms");
        check(|c| c.kafka.dead_letter_topic = c.kafka.ingest_topic.clone(), "kafka.dead_letter_topic");
        check(|c| c.kafka.properties = [("acks".to_string(), "1".to_string())].into(), "kafka.properties");
        check(|c| c.shutdown.timeout_ms = 0, "shutdown.timeout_ms");
    }
}
