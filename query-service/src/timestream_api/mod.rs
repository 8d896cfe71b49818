//! Timestream's own API, so that boto3, the AWS CLI, Telegraf, Grafana and awswrangler work
//! against Lodestone with only their endpoint changed: AWS JSON 1.0 (`POST /`,
//! `Content-Type: application/x-amz-json-1.0`, `X-Amz-Target: Timestream_20181101.<Operation>`)
//! on the service's one listener, beside the REST API. The write and query APIs share the
//! target prefix and have no operation name in common but the tag ones, so one route serves both.
//!
//! Callers sign with AWS Signature V4; `lodestone_kit::auth::require_token` checks the signature
//! before a handler runs (the access key id is a token id, and the token's scopes apply).
//!
//! - `mod.rs`: the route, the dispatch by operation, [`AwsError`] (every refusal with the code
//!   and status the AWS SDKs expect), ARNs.
//! - [`manage`]: `DescribeEndpoints`, databases, tables, tags, on the same catalog as the REST API.
//! - [`records`] (pure) and [`write`]: `WriteRecords`.
//! - [`query`] and [`datum`] (pure): `Query`, `CancelQuery`, `PrepareQuery`,
//!   `DescribeAccountSettings`.

pub mod datum;
mod manage;
mod query;
pub mod records;
pub mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use lodestone_kit::auth::{AuthError, AwsCaller, Principal};
use lodestone_kit::sigv4::{aws_json_error, AWS_JSON};
use lodestone_store::{Snapshot, StoreError};
use serde_json::Value;

use crate::engine::{Engine, QueryError};
use crate::metrics::Metrics;

/// The `X-Amz-Target` prefix of both Timestream APIs.
pub const TARGET_PREFIX: &str = "Timestream_20181101.";

/// Every operation of both APIs, as metric labels (a target outside them counts as `unknown`, so
/// that a client cannot grow the label set).
const OPERATIONS: [&str; 31] = [
    "DescribeEndpoints", "CreateDatabase", "DescribeDatabase", "ListDatabases", "UpdateDatabase", "DeleteDatabase", "CreateTable",
    "DescribeTable", "ListTables", "UpdateTable", "DeleteTable", "ListTagsForResource", "TagResource", "UntagResource", "WriteRecords",
    "CreateBatchLoadTask", "DescribeBatchLoadTask", "ListBatchLoadTasks", "ResumeBatchLoadTask", "Query", "CancelQuery", "PrepareQuery",
    "DescribeAccountSettings", "UpdateAccountSettings", "CreateScheduledQuery", "DeleteScheduledQuery", "DescribeScheduledQuery",
    "ExecuteScheduledQuery", "ListScheduledQueries", "UpdateScheduledQuery", "unknown",
];

/// What the Timestream API needs besides the engine: how it names things and where writes go.
pub struct TimestreamApi {
    engine: Arc<Engine>,
    writer: Option<write::RecordWriter>,
    advertised_url: String,
    account_id: String,
    region: String,
    writes: tokio::sync::Semaphore,
    writes_in_flight_max: usize,
    /// The catalog as last read, to find a write's table without reading it every call.
    snapshot: std::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

/// How long a write trusts the catalog it last read before reading it again (a table it does not
/// find there is always looked for again).
const SNAPSHOT_TTL: Duration = Duration::from_secs(1);

impl TimestreamApi {
    pub fn new(engine: Arc<Engine>, writer: Option<write::RecordWriter>, config: &crate::QueryConfig) -> TimestreamApi {
        TimestreamApi {
            engine,
            writer,
            advertised_url: config.advertised_url(),
            account_id: config.timestream.account_id.clone(),
            region: config.timestream.region.clone(),
            writes: tokio::sync::Semaphore::new(config.timestream.writes_in_flight_max),
            writes_in_flight_max: config.timestream.writes_in_flight_max,
            snapshot: std::sync::Mutex::new(None),
        }
    }

    fn metrics(&self) -> &Metrics {
        self.engine.metrics()
    }

    /// The catalog, as read within [`SNAPSHOT_TTL`] or now when `fresh`.
    async fn snapshot(&self, fresh: bool) -> Result<Arc<Snapshot>, AwsError> {
        if !fresh {
            if let Some((read, snapshot)) = self.snapshot.lock().expect("snapshot lock").as_ref() {
                if read.elapsed() < SNAPSHOT_TTL {
                    return Ok(snapshot.clone());
                }
            }
        }
        let snapshot = Arc::new(self.engine.store().snapshot().await?);
        *self.snapshot.lock().expect("snapshot lock") = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// Forgets the catalog read last (after this service changed it).
    fn changed(&self) {
        *self.snapshot.lock().expect("snapshot lock") = None;
    }
}

/// `POST /` with an `X-Amz-Target` header, for [`crate::api::router`] to merge.
pub fn router(api: Arc<TimestreamApi>) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::post(dispatch))
        // The signature check has read the body already, within this bound.
        .layer(axum::extract::DefaultBodyLimit::max(lodestone_kit::auth::SIGNED_BODY_BYTES_MAX))
        .with_state(api)
}

/// One call: who (its signer's region names the ARNs), which operation, its JSON body.
pub struct Call {
    pub caller: Principal,
    pub region: String,
    pub body: Bytes,
    pub headers: HeaderMap,
}

impl Call {
    /// The body as the operation's input shape; malformed JSON or a wrong shape is a
    /// `ValidationException`.
    pub fn input<T: serde::de::DeserializeOwned>(&self) -> Result<T, AwsError> {
        let body: &[u8] = if self.body.is_empty() { b"{}" } else { &self.body };
        serde_json::from_slice(body).map_err(|e| AwsError::validation(format!("the request body does not match the operation's input: {e}")))
    }
}

async fn dispatch(State(api): State<Arc<TimestreamApi>>, caller: Principal, signer: Option<Extension<AwsCaller>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let operation = target.strip_prefix(TARGET_PREFIX).unwrap_or("").to_string();
    let region = signer.map(|Extension(signer)| signer.region).unwrap_or_else(|| api.region.clone());
    let call = Call { caller, region, body, headers };
    let answered = match operation.as_str() {
        "DescribeEndpoints" => manage::describe_endpoints(&api),
        "CreateDatabase" => manage::create_database(&api, &call).await,
        "DescribeDatabase" => manage::describe_database(&api, &call).await,
        "ListDatabases" => manage::list_databases(&api, &call).await,
        "UpdateDatabase" => manage::update_database(&api, &call).await,
        "DeleteDatabase" => manage::delete_database(&api, &call).await,
        "CreateTable" => manage::create_table(&api, &call).await,
        "DescribeTable" => manage::describe_table(&api, &call).await,
        "ListTables" => manage::list_tables(&api, &call).await,
        "UpdateTable" => manage::update_table(&api, &call).await,
        "DeleteTable" => manage::delete_table(&api, &call).await,
        "ListTagsForResource" => manage::list_tags(&api, &call).await,
        "TagResource" => manage::tag_resource(&api, &call).await,
        "UntagResource" => manage::untag_resource(&api, &call).await,
        "WriteRecords" => write_records(&api, &call).await,
        "Query" => query::query(&api, &call).await,
        "CancelQuery" => query::cancel_query(&api, &call),
        "PrepareQuery" => query::prepare_query(&api, &call).await,
        "DescribeAccountSettings" => Ok(query::describe_account_settings()),
        "CreateBatchLoadTask" | "DescribeBatchLoadTask" | "ListBatchLoadTasks" | "ResumeBatchLoadTask" | "CreateScheduledQuery" | "DeleteScheduledQuery"
        | "DescribeScheduledQuery" | "ExecuteScheduledQuery" | "ListScheduledQueries" | "UpdateScheduledQuery" | "UpdateAccountSettings" => {
            Err(AwsError::validation(format!("{operation} is not supported by Lodestone")))
        }
        _ => Err(AwsError { status: 404, code: "UnknownOperationException", message: format!("unknown operation {target:?}"), extra: None }),
    };
    let label = OPERATIONS.iter().find(|known| **known == operation).copied().unwrap_or("unknown");
    api.metrics().timestream_request(label, answered.as_ref().err().map(|e| e.code));
    match answered {
        Ok(output) => {
            let mut response = (axum::http::StatusCode::OK, output.to_string()).into_response();
            response.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(AWS_JSON));
            with_request_id(response)
        }
        Err(error) => with_request_id(error.into_response()),
    }
}

/// Every answer names a request id, as AWS services' do (SDKs log it).
fn with_request_id(mut response: Response) -> Response {
    if let Ok(id) = axum::http::HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>())) {
        response.headers_mut().insert("x-amzn-requestid", id);
    }
    response
}

/// `WriteRecords`: see [`records`] and [`write`].
async fn write_records(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        database_name: String,
        table_name: String,
        common_attributes: Option<records::WireRecord>,
        records: Vec<records::WireRecord>,
    }
    let input: Input = call.input()?;
    call.caller.require_write(&input.database_name)?;
    let Some(writer) = &api.writer else {
        return Err(AwsError::validation("WriteRecords needs [kafka] bootstrap_servers in this query service's configuration".into()));
    };
    let table = lodestone_store::TableRef { database: input.database_name.clone(), table: input.table_name.clone() };
    let mut snapshot = api.snapshot(false).await?;
    if snapshot.table(&table).is_none() {
        snapshot = api.snapshot(true).await?;
    }
    let Some(entry) = snapshot.table(&table) else {
        return Err(AwsError::not_found(format!("table {} of database {} does not exist", table.table, table.database)));
    };
    let now = lodestone_kit::now_ns();
    let converted = records::convert(input.common_attributes.as_ref(), &input.records, &lodestone_model::Limits::default(), now)?;
    let Ok(_slot) = api.writes.try_acquire() else {
        api.metrics().timestream_throttled();
        return Err(AwsError::throttling(format!("{} WriteRecords calls are in flight on this service; retry", api.writes_in_flight_max)));
    };
    let memory_window_start = now.saturating_sub(i64::from(entry.properties.memory_retention_hours) * 3_600_000_000_000);
    let times: Vec<(usize, i64)> = converted.records.iter().map(|(index, record)| (*index, record.time_ns)).collect();
    let mut rejected: Vec<(usize, String, Option<u64>)> =
        converted.rejected.iter().map(|r| (r.index, format!("{} ({})", r.detail, r.reason), None)).collect();
    if !converted.records.is_empty() {
        let traceparent = call.headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string);
        let applied = writer.write(&table.database, &table.table, &call.caller.id, converted.records, traceparent).await;
        let applied = applied.map_err(|error| match error {
            write::WriteError::NotApplied(_) => {
                api.metrics().timestream_throttled();
                AwsError::throttling(error.to_string())
            }
            write::WriteError::Kafka(_) => AwsError::internal(error.to_string()),
        })?;
        rejected.extend(applied.into_iter().map(|(index, record)| (index, format!("{} ({})", record.detail, record.reason), record.existing_version)));
    }
    rejected.sort_by_key(|(index, _, _)| *index);
    if !rejected.is_empty() {
        let list: Vec<Value> = rejected
            .iter()
            .map(|(index, reason, existing)| {
                let mut record = serde_json::json!({"RecordIndex": index, "Reason": reason});
                if let Some(version) = existing {
                    record["ExistingVersion"] = (*version).into();
                }
                record
            })
            .collect();
        let message = format!("{} of {} records were rejected; the others were written", rejected.len(), input.records.len());
        return Err(AwsError { status: 419, code: "RejectedRecordsException", message, extra: Some(("RejectedRecords", Value::Array(list))) });
    }
    let written: Vec<i64> = times.iter().map(|(_, time)| *time).collect();
    let memory = written.iter().filter(|time| **time >= memory_window_start).count();
    Ok(serde_json::json!({"RecordsIngested": {"Total": written.len(), "MemoryStore": memory, "MagneticStore": written.len() - memory}}))
}

/// A refusal as the AWS SDKs read it: HTTP status, `__type` code, `Message`, and for
/// `RejectedRecordsException` its `RejectedRecords`.
#[derive(Debug)]
pub struct AwsError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<(&'static str, Value)>,
}

impl AwsError {
    pub fn validation(message: String) -> AwsError {
        AwsError { status: 400, code: "ValidationException", message, extra: None }
    }

    pub fn not_found(message: String) -> AwsError {
        AwsError { status: 404, code: "ResourceNotFoundException", message, extra: None }
    }

    pub fn throttling(message: String) -> AwsError {
        AwsError { status: 429, code: "ThrottlingException", message, extra: None }
    }

    pub fn internal(message: String) -> AwsError {
        AwsError { status: 500, code: "InternalServerException", message, extra: None }
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let Some((key, value)) = self.extra else { return aws_json_error(self.status, self.code, &self.message) };
        let mut response = aws_json_error(self.status, self.code, &self.message);
        let body = serde_json::json!({"__type": self.code, "Message": self.message, key: value}).to_string();
        *response.body_mut() = axum::body::Body::from(body);
        response
    }
}

impl From<records::RequestError> for AwsError {
    fn from(error: records::RequestError) -> AwsError {
        AwsError::validation(error.0)
    }
}

impl From<AuthError> for AwsError {
    fn from(error: AuthError) -> AwsError {
        AwsError { status: 403, code: "AccessDeniedException", message: error.to_string(), extra: None }
    }
}

impl From<StoreError> for AwsError {
    fn from(error: StoreError) -> AwsError {
        let (status, code) = match &error {
            StoreError::DatabaseNotFound(_) | StoreError::TableNotFound { .. } => (404, "ResourceNotFoundException"),
            StoreError::DatabaseExists(_) | StoreError::TableExists { .. } => (409, "ConflictException"),
            StoreError::DatabaseNotEmpty(_) | StoreError::Invalid { .. } => (400, "ValidationException"),
            StoreError::LimitReached { .. } => (402, "ServiceQuotaExceededException"),
            _ => (500, "InternalServerException"),
        };
        AwsError { status, code, message: error.to_string(), extra: None }
    }
}

impl From<QueryError> for AwsError {
    fn from(error: QueryError) -> AwsError {
        let (status, code) = match &error {
            QueryError::InvalidSql(_)
            | QueryError::StatementNotAllowed(_)
            | QueryError::SqlTooLarge { .. }
            | QueryError::SqlTooComplex { .. }
            | QueryError::TokenExpired { .. }
            | QueryError::TokenMismatch => (400, "ValidationException"),
            QueryError::Timeout { .. } | QueryError::MemoryLimit { .. } | QueryError::TooManyRows { .. } | QueryError::ResponseTooLarge { .. } | QueryError::TextTooLarge { .. } => {
                (400, "QueryExecutionException")
            }
            QueryError::TooManyQueries { .. } => (429, "ThrottlingException"),
            QueryError::Cancelled(_) => (409, "ConflictException"),
            QueryError::Forbidden(_) => (403, "AccessDeniedException"),
            QueryError::Store(_) | QueryError::Internal(_) => (500, "InternalServerException"),
        };
        AwsError { status, code, message: format!("{error} ({})", error.code()), extra: None }
    }
}

/// The ARN of a database, or of one of its tables.
pub fn arn(region: &str, account: &str, database: &str, table: Option<&str>) -> String {
    match table {
        None => format!("arn:aws:timestream:{region}:{account}:database/{database}"),
        Some(table) => format!("arn:aws:timestream:{region}:{account}:database/{database}/table/{table}"),
    }
}

/// The database and table an ARN names (any region and account).
pub fn parse_arn(arn: &str) -> Option<(String, Option<String>)> {
    let rest = arn.strip_prefix("arn:aws:timestream:")?;
    let (_, resource) = rest.split_once(":database/")?;
    match resource.split_once("/table/") {
        Some((database, table)) if !database.is_empty() && !table.is_empty() => Some((database.to_string(), Some(table.to_string()))),
        Some(_) => None,
        None if !resource.is_empty() && !resource.contains('/') => Some((resource.to_string(), None)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_name_databases_and_tables_and_read_back() {
        let database = arn("eu-west-1", "000000000000", "fleet", None);
        assert_eq!(database, "arn:aws:timestream:eu-west-1:000000000000:database/fleet");
        assert_eq!(parse_arn(&database), Some(("fleet".into(), None)));
        let table = arn("us-east-1", "123456789012", "fleet", Some("trucks"));
        assert_eq!(parse_arn(&table), Some(("fleet".into(), Some("trucks".into()))));
        for bad in ["arn:aws:s3:::bucket", "arn:aws:timestream:r:a:database/", "arn:aws:timestream:r:a:database/db/table/", "fleet"] {
            assert_eq!(parse_arn(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_have_the_sdks_codes_and_statuses() {
        let check = |error: AwsError, status: u16, code: &str| assert_eq!((error.status, error.code), (status, code));
        check(StoreError::DatabaseNotFound("x".into()).into(), 404, "ResourceNotFoundException");
        check(StoreError::DatabaseExists("x".into()).into(), 409, "ConflictException");
        check(StoreError::DatabaseNotEmpty("x".into()).into(), 400, "ValidationException");
        check(QueryError::TooManyQueries { running: 1 }.into(), 429, "ThrottlingException");
        check(QueryError::Cancelled("q".into()).into(), 409, "ConflictException");
        check(QueryError::Timeout { timeout_ms: 1 }.into(), 400, "QueryExecutionException");
        check(AuthError::Forbidden("no".into()).into(), 403, "AccessDeniedException");
    }
}
