//! How readings enter: decoding a write request's body (JSON records or line protocol) and the
//! [`Intake`] that validates readings and stores them through the outbox writer, all or nothing.
//!
//! The decoding functions are pure; [`IntakeError`] carries the stable code and the HTTP status
//! of every way a write can be refused.

use std::sync::Arc;

use axum::http::StatusCode;
use lodestone_model::{validate_record, ContentType, Envelope, Limits, Record, RejectReason, Rejection};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::line_protocol::{self, LineProtocolError, Precision};
use crate::outbox::{Destination, OutboxError, SeqRange};
use crate::telemetry::Telemetry;
use crate::writer::OutboxWriter;

/// The code of a write refused because the outbox is at `outbox.bytes_max`.
pub const OUTBOX_FULL: &str = "outbox_full";

/// Why a write was refused. Nothing of a refused write is stored.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    LineProtocol(#[from] LineProtocolError),
    #[error("unsupported content type {0:?}: send application/json or text/plain (line protocol)")]
    UnsupportedContentType(String),
    #[error("{0}")]
    InvalidDestination(String),
    #[error("precision {0:?} is not one of ns, us, ms, s")]
    InvalidPrecision(String),
    #[error("the body is larger than {bytes_max} bytes")]
    PayloadTooLarge { bytes_max: usize },
    #[error("{count} records in one write, at most {max}")]
    TooManyRecords { count: usize, max: usize },
    /// Some records are invalid; `total` records were in the write.
    #[error("{} of {total} records are invalid; nothing was stored", rejections.len())]
    Invalid { total: usize, rejections: Vec<Rejection> },
    #[error("{0}; retry after the bridge has acknowledged older readings")]
    OutboxFull(OutboxError),
    /// A write the outbox could not hold even empty ([`OutboxError::TooLarge`]).
    #[error("{0}")]
    LargerThanOutbox(OutboxError),
    #[error("the agent is shutting down")]
    Unavailable,
    /// The caller's token may not write into the destination's database.
    #[error(transparent)]
    Forbidden(lodestone_kit::auth::AuthError),
    #[error("{0}")]
    Storage(OutboxError),
}

impl IntakeError {
    /// The stable code: a [`RejectReason`] name, or `outbox_full`, `unavailable`,
    /// `storage_error`, `forbidden`.
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::Malformed(_) | IntakeError::LineProtocol(_) | IntakeError::UnsupportedContentType(_) => {
                RejectReason::MalformedPayload.as_str()
            }
            IntakeError::InvalidDestination(_) => RejectReason::InvalidDestination.as_str(),
            IntakeError::InvalidPrecision(_) => RejectReason::InvalidValue.as_str(),
            IntakeError::PayloadTooLarge { .. } | IntakeError::LargerThanOutbox(_) => RejectReason::PayloadTooLarge.as_str(),
            IntakeError::TooManyRecords { .. } => RejectReason::TooManyRecords.as_str(),
            IntakeError::Invalid { rejections, .. } => rejections.first().map_or(RejectReason::InvalidValue, |r| r.reason).as_str(),
            IntakeError::OutboxFull(_) => OUTBOX_FULL,
            IntakeError::Unavailable => "unavailable",
            IntakeError::Storage(_) => "storage_error",
            IntakeError::Forbidden(error) => error.code(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            IntakeError::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IntakeError::PayloadTooLarge { .. } | IntakeError::TooManyRecords { .. } | IntakeError::LargerThanOutbox(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::OutboxFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            IntakeError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            IntakeError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IntakeError::Forbidden(error) => error.status(),
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Records this refusal counts for in `rejected` (a payload that could not be read: one).
    pub fn records(&self, submitted: usize) -> usize {
        match self {
            IntakeError::Invalid { total, .. } => *total,
            IntakeError::TooManyRecords { count, .. } => *count,
            _ => submitted.max(1),
        }
    }

    /// The JSON error body: `{"error":{"code","message","rejected":[{"index","reason","detail"}]}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let rejected: Vec<serde_json::Value> = match self {
            IntakeError::Invalid { rejections, .. } => rejections
                .iter()
                .map(|r| serde_json::json!({"index": r.index, "reason": r.reason.as_str(), "detail": r.detail}))
                .collect(),
            _ => Vec::new(),
        };
        serde_json::json!({"error": {"code": self.code(), "message": self.to_string(), "rejected": rejected}})
    }
}

/// How a write's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON array of wire-format records, or `{"records": [...]}`.
    Json,
    LineProtocol,
}

impl BodyFormat {
    /// From the Content-Type; without a telling one (none, form-encoded, octet-stream) the body
    /// is sniffed: `[` or `{` first means JSON, anything else line protocol.
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> Result<BodyFormat, IntakeError> {
        let mime = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        match mime.as_deref() {
            Some("application/json") => Ok(BodyFormat::Json),
            Some("text/plain") => Ok(BodyFormat::LineProtocol),
            None | Some("") | Some("application/x-www-form-urlencoded") | Some("application/octet-stream") => {
                match body.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'[' | b'{') => Ok(BodyFormat::Json),
                    _ => Ok(BodyFormat::LineProtocol),
                }
            }
            Some(_) => Err(IntakeError::UnsupportedContentType(content_type.unwrap_or_default().to_string())),
        }
    }
}

/// Decodes a write's body into records. JSON records are also validated here (the model's
/// decoder does both); line-protocol records are validated by [`Intake::submit`]. Lines without
/// a timestamp get `now_ns`.
pub fn decode_body(
    format: BodyFormat,
    body: &[u8],
    precision: Precision,
    device_id: &str,
    limits: &Limits,
    records_max: usize,
    now_ns: i64,
) -> Result<Vec<Record>, IntakeError> {
    // Counted before anything is decoded: a 16 MiB body of millions of short lines would
    // otherwise become millions of records in memory before the bound refused it.
    let too_many = |count: usize| if count > records_max { Err(IntakeError::TooManyRecords { count, max: records_max }) } else { Ok(()) };
    match format {
        BodyFormat::LineProtocol => {
            too_many(line_protocol::line_count(body))?;
            Ok(line_protocol::parse(body, precision, now_ns)?)
        }
        BodyFormat::Json => {
            let wrapped = wrap_json_records(body, device_id, records_max)?;
            let envelope = Envelope::decode(&wrapped, Some(ContentType::Json), limits, now_ns)
                .map_err(|e| IntakeError::Malformed(e.to_string()))?;
            if !envelope.rejected.is_empty() {
                let total = envelope.records.len() + envelope.rejected.len();
                return Err(IntakeError::Invalid { total, rejections: envelope.rejected });
            }
            Ok(envelope.records)
        }
    }
}

/// Wraps the records of a JSON body into an envelope `{"v":1,"source":{"device_id":…},"records":[…]}`
/// so that the model's decoder reads them. Accepts a JSON array or `{"records": [...]}`.
fn wrap_json_records(body: &[u8], device_id: &str, records_max: usize) -> Result<Vec<u8>, IntakeError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        records: &'a RawValue,
    }
    let shape = || IntakeError::Malformed("expected a JSON array of records or an object {\"records\": [...]}".into());
    let value: &RawValue = serde_json::from_slice(body).map_err(|e| IntakeError::Malformed(format!("malformed JSON: {e}")))?;
    let records = match value.get().as_bytes().first() {
        Some(b'[') => value,
        Some(b'{') => serde_json::from_str::<Wrapped>(value.get()).map_err(|e| IntakeError::Malformed(format!("malformed JSON: {e}")))?.records,
        _ => return Err(shape()),
    };
    if !records.get().starts_with('[') {
        return Err(shape());
    }
    let count = count_elements(records.get()).map_err(|e| IntakeError::Malformed(format!("malformed JSON: {e}")))?;
    if count > records_max {
        return Err(IntakeError::TooManyRecords { count, max: records_max });
    }
    let device_id = serde_json::to_string(device_id).expect("a string encodes as JSON");
    Ok(format!(r#"{{"v":1,"source":{{"device_id":{device_id}}},"records":{}}}"#, records.get()).into_bytes())
}

/// The length of the JSON array `array`, read without keeping any element.
fn count_elements(array: &str) -> Result<usize, serde_json::Error> {
    struct Count;
    impl<'de> serde::de::Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut count = 0;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                count += 1;
            }
            Ok(count)
        }
    }
    serde::Deserializer::deserialize_seq(&mut serde_json::Deserializer::from_str(array), Count)
}

/// Validates every record; all must pass.
pub fn validate_all(records: &[Record], limits: &Limits, now_ns: i64) -> Result<(), IntakeError> {
    let rejections: Vec<Rejection> =
        records.iter().enumerate().filter_map(|(index, record)| validate_record(record, limits, now_ns, index).err()).collect();
    if rejections.is_empty() {
        Ok(())
    } else {
        Err(IntakeError::Invalid { total: records.len(), rejections })
    }
}

/// The one way readings are stored, for HTTP writes and the simulated source alike.
#[derive(Clone)]
pub struct Intake {
    writer: OutboxWriter,
    telemetry: Arc<Telemetry>,
    limits: Limits,
}

impl Intake {
    pub fn new(writer: OutboxWriter, telemetry: Arc<Telemetry>, limits: Limits) -> Intake {
        Intake { writer, telemetry, limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Validates every record, then stores all of them under consecutive sequence numbers, or
    /// none. Returns after the LMDB commit; the caller may acknowledge the readings. Counts them
    /// as received, and as rejected when refused.
    /// `traceparent`: the trace the write belongs to (its span's), carried on with the records.
    pub async fn submit(&self, destination: Destination, records: Vec<Record>, now_ns: i64, traceparent: Option<String>) -> Result<SeqRange, IntakeError> {
        let count = records.len();
        Telemetry::add(&self.telemetry.received, count as u64);
        let result = self.store(destination, records, now_ns, traceparent).await;
        if let Err(error) = &result {
            self.telemetry.reject(error.code(), error.records(count) as u64);
        }
        result
    }

    /// Counts a write refused before its records could be submitted (unreadable, too large, …).
    pub fn refused(&self, error: &IntakeError) {
        let records = error.records(0) as u64;
        Telemetry::add(&self.telemetry.received, records);
        self.telemetry.reject(error.code(), records);
    }

    async fn store(&self, destination: Destination, records: Vec<Record>, now_ns: i64, traceparent: Option<String>) -> Result<SeqRange, IntakeError> {
        validate_all(&records, &self.limits, now_ns)?;
        self.writer.append(destination, records, traceparent).await.map_err(|error| match error {
            OutboxError::Full { .. } => IntakeError::OutboxFull(error),
            OutboxError::TooLarge { .. } => IntakeError::LargerThanOutbox(error),
            OutboxError::WriterStopped => IntakeError::Unavailable,
            other => IntakeError::Storage(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{MeasureValue, Scalar};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn decode_json(body: &str) -> Result<Vec<Record>, IntakeError> {
        decode_body(BodyFormat::Json, body.as_bytes(), Precision::Nanoseconds, "dev \"1\"", &Limits::default(), 100, NOW)
    }

    #[test]
    fn json_array_and_records_object_decode_alike() {
        let records = r#"[{"dimensions":{"room":"a"},"measure_name":"temp","value":21.5,"time":1700000000000,"time_unit":"ms"}]"#;
        for body in [records.to_string(), format!(r#"  {{"records": {records}}} "#)] {
            let decoded = decode_json(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(decoded.len(), 1);
            assert_eq!(decoded[0].time_ns, NOW);
            assert_eq!(decoded[0].value, MeasureValue::Single(Scalar::Double(21.5)));
        }
    }

    #[test]
    fn json_shapes_that_are_refused() {
        let check = |body: &str, code: &str, message_part: &str| {
            let err = decode_json(body).unwrap_err();
            assert_eq!(err.code(), code, "{body}: {err}");
            assert!(err.to_string().contains(message_part), "{body}: {err}");
        };
        check("{not json", "malformed_payload", "malformed JSON");
        check(r#"{"records": 5}"#, "malformed_payload", "expected a JSON array");
        check(r#"{"records": [], "extra": 1}"#, "malformed_payload", "unknown field");
        check(r#"[], "first_seq": 5"#, "malformed_payload", "malformed JSON");
        check("42", "malformed_payload", "expected a JSON array");
        // A record without `time` is refused as a record (listed by index), not as a payload.
        check(r#"[{"measure_name":"m","value":1}]"#, "invalid_value", "1 of 1 records are invalid");
    }

    #[test]
    fn invalid_records_are_listed_by_index() {
        let body = r#"[
            {"measure_name":"ok","value":1,"time":1},
            {"measure_name":"time","value":1,"time":1},
            {"measure_name":"ok","value":{"type":"BIGINT","value":"x"},"time":1}
        ]"#;
        let err = decode_json(body).unwrap_err();
        assert_eq!(err.code(), "invalid_measure_name");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.records(3), 3);
        let json = err.to_json();
        let rejected: Vec<(u64, &str)> = json["error"]["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["index"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(rejected, vec![(1, "invalid_measure_name"), (2, "invalid_value")]);
        assert_eq!(json["error"]["message"], "2 of 3 records are invalid; nothing was stored");
    }

    #[test]
    fn line_protocol_is_validated_after_parsing() {
        let records = decode_body(BodyFormat::LineProtocol, b"m,time=x f=1 1\nm f=2 2", Precision::Nanoseconds, "d", &Limits::default(), 100, NOW).unwrap();
        let err = validate_all(&records, &Limits::default(), NOW).unwrap_err();
        assert_eq!(err.code(), "invalid_dimension_name");
        let err = decode_body(BodyFormat::LineProtocol, b"m f=1 1\nm", Precision::Nanoseconds, "d", &Limits::default(), 100, NOW).unwrap_err();
        assert_eq!((err.code(), err.to_string().as_str()), ("malformed_payload", "line 2: missing fields (need at least one field=value after the tags)"));
    }

    /// Regression: a 16 MiB body of millions of lines was decoded in full before the record
    /// bound refused it. The bound is now checked on a count taken before decoding, exactly at
    /// the limit.
    #[test]
    fn too_many_records_are_refused_before_they_are_decoded() {
        let decode = |format, body: &[u8]| decode_body(format, body, Precision::Nanoseconds, "d", &Limits::default(), 3, NOW).map(|r| r.len());
        let lines = |n: usize| "# a comment\n\n".to_string() + &"m f=1 1\n".repeat(n);
        assert_eq!(decode(BodyFormat::LineProtocol, lines(3).as_bytes()).unwrap(), 3);
        let err = decode(BodyFormat::LineProtocol, lines(4).as_bytes()).unwrap_err();
        assert_eq!((err.code(), err.to_string()), ("too_many_records", IntakeError::TooManyRecords { count: 4, max: 3 }.to_string()));
        // Lines past the bound are not parsed: a broken one is still "too many", not "malformed".
        let err = decode(BodyFormat::LineProtocol, (lines(3) + "not a line").as_bytes()).unwrap_err();
        assert_eq!(err.code(), "too_many_records");
        let json = |n: usize| format!("[{}]", vec![format!(r#"{{"measure_name":"m","value":1,"time":{NOW}}}"#); n].join(","));
        assert_eq!(decode(BodyFormat::Json, json(3).as_bytes()).unwrap(), 3);
        assert_eq!(decode(BodyFormat::Json, json(4).as_bytes()).unwrap_err().code(), "too_many_records");
        let wrapped = format!(r#"{{"records":{}}}"#, json(4));
        assert_eq!(decode(BodyFormat::Json, wrapped.as_bytes()).unwrap_err().code(), "too_many_records");
    }

    #[test]
    fn body_format_from_content_type_or_sniffed() {
        let check = |content_type: Option<&str>, body: &str, expected: Option<BodyFormat>| {
            assert_eq!(BodyFormat::detect(content_type, body.as_bytes()).ok(), expected, "{content_type:?} {body:?}");
        };
        check(Some("application/json"), "m f=1", Some(BodyFormat::Json));
        check(Some("application/json; charset=utf-8"), "[]", Some(BodyFormat::Json));
        check(Some("text/plain; charset=utf-8"), "[]", Some(BodyFormat::LineProtocol));
        check(None, " [ ]", Some(BodyFormat::Json));
        check(None, "m f=1", Some(BodyFormat::LineProtocol));
        check(Some("application/x-www-form-urlencoded"), "{}", Some(BodyFormat::Json));
        check(Some("application/xml"), "<a/>", None);
    }

    #[test]
    fn error_codes_and_statuses() {
        let full = IntakeError::OutboxFull(OutboxError::Full { bytes_max: 1 });
        assert_eq!((full.code(), full.status()), ("outbox_full", StatusCode::INSUFFICIENT_STORAGE));
        let big = IntakeError::PayloadTooLarge { bytes_max: 1 };
        assert_eq!((big.code(), big.status()), ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE));
        let never = IntakeError::LargerThanOutbox(OutboxError::TooLarge { bytes_max: 1 });
        assert_eq!((never.code(), never.status()), ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE));
        let many = IntakeError::TooManyRecords { count: 2, max: 1 };
        assert_eq!((many.code(), many.status()), ("too_many_records", StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(IntakeError::UnsupportedContentType("x".into()).status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
