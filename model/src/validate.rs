//! Validation against Timestream's quotas, and the stable rejection reasons.

use std::fmt;

use crate::record::{MeasureValue, Record, Scalar};

/// Timestream's per-record quotas. Every field is a bound; one past it is a [`Rejection`].
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub dimensions_per_record_max: usize,
    pub dimension_name_bytes_max: usize,
    pub dimension_value_bytes_max: usize,
    pub measure_name_bytes_max: usize,
    pub multi_measures_per_record_max: usize,
    pub record_bytes_max: usize,
    /// How far ahead of the validator's clock a record's time may be.
    pub future_ns_max: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            dimensions_per_record_max: 128,
            dimension_name_bytes_max: 60,
            dimension_value_bytes_max: 2048,
            measure_name_bytes_max: 256,
            multi_measures_per_record_max: 256,
            record_bytes_max: 2048,
            future_ns_max: 15 * 60 * 1_000_000_000,
        }
    }
}

/// Why a record or payload was refused. The names from [`RejectReason::as_str`] are stable: they
/// appear in dead-letter headers, metric labels, the `rejected_records` view and HTTP errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The payload is not a decodable envelope (bad CBOR/JSON, missing fields).
    MalformedPayload,
    /// The envelope declares a format version this build does not know.
    UnsupportedVersion,
    /// The payload is larger than the receiver's bound.
    PayloadTooLarge,
    /// The envelope holds more records than the receiver's bound.
    TooManyRecords,
    /// The topic or headers do not name a valid destination or device.
    InvalidDestination,
    /// The envelope's `source.device_id` is not the device that sent it (the identity of its
    /// MQTT connection, which its topic carries).
    IdentityMismatch,
    /// A record field has the wrong type or an unparseable value.
    InvalidValue,
    InvalidDimensionName,
    DimensionNameTooLong,
    DimensionValueTooLong,
    DuplicateDimension,
    TooManyDimensions,
    InvalidMeasureName,
    MeasureNameTooLong,
    TooManyMeasures,
    DuplicateMeasure,
    RecordTooLarge,
    InvalidVersion,
    TimeTooFarInFuture,
    /// Older than the table's memory retention, and the table does not take magnetic writes.
    TimeOutsideRetention,
    /// The upsert key exists with another value and a version that is not lower.
    VersionConflict,
    /// The measure was first written with another type.
    MeasureTypeMismatch,
    /// The destination table does not exist and may not be created implicitly.
    TableNotFound,
    /// The store's memory tier is at its bound; the writer should retry later.
    StoreFull,
    /// Creating the record's database would pass the store's `limits.databases_max`.
    TooManyDatabases,
    /// Creating the record's table would pass the store's `limits.tables_per_database_max`.
    TooManyTables,
    /// The record's new dimension names would pass the table's `limits.dimensions_per_table_max`.
    TooManyTableDimensions,
    /// The record's new measure name or columns would pass the table's `limits.measures_per_table_max`.
    TooManyTableMeasures,
    /// A DOUBLE measure is NaN or ±Infinity, which Timestream does not store either.
    NonFiniteDouble,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedPayload => "malformed_payload",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::TooManyRecords => "too_many_records",
            RejectReason::InvalidDestination => "invalid_destination",
            RejectReason::IdentityMismatch => "identity_mismatch",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::InvalidDimensionName => "invalid_dimension_name",
            RejectReason::DimensionNameTooLong => "dimension_name_too_long",
            RejectReason::DimensionValueTooLong => "dimension_value_too_long",
            RejectReason::DuplicateDimension => "duplicate_dimension",
            RejectReason::TooManyDimensions => "too_many_dimensions",
            RejectReason::InvalidMeasureName => "invalid_measure_name",
            RejectReason::MeasureNameTooLong => "measure_name_too_long",
            RejectReason::TooManyMeasures => "too_many_measures",
            RejectReason::DuplicateMeasure => "duplicate_measure",
            RejectReason::RecordTooLarge => "record_too_large",
            RejectReason::InvalidVersion => "invalid_version",
            RejectReason::TimeTooFarInFuture => "time_too_far_in_future",
            RejectReason::TimeOutsideRetention => "time_outside_retention",
            RejectReason::VersionConflict => "version_conflict",
            RejectReason::MeasureTypeMismatch => "measure_type_mismatch",
            RejectReason::TableNotFound => "table_not_found",
            RejectReason::StoreFull => "store_full",
            RejectReason::TooManyDatabases => "too_many_databases",
            RejectReason::TooManyTables => "too_many_tables",
            RejectReason::TooManyTableDimensions => "too_many_table_dimensions",
            RejectReason::TooManyTableMeasures => "too_many_table_measures",
            RejectReason::NonFiniteDouble => "non_finite_double",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One refused record: which one, why, and a human-readable detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Position of the record in its envelope (0 for a whole-payload rejection).
    pub index: usize,
    pub reason: RejectReason,
    pub detail: String,
    /// For a [`RejectReason::VersionConflict`]: the version of the value already stored
    /// (Timestream's `ExistingVersion`).
    pub existing_version: Option<u64>,
}

impl Rejection {
    pub fn new(index: usize, reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection { index, reason, detail: detail.into(), existing_version: None }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {}: {}", self.index, self.reason, self.detail)
    }
}

/// Names that cannot be dimension or multi-measure names, in any case: they are the table's own
/// columns (SQL matches names without regard to case, so `Time` would shadow `time`).
fn is_reserved_column(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "measure_name" | "time" | "version") || name.starts_with("measure_value")
}

/// Database names that belong to Lodestone itself, in any case: `_lodestone` (its
/// `rejected_records` table) and `_catalog` (the catalog's folder in the object store). No device,
/// producer or API caller may write to or create them.
pub fn is_reserved_database(name: &str) -> bool {
    name.eq_ignore_ascii_case("_lodestone") || name.eq_ignore_ascii_case("_catalog")
}

/// Checks a database or table name: 3 to 256 bytes of ASCII letters, digits, `_`, `-` and `.`
/// (Timestream's rule), which also keeps it safe inside MQTT topics and object-store paths.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.len() < 3 || name.len() > 256 {
        return Err(format!("{kind} name {name:?} must be 3 to 256 bytes long"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.chars().all(allowed) {
        return Err(format!("{kind} name {name:?} may hold only ASCII letters, digits, '_', '-' and '.'"));
    }
    if kind == "database" && is_reserved_database(name) {
        return Err(format!("database name {name:?} is reserved for Lodestone"));
    }
    Ok(())
}

fn is_non_finite(scalar: &Scalar) -> bool {
    matches!(scalar, Scalar::Double(v) if !v.is_finite())
}

/// Checks one record against `limits` with the validator's clock at `now_ns`.
/// `index` is the record's position, carried into the rejection.
pub fn validate_record(record: &Record, limits: &Limits, now_ns: i64, index: usize) -> Result<(), Rejection> {
    let reject = |reason, detail: String| Err(Rejection::new(index, reason, detail));
    if record.dimensions.len() > limits.dimensions_per_record_max {
        return reject(
            RejectReason::TooManyDimensions,
            format!("{} dimensions, at most {}", record.dimensions.len(), limits.dimensions_per_record_max),
        );
    }
    for pair in record.dimensions.windows(2) {
        if pair[0].name == pair[1].name {
            return reject(RejectReason::DuplicateDimension, format!("dimension {:?} given twice", pair[0].name));
        }
    }
    for dimension in &record.dimensions {
        if dimension.name.is_empty() || is_reserved_column(&dimension.name) {
            return reject(RejectReason::InvalidDimensionName, format!("dimension name {:?} is empty or reserved", dimension.name));
        }
        if dimension.name.len() > limits.dimension_name_bytes_max {
            return reject(
                RejectReason::DimensionNameTooLong,
                format!("dimension name {:?} longer than {} bytes", dimension.name, limits.dimension_name_bytes_max),
            );
        }
        if dimension.value.len() > limits.dimension_value_bytes_max {
            return reject(
                RejectReason::DimensionValueTooLong,
                format!("value of dimension {:?} longer than {} bytes", dimension.name, limits.dimension_value_bytes_max),
            );
        }
    }
    if record.measure_name.is_empty() || is_reserved_column(&record.measure_name) {
        return reject(RejectReason::InvalidMeasureName, format!("measure name {:?} is empty or reserved", record.measure_name));
    }
    if record.measure_name.len() > limits.measure_name_bytes_max {
        return reject(
            RejectReason::MeasureNameTooLong,
            format!("measure name longer than {} bytes", limits.measure_name_bytes_max),
        );
    }
    if let MeasureValue::Multi(values) = &record.value {
        if values.is_empty() || values.len() > limits.multi_measures_per_record_max {
            return reject(
                RejectReason::TooManyMeasures,
                format!("{} measures in a MULTI record, need 1 to {}", values.len(), limits.multi_measures_per_record_max),
            );
        }
        for pair in values.windows(2) {
            if pair[0].0 == pair[1].0 {
                return reject(RejectReason::DuplicateMeasure, format!("measure {:?} given twice", pair[0].0));
            }
        }
        for (name, _) in values {
            let clashes = record.dimensions.iter().any(|d| &d.name == name);
            if name.is_empty() || is_reserved_column(name) || clashes {
                return reject(RejectReason::InvalidMeasureName, format!("measure name {name:?} is empty, reserved or a dimension"));
            }
            if name.len() > limits.measure_name_bytes_max {
                return reject(RejectReason::MeasureNameTooLong, format!("measure name {name:?} longer than {} bytes", limits.measure_name_bytes_max));
            }
        }
    }
    let non_finite = match &record.value {
        MeasureValue::Single(scalar) => is_non_finite(scalar).then_some(record.measure_name.as_str()),
        MeasureValue::Multi(values) => values.iter().find(|(_, v)| is_non_finite(v)).map(|(name, _)| name.as_str()),
    };
    if let Some(name) = non_finite {
        return reject(RejectReason::NonFiniteDouble, format!("measure {name:?} is NaN or infinite"));
    }
    let size = record.size_bytes();
    if size > limits.record_bytes_max {
        return reject(RejectReason::RecordTooLarge, format!("record is {size} bytes, at most {}", limits.record_bytes_max));
    }
    if record.version == 0 {
        return reject(RejectReason::InvalidVersion, "version must be at least 1".to_string());
    }
    if record.time_ns > now_ns.saturating_add(limits.future_ns_max) {
        return reject(
            RejectReason::TimeTooFarInFuture,
            format!("time {} is more than {} s ahead of now", record.time_ns, limits.future_ns_max / 1_000_000_000),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Dimension;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn record() -> Record {
        Record {
            dimensions: vec![Dimension { name: "truck".into(), value: "t1".into() }],
            measure_name: "speed".into(),
            value: MeasureValue::Single(Scalar::Double(1.0)),
            time_ns: NOW,
            version: 1,
        }
    }

    fn check(edit: impl FnOnce(&mut Record), expected: Option<RejectReason>) {
        let mut r = record();
        edit(&mut r);
        let got = validate_record(&r, &Limits::default(), NOW, 0).err().map(|e| e.reason);
        assert_eq!(got, expected, "record {r:?}");
    }

    fn dims(n: usize) -> Vec<Dimension> {
        (0..n).map(|i| Dimension { name: format!("d{i:03}"), value: "v".into() }).collect()
    }

    #[test]
    fn limits_at_bound_pass_and_one_past_fail() {
        check(|r| r.dimensions = dims(128), None);
        check(|r| r.dimensions = dims(129), Some(RejectReason::TooManyDimensions));
        check(|r| r.dimensions[0].name = "n".repeat(60), None);
        check(|r| r.dimensions[0].name = "n".repeat(61), Some(RejectReason::DimensionNameTooLong));
        check(|r| r.measure_name = "m".repeat(256), None);
        check(|r| r.measure_name = "m".repeat(257), Some(RejectReason::MeasureNameTooLong));
        let multi = |n: usize| MeasureValue::Multi((0..n).map(|i| (format!("m{i:03}"), Scalar::Boolean(true))).collect());
        check(|r| r.value = multi(256), None);
        check(|r| r.value = multi(257), Some(RejectReason::TooManyMeasures));
        check(|r| r.value = multi(0), Some(RejectReason::TooManyMeasures));
        let fixed = record().size_bytes() - 8;
        check(|r| r.value = MeasureValue::Single(Scalar::Varchar("x".repeat(2048 - fixed))), None);
        check(|r| r.value = MeasureValue::Single(Scalar::Varchar("x".repeat(2049 - fixed))), Some(RejectReason::RecordTooLarge));
        check(|r| r.time_ns = NOW + 15 * 60 * 1_000_000_000, None);
        check(|r| r.time_ns = NOW + 15 * 60 * 1_000_000_000 + 1, Some(RejectReason::TimeTooFarInFuture));
    }

    /// One policy on every path (envelope, line protocol, Kafka): NaN and ±Infinity are refused
    /// with their own reason, as Timestream refuses them, instead of being stored and read back
    /// as `null`.
    #[test]
    fn non_finite_doubles_are_refused_on_every_path() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            check(|r| r.value = MeasureValue::Single(Scalar::Double(bad)), Some(RejectReason::NonFiniteDouble));
            let multi = MeasureValue::Multi(vec![("a".into(), Scalar::Double(1.0)), ("b".into(), Scalar::Double(bad))]);
            check(|r| r.value = multi, Some(RejectReason::NonFiniteDouble));
        }
        check(|r| r.value = MeasureValue::Single(Scalar::Double(f64::MAX)), None);
        check(|r| r.value = MeasureValue::Single(Scalar::Double(-0.0)), None);
    }

    #[test]
    fn names_and_versions() {
        check(|r| r.version = 0, Some(RejectReason::InvalidVersion));
        check(|r| r.measure_name = String::new(), Some(RejectReason::InvalidMeasureName));
        check(|r| r.measure_name = "measure_value::double".into(), Some(RejectReason::InvalidMeasureName));
        check(|r| r.dimensions[0].name = "time".into(), Some(RejectReason::InvalidDimensionName));
        // Reserved column names in any case: SQL would not tell them apart.
        check(|r| r.dimensions[0].name = "Time".into(), Some(RejectReason::InvalidDimensionName));
        check(|r| r.dimensions[0].name = "MEASURE_NAME".into(), Some(RejectReason::InvalidDimensionName));
        check(|r| r.measure_name = "Measure_Value::double".into(), Some(RejectReason::InvalidMeasureName));
        check(|r| r.value = MeasureValue::Multi(vec![("VERSION".into(), Scalar::Bigint(1))]), Some(RejectReason::InvalidMeasureName));
        check(
            |r| r.dimensions = vec![r.dimensions[0].clone(), r.dimensions[0].clone()],
            Some(RejectReason::DuplicateDimension),
        );
        check(
            |r| r.value = MeasureValue::Multi(vec![("truck".into(), Scalar::Bigint(1))]),
            Some(RejectReason::InvalidMeasureName),
        );
    }

    #[test]
    fn database_and_table_names() {
        assert!(validate_name("table", "abc").is_ok());
        assert!(validate_name("table", "ab").is_err());
        assert!(validate_name("table", &"a".repeat(257)).is_err());
        assert!(validate_name("table", "a/b+c").is_err());
    }

    #[test]
    fn lodestones_own_databases_are_reserved_in_any_case() {
        for name in ["_lodestone", "_LODESTONE", "_Catalog", "_catalog"] {
            let error = validate_name("database", name).unwrap_err();
            assert!(error.contains("reserved"), "{name}: {error}");
        }
        assert!(validate_name("database", "lodestone").is_ok());
        assert!(validate_name("table", "_catalog").is_ok(), "only database names are reserved");
    }
}
