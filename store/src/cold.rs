//! The cold tier's file format: one Parquet file per table and day partition, rows sorted by
//! series then time, encodings chosen for time series.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use lodestone_model::{MeasureType, MeasureValue, Scalar};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::catalog::{FileMeta, TableRef};
use crate::error::StoreError;
use crate::hot::{Row, SeriesKey};
use crate::schema::{arrow_schema, TableSchema, MEASURE_VALUE_COLUMNS};
use crate::{day_of, DAY_NS};

/// Rows per Parquet row group; also the granularity of row-group pruning.
const ROW_GROUP_ROWS_MAX: usize = 256 * 1024;
const ZSTD_LEVEL: i32 = 3;

/// Writes `rows` (sorted by series, then time) as one file per day partition under
/// `{database}/{table}/day={day}/`. Returns after every file is on the object store; the files are
/// invisible until the caller commits them in the catalog.
pub async fn write_partition_file(
    objects: &dyn ObjectStore,
    table: &TableRef,
    schema: &TableSchema,
    rows: &[(Arc<SeriesKey>, i64, Row)],
) -> Result<Vec<FileMeta>, StoreError> {
    let mut by_day: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (index, (_, time, _)) in rows.iter().enumerate() {
        by_day.entry(day_of(*time)).or_default().push(index);
    }
    let mut files = Vec::with_capacity(by_day.len());
    for (day, indexes) in by_day {
        let batch = build_batch(schema, indexes.iter().map(|&i| &rows[i]))?;
        let path = file_path(table, day);
        let bytes = encode_parquet(&batch).map_err(|detail| StoreError::Parquet { path: path.clone(), detail })?;
        let size = bytes.len() as u64;
        objects.put(&Path::from(path.clone()), PutPayload::from(bytes)).await?;
        let times = indexes.iter().map(|&i| rows[i].1);
        files.push(FileMeta {
            path,
            day,
            min_time_ns: times.clone().min().unwrap_or(day * DAY_NS),
            max_time_ns: times.max().unwrap_or(day * DAY_NS),
            rows: indexes.len() as u64,
            bytes: size,
        });
    }
    Ok(files)
}

/// A fresh, unique object path in the partition of `table` and `day`.
pub fn file_path(table: &TableRef, day: i64) -> String {
    format!("{}/{}/day={}/{:032x}.parquet", table.database, table.table, day_label(day), rand::random::<u128>())
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01), by the civil-from-days algorithm.
fn day_label(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A column builder for one scalar type.
enum ScalarColumn {
    Double(Float64Builder),
    Bigint(Int64Builder),
    Varchar(StringBuilder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampNanosecondBuilder),
}

impl ScalarColumn {
    fn new(ty: MeasureType) -> ScalarColumn {
        match ty {
            MeasureType::Double => ScalarColumn::Double(Float64Builder::new()),
            MeasureType::Bigint => ScalarColumn::Bigint(Int64Builder::new()),
            MeasureType::Varchar | MeasureType::Multi => ScalarColumn::Varchar(StringBuilder::new()),
            MeasureType::Boolean => ScalarColumn::Boolean(BooleanBuilder::new()),
            MeasureType::Timestamp => ScalarColumn::Timestamp(TimestampNanosecondBuilder::new()),
        }
    }

    /// Appends `value` if it has this column's type, else a null.
    fn append(&mut self, value: Option<&Scalar>) {
        match (self, value) {
            (ScalarColumn::Double(b), Some(Scalar::Double(v))) => b.append_value(*v),
            (ScalarColumn::Bigint(b), Some(Scalar::Bigint(v))) => b.append_value(*v),
            (ScalarColumn::Varchar(b), Some(Scalar::Varchar(v))) => b.append_value(v),
            (ScalarColumn::Boolean(b), Some(Scalar::Boolean(v))) => b.append_value(*v),
            (ScalarColumn::Timestamp(b), Some(Scalar::Timestamp(v))) => b.append_value(*v),
            (ScalarColumn::Double(b), _) => b.append_null(),
            (ScalarColumn::Bigint(b), _) => b.append_null(),
            (ScalarColumn::Varchar(b), _) => b.append_null(),
            (ScalarColumn::Boolean(b), _) => b.append_null(),
            (ScalarColumn::Timestamp(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            ScalarColumn::Double(mut b) => Arc::new(b.finish()),
            ScalarColumn::Bigint(mut b) => Arc::new(b.finish()),
            ScalarColumn::Varchar(mut b) => Arc::new(b.finish()),
            ScalarColumn::Boolean(mut b) => Arc::new(b.finish()),
            ScalarColumn::Timestamp(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Builds the table-shaped record batch (see [`arrow_schema`]) of `rows`.
pub fn build_batch<'a>(
    schema: &TableSchema,
    rows: impl Iterator<Item = &'a (Arc<SeriesKey>, i64, Row)>,
) -> Result<RecordBatch, StoreError> {
    let mut dimensions: Vec<(&String, StringBuilder)> = schema.dimensions.iter().map(|name| (name, StringBuilder::new())).collect();
    let mut measure_names = StringBuilder::new();
    let mut times = TimestampNanosecondBuilder::new();
    let mut singles: Vec<ScalarColumn> = MEASURE_VALUE_COLUMNS.iter().map(|(_, ty)| ScalarColumn::new(*ty)).collect();
    let mut multis: Vec<(&String, ScalarColumn)> =
        schema.multi_columns.iter().map(|(name, ty)| (name, ScalarColumn::new(*ty))).collect();
    let mut versions = UInt64Builder::new();
    for (series, time, row) in rows {
        for (name, builder) in dimensions.iter_mut() {
            let value = series.dimensions.binary_search_by(|d| d.name.as_str().cmp(name.as_str())).ok();
            builder.append_option(value.map(|i| series.dimensions[i].value.as_str()));
        }
        measure_names.append_value(&series.measure_name);
        times.append_value(*time);
        match &row.value {
            MeasureValue::Single(scalar) => {
                singles.iter_mut().for_each(|column| column.append(Some(scalar)));
                multis.iter_mut().for_each(|(_, column)| column.append(None));
            }
            MeasureValue::Multi(values) => {
                singles.iter_mut().for_each(|column| column.append(None));
                for (name, column) in multis.iter_mut() {
                    let value = values.binary_search_by(|(n, _)| n.as_str().cmp(name.as_str())).ok();
                    column.append(value.map(|i| &values[i].1));
                }
            }
        }
        versions.append_value(row.version);
    }
    let mut columns: Vec<ArrayRef> = dimensions.into_iter().map(|(_, mut b)| Arc::new(b.finish()) as ArrayRef).collect();
    columns.push(Arc::new(measure_names.finish()));
    columns.push(Arc::new(times.finish()));
    columns.extend(singles.into_iter().map(ScalarColumn::finish));
    columns.extend(multis.into_iter().map(|(_, column)| column.finish()));
    columns.push(Arc::new(versions.finish()));
    Ok(RecordBatch::try_new(arrow_schema(schema), columns)?)
}

fn writer_properties(batch: &RecordBatch) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level")))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX));
    for field in batch.schema().fields() {
        let column = ColumnPath::from(field.name().as_str());
        let encoding = match field.data_type() {
            arrow::datatypes::DataType::Timestamp(..) | arrow::datatypes::DataType::Int64 | arrow::datatypes::DataType::UInt64 => {
                Some(Encoding::DELTA_BINARY_PACKED)
            }
            arrow::datatypes::DataType::Float64 => Some(Encoding::BYTE_STREAM_SPLIT),
            _ => None,
        };
        if let Some(encoding) = encoding {
            builder = builder.set_column_dictionary_enabled(column.clone(), false).set_column_encoding(column, encoding);
        }
    }
    builder.build()
}

pub fn encode_parquet(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(writer_properties(batch))).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_labels() {
        assert_eq!(day_label(0), "1970-01-01");
        assert_eq!(day_label(19_675), "2023-11-14");
        assert_eq!(day_label(-1), "1969-12-31");
    }
}
