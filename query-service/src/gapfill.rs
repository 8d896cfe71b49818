//! Gap filling: `bin_gapfill(time, interval)` in GROUP BY makes a query return a row for every bin
//! of the WHERE clause's time range, for every group, also where no reading fell in it:
//!
//! ```sql
//! SELECT bin_gapfill(time, 1m) AS minute, truck, avg(measure_value::double) AS speed,
//!        locf(avg(measure_value::double)) AS last_speed, interpolate(avg(measure_value::double)) AS smooth
//! FROM fleet.trucks
//! WHERE time >= from_unixtime(1700000000) AND time < from_unixtime(1700003600)
//! GROUP BY 1, 2
//! ```
//!
//! An empty bin's aggregates are null, or the last value before it (`locf`), or the straight
//! line between its neighbours (`interpolate`, empty outside them).
//!
//! It is a logical-plan rule, [`GapFillRule`], and an execution node, [`GapFillExec`]: the rule
//! finds an aggregate grouped by `bin_gapfill`, groups it by `date_bin` instead, and puts a
//! [`GapFill`] node above it that knows the time range (from the filter below the aggregate), the
//! group columns and each column's fill; `locf`/`interpolate` around the aggregates are taken off
//! the projection above. [`GapFillPlanner`] turns the node into [`GapFillExec`], which sorts the
//! aggregated rows by group and time and emits every bin.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, TimestampNanosecondArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, lexsort_to_indices, take, SortColumn};
use datafusion::arrow::datatypes::{DataType, Float64Type, IntervalMonthDayNanoType, IntervalUnit, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{plan_err, DFSchemaRef, Result, ScalarValue};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Extension, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, Volatility,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::TryStreamExt;

use lodestone_store::TIME_COLUMN;

use crate::table::{column_comparison, timestamp_ns};

/// Most bins one group may be filled with: a range and interval that ask for more are refused.
pub const BINS_PER_GROUP_MAX: i64 = 1_000_000;

/// Most bins one gap-filled answer may hold over all its groups (each takes a few dozen bytes
/// that no memory pool counts): past it the query fails as one past its memory limit (422).
pub const BINS_TOTAL_MAX: usize = 10_000_000;

/// How an aggregate column's empty bins are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum Fill {
    Null,
    /// Last observation carried forward.
    Locf,
    /// Linear between the neighbouring bins that have a value.
    Interpolate,
}

/// The functions of gap filling: `bin_gapfill(time, interval)`, `locf(x)`, `interpolate(x)`.
/// Outside a gap-filled aggregate they have no meaning and say so.
pub fn functions() -> Vec<ScalarUDF> {
    ["bin_gapfill", "locf", "interpolate"]
        .into_iter()
        .map(|name| ScalarUDF::new_from_impl(Marker { name, signature: Signature::variadic_any(Volatility::Immutable) }))
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Marker {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for Marker {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match (self.name, arg_types) {
            ("bin_gapfill", [DataType::Timestamp(..), DataType::Interval(_)]) => Ok(DataType::Timestamp(TimeUnit::Nanosecond, None)),
            ("bin_gapfill", _) => plan_err!("bin_gapfill takes (time, interval), e.g. bin_gapfill(time, 1m)"),
            ("interpolate", [t]) if t.is_numeric() => Ok(DataType::Float64),
            ("interpolate", _) => plan_err!("interpolate takes one numeric aggregate, e.g. interpolate(avg(x))"),
            (_, [t]) => Ok(t.clone()),
            _ => plan_err!("{} takes one aggregate, e.g. {}(avg(x))", self.name, self.name),
        }
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        plan_err!(
            "{} works only in a query grouped by bin_gapfill(time, interval) with a time range in WHERE (time >= … AND time < …)",
            self.name
        )
    }
}

fn is_call(expr: &Expr, name: &str) -> bool {
    matches!(expr, Expr::ScalarFunction(ScalarFunction { func, .. }) if func.name() == name)
}

/// The logical node: `input` (an aggregate) with every bin of `[from_ns, to_ns)` in steps of
/// `stride_ns` filled in, per group. Its columns are the input's (aggregates null in empty bins),
/// then one per `locf`/`interpolate` call: the input column it fills, filled that way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GapFill {
    input: LogicalPlan,
    /// Index of the binned time column in the input's schema.
    time: usize,
    /// Indexes of the other group columns.
    groups: Vec<usize>,
    /// The filled columns after the input's: (input column, fill, name).
    extra: Vec<(usize, Fill, String)>,
    stride_ns: i64,
    from_ns: i64,
    to_ns: i64,
    schema: DFSchemaRef,
}

impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.input.partial_cmp(&other.input)
    }
}

impl GapFill {
    /// The node's schema: the input's, aggregates nullable (empty bins), then the extra columns.
    fn make_schema(input: &LogicalPlan, time: usize, groups: &[usize], extra: &[(usize, Fill, String)]) -> Result<DFSchemaRef> {
        let input_schema = input.schema();
        let mut fields: Vec<(Option<datafusion::common::TableReference>, Arc<datafusion::arrow::datatypes::Field>)> = input_schema
            .iter()
            .enumerate()
            .map(|(i, (qualifier, field))| {
                let nullable = field.is_nullable() || (i != time && !groups.contains(&i));
                (qualifier.cloned(), Arc::new(field.as_ref().clone().with_nullable(nullable)))
            })
            .collect();
        for (source, fill, name) in extra {
            let data_type = if *fill == Fill::Interpolate { DataType::Float64 } else { input_schema.field(*source).data_type().clone() };
            fields.push((None, Arc::new(datafusion::arrow::datatypes::Field::new(name, data_type, true))));
        }
        Ok(Arc::new(datafusion::common::DFSchema::new_with_metadata(fields, input_schema.metadata().clone())?))
    }
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let extra: Vec<String> = self.extra.iter().map(|(source, fill, _)| format!("{fill:?}(#{source})")).collect();
        write!(f, "GapFill: time=#{}, groups={:?}, filled=[{}], stride_ns={}, range=[{}, {})", self.time, self.groups, extra.join(", "), self.stride_ns, self.from_ns, self.to_ns)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let input = inputs.swap_remove(0);
        let schema = GapFill::make_schema(&input, self.time, &self.groups, &self.extra)?;
        Ok(GapFill { input, schema, ..self.clone() })
    }
}

/// Rewrites aggregates grouped by `bin_gapfill` into a [`GapFill`] over a `date_bin` aggregate,
/// and moves `locf`/`interpolate` from the projection above into the node.
#[derive(Debug, Default)]
pub struct GapFillRule;

impl OptimizerRule for GapFillRule {
    fn name(&self) -> &str {
        "gap_fill"
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        plan.transform_up(|node| match node {
            LogicalPlan::Aggregate(_) => gap_fill_aggregate(node),
            LogicalPlan::Projection(_) => take_fills(node),
            other => Ok(Transformed::no(other)),
        })
    }
}

fn gap_fill_aggregate(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Aggregate(aggregate) = &plan else { return Ok(Transformed::no(plan)) };
    let Some(position) = aggregate.group_expr.iter().position(|e| is_call(e, "bin_gapfill")) else { return Ok(Transformed::no(plan)) };
    let Expr::ScalarFunction(ScalarFunction { args, .. }) = &aggregate.group_expr[position] else { unreachable!() };
    let [time, stride] = args.as_slice() else { return plan_err!("bin_gapfill takes (time, interval)") };
    let Expr::Literal(stride_value, _) = stride else { return plan_err!("bin_gapfill's interval must be a constant, e.g. 1m") };
    let stride_ns = interval_ns(stride_value)?;
    let Some((from_ns, to_ns)) = time_range(&aggregate.input)? else {
        return plan_err!("bin_gapfill needs a time range in WHERE: time >= … AND time < … (or BETWEEN)");
    };
    // Saturating: a range from near i64::MIN to near i64::MAX wrapped to a negative width and
    // skipped this check.
    if stride_ns <= 0 || to_ns.saturating_sub(from_ns) / stride_ns > BINS_PER_GROUP_MAX {
        return plan_err!("bin_gapfill: {} bins per group at most; widen the interval or narrow the time range", BINS_PER_GROUP_MAX);
    }
    let name = aggregate.group_expr[position].schema_name().to_string();
    let binned = datafusion::functions::datetime::date_bin().call(vec![stride.clone(), time.clone()]).alias(name);
    let mut group_expr = aggregate.group_expr.clone();
    group_expr[position] = binned;
    let rewritten = LogicalPlan::Aggregate(datafusion::logical_expr::Aggregate::try_new(
        aggregate.input.clone(),
        group_expr,
        aggregate.aggr_expr.clone(),
    )?);
    let groups: Vec<usize> = (0..aggregate.group_expr.len()).filter(|&i| i != position).collect();
    let schema = GapFill::make_schema(&rewritten, position, &groups, &[])?;
    let node = GapFill { input: rewritten, time: position, groups, extra: Vec::new(), stride_ns, from_ns, to_ns, schema };
    Ok(Transformed::yes(LogicalPlan::Extension(Extension { node: Arc::new(node) })))
}

/// A projection over a [`GapFill`]: each `locf(column)` / `interpolate(column)` becomes the column,
/// its fill recorded in the node.
fn take_fills(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Projection(projection) = &plan else { return Ok(Transformed::no(plan)) };
    let LogicalPlan::Extension(extension) = projection.input.as_ref() else { return Ok(Transformed::no(plan)) };
    let Some(gap_fill) = extension.node.as_any().downcast_ref::<GapFill>() else { return Ok(Transformed::no(plan)) };
    let mut node = gap_fill.clone();
    let mut changed = false;
    let mut exprs = Vec::with_capacity(projection.expr.len());
    for expr in &projection.expr {
        let (inner, alias) = match expr {
            Expr::Alias(alias) => (alias.expr.as_ref(), Some(alias.name.clone())),
            other => (other, None),
        };
        let fill = if is_call(inner, "locf") {
            Fill::Locf
        } else if is_call(inner, "interpolate") {
            Fill::Interpolate
        } else {
            exprs.push(expr.clone());
            continue;
        };
        let Expr::ScalarFunction(ScalarFunction { args, .. }) = inner else { unreachable!() };
        let Some(Expr::Column(column)) = args.first() else {
            return plan_err!("locf and interpolate take one aggregate of the gap-filled query, e.g. locf(avg(x))");
        };
        let index = node.input.schema().index_of_column(column)?;
        if index == node.time || node.groups.contains(&index) {
            return plan_err!("locf and interpolate fill aggregates, not group columns");
        }
        let filled = format!("{}", inner.schema_name());
        if !node.extra.iter().any(|(_, _, name)| *name == filled) {
            node.extra.push((index, fill, filled.clone()));
        }
        changed = true;
        let name = alias.unwrap_or_else(|| filled.clone());
        exprs.push(Expr::Column(datafusion::common::Column::from_name(filled)).alias(name));
    }
    if !changed {
        return Ok(Transformed::no(plan));
    }
    node.schema = GapFill::make_schema(&node.input, node.time, &node.groups, &node.extra)?;
    let input = Arc::new(LogicalPlan::Extension(Extension { node: Arc::new(node) }));
    Ok(Transformed::yes(LogicalPlan::Projection(datafusion::logical_expr::Projection::try_new(exprs, input)?)))
}

/// The `[from, to)` bounds on `time` of the filters in `plan`, if both ends are bounded.
fn time_range(plan: &LogicalPlan) -> Result<Option<(i64, i64)>> {
    let (mut from, mut to) = (None::<i64>, None::<i64>);
    plan.apply(|node| {
        if let LogicalPlan::Filter(filter) = node {
            for conjunct in datafusion::logical_expr::utils::split_conjunction(&filter.predicate) {
                let Some((column, op, value)) = column_comparison(conjunct) else { continue };
                if column.name != TIME_COLUMN {
                    continue;
                }
                let Some(ns) = timestamp_ns(value) else { continue };
                match op {
                    Operator::GtEq => from = Some(from.map_or(ns, |f| f.max(ns))),
                    Operator::Gt => from = Some(from.map_or(ns.saturating_add(1), |f| f.max(ns.saturating_add(1)))),
                    Operator::Lt => to = Some(to.map_or(ns, |t| t.min(ns))),
                    Operator::LtEq => to = Some(to.map_or(ns.saturating_add(1), |t| t.min(ns.saturating_add(1)))),
                    _ => {}
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(from.zip(to))
}

fn interval_ns(value: &ScalarValue) -> Result<i64> {
    let array = value.to_array()?;
    let array = datafusion::arrow::compute::cast(&array, &DataType::Interval(IntervalUnit::MonthDayNano))?;
    let interval = array.as_primitive::<IntervalMonthDayNanoType>().value(0);
    if interval.months != 0 {
        return plan_err!("bin_gapfill: intervals of months have no fixed length");
    }
    i64::from(interval.days)
        .checked_mul(86_400_000_000_000)
        .and_then(|days_ns| days_ns.checked_add(interval.nanoseconds))
        .map_or_else(|| plan_err!("bin_gapfill: the interval does not fit in 64 bits of nanoseconds"), Ok)
}

/// Plans [`GapFill`] nodes as [`GapFillExec`].
#[derive(Debug)]
pub struct GapFillPlanner;

#[async_trait]
impl ExtensionPlanner for GapFillPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(gap_fill) = node.as_any().downcast_ref::<GapFill>() else { return Ok(None) };
        Ok(Some(Arc::new(GapFillExec::new(gap_fill, physical_inputs[0].clone()))))
    }
}

/// The default query planner, with [`GapFillPlanner`].
#[derive(Debug)]
pub struct LodestoneQueryPlanner;

#[async_trait]
impl QueryPlanner for LodestoneQueryPlanner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn datafusion::catalog::Session) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(GapFillPlanner)]).create_physical_plan(plan, session).await
    }
}

/// Emits every bin of the range for every group of its (aggregated) input.
#[derive(Debug)]
pub struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    filler: Filler,
    properties: Arc<PlanProperties>,
}

impl GapFillExec {
    fn new(node: &GapFill, input: Arc<dyn ExecutionPlan>) -> GapFillExec {
        let schema: SchemaRef = Arc::new(node.schema.as_arrow().clone());
        let filler = Filler {
            schema: schema.clone(),
            time: node.time,
            groups: node.groups.clone(),
            extra: node.extra.iter().map(|(source, fill, _)| (*source, *fill)).collect(),
            stride_ns: node.stride_ns,
            from_ns: node.from_ns,
            to_ns: node.to_ns,
        };
        GapFillExec { input, filler, properties: Arc::new(Self::properties_of(schema)) }
    }

    fn properties_of(schema: SchemaRef) -> PlanProperties {
        PlanProperties::new(EquivalenceProperties::new(schema), Partitioning::UnknownPartitioning(1), EmissionType::Final, Boundedness::Bounded)
    }
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let filler = &self.filler;
        write!(f, "GapFillExec: stride_ns={}, range=[{}, {}), filled={:?}", filler.stride_ns, filler.from_ns, filler.to_ns, filler.extra)
    }
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &'static str {
        "GapFillExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(GapFillExec { input: children.swap_remove(0), filler: self.filler.clone(), properties: self.properties.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input_schema = self.input.schema();
        let input = self.input.execute(partition, context)?;
        let schema = self.schema();
        let filler = self.filler.clone();
        let output = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            filler.fill(&concat_batches(&input_schema, &batches)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

/// What a [`GapFillExec`] emits: the bins of the range, per group, and the filled columns.
#[derive(Debug, Clone)]
struct Filler {
    schema: SchemaRef,
    time: usize,
    groups: Vec<usize>,
    extra: Vec<(usize, Fill)>,
    stride_ns: i64,
    from_ns: i64,
    to_ns: i64,
}

impl Filler {
    fn fill(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let times = datafusion::arrow::compute::cast(batch.column(self.time), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        // Rows sorted by group, then time.
        let mut sort: Vec<SortColumn> = self.groups.iter().map(|&g| SortColumn { values: batch.column(g).clone(), options: None }).collect();
        sort.push(SortColumn { values: batch.column(self.time).clone(), options: None });
        let order = lexsort_to_indices(&sort, None)?;
        let group_keys = datafusion::arrow::row::RowConverter::new(
            self.groups.iter().map(|&g| datafusion::arrow::row::SortField::new(batch.column(g).data_type().clone())).collect(),
        )?;
        let keys = group_keys.convert_columns(&self.groups.iter().map(|&g| batch.column(g).clone()).collect::<Vec<_>>())?;
        let first_bin = self.from_ns.saturating_sub(self.from_ns.rem_euclid(self.stride_ns));
        // Per output row: the input row of its group (for group columns), its bin, and the input
        // row that has its bin, if any.
        let (mut group_rows, mut bins, mut present): (Vec<u32>, Vec<i64>, Vec<Option<u32>>) = (Vec::new(), Vec::new(), Vec::new());
        let order: Vec<u32> = order.values().to_vec();
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            // With no group column (only the bins), every row is of the one group.
            while end < order.len() && (self.groups.is_empty() || keys.row(order[end] as usize) == keys.row(order[start] as usize)) {
                end += 1;
            }
            let rows = &order[start..end];
            let mut next = 0;
            let mut bin = first_bin;
            while bin < self.to_ns {
                while next < rows.len() && (times.is_null(rows[next] as usize) || times.value(rows[next] as usize) < bin) {
                    next += 1;
                }
                let here = (next < rows.len() && times.value(rows[next] as usize) == bin).then(|| rows[next]);
                if bins.len() >= BINS_TOTAL_MAX {
                    // A memory bound: answered like the query memory limit (422 memory_limit).
                    let detail = format!("bin_gapfill: more than {BINS_TOTAL_MAX} bins over all groups; widen the interval, narrow the time range or group less");
                    return Err(datafusion::error::DataFusionError::ResourcesExhausted(detail));
                }
                group_rows.push(rows[0]);
                bins.push(bin);
                present.push(here);
                let Some(next_bin) = bin.checked_add(self.stride_ns) else { break };
                bin = next_bin;
            }
            start = end;
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        for (index, column) in batch.columns().iter().enumerate() {
            let filled: ArrayRef = if index == self.time {
                datafusion::arrow::compute::cast(&TimestampNanosecondArray::from(bins.clone()), column.data_type())?
            } else if self.groups.contains(&index) {
                take(column.as_ref(), &UInt32Array::from(group_rows.clone()), None)?
            } else {
                take(column.as_ref(), &UInt32Array::from(present.clone()), None)?
            };
            columns.push(filled);
        }
        for (source, fill) in &self.extra {
            let column = batch.column(*source);
            columns.push(match fill {
                Fill::Null => take(column.as_ref(), &UInt32Array::from(present.clone()), None)?,
                Fill::Locf => take(column.as_ref(), &UInt32Array::from(carried(&present, &group_rows, column.as_ref())), None)?,
                Fill::Interpolate => interpolated(&present, &group_rows, &bins, column)?,
            });
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// For each output row, the latest input row of its group at or before it with a non-null value.
fn carried(present: &[Option<u32>], group_rows: &[u32], column: &dyn Array) -> Vec<Option<u32>> {
    let mut last: Option<u32> = None;
    present
        .iter()
        .enumerate()
        .map(|(i, row)| {
            if i > 0 && group_rows[i] != group_rows[i - 1] {
                last = None;
            }
            if let Some(row) = row.filter(|r| column.is_valid(*r as usize)) {
                last = Some(row);
            }
            last
        })
        .collect()
}

/// For each output row, its value, or the straight line between the neighbouring bins of its
/// group that have one (null before the first and after the last).
fn interpolated(present: &[Option<u32>], group_rows: &[u32], bins: &[i64], column: &ArrayRef) -> Result<ArrayRef> {
    let values = datafusion::arrow::compute::cast(column, &DataType::Float64)?;
    let values = values.as_primitive::<Float64Type>();
    let known = |i: usize| present[i].filter(|r| values.is_valid(*r as usize)).map(|r| values.value(r as usize));
    let mut out: Vec<Option<f64>> = vec![None; present.len()];
    let mut start = 0;
    while start < present.len() {
        let mut end = start + 1;
        while end < present.len() && group_rows[end] == group_rows[start] {
            end += 1;
        }
        let points: Vec<usize> = (start..end).filter(|&i| known(i).is_some()).collect();
        for &i in &points {
            out[i] = known(i);
        }
        for pair in points.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (va, vb) = (known(a).expect("known"), known(b).expect("known"));
            for (i, slot) in out.iter_mut().enumerate().take(b).skip(a + 1) {
                *slot = Some(va + (vb - va) * (bins[i] - bins[a]) as f64 / (bins[b] - bins[a]) as f64);
            }
        }
        start = end;
    }
    Ok(Arc::new(Float64Array::from(out)))
}

/// Registers gap filling in a session: its functions are registered by the caller with
/// [`functions`]; this adds the rule and the planner.
pub fn with_gap_filling(builder: datafusion::execution::SessionStateBuilder) -> datafusion::execution::SessionStateBuilder {
    builder.with_optimizer_rule(Arc::new(GapFillRule)).with_query_planner(Arc::new(LodestoneQueryPlanner))
}
