//! A row as both tiers hold it: the series it belongs to (dimensions and measure name) and its
//! value at one time. The hot tier keeps rows in this shape; the cold tier writes them to
//! Parquet from it.

use lodestone_model::{Dimension, MeasureValue};

/// A series: the dimensions and measure name shared by its rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub dimensions: Vec<Dimension>,
    pub measure_name: String,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub value: MeasureValue,
    pub version: u64,
}
