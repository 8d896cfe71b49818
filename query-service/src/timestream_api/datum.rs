//! Arrow answers in the shape of Timestream's `Query` API, without I/O: a column's
//! [`column_info`] (`{"Name", "Type": {"ScalarType" | "ArrayColumnInfo" |
//! "TimeSeriesMeasureValueColumnInfo" | "RowColumnInfo"}}`) and a value's [`datum`]
//! (`{"ScalarValue"}`, `{"NullValue": true}`, `{"ArrayValue"}`, `{"RowValue": {"Data"}}`,
//! `{"TimeSeriesValue": [{"Time", "Value"}]}`).
//!
//! Every scalar is a string, as Timestream answers: BIGINT and DOUBLE in decimal, BOOLEAN
//! `true`/`false`, TIMESTAMP as `YYYY-MM-DD HH:MM:SS.nnnnnnnnn` (always nine digits: awswrangler
//! and Grafana parse exactly that). A timeseries is a list of rows `(time, value)`, as
//! `create_time_series` makes it.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit};
use serde_json::{json, Map, Value};

use crate::engine::scalar_type;

/// A column's `ColumnInfo`.
pub fn column_info(field: &Field) -> Value {
    json!({"Name": field.name(), "Type": type_info(field.data_type())})
}

/// A column's `Type`.
fn type_info(data_type: &DataType) -> Value {
    match data_type {
        DataType::Dictionary(_, values) => type_info(values),
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) | DataType::ListView(item) | DataType::LargeListView(item) => {
            match timeseries_value_type(item.data_type()) {
                Some(value) => json!({"TimeSeriesMeasureValueColumnInfo": {"Type": type_info(value)}}),
                None => json!({"ArrayColumnInfo": {"Type": type_info(item.data_type())}}),
            }
        }
        DataType::Struct(fields) => json!({"RowColumnInfo": fields.iter().map(|f| column_info(f)).collect::<Vec<_>>()}),
        DataType::Interval(IntervalUnit::YearMonth) => json!({"ScalarType": "INTERVAL_YEAR_TO_MONTH"}),
        other => {
            let name = scalar_type(other);
            // Types Timestream has no name for are answered as text.
            let known = ["VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "TIMESTAMP", "DATE", "TIME", "INTERVAL_DAY_TO_SECOND", "UNKNOWN"];
            json!({"ScalarType": if known.contains(&name.as_str()) { name } else { "VARCHAR".to_string() }})
        }
    }
}

/// The value type of a list item that is a timeseries point: a row of exactly `time` (a
/// timestamp) and `value`.
fn timeseries_value_type(item: &DataType) -> Option<&DataType> {
    let DataType::Struct(fields) = item else { return None };
    match fields.iter().collect::<Vec<_>>().as_slice() {
        [time, value] if time.name() == "time" && matches!(time.data_type(), DataType::Timestamp(..)) && value.name() == "value" => Some(value.data_type()),
        _ => None,
    }
}

/// Row `row` of `batch` as Timestream's `Row` (`{"Data": [datum, …]}`).
pub fn row(batch: &RecordBatch, row: usize) -> Value {
    json!({"Data": batch.columns().iter().map(|column| datum(column, row)).collect::<Vec<_>>()})
}

/// One value as a `Datum`.
pub fn datum(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return json!({"NullValue": true});
    }
    match array.data_type() {
        DataType::Dictionary(..) => {
            let dictionary = array.as_any_dictionary();
            let key = dictionary.normalized_keys()[row];
            datum(dictionary.values(), key)
        }
        DataType::List(item) => list_datum(item.data_type(), &array.as_list::<i32>().value(row)),
        DataType::LargeList(item) => list_datum(item.data_type(), &array.as_list::<i64>().value(row)),
        DataType::FixedSizeList(item, _) => list_datum(item.data_type(), &array.as_fixed_size_list().value(row)),
        DataType::Struct(_) => {
            let fields = array.as_struct();
            json!({"RowValue": {"Data": fields.columns().iter().map(|column| datum(column, row)).collect::<Vec<_>>()}})
        }
        _ => match scalar_text(array, row) {
            Some(text) => json!({"ScalarValue": text}),
            None => json!({"NullValue": true}),
        },
    }
}

fn list_datum(item: &DataType, values: &ArrayRef) -> Value {
    if timeseries_value_type(item).is_some() {
        let points = values.as_struct();
        let (times, measures) = (points.column(0), points.column(1));
        let series: Vec<Value> = (0..points.len())
            .filter(|i| !points.is_null(*i))
            .map(|i| {
                let mut point = Map::new();
                point.insert("Time".into(), Value::String(scalar_text(times, i).unwrap_or_default()));
                point.insert("Value".into(), datum(measures, i));
                Value::Object(point)
            })
            .collect();
        return json!({"TimeSeriesValue": series});
    }
    json!({"ArrayValue": (0..values.len()).map(|i| datum(values, i)).collect::<Vec<_>>()})
}

/// A scalar as Timestream writes it; `None` for a value that is null.
fn scalar_text(array: &ArrayRef, row: usize) -> Option<String> {
    use datafusion::arrow::datatypes::*;
    use datafusion::arrow::datatypes::TimeUnit;
    if array.is_null(row) {
        return None;
    }
    let text = match array.data_type() {
        DataType::Float64 => double(array.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => double(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Timestamp(unit, _) => {
            let value = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row).checked_mul(1_000_000_000),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row).checked_mul(1_000_000),
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row).checked_mul(1_000),
                TimeUnit::Nanosecond => Some(array.as_primitive::<TimestampNanosecondType>().value(row)),
            };
            match value {
                Some(ns) => timestamp(ns),
                None => fallback(array, row),
            }
        }
        DataType::Duration(unit) => {
            let value = match unit {
                TimeUnit::Second => array.as_primitive::<DurationSecondType>().value(row).checked_mul(1_000_000_000),
                TimeUnit::Millisecond => array.as_primitive::<DurationMillisecondType>().value(row).checked_mul(1_000_000),
                TimeUnit::Microsecond => array.as_primitive::<DurationMicrosecondType>().value(row).checked_mul(1_000),
                TimeUnit::Nanosecond => Some(array.as_primitive::<DurationNanosecondType>().value(row)),
            };
            match value {
                Some(ns) => day_to_second(ns),
                None => fallback(array, row),
            }
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let value = array.as_primitive::<IntervalDayTimeType>().value(row);
            let ns = i64::from(value.days) * 86_400_000_000_000 + i64::from(value.milliseconds) * 1_000_000;
            day_to_second(ns)
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let value = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
            match value.months {
                0 => day_to_second(i64::from(value.days).saturating_mul(86_400_000_000_000).saturating_add(value.nanoseconds)),
                _ => fallback(array, row),
            }
        }
        DataType::Interval(IntervalUnit::YearMonth) => {
            let months = array.as_primitive::<IntervalYearMonthType>().value(row);
            format!("{}-{}", months / 12, (months % 12).abs())
        }
        _ => fallback(array, row),
    };
    Some(text)
}

fn fallback(array: &ArrayRef, row: usize) -> String {
    datafusion::arrow::util::display::array_value_to_string(array, row).unwrap_or_default()
}

/// The shortest text that reads back as the same double, with a `.0` on whole numbers (as
/// Timestream prints them); `NaN`, `Infinity`, `-Infinity`.
fn double(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v == f64::INFINITY => "Infinity".into(),
        v if v == f64::NEG_INFINITY => "-Infinity".into(),
        v => format!("{v:?}"),
    }
}

/// `YYYY-MM-DD HH:MM:SS.nnnnnnnnn`, UTC.
pub fn timestamp(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).format("%Y-%m-%d %H:%M:%S%.9f").to_string()
}

/// `D HH:MM:SS.nnnnnnnnn`, Timestream's INTERVAL_DAY_TO_SECOND.
fn day_to_second(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    let (days, rest) = (ns / 86_400_000_000_000, ns % 86_400_000_000_000);
    let (hours, rest) = (rest / 3_600_000_000_000, rest % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let (seconds, nanos) = (rest / 1_000_000_000, rest % 1_000_000_000);
    format!("{sign}{days} {hours:02}:{minutes:02}:{seconds:02}.{nanos:09}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray, TimestampNanosecondArray};

    fn first(array: ArrayRef) -> Value {
        datum(&array, 0)
    }

    #[test]
    fn scalars_are_strings_as_timestream_writes_them() {
        assert_eq!(first(Arc::new(Int64Array::from(vec![42]))), json!({"ScalarValue": "42"}));
        assert_eq!(first(Arc::new(Float64Array::from(vec![1.0]))), json!({"ScalarValue": "1.0"}));
        assert_eq!(first(Arc::new(Float64Array::from(vec![-95.24089298036279]))), json!({"ScalarValue": "-95.24089298036279"}));
        assert_eq!(first(Arc::new(BooleanArray::from(vec![false]))), json!({"ScalarValue": "false"}));
        assert_eq!(first(Arc::new(StringArray::from(vec!["truck-7"]))), json!({"ScalarValue": "truck-7"}));
        assert_eq!(first(Arc::new(Int64Array::from(vec![None]))), json!({"NullValue": true}));
        let time = first(Arc::new(TimestampNanosecondArray::from(vec![1_765_000_000_000_000_007])));
        assert_eq!(time, json!({"ScalarValue": "2025-12-06 05:46:40.000000007"}));
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000000000", "always nine fractional digits");
        assert_eq!(day_to_second(90_061_000_000_001), "1 01:01:01.000000001");
    }

    #[test]
    fn a_timeseries_has_its_own_column_type_and_points() {
        let series = crate::timeseries::timeseries_type();
        let info = column_info(&Field::new("series", series, true));
        assert_eq!(info, json!({"Name": "series", "Type": {"TimeSeriesMeasureValueColumnInfo": {"Type": {"ScalarType": "DOUBLE"}}}}));
        let list = DataType::List(Arc::new(Field::new("item", DataType::Int64, true)));
        assert_eq!(type_info(&list), json!({"ArrayColumnInfo": {"Type": {"ScalarType": "BIGINT"}}}));
        let row = DataType::Struct(vec![Field::new("dimension_name", DataType::Utf8, true)].into());
        assert_eq!(type_info(&row), json!({"RowColumnInfo": [{"Name": "dimension_name", "Type": {"ScalarType": "VARCHAR"}}]}));
    }
}
