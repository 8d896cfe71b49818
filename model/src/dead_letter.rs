//! Dead letters: what the broker-bridge and the ingest workers send to the dead-letter topic, and
//! how a worker reads one back into a row of `"_lodestone"."rejected_records"`.
//!
//! A dead letter is a Kafka message. Its headers say what was refused and why ([`header`]); its
//! payload is either the refused payload as it came (nothing in it could be read as an envelope)
//! or, for the records of an envelope refused for one reason, a JSON description of them and where
//! they were found ([`DeadLetter::for_records`]).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::{Envelope, RejectReason, Rejection};

/// The names of a dead letter's Kafka headers.
pub mod header {
    /// The [`RejectReason`](crate::RejectReason) code.
    pub const REASON: &str = "reason";
    /// Who refused it ([`RejectedBy`](super::RejectedBy)).
    pub const SOURCE: &str = "source";
    /// The device id, when one could be read; also the message's key.
    pub const DEVICE_ID: &str = "device_id";
    /// A sentence for a person.
    pub const DETAIL: &str = "detail";
    /// The MQTT topic a refused payload was published on.
    pub const TOPIC: &str = "topic";
    /// The encoding of the payload (`application/json` for a record's description).
    pub const CONTENT_TYPE: &str = "content-type";
    /// How many records the letter stands for (absent: 1).
    pub const RECORDS: &str = "records";
}

/// Who refused a record: the `source` header, the `source` field of a record's description and the
/// `source` dimension of `rejected_records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedBy {
    /// The broker-bridge, for what devices published over MQTT.
    Bridge,
    /// An ingest worker, for what it consumed from the ingest topic.
    Ingest,
    /// Compaction, for a record that met a persisted one (`version_conflict`).
    Store,
}

impl RejectedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectedBy::Bridge => "bridge",
            RejectedBy::Ingest => "ingest",
            RejectedBy::Store => "store",
        }
    }
}

impl std::fmt::Display for RejectedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message for the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub source: RejectedBy,
    pub reason: RejectReason,
    pub detail: String,
    /// Device id, when known: the message's key.
    pub device_id: Option<String>,
    /// The MQTT topic of a refused payload.
    pub topic: Option<String>,
    /// The encoding of `payload`, when known.
    pub content_type: Option<String>,
    /// How many records it stands for (1 for a payload).
    pub records: usize,
    /// The refused payload as it came, or the JSON description of refused records.
    pub payload: Vec<u8>,
}

/// At most this many refused records are described in one dead letter; the rest are counted.
pub const DEAD_LETTER_RECORDS_MAX: usize = 16;

impl DeadLetter {
    /// A payload nothing could be read from, kept as it came.
    pub fn for_payload(source: RejectedBy, reason: RejectReason, detail: String, device_id: Option<String>, payload: &[u8]) -> DeadLetter {
        DeadLetter { source, reason, detail, device_id, topic: None, content_type: None, records: 1, payload: payload.to_vec() }
    }

    /// The dead letters of an envelope's refused records, one per reason however many records
    /// it refused for that reason: a publish of 6,000 bad records is a few messages, not 6,000.
    /// `refused` holds each rejection with the record when it could be read (as JSON).
    ///
    /// The payload is a JSON object with `reason`, `detail` (the first record's), `device_id`,
    /// `boot_id`, `seq` (the first record's sequence number, `null` past `u64::MAX`),
    /// `database`, `table`, `source`, `records` (how many were refused for this reason) and
    /// `refused`: the first [`DEAD_LETTER_RECORDS_MAX`] of them as `{index, seq, detail, record}`;
    /// plus the fields of `context` (an object: where the envelope was found).
    pub fn for_records(source: RejectedBy, envelope: &Envelope, refused: Vec<(Rejection, Option<Value>)>, context: &Value) -> Vec<DeadLetter> {
        let mut by_reason: BTreeMap<RejectReason, Vec<(Rejection, Option<Value>)>> = BTreeMap::new();
        for entry in refused {
            by_reason.entry(entry.0.reason).or_default().push(entry);
        }
        by_reason.into_iter().map(|(reason, refused)| Self::for_reason(source, envelope, reason, refused, context)).collect()
    }

    fn for_reason(source: RejectedBy, envelope: &Envelope, reason: RejectReason, refused: Vec<(Rejection, Option<Value>)>, context: &Value) -> DeadLetter {
        let seq = |index: usize| envelope.first_seq.checked_add(index as u64);
        let (first_index, detail) = (refused[0].0.index, refused[0].0.detail.clone());
        let count = refused.len();
        let described: Vec<Value> = refused
            .into_iter()
            .take(DEAD_LETTER_RECORDS_MAX)
            .map(|(rejection, record)| json!({"index": rejection.index, "seq": seq(rejection.index), "detail": rejection.detail, "record": record}))
            .collect();
        let mut body = Map::new();
        body.insert("reason".into(), json!(reason.as_str()));
        body.insert("detail".into(), json!(detail));
        body.insert("device_id".into(), json!(envelope.source.device_id));
        body.insert("boot_id".into(), json!(envelope.source.boot_id));
        body.insert("seq".into(), json!(seq(first_index)));
        body.insert("database".into(), json!(envelope.database));
        body.insert("table".into(), json!(envelope.table));
        body.insert("source".into(), json!(source.as_str()));
        body.insert("records".into(), json!(count));
        body.insert("refused".into(), Value::Array(described));
        if let Value::Object(context) = context {
            body.extend(context.clone());
        }
        DeadLetter {
            source,
            reason,
            detail,
            device_id: Some(envelope.source.device_id.clone()),
            topic: None,
            content_type: Some("application/json".into()),
            records: count,
            payload: serde_json::to_vec(&body).expect("JSON encoding of a JSON value cannot fail"),
        }
    }

    /// The Kafka headers, in the order they are sent; absent fields are left out.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (header::REASON, self.reason.as_str().to_owned()),
            (header::SOURCE, self.source.as_str().to_owned()),
            (header::DETAIL, self.detail.clone()),
            (header::RECORDS, self.records.to_string()),
        ];
        let optional = [(header::DEVICE_ID, &self.device_id), (header::TOPIC, &self.topic), (header::CONTENT_TYPE, &self.content_type)];
        headers.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value.clone()?))));
        headers
    }
}

/// A dead letter as a worker reads it back from the topic. Fields are text, because the topic may
/// hold messages from producers other than Lodestone's.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedDeadLetter {
    pub reason: String,
    /// `bridge` when the header is missing (bridges before the header existed).
    pub source: String,
    pub device_id: String,
    pub detail: String,
    /// How many records it stands for: the `records` header, else the body's field, else 1.
    pub records: u64,
}

impl ReceivedDeadLetter {
    /// Reads the headers (`header(name)` looks one up), falling back to the fields of a JSON
    /// payload for `device_id` and `detail`.
    pub fn read<'a>(header: impl Fn(&str) -> Option<&'a str>, payload: &[u8]) -> ReceivedDeadLetter {
        let present = |name: &str| header(name).filter(|value| !value.is_empty()).map(str::to_owned);
        let body: Option<Value> = serde_json::from_slice(payload).ok();
        let from_body = |name: &str| body.as_ref().and_then(|b| b.get(name)).and_then(Value::as_str).map(str::to_owned);
        ReceivedDeadLetter {
            reason: present(header::REASON).unwrap_or_default(),
            source: present(header::SOURCE).unwrap_or_else(|| RejectedBy::Bridge.as_str().into()),
            device_id: present(header::DEVICE_ID).or_else(|| from_body("device_id")).unwrap_or_default(),
            detail: present(header::DETAIL).or_else(|| from_body("detail")).unwrap_or_default(),
            records: present(header::RECORDS)
                .and_then(|count| count.parse().ok())
                .or_else(|| body.as_ref().and_then(|b| b.get("records")).and_then(Value::as_u64))
                .unwrap_or(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Source;

    fn envelope(first_seq: u64) -> Envelope {
        Envelope {
            database: Some("fleet".into()),
            table: Some("trucks".into()),
            source: Source { device_id: "dev-1".into(), boot_id: "boot".into() },
            first_seq,
            ..Envelope::default()
        }
    }

    fn rejection(index: usize) -> Rejection {
        Rejection::new(index, RejectReason::InvalidValue, "bad")
    }

    fn one_letter(source: RejectedBy, envelope: &Envelope, rejection: Rejection, context: Value) -> DeadLetter {
        let mut letters = DeadLetter::for_records(source, envelope, vec![(rejection, None)], &context);
        assert_eq!(letters.len(), 1);
        letters.remove(0)
    }

    #[test]
    fn what_a_worker_reads_back_is_what_was_sent() {
        let letter = one_letter(RejectedBy::Ingest, &envelope(3), rejection(2), json!({"offset": 7}));
        let headers = letter.headers();
        let lookup = |name: &str| headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str());
        let received = ReceivedDeadLetter::read(lookup, &letter.payload);
        let expected =
            ReceivedDeadLetter { reason: "invalid_value".into(), source: "ingest".into(), device_id: "dev-1".into(), detail: "bad".into(), records: 1 };
        assert_eq!(received, expected);
        let body: Value = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!((body["seq"].as_u64(), body["source"].as_str(), body["offset"].as_i64()), (Some(5), Some("ingest"), Some(7)));
    }

    #[test]
    fn a_sequence_number_past_the_end_is_null_not_a_panic() {
        let letter = one_letter(RejectedBy::Bridge, &envelope(u64::MAX), rejection(1), Value::Null);
        let body: Value = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!(body["seq"], Value::Null);
    }

    /// Regression: one publish of 6,000 bad records became 6,000 dead-letter messages and
    /// 6,000 rows of `rejected_records`. Now it is one letter per reason, describing at most
    /// `DEAD_LETTER_RECORDS_MAX` of them and counting all.
    #[test]
    fn six_thousand_bad_records_are_one_dead_letter_per_reason() {
        let mut refused: Vec<_> = (0..6_000).map(|i| (rejection(i), Some(json!({"measure_name": "m"})))).collect();
        refused.push((Rejection::new(6_000, RejectReason::NonFiniteDouble, "nan"), None));
        let letters = DeadLetter::for_records(RejectedBy::Bridge, &envelope(1), refused, &Value::Null);
        let summary: Vec<_> = letters.iter().map(|l| (l.reason, l.records)).collect();
        assert_eq!(summary, [(RejectReason::InvalidValue, 6_000), (RejectReason::NonFiniteDouble, 1)]);
        assert!(letters[0].payload.len() < 4_096, "a bounded letter, not {} bytes", letters[0].payload.len());
        let body: Value = serde_json::from_slice(&letters[0].payload).unwrap();
        assert_eq!(body["records"], 6_000);
        assert_eq!(body["refused"].as_array().unwrap().len(), DEAD_LETTER_RECORDS_MAX);
        assert_eq!(body["refused"][1]["seq"], 2);
        let headers = letters[0].headers();
        let lookup = |name: &str| headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str());
        assert_eq!(ReceivedDeadLetter::read(lookup, &letters[0].payload).records, 6_000);
    }

    #[test]
    fn a_letter_without_headers_falls_back_to_its_body_and_the_bridge() {
        let payload = br#"{"device_id": "dev-9", "detail": "from the body"}"#;
        let received = ReceivedDeadLetter::read(|_| None, payload);
        let expected =
            ReceivedDeadLetter { reason: String::new(), source: "bridge".into(), device_id: "dev-9".into(), detail: "from the body".into(), records: 1 };
        assert_eq!(received, expected);
    }
}
