//! `WriteRecords`' records, read as Timestream reads them, without I/O: each record merged with
//! the request's `CommonAttributes`, converted to a [`Record`] and checked against Timestream's
//! quotas ([`validate_record`]).
//!
//! Two kinds of refusal, as Timestream has them:
//! - a request that does not follow the API's shapes (no records or more than 100, a dimension
//!   in both the common attributes and a record, a record without a time or a measure name, a
//!   value that is not of its type, `Version` below 1) is refused whole: [`RequestError`],
//!   answered `ValidationException`;
//! - a well-formed record that breaks a quota (too long a name, too many measures, a time too far
//!   ahead) is rejected alone: a [`Rejection`] by its index, answered in
//!   `RejectedRecordsException` while the others are written.

use lodestone_model::{validate_record, Dimension, Limits, MeasureType, MeasureValue, Record, Rejection, Scalar};
use serde::Deserialize;

/// Records one call may carry (Timestream's bound).
pub const RECORDS_PER_CALL_MAX: usize = 100;

/// A record as the API sends it (also the shape of `CommonAttributes`). Unknown fields are
/// ignored, as AWS services ignore them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireRecord {
    pub dimensions: Option<Vec<WireDimension>>,
    pub measure_name: Option<String>,
    pub measure_value: Option<String>,
    pub measure_value_type: Option<String>,
    pub time: Option<String>,
    pub time_unit: Option<String>,
    pub version: Option<i64>,
    pub measure_values: Option<Vec<WireMeasureValue>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireDimension {
    pub name: String,
    pub value: String,
    pub dimension_value_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireMeasureValue {
    pub name: String,
    pub value: String,
    #[serde(rename = "Type")]
    pub value_type: String,
}

/// A request refused whole (`ValidationException`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

/// The records of one call: those that converted and passed the quotas, each with its index in
/// the request, and those rejected by index.
#[derive(Debug, Default)]
pub struct Converted {
    pub records: Vec<(usize, Record)>,
    pub rejected: Vec<Rejection>,
}

/// Reads every record of a call, merged with `common`, at the validator's clock `now_ns`.
pub fn convert(common: Option<&WireRecord>, records: &[WireRecord], limits: &Limits, now_ns: i64) -> Result<Converted, RequestError> {
    if records.is_empty() || records.len() > RECORDS_PER_CALL_MAX {
        return Err(RequestError(format!("a WriteRecords call carries 1 to {RECORDS_PER_CALL_MAX} records, not {}", records.len())));
    }
    let empty = WireRecord::default();
    let common = common.unwrap_or(&empty);
    let mut converted = Converted::default();
    for (index, record) in records.iter().enumerate() {
        let record = to_record(common, record).map_err(|detail| RequestError(format!("record {index}: {detail}")))?;
        match validate_record(&record, limits, now_ns, index) {
            Ok(()) => converted.records.push((index, record)),
            Err(rejection) => converted.rejected.push(rejection),
        }
    }
    Ok(converted)
}

/// One record with the common attributes filled in (a record's own fields win, dimensions add up).
fn to_record(common: &WireRecord, record: &WireRecord) -> Result<Record, String> {
    let mut dimensions: Vec<Dimension> = Vec::new();
    for dimension in common.dimensions.iter().flatten().chain(record.dimensions.iter().flatten()) {
        if let Some(ty) = dimension.dimension_value_type.as_deref().filter(|ty| *ty != "VARCHAR") {
            return Err(format!("dimension {:?} has DimensionValueType {ty:?}; only VARCHAR exists", dimension.name));
        }
        if dimensions.iter().any(|d| d.name == dimension.name) {
            return Err(format!("dimension {:?} is given twice (in CommonAttributes and the record, or twice in one)", dimension.name));
        }
        dimensions.push(Dimension { name: dimension.name.clone(), value: dimension.value.clone() });
    }
    dimensions.sort();
    let pick = |own: &Option<String>, shared: &Option<String>| own.clone().or_else(|| shared.clone());
    let measure_name = pick(&record.measure_name, &common.measure_name).ok_or("MeasureName is missing")?;
    let time = pick(&record.time, &common.time).ok_or("Time is missing")?;
    let unit = pick(&record.time_unit, &common.time_unit).unwrap_or_else(|| "MILLISECONDS".into());
    let scale = unit_ns(&unit)?;
    let time_ns = parse_time(&time, scale).ok_or_else(|| format!("Time {time:?} is not a whole number of {unit} within the 64-bit nanosecond range"))?;
    let version = match record.version.or(common.version) {
        None => 1,
        Some(version) if version >= 1 => version as u64,
        Some(version) => return Err(format!("Version {version} must be 1 or greater")),
    };
    let type_name = pick(&record.measure_value_type, &common.measure_value_type).unwrap_or_else(|| "DOUBLE".into());
    let measure_type = MeasureType::parse(&type_name).filter(|_| type_name == type_name.to_ascii_uppercase()).ok_or_else(|| format!("MeasureValueType {type_name:?} is not one of DOUBLE, BIGINT, VARCHAR, BOOLEAN, TIMESTAMP, MULTI"))?;
    let single = record.measure_value.as_ref().or(common.measure_value.as_ref());
    let multi = record.measure_values.as_ref().or(common.measure_values.as_ref());
    let value = match (measure_type, single, multi) {
        (MeasureType::Multi, None, Some(values)) => {
            let mut named = Vec::with_capacity(values.len());
            for value in values {
                let ty = MeasureType::parse(&value.value_type).filter(|ty| *ty != MeasureType::Multi).ok_or_else(|| format!("measure {:?} has Type {:?}, not a scalar type", value.name, value.value_type))?;
                named.push((value.name.clone(), parse_scalar(ty, &value.value, scale).map_err(|e| format!("measure {:?}: {e}", value.name))?));
            }
            named.sort_by(|a, b| a.0.cmp(&b.0));
            MeasureValue::Multi(named)
        }
        (MeasureType::Multi, _, None) => return Err("a MULTI record needs MeasureValues".into()),
        (MeasureType::Multi, Some(_), Some(_)) => return Err("a MULTI record takes MeasureValues, not MeasureValue".into()),
        (_, _, Some(_)) => return Err(format!("MeasureValues are for MULTI records; this one is {type_name}")),
        (_, None, None) => return Err("MeasureValue is missing".into()),
        (ty, Some(text), None) => MeasureValue::Single(parse_scalar(ty, text, scale)?),
    };
    Ok(Record { dimensions, measure_name, value, time_ns, version })
}

/// Nanoseconds in one `TimeUnit`.
fn unit_ns(unit: &str) -> Result<i64, String> {
    match unit {
        "NANOSECONDS" => Ok(1),
        "MICROSECONDS" => Ok(1_000),
        "MILLISECONDS" => Ok(1_000_000),
        "SECONDS" => Ok(1_000_000_000),
        other => Err(format!("TimeUnit {other:?} is not one of MILLISECONDS, SECONDS, MICROSECONDS, NANOSECONDS")),
    }
}

fn parse_time(text: &str, scale_ns: i64) -> Option<i64> {
    text.trim().parse::<i64>().ok()?.checked_mul(scale_ns)
}

/// A measure value as its type reads it; TIMESTAMP values count in the record's `TimeUnit`.
fn parse_scalar(ty: MeasureType, text: &str, scale_ns: i64) -> Result<Scalar, String> {
    let bad = || format!("{text:?} is not a {ty} value");
    Ok(match ty {
        MeasureType::Double => Scalar::Double(text.trim().parse::<f64>().map_err(|_| bad())?),
        MeasureType::Bigint => Scalar::Bigint(text.trim().parse::<i64>().map_err(|_| bad())?),
        MeasureType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Scalar::Boolean(true),
            "false" => Scalar::Boolean(false),
            _ => return Err(bad()),
        },
        MeasureType::Varchar => Scalar::Varchar(text.to_string()),
        MeasureType::Timestamp => Scalar::Timestamp(parse_time(text, scale_ns).ok_or_else(bad)?),
        MeasureType::Multi => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::RejectReason;

    const NOW: i64 = 1_765_000_000_000_000_000;

    fn wire(json: serde_json::Value) -> WireRecord {
        serde_json::from_value(json).unwrap()
    }

    fn one(common: serde_json::Value, record: serde_json::Value) -> Result<Converted, RequestError> {
        convert(Some(&wire(common)), &[wire(record)], &Limits::default(), NOW)
    }

    fn ms(ns: i64) -> String {
        (ns / 1_000_000).to_string()
    }

    #[test]
    fn common_attributes_fill_each_record_and_dimensions_add_up() {
        let common = serde_json::json!({"Dimensions": [{"Name": "fleet", "Value": "north"}], "MeasureValueType": "DOUBLE", "Time": ms(NOW), "TimeUnit": "MILLISECONDS"});
        let converted = one(common, serde_json::json!({"Dimensions": [{"Name": "truck", "Value": "t1"}], "MeasureName": "speed", "MeasureValue": "12.5"})).unwrap();
        let (index, record) = &converted.records[0];
        assert_eq!(*index, 0);
        assert_eq!(record.dimensions.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["fleet", "truck"]);
        assert_eq!((record.time_ns, record.version, &record.value), (NOW, 1, &MeasureValue::Single(Scalar::Double(12.5))));
    }

    #[test]
    fn the_four_time_units_give_the_same_time() {
        let seconds = NOW / 1_000_000_000;
        for (unit, time) in [("SECONDS", seconds), ("MILLISECONDS", seconds * 1_000), ("MICROSECONDS", seconds * 1_000_000), ("NANOSECONDS", seconds * 1_000_000_000)] {
            let converted = one(serde_json::json!({}), serde_json::json!({"MeasureName": "m", "MeasureValue": "1", "Time": time.to_string(), "TimeUnit": unit})).unwrap();
            assert_eq!(converted.records[0].1.time_ns, seconds * 1_000_000_000, "{unit}");
        }
    }

    #[test]
    fn a_multi_record_has_typed_measures_sorted_by_name() {
        let record = serde_json::json!({"MeasureName": "readings", "MeasureValueType": "MULTI", "Time": ms(NOW), "MeasureValues": [
            {"Name": "speed", "Value": "1.5", "Type": "DOUBLE"},
            {"Name": "count", "Value": "7", "Type": "BIGINT"},
            {"Name": "on", "Value": "TRUE", "Type": "BOOLEAN"},
            {"Name": "seen", "Value": ms(NOW), "Type": "TIMESTAMP"},
        ]});
        let converted = one(serde_json::json!({}), record).unwrap();
        let expected = MeasureValue::Multi(vec![
            ("count".into(), Scalar::Bigint(7)),
            ("on".into(), Scalar::Boolean(true)),
            ("seen".into(), Scalar::Timestamp(NOW)),
            ("speed".into(), Scalar::Double(1.5)),
        ]);
        assert_eq!(converted.records[0].1.value, expected);
    }

    #[test]
    fn records_outside_the_api_shapes_refuse_the_call() {
        let t = ms(NOW);
        let cases = [
            (serde_json::json!({"Dimensions": [{"Name": "a", "Value": "1"}]}), serde_json::json!({"Dimensions": [{"Name": "a", "Value": "2"}], "MeasureName": "m", "MeasureValue": "1", "Time": t}), "given twice"),
            (serde_json::json!({}), serde_json::json!({"MeasureName": "m", "MeasureValue": "1"}), "Time is missing"),
            (serde_json::json!({}), serde_json::json!({"MeasureValue": "1", "Time": t}), "MeasureName is missing"),
            (serde_json::json!({}), serde_json::json!({"MeasureName": "m", "MeasureValue": "x", "Time": t}), "not a DOUBLE"),
            (serde_json::json!({}), serde_json::json!({"MeasureName": "m", "MeasureValue": "1", "Time": t, "Version": 0}), "Version 0"),
            (serde_json::json!({}), serde_json::json!({"MeasureName": "m", "MeasureValueType": "MULTI", "Time": t}), "needs MeasureValues"),
            (serde_json::json!({}), serde_json::json!({"MeasureName": "m", "MeasureValue": "1", "Time": t, "TimeUnit": "HOURS"}), "TimeUnit"),
            (serde_json::json!({}), serde_json::json!({"MeasureName": "m", "MeasureValue": "1", "Time": "99999999999999999"}), "64-bit"),
        ];
        for (common, record, says) in cases {
            let error = one(common, record.clone()).unwrap_err().0;
            assert!(error.starts_with("record 0: ") && error.contains(says), "{record}: {error}");
        }
        let none = convert(None, &[], &Limits::default(), NOW).unwrap_err().0;
        assert!(none.contains("1 to 100"), "{none}");
        let records: Vec<WireRecord> = (0..101).map(|_| WireRecord::default()).collect();
        assert!(convert(None, &records, &Limits::default(), NOW).is_err());
    }

    #[test]
    fn records_past_a_quota_are_rejected_alone_by_index() {
        let good = serde_json::json!({"MeasureName": "m", "MeasureValue": "1", "Time": ms(NOW)});
        let future = serde_json::json!({"MeasureName": "m", "MeasureValue": "1", "Time": ms(NOW + 16 * 60 * 1_000_000_000)});
        let long_name = serde_json::json!({"Dimensions": [{"Name": "d".repeat(61), "Value": "v"}], "MeasureName": "m", "MeasureValue": "1", "Time": ms(NOW)});
        let records: Vec<WireRecord> = [good.clone(), future, good, long_name].into_iter().map(wire).collect();
        let converted = convert(Some(&WireRecord::default()), &records, &Limits::default(), NOW).unwrap();
        assert_eq!(converted.records.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 2]);
        let rejected: Vec<(usize, RejectReason)> = converted.rejected.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(rejected, [(1, RejectReason::TimeTooFarInFuture), (3, RejectReason::DimensionNameTooLong)]);
    }
}
