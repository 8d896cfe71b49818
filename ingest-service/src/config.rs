//! Configuration of an ingest worker; every key can be overridden by `LODESTONE_INGEST__…`.

use std::collections::BTreeMap;

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
    /// to it for good (ARCHITECTURE.md, departures).
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
    /// Bound on the final persist and offset commit at shutdown (SIGINT/SIGTERM).
    pub shutdown_timeout_ms: u64,
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
    /// Address of `/health` and `/metrics`.
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
        PersistConfig { interval_ms: 1_000, hot_rows_max: 1_000_000, shutdown_timeout_ms: 7_000 }
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
        let path = &lodestone_model::config::crate_path("../configs/ingest-service.example.toml");
        let loaded: IngestConfig = lodestone_model::config::load(Some(std::path::Path::new(path)), "LODESTONE_INGEST_EXAMPLE_TEST").unwrap();
        assert_eq!(loaded, IngestConfig::default());
    }
}
