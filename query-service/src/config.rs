//! Configuration of the query service. Every key has the default shown in
//! `configs/query-service.example.toml` and can be overridden by `LODESTONE_QUERY__…` variables.

use lodestone_kit::config::{non_empty, positive, InvalidValue, Validate};
use lodestone_kit::ShutdownConfig;
use lodestone_store::StoreConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub memory: MemoryConfig,
    pub limits: LimitsConfig,
    /// `[shutdown] timeout_ms`: how long queries in flight at SIGINT/SIGTERM may still run.
    pub shutdown: ShutdownConfig,
    /// `[tls]`: the HTTP listener's certificate (or `plaintext = true`), and the CA its calls trust.
    pub tls: lodestone_kit::tls::TlsConfig,
    /// `[auth]`: the token file every request but `/health` and `/ready` is checked against (or `anonymous = true`).
    pub auth: lodestone_kit::auth::AuthConfig,
    /// `[telemetry]`: traces and metrics over OTLP (off unless an endpoint is configured).
    pub telemetry: lodestone_kit::telemetry::TelemetryConfig,
    /// `[timestream]`: Timestream's own API on the same listener.
    pub timestream: TimestreamConfig,
    /// `[kafka]`: where `WriteRecords` sends its records (none: it is refused).
    pub kafka: KafkaConfig,
    /// `[console]`: what the web console's pipeline page reads, and alert rules.
    pub console: ConsoleConfig,
}

/// The web console (`/console/`) and alert rules.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Base URLs of the broker-bridges and edge agents whose `/health` and `/metrics` the
    /// pipeline page shows (the ingest workers are `memory.workers`).
    pub bridges: Vec<String>,
    pub agents: Vec<String>,
    /// The console's URL in alert notifications; empty: the advertised URL and `/console/`.
    pub url: String,
    /// Evaluate the catalog's alert rules here (any number of services may; each evaluation runs once).
    pub alerts: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { bridges: Vec::new(), agents: Vec::new(), url: String::new(), alerts: true }
    }
}

/// Timestream's API (`POST /` with `X-Amz-Target: Timestream_20181101.*`), served beside the REST
/// API on `http.listen`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimestreamConfig {
    /// The URL `DescribeEndpoints` answers, with its scheme, as clients reach this service (a
    /// load balancer's, say). Empty: `https://` (or `http://` with `tls.plaintext`) and `http.listen`.
    pub advertised_url: String,
    /// The AWS account id in ARNs.
    pub account_id: String,
    /// The region in ARNs for a request that is not AWS-signed (a signed one names its own).
    pub region: String,
    /// How long `WriteRecords` waits for Kafka and then the ingest workers to apply its records;
    /// past it, 429 `ThrottlingException` (the records are in Kafka when Kafka acknowledged them;
    /// writing them again is safe).
    pub write_timeout_ms: u64,
    /// `WriteRecords` calls handled at once; one more is answered 429 `ThrottlingException` at once.
    pub writes_in_flight_max: usize,
}

impl Default for TimestreamConfig {
    fn default() -> Self {
        TimestreamConfig { advertised_url: String::new(), account_id: "000000000000".into(), region: "us-east-1".into(), write_timeout_ms: 10_000, writes_in_flight_max: 64 }
    }
}

/// The Kafka `WriteRecords` produces to: the ingest workers' topic.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Empty: `WriteRecords` is refused (`ValidationException`) and the service only reads.
    pub bootstrap_servers: String,
    pub ingest_topic: String,
    /// More librdkafka properties (TLS, SASL); `enable.idempotence` and `acks` cannot be changed.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig { bootstrap_servers: String::new(), ingest_topic: "lodestone.ingest".into(), properties: Default::default() }
    }
}

impl Validate for QueryConfig {
    fn validate(&self) -> Result<(), InvalidValue> {
        non_empty("http.listen", &self.http.listen)?;
        positive("memory.timeout_ms", self.memory.timeout_ms)?;
        let l = &self.limits;
        let positive_limits: [(&str, u64); 9] = [
            ("limits.query_timeout_ms", l.query_timeout_ms),
            ("limits.rows_max", l.rows_max as u64),
            ("limits.query_memory_bytes_max", l.query_memory_bytes_max as u64),
            ("limits.concurrent_queries_max", l.concurrent_queries_max as u64),
            ("limits.sql_bytes_max", l.sql_bytes_max as u64),
            ("limits.sql_operators_max", l.sql_operators_max as u64),
            ("limits.response_bytes_max", l.response_bytes_max as u64),
            ("limits.page_token_ttl_s", l.page_token_ttl_s),
            ("limits.paged_results_bytes_max", l.paged_results_bytes_max as u64),
        ];
        for (key, value) in positive_limits {
            positive(key, value)?;
        }
        for (key, urls) in [("memory.workers", &self.memory.workers), ("console.bridges", &self.console.bridges), ("console.agents", &self.console.agents)] {
            if let Some(url) = urls.iter().find(|url| !(url.starts_with("http://") || url.starts_with("https://"))) {
                return Err(InvalidValue::new(key, format!("{url:?} must be a base URL starting with http:// or https://")));
            }
        }
        positive("timestream.write_timeout_ms", self.timestream.write_timeout_ms)?;
        positive("timestream.writes_in_flight_max", self.timestream.writes_in_flight_max as u64)?;
        non_empty("timestream.account_id", &self.timestream.account_id)?;
        non_empty("timestream.region", &self.timestream.region)?;
        let url = &self.timestream.advertised_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(InvalidValue::new("timestream.advertised_url", format!("{url:?} must start with http:// or https:// (SDKs take an address without a scheme for https)")));
        }
        if let Some(key) = lodestone_kit::kafka::guarantee_overridden(self.kafka.properties.keys().map(String::as_str)) {
            return Err(InvalidValue::new("kafka.properties", format!("{key} cannot be changed: the answer to WriteRecords relies on it")));
        }
        non_empty("kafka.ingest_topic", &self.kafka.ingest_topic)?;
        self.tls.validate()?;
        self.auth.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()
    }
}

/// Where the rows not persisted yet are: the ingest workers, each serving its own memory.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Base URLs of the ingest workers' HTTP servers (e.g. "http://127.0.0.1:9281"). Empty: queries
    /// see only persisted rows (up to the workers' persist interval late).
    pub workers: Vec<String>,
    /// How long a query waits for one worker's rows. A worker that does not answer in time is
    /// skipped and the answer says so in `memory_workers_unreachable`.
    pub timeout_ms: u64,
    /// A file holding the token (`ID.SECRET`, scope `service`) sent to the workers. Empty: none
    /// is sent, and workers that require one answer 401 (logged, counted as unreachable).
    pub token_path: String,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { workers: Vec::new(), timeout_ms: 2_000, token_path: String::new() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the REST API listens on.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A query running longer is cancelled and answered with 408 `query_timeout`.
    pub query_timeout_ms: u64,
    /// Most rows one answer may have, over all its pages; a larger result is answered with 413
    /// `too_many_rows`. `max_rows` in a request only sets the page size.
    pub rows_max: usize,
    /// Memory one query may use for sorts, joins and aggregations; past it, 422 `memory_limit`.
    pub query_memory_bytes_max: usize,
    /// Queries running at once; one more is answered with 503 `too_many_queries`.
    pub concurrent_queries_max: usize,
    /// Largest SQL text accepted, in bytes.
    pub sql_bytes_max: usize,
    /// Most operators (`+`, `AND`, `::`, `JOIN`, `UNION`, …) in one statement: 413
    /// `sql_too_complex` beyond. It bounds the depth of the syntax tree ([`crate::complexity`]).
    pub sql_operators_max: usize,
    /// Most bytes (in memory, before encoding) one answer's page may carry: 413 `response_too_large`.
    pub response_bytes_max: usize,
    /// How long a `next_token` stays valid.
    pub page_token_ttl_s: u64,
    /// Memory for answers kept for paging; past it the oldest are dropped (`token_expired`).
    pub paged_results_bytes_max: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            memory: MemoryConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            tls: Default::default(),
            auth: Default::default(),
            telemetry: Default::default(),
            timestream: TimestreamConfig::default(),
            kafka: KafkaConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

impl QueryConfig {
    /// The console's URL, as alert notifications give it.
    pub fn console_url(&self) -> String {
        match self.console.url.as_str() {
            "" => format!("{}/console/", self.advertised_url()),
            url => url.to_string(),
        }
    }

    /// The URL `DescribeEndpoints` answers (see [`TimestreamConfig::advertised_url`]).
    pub fn advertised_url(&self) -> String {
        match self.timestream.advertised_url.as_str() {
            "" => format!("{}://{}", if self.tls.plaintext { "http" } else { "https" }, self.http.listen),
            url => url.trim_end_matches('/').to_string(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "127.0.0.1:8080".into() }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            query_timeout_ms: 30_000,
            rows_max: 100_000,
            query_memory_bytes_max: 512 * 1024 * 1024,
            concurrent_queries_max: 16,
            sql_bytes_max: 256 * 1024,
            sql_operators_max: 1_000,
            response_bytes_max: 64 * 1024 * 1024,
            page_token_ttl_s: 3_600,
            paged_results_bytes_max: 256 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_holds_exactly_the_defaults() {
        let path = &lodestone_kit::config::crate_path("../configs/query-service.example.toml");
        let loaded: QueryConfig = lodestone_kit::config::load(Some(std::path::Path::new(path)), "LODESTONE_QUERY_EXAMPLE_TEST").unwrap();
        assert_eq!(loaded, QueryConfig::default());
    }

    #[test]
    fn a_mistyped_key_is_refused_with_its_line() {
        let file = std::env::temp_dir().join(format!("query-config-{}.toml", std::process::id()));
        std::fs::write(&file, "[limits]\nrow_max = 5\n").unwrap();
        let error = lodestone_kit::config::load::<QueryConfig>(Some(&file), "LODESTONE_QUERY_TYPO_TEST").unwrap_err().to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(error.contains("line 2") && error.contains("row_max"), "{error}");
    }

    #[test]
    fn values_that_cannot_work_are_refused_with_their_key() {
        let check = |edit: fn(&mut QueryConfig), key: &str| {
            let mut config = QueryConfig::default();
            edit(&mut config);
            assert_eq!(config.validate().map_err(|e| e.key), Err(key.to_string()));
        };
        assert!(QueryConfig::default().validate().is_ok());
        check(|c| c.limits.concurrent_queries_max = 0, "limits.concurrent_queries_max");
        check(|c| c.limits.query_timeout_ms = 0, "limits.query_timeout_ms");
        check(|c| c.memory.workers = vec!["127.0.0.1:9281".into()], "memory.workers");
        check(|c| c.shutdown.timeout_ms = 0, "shutdown.timeout_ms");
        check(|c| c.timestream.advertised_url = "127.0.0.1:8080".into(), "timestream.advertised_url");
        check(|c| c.kafka.properties = [("acks".to_string(), "1".to_string())].into(), "kafka.properties");
    }
}
