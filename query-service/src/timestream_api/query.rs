//! `Query`, `CancelQuery`, `PrepareQuery` and `DescribeAccountSettings`, on the engine that
//! answers the REST API: the same SQL, limits, read checks and paging.
//!
//! A page holds at most `MaxRows` rows (1 to 1,000; every row that fits when absent) and at most
//! [`PAGE_BYTES_MAX`] of rendered rows, as Timestream's do; its `NextToken` serves only the
//! caller that ran the query and the same `QueryString` (boto3 sends it again with every page).

use serde::Deserialize;
use serde_json::{json, Value};

use super::{datum, AwsError, Call, TimestreamApi};
use crate::engine::QueryError;

/// The most bytes of rows one page carries (Timestream's 1 MB).
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;

/// Timestream's bound on `MaxRows`.
const MAX_ROWS_MAX: usize = 1000;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueryInput {
    query_string: String,
    next_token: Option<String>,
    max_rows: Option<usize>,
}

/// Renders rows of `batch` until the next would take the page past [`PAGE_BYTES_MAX`] (one row
/// at least): how many, and the rows.
fn render_rows(batch: &datafusion::arrow::array::RecordBatch) -> Result<(usize, Vec<Value>), QueryError> {
    let mut rows = Vec::new();
    let mut bytes = 0;
    for index in 0..batch.num_rows() {
        let row = datum::row(batch, index);
        bytes += row.to_string().len();
        if bytes > PAGE_BYTES_MAX && !rows.is_empty() {
            break;
        }
        rows.push(row);
    }
    Ok((rows.len(), rows))
}

pub async fn query(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    let input: QueryInput = call.input()?;
    if input.query_string.is_empty() {
        return Err(AwsError::validation("QueryString must not be empty".into()));
    }
    let max_rows = match input.max_rows {
        None => None,
        Some(rows) if (1..=MAX_ROWS_MAX).contains(&rows) => Some(rows),
        Some(rows) => return Err(AwsError::validation(format!("MaxRows {rows} is not within 1..={MAX_ROWS_MAX}"))),
    };
    let engine = &api.engine;
    let span = crate::engine::query_span(Some(&input.query_string), call.headers.get("traceparent").and_then(|v| v.to_str().ok()));
    let answered = match &input.next_token {
        None => tracing::Instrument::instrument(engine.query_cut(&input.query_string, max_rows, None, &call.caller, render_rows), span.clone()).await,
        Some(token) => span.in_scope(|| engine.next_page_cut(token, Some(&input.query_string), max_rows, &call.caller, render_rows)),
    };
    let (page, rows) = match answered {
        Ok(answered) => answered,
        Err(error) => {
            engine.metrics().failed(error.code());
            return Err(error.into());
        }
    };
    engine.metrics().answered(&page);
    let schema = page.batch.schema();
    let delivered = page.offset + page.batch.num_rows();
    let progress = if page.next_token.is_none() || page.total_rows == 0 { 100.0 } else { delivered as f64 * 100.0 / page.total_rows as f64 };
    let mut answer = json!({
        "QueryId": page.query_id,
        "Rows": rows,
        "ColumnInfo": schema.fields().iter().map(|field| datum::column_info(field)).collect::<Vec<_>>(),
        "QueryStatus": {"ProgressPercentage": progress, "CumulativeBytesScanned": page.bytes_scanned, "CumulativeBytesMetered": page.bytes_scanned},
    });
    if let Some(token) = &page.next_token {
        answer["NextToken"] = token.clone().into();
    }
    Ok(answer)
}

pub fn cancel_query(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        query_id: String,
    }
    let input: Input = call.input()?;
    let id = &input.query_id;
    if !(1..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AwsError::validation(format!("QueryId {id:?} must be 1 to 64 letters and digits")));
    }
    let message = match api.engine.cancel_with_pages(id, &call.caller) {
        true => format!("Query {id} was cancelled; its pages are no longer served"),
        false => format!("Query {id} is not running and has no pages here (finished, cancelled before, or unknown); nothing to cancel"),
    };
    Ok(json!({"CancellationMessage": message}))
}

pub async fn prepare_query(api: &TimestreamApi, call: &Call) -> Result<Value, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Input {
        query_string: String,
    }
    let input: Input = call.input()?;
    let schema = api.engine.columns_of(&input.query_string, &call.caller).await?;
    let columns: Vec<Value> = schema
        .fields()
        .iter()
        .map(|field| {
            let info = datum::column_info(field);
            json!({"Name": field.name(), "Type": info["Type"], "Aliased": false})
        })
        .collect();
    Ok(json!({"QueryString": input.query_string, "Columns": columns, "Parameters": []}))
}

/// Lodestone meters nothing; this answers what the SDKs and the console expect.
pub fn describe_account_settings() -> Value {
    json!({"QueryPricingModel": "BYTES_SCANNED", "QueryCompute": {"ComputeMode": "ON_DEMAND"}})
}
