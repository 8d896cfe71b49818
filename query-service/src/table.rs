//! The DataFusion table of one Lodestone table, as listed in one catalog snapshot. It reads
//! through the store's scan API: the time range and dimension predicates of the query's filters
//! and its projection are pushed down (row groups pruned by statistics, rows filtered while
//! decoding), and rows are deduplicated by the upsert rule where files overlap. DataFusion still
//! applies every filter on top, so pushed-down predicates only need to be a superset.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream};
use futures::{StreamExt, TryStreamExt};
use lodestone_store::{
    attach_memory, plan_scan, scan_schema, DimensionFilter, ScanRequest, ScanUnit, Store, TableEntry, TableRef, TIME_COLUMN,
    VERSION_COLUMN,
};

use crate::memory::{MemoryClient, SharedReport};

#[derive(Debug)]
pub struct StoreTable {
    store: Store,
    table: TableRef,
    /// The table as planned: its schema is the query's; its files are re-listed at scan time.
    entry: TableEntry,
    schema: SchemaRef,
    memory: MemoryClient,
    report: SharedReport,
}

impl StoreTable {
    pub fn new(store: Store, table: TableRef, entry: TableEntry, memory: MemoryClient, report: SharedReport) -> StoreTable {
        let schema = lodestone_store::arrow_schema(&entry.schema);
        StoreTable { store, table, entry, schema, memory, report }
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let store_error = |e: lodestone_store::StoreError| DataFusionError::External(Box::new(e));
        let mut request = pushed_down(filters, &self.entry);
        request.projection = projection.map(|indices| indices.iter().map(|&i| self.schema.field(i).name().clone()).collect());
        let schema = scan_schema(&self.entry.schema, &request).map_err(store_error)?;
        // Memory first, then the catalog: a row being persisted meanwhile is then in the one or
        // the other (or both, and deduplicated), never in neither.
        // Only the columns the scan reads: those asked for, and the key and version that
        // deduplication needs.
        let memory_columns: Option<Vec<String>> = request.projection.as_ref().map(|names| {
            let key = self.entry.schema.upsert_key().into_iter().chain([VERSION_COLUMN]);
            let mut columns: Vec<String> = key.map(str::to_owned).collect();
            columns.extend(names.iter().filter(|n| !columns.contains(n)).cloned().collect::<Vec<_>>());
            columns
        });
        // The fetched rows count against the query's memory for as long as the plan holds them.
        let reservation = MemoryConsumer::new("workers' memory").register(&state.runtime_env().memory_pool);
        let memory = self.memory.fetch(&self.table, request.from_ns, request.to_ns, memory_columns.as_deref(), &self.report.unreachable, &reservation).await?;
        let snapshot = self.store.snapshot().await.map_err(store_error)?;
        let mut entry = self.entry.clone();
        if let Some(latest) = snapshot.table(&self.table) {
            entry.files = latest.files.clone();
        }
        let units = attach_memory(plan_scan(&entry, &request), memory).map_err(store_error)?;
        if units.is_empty() {
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let partitions = state.config().target_partitions().max(1).min(units.len());
        let scan = StoreScanExec::new(self.store.clone(), entry, request, schema, units, partitions, self.report.clone());
        Ok(Arc::new(scan.holding(reservation)))
    }
}

/// The part of `filters` the store can use: bounds on `time` and equality or IN lists on
/// dimensions. Anything else is left to DataFusion alone.
fn pushed_down(filters: &[Expr], entry: &TableEntry) -> ScanRequest {
    let mut request = ScanRequest::time_range(i64::MIN, i64::MAX);
    for filter in filters {
        match filter {
            Expr::BinaryExpr(_) => {
                let Some((column, op, value)) = column_comparison(filter) else { continue };
                if column.name == TIME_COLUMN {
                    let Some(ns) = timestamp_ns(value) else {
                        continue;
                    };
                    match op {
                        Operator::GtEq => request.from_ns = request.from_ns.max(ns),
                        Operator::Gt => request.from_ns = request.from_ns.max(ns.saturating_add(1)),
                        Operator::Lt => request.to_ns = request.to_ns.min(ns),
                        Operator::LtEq => request.to_ns = request.to_ns.min(ns.saturating_add(1)),
                        Operator::Eq => {
                            request.from_ns = request.from_ns.max(ns);
                            request.to_ns = request.to_ns.min(ns.saturating_add(1));
                        }
                        _ => {}
                    }
                } else if op == Operator::Eq && entry.schema.dimensions.contains(&column.name) {
                    if let Some(text) = string(value) {
                        request.dimensions.push(DimensionFilter { name: column.name.clone(), values: vec![text] });
                    }
                }
            }
            Expr::InList(list) if !list.negated => {
                let Expr::Column(column) = list.expr.as_ref() else {
                    continue;
                };
                if !entry.schema.dimensions.contains(&column.name) {
                    continue;
                }
                let values: Option<Vec<String>> =
                    list.list.iter().map(|e| if let Expr::Literal(v, _) = e { string(v) } else { None }).collect();
                if let Some(values) = values {
                    request.dimensions.push(DimensionFilter { name: column.name.clone(), values });
                }
            }
            _ => {}
        }
    }
    request
}

/// `column op literal` (or `literal op column`, turned around), if `expr` is one.
pub(crate) fn column_comparison(expr: &Expr) -> Option<(&datafusion::common::Column, Operator, &ScalarValue)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else { return None };
    match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((c, *op, v)),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((c, op.swap()?, v)),
        _ => None,
    }
}

/// A timestamp literal of any unit, in nanoseconds.
pub(crate) fn timestamp_ns(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn string(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        ScalarValue::Dictionary(_, value) => string(value),
        _ => None,
    }
}

/// Reads a table's scan units through the store, spread over `partitions` partitions.
#[derive(Debug)]
pub struct StoreScanExec {
    store: Store,
    entry: TableEntry,
    request: ScanRequest,
    /// Units of each partition, balanced by bytes.
    partitions: Vec<Vec<ScanUnit>>,
    properties: Arc<PlanProperties>,
    /// Where the bytes read are counted (the query's progress).
    report: SharedReport,
    /// The workers' rows in `partitions`, counted against the query's memory until the plan is
    /// dropped.
    memory_reservation: Option<Arc<MemoryReservation>>,
}

impl StoreScanExec {
    fn holding(mut self, reservation: MemoryReservation) -> StoreScanExec {
        self.memory_reservation = Some(Arc::new(reservation));
        self
    }

    fn new(
        store: Store,
        entry: TableEntry,
        request: ScanRequest,
        schema: SchemaRef,
        mut units: Vec<ScanUnit>,
        partitions: usize,
        report: SharedReport,
    ) -> StoreScanExec {
        let bytes = |unit: &ScanUnit| unit.files.iter().map(|f| f.bytes).sum::<u64>();
        units.sort_by_key(|u| std::cmp::Reverse(bytes(u)));
        let mut assigned: Vec<(u64, Vec<ScanUnit>)> = vec![(0, Vec::new()); partitions];
        for unit in units {
            let lightest = assigned.iter_mut().min_by_key(|(load, _)| *load).expect("at least one partition");
            lightest.0 += bytes(&unit);
            lightest.1.push(unit);
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        StoreScanExec {
            store,
            entry,
            request,
            partitions: assigned.into_iter().map(|(_, units)| units).collect(),
            properties: Arc::new(properties),
            report,
            memory_reservation: None,
        }
    }
}

impl DisplayAs for StoreScanExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let units: usize = self.partitions.iter().map(Vec::len).sum();
        let files: usize = self.partitions.iter().flatten().map(|u| u.files.len()).sum();
        write!(
            f,
            "StoreScanExec: units={units}, files={files}, time=[{}, {}), dimension_filters={}",
            self.request.from_ns,
            self.request.to_ns,
            self.request.dimensions.len()
        )
    }
}

impl ExecutionPlan for StoreScanExec {
    fn name(&self) -> &'static str {
        "StoreScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let units =
            self.partitions.get(partition).cloned().ok_or_else(|| DataFusionError::Internal(format!("no partition {partition}")))?;
        let (store, schema, request, report) = (self.store.clone(), self.entry.schema.clone(), self.request.clone(), self.report.clone());
        let batches = futures::stream::iter(units)
            .then(move |unit| {
                let (store, schema, request, report) = (store.clone(), schema.clone(), request.clone(), report.clone());
                async move {
                    let bytes = unit.files.iter().map(|f| f.bytes).sum::<u64>()
                        + unit.memory.iter().map(|b| b.get_array_memory_size() as u64).sum::<u64>();
                    let batches = store.read_unit(&schema, &unit, &request).await;
                    report.bytes_scanned.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                    batches
                }
            })
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .map_err(|e| DataFusionError::External(Box::new(e)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), batches)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};
    use lodestone_store::{TableProperties, TableSchema};

    #[test]
    fn time_bounds_and_dimension_lists_are_pushed_down() {
        let mut schema = TableSchema::default();
        schema.dimensions.insert("truck".into());
        let entry = TableEntry { properties: TableProperties::default(), schema, files: Vec::new(), info: Default::default() };
        let ns = |v: i64| lit(ScalarValue::TimestampNanosecond(Some(v), None));
        let filters = [
            col("time").gt(ns(10)),
            ns(50).gt_eq(col("time")),
            col("time").lt(ns(40)),
            col("truck").in_list(vec![lit("t1"), lit("t2")], false),
            col("truck").eq(lit("t1")),
            col("measure_name").eq(lit("speed")),
            col("truck").in_list(vec![lit("t3")], true),
        ];
        let request = pushed_down(&filters, &entry);
        assert_eq!((request.from_ns, request.to_ns), (11, 40));
        let names = |f: &DimensionFilter| (f.name.clone(), f.values.clone());
        assert_eq!(
            request.dimensions.iter().map(names).collect::<Vec<_>>(),
            [("truck".to_string(), vec!["t1".to_string(), "t2".to_string()]), ("truck".to_string(), vec!["t1".to_string()])],
            "measure_name is not a dimension, and NOT IN is not pushed"
        );
    }
}
