//! Records: the unit of data, shaped after Timestream's WriteRecords.

use std::fmt;

/// One dimension: a name and a string value that together identify a series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dimension {
    pub name: String,
    pub value: String,
}

/// The type of a measure value, by Timestream's names (also its spelling in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MeasureType {
    Double,
    Bigint,
    Varchar,
    Boolean,
    Timestamp,
    Multi,
}

impl MeasureType {
    /// Timestream's spelling: `DOUBLE`, `BIGINT`, `VARCHAR`, `BOOLEAN`, `TIMESTAMP`, `MULTI`.
    pub fn as_str(self) -> &'static str {
        match self {
            MeasureType::Double => "DOUBLE",
            MeasureType::Bigint => "BIGINT",
            MeasureType::Varchar => "VARCHAR",
            MeasureType::Boolean => "BOOLEAN",
            MeasureType::Timestamp => "TIMESTAMP",
            MeasureType::Multi => "MULTI",
        }
    }

    /// Parses Timestream's spelling, case-insensitively.
    pub fn parse(text: &str) -> Option<MeasureType> {
        let ty = match text.to_ascii_uppercase().as_str() {
            "DOUBLE" => MeasureType::Double,
            "BIGINT" => MeasureType::Bigint,
            "VARCHAR" => MeasureType::Varchar,
            "BOOLEAN" => MeasureType::Boolean,
            "TIMESTAMP" => MeasureType::Timestamp,
            "MULTI" => MeasureType::Multi,
            _ => return None,
        };
        Some(ty)
    }
}

impl fmt::Display for MeasureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A single typed value. `Timestamp` is nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Double(f64),
    Bigint(i64),
    Varchar(String),
    Boolean(bool),
    Timestamp(i64),
}

impl Scalar {
    pub fn measure_type(&self) -> MeasureType {
        match self {
            Scalar::Double(_) => MeasureType::Double,
            Scalar::Bigint(_) => MeasureType::Bigint,
            Scalar::Varchar(_) => MeasureType::Varchar,
            Scalar::Boolean(_) => MeasureType::Boolean,
            Scalar::Timestamp(_) => MeasureType::Timestamp,
        }
    }

    /// Bytes this value counts for against the record size quota.
    pub fn size_bytes(&self) -> usize {
        match self {
            Scalar::Varchar(text) => text.len(),
            Scalar::Boolean(_) => 1,
            _ => 8,
        }
    }

    /// Equality that treats two NaNs as the same value (an upsert of NaN over NaN is a no-op).
    pub fn same_as(&self, other: &Scalar) -> bool {
        match (self, other) {
            (Scalar::Double(a), Scalar::Double(b)) => a.to_bits() == b.to_bits() || a == b,
            _ => self == other,
        }
    }
}

/// A record's value: one scalar, or up to 256 named scalars (Timestream's MULTI).
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureValue {
    Single(Scalar),
    /// Sorted by name, names unique.
    Multi(Vec<(String, Scalar)>),
}

impl MeasureValue {
    pub fn measure_type(&self) -> MeasureType {
        match self {
            MeasureValue::Single(scalar) => scalar.measure_type(),
            MeasureValue::Multi(_) => MeasureType::Multi,
        }
    }

    pub fn same_as(&self, other: &MeasureValue) -> bool {
        match (self, other) {
            (MeasureValue::Single(a), MeasureValue::Single(b)) => a.same_as(b),
            (MeasureValue::Multi(a), MeasureValue::Multi(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|((na, va), (nb, vb))| na == nb && va.same_as(vb))
            }
            _ => false,
        }
    }
}

/// One record. Its upsert key is (dimensions, measure_name, time_ns).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Sorted by name, names unique.
    pub dimensions: Vec<Dimension>,
    pub measure_name: String,
    pub value: MeasureValue,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// At least 1; a higher version replaces a lower one under the same key.
    pub version: u64,
}

impl Record {
    /// Bytes this record counts for against the 2 KiB record quota: names and values, as
    /// Timestream counts them (approximately: 8 bytes for time and version each).
    pub fn size_bytes(&self) -> usize {
        let dimensions: usize = self.dimensions.iter().map(|d| d.name.len() + d.value.len()).sum();
        let value = match &self.value {
            MeasureValue::Single(scalar) => scalar.size_bytes(),
            MeasureValue::Multi(values) => values.iter().map(|(n, v)| n.len() + v.size_bytes()).sum(),
        };
        dimensions + self.measure_name.len() + value + 16
    }
}
