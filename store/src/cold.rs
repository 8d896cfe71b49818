//! The cold tier's file format: one Parquet file per table and day partition, rows sorted by
//! series then time, encodings chosen for time series.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Decimal32Array, Decimal64Array, DictionaryArray, Float64Array, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    StringViewBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema, SchemaRef};
use lodestone_model::{MeasureType, MeasureValue, Scalar};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::catalog::FileMeta;
use crate::table::TableRef;
use crate::error::StoreError;
use crate::rows::{Row, SeriesKey};
use crate::schema::{arrow_schema, TableSchema, MEASURE_NAME_COLUMN, MEASURE_VALUE_COLUMNS, TIME_COLUMN, VERSION_COLUMN};
use crate::{day_of, day_start_ns};

/// Rows per Parquet row group; also the granularity of row-group pruning.
const ROW_GROUP_ROWS_MAX: usize = 384 * 1024;
/// zstd level of persisted files: fast, compaction rewrites them soon.
pub const ZSTD_LEVEL_FRESH: i32 = 3;
/// zstd level of compacted files, written once in the background and kept.
pub const ZSTD_LEVEL_COMPACTED: i32 = 19;

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
        let batch = build_batch(schema, indexes.iter().map(|&i| (rows[i].0.as_ref(), rows[i].1, &rows[i].2)))?;
        let path = file_path(table, day);
        let bytes = encode_parquet(&batch, ZSTD_LEVEL_FRESH).map_err(|detail| StoreError::Parquet { path: path.clone(), detail })?;
        let size = bytes.len() as u64;
        objects.put(&Path::from(path.clone()), PutPayload::from(bytes)).await?;
        let times = indexes.iter().map(|&i| rows[i].1);
        files.push(FileMeta {
            path,
            day,
            min_time_ns: times.clone().min().unwrap_or_else(|| day_start_ns(day)),
            max_time_ns: times.max().unwrap_or_else(|| day_start_ns(day)),
            rows: indexes.len() as u64,
            bytes: size,
            level: 0,
            created_ns: lodestone_kit::now_ns(),
        });
    }
    Ok(files)
}

/// A fresh, unique object path in the partition of `table` and `day`.
pub fn file_path(table: &TableRef, day: i64) -> String {
    format!("{}/{}/day={}/{:032x}.parquet", path_component(&table.database), path_component(&table.table), day_label(day), rand::random::<u128>())
}

/// The longest name used as it is as one component of a file's path: names may be 256 bytes
/// (Timestream's bound), a local file system's components at most 255.
const PATH_COMPONENT_BYTES_MAX: usize = 200;

/// A database or table name as a folder name: itself, or for a longer name its first 180 bytes
/// and a hash of the whole (names are ASCII). The catalog keeps every file's path, so nothing
/// reads a name back from a path.
fn path_component(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= PATH_COMPONENT_BYTES_MAX {
        return std::borrow::Cow::Borrowed(name);
    }
    std::borrow::Cow::Owned(format!("{}~{:016x}", &name[..180], lodestone_model::topic::fnv1a(name.as_bytes())))
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
    Varchar(StringViewBuilder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampNanosecondBuilder),
}

impl ScalarColumn {
    fn new(ty: MeasureType) -> ScalarColumn {
        match ty {
            MeasureType::Double => ScalarColumn::Double(Float64Builder::new()),
            MeasureType::Bigint => ScalarColumn::Bigint(Int64Builder::new()),
            MeasureType::Varchar | MeasureType::Multi => ScalarColumn::Varchar(StringViewBuilder::new()),
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

/// Builds a dictionary column ([`dimension_type`](crate::schema::dimension_type)) from values
/// that come in runs, as a series' dimensions do in rows sorted by series: a value is looked up
/// only where it changes.
#[derive(Default)]
struct RunDictionaryBuilder {
    keys: Int32Builder,
    values: StringBuilder,
    index: HashMap<Box<str>, i32>,
    /// The last value appended and its key.
    last: Option<(String, i32)>,
}

impl RunDictionaryBuilder {
    fn append(&mut self, value: Option<&str>) {
        let Some(value) = value else { return self.keys.append_null() };
        if let Some((last, key)) = &self.last {
            if last == value {
                return self.keys.append_value(*key);
            }
        }
        let key = match self.index.get(value) {
            Some(&key) => key,
            None => {
                let key = i32::try_from(self.index.len()).expect("fewer than 2^31 distinct values in one batch");
                self.values.append_value(value);
                self.index.insert(value.into(), key);
                key
            }
        };
        let last = self.last.get_or_insert_with(|| (String::new(), key));
        last.0.clear();
        last.0.push_str(value);
        last.1 = key;
        self.keys.append_value(key);
    }

    fn finish(mut self) -> ArrayRef {
        let dictionary = DictionaryArray::<Int32Type>::try_new(self.keys.finish(), Arc::new(self.values.finish()));
        Arc::new(dictionary.expect("every key indexes a value appended before it"))
    }
}

/// Builds the table-shaped record batch (see [`arrow_schema`]) of `rows`.
pub fn build_batch<'a>(schema: &TableSchema, rows: impl Iterator<Item = (&'a SeriesKey, i64, &'a Row)>) -> Result<RecordBatch, StoreError> {
    build_batch_columns(schema, rows, None)
}

/// [`build_batch`] with only the columns named in `columns` (all when `None`), in the table's
/// column order; names the table lacks are ignored. Columns left out are never built.
pub fn build_batch_columns<'a>(
    schema: &TableSchema,
    rows: impl Iterator<Item = (&'a SeriesKey, i64, &'a Row)>,
    columns: Option<&[String]>,
) -> Result<RecordBatch, StoreError> {
    let wanted = |name: &str| columns.is_none_or(|names| names.iter().any(|n| n == name));
    let mut dimensions: Vec<(&String, RunDictionaryBuilder)> =
        schema.dimensions.iter().filter(|name| wanted(name)).map(|name| (name, RunDictionaryBuilder::default())).collect();
    let mut measure_names = wanted(MEASURE_NAME_COLUMN).then(RunDictionaryBuilder::default);
    let mut times = wanted(TIME_COLUMN).then(TimestampNanosecondBuilder::new);
    let mut singles: Vec<Option<ScalarColumn>> =
        MEASURE_VALUE_COLUMNS.iter().map(|(name, ty)| wanted(name).then(|| ScalarColumn::new(*ty))).collect();
    let mut multis: Vec<(&String, ScalarColumn)> =
        schema.multi_columns.iter().filter(|(name, _)| wanted(name)).map(|(name, ty)| (name, ScalarColumn::new(*ty))).collect();
    let mut versions = wanted(VERSION_COLUMN).then(UInt64Builder::new);
    let mut row_count = 0;
    for (series, time, row) in rows {
        row_count += 1;
        for (name, builder) in dimensions.iter_mut() {
            let value = series.dimensions.binary_search_by(|d| d.name.as_str().cmp(name.as_str())).ok();
            builder.append(value.map(|i| series.dimensions[i].value.as_str()));
        }
        if let Some(builder) = measure_names.as_mut() {
            builder.append(Some(&series.measure_name));
        }
        if let Some(builder) = times.as_mut() {
            builder.append_value(time);
        }
        match &row.value {
            MeasureValue::Single(scalar) => {
                singles.iter_mut().flatten().for_each(|column| column.append(Some(scalar)));
                multis.iter_mut().for_each(|(_, column)| column.append(None));
            }
            MeasureValue::Multi(values) => {
                singles.iter_mut().flatten().for_each(|column| column.append(None));
                for (name, column) in multis.iter_mut() {
                    let value = values.binary_search_by(|(n, _)| n.as_str().cmp(name.as_str())).ok();
                    column.append(value.map(|i| &values[i].1));
                }
            }
        }
        if let Some(builder) = versions.as_mut() {
            builder.append_value(row.version);
        }
    }
    // In the table's column order, as `arrow_schema` lists them.
    let mut built: Vec<ArrayRef> = dimensions.into_iter().map(|(_, b)| b.finish()).collect();
    built.extend(measure_names.map(RunDictionaryBuilder::finish));
    built.extend(times.map(|mut b| Arc::new(b.finish()) as ArrayRef));
    built.extend(singles.into_iter().flatten().map(ScalarColumn::finish));
    built.extend(multis.into_iter().map(|(_, column)| column.finish()));
    built.extend(versions.map(|mut b| Arc::new(b.finish()) as ArrayRef));
    let full = arrow_schema(schema);
    let kept: Vec<usize> = (0..full.fields().len()).filter(|&i| wanted(full.field(i).name())).collect();
    // The row count is explicit: no column at all may be asked for (`count(*)`).
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(row_count));
    Ok(RecordBatch::try_new_with_options(Arc::new(full.project(&kept)?), built, &options)?)
}

/// A numeric column whose values repeat in runs at least this long on average (a load that
/// changes now and then, a status code) is dictionary encoded: its runs then cost a few bytes
/// each. Other numeric columns are delta encoded (integers, timestamps, scaled decimals) or
/// byte-stream split (doubles).
const DICTIONARY_RUN_MIN: usize = 8;

fn writer_properties(batch: &RecordBatch, zstd_level: i32) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level).expect("valid zstd level")))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX));
    for (field, values) in batch.schema().fields().iter().zip(batch.columns()) {
        let column = ColumnPath::from(field.name().as_str());
        let encoding = match field.data_type() {
            DataType::Timestamp(..)
            | DataType::Int64
            | DataType::UInt64
            | DataType::Int32
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..) => Some(Encoding::DELTA_BINARY_PACKED),
            DataType::Float64 => Some(Encoding::BYTE_STREAM_SPLIT),
            _ => None,
        };
        let Some(encoding) = encoding else { continue };
        if average_run(values.as_ref()) >= DICTIONARY_RUN_MIN {
            builder = builder.set_column_dictionary_enabled(column, true);
        } else {
            builder = builder.set_column_dictionary_enabled(column.clone(), false).set_column_encoding(column, encoding);
        }
    }
    builder.build()
}

/// The average length of the runs of equal non-null values of `values`, nulls skipped (rows of
/// other measures in a multi-measure table leave a column null, and Parquet stores no value for
/// them).
fn average_run(values: &dyn Array) -> usize {
    let data = values.to_data();
    let width = data.data_type().primitive_width().unwrap_or(0);
    if width == 0 || data.buffers().is_empty() {
        return 0;
    }
    let bytes = &data.buffers()[0].as_slice()[data.offset() * width..];
    let (mut present, mut runs, mut previous): (usize, usize, Option<&[u8]>) = (0, 0, None);
    for row in (0..values.len()).filter(|&row| values.is_valid(row)) {
        let value = &bytes[row * width..(row + 1) * width];
        present += 1;
        if previous != Some(value) {
            runs += 1;
        }
        previous = Some(value);
    }
    present / runs.max(1)
}

/// Largest decimal scale tried for a DOUBLE column.
const DECIMAL_SCALE_MAX: i32 = 6;
/// Parquet stores decimals of up to 18 digits as INT64, which delta encoding packs tightly.
const DECIMAL_PRECISION: u8 = 18;
/// Decimals of up to 9 digits are stored as INT32. parquet-rs delta-encodes INT32 in blocks of
/// 128 values where INT64 takes 256; a series boundary (a large negative delta) widens a whole
/// block, so the smaller blocks cost less at each boundary (0.92 → 0.8 bytes per point in
/// `make bench-store`).
const DECIMAL32_PRECISION: u8 = 9;
const DECIMAL32_LIMIT: f64 = 1e9;

/// The smallest scale `s` at which every value of `values` is exactly `i / 10^s` for an integer
/// `i` of at most 17 digits — the way [`unscale_doubles`] reads the value back. `None` when no scale fits (NaN, infinities, too many digits).
fn decimal_scale(values: &Float64Array) -> Option<i8> {
    'scale: for scale in 0..=DECIMAL_SCALE_MAX {
        let factor = 10f64.powi(scale);
        for value in values.iter().flatten() {
            let scaled = (value * factor).round();
            // `==`, not bits: -0.0 reads back as 0.0, which SQL does not tell apart.
            if !(scaled.abs() < 1e17) || (scaled as i64) as f64 / factor != value {
                continue 'scale;
            }
        }
        return Some(scale as i8);
    }
    None
}

/// Stores each DOUBLE column whose values are all short decimals (sensor readings usually are) as
/// a scaled integer (Parquet DECIMAL on INT64), which delta encoding and zstd shrink far better
/// than IEEE doubles. Reading casts it back to the same f64 values (bit for bit, but for -0.0,
/// which reads back as 0.0).
fn scale_doubles(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let doubles = column.as_any().downcast_ref::<Float64Array>();
        match doubles.and_then(|d| decimal_scale(d).map(|scale| (d, scale))) {
            Some((doubles, scale)) => {
                let factor = 10f64.powi(i32::from(scale));
                let scaled: ArrayRef = if doubles.iter().flatten().all(|v| (v * factor).round().abs() < DECIMAL32_LIMIT) {
                    let scaled: Decimal32Array = doubles.unary_opt(|v| Some((v * factor).round() as i32));
                    Arc::new(scaled.with_precision_and_scale(DECIMAL32_PRECISION, scale).map_err(|e| e.to_string())?)
                } else {
                    let scaled: Decimal64Array = doubles.unary_opt(|v| Some((v * factor).round() as i64));
                    Arc::new(scaled.with_precision_and_scale(DECIMAL_PRECISION, scale).map_err(|e| e.to_string())?)
                };
                fields.push(Field::new(field.name(), scaled.data_type().clone(), field.is_nullable()));
                columns.push(scaled);
            }
            None => {
                // BIGINT values that fit 32 bits are stored as INT32, delta-packed in the smaller
                // blocks; reading casts them back (`align` brings every column to the table's type).
                let narrow = column.as_any().downcast_ref::<arrow::array::Int64Array>().is_some_and(|ints| {
                    ints.iter().flatten().all(|v| i32::try_from(v).is_ok())
                });
                if narrow {
                    fields.push(Field::new(field.name(), DataType::Int32, field.is_nullable()));
                    columns.push(arrow::compute::cast(column, &DataType::Int32).map_err(|e| e.to_string())?);
                } else {
                    fields.push(field.as_ref().clone());
                    columns.push(column.clone());
                }
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Undoes [`scale_doubles`]: DECIMAL columns read back as the DOUBLE values they were (the
/// division is the one [`decimal_scale`] checked, so every value comes back bit for bit; files
/// written before Decimal64 hold Decimal128 columns, which arrow's cast divides the same way), and
/// INT32 columns, narrowed BIGINTs (the table shape has no other), as BIGINT.
pub fn unscale_doubles(batch: RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let is_decimal = |t: &DataType| matches!(t, DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Int32);
    if !batch.schema().fields().iter().any(|f| is_decimal(f.data_type())) {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if !is_decimal(field.data_type()) {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        if field.data_type() == &DataType::Int32 {
            fields.push(Field::new(field.name(), DataType::Int64, field.is_nullable()));
            columns.push(arrow::compute::cast(column, &DataType::Int64)?);
            continue;
        }
        fields.push(Field::new(field.name(), DataType::Float64, field.is_nullable()));
        if let Some(scaled) = column.as_any().downcast_ref::<Decimal32Array>() {
            let factor = 10f64.powi(i32::from(scaled.scale()));
            columns.push(Arc::new(scaled.unary::<_, Float64Type>(|v| f64::from(v) / factor)) as ArrayRef);
        } else if let Some(scaled) = column.as_any().downcast_ref::<Decimal64Array>() {
            let factor = 10f64.powi(i32::from(scaled.scale()));
            columns.push(Arc::new(scaled.unary::<_, Float64Type>(|v| v as f64 / factor)) as ArrayRef);
        } else {
            columns.push(arrow::compute::cast(column, &DataType::Float64)?);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The Arrow schema to read a cold-tier file with: the file's own, with plain strings read as
/// string views. Dimensions come back as the dictionaries they were written as; in files written
/// before dimensions were dictionaries they are strings, which scans cast to the table's type.
pub fn reading_schema(file_schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, file_schema.metadata().clone()))
}

/// Encodes `batch` as one Parquet file (see [`writer_properties`] and [`scale_doubles`]).
pub fn encode_parquet(batch: &RecordBatch, zstd_level: i32) -> Result<Vec<u8>, String> {
    let batch = &scale_doubles(batch)?;
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(writer_properties(batch, zstd_level))).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_take_the_smallest_exact_decimal_scale() {
        let check = |values: &[f64], expected: Option<i8>| {
            assert_eq!(decimal_scale(&Float64Array::from(values.to_vec())), expected, "{values:?}");
        };
        check(&[1.0, -3.0, 0.0], Some(0));
        check(&[21.5, 0.25], Some(2));
        check(&[12.34, -0.01, 99.99], Some(2));
        check(&[0.1 + 0.2], None);
        check(&[f64::NAN], None);
        check(&[-0.0, 1.5], Some(1));
        check(&[1e20], None);
        check(&[], Some(0));
    }

    #[test]
    fn scaled_doubles_read_back_bit_for_bit() {
        let values = Float64Array::from(vec![Some(12.34), None, Some(-7.5), Some(1234.891)]);
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(values.clone())]).unwrap();
        let stored = scale_doubles(&batch).unwrap();
        assert!(matches!(stored.schema().field(0).data_type(), DataType::Decimal32(9, 3)));
        let back = unscale_doubles(stored).unwrap();
        let back = back.column(0).as_any().downcast_ref::<Float64Array>().unwrap();
        let bits = |a: &Float64Array| a.iter().map(|v| v.map(f64::to_bits)).collect::<Vec<_>>();
        assert_eq!(bits(back), bits(&values));
    }

    #[test]
    fn large_scaled_doubles_take_64_bits() {
        let values = Float64Array::from(vec![Some(123456789.5), Some(-0.5)]);
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(values.clone())]).unwrap();
        let stored = scale_doubles(&batch).unwrap();
        assert!(matches!(stored.schema().field(0).data_type(), DataType::Decimal64(18, 1)));
        let back = unscale_doubles(stored).unwrap();
        assert_eq!(back.column(0).as_any().downcast_ref::<Float64Array>().unwrap(), &values);
    }

    #[test]
    fn columns_that_repeat_in_long_runs_are_dictionary_encoded() {
        let load = arrow::array::Int64Array::from(vec![Some(5), None, Some(5), Some(5), Some(7), Some(7), Some(7), Some(7)]);
        assert_eq!(average_run(&load), 3, "runs 5×3 and 7×4, the null skipped");
        let walk = arrow::array::Int64Array::from(vec![1, 2, 3, 4]);
        assert_eq!(average_run(&walk), 1);
        assert_eq!(average_run(&arrow::array::StringArray::from(vec!["a", "a"])), 0, "only fixed-width columns");
    }

    #[test]
    fn bigints_that_fit_32_bits_are_stored_narrow_and_read_back_wide() {
        let values = arrow::array::Int64Array::from(vec![Some(5), None, Some(-7)]);
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values.clone())]).unwrap();
        let stored = scale_doubles(&batch).unwrap();
        assert_eq!(stored.schema().field(0).data_type(), &DataType::Int32);
        assert_eq!(unscale_doubles(stored).unwrap(), batch);
        let wide = arrow::array::Int64Array::from(vec![i64::from(i32::MAX) + 1]);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(wide)]).unwrap();
        assert_eq!(scale_doubles(&batch).unwrap().schema().field(0).data_type(), &DataType::Int64);
    }

    #[test]
    fn day_labels() {
        assert_eq!(day_label(0), "1970-01-01");
        assert_eq!(day_label(19_675), "2023-11-14");
        assert_eq!(day_label(-1), "1969-12-31");
    }
}
