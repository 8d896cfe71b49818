//! Dead letters: what the broker-bridge and the ingest workers send to the dead-letter topic, and
//! how a worker reads one back into a row of `"_lodestone"."rejected_records"`.
//!
//! A dead letter is a Kafka message. Its headers say what was refused and why ([`header`]); its
//! payload is either the refused payload as it came (nothing in it could be read as an envelope)
//! or, for one refused record of an envelope, a JSON description of that record and where it was
//! found ([`DeadLetter::for_record`]).

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
    /// The refused payload as it came, or the JSON description of one refused record.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// A payload nothing could be read from, kept as it came.
    pub fn for_payload(source: RejectedBy, reason: RejectReason, detail: String, device_id: Option<String>, payload: &[u8]) -> DeadLetter {
        DeadLetter { source, reason, detail, device_id, topic: None, content_type: None, payload: payload.to_vec() }
    }

    /// One refused record of `envelope`. The payload is a JSON object with `reason`, `detail`,
    /// `device_id`, `boot_id`, `seq` (the record's sequence number, `null` past `u64::MAX`),
    /// `database`, `table` and `source`, plus the fields of `context` (an object: where the
    /// envelope was found, the record itself).
    pub fn for_record(source: RejectedBy, envelope: &Envelope, rejection: Rejection, context: Value) -> DeadLetter {
        let mut body = Map::new();
        body.insert("reason".into(), json!(rejection.reason.as_str()));
        body.insert("detail".into(), json!(rejection.detail));
        body.insert("device_id".into(), json!(envelope.source.device_id));
        body.insert("boot_id".into(), json!(envelope.source.boot_id));
        body.insert("seq".into(), json!(envelope.first_seq.checked_add(rejection.index as u64)));
        body.insert("database".into(), json!(envelope.database));
        body.insert("table".into(), json!(envelope.table));
        body.insert("source".into(), json!(source.as_str()));
        if let Value::Object(context) = context {
            body.extend(context);
        }
        DeadLetter {
            source,
            reason: rejection.reason,
            detail: rejection.detail,
            device_id: Some(envelope.source.device_id.clone()),
            topic: None,
            content_type: Some("application/json".into()),
            payload: serde_json::to_vec(&body).expect("JSON encoding of a JSON value cannot fail"),
        }
    }

    /// The Kafka headers, in the order they are sent; absent fields are left out.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![(header::REASON, self.reason.as_str()), (header::SOURCE, self.source.as_str()), (header::DETAIL, self.detail.as_str())];
        let optional = [(header::DEVICE_ID, &self.device_id), (header::TOPIC, &self.topic), (header::CONTENT_TYPE, &self.content_type)];
        headers.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value.as_deref()?))));
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
        Rejection { index, reason: RejectReason::InvalidValue, detail: "bad".into() }
    }

    #[test]
    fn what_a_worker_reads_back_is_what_was_sent() {
        let letter = DeadLetter::for_record(RejectedBy::Ingest, &envelope(3), rejection(2), json!({"offset": 7}));
        let headers = letter.headers();
        let lookup = |name: &str| headers.iter().find(|(key, _)| *key == name).map(|(_, value)| *value);
        let received = ReceivedDeadLetter::read(lookup, &letter.payload);
        let expected = ReceivedDeadLetter { reason: "invalid_value".into(), source: "ingest".into(), device_id: "dev-1".into(), detail: "bad".into() };
        assert_eq!(received, expected);
        let body: Value = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!((body["seq"].as_u64(), body["source"].as_str(), body["offset"].as_i64()), (Some(5), Some("ingest"), Some(7)));
    }

    #[test]
    fn a_sequence_number_past_the_end_is_null_not_a_panic() {
        let letter = DeadLetter::for_record(RejectedBy::Bridge, &envelope(u64::MAX), rejection(1), Value::Null);
        let body: Value = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!(body["seq"], Value::Null);
    }

    #[test]
    fn a_letter_without_headers_falls_back_to_its_body_and_the_bridge() {
        let payload = br#"{"device_id": "dev-9", "detail": "from the body"}"#;
        let received = ReceivedDeadLetter::read(|_| None, payload);
        let expected = ReceivedDeadLetter { reason: String::new(), source: "bridge".into(), device_id: "dev-9".into(), detail: "from the body".into() };
        assert_eq!(received, expected);
    }
}
