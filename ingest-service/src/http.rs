//! The worker's HTTP endpoints: `/health`, `/ready`, `/metrics` (scope `metrics`), and
//! `GET /v1/memory/{database}/{table}` (scope `service`), the rows it has not persisted yet, for
//! queries. Serve the router inside `lodestone_kit::auth::require_token`, which finds the caller.

use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lodestone_kit::auth::{with_scope, Scope};
use lodestone_store::{Memory, TableRef};

use crate::metrics::Counters;

pub fn router(counters: Arc<Counters>, memory: Memory) -> axum::Router {
    let ready_counters = counters.clone();
    let metrics = axum::Router::new().route("/metrics", get(move || async move { counters.render() }));
    let memory = axum::Router::new().route("/v1/memory/{database}/{table}", get(move |path, query| serve_memory(memory.clone(), path, query)));
    axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(move || async move { ready(&ready_counters) }))
        .merge(with_scope(metrics, Scope::Metrics))
        .merge(with_scope(memory, Scope::Service))
}

/// `GET /ready`: 200 once the consumer group has assigned this worker a partition, 503 until
/// then (a new group takes a few seconds to form). `/health` only says the process is up.
fn ready(counters: &Counters) -> (StatusCode, &'static str) {
    if counters.is_assigned() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the consumer group to assign a partition")
    }
}

#[derive(serde::Deserialize)]
struct MemoryRange {
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    /// A JSON array of the column names to send (all when absent).
    columns: Option<String>,
}

/// `GET /v1/memory/{database}/{table}?from_ns=&to_ns=&columns=["a","b"]`: the table's rows this
/// worker has not persisted yet, as an Arrow IPC stream (empty when it holds none), with only the
/// columns asked for (all without `columns`). Query services union them with the cold tier, so
/// that a write is visible before it is persisted.
async fn serve_memory(memory: Memory, Path((database, table)): Path<(String, String)>, Query(range): Query<MemoryRange>) -> Response {
    let table = TableRef { database, table };
    let columns: Option<Vec<String>> = match range.columns.as_deref().map(serde_json::from_str).transpose() {
        Ok(columns) => columns,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("columns must be a JSON array of names: {error}")).into_response(),
    };
    let encoded = tokio::task::spawn_blocking(move || {
        let (from_ns, to_ns) = (range.from_ns.unwrap_or(i64::MIN), range.to_ns.unwrap_or(i64::MAX));
        lodestone_store::encode_ipc(&memory.table_batches(&table, from_ns, to_ns, columns.as_deref())?)
    })
    .await;
    match encoded {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")], bytes).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
