//! The envelope: Lodestone's one wire format, in CBOR (agents) or JSON (simple devices, Kafka
//! producers). The serde structs here are private; callers see [`Envelope`] and [`Record`].

use serde::{Deserialize, Serialize};

use crate::loose::Loose;
use crate::record::{Dimension, MeasureType, MeasureValue, Record, Scalar};
use crate::validate::{validate_record, Limits, RejectReason, Rejection};

/// The envelope format version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// How an envelope is encoded. Travels as the MQTT v5 content-type property or the Kafka
/// `content-type` header; when absent it is sniffed (a JSON envelope starts with `{`, a CBOR one
/// with a map header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Cbor,
    Json,
}

impl ContentType {
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Cbor => "application/cbor",
            ContentType::Json => "application/json",
        }
    }

    pub fn from_mime(mime: &str) -> Option<ContentType> {
        match mime.split(';').next().unwrap_or("").trim() {
            "application/cbor" => Some(ContentType::Cbor),
            "application/json" => Some(ContentType::Json),
            _ => None,
        }
    }

    /// Guesses the encoding from the first non-blank byte.
    pub fn sniff(bytes: &[u8]) -> ContentType {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => ContentType::Json,
            _ => ContentType::Cbor,
        }
    }
}

/// Where an envelope comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub device_id: String,
    /// Changes each time the device restarts; with `device_id` and a sequence number it names one
    /// reading uniquely.
    pub boot_id: String,
}

/// A batch of records from one source for one table. Record `i` has sequence number
/// `first_seq + i`, whether it was accepted or rejected.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Envelope {
    /// Destination; MQTT carries it in the topic, Kafka producers put it here.
    pub database: Option<String>,
    pub table: Option<String>,
    pub source: Source,
    pub first_seq: u64,
    /// The oldest sequence number of this boot the device has not seen acknowledged and will
    /// send again until it is: every record of the boot before it is acknowledged, or was given
    /// up by the device and will never be sent. The bridge starts a device's run of sequence
    /// numbers here rather than at the first envelope it happens to receive, so an ack never
    /// covers records the broker lost before the bridge heard of the device. `None` from devices
    /// that do not track acks; then the first envelope received sets the start.
    pub unacked_from: Option<u64>,
    /// The records that decoded and validated, in order.
    pub records: Vec<Record>,
    /// The records that did not, by index.
    pub rejected: Vec<Rejection>,
    pub traceparent: Option<String>,
}

/// Why a whole payload could not be read as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed {encoding} envelope: {detail}")]
    Malformed { encoding: &'static str, detail: String },
    #[error("envelope version {0} is not supported (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u32),
}

impl DecodeError {
    pub fn reason(&self) -> RejectReason {
        match self {
            DecodeError::Malformed { .. } => RejectReason::MalformedPayload,
            DecodeError::UnsupportedVersion(_) => RejectReason::UnsupportedVersion,
        }
    }
}

impl Envelope {
    /// Sequence number of the last record, accepted or rejected (`first_seq - 1` when empty).
    /// [`Envelope::decode`] refuses an envelope whose numbers pass `u64::MAX`, so this does not
    /// overflow for a decoded one (and saturates for one built otherwise).
    pub fn last_seq(&self) -> u64 {
        let count = (self.records.len() + self.rejected.len()) as u64;
        self.first_seq.saturating_add(count).saturating_sub(1)
    }

    /// The index in the envelope as sent (so `first_seq + index` is its sequence number) of each
    /// of `records`, in order: the indexes `rejected` does not hold.
    pub fn record_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        let mut rejected: Vec<usize> = self.rejected.iter().map(|r| r.index).collect();
        rejected.sort_unstable();
        (0..self.records.len() + self.rejected.len()).filter(move |index| rejected.binary_search(index).is_err())
    }

    /// Decodes `bytes` (encoding from `content_type`, else sniffed), converts every record and
    /// validates it against `limits` at `now_ns`. Records that fail go to `rejected`; only a
    /// payload that is not an envelope at all is an error.
    pub fn decode(bytes: &[u8], content_type: Option<ContentType>, limits: &Limits, now_ns: i64) -> Result<Envelope, DecodeError> {
        let content_type = content_type.unwrap_or_else(|| ContentType::sniff(bytes));
        let wire = WireEnvelope::read(bytes, content_type)?;
        if wire.v != ENVELOPE_VERSION {
            return Err(DecodeError::UnsupportedVersion(wire.v));
        }
        // Every record's sequence number, first_seq + index, must be a u64.
        if wire.first_seq.checked_add(wire.records.len() as u64).is_none() {
            let encoding = if content_type == ContentType::Cbor { "CBOR" } else { "JSON" };
            return Err(DecodeError::Malformed { encoding, detail: format!("first_seq {} plus {} records does not fit in 64 bits", wire.first_seq, wire.records.len()) });
        }
        let mut envelope = Envelope {
            database: wire.database,
            table: wire.table,
            source: Source { device_id: wire.source.device_id, boot_id: wire.source.boot_id },
            first_seq: wire.first_seq,
            unacked_from: wire.unacked_from,
            records: Vec::with_capacity(wire.records.len()),
            rejected: Vec::new(),
            traceparent: wire.traceparent,
        };
        for (index, entry) in wire.records.into_iter().enumerate() {
            let wire_record = match entry {
                WireEntry::Record(record) => Ok(record),
                WireEntry::Unreadable(detail) => Err(Rejection::new(index, RejectReason::InvalidValue, detail)),
            };
            let checked = wire_record
                .and_then(|record| record.into_record(index))
                .and_then(|record| validate_record(&record, limits, now_ns, index).map(|()| record));
            match checked {
                Ok(record) => envelope.records.push(record),
                Err(rejection) => envelope.rejected.push(rejection),
            }
        }
        Ok(envelope)
    }

    /// Encodes the accepted records as CBOR. Rejections are not encoded.
    pub fn to_cbor(&self) -> Vec<u8> {
        self.to_wire().write(ContentType::Cbor, 64 + self.records.len() * 64)
    }

    /// Encodes the accepted records as JSON. Rejections are not encoded.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_wire().write(ContentType::Json, 64 + self.records.len() * 64)
    }

    /// Sets `unacked_from` in an encoded envelope (`bytes`, in `format`) and encodes it again,
    /// leaving everything else as it was: a device resending an envelope it encoded earlier
    /// states what it holds now, not what it held then.
    pub fn restamp_unacked_from(bytes: &[u8], format: ContentType, unacked_from: u64) -> Result<Vec<u8>, DecodeError> {
        let mut wire = WireEnvelope::read(bytes, format)?;
        wire.unacked_from = Some(unacked_from);
        Ok(wire.write(format, bytes.len() + 9))
    }

    fn to_wire(&self) -> WireEnvelope {
        WireEnvelope {
            v: ENVELOPE_VERSION,
            database: self.database.clone(),
            table: self.table.clone(),
            source: WireSource { device_id: self.source.device_id.clone(), boot_id: self.source.boot_id.clone() },
            first_seq: self.first_seq,
            unacked_from: self.unacked_from,
            records: self.records.iter().map(|record| WireEntry::Record(WireRecord::from_record(record))).collect(),
            traceparent: self.traceparent.clone(),
        }
    }
}

/// Renders one record as the JSON object of the wire format (used for dead-letter entries).
pub fn record_to_json(record: &Record) -> serde_json::Value {
    serde_json::to_value(WireRecord::from_record(record)).expect("JSON encoding of a record cannot fail")
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    source: WireSource,
    #[serde(default)]
    first_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unacked_from: Option<u64>,
    records: Vec<WireEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

impl WireEnvelope {
    fn read(bytes: &[u8], format: ContentType) -> Result<WireEnvelope, DecodeError> {
        match format {
            ContentType::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed { encoding: "JSON", detail: e.to_string() }),
            ContentType::Cbor => ciborium::from_reader(bytes).map_err(|e| DecodeError::Malformed { encoding: "CBOR", detail: e.to_string() }),
        }
    }

    /// The encoding in `format`; `capacity` is a guess of its length.
    fn write(&self, format: ContentType, capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity);
        match format {
            ContentType::Json => serde_json::to_writer(&mut out, self).expect("JSON encoding of an envelope cannot fail"),
            ContentType::Cbor => ciborium::into_writer(self, &mut out).expect("CBOR encoding into a Vec cannot fail"),
        }
        out
    }
}

#[derive(Serialize, Deserialize)]
struct WireSource {
    device_id: String,
    #[serde(default)]
    boot_id: String,
}

/// One entry of an envelope's `records`: a record whose fields all have the right shape, or why
/// it has not. Read by hand through [`Loose`] so that one bad record is rejected alone.
enum WireEntry {
    Record(WireRecord),
    Unreadable(String),
}

impl Serialize for WireEntry {
    /// An unreadable entry is written as `null`, which reads back as unreadable at the same index
    /// (only [`Envelope::restamp_unacked_from`] writes an envelope it did not build).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WireEntry::Record(record) => record.serialize(serializer),
            WireEntry::Unreadable(_) => serializer.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for WireEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<WireEntry, D::Error> {
        let entry = match Loose::deserialize(deserializer)? {
            Loose::Map(fields) => WireRecord::from_fields(fields),
            other => Err(format!("a record must be a map, not {}", other.kind())),
        };
        Ok(entry.map_or_else(WireEntry::Unreadable, WireEntry::Record))
    }
}

/// A record as the wire carries it, each field of the right shape. Dimensions and multi-measure
/// values keep the order and duplicates they came with; [`validate_record`] refuses duplicates.
#[derive(Serialize)]
struct WireRecord {
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    dimensions: Vec<(String, String)>,
    measure_name: String,
    /// A single measure; exactly one of `value` and `values` is present.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<WireValue>,
    /// A multi-measure record: name → value.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_optional_map")]
    values: Option<Vec<(String, WireValue)>>,
    time: i64,
    /// Unit of `time`: `ns` (default), `us`, `ms` or `s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    time_unit: Option<String>,
    version: u64,
}

fn as_map<S: serde::Serializer, V: Serialize>(pairs: &[(String, V)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

fn as_optional_map<S: serde::Serializer, V: Serialize>(pairs: &Option<Vec<(String, V)>>, serializer: S) -> Result<S::Ok, S::Error> {
    as_map(pairs.as_deref().unwrap_or_default(), serializer)
}

/// A bare value (type inferred: float → DOUBLE, integer → BIGINT, string → VARCHAR, bool →
/// BOOLEAN) or an explicitly typed one: `{"type": "TIMESTAMP", "value": 1700000000000000000}`.
#[derive(Serialize)]
#[serde(untagged)]
enum WireValue {
    Typed {
        #[serde(rename = "type")]
        ty: String,
        value: PlainValue,
    },
    Plain(PlainValue),
}

#[derive(Serialize)]
#[serde(untagged)]
enum PlainValue {
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

impl PlainValue {
    /// A bare value; an integer beyond `i64` becomes the nearest double.
    fn from_loose(loose: Loose) -> Result<PlainValue, String> {
        match loose {
            Loose::Bool(v) => Ok(PlainValue::Boolean(v)),
            Loose::Int(v) => Ok(i64::try_from(v).map_or(PlainValue::Float(v as f64), PlainValue::Integer)),
            Loose::Float(v) => Ok(PlainValue::Float(v)),
            Loose::Text(v) => Ok(PlainValue::Text(v)),
            other => Err(format!("a value must be a number, string or boolean, not {}", other.kind())),
        }
    }
}

impl WireValue {
    /// A bare value, or a `{"type", "value"}` map (other keys of the map are ignored).
    fn from_loose(loose: Loose) -> Result<WireValue, String> {
        if !matches!(loose, Loose::Map(_)) {
            return PlainValue::from_loose(loose).map(WireValue::Plain);
        }
        let (mut ty, mut value) = (None, None);
        for (key, field) in loose.into_text_keyed("a typed value")? {
            let slot = match key.as_str() {
                "type" => &mut ty,
                "value" => &mut value,
                _ => continue,
            };
            if slot.replace(field).is_some() {
                return Err(format!("a typed value gives `{key}` twice"));
            }
        }
        let ty = ty.ok_or("a typed value needs `type`")?.into_text("`type`")?;
        let value = PlainValue::from_loose(value.ok_or("a typed value needs `value`")?)?;
        Ok(WireValue::Typed { ty, value })
    }
}

impl WireRecord {
    fn from_record(record: &Record) -> WireRecord {
        let (value, values) = match &record.value {
            MeasureValue::Single(scalar) => (Some(WireValue::from_scalar(scalar)), None),
            MeasureValue::Multi(list) => {
                (None, Some(list.iter().map(|(name, v)| (name.clone(), WireValue::from_scalar(v))).collect()))
            }
        };
        WireRecord {
            dimensions: record.dimensions.iter().map(|d| (d.name.clone(), d.value.clone())).collect(),
            measure_name: record.measure_name.clone(),
            value,
            values,
            time: record.time_ns,
            time_unit: None,
            version: record.version,
        }
    }

    /// Checks the shape of each field of one record map; unknown fields are ignored, a field
    /// given twice is an error.
    fn from_fields(fields: Vec<(Loose, Loose)>) -> Result<WireRecord, String> {
        let (mut dimensions, mut measure_name, mut value, mut values, mut time, mut time_unit, mut version) =
            (None, None, None, None, None, None, None);
        for (key, field) in fields {
            let Loose::Text(key) = key else { continue };
            let slot = match key.as_str() {
                "dimensions" => &mut dimensions,
                "measure_name" => &mut measure_name,
                "value" => &mut value,
                "values" => &mut values,
                "time" => &mut time,
                "time_unit" => &mut time_unit,
                "version" => &mut version,
                _ => continue,
            };
            if slot.replace(field).is_some() {
                return Err(format!("field `{key}` given twice"));
            }
        }
        let dimensions = match dimensions {
            None => Vec::new(),
            Some(map) => map
                .into_text_keyed("`dimensions`")?
                .into_iter()
                .map(|(name, value)| {
                    let value = value.into_text(&format!("dimension {name:?}"))?;
                    Ok((name, value))
                })
                .collect::<Result<_, String>>()?,
        };
        let values = match values {
            None => None,
            Some(map) => Some(
                map.into_text_keyed("`values`")?
                    .into_iter()
                    .map(|(name, v)| WireValue::from_loose(v).map(|v| (name.clone(), v)).map_err(|e| format!("measure {name:?}: {e}")))
                    .collect::<Result<_, String>>()?,
            ),
        };
        let time = match time.ok_or("a record needs `time`")? {
            Loose::Int(t) => i64::try_from(t).map_err(|_| format!("time {t} does not fit in 64 bits"))?,
            other => return Err(format!("`time` must be an integer, not {}", other.kind())),
        };
        let version = match version {
            None => 1,
            Some(Loose::Int(v)) => u64::try_from(v).map_err(|_| format!("version {v} is not a number from 1 to 2^64-1"))?,
            Some(other) => return Err(format!("`version` must be an integer, not {}", other.kind())),
        };
        Ok(WireRecord {
            dimensions,
            measure_name: measure_name.ok_or("a record needs `measure_name`")?.into_text("`measure_name`")?,
            value: value.map(WireValue::from_loose).transpose()?,
            values,
            time,
            time_unit: time_unit.map(|unit| unit.into_text("`time_unit`")).transpose()?,
            version,
        })
    }

    fn into_record(self, index: usize) -> Result<Record, Rejection> {
        let invalid = |detail: String| Rejection::new(index, RejectReason::InvalidValue, detail);
        let value = match (self.value, self.values) {
            (Some(value), None) => MeasureValue::Single(value.into_scalar().map_err(invalid)?),
            (None, Some(values)) => {
                let mut list = values
                    .into_iter()
                    .map(|(name, v)| v.into_scalar().map(|s| (name.clone(), s)).map_err(|e| format!("measure {name:?}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(invalid)?;
                list.sort_by(|a, b| a.0.cmp(&b.0));
                MeasureValue::Multi(list)
            }
            _ => return Err(invalid("a record needs exactly one of `value` and `values`".into())),
        };
        let scale = match self.time_unit.as_deref().unwrap_or("ns") {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            other => return Err(invalid(format!("time_unit {other:?} is not one of ns, us, ms, s"))),
        };
        let time_ns = self.time.checked_mul(scale).ok_or_else(|| invalid(format!("time {} overflows nanoseconds", self.time)))?;
        let mut dimensions: Vec<Dimension> = self.dimensions.into_iter().map(|(name, value)| Dimension { name, value }).collect();
        dimensions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Record { dimensions, measure_name: self.measure_name, value, time_ns, version: self.version })
    }
}

impl WireValue {
    fn from_scalar(scalar: &Scalar) -> WireValue {
        match scalar {
            Scalar::Double(v) => WireValue::Plain(PlainValue::Float(*v)),
            Scalar::Bigint(v) => WireValue::Plain(PlainValue::Integer(*v)),
            Scalar::Varchar(v) => WireValue::Plain(PlainValue::Text(v.clone())),
            Scalar::Boolean(v) => WireValue::Plain(PlainValue::Boolean(*v)),
            Scalar::Timestamp(v) => WireValue::Typed { ty: "TIMESTAMP".into(), value: PlainValue::Integer(*v) },
        }
    }

    fn into_scalar(self) -> Result<Scalar, String> {
        let (ty, value) = match self {
            WireValue::Plain(PlainValue::Boolean(v)) => return Ok(Scalar::Boolean(v)),
            WireValue::Plain(PlainValue::Integer(v)) => return Ok(Scalar::Bigint(v)),
            WireValue::Plain(PlainValue::Float(v)) => return Ok(Scalar::Double(v)),
            WireValue::Plain(PlainValue::Text(v)) => return Ok(Scalar::Varchar(v)),
            WireValue::Typed { ty, value } => (ty, value),
        };
        let ty = MeasureType::parse(&ty).ok_or_else(|| format!("unknown type {ty:?}"))?;
        let mismatch = || format!("value does not fit type {ty}");
        let scalar = match (ty, value) {
            (MeasureType::Double, PlainValue::Float(v)) => Scalar::Double(v),
            (MeasureType::Double, PlainValue::Integer(v)) => Scalar::Double(v as f64),
            (MeasureType::Double, PlainValue::Text(v)) => Scalar::Double(v.trim().parse().map_err(|_| mismatch())?),
            (MeasureType::Bigint, PlainValue::Integer(v)) => Scalar::Bigint(v),
            (MeasureType::Bigint, PlainValue::Text(v)) => Scalar::Bigint(v.trim().parse().map_err(|_| mismatch())?),
            (MeasureType::Varchar, PlainValue::Text(v)) => Scalar::Varchar(v),
            (MeasureType::Boolean, PlainValue::Boolean(v)) => Scalar::Boolean(v),
            (MeasureType::Boolean, PlainValue::Text(v)) => Scalar::Boolean(v.trim().parse().map_err(|_| mismatch())?),
            (MeasureType::Timestamp, PlainValue::Integer(v)) => Scalar::Timestamp(v),
            _ => return Err(mismatch()),
        };
        Ok(scalar)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepted_records_keep_their_index_as_sent() {
        let records = (0..4).map(|i| serde_json::json!({"measure_name": "m", "value": 1.0, "time": NOW + i, "time_unit": "ns"}));
        let mut records: Vec<serde_json::Value> = records.collect();
        records[1]["time"] = serde_json::json!("not a time");
        let payload = serde_json::json!({"v": 1, "database": "d", "table": "t", "source": {"device_id": "dev"}, "first_seq": 10, "records": records});
        let envelope = Envelope::decode(payload.to_string().as_bytes(), None, &Limits::default(), NOW).unwrap();
        assert_eq!(envelope.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
        assert_eq!(envelope.record_indexes().collect::<Vec<_>>(), [0, 2, 3]);
    }

    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn sample() -> Envelope {
        let record = |value| Record {
            dimensions: vec![Dimension { name: "truck".into(), value: "t1".into() }],
            measure_name: "m".into(),
            value,
            time_ns: NOW,
            version: 1,
        };
        Envelope {
            database: Some("fleet".into()),
            table: Some("trucks".into()),
            source: Source { device_id: "dev-1".into(), boot_id: "boot".into() },
            first_seq: 7,
            unacked_from: Some(3),
            records: vec![
                record(MeasureValue::Single(Scalar::Double(21.0))),
                record(MeasureValue::Single(Scalar::Bigint(-3))),
                record(MeasureValue::Single(Scalar::Varchar("ok".into()))),
                record(MeasureValue::Single(Scalar::Boolean(true))),
                record(MeasureValue::Single(Scalar::Timestamp(NOW - 1))),
                record(MeasureValue::Multi(vec![("a".into(), Scalar::Double(0.5)), ("b".into(), Scalar::Bigint(9))])),
            ],
            rejected: vec![],
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
    }

    #[test]
    fn round_trips_in_cbor_and_json() {
        let envelope = sample();
        for bytes in [envelope.to_cbor(), envelope.to_json()] {
            let decoded = Envelope::decode(&bytes, None, &Limits::default(), NOW).unwrap();
            assert_eq!(decoded, envelope);
            assert_eq!(decoded.last_seq(), 12);
        }
    }

    #[test]
    fn restamping_changes_only_unacked_from() {
        let mut envelope = sample();
        for format in [ContentType::Cbor, ContentType::Json] {
            let bytes = match format {
                ContentType::Cbor => envelope.to_cbor(),
                ContentType::Json => envelope.to_json(),
            };
            let restamped = Envelope::restamp_unacked_from(&bytes, format, 5).unwrap();
            let decoded = Envelope::decode(&restamped, Some(format), &Limits::default(), NOW).unwrap();
            assert_eq!(decoded, Envelope { unacked_from: Some(5), ..envelope.clone() });
        }
        // Absent on the wire when unknown, and read back as unknown.
        envelope.unacked_from = None;
        let json = envelope.to_json();
        assert!(!String::from_utf8_lossy(&json).contains("unacked_from"));
        assert_eq!(Envelope::decode(&json, None, &Limits::default(), NOW).unwrap().unacked_from, None);
    }

    /// Regression: doubles sent in a JSON envelope were stored one unit in the last place off
    /// (serde_json parsed them to the nearest double only with `float_roundtrip`).
    #[test]
    fn doubles_in_json_are_read_exactly_as_written() {
        let written = ["-95.24089298036279", "0.1", "2.2250738585072014e-308", "1.7976931348623157e308", "62.18930203618957", "-0.000123456789012345"];
        for text in written {
            let json = format!(r#"{{"v":1,"source":{{"device_id":"d"}},"records":[{{"measure_name":"m","value":{text},"time":1}}]}}"#);
            let envelope = Envelope::decode(json.as_bytes(), None, &Limits::default(), NOW).unwrap();
            let MeasureValue::Single(Scalar::Double(stored)) = envelope.records[0].value else { panic!("a double") };
            assert_eq!(stored.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{text} stored as {stored:?}");
        }
    }

    /// Regression: `first_seq` near `u64::MAX` made `first_seq + index` overflow in the bridge's
    /// and the worker's dead-letter and ack code (one publish stopped the bridge).
    #[test]
    fn first_seq_near_u64_max_is_malformed_not_an_overflow() {
        let at = |first_seq: u64| format!(r#"{{"v":1,"source":{{"device_id":"d"}},"first_seq":{first_seq},"records":[
            {{"measure_name":"a","value":1.5,"time":1}},{{"measure_name":"b","value":2.5,"time":1}}]}}"#);
        let error = Envelope::decode(at(u64::MAX).as_bytes(), None, &Limits::default(), NOW).unwrap_err();
        assert_eq!(error.reason(), RejectReason::MalformedPayload, "{error}");
        let error = Envelope::decode(at(u64::MAX - 1).as_bytes(), None, &Limits::default(), NOW).unwrap_err();
        assert_eq!(error.reason(), RejectReason::MalformedPayload, "{error}");
        // The last two numbers below 2^64 fit: seq u64::MAX - 2 and u64::MAX - 1.
        let envelope = Envelope::decode(at(u64::MAX - 2).as_bytes(), None, &Limits::default(), NOW).unwrap();
        assert_eq!(envelope.last_seq(), u64::MAX - 1);
    }

    fn decode_json(text: &str) -> Envelope {
        Envelope::decode(text.as_bytes(), None, &Limits::default(), NOW).unwrap()
    }

    fn rejected(envelope: &Envelope) -> Vec<(usize, RejectReason)> {
        envelope.rejected.iter().map(|r| (r.index, r.reason)).collect()
    }

    /// Regression: one record with a string `time` or a `null` dimension value made the whole
    /// envelope malformed; it was dead-lettered, never acked, resent forever, and its valid
    /// sibling records never stored.
    #[test]
    fn a_record_of_the_wrong_shape_is_rejected_alone() {
        let records = [
            r#"{"measure_name":"ok","value":1.5,"time":1}"#,
            r#"{"measure_name":"m","value":1.5,"time":"2024-01-01T00:00:00Z"}"#,
            r#"{"dimensions":{"room":null},"measure_name":"m","value":1.5,"time":1}"#,
            r#"{"dimensions":{"room":7},"measure_name":"m","value":1.5,"time":1}"#,
            r#"{"dimensions":["room"],"measure_name":"m","value":1.5,"time":1}"#,
            r#"{"measure_name":null,"value":1.5,"time":1}"#,
            r#"{"measure_name":"m","value":null,"time":1}"#,
            r#"{"measure_name":"m","value":[1,2],"time":1}"#,
            r#"{"measure_name":"m","values":{"a":{"x":1}},"time":1}"#,
            r#"{"measure_name":"m","value":1,"time":1.5}"#,
            r#"{"measure_name":"m","value":1,"time":9223372036854775808}"#,
            r#"{"measure_name":"m","value":1,"time":1,"version":-1}"#,
            r#"{"measure_name":"m","value":1,"time":1,"time_unit":5}"#,
            r#"{"measure_name":"m","value":1}"#,
            r#""not a record""#,
            r#"[1,2,3]"#,
            r#"{"measure_name":"also_ok","values":{"b":true,"a":2},"time":1,"unknown":{"deep":[1]}}"#,
        ];
        let envelope = decode_json(&format!(r#"{{"v":1,"source":{{"device_id":"d"}},"first_seq":10,"records":[{}]}}"#, records.join(",")));
        let stored: Vec<_> = envelope.records.iter().map(|r| r.measure_name.as_str()).collect();
        assert_eq!(stored, ["ok", "also_ok"]);
        assert_eq!(envelope.records[1].value, MeasureValue::Multi(vec![("a".into(), Scalar::Bigint(2)), ("b".into(), Scalar::Boolean(true))]));
        let expected: Vec<_> = (1..records.len() - 1).map(|i| (i, RejectReason::InvalidValue)).collect();
        assert_eq!(rejected(&envelope), expected);
        assert_eq!(envelope.last_seq(), 10 + records.len() as u64 - 1, "every record keeps its sequence number");
        assert!(envelope.rejected[0].detail.contains("`time` must be an integer, not a string"), "{}", envelope.rejected[0].detail);
        assert!(envelope.rejected[1].detail.contains("dimension \"room\" must be a string, not null"), "{}", envelope.rejected[1].detail);
    }

    /// Regression: duplicate JSON and CBOR keys were read last-wins, so `duplicate_dimension`
    /// and `duplicate_measure` could never fire.
    #[test]
    fn duplicate_keys_are_refused_not_read_last_wins() {
        let envelope = decode_json(
            r#"{"v":1,"source":{"device_id":"d"},"records":[
                {"dimensions":{"room":"a","room":"b"},"measure_name":"m","value":1,"time":1},
                {"measure_name":"m","values":{"a":1,"a":2},"time":1},
                {"measure_name":"m","value":1,"value":2,"time":1},
                {"measure_name":"m","value":{"type":"BIGINT","value":1,"value":2},"time":1},
                {"dimensions":{"room":"a"},"measure_name":"m","value":1,"time":1}
            ]}"#,
        );
        let expected = [(0, RejectReason::DuplicateDimension), (1, RejectReason::DuplicateMeasure), (2, RejectReason::InvalidValue), (3, RejectReason::InvalidValue)];
        assert_eq!(rejected(&envelope), expected);
        assert_eq!(envelope.records.len(), 1);
        // The same in CBOR: a map with the key "room" twice (written by hand: no encoder emits it).
        let mut cbor = Vec::new();
        let dims = ciborium::Value::Map(vec![("room".into(), "a".into()), ("room".into(), "b".into())]);
        let record = ciborium::Value::Map(vec![
            ("dimensions".into(), dims),
            ("measure_name".into(), "m".into()),
            ("value".into(), 1.into()),
            ("time".into(), 1.into()),
        ]);
        let envelope = ciborium::Value::Map(vec![
            ("v".into(), 1.into()),
            ("source".into(), ciborium::Value::Map(vec![("device_id".into(), "d".into())])),
            ("records".into(), ciborium::Value::Array(vec![record])),
        ]);
        ciborium::into_writer(&envelope, &mut cbor).unwrap();
        let decoded = Envelope::decode(&cbor, None, &Limits::default(), NOW).unwrap();
        assert_eq!(rejected(&decoded), [(0, RejectReason::DuplicateDimension)]);
    }

    /// NaN and ±Infinity arrive as CBOR floats or as typed strings; both are refused with
    /// `non_finite_double` (JSON has no literal for them).
    #[test]
    fn non_finite_doubles_in_envelopes_are_refused() {
        let envelope = decode_json(
            r#"{"v":1,"source":{"device_id":"d"},"records":[
                {"measure_name":"m","value":{"type":"DOUBLE","value":"NaN"},"time":1},
                {"measure_name":"m","value":{"type":"DOUBLE","value":"-inf"},"time":1},
                {"measure_name":"m","value":{"type":"DOUBLE","value":"1e999"},"time":1}
            ]}"#,
        );
        let expected: Vec<_> = (0..3).map(|i| (i, RejectReason::NonFiniteDouble)).collect();
        assert_eq!(rejected(&envelope), expected);
        let mut with_nan = sample();
        with_nan.records.truncate(1);
        with_nan.records[0].value = MeasureValue::Single(Scalar::Double(f64::NAN));
        let decoded = Envelope::decode(&with_nan.to_cbor(), None, &Limits::default(), NOW).unwrap();
        assert_eq!(rejected(&decoded), [(0, RejectReason::NonFiniteDouble)]);
    }

    #[test]
    fn json_from_a_simple_device() {
        let json = br#"{"v":1,"source":{"device_id":"d"},"records":[
            {"dimensions":{"room":"a"},"measure_name":"temp","value":21.5,"time":1700000000000,"time_unit":"ms"},
            {"measure_name":"n","value":{"type":"DOUBLE","value":3},"time":1},
            {"measure_name":"bad","value":{"type":"BIGINT","value":"x"},"time":1},
            {"measure_name":"both","time":1}
        ]}"#;
        let envelope = Envelope::decode(json, None, &Limits::default(), NOW).unwrap();
        assert_eq!(envelope.records.len(), 2);
        assert_eq!(envelope.records[0].time_ns, NOW);
        assert_eq!(envelope.records[1].value, MeasureValue::Single(Scalar::Double(3.0)));
        let reasons: Vec<_> = envelope.rejected.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(reasons, vec![(2, RejectReason::InvalidValue), (3, RejectReason::InvalidValue)]);
        assert_eq!(envelope.last_seq(), 3);
    }

    #[test]
    fn values_of_every_shape() {
        // The record's value, or None when the envelope fails or rejects the record.
        let value = |json: &str| {
            let text = format!(r#"{{"v":1,"source":{{"device_id":"d"}},"records":[{{"measure_name":"m","value":{json},"time":1}}]}}"#);
            let envelope = Envelope::decode(text.as_bytes(), None, &Limits::default(), NOW).ok()?;
            envelope.records.first().map(|r| r.value.clone())
        };
        let single = |scalar| Some(MeasureValue::Single(scalar));
        assert_eq!(value("85.25"), single(Scalar::Double(85.25)));
        assert_eq!(value("-3"), single(Scalar::Bigint(-3)));
        assert_eq!(value("18446744073709551615"), single(Scalar::Double(18446744073709551615.0)), "beyond i64: a double");
        assert_eq!(value("true"), single(Scalar::Boolean(true)));
        assert_eq!(value(r#""ok""#), single(Scalar::Varchar("ok".into())));
        assert_eq!(value(r#"{"value":5,"type":"TIMESTAMP","note":"ignored"}"#), single(Scalar::Timestamp(5)));
        for bad in [r#"{"type":"DOUBLE"}"#, r#"{"value":1}"#, r#"{"type":"DOUBLE","value":{"type":"DOUBLE","value":1}}"#, "[1]", "null"] {
            assert_eq!(value(bad), None, "{bad}");
        }
    }

    #[test]
    fn payloads_that_are_not_envelopes() {
        let check = |bytes: &[u8], reason| {
            let err = Envelope::decode(bytes, None, &Limits::default(), NOW).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
        };
        check(b"{not json", RejectReason::MalformedPayload);
        check(b"\xff\x00garbage", RejectReason::MalformedPayload);
        check(br#"{"v":2,"source":{"device_id":"d"},"records":[]}"#, RejectReason::UnsupportedVersion);
        check(br#"{"v":1,"records":[]}"#, RejectReason::MalformedPayload);
    }
}
