//! The table every rejection ends in: `"_lodestone"."rejected_records"`. The ingest workers write
//! the dead-letter topic into it; compaction writes the cross-tier conflicts it finds (a record
//! that met a persisted one with another value at a version that is not higher).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampNanosecondType, UInt64Type};
use lodestone_model::{Dimension, MeasureType, MeasureValue, Record, Scalar};

use crate::table::{TableProperties, TableRef};
use crate::schema::{TableSchema, MEASURE_NAME_COLUMN, TIME_COLUMN, VERSION_COLUMN};

pub const REJECTED_RECORDS_DATABASE: &str = "_lodestone";
pub const REJECTED_RECORDS_TABLE: &str = "rejected_records";
/// Longest text kept of a rejection's detail and payload, in bytes.
pub const REJECTION_TEXT_BYTES_MAX: usize = 1024;

pub fn rejected_records_table() -> TableRef {
    TableRef { database: REJECTED_RECORDS_DATABASE.into(), table: REJECTED_RECORDS_TABLE.into() }
}

/// Properties of the rejected-records table, whichever writer creates it (an ingest worker or
/// compaction): Timestream's default retention (6 hours in memory, 73,000 days on disk), and late
/// rows accepted. Change them on the table like any other's.
pub fn rejected_records_properties() -> TableProperties {
    TableProperties { memory_retention_hours: 6, magnetic_retention_days: 73_000, magnetic_store_writes: true }
}

/// One rejection: what was refused, why, and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub device_id: String,
    /// A stable reason code (see `lodestone_model::RejectReason`).
    pub reason: String,
    /// Who refused it: a `lodestone_model::RejectedBy`, or what another producer wrote.
    pub source: String,
    pub detail: String,
    pub payload: String,
    /// Further measures (e.g. the dead-letter topic's partition and offset).
    pub extra: Vec<(String, Scalar)>,
}

impl Rejected {
    /// The row of the rejected-records table: dimensions `device_id`, `reason`, `source`; the
    /// MULTI measure `rejection` with `detail` and `payload` (cut to 1 KiB) and the extras.
    pub fn into_record(self, time_ns: i64) -> Record {
        let dimension = |name: &str, value: String| Dimension { name: name.into(), value };
        let mut values = self.extra;
        values.push(("detail".into(), Scalar::Varchar(truncate(&self.detail))));
        values.push(("payload".into(), Scalar::Varchar(truncate(&self.payload))));
        values.sort_by(|a, b| a.0.cmp(&b.0));
        Record {
            dimensions: vec![dimension("device_id", self.device_id), dimension("reason", self.reason), dimension("source", self.source)],
            measure_name: "rejection".into(),
            value: MeasureValue::Multi(values),
            time_ns,
            version: 1,
        }
    }
}

/// `text` cut to at most [`REJECTION_TEXT_BYTES_MAX`] bytes, at a character boundary.
pub fn truncate(text: &str) -> String {
    crate::table::truncate_text(text, REJECTION_TEXT_BYTES_MAX)
}

/// The records of `batch`, a batch in the shape of [`crate::arrow_schema`] of `schema`.
pub fn records_of(schema: &TableSchema, batch: &RecordBatch) -> Vec<Record> {
    let column = |name: &str| batch.column_by_name(name);
    let strings = |name: &str| column(name).map(|c| arrow::compute::cast(c, &DataType::Utf8).expect("strings cast to Utf8"));
    let dimensions: Vec<(&String, Option<arrow::array::StringArray>)> =
        schema.dimensions.iter().map(|name| (name, strings(name).map(|a| a.as_string::<i32>().clone()))).collect();
    let measure_names = strings(MEASURE_NAME_COLUMN).expect("measure_name column");
    let times = column(TIME_COLUMN).expect("time column").as_primitive::<TimestampNanosecondType>().clone();
    let versions = column(VERSION_COLUMN).expect("version column").as_primitive::<UInt64Type>().clone();
    (0..batch.num_rows())
        .map(|row| {
            let measure_name = measure_names.as_string::<i32>().value(row).to_string();
            let value = match schema.measures.get(&measure_name) {
                Some(MeasureType::Multi) => MeasureValue::Multi(
                    schema.multi_columns.iter().filter_map(|(name, ty)| scalar(column(name)?, *ty, row).map(|s| (name.clone(), s))).collect(),
                ),
                _ => {
                    let single = crate::schema::MEASURE_VALUE_COLUMNS
                        .iter()
                        .find_map(|(name, ty)| scalar(column(name)?, *ty, row))
                        .unwrap_or(Scalar::Varchar(String::new()));
                    MeasureValue::Single(single)
                }
            };
            Record {
                dimensions: dimensions
                    .iter()
                    .filter_map(|(name, values)| {
                        let values = values.as_ref()?;
                        values.is_valid(row).then(|| Dimension { name: (*name).clone(), value: values.value(row).to_string() })
                    })
                    .collect(),
                measure_name,
                value,
                time_ns: times.value(row),
                version: versions.value(row),
            }
        })
        .collect()
}

/// The value at `row` of a column of type `ty`, if not null.
fn scalar(column: &dyn Array, ty: MeasureType, row: usize) -> Option<Scalar> {
    if column.is_null(row) {
        return None;
    }
    Some(match ty {
        MeasureType::Double => Scalar::Double(column.as_primitive::<Float64Type>().value(row)),
        MeasureType::Bigint => Scalar::Bigint(column.as_primitive::<Int64Type>().value(row)),
        MeasureType::Boolean => Scalar::Boolean(column.as_boolean().value(row)),
        MeasureType::Timestamp => Scalar::Timestamp(column.as_primitive::<TimestampNanosecondType>().value(row)),
        MeasureType::Varchar | MeasureType::Multi => {
            let text = arrow::compute::cast(&column.slice(row, 1), &DataType::Utf8).ok()?;
            Scalar::Varchar(text.as_string::<i32>().value(0).to_string())
        }
    })
}
