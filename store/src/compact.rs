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

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::catalog::FileMeta;
use crate::store::Store;
use crate::table::{ResourceInfo, TableRef};
use crate::upsert::{merge, Merged};
use crate::cold::{encode_parquet, file_path, unscale_doubles, ZSTD_LEVEL_COMPACTED};
use crate::error::StoreError;
use crate::schema::{arrow_schema, TableSchema, TIME_COLUMN};
use crate::rejected::{records_of, rejected_records_properties, rejected_records_table, Rejected, REJECTED_RECORDS_DATABASE};
use crate::{day_start_ns, days_before};
use lodestone_model::{record_to_json, Record, RejectReason};

/// When and how much to compact.
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// A partition is compacted once it has at least this many files.
    pub files_min: usize,
    /// Most input bytes merged in memory at once per partition; the smallest files go first.
    pub input_bytes_max: u64,
    /// Most rows of fresh files merged at once per partition. Parquet files decompress about
    /// seventy-fold here, so rows, not bytes, bound the merge's memory (about 1 KiB per row in
    /// all, compacted slices included).
    pub input_rows_max: u64,
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
            input_rows_max: 2_000_000,
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
    /// Cross-tier conflicts found by compaction and written to `_lodestone.rejected_records`.
    pub conflicts_rejected: usize,
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
                    if let Some(done) = self.compact_partition(&table, &entry.schema, day, &inputs, policy, now_ns).await? {
                        report.partitions_compacted += 1;
                        report.files_merged += inputs.len();
                        report.rows_before += done.rows_before;
                        report.rows_after += done.rows_after;
                        report.conflicts_rejected += done.conflicts;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Merges `inputs` into one file per time slice and swaps them in, together with the
    /// rejected-records rows of the conflicts the merge found (see [`conflict_rejections`]).
    /// `None` when another process changed the partition first (the files written are then
    /// deleted again).
    async fn compact_partition(
        &self,
        table: &TableRef,
        schema: &TableSchema,
        day: i64,
        inputs: &[FileMeta],
        policy: &CompactionPolicy,
        now_ns: i64,
    ) -> Result<Option<Compacted>, StoreError> {
        let mut batches = Vec::new();
        for file in inputs {
            batches.extend(self.read_file(file).await?);
        }
        // Conflicts inside the rejected-records table itself are not reported again.
        let find_conflicts = table.database != REJECTED_RECORDS_DATABASE;
        let Merged { merged, conflicts } = merge(schema, &batches, find_conflicts)?;
        let mut outputs = Vec::new();
        for slice in split_by_time(&merged, policy.file_span_ns)? {
            outputs.push(self.write_compacted(table, day, &slice, now_ns).await?);
        }
        let (conflicts, met) = conflicts.unwrap_or_else(|| (RecordBatch::new_empty(merged.schema()), Vec::new()));
        let rejections = conflict_rejections(table, schema, &conflicts, &met, now_ns);
        let rejected = rejected_records_table();
        let mut rejected_rows = crate::hot::TableRows { table: rejected.clone(), schema: TableSchema::default(), rows: Vec::new() };
        let mut rejected_files = Vec::new();
        if !rejections.is_empty() {
            let known = self.snapshot().await?.table(&rejected).map(|t| t.schema.clone()).unwrap_or_default();
            let properties = rejected_records_properties();
            let mut hot = crate::hot::HotTier::new(usize::MAX);
            for record in rejections {
                if let Err(rejection) = hot.write(&rejected, &properties, &known, record, now_ns, 0) {
                    tracing::warn!(%rejection, "a conflict could not be recorded in rejected_records");
                }
            }
            if let Some(rows) = hot.drain().tables.pop() {
                rejected_rows = rows;
                let mut schema = known;
                schema.merge(&rejected_rows.schema);
                rejected_files = crate::cold::write_partition_file(self.object_store().as_ref(), &rejected, &schema, &rejected_rows.rows).await?;
            }
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
            if !rejected_files.is_empty() {
                if snapshot.table(&rejected).is_none() {
                    snapshot.databases.entry(rejected.database.clone()).or_default();
                    snapshot.add_table(&rejected, rejected_records_properties(), ResourceInfo::new(lodestone_kit::now_ns(), Default::default()))?;
                }
                let entry = snapshot.table_mut(&rejected)?;
                entry.schema.merge(&rejected_rows.schema);
                entry.files.extend(rejected_files.iter().cloned());
            }
            applied = true;
            Ok(())
        })
        .await?;
        if !applied {
            for output in outputs.iter().chain(&rejected_files) {
                let _ = self.object_store().delete(&Path::from(output.path.clone())).await;
            }
            return Ok(None);
        }
        Ok(Some(Compacted {
            rows_before: inputs.iter().map(|f| f.rows).sum(),
            rows_after: outputs.iter().map(|f| f.rows).sum(),
            conflicts: rejected_rows.rows.len(),
        }))
    }

    /// Writes one compacted slice; invisible until committed.
    async fn write_compacted(&self, table: &TableRef, day: i64, slice: &RecordBatch, now_ns: i64) -> Result<FileMeta, StoreError> {
        let path = file_path(table, day);
        let bytes = encode_parquet(slice, ZSTD_LEVEL_COMPACTED).map_err(|detail| StoreError::Parquet { path: path.clone(), detail })?;
        let times = time_column(slice)?;
        let output = FileMeta {
            path: path.clone(),
            day,
            min_time_ns: arrow::compute::min(&times).unwrap_or_else(|| day_start_ns(day)),
            max_time_ns: arrow::compute::max(&times).unwrap_or_else(|| day_start_ns(day)),
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
                    let horizon = days_before(now_ns, entry.properties.magnetic_retention_days);
                    let mut days = std::collections::BTreeSet::new();
                    entry.files.retain(|f| {
                        let expired = day_start_ns(f.day.saturating_add(1)) <= horizon;
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

/// What compacting one partition did.
struct Compacted {
    rows_before: u64,
    rows_after: u64,
    conflicts: usize,
}

/// The rejected-records rows of cross-tier conflicts: `conflicts` (rows of `table`) each met a
/// row accepted earlier with another value at version `met[i]` or higher, so Timestream's rule
/// refuses them (reason `version_conflict`, source `store`). They were accepted by a worker whose
/// memory no longer held the earlier row; compaction is where the two first meet.
fn conflict_rejections(table: &TableRef, schema: &TableSchema, conflicts: &RecordBatch, met: &[u64], now_ns: i64) -> Vec<Record> {
    records_of(schema, conflicts)
        .into_iter()
        .zip(met)
        .enumerate()
        .map(|(index, (record, existing_version))| {
            let device_id = record.dimensions.iter().find(|d| d.name == "device_id" || d.name == "device").map(|d| d.value.clone());
            Rejected {
                device_id: device_id.unwrap_or_default(),
                reason: RejectReason::VersionConflict.as_str().to_string(),
                source: lodestone_model::RejectedBy::Store.as_str().into(),
                detail: format!(
                    "{table}: another value exists under this key at version {existing_version}; write a higher version to replace it"
                ),
                payload: record_to_json(&record).to_string(),
                extra: Vec::new(),
            }
            .into_record(now_ns + index as i64)
        })
        .collect()
}

/// The files of one partition to compact, oldest content first: once it has `files_min` level-0
/// files or its oldest level-0 file is `fresh_age_max_ns` old, a prefix of them in commit order
/// (within `input_bytes_max` and `input_rows_max`), preceded by the level-1 files whose time range overlaps theirs
/// (late data merges into its slice).
fn select_inputs(files: &[&FileMeta], policy: &CompactionPolicy, now_ns: i64) -> Option<Vec<FileMeta>> {
    let fresh: Vec<&FileMeta> = files.iter().copied().filter(|f| f.level == 0).collect();
    let oldest_fresh = fresh.iter().map(|f| f.created_ns).min()?;
    let aged = now_ns.saturating_sub(oldest_fresh) >= policy.fresh_age_max_ns;
    if fresh.len() < policy.files_min.max(2) && !aged {
        return None;
    }
    let (mut bytes, mut rows) = (policy.input_bytes_max, policy.input_rows_max);
    let mut chosen: Vec<&FileMeta> = Vec::new();
    for file in fresh {
        if !chosen.is_empty() && (file.bytes > bytes || file.rows > rows) {
            break;
        }
        bytes = bytes.saturating_sub(file.bytes);
        rows = rows.saturating_sub(file.rows);
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
