//! The local write API (axum):
//!
//! - `POST /v1/write?database=DB&table=TBL&precision=ns|us|ms|s` — JSON records
//!   (`application/json`: an array, or `{"records": [...]}`) or line protocol (`text/plain`).
//!   All or nothing: `200 {"accepted": n, "first_seq": s, "last_seq": e}` once every record is
//!   committed to the outbox; otherwise `{"error": {"code", "message", "rejected": [...]}}` with
//!   400 (invalid), 413 (too large), 415 (content type), 507 (`outbox_full`) or 503 (shutting
//!   down), and nothing stored.
//! - `GET /v1/status` — outbox depth, sequence numbers, connection state, counters.
//! - `GET /metrics` — Prometheus text (scope `metrics`).
//! - `GET /health` — `200 ok` while the server runs.
//!
//! Every path but `/health` needs a token (`lodestone_kit::auth`); a write needs the scope
//! `DATABASE:write` of its destination, else 403 `forbidden` before the body is read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lodestone_model::{validate_name, Record};
use serde::Deserialize;
use serde_json::json;

use crate::intake::{decode_body, BodyFormat, Intake, IntakeError};
use lodestone_kit::auth::{with_scope, Principal, Scope};
use lodestone_kit::now_ns;
use crate::line_protocol::Precision;
use crate::outbox::{Destination, Outbox};
use crate::telemetry::Telemetry;

/// What the handlers share.
pub struct HttpState {
    pub intake: Intake,
    pub outbox: Outbox,
    pub telemetry: Arc<Telemetry>,
    /// Destination of writes that name none.
    pub defaults: Destination,
    pub device_id: String,
    pub boot_id: String,
    pub bytes_max: u64,
    pub body_bytes_max: usize,
    pub records_per_request_max: usize,
}

pub fn router(state: Arc<HttpState>) -> Router {
    let body_bytes_max = state.body_bytes_max;
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/write", post(write))
        .route("/v1/status", get(status))
        .merge(with_scope(Router::new().route("/metrics", get(metrics)), Scope::Metrics))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct WriteParams {
    database: Option<String>,
    table: Option<String>,
    precision: Option<String>,
}

async fn write(
    State(state): State<Arc<HttpState>>,
    caller: Principal,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let now = now_ns();
    let request = match read_request(&state, &caller, params, &headers, body, now) {
        Ok(request) => request,
        Err(error) => {
            // A caller without the right is not counted as records received and rejected.
            if !matches!(error, IntakeError::Forbidden(_)) {
                state.intake.refused(&error);
            }
            return error_response(&error);
        }
    };
    let (destination, records) = request;
    let count = records.len();
    if count == 0 {
        return Json(json!({"accepted": 0, "first_seq": null, "last_seq": null})).into_response();
    }
    // A span of the write, continuing the caller's trace; its context travels with the records.
    let span = tracing::info_span!("agent.write", records = count, database = %destination.database, table = %destination.table);
    lodestone_kit::telemetry::continue_trace(&span, headers.get("traceparent").and_then(|v| v.to_str().ok()));
    let traceparent = lodestone_kit::telemetry::traceparent_of(&span);
    match tracing::Instrument::instrument(state.intake.submit(destination, records, now, traceparent), span).await {
        Ok(range) => Json(json!({"accepted": count, "first_seq": range.first, "last_seq": range.last})).into_response(),
        Err(error) => {
            if matches!(error, IntakeError::OutboxFull(_)) {
                tracing::warn!(records = count, "write refused: outbox full");
            }
            error_response(&error)
        }
    }
}

/// Everything about a write that can be checked before storing it.
fn read_request(
    state: &HttpState,
    caller: &Principal,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    now_ns: i64,
) -> Result<(Destination, Vec<Record>), IntakeError> {
    let Query(params) = params.map_err(|e| IntakeError::Malformed(format!("query string: {}", e.body_text())))?;
    let destination = Destination {
        database: params.database.unwrap_or_else(|| state.defaults.database.clone()),
        table: params.table.unwrap_or_else(|| state.defaults.table.clone()),
    };
    validate_name("database", &destination.database).map_err(IntakeError::InvalidDestination)?;
    validate_name("table", &destination.table).map_err(IntakeError::InvalidDestination)?;
    caller.require_write(&destination.database).map_err(IntakeError::Forbidden)?;
    let precision = match params.precision {
        Some(text) => Precision::parse(&text).ok_or(IntakeError::InvalidPrecision(text))?,
        None => Precision::default(),
    };
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => IntakeError::PayloadTooLarge { bytes_max: state.body_bytes_max },
        _ => IntakeError::Malformed(rejection.body_text()),
    })?;
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let format = BodyFormat::detect(content_type, &body)?;
    let records = decode_body(format, &body, precision, &state.device_id, state.intake.limits(), state.records_per_request_max, now_ns)?;
    Ok((destination, records))
}

fn error_response(error: &IntakeError) -> Response {
    (error.status(), Json(error.to_json())).into_response()
}

async fn status(State(state): State<Arc<HttpState>>) -> Response {
    let outbox = state.outbox.clone();
    let outbox_status = match tokio::task::spawn_blocking(move || outbox.status()).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => return internal_error(&error.to_string()),
        Err(error) => return internal_error(&error.to_string()),
    };
    let telemetry = &state.telemetry;
    Json(json!({
        "device_id": state.device_id,
        "boot_id": state.boot_id,
        "outbox": {"entries": outbox_status.entries, "bytes": outbox_status.bytes, "bytes_max": state.bytes_max},
        "next_seq": outbox_status.next_seq,
        "acked_through": outbox_status.acked_through,
        "connected": telemetry.is_connected(),
        "counters": {
            "received": Telemetry::get(&telemetry.received),
            "forwarded": Telemetry::get(&telemetry.forwarded),
            "acked": Telemetry::get(&telemetry.acked),
            "rejected": Telemetry::get(&telemetry.rejected),
            "rejected_by_code": telemetry.rejected_by_code(),
            "dropped": state.outbox.dropped_total(),
        },
    }))
    .into_response()
}

/// `GET /metrics`: the counters of `/v1/status` for Prometheus.
async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let outbox = state.outbox.clone();
    match tokio::task::spawn_blocking(move || outbox.status()).await {
        Ok(Ok(status)) => state.telemetry.render(&status, state.outbox.dropped_total()).into_response(),
        Ok(Err(error)) => internal_error(&error.to_string()),
        Err(error) => internal_error(&error.to_string()),
    }
}

fn internal_error(message: &str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": {"code": "storage_error", "message": message, "rejected": []}}))).into_response()
}
