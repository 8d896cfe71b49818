//! Runs one SQL query against the latest catalog snapshot, within the configured limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use lodestone_kit::auth::{AuthError, Principal};
use lodestone_store::{Snapshot, Store, StoreError, TableRef};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::LimitsConfig;
use crate::measure_value::resolve_typed_columns;
use crate::memory::{MemoryClient, SharedReport};
use crate::table::StoreTable;

/// Why a query got no answer. Each variant has a stable code and an HTTP status (see
/// [`QueryError::code`] and [`QueryError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    InvalidSql(String),
    #[error("only queries (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) are allowed: {0}")]
    StatementNotAllowed(String),
    #[error("SQL text is {bytes} bytes, at most {max} allowed")]
    SqlTooLarge { bytes: usize, max: usize },
    #[error("the statement has {operators} operators, at most {max} allowed; split it, or use IN (…) for long lists of alternatives")]
    SqlTooComplex { operators: usize, max: usize },
    #[error("query ran longer than {timeout_ms} ms and was cancelled")]
    Timeout { timeout_ms: u64 },
    #[error("query returns more than {max} rows; add a LIMIT or a narrower time range")]
    TooManyRows { max: usize },
    /// `detail` is DataFusion's account of the failed reservation; it goes to the log, not to the
    /// caller (it varies from run to run).
    #[error("query needs more than {max_bytes} bytes of memory; narrow the time range, aggregate more, or select fewer columns")]
    MemoryLimit { max_bytes: usize, detail: String },
    #[error("{running} queries are already running; retry later")]
    TooManyQueries { running: usize },
    #[error("a page of {bytes} bytes is more than the {max} bytes one answer may carry; ask for fewer rows (max_rows) or columns")]
    ResponseTooLarge { bytes: usize, max: usize },
    #[error("the page takes more than the {max} bytes one answer may carry once written as text; ask for fewer rows (max_rows) or columns")]
    TextTooLarge { max: usize },
    #[error("query {0} was cancelled")]
    Cancelled(String),
    #[error("next_token is unknown or expired (tokens stay valid {ttl_s} s, on the query service that issued them)")]
    TokenExpired { ttl_s: u64 },
    /// A page token presented with another statement than the one that made it.
    #[error("next_token belongs to another query string")]
    TokenMismatch,
    /// The caller's token may not read a table the statement touches.
    #[error(transparent)]
    Forbidden(#[from] AuthError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::InvalidSql(_) => "invalid_sql",
            QueryError::Cancelled(_) => "query_cancelled",
            QueryError::ResponseTooLarge { .. } | QueryError::TextTooLarge { .. } => "response_too_large",
            QueryError::TokenExpired { .. } => "token_expired",
            QueryError::TokenMismatch => "token_mismatch",
            QueryError::StatementNotAllowed(_) => "statement_not_allowed",
            QueryError::SqlTooLarge { .. } => "sql_too_large",
            QueryError::SqlTooComplex { .. } => "sql_too_complex",
            QueryError::Timeout { .. } => "query_timeout",
            QueryError::TooManyRows { .. } => "too_many_rows",
            QueryError::MemoryLimit { .. } => "memory_limit",
            QueryError::TooManyQueries { .. } => "too_many_queries",
            QueryError::Forbidden(error) => error.code(),
            QueryError::Store(_) => "store_error",
            QueryError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            QueryError::InvalidSql(_) | QueryError::StatementNotAllowed(_) | QueryError::Cancelled(_) | QueryError::TokenMismatch => 400,
            QueryError::TokenExpired { .. } => 410,
            QueryError::Timeout { .. } => 408,
            QueryError::SqlTooLarge { .. } | QueryError::SqlTooComplex { .. } | QueryError::TooManyRows { .. } | QueryError::ResponseTooLarge { .. } | QueryError::TextTooLarge { .. } => 413,
            QueryError::MemoryLimit { .. } => 422,
            QueryError::TooManyQueries { .. } => 503,
            QueryError::Forbidden(error) => error.status().as_u16(),
            QueryError::Store(_) | QueryError::Internal(_) => 500,
        }
    }

    fn from_datafusion(error: DataFusionError, limits: &LimitsConfig) -> QueryError {
        match error.find_root() {
            DataFusionError::ResourcesExhausted(detail) => {
                tracing::info!(%detail, "a query reached its memory limit");
                QueryError::MemoryLimit { max_bytes: limits.query_memory_bytes_max, detail: detail.clone() }
            }
            DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => {
                QueryError::InvalidSql(error.find_root().to_string())
            }
            _ => QueryError::Internal(error.to_string()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// A query's answer, in the JSON shape of `POST /v1/query`.
#[derive(Debug, Serialize)]
pub struct QueryResult {
    pub query_id: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub row_count: usize,
    pub elapsed_ms: u64,
    /// Bytes of Parquet files and of workers' memory the query read.
    pub bytes_scanned: u64,
    /// Ingest workers whose unpersisted rows could not be fetched: when not 0, the answer may
    /// miss rows written in the last persist interval.
    pub memory_workers_unreachable: usize,
    /// Present when more rows follow: pass it as `next_token` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

impl QueryResult {
    pub fn of(page: &Page) -> Result<QueryResult, QueryError> {
        let (columns, rows) = render(&page.batch, page.text_bytes_max)?;
        Ok(QueryResult {
            query_id: page.query_id.clone(),
            row_count: rows.len(),
            columns,
            rows,
            elapsed_ms: page.elapsed_ms,
            bytes_scanned: page.bytes_scanned,
            memory_workers_unreachable: page.memory_workers_unreachable,
            next_token: page.next_token.clone(),
        })
    }
}

/// One page of a query's answer.
#[derive(Debug, Clone)]
pub struct Page {
    pub query_id: String,
    pub batch: RecordBatch,
    /// Where the page starts among the answer's rows, and how many rows the answer has.
    pub offset: usize,
    pub total_rows: usize,
    pub elapsed_ms: u64,
    pub bytes_scanned: u64,
    pub memory_workers_unreachable: usize,
    pub next_token: Option<String>,
    /// The most bytes the page may take as JSON or CSV text (`limits.response_bytes_max`, the
    /// bound on its Arrow data too): text can be several times larger than the data it renders.
    pub text_bytes_max: usize,
}

/// Why a rendering stopped: the text grew past its bound.
#[derive(Debug)]
pub struct TextTooLarge;

impl std::fmt::Display for TextTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the rendered answer grew past its bound")
    }
}

impl std::error::Error for TextTooLarge {}

/// A buffer that refuses to grow past `max` bytes (an `io::Error` wrapping [`TextTooLarge`]),
/// so that rendering a page stops as soon as its text is too large.
pub struct BoundedText {
    pub text: Vec<u8>,
    max: usize,
}

impl BoundedText {
    pub fn new(max: usize) -> BoundedText {
        BoundedText { text: Vec::new(), max }
    }

    /// Whether `error` (from a writer over this buffer) is this bound.
    pub fn is_bound(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = source {
            if error.is::<TextTooLarge>() {
                return true;
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if io.get_ref().is_some_and(|inner| inner.is::<TextTooLarge>()) {
                    return true;
                }
            }
            source = error.source();
        }
        false
    }
}

impl std::io::Write for BoundedText {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.text.len().saturating_add(bytes.len()) > self.max {
            return Err(std::io::Error::other(TextTooLarge));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running query, as `GET /v1/queries/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub query_id: String,
    pub sql: String,
    pub state: &'static str,
    pub elapsed_ms: u64,
    pub bytes_scanned: u64,
    pub rows: u64,
}

struct Running {
    /// The token that started it: the only one that may follow or cancel it.
    owner: String,
    sql: String,
    started: Instant,
    report: SharedReport,
    rows: Arc<std::sync::atomic::AtomicU64>,
    abort: futures::future::AbortHandle,
}

/// The rest of an answer, after a page: all its rows, where the next page starts, and when the
/// token expires.
struct Paged {
    /// The token that ran the query: the only one its page tokens serve.
    owner: String,
    query_id: String,
    /// The statement that made the answer (Timestream's clients send it with every page).
    sql: Arc<str>,
    rows: RecordBatch,
    offset: usize,
    expires: Instant,
    bytes_scanned: u64,
}

pub struct Engine {
    store: Store,
    limits: LimitsConfig,
    running: Semaphore,
    memory: MemoryClient,
    queries: std::sync::Mutex<std::collections::HashMap<String, Running>>,
    pages: std::sync::Mutex<std::collections::HashMap<String, Paged>>,
    /// Queries cancelled while their pages were kept, until their tokens would have expired:
    /// their tokens then answer `query_cancelled` rather than `token_expired`.
    cancelled: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    metrics: crate::metrics::Metrics,
    executor: Option<tokio::runtime::Handle>,
}

impl Engine {
    pub fn new(store: Store, limits: LimitsConfig) -> Engine {
        let running = Semaphore::new(limits.concurrent_queries_max);
        let (queries, pages, cancelled, metrics) = Default::default();
        Engine { store, limits, running, memory: MemoryClient::none(), queries, pages, cancelled, metrics, executor: None }
    }

    /// Executes queries' plans on `executor`, a runtime of their own, so that a query busy in
    /// long batches on every core never holds up the runtime that answers HTTP (`/health`, new
    /// requests, cancels). Without one, plans run on the caller's runtime.
    pub fn with_executor(mut self, executor: tokio::runtime::Handle) -> Engine {
        self.executor = Some(executor);
        self
    }

    /// Unions every table with the rows the ingest workers hold in memory.
    pub fn with_memory(mut self, memory: MemoryClient) -> Engine {
        self.memory = memory;
        self
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.limits.concurrent_queries_max.saturating_sub(self.running.available_permits())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `sql` with every scope and answers its first page as JSON (see [`Engine::query`]):
    /// for benchmarks and tests that hold the engine in process.
    pub async fn run(&self, sql: &str, max_rows: Option<usize>) -> Result<QueryResult, QueryError> {
        QueryResult::of(&self.query(sql, max_rows, None, &Principal::anonymous()).await?)
    }

    /// Runs `sql` against the latest catalog snapshot, as query `query_id` (a fresh id when
    /// `None`). The answer may have at most `rows_max` rows; it comes in pages of `max_rows`
    /// (default and bound: `rows_max`), the first one now and the others by
    /// [`Engine::next_page`]. Every table the statement reads must be readable by `caller`.
    pub async fn query(&self, sql: &str, max_rows: Option<usize>, query_id: Option<String>, caller: &Principal) -> Result<Page, QueryError> {
        self.query_cut(sql, max_rows, query_id, caller, whole_page).await.map(|(page, ())| page)
    }

    /// [`Engine::query`] whose first page is rendered by `render`, which may take fewer rows than
    /// it is given (a byte bound on the rendered page, say): it returns how many it took and what
    /// it made of them, and the next page starts after those.
    pub async fn query_cut<T>(
        &self,
        sql: &str,
        max_rows: Option<usize>,
        query_id: Option<String>,
        caller: &Principal,
        render: impl FnOnce(&RecordBatch) -> Result<(usize, T), QueryError>,
    ) -> Result<(Page, T), QueryError> {
        if sql.len() > self.limits.sql_bytes_max {
            return Err(QueryError::SqlTooLarge { bytes: sql.len(), max: self.limits.sql_bytes_max });
        }
        // Also checked by `parse_statement`, but here before the query takes a slot.
        let operators = crate::complexity::operator_count(sql).map_err(QueryError::InvalidSql)?;
        if operators > self.limits.sql_operators_max {
            return Err(QueryError::SqlTooComplex { operators, max: self.limits.sql_operators_max });
        }
        let _permit = self.running.try_acquire().map_err(|_| QueryError::TooManyQueries { running: self.limits.concurrent_queries_max })?;
        let started = Instant::now();
        let page_rows = max_rows.unwrap_or(self.limits.rows_max).clamp(1, self.limits.rows_max);
        let timeout = Duration::from_millis(self.limits.query_timeout_ms);
        let query_id = query_id.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let report = SharedReport::default();
        let rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (work, abort) = futures::future::abortable(tokio::time::timeout(timeout, self.collect(sql, self.limits.rows_max, &report, &rows, caller)));
        {
            let mut queries = self.queries.lock().expect("queries lock");
            if queries.contains_key(&query_id) {
                return Err(QueryError::InvalidSql(format!("a query with id {query_id} is already running")));
            }
            let owner = caller.id.clone();
            queries.insert(query_id.clone(), Running { owner, sql: sql.to_string(), started, report: report.clone(), rows: rows.clone(), abort });
        }
        let outcome = work.await;
        self.queries.lock().expect("queries lock").remove(&query_id);
        let all = outcome
            .map_err(|_| QueryError::Cancelled(query_id.clone()))?
            .map_err(|_| QueryError::Timeout { timeout_ms: self.limits.query_timeout_ms })??;
        let bytes_scanned = report.bytes_scanned.load(std::sync::atomic::Ordering::Relaxed);
        let paged = Paged { owner: caller.id.clone(), query_id: query_id.clone(), sql: sql.into(), rows: all, offset: 0, expires: Instant::now(), bytes_scanned };
        let (mut page, rendered) = self.page_of(paged, page_rows, render)?;
        let span = tracing::Span::current();
        span.record("lodestone.query_id", page.query_id.as_str());
        span.record("rows", page.total_rows as u64);
        span.record("bytes_scanned", bytes_scanned);
        page.elapsed_ms = started.elapsed().as_millis() as u64;
        page.memory_workers_unreachable = report.unreachable.load(std::sync::atomic::Ordering::Relaxed);
        Ok((page, rendered))
    }

    /// The page after the one that handed out `token`, of `max_rows` rows (default and bound:
    /// `rows_max`). A token stays valid `page_token_ttl_s` (an hour by default) and may be used
    /// again within that time, by the caller that ran the query only (to any other it is unknown).
    pub fn next_page(&self, token: &str, max_rows: Option<usize>, caller: &Principal) -> Result<Page, QueryError> {
        self.next_page_cut(token, None, max_rows, caller, whole_page).map(|(page, ())| page)
    }

    /// [`Engine::next_page`] rendered by `render` as in [`Engine::query_cut`]; with `sql`, the
    /// token must have been made by that statement (else [`QueryError::TokenMismatch`]).
    pub fn next_page_cut<T>(
        &self,
        token: &str,
        sql: Option<&str>,
        max_rows: Option<usize>,
        caller: &Principal,
        render: impl FnOnce(&RecordBatch) -> Result<(usize, T), QueryError>,
    ) -> Result<(Page, T), QueryError> {
        let expired = || QueryError::TokenExpired { ttl_s: self.limits.page_token_ttl_s };
        let paged = {
            let pages = self.pages.lock().expect("pages lock");
            let Some(paged) = pages.get(token).filter(|p| p.owner == caller.id) else {
                drop(pages);
                return Err(self.cancelled_query_of(token).map_or_else(expired, QueryError::Cancelled));
            };
            if paged.expires < Instant::now() {
                return Err(expired());
            }
            if sql.is_some_and(|sql| *sql != *paged.sql) {
                return Err(QueryError::TokenMismatch);
            }
            Paged {
                owner: paged.owner.clone(),
                query_id: paged.query_id.clone(),
                sql: paged.sql.clone(),
                rows: paged.rows.clone(),
                offset: paged.offset,
                expires: paged.expires,
                bytes_scanned: paged.bytes_scanned,
            }
        };
        self.page_of(paged, max_rows.unwrap_or(self.limits.rows_max).clamp(1, self.limits.rows_max), render)
    }

    /// The query a token of a cancelled query belonged to (tokens name their query: see
    /// [`Engine::page_of`]).
    fn cancelled_query_of(&self, token: &str) -> Option<String> {
        let query_id = token.rsplit_once('.')?.0;
        let now = Instant::now();
        let mut cancelled = self.cancelled.lock().expect("cancelled lock");
        cancelled.retain(|_, until| *until >= now);
        cancelled.contains_key(query_id).then(|| query_id.to_string())
    }

    /// The page of `page_rows` rows at `paged.offset`; the rest, if any, is kept under a new
    /// token. Results kept for paging are bounded by `paged_results_bytes_max`: the oldest go
    /// first (their tokens then answer `token_expired`).
    ///
    /// `render` sees the page's rows and says how many of them it took (at least one, if there
    /// are any); the page is those rows, and the next starts after them. A token is
    /// `{query_id}.{random}`, so that a cancelled query's tokens can be told from expired ones.
    fn page_of<T>(&self, paged: Paged, page_rows: usize, render: impl FnOnce(&RecordBatch) -> Result<(usize, T), QueryError>) -> Result<(Page, T), QueryError> {
        let total = paged.rows.num_rows();
        let take = page_rows.min(total - paged.offset);
        let batch = paged.rows.slice(paged.offset, take);
        // The page's own bytes (a slice shares its buffers with the whole answer).
        let bytes: usize = batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum();
        if bytes > self.limits.response_bytes_max {
            return Err(QueryError::ResponseTooLarge { bytes, max: self.limits.response_bytes_max });
        }
        let (taken, rendered) = render(&batch)?;
        let take = taken.clamp(take.min(1), take);
        let batch = batch.slice(0, take);
        let next = paged.offset + take;
        let next_token = if next < total {
            let token = format!("{}.{:032x}", paged.query_id, rand::random::<u128>());
            let mut pages = self.pages.lock().expect("pages lock");
            let now = Instant::now();
            pages.retain(|_, p| p.expires >= now);
            let size = |p: &Paged| p.rows.get_array_memory_size();
            let mut kept: usize = pages.values().map(size).sum();
            let incoming = paged.rows.get_array_memory_size();
            while kept + incoming > self.limits.paged_results_bytes_max && !pages.is_empty() {
                let oldest = pages.iter().min_by_key(|(_, p)| p.expires).map(|(t, _)| t.clone()).expect("not empty");
                kept -= pages.remove(&oldest).map_or(0, |p| size(&p));
            }
            let expires = now + Duration::from_secs(self.limits.page_token_ttl_s);
            let kept = Paged {
                owner: paged.owner.clone(),
                query_id: paged.query_id.clone(),
                sql: paged.sql.clone(),
                rows: paged.rows.clone(),
                offset: next,
                expires,
                bytes_scanned: paged.bytes_scanned,
            };
            pages.insert(token.clone(), kept);
            Some(token)
        } else {
            None
        };
        let text_bytes_max = self.limits.response_bytes_max;
        let page = Page {
            query_id: paged.query_id,
            batch,
            offset: paged.offset,
            total_rows: total,
            elapsed_ms: 0,
            bytes_scanned: paged.bytes_scanned,
            memory_workers_unreachable: 0,
            next_token,
            text_bytes_max,
        };
        Ok((page, rendered))
    }

    /// A running query's progress; `None` when no query of that id is running here for `caller`
    /// (another caller's query is not shown).
    pub fn progress(&self, query_id: &str, caller: &Principal) -> Option<Progress> {
        let queries = self.queries.lock().expect("queries lock");
        let running = queries.get(query_id).filter(|r| r.owner == caller.id)?;
        Some(Progress {
            query_id: query_id.to_string(),
            sql: running.sql.clone(),
            state: "running",
            elapsed_ms: running.started.elapsed().as_millis() as u64,
            bytes_scanned: running.report.bytes_scanned.load(std::sync::atomic::Ordering::Relaxed),
            rows: running.rows.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Cancels a running query of `caller`'s (it then answers `query_cancelled`); false when
    /// none runs here for `caller`.
    pub fn cancel(&self, query_id: &str, caller: &Principal) -> bool {
        match self.queries.lock().expect("queries lock").get(query_id).filter(|r| r.owner == caller.id) {
            Some(running) => {
                running.abort.abort();
                true
            }
            None => false,
        }
    }

    /// The columns `sql` would answer, planned and checked against what `caller` may read but
    /// not run (Timestream's `PrepareQuery`).
    pub async fn columns_of(&self, sql: &str, caller: &Principal) -> Result<datafusion::arrow::datatypes::SchemaRef, QueryError> {
        if sql.len() > self.limits.sql_bytes_max {
            return Err(QueryError::SqlTooLarge { bytes: sql.len(), max: self.limits.sql_bytes_max });
        }
        let snapshot = self.store.snapshot().await?;
        if let Some(answer) = crate::show::answer(sql, &snapshot, caller) {
            return match answer {
                Ok(batch) => Ok(batch.schema()),
                Err(crate::show::ShowError::Invalid(message)) => Err(QueryError::InvalidSql(message)),
                Err(crate::show::ShowError::Forbidden(error)) => Err(QueryError::Forbidden(error)),
            };
        }
        let report = SharedReport::default();
        let ctx = self.session(&snapshot, &report).map_err(|e| QueryError::from_datafusion(e, &self.limits))?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let frame = self.plan(&ctx, sql, options, caller).await?;
        Ok(Arc::new(frame.schema().as_arrow().clone()))
    }

    /// Cancels `caller`'s query `query_id` whether it runs or has pages kept: its pages are
    /// dropped and their tokens answer `query_cancelled` from now on. False when nothing of that
    /// query is here for `caller`.
    pub fn cancel_with_pages(&self, query_id: &str, caller: &Principal) -> bool {
        let running = self.cancel(query_id, caller);
        let mut pages = self.pages.lock().expect("pages lock");
        let before = pages.len();
        pages.retain(|_, p| !(p.query_id == query_id && p.owner == caller.id));
        let dropped = pages.len() < before;
        drop(pages);
        if running || dropped {
            let until = Instant::now() + Duration::from_secs(self.limits.page_token_ttl_s);
            self.cancelled.lock().expect("cancelled lock").insert(query_id.to_string(), until);
        }
        running || dropped
    }

    async fn collect(
        &self,
        sql: &str,
        rows_max: usize,
        report: &SharedReport,
        rows_seen: &Arc<std::sync::atomic::AtomicU64>,
        caller: &Principal,
    ) -> Result<RecordBatch, QueryError> {
        let snapshot = self.store.snapshot().await?;
        if let Some(answer) = crate::show::answer(sql, &snapshot, caller) {
            return match answer {
                Ok(batch) => Ok(batch),
                Err(crate::show::ShowError::Invalid(message)) => Err(QueryError::InvalidSql(message)),
                Err(crate::show::ShowError::Forbidden(error)) => Err(QueryError::Forbidden(error)),
            };
        }
        let ctx = self.session(&snapshot, report).map_err(|e| QueryError::from_datafusion(e, &self.limits))?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let frame = self.plan(&ctx, sql, options, caller).await?;
        let drain = drain(frame, ctx.runtime_env().memory_pool.clone(), rows_max, rows_seen.clone(), self.limits.clone());
        match &self.executor {
            // Dropping the handle (a cancel, a timeout) aborts the task.
            Some(executor) => AbortOnDrop(executor.spawn(drain)).await.map_err(|e| QueryError::Internal(format!("query task: {e}")))?,
            None => drain.await,
        }
    }

    /// Parses `sql`, refuses anything but a query, resolves `measure_value::<type>` in the syntax
    /// tree, plans it, and refuses the plan if it reads what `caller` may not ([`authorize`]).
    async fn plan(&self, ctx: &SessionContext, sql: &str, options: SQLOptions, caller: &Principal) -> Result<datafusion::dataframe::DataFrame, QueryError> {
        let datafusion_error = |e| QueryError::from_datafusion(e, &self.limits);
        let state = ctx.state();
        let statement = parse_statement(&state, sql, &self.limits)?;
        let plan = state.statement_to_plan(statement).await.map_err(datafusion_error)?;
        options.verify_plan(&plan).map_err(|e| QueryError::StatementNotAllowed(e.to_string()))?;
        authorize(&plan, caller)?;
        ctx.execute_logical_plan(plan).await.map_err(datafusion_error)
    }

    /// A fresh DataFusion session that sees `snapshot`: one schema per database, one table per
    /// Lodestone table (read through the store's scan API).
    fn session(&self, snapshot: &Snapshot, report: &SharedReport) -> Result<SessionContext, DataFusionError> {
        let runtime =
            RuntimeEnvBuilder::new().with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.query_memory_bytes_max))).build_arc()?;
        let config = SessionConfig::new().with_information_schema(true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(YieldEverywhere));
        let ctx = SessionContext::new_with_state(crate::gapfill::with_gap_filling(state).build());
        for function in crate::timeseries::functions().into_iter().chain(crate::gapfill::functions()) {
            ctx.register_udf(function);
        }
        let catalog = ctx.catalog("datafusion").ok_or_else(|| DataFusionError::Internal("default catalog missing".into()))?;
        for (database, tables) in &snapshot.databases {
            let schema = Arc::new(MemorySchemaProvider::new());
            for (name, entry) in tables {
                let table_ref = TableRef { database: database.clone(), table: name.clone() };
                let table = StoreTable::new(self.store.clone(), table_ref, entry.clone(), self.memory.clone(), report.clone());
                schema.register_table(name.clone(), Arc::new(table))?;
            }
            catalog.register_schema(database, schema)?;
        }
        Ok(ctx)
    }
}

/// The span of one query (or page of one): `lodestone.query_id`, `db.query.text` (its first KiB),
/// rows and bytes scanned are recorded on it, continuing the caller's `traceparent`.
pub fn query_span(sql: Option<&str>, traceparent: Option<&str>) -> tracing::Span {
    let text = sql.map(|sql| lodestone_store::truncate(sql));
    let span = tracing::info_span!(
        "query",
        "db.query.text" = text.as_deref().unwrap_or(""),
        "lodestone.query_id" = tracing::field::Empty,
        rows = tracing::field::Empty,
        bytes_scanned = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    lodestone_kit::telemetry::continue_trace(&span, traceparent);
    span
}

/// Executes `frame` and collects its answer into one batch: at most `rows_max` rows, counted
/// against the query's memory `pool` like its sorts and joins (a `SELECT repeat('x', 100000) FROM
/// range(20000)` held gigabytes before the row bound), the one-batch copy too; `rows_seen`
/// follows it for progress.
async fn drain(
    frame: datafusion::dataframe::DataFrame,
    pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    rows_max: usize,
    rows_seen: Arc<std::sync::atomic::AtomicU64>,
    limits: LimitsConfig,
) -> Result<RecordBatch, QueryError> {
    let datafusion_error = |e| QueryError::from_datafusion(e, &limits);
    let mut stream = frame.execute_stream().await.map_err(datafusion_error)?;
    let schema = stream.schema();
    let answer = MemoryConsumer::new("query answer").register(&pool);
    let mut batches = Vec::new();
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(datafusion_error)?;
        answer.try_grow(batch.get_array_memory_size()).map_err(datafusion_error)?;
        rows += batch.num_rows();
        rows_seen.store(rows as u64, std::sync::atomic::Ordering::Relaxed);
        if rows > rows_max {
            return Err(QueryError::TooManyRows { max: rows_max });
        }
        batches.push(batch);
    }
    if let [only] = batches.as_slice() {
        return Ok(only.clone());
    }
    // For a moment the batches and their copy are both held.
    answer.try_grow(answer.size()).map_err(datafusion_error)?;
    datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(|e| QueryError::Internal(e.to_string()))
}

/// A page's rendering that takes every row it is given and makes nothing of them.
fn whole_page(batch: &RecordBatch) -> Result<(usize, ()), QueryError> {
    Ok((batch.num_rows(), ()))
}

/// A task on another runtime that is aborted when its awaiting future is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refuses `plan` if it reads a table of a database `caller` may not read, wherever the scan sits
/// in the plan: CTEs, subqueries (in expressions too), joins, UNION, EXPLAIN. `information_schema`
/// lists every database, so only a caller that may read them all may read it. Table functions
/// (`range(…)`) are scanned under bare names and read no stored data.
fn authorize(plan: &datafusion::logical_expr::LogicalPlan, caller: &Principal) -> Result<(), QueryError> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let mut refused = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Err(error) = may_read(scan.table_name.schema(), caller) {
                refused = Some(error);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| QueryError::Internal(e.to_string()))?;
    refused.map_or(Ok(()), |error| Err(QueryError::Forbidden(error)))
}

/// Whether `caller` may read a table in `schema` (a database, `information_schema`, or none for a
/// table function).
fn may_read(schema: Option<&str>, caller: &Principal) -> Result<(), AuthError> {
    match schema {
        None => Ok(()),
        Some("information_schema") if caller.can_read_all() => Ok(()),
        Some("information_schema") => Err(AuthError::Forbidden(format!(
            "token {} may not read information_schema, which lists every database; SHOW DATABASES, SHOW TABLES and DESCRIBE show what it may read",
            caller.id
        ))),
        Some(database) => caller.require_read(database),
    }
}

/// Whether a parsed statement only reads: SELECT/WITH, EXPLAIN, SHOW, DESCRIBE.
/// The statement `sql` asks for, before planning: its operators counted against
/// `limits.sql_operators_max` ([`crate::complexity`]), Timestream's interval literals, parsed with
/// `state`'s dialect and recursion limit, refused unless it is a query, `measure_value::<type>`
/// resolved and Timestream's functions rewritten. Everything a client's SQL meets before
/// DataFusion plans it (the fuzz target `sql` runs exactly this).
pub fn parse_statement(state: &SessionState, sql: &str, limits: &LimitsConfig) -> Result<datafusion::sql::parser::Statement, QueryError> {
    let operators = crate::complexity::operator_count(sql).map_err(QueryError::InvalidSql)?;
    if operators > limits.sql_operators_max {
        return Err(QueryError::SqlTooComplex { operators, max: limits.sql_operators_max });
    }
    let dialect = state.config().options().sql_parser.dialect;
    let sql = crate::timestream::interval_literals(sql);
    let mut statement = state.sql_to_statement(&sql, &dialect).map_err(|e| QueryError::from_datafusion(e, limits))?;
    if !is_query(&statement) {
        return Err(QueryError::StatementNotAllowed(statement.to_string()));
    }
    resolve_typed_columns(&mut statement);
    crate::timestream::rewrite_functions(&mut statement).map_err(QueryError::InvalidSql)?;
    crate::timestream::rewrite_unnest_joins(&mut statement).map_err(QueryError::InvalidSql)?;
    Ok(statement)
}

fn is_query(statement: &datafusion::sql::parser::Statement) -> bool {
    use datafusion::sql::parser::Statement as Df;
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    match statement {
        Df::Statement(inner) => matches!(
            inner.as_ref(),
            Sql::Query(_) | Sql::Explain { .. } | Sql::ExplainTable { .. } | Sql::ShowTables { .. } | Sql::ShowColumns { .. }
        ),
        Df::Explain(_) => true,
        _ => false,
    }
}

/// Turns record batches into column descriptions and rows of JSON values.
/// The Timestream scalar type name of an Arrow type (`VARCHAR`, `BIGINT`, `DOUBLE`, …), as
/// Timestream's query API reports column types; other types keep Arrow's name.
pub fn scalar_type(data_type: &datafusion::arrow::datatypes::DataType) -> String {
    use datafusion::arrow::datatypes::DataType::*;
    let name = match data_type {
        Utf8 | Utf8View | LargeUtf8 => "VARCHAR",
        Dictionary(_, values) => return scalar_type(values),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => "BIGINT",
        Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => "DOUBLE",
        Boolean => "BOOLEAN",
        Timestamp(..) => "TIMESTAMP",
        Date32 | Date64 => "DATE",
        Time32(_) | Time64(_) => "TIME",
        Interval(_) | Duration(_) => "INTERVAL_DAY_TO_SECOND",
        List(_) | LargeList(_) | ListView(_) | LargeListView(_) | FixedSizeList(..) => "ARRAY",
        Struct(_) => "ROW",
        Null => "UNKNOWN",
        other => return other.to_string(),
    };
    name.to_string()
}

fn render(batch: &RecordBatch, text_bytes_max: usize) -> Result<(Vec<Column>, Vec<Vec<serde_json::Value>>), QueryError> {
    let schema = batch.schema();
    let columns: Vec<Column> =
        schema.fields().iter().map(|f| Column { name: f.name().clone(), data_type: scalar_type(f.data_type()) }).collect();
    let mut text = BoundedText::new(text_bytes_max);
    let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(&mut text);
    let failed = |e: datafusion::arrow::error::ArrowError| match BoundedText::is_bound(&e) {
        true => QueryError::TextTooLarge { max: text_bytes_max },
        false => QueryError::Internal(e.to_string()),
    };
    writer.write(batch).map_err(failed)?;
    writer.finish().map_err(failed)?;
    drop(writer);
    let buffer = text.text;
    // One object per line, each turned into its row as soon as it is read: holding every row's
    // object (its column names repeated) at once took several times the page's own memory.
    let rows = serde_json::Deserializer::from_slice(&buffer)
        .into_iter::<serde_json::Map<String, serde_json::Value>>()
        .map(|object| object.map(|mut object| columns.iter().map(|c| object.remove(&c.name).unwrap_or(serde_json::Value::Null)).collect()))
        .collect::<Result<Vec<Vec<serde_json::Value>>, _>>()
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    Ok((columns, rows))
}

/// Wraps every operator of a physical plan in DataFusion's `CooperativeExec`, so that each batch
/// it passes on spends the task's scheduling budget. Without it an operator that makes many
/// batches out of few inputs (a cross join) never yields: dropping a cancelled query's stream
/// (the query time limit) would not stop its tasks, which would keep a core busy to the end.
#[derive(Debug)]
struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        plan.transform_up(|node| {
            if node.name() == "CooperativeExec" {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

