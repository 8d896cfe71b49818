//! Compaction and retention of the cold tier.
//!
//! Compaction merges the small files of one table-day partition into one file, sorted by series
//! then time and deduplicated by the upsert rule (per key the highest version wins; at equal
//! versions the earliest file's row, the one that was accepted first). Retention drops whole
//! partitions older than the table's magnetic retention. Both commit through the catalog: a
//! commit applies only if every input file is still listed, so they are safe to run from any
//! number of processes and to interrupt at any instant. Replaced files are not deleted at once:
//! they go to the catalog's garbage list and are deleted after a grace period, so that a query
//! that started on an older snapshot can still read them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn, SortOptions};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::catalog::{FileMeta, Store, TableRef};
use crate::cold::{encode_parquet, file_path, unscale_doubles};
use crate::error::StoreError;
use crate::schema::{arrow_schema, TableSchema, MEASURE_NAME_COLUMN, TIME_COLUMN, VERSION_COLUMN};
use crate::DAY_NS;

/// When and how much to compact.
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// A partition is compacted once it has at least this many files.
    pub files_min: usize,
    /// Most input bytes merged in memory at once per partition; the smallest files go first.
    pub input_bytes_max: u64,
    /// Replaced files stay this long before they are deleted (queries may still read them).
    pub garbage_grace_ns: i64,
    /// Time span of one compacted file: a window scan reads only the slices it overlaps.
    pub file_span_ns: i64,
    /// A partition whose oldest fresh file is this old is compacted even below `files_min`, so
    /// that duplicates delivered late are merged away in a quiet partition too.
    pub fresh_age_max_ns: i64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            files_min: 8,
            input_bytes_max: 256 * 1024 * 1024,
            garbage_grace_ns: 5 * 60 * 1_000_000_000,
            file_span_ns: 3_600 * 1_000_000_000,
            fresh_age_max_ns: 60 * 1_000_000_000,
        }
    }
}

/// What one round of background work did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub partitions_compacted: usize,
    pub files_merged: usize,
    pub rows_before: u64,
    pub rows_after: u64,
    pub partitions_expired: usize,
    pub files_deleted: usize,
}

impl Store {
    /// Compacts every partition that the policy selects. Returns after each partition's commit.
    pub async fn compact(&self, policy: &CompactionPolicy, now_ns: i64) -> Result<MaintenanceReport, StoreError> {
        let snapshot = self.snapshot().await?;
        let mut report = MaintenanceReport::default();
        for (database, tables) in &snapshot.databases {
            for (name, entry) in tables {
                let table = TableRef { database: database.clone(), table: name.clone() };
                let mut by_day: BTreeMap<i64, Vec<&FileMeta>> = BTreeMap::new();
                for file in &entry.files {
                    by_day.entry(file.day).or_default().push(file);
                }
                for (day, files) in by_day {
                    let Some(inputs) = select_inputs(&files, policy, now_ns) else { continue };
                    if let Some((rows_before, rows_after)) = self.compact_partition(&table, &entry.schema, day, &inputs, policy, now_ns).await? {
                        report.partitions_compacted += 1;
                        report.files_merged += inputs.len();
                        report.rows_before += rows_before;
                        report.rows_after += rows_after;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Merges `inputs` into one file per time slice and swaps them in. `None` when another
    /// process changed the partition first (the merged files are then deleted again).
    async fn compact_partition(
        &self,
        table: &TableRef,
        schema: &TableSchema,
        day: i64,
        inputs: &[FileMeta],
        policy: &CompactionPolicy,
        now_ns: i64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let mut batches = Vec::new();
        for file in inputs {
            batches.extend(self.read_file(file).await?);
        }
        let merged = merge_dedup(schema, &batches)?;
        let mut outputs = Vec::new();
        for slice in split_by_time(&merged, policy.file_span_ns)? {
            outputs.push(self.write_compacted(table, day, &slice, now_ns).await?);
        }
        let mut applied = false;
        self.commit(|snapshot| {
            applied = false;
            let Some(entry) = snapshot.databases.get_mut(&table.database).and_then(|t| t.get_mut(&table.table)) else { return Ok(()) };
            if !inputs.iter().all(|input| entry.files.iter().any(|f| f.path == input.path)) {
                return Ok(());
            }
            entry.files.retain(|f| !inputs.iter().any(|input| input.path == f.path));
            entry.files.extend(outputs.iter().cloned());
            snapshot.garbage.extend(inputs.iter().map(|f| (f.path.clone(), now_ns)));
            applied = true;
            Ok(())
        })
        .await?;
        if !applied {
            for output in &outputs {
                let _ = self.object_store().delete(&Path::from(output.path.clone())).await;
            }
            return Ok(None);
        }
        let rows_before = inputs.iter().map(|f| f.rows).sum();
        Ok(Some((rows_before, outputs.iter().map(|f| f.rows).sum())))
    }

    /// Writes one compacted slice; invisible until committed.
    async fn write_compacted(&self, table: &TableRef, day: i64, slice: &RecordBatch, now_ns: i64) -> Result<FileMeta, StoreError> {
        let path = file_path(table, day);
        let bytes = encode_parquet(slice).map_err(|detail| StoreError::Parquet { path: path.clone(), detail })?;
        let times = time_column(slice)?;
        let output = FileMeta {
            path: path.clone(),
            day,
            min_time_ns: arrow::compute::min(&times).unwrap_or(day * DAY_NS),
            max_time_ns: arrow::compute::max(&times).unwrap_or(day * DAY_NS),
            rows: slice.num_rows() as u64,
            bytes: bytes.len() as u64,
            level: 1,
            created_ns: now_ns,
        };
        self.object_store().put(&Path::from(path), PutPayload::from(bytes)).await?;
        Ok(output)
    }

    /// Reads one cold-tier file whole, in the table's types (scaled doubles back to DOUBLE).
    pub async fn read_file(&self, file: &FileMeta) -> Result<Vec<RecordBatch>, StoreError> {
        let parquet_error = |e: parquet::errors::ParquetError| StoreError::Parquet { path: file.path.clone(), detail: e.to_string() };
        let bytes: Bytes = self.object_store().get(&Path::from(file.path.clone())).await?.bytes().await?;
        let metadata = crate::scan::read_metadata(&bytes).map_err(parquet_error)?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, metadata).build().map_err(parquet_error)?;
        reader.map(|batch| Ok(unscale_doubles(batch?)?)).collect()
    }

    /// Scans `table` over `[from_ns, to_ns)`, every column, deduplicated by the upsert rule, as
    /// one batch (see [`Store::scan_table`] for projection and dimension filters).
    pub async fn scan(&self, table: &TableRef, from_ns: i64, to_ns: i64) -> Result<RecordBatch, StoreError> {
        let snapshot = self.snapshot().await?;
        let entry = snapshot
            .table(table)
            .ok_or_else(|| StoreError::TableNotFound { database: table.database.clone(), table: table.table.clone() })?;
        let batches = self.scan_table(table, &crate::scan::ScanRequest::time_range(from_ns, to_ns)).await?;
        Ok(concat_batches(&arrow_schema(&entry.schema), &batches)?)
    }

    /// Drops every partition that ended before `now_ns` minus its table's magnetic retention,
    /// and deletes garbage older than the grace period. Returns after the catalog commit.
    pub async fn apply_retention(&self, policy: &CompactionPolicy, now_ns: i64) -> Result<MaintenanceReport, StoreError> {
        let mut report = MaintenanceReport::default();
        let snapshot = self.commit(|snapshot| {
            report = MaintenanceReport::default();
            let mut expired_paths = Vec::new();
            for tables in snapshot.databases.values_mut() {
                for entry in tables.values_mut() {
                    let horizon = now_ns.saturating_sub(i64::from(entry.properties.magnetic_retention_days) * DAY_NS);
                    let mut days = std::collections::BTreeSet::new();
                    entry.files.retain(|f| {
                        let expired = (f.day + 1) * DAY_NS <= horizon;
                        if expired {
                            days.insert(f.day);
                            expired_paths.push(f.path.clone());
                        }
                        !expired
                    });
                    report.partitions_expired += days.len();
                }
            }
            snapshot.garbage.extend(expired_paths.into_iter().map(|p| (p, now_ns)));
            Ok(())
        })
        .await?;
        let old: Vec<String> = snapshot.garbage.iter().filter(|(_, at)| *at + policy.garbage_grace_ns <= now_ns).map(|(p, _)| p.clone()).collect();
        for path in &old {
            match self.object_store().delete(&Path::from(path.clone())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => report.files_deleted += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if !old.is_empty() {
            self.commit(|snapshot| {
                snapshot.garbage.retain(|(p, _)| !old.contains(p));
                Ok(())
            })
            .await?;
        }
        Ok(report)
    }
}

/// The files of one partition to compact, oldest content first: once it has `files_min` level-0
/// files or its oldest level-0 file is `fresh_age_max_ns` old, a prefix of them in commit order
/// (within `input_bytes_max`), preceded by the level-1 files whose time range overlaps theirs
/// (late data merges into its slice).
fn select_inputs(files: &[&FileMeta], policy: &CompactionPolicy, now_ns: i64) -> Option<Vec<FileMeta>> {
    let fresh: Vec<&FileMeta> = files.iter().copied().filter(|f| f.level == 0).collect();
    let oldest_fresh = fresh.iter().map(|f| f.created_ns).min()?;
    let aged = now_ns.saturating_sub(oldest_fresh) >= policy.fresh_age_max_ns;
    if fresh.len() < policy.files_min.max(2) && !aged {
        return None;
    }
    let mut budget = policy.input_bytes_max;
    let mut chosen: Vec<&FileMeta> = Vec::new();
    for file in fresh {
        if !chosen.is_empty() && file.bytes > budget {
            break;
        }
        budget = budget.saturating_sub(file.bytes);
        chosen.push(file);
    }
    let from = chosen.iter().map(|f| f.min_time_ns).min()?;
    let to = chosen.iter().map(|f| f.max_time_ns).max()?;
    let overlapping: Vec<&FileMeta> = files.iter().copied().filter(|f| f.level > 0 && f.max_time_ns >= from && f.min_time_ns <= to).collect();
    if chosen.len() + overlapping.len() < 2 {
        return None; // one file alone is already sorted and deduplicated
    }
    Some(overlapping.into_iter().chain(chosen).cloned().collect())
}

/// The time column as nanoseconds.
fn time_column(batch: &RecordBatch) -> Result<arrow::array::Int64Array, StoreError> {
    let times = arrow::compute::cast(batch.column_by_name(TIME_COLUMN).expect("time column"), &arrow::datatypes::DataType::Int64)?;
    Ok(times.as_any().downcast_ref::<arrow::array::Int64Array>().expect("cast to Int64").clone())
}

/// Splits a batch sorted by series then time into one batch per `span_ns` time slice, each
/// still sorted by series then time.
fn split_by_time(batch: &RecordBatch, span_ns: i64) -> Result<Vec<RecordBatch>, StoreError> {
    let times = time_column(batch)?;
    let mut slices: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (row, time) in times.values().iter().enumerate() {
        slices.entry(time.div_euclid(span_ns.max(1))).or_default().push(row as u32);
    }
    slices.into_values().map(|rows| Ok(take_record_batch(batch, &UInt32Array::from(rows))?)).collect()
}

/// Brings `batch` to `schema`: columns it lacks become nulls, others are cast when their type
/// differs (a file written before the table learned a column).
pub(crate) fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, StoreError> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => arrow::compute::cast(column, field.data_type()),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Concatenates `batches` (in commit order), sorts by series then time, and keeps one row per
/// upsert key: the highest version, and among equal versions the first.
pub fn merge_dedup(schema: &TableSchema, batches: &[RecordBatch]) -> Result<RecordBatch, StoreError> {
    let key_names: Vec<&str> = schema.dimensions.iter().map(String::as_str).chain([MEASURE_NAME_COLUMN, TIME_COLUMN]).collect();
    merge_dedup_columns(&arrow_schema(schema), &key_names, batches)
}

/// [`merge_dedup`] of batches brought to `target`, which holds the key columns `key_names` and
/// the version column (and any others).
pub(crate) fn merge_dedup_columns(target: &SchemaRef, key_names: &[&str], batches: &[RecordBatch]) -> Result<RecordBatch, StoreError> {
    let aligned: Vec<RecordBatch> = batches.iter().map(|b| align(b, target)).collect::<Result<_, _>>()?;
    let all = concat_batches(target, &aligned)?;
    let rows = all.num_rows();
    let key_columns: Vec<ArrayRef> = key_names.iter().map(|n| all.column_by_name(n).expect("aligned").clone()).collect();
    let ascending = SortOptions { descending: false, nulls_first: true };
    let mut sort: Vec<SortColumn> = key_columns.iter().map(|c| SortColumn { values: c.clone(), options: Some(ascending) }).collect();
    let version = all.column_by_name(VERSION_COLUMN).expect("aligned").clone();
    sort.push(SortColumn { values: version, options: Some(SortOptions { descending: true, nulls_first: false }) });
    let ordinal: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..rows as u64));
    sort.push(SortColumn { values: ordinal, options: Some(ascending) });
    let order = lexsort_to_indices(&sort, None)?;
    let sorted = take_record_batch(&all, &order)?;

    let sorted_keys: Vec<ArrayRef> = key_names.iter().map(|n| sorted.column_by_name(n).expect("aligned").clone()).collect();
    let converter = RowConverter::new(sorted_keys.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
    let keys = converter.convert_columns(&sorted_keys)?;
    let keep: Vec<u32> = (0..rows).filter(|&i| i == 0 || keys.row(i) != keys.row(i - 1)).map(|i| i as u32).collect();
    Ok(take_record_batch(&sorted, &UInt32Array::from(keep))?)
}
