//! The memory tier as a writer holds it and serves it: the [`HotTier`] taking writes, and the
//! batch being persisted (drained from the hot tier, its files not committed yet). Queries fetch
//! both before they read the catalog, so a row is always in one or the other or in a committed
//! file. The rows travel to queries as an Arrow IPC stream ([`encode_ipc`], [`decode_ipc`]).

use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;

use crate::table::TableRef;
use crate::error::StoreError;
use crate::hot::{HotTier, PersistBatch};

/// A writer's rows not persisted yet. Cheap to clone: clones share the rows.
#[derive(Clone)]
pub struct Memory {
    hot: Arc<Mutex<HotTier>>,
    persisting: Arc<Mutex<Option<Arc<PersistBatch>>>>,
}

impl Memory {
    /// An empty memory tier of at most `rows_max` rows, each table within `limits`.
    pub fn new(rows_max: usize, limits: crate::table::StoreLimits) -> Memory {
        Memory { hot: Arc::new(Mutex::new(HotTier::new(rows_max).with_limits(limits))), persisting: Arc::new(Mutex::new(None)) }
    }

    /// The hot tier, locked: hold the guard briefly, queries wait for it.
    pub fn hot(&self) -> MutexGuard<'_, HotTier> {
        self.hot.lock().expect("memory lock")
    }

    /// Drains the hot tier into the batch to persist, which stays visible to queries until
    /// [`Memory::end_persist`]. Both happen under the hot tier's lock, so that a reader sees
    /// every row in one place or the other.
    pub fn begin_persist(&self) -> Arc<PersistBatch> {
        let mut hot = self.hot();
        let batch = Arc::new(hot.drain());
        *self.persisting.lock().expect("memory lock") = Some(batch.clone());
        batch
    }

    /// The persisting batch is committed in the catalog (or its persist failed and the worker
    /// stops): queries no longer read it from memory.
    pub fn end_persist(&self) {
        *self.persisting.lock().expect("memory lock") = None;
    }

    /// The rows of `table` in `[from_ns, to_ns)`, with only `columns` (all when `None`): those
    /// being persisted first, then the hot tier's (accepted later).
    pub fn table_batches(&self, table: &TableRef, from_ns: i64, to_ns: i64, columns: Option<&[String]>) -> Result<Vec<RecordBatch>, StoreError> {
        let hot = self.hot();
        let persisting = self.persisting.lock().expect("memory lock").clone();
        let mut batches: Vec<RecordBatch> = Vec::new();
        batches.extend(persisting.map(|p| p.table_batch(table, from_ns, to_ns, columns)).transpose()?.flatten());
        batches.extend(hot.table_batch(table, from_ns, to_ns, columns)?);
        Ok(batches.into_iter().filter(|b| b.num_rows() > 0).collect())
    }
}

/// `batches` as one Arrow IPC stream (empty bytes for no batches). The stream's schema is the
/// union of the batches' columns (the persisting batch and the hot tier may have learned
/// different ones); a batch without a column sends nulls in it.
pub fn encode_ipc(batches: &[RecordBatch]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    if batches.is_empty() {
        return Ok(out);
    }
    let schema = Arc::new(Schema::try_merge(batches.iter().map(|b| b.schema().as_ref().clone()))?);
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
    for batch in batches {
        let columns = schema
            .fields()
            .iter()
            .map(|f| batch.column_by_name(f.name()).cloned().unwrap_or_else(|| arrow::array::new_null_array(f.data_type(), batch.num_rows())))
            .collect();
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// The batches of an [`encode_ipc`] stream.
pub fn decode_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, StoreError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    #[test]
    fn batches_with_different_columns_travel_in_one_stream() {
        let a = RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])), vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true), Field::new("y", DataType::Utf8, true)])),
            vec![Arc::new(Int64Array::from(vec![3])), Arc::new(StringArray::from(vec!["v"]))],
        )
        .unwrap();
        let decoded = decode_ipc(&encode_ipc(&[a, b]).unwrap()).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].num_columns(), 2);
        assert_eq!(decoded[0].column_by_name("y").unwrap().null_count(), 2);
        assert_eq!(decoded[1].num_rows(), 1);
        assert!(decode_ipc(&encode_ipc(&[]).unwrap()).unwrap().is_empty());
    }
}
