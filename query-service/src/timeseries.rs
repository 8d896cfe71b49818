//! Timestream's functions on the timeseries type: `interpolate_linear`, `interpolate_locf`,
//! `interpolate_fill`, `interpolate_spline_cubic`, `derivative_linear`,
//! `non_negative_derivative_linear` and `integral_trapezoidal`.
//!
//! A timeseries is an array of rows `(time, value)`, as `create_time_series(time, value)` builds
//! it: here a list of structs with a nanosecond `time` and a DOUBLE `value`. Points with a null
//! value are ignored; points are taken in time order.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray, StructArray, TimestampNanosecondArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float64Type, IntervalUnit, TimeUnit, TimestampNanosecondType};
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// The Arrow type of a timeseries.
pub fn timeseries_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Struct(point_fields()), true)))
}

fn point_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("value", DataType::Float64, true),
    ])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    InterpolateLinear,
    InterpolateLocf,
    InterpolateFill,
    InterpolateSplineCubic,
    DerivativeLinear,
    NonNegativeDerivativeLinear,
    IntegralTrapezoidal,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::InterpolateLinear => "interpolate_linear",
            Kind::InterpolateLocf => "interpolate_locf",
            Kind::InterpolateFill => "interpolate_fill",
            Kind::InterpolateSplineCubic => "interpolate_spline_cubic",
            Kind::DerivativeLinear => "derivative_linear",
            Kind::NonNegativeDerivativeLinear => "non_negative_derivative_linear",
            Kind::IntegralTrapezoidal => "integral_trapezoidal",
        }
    }

    /// Accepted argument counts and how to call the function, for error messages.
    fn usage(self) -> (&'static [usize], &'static str) {
        match self {
            Kind::InterpolateLinear | Kind::InterpolateLocf | Kind::InterpolateSplineCubic => (&[2], "(timeseries, array(timestamp))"),
            Kind::InterpolateFill => (&[3], "(timeseries, array(timestamp), fill_value)"),
            Kind::DerivativeLinear | Kind::NonNegativeDerivativeLinear => (&[2], "(timeseries, interval)"),
            Kind::IntegralTrapezoidal => (&[1, 2], "(timeseries[, interval])"),
        }
    }
}

/// Every timeseries function, for registering in a session.
pub fn functions() -> Vec<ScalarUDF> {
    [
        Kind::InterpolateLinear,
        Kind::InterpolateLocf,
        Kind::InterpolateFill,
        Kind::InterpolateSplineCubic,
        Kind::DerivativeLinear,
        Kind::NonNegativeDerivativeLinear,
        Kind::IntegralTrapezoidal,
    ]
    .into_iter()
    .map(|kind| ScalarUDF::new_from_impl(TimeseriesFunction { kind, signature: Signature::variadic_any(Volatility::Immutable) }))
    .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TimeseriesFunction {
    kind: Kind,
    signature: Signature,
}

impl ScalarUDFImpl for TimeseriesFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let (counts, usage) = self.kind.usage();
        if !counts.contains(&arg_types.len()) {
            return plan_err!("{} takes {}{usage}", self.name(), self.name());
        }
        if !is_timeseries(&arg_types[0]) {
            return plan_err!("{}: the first argument must be a timeseries (create_time_series(time, value)), not {}", self.name(), arg_types[0]);
        }
        Ok(match self.kind {
            Kind::IntegralTrapezoidal => DataType::Float64,
            _ => timeseries_type(),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let series = arrays[0].as_list::<i32>();
        let point = |row: usize| -> Result<Vec<(i64, f64)>> { points(series, row) };
        match self.kind {
            Kind::IntegralTrapezoidal => {
                let unit_ns = match arrays.get(1) {
                    Some(unit) => interval_ns(unit, self.name())?,
                    None => vec![Some(1_000_000_000); rows],
                };
                let mut out = Vec::with_capacity(rows);
                for row in 0..rows {
                    let unit = unit_ns[row].filter(|u| *u > 0);
                    out.push(match (series.is_null(row), unit) {
                        (false, Some(unit)) => Some(integral(&point(row)?, unit)),
                        _ => None,
                    });
                }
                Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
            }
            Kind::DerivativeLinear | Kind::NonNegativeDerivativeLinear => {
                let unit_ns = interval_ns(&arrays[1], self.name())?;
                let non_negative = self.kind == Kind::NonNegativeDerivativeLinear;
                build((0..rows).map(|row| match (series.is_null(row), unit_ns[row]) {
                    (false, Some(unit)) => point(row).map(|p| Some(derivative(&p, unit, non_negative))),
                    _ => Ok(None),
                }))
            }
            kind => {
                let times = arrays[1].as_list_opt::<i32>().ok_or_else(|| {
                    datafusion::error::DataFusionError::Execution(format!("{}: the second argument must be an array of timestamps", self.name()))
                })?;
                let fill = match arrays.get(2) {
                    Some(fill) => Some(datafusion::arrow::compute::cast(fill, &DataType::Float64)?),
                    None => None,
                };
                build((0..rows).map(|row| {
                    if series.is_null(row) || times.is_null(row) {
                        return Ok(None);
                    }
                    let at = timestamps(&times.value(row))?;
                    let known = point(row)?;
                    Ok(Some(match kind {
                        Kind::InterpolateLinear => interpolate_linear(&known, &at),
                        Kind::InterpolateLocf => interpolate_locf(&known, &at),
                        Kind::InterpolateSplineCubic => interpolate_spline_cubic(&known, &at),
                        _ => {
                            let fill = fill.as_ref().expect("three arguments").as_primitive::<Float64Type>();
                            let value = (!fill.is_null(row)).then(|| fill.value(row));
                            interpolate_fill(&known, &at, value)
                        }
                    }))
                }))
            }
        }
    }
}

fn is_timeseries(data_type: &DataType) -> bool {
    match data_type {
        DataType::List(item) | DataType::LargeList(item) => match item.data_type() {
            DataType::Struct(fields) => fields.len() >= 2,
            _ => false,
        },
        _ => false,
    }
}

/// The non-null points of row `row` of a timeseries column, sorted by time.
fn points(series: &ListArray, row: usize) -> Result<Vec<(i64, f64)>> {
    if series.is_null(row) {
        return Ok(Vec::new());
    }
    let value = series.value(row);
    let points = value.as_struct();
    let column = |name: &str, position: usize| points.column_by_name(name).unwrap_or_else(|| points.column(position)).clone();
    let times = timestamps(&column("time", 0))?;
    let values = datafusion::arrow::compute::cast(&column("value", 1), &DataType::Float64)?;
    let values = values.as_primitive::<Float64Type>();
    let mut out: Vec<(i64, f64)> = (0..points.len())
        .filter(|&i| !points.is_null(i) && !values.is_null(i))
        .filter_map(|i| times[i].map(|t| (t, values.value(i))))
        .collect();
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

/// An array of timestamps (any unit) as nanoseconds.
fn timestamps(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let nanos = datafusion::arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    Ok(nanos.as_primitive::<TimestampNanosecondType>().iter().collect())
}

/// An interval column as nanoseconds (months are refused: their length varies).
fn interval_ns(array: &ArrayRef, function: &str) -> Result<Vec<Option<i64>>> {
    let DataType::Interval(_) = array.data_type() else {
        return exec_err!("{function}: the interval argument must be an interval (e.g. 1s, 5m), not {}", array.data_type());
    };
    let array = datafusion::arrow::compute::cast(array, &DataType::Interval(IntervalUnit::MonthDayNano))?;
    let array = array.as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>();
    array
        .iter()
        .map(|value| match value {
            None => Ok(None),
            Some(v) if v.months != 0 => exec_err!("{function}: intervals of months have no fixed length"),
            Some(v) => Ok(Some(i64::from(v.days) * 86_400_000_000_000 + v.nanoseconds)),
        })
        .collect()
}

/// A list-of-points column from per-row points (`None`: a null row).
fn build(rows: impl Iterator<Item = Result<Option<Vec<(i64, f64)>>>>) -> Result<ColumnarValue> {
    let (mut times, mut values, mut offsets, mut valid) = (Vec::new(), Vec::new(), vec![0i32], Vec::new());
    for row in rows {
        let row = row?;
        valid.push(row.is_some());
        for (time, value) in row.unwrap_or_default() {
            times.push(time);
            values.push(value);
        }
        offsets.push(i32::try_from(times.len()).map_err(|_| datafusion::error::DataFusionError::Execution("timeseries too long".into()))?);
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(TimestampNanosecondArray::from(times)), Arc::new(Float64Array::from(values))];
    let points = StructArray::try_new(point_fields(), columns, None)?;
    let DataType::List(item) = timeseries_type() else { unreachable!() };
    let list = ListArray::try_new(item, OffsetBuffer::new(offsets.into()), Arc::new(points), Some(valid.into()))?;
    Ok(ColumnarValue::Array(Arc::new(list)))
}

/// Linear interpolation at each time of `at` within the series' time range; times outside it
/// are left out (no extrapolation).
pub fn interpolate_linear(known: &[(i64, f64)], at: &[Option<i64>]) -> Vec<(i64, f64)> {
    at.iter()
        .flatten()
        .filter_map(|&t| {
            let after = known.partition_point(|(time, _)| *time < t);
            let (t1, v1) = *known.get(after)?;
            if t1 == t {
                return Some((t, v1));
            }
            let (t0, v0) = *known.get(after.checked_sub(1)?)?;
            Some((t, v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64))
        })
        .collect()
}

/// Last observation carried forward: each time of `at` takes the value of the latest point at or
/// before it; times before the first point are left out.
pub fn interpolate_locf(known: &[(i64, f64)], at: &[Option<i64>]) -> Vec<(i64, f64)> {
    at.iter()
        .flatten()
        .filter_map(|&t| {
            let upto = known.partition_point(|(time, _)| *time <= t);
            Some((t, known.get(upto.checked_sub(1)?)?.1))
        })
        .collect()
}

/// Each time of `at` takes the series' value at exactly that time, else `fill` (left out when
/// `fill` is null).
pub fn interpolate_fill(known: &[(i64, f64)], at: &[Option<i64>], fill: Option<f64>) -> Vec<(i64, f64)> {
    at.iter()
        .flatten()
        .filter_map(|&t| match known.binary_search_by_key(&t, |(time, _)| *time) {
            Ok(i) => Some((t, known[i].1)),
            Err(_) => fill.map(|f| (t, f)),
        })
        .collect()
}

/// Natural cubic spline through the points (linear with two points), evaluated at each time of
/// `at` within the series' time range.
pub fn interpolate_spline_cubic(known: &[(i64, f64)], at: &[Option<i64>]) -> Vec<(i64, f64)> {
    let n = known.len();
    if n < 3 {
        return interpolate_linear(known, at);
    }
    // Times relative to the first point, in seconds, for a well-conditioned system.
    let x: Vec<f64> = known.iter().map(|(t, _)| (t - known[0].0) as f64 / 1e9).collect();
    let y: Vec<f64> = known.iter().map(|(_, v)| *v).collect();
    let h: Vec<f64> = (0..n - 1).map(|i| x[i + 1] - x[i]).collect();
    // Second derivatives m, with m[0] = m[n-1] = 0, by the tridiagonal (Thomas) algorithm.
    let mut m = vec![0.0; n];
    let (mut c_prime, mut d_prime) = (vec![0.0; n], vec![0.0; n]);
    for i in 1..n - 1 {
        let (a, b, c) = (h[i - 1], 2.0 * (h[i - 1] + h[i]), h[i]);
        let d = 6.0 * ((y[i + 1] - y[i]) / h[i] - (y[i] - y[i - 1]) / h[i - 1]);
        let denominator = b - a * c_prime[i - 1];
        c_prime[i] = c / denominator;
        d_prime[i] = (d - a * d_prime[i - 1]) / denominator;
    }
    for i in (1..n - 1).rev() {
        m[i] = d_prime[i] - c_prime[i] * m[i + 1];
    }
    at.iter()
        .flatten()
        .filter_map(|&t| {
            if t < known[0].0 || t > known[n - 1].0 {
                return None;
            }
            let xt = (t - known[0].0) as f64 / 1e9;
            let i = (known.partition_point(|(time, _)| *time <= t).max(1) - 1).min(n - 2);
            let (a, b) = (x[i + 1] - xt, xt - x[i]);
            let value = m[i] * a.powi(3) / (6.0 * h[i])
                + m[i + 1] * b.powi(3) / (6.0 * h[i])
                + (y[i] / h[i] - m[i] * h[i] / 6.0) * a
                + (y[i + 1] / h[i] - m[i + 1] * h[i] / 6.0) * b;
            Some((t, value))
        })
        .collect()
}

/// The rate of change between consecutive points, per `unit_ns`, at the later point's time.
/// `non_negative` leaves out negative rates (a counter reset).
pub fn derivative(known: &[(i64, f64)], unit_ns: i64, non_negative: bool) -> Vec<(i64, f64)> {
    known
        .windows(2)
        .filter(|pair| pair[1].0 > pair[0].0)
        .map(|pair| (pair[1].0, (pair[1].1 - pair[0].1) * unit_ns as f64 / (pair[1].0 - pair[0].0) as f64))
        .filter(|(_, rate)| !non_negative || *rate >= 0.0)
        .collect()
}

/// The area under the series by the trapezoidal rule, time measured in units of `unit_ns`.
pub fn integral(known: &[(i64, f64)], unit_ns: i64) -> f64 {
    known.windows(2).map(|pair| (pair[1].0 - pair[0].0) as f64 * (pair[0].1 + pair[1].1) / 2.0 / unit_ns as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn at(times: &[i64]) -> Vec<Option<i64>> {
        times.iter().map(|t| Some(t * S)).collect()
    }

    #[test]
    fn interpolations() {
        let known = [(0, 0.0), (10 * S, 10.0), (20 * S, 0.0)];
        assert_eq!(interpolate_linear(&known, &at(&[-5, 0, 5, 15, 20, 25])), [(0, 0.0), (5 * S, 5.0), (15 * S, 5.0), (20 * S, 0.0)]);
        assert_eq!(interpolate_locf(&known, &at(&[-5, 0, 5, 25])), [(0, 0.0), (5 * S, 0.0), (25 * S, 0.0)]);
        assert_eq!(interpolate_fill(&known, &at(&[0, 5]), Some(-1.0)), [(0, 0.0), (5 * S, -1.0)]);
        assert_eq!(interpolate_fill(&known, &at(&[0, 5]), None), [(0, 0.0)]);
        let spline = interpolate_spline_cubic(&known, &at(&[0, 10, 20, 5]));
        assert_eq!(&spline[..3], &[(0, 0.0), (10 * S, 10.0), (20 * S, 0.0)], "passes through the points");
        // Natural spline through (0,0), (10,10), (20,0): at x = 5 it is 6.875.
        assert!((spline[3].1 - 6.875).abs() < 1e-9, "{spline:?}");
    }

    #[test]
    fn derivatives_and_integral() {
        let counter = [(0, 0.0), (10 * S, 20.0), (20 * S, 5.0)];
        assert_eq!(derivative(&counter, S, false), [(10 * S, 2.0), (20 * S, -1.5)]);
        assert_eq!(derivative(&counter, 60 * S, true), [(10 * S, 120.0)]);
        assert_eq!(integral(&counter, S), 10.0 * 10.0 + 10.0 * 12.5);
        assert_eq!(integral(&[(0, 1.0)], S), 0.0);
    }
}
