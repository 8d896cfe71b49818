//! A table's shape: which dimensions and measures it has, and the Arrow schema users query.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lodestone_model::{Dimension, MeasureType, MeasureValue, Record, RejectReason, Rejection};
use serde::{Deserialize, Serialize};

pub const TIME_COLUMN: &str = "time";
pub const MEASURE_NAME_COLUMN: &str = "measure_name";
/// Each row's version, kept as a column so that readers can deduplicate by the upsert rule.
pub const VERSION_COLUMN: &str = "version";

/// The typed single-value columns, in their fixed order.
pub const MEASURE_VALUE_COLUMNS: [(&str, MeasureType); 5] = [
    ("measure_value::double", MeasureType::Double),
    ("measure_value::bigint", MeasureType::Bigint),
    ("measure_value::varchar", MeasureType::Varchar),
    ("measure_value::boolean", MeasureType::Boolean),
    ("measure_value::timestamp", MeasureType::Timestamp),
];

/// What a table has seen: its dimension names, the type of each measure name, and the type of
/// each multi-measure column. Types are fixed by the first write, as in Timestream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub dimensions: BTreeSet<String>,
    /// measure_name → its type (MULTI for multi-measure records).
    pub measures: BTreeMap<String, MeasureType>,
    /// Multi-measure column name → its type.
    pub multi_columns: BTreeMap<String, MeasureType>,
}

impl TableSchema {
    /// Checks `record` against the types already fixed, without changing anything.
    pub fn check(&self, record: &Record, index: usize) -> Result<(), Rejection> {
        let reject = |reason, detail: String| Err(Rejection::new(index, reason, detail));
        let ty = record.value.measure_type();
        if let Some(existing) = self.measures.get(&record.measure_name) {
            if *existing != ty {
                return reject(
                    RejectReason::MeasureTypeMismatch,
                    format!("measure {:?} is {existing}, this record has {ty}", record.measure_name),
                );
            }
        }
        for dimension in &record.dimensions {
            if self.multi_columns.contains_key(&dimension.name) {
                return reject(RejectReason::InvalidDimensionName, format!("{:?} is a measure column of this table", dimension.name));
            }
        }
        if let MeasureValue::Multi(values) = &record.value {
            for (name, scalar) in values {
                if self.dimensions.contains(name) {
                    return reject(RejectReason::InvalidMeasureName, format!("{name:?} is a dimension of this table"));
                }
                if let Some(existing) = self.multi_columns.get(name) {
                    if *existing != scalar.measure_type() {
                        return reject(
                            RejectReason::MeasureTypeMismatch,
                            format!("measure column {name:?} is {existing}, this record has {}", scalar.measure_type()),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the names and types `record` brings; call after [`TableSchema::check`] passed.
    pub fn learn(&mut self, record: &Record) {
        self.learn_parts(&record.dimensions, &record.measure_name, &record.value);
    }

    /// [`TableSchema::learn`] of a record's parts.
    pub fn learn_parts(&mut self, dimensions: &[Dimension], measure_name: &str, value: &MeasureValue) {
        for dimension in dimensions {
            if !self.dimensions.contains(&dimension.name) {
                self.dimensions.insert(dimension.name.clone());
            }
        }
        if !self.measures.contains_key(measure_name) {
            self.measures.insert(measure_name.to_string(), value.measure_type());
        }
        if let MeasureValue::Multi(values) = value {
            for (name, scalar) in values {
                if !self.multi_columns.contains_key(name) {
                    self.multi_columns.insert(name.clone(), scalar.measure_type());
                }
            }
        }
    }

    /// The columns of the upsert key, (dimensions, measure_name, time): one row per key survives
    /// a merge (see [`crate::merge_dedup`]). With the version column, what deduplicating needs.
    pub fn upsert_key(&self) -> Vec<&str> {
        self.dimensions.iter().map(String::as_str).chain([MEASURE_NAME_COLUMN, TIME_COLUMN]).collect()
    }

    /// Whether this schema already has every name `other` has.
    pub fn covers(&self, other: &TableSchema) -> bool {
        other.dimensions.is_subset(&self.dimensions)
            && other.measures.keys().all(|k| self.measures.contains_key(k))
            && other.multi_columns.keys().all(|k| self.multi_columns.contains_key(k))
    }

    /// Merges what `other` has learned (types already agreed by [`TableSchema::check`]).
    pub fn merge(&mut self, other: &TableSchema) {
        self.dimensions.extend(other.dimensions.iter().cloned());
        for (name, ty) in &other.measures {
            self.measures.entry(name.clone()).or_insert(*ty);
        }
        for (name, ty) in &other.multi_columns {
            self.multi_columns.entry(name.clone()).or_insert(*ty);
        }
    }
}

/// The Arrow type of dimension columns and `measure_name`: a dictionary of strings. A series'
/// values repeat on each of its rows, and the cold tier stores them as Parquet dictionaries,
/// which a scan then reads as they are: only the keys are decoded per row, not the strings.
pub fn dimension_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The Arrow type of a scalar column.
pub fn arrow_type(ty: MeasureType) -> DataType {
    match ty {
        MeasureType::Double => DataType::Float64,
        MeasureType::Bigint => DataType::Int64,
        MeasureType::Varchar | MeasureType::Multi => DataType::Utf8View,
        MeasureType::Boolean => DataType::Boolean,
        MeasureType::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, None),
    }
}

/// The table's columns, in the order Timestream users know: one per dimension (sorted by name),
/// `measure_name`, `time`, the five `measure_value::<type>` columns, one per multi-measure name
/// (sorted), and `version`. Dimensions and `measure_name` are dictionary encoded
/// ([`dimension_type`]); VARCHAR values are string views.
pub fn arrow_schema(schema: &TableSchema) -> SchemaRef {
    let mut fields = Vec::with_capacity(schema.dimensions.len() + schema.multi_columns.len() + 8);
    for name in &schema.dimensions {
        fields.push(Field::new(name, dimension_type(), true));
    }
    fields.push(Field::new(MEASURE_NAME_COLUMN, dimension_type(), false));
    fields.push(Field::new(TIME_COLUMN, DataType::Timestamp(TimeUnit::Nanosecond, None), false));
    for (name, ty) in MEASURE_VALUE_COLUMNS {
        fields.push(Field::new(name, arrow_type(ty), true));
    }
    for (name, ty) in &schema.multi_columns {
        fields.push(Field::new(name, arrow_type(*ty), true));
    }
    fields.push(Field::new(VERSION_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}
