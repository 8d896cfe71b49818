//! The hot tier: recent, unpersisted rows in memory, per table, series and time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lodestone_model::{MeasureValue, Record, RejectReason, Rejection};

use arrow::array::RecordBatch;

use crate::cold::build_batch_columns;
use crate::days_before;
use crate::error::StoreError;
use crate::rows::{Row, SeriesKey};
use crate::schema::TableSchema;
use crate::table::{StoreLimits, TableProperties, TableRef};
use crate::upsert::{decide, UpsertDecision};

const HOUR_NS: i64 = 3_600 * 1_000_000_000;

#[derive(Default)]
struct HotTable {
    /// Names and types learned since the last drain (merged into the catalog on persist).
    schema: TableSchema,
    series: HashMap<Arc<SeriesKey>, u32>,
    keys: Vec<Arc<SeriesKey>>,
    rows: BTreeMap<(u32, i64), Row>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Inserted,
    Replaced,
    Unchanged,
}

/// The rows of one table handed from the hot tier to [`crate::Store::persist`].
#[derive(Debug, Clone)]
pub struct TableRows {
    pub table: TableRef,
    pub schema: TableSchema,
    /// Sorted by series (dimensions, then measure name), then time.
    pub rows: Vec<(Arc<SeriesKey>, i64, Row)>,
}

/// Everything drained from the hot tier at once.
#[derive(Debug, Clone, Default)]
pub struct PersistBatch {
    pub tables: Vec<TableRows>,
}

impl PersistBatch {
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }

    /// Like [`HotTier::table_batch`], for rows drained and not yet committed.
    pub fn table_batch(&self, table: &TableRef, from_ns: i64, to_ns: i64, columns: Option<&[String]>) -> Result<Option<RecordBatch>, StoreError> {
        let Some(rows) = self.tables.iter().find(|t| &t.table == table) else { return Ok(None) };
        let rows_in_range = rows.rows.iter().filter(|(_, time, _)| (from_ns..to_ns).contains(time));
        Ok(Some(build_batch_columns(&rows.schema, rows_in_range.map(|(series, time, row)| (series.as_ref(), *time, row)), columns)?))
    }
}

/// The memory store. Bounded by `rows_max`: at the bound a write is refused with
/// [`RejectReason::StoreFull`] and the writer is expected to persist (drain) and retry.
/// A table's dimension and measure names are bounded by [`StoreLimits`] (the catalog's names and
/// the ones learned here together), except in Lodestone's own `_lodestone` tables.
pub struct HotTier {
    tables: BTreeMap<TableRef, HotTable>,
    rows: usize,
    rows_max: usize,
    limits: StoreLimits,
}

impl HotTier {
    pub fn new(rows_max: usize) -> HotTier {
        HotTier { tables: BTreeMap::new(), rows: 0, rows_max, limits: StoreLimits::default() }
    }

    /// This tier with other bounds on a table's names.
    pub fn with_limits(mut self, limits: StoreLimits) -> HotTier {
        self.limits = limits;
        self
    }

    pub fn row_count(&self) -> usize {
        self.rows
    }

    pub fn is_full(&self) -> bool {
        self.rows >= self.rows_max
    }

    /// Writes one record under Timestream's rules: type checks against `known` (the catalog's
    /// schema of the table) and what this tier learned, the memory retention of `properties` at
    /// `now_ns` (late records go to the cold tier when the table allows magnetic writes), and the
    /// upsert rule against rows still in memory. Returns before anything is durable.
    pub fn write(
        &mut self,
        table: &TableRef,
        properties: &TableProperties,
        known: &TableSchema,
        record: Record,
        now_ns: i64,
        index: usize,
    ) -> Result<WriteOutcome, Rejection> {
        let reject = |reason, detail: String| Rejection::new(index, reason, detail);
        let window_start = now_ns.saturating_sub(i64::from(properties.memory_retention_hours).saturating_mul(HOUR_NS));
        if record.time_ns < window_start && !properties.magnetic_store_writes {
            return Err(reject(
                RejectReason::TimeOutsideRetention,
                format!("time {} is older than the memory retention of {} h", record.time_ns, properties.memory_retention_hours),
            ));
        }
        // Timestream's rule for late writes, which also keeps every stored time within a few
        // centuries of now (a time near i64::MIN overflowed the day arithmetic at persist).
        if record.time_ns < days_before(now_ns, properties.magnetic_retention_days) {
            return Err(reject(
                RejectReason::TimeOutsideRetention,
                format!("time {} is older than the magnetic retention of {} days", record.time_ns, properties.magnetic_retention_days),
            ));
        }
        known.check(&record, index)?;
        let hot = self.tables.entry(table.clone()).or_default();
        hot.schema.check(&record, index)?;
        // Lodestone's own tables (rejected records) are not a client's to bound.
        if !lodestone_model::is_reserved_database(&table.database) {
            check_room_for_names(known, &hot.schema, &record, &self.limits, index)?;
        }
        let Record { dimensions, measure_name, value, time_ns, version } = record;
        let series = SeriesKey { dimensions, measure_name };
        let id = match hot.series.get(&series) {
            Some(id) => *id,
            None => {
                let id = hot.keys.len() as u32;
                let series = Arc::new(series);
                hot.series.insert(series.clone(), id);
                hot.keys.push(series);
                id
            }
        };
        let key = (id, time_ns);
        let existing = hot.rows.get(&key).map(|row| (&row.value, row.version));
        let outcome = match decide(existing, (&value, version)) {
            UpsertDecision::Insert if self.rows >= self.rows_max => {
                return Err(reject(RejectReason::StoreFull, format!("memory store holds its maximum of {} rows", self.rows_max)));
            }
            UpsertDecision::Insert => {
                self.rows += 1;
                WriteOutcome::Inserted
            }
            UpsertDecision::Replace => WriteOutcome::Replaced,
            UpsertDecision::NoOp => return Ok(WriteOutcome::Unchanged),
            UpsertDecision::Reject { existing_version } => {
                let detail = format!("another value exists under this key at version {existing_version}; write a higher version to replace it");
                return Err(Rejection { existing_version: Some(existing_version), ..reject(RejectReason::VersionConflict, detail) });
            }
        };
        let series = &hot.keys[id as usize];
        hot.schema.learn_parts(&series.dimensions, &series.measure_name, &value);
        hot.rows.insert(key, Row { value, version });
        Ok(outcome)
    }

    /// What the tier learned of `table`'s names and types since its last drain.
    pub fn table_schema(&self, table: &TableRef) -> Option<&TableSchema> {
        self.tables.get(table).map(|t| &t.schema)
    }

    /// The rows of `table` with a time in `[from_ns, to_ns)`, in the table's Arrow shape (the
    /// columns this tier learned since its last drain, or only those named in `columns`), for
    /// queries that must see writes before they are persisted. `None` when the tier holds no row
    /// of the table.
    pub fn table_batch(&self, table: &TableRef, from_ns: i64, to_ns: i64, columns: Option<&[String]>) -> Result<Option<RecordBatch>, StoreError> {
        let Some(hot) = self.tables.get(table) else { return Ok(None) };
        let rows = hot.rows.iter().filter(|((_, time), _)| (from_ns..to_ns).contains(time));
        let batch = build_batch_columns(&hot.schema, rows.map(|((id, time), row)| (hot.keys[*id as usize].as_ref(), *time, row)), columns)?;
        Ok(Some(batch))
    }

    /// Takes every row out of the tier, sorted for the cold tier.
    pub fn drain(&mut self) -> PersistBatch {
        let tables = std::mem::take(&mut self.tables);
        self.rows = 0;
        let tables = tables
            .into_iter()
            .filter(|(_, hot)| !hot.rows.is_empty())
            .map(|(table, hot)| {
                // Rank the series once, then sort rows by (rank, time): integers, not keys.
                let mut order: Vec<u32> = (0..hot.keys.len() as u32).collect();
                order.sort_unstable_by(|a, b| hot.keys[*a as usize].cmp(&hot.keys[*b as usize]));
                let mut rank = vec![0u32; order.len()];
                for (position, id) in order.iter().enumerate() {
                    rank[*id as usize] = position as u32;
                }
                let mut rows: Vec<_> = hot.rows.into_iter().map(|((id, time), row)| (rank[id as usize], time, row)).collect();
                rows.sort_unstable_by_key(|(rank, time, _)| (*rank, *time));
                let rows = rows.into_iter().map(|(rank, time, row)| (hot.keys[order[rank as usize] as usize].clone(), time, row)).collect();
                TableRows { table, schema: hot.schema, rows }
            })
            .collect();
        PersistBatch { tables }
    }
}

/// Refuses a record whose new dimension names, or new measure name and columns, would take its
/// table past `limits` (counting the catalog's names and those learned since the last persist).
fn check_room_for_names(known: &TableSchema, learned: &TableSchema, record: &Record, limits: &StoreLimits, index: usize) -> Result<(), Rejection> {
    let is_new = |name: &String, of: fn(&TableSchema, &String) -> bool| !of(known, name) && !of(learned, name);
    let new_dimensions = record.dimensions.iter().filter(|d| is_new(&d.name, |s, n| s.dimensions.contains(n))).count();
    if new_dimensions > 0 {
        let held = known.dimensions.len() + learned.dimensions.difference(&known.dimensions).count();
        if held + new_dimensions > limits.dimensions_per_table_max {
            return Err(Rejection::new(
                index,
                RejectReason::TooManyTableDimensions,
                format!("the table has {held} dimensions and this record adds {new_dimensions}; store.limits.dimensions_per_table_max is {}", limits.dimensions_per_table_max),
            ));
        }
    }
    let new_measure = usize::from(is_new(&record.measure_name, |s, n| s.measures.contains_key(n)));
    let new_columns = match &record.value {
        MeasureValue::Multi(values) => values.iter().filter(|(name, _)| is_new(name, |s, n| s.multi_columns.contains_key(n))).count(),
        _ => 0,
    };
    if new_measure + new_columns > 0 {
        let held = known.measures.len()
            + known.multi_columns.len()
            + learned.measures.keys().filter(|n| !known.measures.contains_key(*n)).count()
            + learned.multi_columns.keys().filter(|n| !known.multi_columns.contains_key(*n)).count();
        if held + new_measure + new_columns > limits.measures_per_table_max {
            return Err(Rejection::new(
                index,
                RejectReason::TooManyTableMeasures,
                format!(
                    "the table has {held} measure names and columns and this record adds {}; store.limits.measures_per_table_max is {}",
                    new_measure + new_columns,
                    limits.measures_per_table_max
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{Dimension, MeasureValue, Scalar};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn table() -> TableRef {
        TableRef { database: "db1".into(), table: "t1".into() }
    }

    fn record(device: &str, time_ns: i64, value: MeasureValue, version: u64) -> Record {
        Record {
            dimensions: vec![Dimension { name: "device".into(), value: device.into() }],
            measure_name: "m".into(),
            value,
            time_ns,
            version,
        }
    }

    fn double(x: f64) -> MeasureValue {
        MeasureValue::Single(Scalar::Double(x))
    }

    #[test]
    fn upserts_and_retention() {
        let mut hot = HotTier::new(2);
        let props = TableProperties::default();
        let known = TableSchema::default();
        let mut write = |r: Record| hot.write(&table(), &props, &known, r, NOW, 0).map_err(|e| e.reason);
        assert_eq!(write(record("a", NOW, double(1.0), 1)), Ok(WriteOutcome::Inserted));
        assert_eq!(write(record("a", NOW, double(1.0), 1)), Ok(WriteOutcome::Unchanged));
        assert_eq!(write(record("a", NOW, double(2.0), 1)), Err(RejectReason::VersionConflict));
        assert_eq!(write(record("a", NOW, double(2.0), 2)), Ok(WriteOutcome::Replaced));
        assert_eq!(write(record("a", NOW, MeasureValue::Single(Scalar::Bigint(1)), 3)), Err(RejectReason::MeasureTypeMismatch));
        let six_hours = 6 * HOUR_NS;
        assert_eq!(write(record("b", NOW - six_hours, double(1.0), 1)), Ok(WriteOutcome::Inserted));
        assert_eq!(write(record("c", NOW - six_hours - 1, double(1.0), 1)), Err(RejectReason::TimeOutsideRetention));
        assert_eq!(write(record("c", NOW, double(1.0), 1)), Err(RejectReason::StoreFull));
        let batch = hot.drain();
        assert_eq!(batch.row_count(), 2);
        assert_eq!(hot.row_count(), 0);
        let rows = &batch.tables[0].rows;
        assert_eq!(rows[0].0.dimensions[0].value, "a");
        assert_eq!(rows[0].2.version, 2);
    }

    #[test]
    fn a_table_holds_at_most_its_limits_of_dimension_and_measure_names() {
        let limits = StoreLimits { dimensions_per_table_max: 2, measures_per_table_max: 3, ..StoreLimits::default() };
        let mut hot = HotTier::new(100).with_limits(limits);
        let props = TableProperties::default();
        // The catalog already knows one dimension and one measure.
        let mut known = TableSchema::default();
        known.learn(&record("a", NOW, double(1.0), 1));
        let with = |dimensions: &[&str], measure: &str, value: MeasureValue| Record {
            dimensions: dimensions.iter().map(|name| Dimension { name: name.to_string(), value: "x".into() }).collect(),
            measure_name: measure.into(),
            value,
            time_ns: NOW,
            version: 1,
        };
        let mut write = |r: Record| hot.write(&table(), &props, &known, r, NOW, 0).map(|_| ()).map_err(|e| e.reason);
        assert_eq!(write(with(&["device", "site"], "m", double(1.0))), Ok(()), "two dimensions fit");
        assert_eq!(write(with(&["device", "rack"], "m", double(1.0))), Err(RejectReason::TooManyTableDimensions));
        assert_eq!(write(with(&["site"], "m2", double(1.0))), Ok(()), "known names still write; a second measure fits");
        let multi = |names: &[&str]| MeasureValue::Multi(names.iter().map(|n| (n.to_string(), Scalar::Double(1.0))).collect());
        // A MULTI record's name and its columns count together: m, m2, then "metrics" + 1 column = 4 > 3.
        assert_eq!(write(with(&["device"], "metrics", multi(&["load"]))), Err(RejectReason::TooManyTableMeasures));
        assert_eq!(write(with(&["device"], "m3", double(1.0))), Ok(()), "a third measure fits");
        assert_eq!(write(with(&["device"], "m4", double(1.0))), Err(RejectReason::TooManyTableMeasures));
    }

    #[test]
    fn table_batches_carry_only_the_columns_asked_for() {
        let mut hot = HotTier::new(10);
        let props = TableProperties::default();
        for (device, time) in [("a", NOW), ("b", NOW - 1), ("a", NOW - 2)] {
            hot.write(&table(), &props, &TableSchema::default(), record(device, time, double(1.5), 1), NOW, 0).unwrap();
        }
        let names = |columns: Option<&[String]>, from: i64| {
            let batch = hot.table_batch(&table(), from, i64::MAX, columns).unwrap().unwrap();
            let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            (names, batch.num_rows())
        };
        let (all, rows) = names(None, i64::MIN);
        assert_eq!(rows, 3);
        assert!(all.len() > 5 && all.contains(&"measure_value::double".to_string()), "{all:?}");
        let asked = ["device".to_string(), "time".to_string(), "no_such_column".to_string()];
        assert_eq!(names(Some(&asked), NOW - 1), (vec!["device".to_string(), "time".to_string()], 2));
        assert_eq!(names(Some(&[]), i64::MIN).0, Vec::<String>::new(), "no column at all, the rows still counted");
        assert_eq!(names(Some(&[]), i64::MIN).1, 3);
    }

    #[test]
    fn magnetic_writes_accept_late_records() {
        let mut hot = HotTier::new(10);
        let props = TableProperties { magnetic_store_writes: true, ..TableProperties::default() };
        let late = record("a", NOW - 100 * HOUR_NS, double(1.0), 1);
        assert_eq!(hot.write(&table(), &props, &TableSchema::default(), late, NOW, 0), Ok(WriteOutcome::Inserted));
    }

    /// Regression: a record at a time near `i64::MIN`, accepted by a table with magnetic writes,
    /// overflowed the day arithmetic when it was persisted. Records older than the magnetic
    /// retention are refused now (Timestream's rule), at the bound day and one nanosecond past.
    #[test]
    fn a_time_near_i64_min_is_refused_by_the_magnetic_retention() {
        let mut hot = HotTier::new(10);
        let props = TableProperties { magnetic_store_writes: true, magnetic_retention_days: 2, ..TableProperties::default() };
        let write = |hot: &mut HotTier, time_ns| hot.write(&table(), &props, &TableSchema::default(), record("a", time_ns, double(1.0), 1), NOW, 0);
        let reason = |outcome: Result<WriteOutcome, Rejection>| outcome.err().map(|r| r.reason);
        assert_eq!(write(&mut hot, NOW - 2 * crate::DAY_NS), Ok(WriteOutcome::Inserted));
        assert_eq!(reason(write(&mut hot, NOW - 2 * crate::DAY_NS - 1)), Some(RejectReason::TimeOutsideRetention));
        assert_eq!(reason(write(&mut hot, i64::MIN)), Some(RejectReason::TimeOutsideRetention));
        assert_eq!(crate::day_start_ns(crate::day_of(i64::MIN)), i64::MIN, "saturates instead of overflowing");
        assert_eq!(crate::day_start_ns(crate::day_of(i64::MAX) + 1), i64::MAX);
    }
}
