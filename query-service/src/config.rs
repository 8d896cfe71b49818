//! Configuration of the query service. Every key has the default shown in
//! `configs/query-service.example.toml` and can be overridden by `LODESTONE_QUERY__…` variables.


use lodestone_store::StoreConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub memory: MemoryConfig,
    pub limits: LimitsConfig,
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
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { workers: Vec::new(), timeout_ms: 2_000 }
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
    /// Most rows one response returns; a larger result is answered with 413 `too_many_rows`.
    pub rows_max: usize,
    /// Memory one query may use for sorts, joins and aggregations; past it, 507 `memory_limit`.
    pub query_memory_bytes_max: usize,
    /// Queries running at once; one more is answered with 503 `too_many_queries`.
    pub concurrent_queries_max: usize,
    /// Largest SQL text accepted, in bytes.
    pub sql_bytes_max: usize,
    /// Most bytes (in memory, before encoding) one answer's page may carry: 413 `response_too_large`.
    pub response_bytes_max: usize,
    /// How long a `next_token` stays valid.
    pub page_token_ttl_s: u64,
    /// Memory for answers kept for paging; past it the oldest are dropped (`token_expired`).
    pub paged_results_bytes_max: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig { http: HttpConfig::default(), store: StoreConfig::default(), memory: MemoryConfig::default(), limits: LimitsConfig::default() }
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
        let path = &lodestone_model::config::crate_path("../configs/query-service.example.toml");
        let loaded: QueryConfig = lodestone_model::config::load(Some(std::path::Path::new(path)), "LODESTONE_QUERY_EXAMPLE_TEST").unwrap();
        assert_eq!(loaded, QueryConfig::default());
    }

    #[test]
    fn a_mistyped_key_is_refused_with_its_line() {
        let file = std::env::temp_dir().join(format!("query-config-{}.toml", std::process::id()));
        std::fs::write(&file, "[limits]\nrow_max = 5\n").unwrap();
        let error = lodestone_model::config::load::<QueryConfig>(Some(&file), "LODESTONE_QUERY_TYPO_TEST").unwrap_err().to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(error.contains("line 2") && error.contains("row_max"), "{error}");
    }
}
