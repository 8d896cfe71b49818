//! The worker's HTTP endpoints: `/health`, `/ready`, `/metrics` (scope `metrics`),
//! `GET /v1/memory/{database}/{table}` (scope `service`), the rows it has not persisted yet, for
//! queries, and `GET /v1/receipts/{partition}/{offset}` (scope `service`), what it did with a
//! message a writer waits on. Serve the router inside `lodestone_kit::auth::require_token`, which finds the caller.

use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lodestone_kit::auth::{with_scope, Scope};
use lodestone_store::{Memory, TableRef};

use crate::metrics::Counters;
use crate::receipts::{Receipts, Waited};

pub fn router(counters: Arc<Counters>, memory: Memory, receipts: Arc<Receipts>) -> axum::Router {
    let ready_counters = counters.clone();
    let metrics = axum::Router::new().route("/metrics", get(move || async move { counters.render() }));
    let memory = axum::Router::new()
        .route("/v1/memory/{database}/{table}", get(move |path, query| serve_memory(memory.clone(), path, query)))
        .route("/v1/receipts/{partition}/{offset}", get(move |path, query| serve_receipt(receipts.clone(), path, query)));
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

#[derive(serde::Deserialize)]
struct ReceiptWait {
    /// How long to wait for the message to be applied (0 by default; at most
    /// [`crate::receipts::RECEIPT_WAIT_MAX`]).
    #[serde(default)]
    wait_ms: u64,
}

/// `GET /v1/receipts/{partition}/{offset}?wait_ms=`: 200 with the receipt (JSON) once the message
/// at that offset of the ingest topic is applied here; 404 `not_assigned` when another worker
/// holds the partition; 202 `pending` when it was not applied within the wait.
async fn serve_receipt(receipts: Arc<Receipts>, Path((partition, offset)): Path<(i32, i64)>, Query(wait): Query<ReceiptWait>) -> Response {
    match receipts.wait(partition, offset, std::time::Duration::from_millis(wait.wait_ms)).await {
        Waited::Applied(receipt) => axum::Json(receipt).into_response(),
        Waited::NotAssigned => error(StatusCode::NOT_FOUND, "not_assigned", format!("this worker does not hold partition {partition}")),
        Waited::Pending => error(StatusCode::ACCEPTED, "pending", format!("offset {offset} of partition {partition} is not applied yet")),
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response()
}
