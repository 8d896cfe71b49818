//! Rows the ingest workers hold in memory, not persisted yet: fetched per table and query from
//! each worker's `GET /v1/memory/{database}/{table}` as Arrow IPC, so that a write is visible
//! before it is persisted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::MemoryReservation;
use lodestone_store::TableRef;

use crate::config::MemoryConfig;

/// The HTTP client of the query service's calls to the other services: over HTTPS trusting
/// `[tls] ca_path` when `https`, with the token in `memory.token_path` (none when empty).
pub fn service_client(config: &MemoryConfig, tls: &lodestone_kit::tls::TlsConfig, https: bool) -> Result<reqwest::Client, MemoryClientError> {
    let client_tls = if https { tls.client()? } else { None };
    let http = match config.token_path.as_str() {
        "" => lodestone_kit::http::client(client_tls),
        path => {
            let bearer = lodestone_kit::auth::read_bearer(std::path::Path::new(path)).map_err(|source| MemoryClientError::Token { path: path.to_string(), source })?;
            lodestone_kit::http::client_with_token(client_tls, &bearer)
        }
    };
    Ok(http.build()?)
}

#[derive(Debug, Clone)]
pub struct MemoryClient {
    http: reqwest::Client,
    workers: Vec<String>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryClientError {
    #[error(transparent)]
    Tls(#[from] lodestone_kit::tls::TlsError),
    #[error("memory.token_path {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl MemoryClient {
    /// Calls `config.workers`, over HTTPS trusting `[tls] ca_path` where a worker's URL says
    /// `https://`, with the token in `memory.token_path` (none when empty).
    pub fn new(config: &MemoryConfig, tls: &lodestone_kit::tls::TlsConfig) -> Result<MemoryClient, MemoryClientError> {
        let any_https = config.workers.iter().any(|w| w.starts_with("https://"));
        Ok(MemoryClient {
            http: service_client(config, tls, any_https)?,
            workers: config.workers.iter().map(|w| w.trim_end_matches('/').to_string()).collect(),
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// No workers: queries read persisted rows only.
    pub fn none() -> MemoryClient {
        MemoryClient { http: reqwest::Client::new(), workers: Vec::new(), timeout: Duration::from_millis(MemoryConfig::default().timeout_ms) }
    }

    /// Every worker's unpersisted rows of `table` in `[from_ns, to_ns)`, fetched at once, with only
    /// `columns` (all when `None`). A worker that fails or does not answer within the timeout is
    /// skipped and counted in `unreachable`. What the answers hold counts against the query's
    /// memory in `reservation` as it arrives (the bytes read, or the rows decoded from them if
    /// more); past its pool the query fails with DataFusion's `ResourcesExhausted`
    /// (`memory_limit`) before the rest is read.
    pub async fn fetch(
        &self,
        table: &TableRef,
        from_ns: i64,
        to_ns: i64,
        columns: Option<&[String]>,
        unreachable: &AtomicUsize,
        reservation: &MemoryReservation,
    ) -> Result<Vec<RecordBatch>, DataFusionError> {
        let columns = columns.map(|names| serde_json::to_string(names).expect("JSON encoding of names cannot fail"));
        let requests = self.workers.iter().map(|worker| {
            let url = format!("{worker}/v1/memory/{}/{}?from_ns={from_ns}&to_ns={to_ns}", table.database, table.table);
            let columns = columns.clone();
            async move {
                let answer = async {
                    let mut request = self.http.get(&url).timeout(self.timeout);
                    if let Some(columns) = &columns {
                        request = request.query(&[("columns", columns)]);
                    }
                    let unreachable = |e: reqwest::Error| Fetch::Unreachable(e.to_string());
                    let mut response = request.send().await.map_err(unreachable)?;
                    if !response.status().is_success() {
                        return Err(Fetch::Unreachable(format!("{} {}", response.status(), response.text().await.unwrap_or_default())));
                    }
                    let mut body = Vec::new();
                    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
                        reservation.try_grow(chunk.len()).map_err(Fetch::OverLimit)?;
                        body.extend_from_slice(&chunk);
                    }
                    let batches = lodestone_store::decode_ipc(&body).map_err(|e| Fetch::Unreachable(e.to_string()))?;
                    let decoded: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
                    reservation.try_grow(decoded.saturating_sub(body.len())).map_err(Fetch::OverLimit)?;
                    Ok(batches)
                };
                answer.await.map_err(|error| (url, error))
            }
        });
        let mut batches = Vec::new();
        for answer in futures::future::join_all(requests).await {
            match answer {
                Ok(fetched) => batches.extend(fetched),
                Err((_, Fetch::OverLimit(error))) => return Err(error),
                Err((url, Fetch::Unreachable(error))) => {
                    tracing::warn!(%url, %error, "an ingest worker's memory is unreachable; its unpersisted rows are left out");
                    unreachable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(batches)
    }
}

impl MemoryClient {
    /// Whether any worker is configured: without one there is nobody to ask for a receipt.
    pub fn has_workers(&self) -> bool {
        !self.workers.is_empty()
    }

    /// The receipt of the message at `partition` and `offset` of the ingest topic, from the
    /// worker that applies it (see the workers' `GET /v1/receipts/{partition}/{offset}`): every
    /// worker is asked at once, and asked again while none holds the partition (a rebalance)
    /// or its owner has not applied it yet, until `deadline`. `None` at the deadline.
    pub async fn receipt(&self, partition: i32, offset: i64, deadline: tokio::time::Instant) -> Option<lodestone_model::Receipt> {
        /// How long to wait before asking again while no worker holds the partition.
        const UNASSIGNED_RETRY: Duration = Duration::from_millis(50);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return None;
            }
            let asks = self.workers.iter().map(|worker| {
                let url = format!("{worker}/v1/receipts/{partition}/{offset}?wait_ms={}", remaining.as_millis());
                async move {
                    let response = self.http.get(&url).timeout(remaining + Duration::from_secs(1)).send().await.ok()?;
                    match response.status().as_u16() {
                        200 => Some(Asked::Applied(response.json::<lodestone_model::Receipt>().await.ok()?)),
                        202 => Some(Asked::Pending),
                        _ => None,
                    }
                }
            });
            let answers = futures::future::join_all(asks).await;
            if let Some(receipt) = answers.iter().flatten().find_map(|a| match a {
                Asked::Applied(receipt) => Some(receipt.clone()),
                Asked::Pending => None,
            }) {
                return Some(receipt);
            }
            if !answers.iter().flatten().any(|a| matches!(a, Asked::Pending)) {
                tokio::time::sleep(UNASSIGNED_RETRY.min(remaining)).await;
            }
        }
    }
}

/// One worker's answer about a receipt.
enum Asked {
    Applied(lodestone_model::Receipt),
    /// It holds the partition and has not applied the message yet.
    Pending,
}

/// Why one worker's rows were not fetched.
enum Fetch {
    /// The worker failed or did not answer: the query goes on without its rows.
    Unreachable(String),
    /// Its rows would take the query past its memory limit: the query fails.
    OverLimit(DataFusionError),
}

/// What one query's tables found out about the workers.
#[derive(Debug, Default)]
pub struct MemoryReport {
    pub unreachable: AtomicUsize,
    /// Bytes of files and of workers' memory read so far.
    pub bytes_scanned: std::sync::atomic::AtomicU64,
}

pub type SharedReport = Arc<MemoryReport>;
