//! Timestream's upsert rule on (dimensions, measure_name, time), in both of its forms: as a
//! decision on one write ([`decide`], which the hot tier applies as records arrive), and over
//! batches of rows ([`merge_dedup`], which every scan and every compaction applies to rows from
//! several files and from memory). The key's columns are [`TableSchema::upsert_key`].

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use lodestone_model::MeasureValue;

use crate::error::StoreError;
use crate::schema::{arrow_schema, TableSchema, VERSION_COLUMN};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpsertDecision {
    /// No record under the key yet.
    Insert,
    /// A higher version: the new record replaces the old.
    Replace,
    /// The same value again at a version that is not higher: nothing changes.
    NoOp,
    /// Another value at a version that is not higher: refused; carries the existing version.
    Reject { existing_version: u64 },
}

/// Decides what a write of `new` (value, version) does given what exists under its key.
pub fn decide(existing: Option<(&MeasureValue, u64)>, new: (&MeasureValue, u64)) -> UpsertDecision {
    let Some((old_value, old_version)) = existing else { return UpsertDecision::Insert };
    let (new_value, new_version) = new;
    if new_version > old_version {
        UpsertDecision::Replace
    } else if new_value.same_as(old_value) {
        UpsertDecision::NoOp
    } else {
        UpsertDecision::Reject { existing_version: old_version }
    }
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
    // The row count is explicit: a projection may ask for no column at all (`count(*)`).
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

/// Concatenates `batches` (in commit order), sorts by series then time, and keeps one row per
/// upsert key: the highest version, and among equal versions the first.
pub fn merge_dedup(schema: &TableSchema, batches: &[RecordBatch]) -> Result<RecordBatch, StoreError> {
    Ok(merge(schema, batches, false)?.merged)
}

/// What a merge kept, and the rows the upsert rule refuses.
pub(crate) struct Merged {
    pub merged: RecordBatch,
    /// Rows that met an earlier row of their key with another value at a version not lower
    /// (a cross-tier conflict), each with the version it met; `None` unless asked for.
    pub conflicts: Option<(RecordBatch, Vec<u64>)>,
}

/// [`merge_dedup`], also finding the conflicts when `find_conflicts` is set.
pub(crate) fn merge(schema: &TableSchema, batches: &[RecordBatch], find_conflicts: bool) -> Result<Merged, StoreError> {
    merge_columns(&arrow_schema(schema), &schema.upsert_key(), batches, find_conflicts)
}

/// [`merge`] of batches brought to `target`, which holds the key columns `key_names` and the
/// version column (and any others: the values, compared when finding conflicts).
pub(crate) fn merge_columns(target: &SchemaRef, key_names: &[&str], batches: &[RecordBatch], find_conflicts: bool) -> Result<Merged, StoreError> {
    let aligned: Vec<RecordBatch> = batches.iter().map(|b| align(b, target)).collect::<Result<_, _>>()?;
    let all = concat_batches(target, &aligned)?;
    let rows = all.num_rows();
    let key_columns: Vec<ArrayRef> = key_names.iter().map(|n| all.column_by_name(n).expect("aligned").clone()).collect();
    // The keys in Arrow's row format (ascending, nulls first), so that comparing two keys is one
    // memcmp; sorting with per-column comparators instead took most of a query's time.
    let converter = RowConverter::new(key_columns.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
    let keys = converter.convert_columns(&key_columns)?;
    let version = all.column_by_name(VERSION_COLUMN).expect("aligned").clone();
    let versions = version.as_any().downcast_ref::<UInt64Array>().expect("version is UInt64");
    // By key, then highest version (a null one last), then commit order. A stable sort keeps
    // commit order among equals, and merges the runs it finds: each persisted file is already
    // sorted by key, so a scan of k files costs about n·log k comparisons, not n·log n.
    let version_of = |i: u32| if versions.is_null(i as usize) { None } else { Some(versions.value(i as usize)) };
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by(|&a, &b| keys.row(a as usize).cmp(&keys.row(b as usize)).then_with(|| version_of(b).cmp(&version_of(a))));

    let mut keep: Vec<u32> = Vec::with_capacity(rows);
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    for i in 1..=rows {
        if i == rows || keys.row(order[i] as usize) != keys.row(order[start] as usize) {
            keep.push(order[start]);
            if i - start > 1 {
                groups.push(start..i);
            }
            start = i;
        }
    }
    let merged = take_record_batch(&all, &UInt32Array::from(keep))?;
    if !find_conflicts {
        return Ok(Merged { merged, conflicts: None });
    }
    let value_columns: Vec<ArrayRef> = target
        .fields()
        .iter()
        .filter(|f| f.name() != VERSION_COLUMN && !key_names.contains(&f.name().as_str()))
        .map(|f| all.column_by_name(f.name()).expect("aligned").clone())
        .collect();
    let value_converter = RowConverter::new(value_columns.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
    let values = value_converter.convert_columns(&value_columns)?;
    let (mut refused, mut met) = (Vec::new(), Vec::new());
    for group in groups {
        // Replay the key's rows in acceptance order through the upsert rule.
        let mut arrivals: Vec<usize> = group.map(|i| order[i] as usize).collect();
        arrivals.sort_unstable();
        let mut current = arrivals[0];
        for &row in &arrivals[1..] {
            if versions.value(row) > versions.value(current) {
                current = row;
            } else if values.row(row) != values.row(current) {
                refused.push(row as u32);
                met.push(versions.value(current));
            }
        }
    }
    let conflicts = take_record_batch(&all, &UInt32Array::from(refused))?;
    Ok(Merged { merged, conflicts: Some((conflicts, met)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::Scalar;

    fn v(x: f64) -> MeasureValue {
        MeasureValue::Single(Scalar::Double(x))
    }

    #[test]
    fn rules() {
        let check = |existing: Option<(f64, u64)>, new: (f64, u64), expected| {
            let old = existing.map(|(x, ver)| (v(x), ver));
            let got = decide(old.as_ref().map(|(val, ver)| (val, *ver)), (&v(new.0), new.1));
            assert_eq!(got, expected, "existing {existing:?} new {new:?}");
        };
        check(None, (1.0, 1), UpsertDecision::Insert);
        check(Some((1.0, 1)), (1.0, 1), UpsertDecision::NoOp);
        check(Some((1.0, 2)), (1.0, 1), UpsertDecision::NoOp);
        check(Some((1.0, 1)), (2.0, 2), UpsertDecision::Replace);
        check(Some((1.0, 1)), (1.0, 2), UpsertDecision::Replace);
        check(Some((1.0, 1)), (2.0, 1), UpsertDecision::Reject { existing_version: 1 });
        check(Some((1.0, 3)), (2.0, 2), UpsertDecision::Reject { existing_version: 3 });
        check(Some((f64::NAN, 1)), (f64::NAN, 1), UpsertDecision::NoOp);
    }
}
