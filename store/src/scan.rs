//! Reading the cold tier: a table's files over a time range, pruned by the time and dimension
//! statistics of each row group, projected to the columns asked for, and deduplicated by the
//! upsert rule wherever files overlap in time.
//!
//! A scan is planned as [`ScanUnit`]s. A unit of one file needs no deduplication: every file holds
//! each key once (a persist drains a deduplicated hot tier; compaction deduplicates). Files whose
//! time ranges overlap may hold the same key, so they form one unit that is merged by
//! [`merge_dedup`]. Units are independent: a reader may run them in parallel, in any order.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, DictionaryArray, Int64Array, RecordBatch, StringArray, StringViewArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::kernels::cmp;
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowFilter};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::PageIndexPolicy;

use crate::catalog::{FileMeta, TableEntry};
use crate::store::Store;
use crate::table::TableRef;
use crate::cold::{reading_schema, unscale_doubles};
use crate::upsert::{align, merge_columns};
use crate::error::StoreError;
use crate::schema::{arrow_schema, TableSchema, TIME_COLUMN, VERSION_COLUMN};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8 * 1024;

/// What to read of one table.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// Inclusive start of the time range (Unix nanoseconds).
    pub from_ns: i64,
    /// Exclusive end of the time range.
    pub to_ns: i64,
    /// Rows must match every filter.
    pub dimensions: Vec<DimensionFilter>,
    /// Column names to return, in this order; `None` returns every column of the table.
    pub projection: Option<Vec<String>>,
}

impl ScanRequest {
    /// Every row of `[from_ns, to_ns)`, every column.
    pub fn time_range(from_ns: i64, to_ns: i64) -> ScanRequest {
        ScanRequest { from_ns, to_ns, dimensions: Vec::new(), projection: None }
    }
}

/// A dimension predicate: the dimension `name` equals one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionFilter {
    pub name: String,
    pub values: Vec<String>,
}

/// Files read together; more than one only when their time ranges overlap, and then merged and
/// deduplicated. Files are in acceptance order: compacted files first, then persisted files in
/// commit order, so that at equal versions the row accepted first wins. A unit may also carry
/// rows not persisted yet (from ingest workers' memory, see [`attach_memory`]); they were
/// accepted after every file, in the order given.
#[derive(Debug, Clone, Default)]
pub struct ScanUnit {
    pub files: Vec<FileMeta>,
    pub memory: Vec<RecordBatch>,
}

/// The units of a scan of `entry` (see the module documentation).
pub fn plan_scan(entry: &TableEntry, request: &ScanRequest) -> Vec<ScanUnit> {
    let mut selected: Vec<(usize, &FileMeta)> = entry
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.max_time_ns >= request.from_ns && f.min_time_ns < request.to_ns)
        .collect();
    selected.sort_by_key(|(position, f)| (f.min_time_ns, *position));
    let mut units: Vec<(i64, Vec<(usize, &FileMeta)>)> = Vec::new();
    for (position, file) in selected {
        match units.last_mut() {
            Some((end, files)) if file.min_time_ns <= *end => {
                *end = (*end).max(file.max_time_ns);
                files.push((position, file));
            }
            _ => units.push((file.max_time_ns, vec![(position, file)])),
        }
    }
    units
        .into_iter()
        .map(|(_, mut files)| {
            files.sort_by_key(|(position, f)| (std::cmp::Reverse(f.level), *position));
            ScanUnit { files: files.into_iter().map(|(_, f)| f.clone()).collect(), memory: Vec::new() }
        })
        .collect()
}

/// Adds unpersisted rows (batches in any table shape, each holding `time`) to a scan: every unit
/// whose files overlap their time range joins them in one unit, merged and deduplicated, since a
/// row in memory may replace or repeat a persisted one. Units outside the range stay as they are.
pub fn attach_memory(units: Vec<ScanUnit>, memory: Vec<RecordBatch>) -> Result<Vec<ScanUnit>, StoreError> {
    let mut range: Option<(i64, i64)> = None;
    for batch in &memory {
        let Some(times) = batch.column_by_name(TIME_COLUMN) else { continue };
        let times = arrow::compute::cast(times, &DataType::Int64)?;
        let times = times.as_any().downcast_ref::<Int64Array>().expect("cast to Int64");
        if let (Some(min), Some(max)) = (arrow::compute::min(times), arrow::compute::max(times)) {
            range = Some(range.map_or((min, max), |(lo, hi)| (lo.min(min), hi.max(max))));
        }
    }
    let Some((min, max)) = range else { return Ok(units) };
    let (mut joined, mut rest) = (ScanUnit::default(), Vec::new());
    for unit in units {
        if unit.files.iter().any(|f| f.max_time_ns >= min && f.min_time_ns <= max) {
            joined.files.extend(unit.files);
        } else {
            rest.push(unit);
        }
    }
    // Compacted files first, then persisted ones in commit order: the catalog's acceptance order.
    joined.files.sort_by_key(|f| std::cmp::Reverse(f.level));
    joined.memory = memory;
    rest.push(joined);
    Ok(rest)
}

/// The Arrow schema of what `request` returns from a table of `schema`.
pub fn scan_schema(schema: &TableSchema, request: &ScanRequest) -> Result<SchemaRef, StoreError> {
    let full = arrow_schema(schema);
    match &request.projection {
        None => Ok(full),
        Some(names) => {
            let indices = names
                .iter()
                .map(|name| full.index_of(name).map_err(|_| StoreError::Invalid { what: "projection", detail: format!("no column {name:?}") }))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(full.project(&indices)?))
        }
    }
}

impl Store {
    /// Scans `table` as `request` says: one batch, deduplicated by the upsert rule. The rows of
    /// a unit of one file keep that file's order (series, then time); no order across units.
    pub async fn scan_table(&self, table: &TableRef, request: &ScanRequest) -> Result<Vec<RecordBatch>, StoreError> {
        let snapshot = self.snapshot().await?;
        let entry = snapshot
            .table(table)
            .ok_or_else(|| StoreError::TableNotFound { database: table.database.clone(), table: table.table.clone() })?;
        let mut batches = Vec::new();
        for unit in plan_scan(entry, request) {
            batches.extend(self.read_unit(&entry.schema, &unit, request).await?);
        }
        Ok(batches)
    }

    /// Reads one unit of a scan planned by [`plan_scan`], in the shape of [`scan_schema`].
    pub async fn read_unit(&self, schema: &TableSchema, unit: &ScanUnit, request: &ScanRequest) -> Result<Vec<RecordBatch>, StoreError> {
        let output = scan_schema(schema, request)?;
        if let ([file], []) = (unit.files.as_slice(), unit.memory.as_slice()) {
            return self.read_pruned(file, request, &output).await;
        }
        // Deduplication needs the whole key and the version, asked for or not.
        let full = arrow_schema(schema);
        let key_names = schema.upsert_key();
        let needed: Vec<usize> = (0..full.fields().len())
            .filter(|&i| {
                let name = full.field(i).name().as_str();
                key_names.contains(&name) || name == VERSION_COLUMN || output.index_of(name).is_ok()
            })
            .collect();
        let wide = Arc::new(full.project(&needed)?);
        let mut batches = Vec::new();
        for file in &unit.files {
            batches.extend(self.read_pruned(file, request, &wide).await?);
        }
        for batch in &unit.memory {
            let batch = align(batch, &full)?;
            let matching = matching_rows(&batch, request.from_ns, request.to_ns, &request.dimensions)?;
            let batch = arrow::compute::filter_record_batch(&batch, &matching)?;
            batches.push(align(&batch, &wide)?);
        }
        let merged = merge_columns(&wide, &key_names, &batches, false)?.merged;
        let indices = output.fields().iter().map(|f| wide.index_of(f.name())).collect::<Result<Vec<_>, _>>()?;
        Ok(vec![merged.project(&indices)?])
    }

    /// Reads the rows of `file` that match `request`'s time range and dimension filters, as
    /// `output` (columns the file lacks are nulls). Row groups whose statistics rule them out are
    /// skipped; the rest are decoded on blocking threads, split across the machine's cores.
    async fn read_pruned(&self, file: &FileMeta, request: &ScanRequest, output: &SchemaRef) -> Result<Vec<RecordBatch>, StoreError> {
        let parquet_error = |e: parquet::errors::ParquetError| StoreError::Parquet { path: file.path.clone(), detail: e.to_string() };
        let bytes: Bytes = self.object_store().get(&Path::from(file.path.clone())).await?.bytes().await?;
        let metadata = read_metadata(&bytes).map_err(parquet_error)?;
        let Some(plan) = FilePlan::new(&metadata, request, output).map_err(parquet_error)? else { return Ok(Vec::new()) };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(plan.row_groups.len()).max(1);
        let chunk = plan.row_groups.len().div_ceil(workers).max(1);
        let plan = Arc::new(plan);
        let mut tasks = Vec::new();
        for row_groups in plan.row_groups.chunks(chunk) {
            let (bytes, metadata, plan, row_groups, output, path) =
                (bytes.clone(), metadata.clone(), plan.clone(), row_groups.to_vec(), output.clone(), file.path.clone());
            tasks.push(tokio::task::spawn_blocking(move || plan.decode(bytes, metadata, row_groups, &output, &path)));
        }
        let mut batches = Vec::new();
        for task in tasks {
            let decoded = task.await.map_err(|e| StoreError::Parquet { path: file.path.clone(), detail: e.to_string() })?;
            batches.extend(decoded?);
        }
        Ok(batches)
    }
}

/// A file's metadata with its page index, set to read strings as views (see [`reading_schema`]).
pub(crate) fn read_metadata(bytes: &Bytes) -> parquet::errors::Result<ArrowReaderMetadata> {
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let metadata = ArrowReaderMetadata::load(bytes, options.clone())?;
    let schema = reading_schema(metadata.schema());
    ArrowReaderMetadata::try_new(metadata.metadata().clone(), options.with_schema(schema))
}

/// How to decode one file for one request.
struct FilePlan {
    row_groups: Vec<usize>,
    projection: Vec<usize>,
    /// Parquet leaf indices of the filter columns: time, then each filtered dimension.
    filter_columns: Vec<usize>,
    from_ns: i64,
    to_ns: i64,
    dimensions: Vec<DimensionFilter>,
    /// Whether rows must be checked one by one (the kept row groups are not all inside the range,
    /// or a dimension is filtered).
    filter_rows: bool,
}

impl FilePlan {
    /// `None` when nothing in the file can match.
    fn new(metadata: &ArrowReaderMetadata, request: &ScanRequest, output: &SchemaRef) -> parquet::errors::Result<Option<FilePlan>> {
        let arrow = metadata.schema();
        let parquet = metadata.parquet_schema();
        let groups = metadata.metadata().row_groups();
        let stats = |column: &str| StatisticsConverter::try_new(column, arrow, parquet);
        let times = stats(TIME_COLUMN)?;
        let as_i64 = |a: ArrayRef| arrow::compute::cast(&a, &DataType::Int64).map(|a| a.as_any().downcast_ref::<Int64Array>().cloned());
        let mins = as_i64(times.row_group_mins(groups.iter())?)?;
        let maxes = as_i64(times.row_group_maxes(groups.iter())?)?;
        let (Some(mins), Some(maxes)) = (mins, maxes) else { return Ok(None) };
        let mut keep: Vec<bool> = (0..groups.len())
            .map(|g| (mins.is_null(g) || mins.value(g) < request.to_ns) && (maxes.is_null(g) || maxes.value(g) >= request.from_ns))
            .collect();
        let inside = (0..groups.len()).all(|g| !keep[g] || (!mins.is_null(g) && mins.value(g) >= request.from_ns && maxes.value(g) < request.to_ns));
        let mut filter_columns = vec![times.parquet_column_index().expect("time is a leaf column")];
        for filter in &request.dimensions {
            let Ok(converter) = stats(&filter.name) else { return Ok(None) }; // column absent: all null
            let Some(index) = converter.parquet_column_index() else { return Ok(None) };
            filter_columns.push(index);
            let as_strings = |a: ArrayRef| arrow::compute::cast(&a, &DataType::Utf8);
            let mins = as_strings(converter.row_group_mins(groups.iter())?)?;
            let maxes = as_strings(converter.row_group_maxes(groups.iter())?)?;
            let (Some(mins), Some(maxes)) = (mins.as_any().downcast_ref::<StringArray>(), maxes.as_any().downcast_ref::<StringArray>()) else {
                continue; // no usable statistics: keep every row group
            };
            for (g, kept) in keep.iter_mut().enumerate() {
                if mins.is_null(g) || maxes.is_null(g) {
                    continue;
                }
                *kept &= filter.values.iter().any(|v| mins.value(g) <= v.as_str() && v.as_str() <= maxes.value(g));
            }
        }
        let row_groups: Vec<usize> = (0..groups.len()).filter(|&g| keep[g]).collect();
        if row_groups.is_empty() {
            return Ok(None);
        }
        // Columns with no value in the kept row groups (the single-measure columns of a
        // multi-measure table, say) are not decoded: `align` fills them with nulls.
        let all_null = |name: &str| -> bool {
            let Ok(converter) = stats(name) else { return false };
            let Ok(nulls) = converter.row_group_null_counts(groups.iter()) else { return false };
            row_groups.iter().all(|&g| !nulls.is_null(g) && nulls.value(g) == groups[g].num_rows() as u64)
        };
        let projection = output
            .fields()
            .iter()
            .filter(|f| !(f.is_nullable() && all_null(f.name())))
            .filter_map(|f| arrow.index_of(f.name()).ok())
            .collect();
        Ok(Some(FilePlan {
            row_groups,
            projection,
            filter_columns,
            from_ns: request.from_ns,
            to_ns: request.to_ns,
            dimensions: request.dimensions.clone(),
            filter_rows: !inside || !request.dimensions.is_empty(),
        }))
    }

    /// Decodes `row_groups` into batches of `output`'s shape: scaled doubles restored, columns
    /// the file lacks (or that were not decoded because they are all null) filled with nulls.
    /// Runs on a blocking thread, so all per-row work of a scan is spread across the cores.
    fn decode(&self, bytes: Bytes, metadata: ArrowReaderMetadata, row_groups: Vec<usize>, output: &SchemaRef, path: &str) -> Result<Vec<RecordBatch>, StoreError> {
        let parquet_error = |e: parquet::errors::ParquetError| StoreError::Parquet { path: path.to_string(), detail: e.to_string() };
        let reader = self.reader(bytes, metadata, row_groups).map_err(parquet_error)?;
        let mut nulls = NullColumns::default();
        let mut batches = Vec::new();
        for batch in reader {
            let batch = unscale_doubles(batch?)?;
            batches.push(nulls.align(&batch, output)?);
        }
        Ok(batches)
    }

    fn reader(&self, bytes: Bytes, metadata: ArrowReaderMetadata, row_groups: Vec<usize>) -> parquet::errors::Result<ParquetRecordBatchReader> {
        let parquet = metadata.parquet_schema().clone();
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, metadata)
            .with_row_groups(row_groups)
            .with_batch_size(BATCH_ROWS)
            .with_projection(ProjectionMask::roots(&parquet, self.projection.iter().copied()));
        if self.filter_rows {
            let (from, to, dimensions) = (self.from_ns, self.to_ns, self.dimensions.clone());
            let predicate = ArrowPredicateFn::new(ProjectionMask::leaves(&parquet, self.filter_columns.iter().copied()), move |batch: RecordBatch| {
                matching_rows(&batch, from, to, &dimensions)
            });
            builder = builder.with_row_filter(RowFilter::new(vec![Box::new(predicate)]));
        }
        builder.build()
    }
}

/// Null columns for [`align`]ing many batches of one scan: one all-null array per output column,
/// allocated once and sliced, instead of a zeroed buffer per batch.
#[derive(Default)]
struct NullColumns {
    arrays: Vec<Option<ArrayRef>>,
}

impl NullColumns {
    fn align(&mut self, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, StoreError> {
        if batch.num_columns() == schema.fields().len() {
            return align(batch, schema);
        }
        self.arrays.resize(schema.fields().len(), None);
        let rows = batch.num_rows();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for (field, cached) in schema.fields().iter().zip(self.arrays.iter_mut()) {
            let column = match batch.column_by_name(field.name()) {
                Some(column) if column.data_type() == field.data_type() => column.clone(),
                Some(column) => arrow::compute::cast(column, field.data_type())?,
                None => {
                    if cached.as_ref().is_none_or(|a| a.len() < rows) {
                        *cached = Some(arrow::array::new_null_array(field.data_type(), rows.max(BATCH_ROWS)));
                    }
                    cached.as_ref().expect("just filled").slice(0, rows)
                }
            };
            columns.push(column);
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
    }
}

/// The rows of `batch` (time and the filtered dimensions) inside `[from, to)` whose dimensions
/// match every filter.
fn matching_rows(batch: &RecordBatch, from: i64, to: i64, dimensions: &[DimensionFilter]) -> Result<BooleanArray, arrow::error::ArrowError> {
    let times = arrow::compute::cast(batch.column_by_name(TIME_COLUMN).expect("time is projected"), &DataType::Int64)?;
    let mut keep = arrow::compute::and(&cmp::gt_eq(&times, &Int64Array::new_scalar(from))?, &cmp::lt(&times, &Int64Array::new_scalar(to))?)?;
    for filter in dimensions {
        let column = batch.column_by_name(&filter.name).expect("filtered dimensions are projected");
        keep = arrow::compute::and(&keep, &equals_any(column, &filter.values)?)?;
    }
    Ok(keep)
}

/// Whether each string of `column` is one of `values` (a null is not). A dictionary column is
/// compared through its dictionary: each distinct string once, then a lookup per row.
fn equals_any(column: &ArrayRef, values: &[String]) -> Result<BooleanArray, arrow::error::ArrowError> {
    if let Some(dictionary) = column.as_any().downcast_ref::<DictionaryArray<Int32Type>>() {
        let hits = equals_any(dictionary.values(), values)?;
        let hits: Vec<bool> = (0..hits.len()).map(|i| hits.is_valid(i) && hits.value(i)).collect();
        let keys = dictionary.keys();
        let matched = BooleanBuffer::collect_bool(keys.len(), |row| hits.get(keys.values()[row] as usize).copied().unwrap_or(false));
        let matched = match keys.nulls() {
            Some(valid) => &matched & valid.inner(),
            None => matched,
        };
        return Ok(BooleanArray::new(matched, None));
    }
    let column = arrow::compute::cast(column, &DataType::Utf8View)?;
    let mut any = BooleanArray::from(vec![false; column.len()]);
    for value in values {
        any = arrow::compute::or(&any, &cmp::eq(&column, &StringViewArray::new_scalar(value.as_str()))?)?;
    }
    // `eq` leaves nulls where the column has them; a null matches nothing.
    Ok(if any.null_count() > 0 { arrow::compute::prep_null_mask_filter(&any) } else { any })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::TableProperties;

    fn file(path: &str, level: u8, min: i64, max: i64) -> FileMeta {
        FileMeta { path: path.into(), day: 0, min_time_ns: min, max_time_ns: max, rows: 1, bytes: 1, level, created_ns: 0 }
    }

    #[test]
    fn overlapping_files_form_one_unit_compacted_first() {
        let files = vec![file("fresh-a", 0, 50, 60), file("hour-0", 1, 0, 99), file("hour-1", 1, 100, 199), file("fresh-b", 0, 250, 260), file("fresh-c", 0, 255, 300)];
        let entry = TableEntry { properties: TableProperties::default(), schema: TableSchema::default(), files, info: Default::default() };
        let units: Vec<Vec<String>> = plan_scan(&entry, &ScanRequest::time_range(0, 1_000))
            .into_iter()
            .map(|u| u.files.into_iter().map(|f| f.path).collect())
            .collect();
        assert_eq!(units, [vec!["hour-0", "fresh-a"], vec!["hour-1"], vec!["fresh-b", "fresh-c"]]);
        let units = plan_scan(&entry, &ScanRequest::time_range(100, 250));
        assert_eq!(units.len(), 1, "[100, 250) overlaps only hour-1: {units:?}");
        assert_eq!(units[0].files[0].path, "hour-1");
    }
}
