//! REST routes. Every error answers JSON `{"error": {"code": "...", "message": "..."}}` with a
//! stable code.
//!
//! Serve the router inside `lodestone_kit::auth::require_token`, which finds each request's
//! caller ([`Principal`]). What each route needs: a query, read on every table it touches (the
//! engine checks); `/v1/queries/{id}`, to be the caller that started the query; reading a
//! database or its tables, `DATABASE:read`; creating, changing and dropping them, `admin`;
//! `/metrics`, `metrics`. `GET /v1/databases` lists only the databases the caller may read.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lodestone_kit::auth::{with_scope, AuthError, Principal, Scope};
use lodestone_store::{StoreError, TableProperties, TableRef};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{Engine, QueryError, QueryResult};

pub fn router(engine: Arc<Engine>) -> Router {
    let metrics = Router::new().route("/metrics", get(|State(engine): State<Arc<Engine>>| async move { engine.metrics().render(engine.running()) }));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(with_scope(metrics, Scope::Metrics))
        .route("/v1/query", post(query))
        .route("/v1/queries/{query_id}", get(query_progress).delete(cancel_query))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/databases", get(list_databases).post(create_database))
        .route("/v1/databases/{database}", get(describe_database).delete(drop_database))
        .route("/v1/databases/{database}/tables", get(list_tables).post(create_table))
        .route("/v1/databases/{database}/tables/{table}", get(describe_table).patch(update_table).delete(drop_table))
        .with_state(engine)
}

/// An error as the API answers it.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// 400 `invalid_request`.
    pub fn invalid(message: String) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "invalid_request", message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> ApiError {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code: error.code(), message: error.to_string() }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> ApiError {
        ApiError { status: error.status(), code: error.code(), message: error.to_string() }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        let (status, code) = match &error {
            StoreError::DatabaseNotFound(_) => (StatusCode::NOT_FOUND, "database_not_found"),
            StoreError::AlertNotFound(_) => (StatusCode::NOT_FOUND, "alert_not_found"),
            StoreError::TableNotFound { .. } => (StatusCode::NOT_FOUND, "table_not_found"),
            StoreError::DatabaseExists(_) | StoreError::TableExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            StoreError::DatabaseNotEmpty(_) => (StatusCode::CONFLICT, "database_not_empty"),
            StoreError::LimitReached { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"),
            StoreError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        ApiError { status, code, message: error.to_string() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    /// The query; not needed with `next_token`.
    #[serde(default)]
    sql: Option<String>,
    /// Rows per page (at most the service's `rows_max`).
    #[serde(default)]
    max_rows: Option<usize>,
    /// The `next_token` of the previous page.
    #[serde(default)]
    next_token: Option<String>,
    /// An id of the caller's choosing, to follow (`GET /v1/queries/{id}`) or cancel
    /// (`DELETE /v1/queries/{id}`) the query from elsewhere while it runs: 1 to
    /// [`QUERY_ID_CHARS_MAX`] characters of `A-Z a-z 0-9 - _ . :`.
    #[serde(default)]
    query_id: Option<String>,
}

/// The longest `query_id` a caller may choose (Timestream's ClientToken: 128).
const QUERY_ID_CHARS_MAX: usize = 128;

/// Whether `id` may be a caller's query id: it goes into URLs, logs and answer headers as it is.
fn valid_query_id(id: &str) -> bool {
    (1..=QUERY_ID_CHARS_MAX).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Answer formats, chosen by the Accept header (CSV answers are UTF-8, and say so).
const CSV: &str = "text/csv";
const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";
const ARROW: &str = "application/vnd.apache.arrow.stream";

async fn query(
    State(engine): State<Arc<Engine>>,
    caller: Principal,
    headers: axum::http::HeaderMap,
    Json(request): Json<QueryRequest>,
) -> Result<Response, ApiError> {
    let span = crate::engine::query_span(request.sql.as_deref(), headers.get("traceparent").and_then(|v| v.to_str().ok()));
    let answered = tracing::Instrument::instrument(answer(&engine, &caller, &headers, &request), span.clone()).await;
    match &answered {
        Err(error) => {
            engine.metrics().failed(error.code);
            span.record("error", error.code);
        }
        Ok(response) => {
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            if let Some(id) = header("x-lodestone-query-id") {
                span.record("lodestone.query_id", id);
            }
        }
    }
    answered
}

async fn answer(engine: &Engine, caller: &Principal, headers: &axum::http::HeaderMap, request: &QueryRequest) -> Result<Response, ApiError> {
    if let Some(id) = request.query_id.as_deref().filter(|id| !valid_query_id(id)) {
        let message = format!("query_id {id:?} must be 1 to {QUERY_ID_CHARS_MAX} characters of A-Z a-z 0-9 - _ . :");
        return Err(ApiError { status: StatusCode::BAD_REQUEST, code: "invalid_request", message });
    }
    let page = match (&request.next_token, &request.sql) {
        (Some(token), _) => engine.next_page(token, request.max_rows, caller)?,
        (None, Some(sql)) => engine.query(sql, request.max_rows, request.query_id.clone(), caller).await?,
        (None, None) => return Err(ApiError { status: StatusCode::BAD_REQUEST, code: "invalid_request", message: "give `sql`, or `next_token` for the next page".into() }),
    };
    engine.metrics().answered(&page);
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if accept.contains(CSV) || accept.contains(ARROW) {
        let internal = |e: datafusion::arrow::error::ArrowError| ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: e.to_string() };
        let mut body = Vec::new();
        let content_type = if accept.contains(ARROW) {
            let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut body, &page.batch.schema()).map_err(internal)?;
            writer.write(&page.batch).map_err(internal)?;
            writer.finish().map_err(internal)?;
            ARROW
        } else {
            let mut text = crate::engine::BoundedText::new(page.text_bytes_max);
            let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut text);
            writer.write(&page.batch).map_err(|e| match crate::engine::BoundedText::is_bound(&e) {
                true => ApiError::from(QueryError::TextTooLarge { max: page.text_bytes_max }),
                false => internal(e),
            })?;
            drop(writer);
            body = text.text;
            CSV_CONTENT_TYPE
        };
        let mut response = (StatusCode::OK, body).into_response();
        let headers = response.headers_mut();
        headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(content_type));
        // Ids are checked above and tokens are ours; a value that is still no header is left out.
        let mut insert = |name: &'static str, value: String| {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        insert("x-lodestone-query-id", page.query_id.clone());
        insert("x-lodestone-bytes-scanned", page.bytes_scanned.to_string());
        if let Some(token) = &page.next_token {
            insert("x-lodestone-next-token", token.clone());
        }
        return Ok(response);
    }
    Ok(Json(QueryResult::of(&page)?).into_response())
}

async fn query_progress(State(engine): State<Arc<Engine>>, caller: Principal, Path(query_id): Path<String>) -> Result<Response, ApiError> {
    match engine.progress(&query_id, &caller) {
        Some(progress) => Ok(Json(progress).into_response()),
        None => Err(ApiError { status: StatusCode::NOT_FOUND, code: "query_not_found", message: format!("no query {query_id} is running here") }),
    }
}

async fn cancel_query(State(engine): State<Arc<Engine>>, caller: Principal, Path(query_id): Path<String>) -> Result<Response, ApiError> {
    if engine.cancel(&query_id, &caller) {
        Ok((StatusCode::ACCEPTED, Json(json!({"query_id": query_id, "state": "cancelling"}))).into_response())
    } else {
        Err(ApiError { status: StatusCode::NOT_FOUND, code: "query_not_found", message: format!("no query {query_id} is running here") })
    }
}

/// The OpenAPI description of this API.
async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("../openapi.json")).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDatabase {
    name: String,
}

async fn list_databases(State(engine): State<Arc<Engine>>, caller: Principal) -> Result<Response, ApiError> {
    let snapshot = engine.store().snapshot().await?;
    let databases: Vec<_> = snapshot
        .databases
        .iter()
        .filter(|(name, _)| caller.can_read(name))
        .map(|(name, tables)| json!({"name": name, "table_count": tables.len()}))
        .collect();
    Ok(Json(json!({ "databases": databases })).into_response())
}

async fn create_database(State(engine): State<Arc<Engine>>, caller: Principal, Json(request): Json<CreateDatabase>) -> Result<Response, ApiError> {
    caller.require(&Scope::Admin)?;
    engine.store().create_database(&request.name).await?;
    Ok((StatusCode::CREATED, Json(json!({"name": request.name}))).into_response())
}

async fn describe_database(State(engine): State<Arc<Engine>>, caller: Principal, Path(database): Path<String>) -> Result<Response, ApiError> {
    caller.require_read(&database)?;
    let snapshot = engine.store().snapshot().await?;
    let tables = snapshot.databases.get(&database).ok_or(StoreError::DatabaseNotFound(database.clone()))?;
    Ok(Json(json!({"name": database, "table_count": tables.len()})).into_response())
}

async fn drop_database(State(engine): State<Arc<Engine>>, caller: Principal, Path(database): Path<String>) -> Result<Response, ApiError> {
    caller.require(&Scope::Admin)?;
    engine.store().drop_database(&database).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A table's retention properties in the API, by Timestream's names.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Retention {
    #[serde(default = "default_memory_hours")]
    memory_store_retention_hours: u32,
    #[serde(default = "default_magnetic_days")]
    magnetic_store_retention_days: u32,
    #[serde(default)]
    magnetic_store_writes: bool,
}

fn default_memory_hours() -> u32 {
    TableProperties::default().memory_retention_hours
}

fn default_magnetic_days() -> u32 {
    TableProperties::default().magnetic_retention_days
}

impl Retention {
    fn properties(&self) -> TableProperties {
        TableProperties {
            memory_retention_hours: self.memory_store_retention_hours,
            magnetic_retention_days: self.magnetic_store_retention_days,
            magnetic_store_writes: self.magnetic_store_writes,
        }
    }

    fn of(properties: &TableProperties) -> Retention {
        Retention {
            memory_store_retention_hours: properties.memory_retention_hours,
            magnetic_store_retention_days: properties.magnetic_retention_days,
            magnetic_store_writes: properties.magnetic_store_writes,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTable {
    name: String,
    #[serde(flatten)]
    retention: Retention,
}

async fn list_tables(State(engine): State<Arc<Engine>>, caller: Principal, Path(database): Path<String>) -> Result<Response, ApiError> {
    caller.require_read(&database)?;
    let snapshot = engine.store().snapshot().await?;
    let tables = snapshot.databases.get(&database).ok_or(StoreError::DatabaseNotFound(database.clone()))?;
    let tables: Vec<_> = tables.iter().map(|(name, entry)| table_json(&database, name, entry)).collect();
    Ok(Json(json!({ "tables": tables })).into_response())
}

fn table_json(database: &str, name: &str, entry: &lodestone_store::TableEntry) -> serde_json::Value {
    let rows: u64 = entry.files.iter().map(|f| f.rows).sum();
    let bytes: u64 = entry.files.iter().map(|f| f.bytes).sum();
    json!({
        "database": database,
        "name": name,
        "retention": Retention::of(&entry.properties),
        "dimensions": entry.schema.dimensions,
        "measures": entry.schema.measures,
        "magnetic_store": {"files": entry.files.len(), "rows": rows, "bytes": bytes},
    })
}

async fn create_table(
    State(engine): State<Arc<Engine>>,
    caller: Principal,
    Path(database): Path<String>,
    Json(request): Json<CreateTable>,
) -> Result<Response, ApiError> {
    caller.require(&Scope::Admin)?;
    let table = TableRef { database: database.clone(), table: request.name.clone() };
    let snapshot = engine.store().create_table(&table, request.retention.properties()).await?;
    let entry = snapshot.table(&table).expect("table just created");
    Ok((StatusCode::CREATED, Json(table_json(&database, &request.name, entry))).into_response())
}

async fn describe_table(State(engine): State<Arc<Engine>>, caller: Principal, Path((database, table)): Path<(String, String)>) -> Result<Response, ApiError> {
    caller.require_read(&database)?;
    let snapshot = engine.store().snapshot().await?;
    let table_ref = TableRef { database: database.clone(), table: table.clone() };
    let entry = snapshot.table(&table_ref).ok_or(StoreError::TableNotFound { database: database.clone(), table: table.clone() })?;
    Ok(Json(table_json(&database, &table, entry)).into_response())
}

async fn update_table(
    State(engine): State<Arc<Engine>>,
    caller: Principal,
    Path((database, table)): Path<(String, String)>,
    Json(retention): Json<Retention>,
) -> Result<Response, ApiError> {
    caller.require(&Scope::Admin)?;
    let table_ref = TableRef { database: database.clone(), table: table.clone() };
    let snapshot = engine.store().update_table(&table_ref, retention.properties()).await?;
    let entry = snapshot.table(&table_ref).expect("table just updated");
    Ok(Json(table_json(&database, &table, entry)).into_response())
}

async fn drop_table(State(engine): State<Arc<Engine>>, caller: Principal, Path((database, table)): Path<(String, String)>) -> Result<Response, ApiError> {
    caller.require(&Scope::Admin)?;
    engine.store().drop_table(&TableRef { database, table }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
