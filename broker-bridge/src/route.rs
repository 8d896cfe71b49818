//! The routing decision, without I/O: one MQTT publish in, the Kafka messages to produce and the
//! sequence range to acknowledge once they are delivered.

use lodestone_model::topic::{ack_topic, parse_data_topic, DataTopic};
use lodestone_model::{validate_name, ContentType, DeadLetter, Envelope, Limits, RejectReason, RejectedBy};
use serde_json::Value;

use crate::acks::SeqRange;

/// One publish as the broker handed it to the bridge.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// MQTT v5 content-type property.
    pub content_type: Option<&'a str>,
    /// MQTT v5 user property `traceparent`.
    pub traceparent: Option<&'a str>,
}

/// Which Kafka topic a message goes to (their names are configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Ingest,
    DeadLetter,
}

impl Destination {
    pub fn label(self) -> &'static str {
        match self {
            Destination::Ingest => "ingest",
            Destination::DeadLetter => "dead_letter",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaMessage {
    pub destination: Destination,
    /// The device id: keeps one device's messages ordered in one partition.
    pub key: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub payload: Vec<u8>,
}

impl KafkaMessage {
    /// The dead-letter topic's message for `letter`, keyed by its device id.
    pub fn dead_letter(letter: &DeadLetter) -> KafkaMessage {
        KafkaMessage {
            destination: Destination::DeadLetter,
            key: letter.device_id.clone(),
            headers: letter.headers(),
            payload: letter.payload.clone(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }
}

/// What became of a publish, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An envelope: `accepted` records go to the ingest topic, each rejection to the dead-letter
    /// topic.
    Envelope { device_id: String, accepted: usize, rejected: Vec<RejectReason> },
    /// The whole payload goes to the dead-letter topic; there is nothing to acknowledge.
    PayloadRejected { device_id: Option<String>, reason: RejectReason, detail: String },
    /// Bridge-to-device traffic (ack topics) seen through the bridge's catch-all subscription.
    Ignored,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub outcome: Outcome,
    pub messages: Vec<KafkaMessage>,
    /// The records to acknowledge once every message is delivered (`None`: nothing to ack).
    pub ack: Option<SeqRange>,
}

/// Routes publishes with fixed limits.
#[derive(Debug, Clone)]
pub struct Router {
    pub limits: Limits,
    pub payload_bytes_max: usize,
}

impl Router {
    /// Decides what `inbound` becomes, with the validator's clock at `now_ns`.
    pub fn route(&self, inbound: &Inbound<'_>, now_ns: i64) -> Routed {
        if inbound.topic.starts_with(&ack_topic("")) {
            return Routed { outcome: Outcome::Ignored, messages: Vec::new(), ack: None };
        }
        let destination = match parse_destination(inbound.topic) {
            Ok(destination) => destination,
            Err((device_id, detail)) => {
                return reject_payload(inbound, device_id, RejectReason::InvalidDestination, detail);
            }
        };
        let device_id = Some(destination.device_id.clone());
        if inbound.payload.len() > self.payload_bytes_max {
            let detail = format!("payload of {} bytes, at most {}", inbound.payload.len(), self.payload_bytes_max);
            return reject_payload(inbound, device_id, RejectReason::PayloadTooLarge, detail);
        }
        let content_type = inbound.content_type.and_then(ContentType::from_mime);
        let mut envelope = match Envelope::decode(inbound.payload, content_type, &self.limits, now_ns) {
            Ok(envelope) => envelope,
            Err(err) => return reject_payload(inbound, device_id, err.reason(), err.to_string()),
        };
        if envelope.source.device_id.is_empty() {
            envelope.source.device_id = destination.device_id.clone();
        } else if envelope.source.device_id != destination.device_id {
            let detail = format!(
                "envelope source.device_id {:?} differs from the topic's device id {:?}",
                envelope.source.device_id, destination.device_id
            );
            return reject_payload(inbound, device_id, RejectReason::IdentityMismatch, detail);
        }
        envelope.database = Some(destination.database.clone());
        envelope.table = Some(destination.table.clone());
        if envelope.traceparent.is_none() {
            envelope.traceparent = inbound.traceparent.map(str::to_owned);
        }
        route_envelope(&envelope)
    }
}

/// The topic's destination, or the device id (when one can be read) and why the topic is invalid.
fn parse_destination(topic: &str) -> Result<DataTopic, (Option<String>, String)> {
    let Some(destination) = parse_data_topic(topic) else {
        return Err((None, format!("topic {topic:?} is not lodestone/v1/{{database}}/{{table}}/{{device_id}}")));
    };
    let names = validate_name("database", &destination.database).and_then(|()| validate_name("table", &destination.table));
    match names {
        Ok(()) => Ok(destination),
        Err(detail) => Err((Some(destination.device_id), detail)),
    }
}

fn reject_payload(inbound: &Inbound<'_>, device_id: Option<String>, reason: RejectReason, detail: String) -> Routed {
    let mut letter = DeadLetter::for_payload(RejectedBy::Bridge, reason, detail.clone(), device_id.clone(), inbound.payload);
    letter.topic = Some(inbound.topic.to_string());
    letter.content_type = inbound.content_type.map(str::to_owned);
    Routed { outcome: Outcome::PayloadRejected { device_id, reason, detail }, messages: vec![KafkaMessage::dead_letter(&letter)], ack: None }
}

/// One ingest message for the accepted records (if any), one dead-letter message per reason
/// records were refused for.
fn route_envelope(envelope: &Envelope) -> Routed {
    let device_id = &envelope.source.device_id;
    let mut messages = Vec::with_capacity(1 + envelope.rejected.len());
    if !envelope.records.is_empty() {
        let mut headers = vec![("content-type", ContentType::Cbor.mime().to_string()), ("device_id", device_id.clone())];
        if let Some(traceparent) = &envelope.traceparent {
            headers.push(("traceparent", traceparent.clone()));
        }
        messages.push(KafkaMessage {
            destination: Destination::Ingest,
            key: Some(device_id.clone()),
            headers,
            payload: envelope.to_cbor(),
        });
    }
    let refused = envelope.rejected.iter().map(|rejection| (rejection.clone(), None)).collect();
    messages.extend(DeadLetter::for_records(RejectedBy::Bridge, envelope, refused, &Value::Null).iter().map(KafkaMessage::dead_letter));
    let ack = SeqRange {
        device_id: device_id.clone(),
        boot_id: envelope.source.boot_id.clone(),
        first_seq: envelope.first_seq,
        count: (envelope.records.len() + envelope.rejected.len()) as u64,
        unacked_from: envelope.unacked_from,
    };
    Routed {
        outcome: Outcome::Envelope {
            device_id: device_id.clone(),
            accepted: envelope.records.len(),
            rejected: envelope.rejected.iter().map(|r| r.reason).collect(),
        },
        messages,
        ack: Some(ack),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{Dimension, MeasureValue, Record, Scalar, Source};

    const NOW: i64 = 1_700_000_000_000_000_000;
    const TOPIC: &str = "lodestone/v1/fleet/trucks/dev-1";

    fn router() -> Router {
        Router { limits: Limits::default(), payload_bytes_max: 4096 }
    }

    fn record(measure_name: &str) -> Record {
        Record {
            dimensions: vec![Dimension { name: "truck".into(), value: "t1".into() }],
            measure_name: measure_name.into(),
            value: MeasureValue::Single(Scalar::Double(1.5)),
            time_ns: NOW,
            version: 1,
        }
    }

    fn envelope(device_id: &str, records: Vec<Record>) -> Envelope {
        Envelope {
            source: Source { device_id: device_id.into(), boot_id: "boot-a".into() },
            first_seq: 10,
            unacked_from: None,
            records,
            ..Envelope::default()
        }
    }

    /// What a test expects, in a form that reads at a glance.
    #[derive(Debug, PartialEq)]
    struct Summary {
        outcome: String,
        /// (destination, reason header or "-")
        messages: Vec<(&'static str, String)>,
        /// (device, boot, first, count)
        ack: Option<(String, String, u64, u64)>,
    }

    fn summarize(routed: &Routed) -> Summary {
        let outcome = match &routed.outcome {
            Outcome::Envelope { device_id, accepted, rejected } => {
                let rejected: Vec<_> = rejected.iter().map(|r| r.as_str()).collect();
                format!("envelope {device_id} accepted={accepted} rejected={rejected:?}")
            }
            Outcome::PayloadRejected { reason, .. } => format!("payload {reason}"),
            Outcome::Ignored => "ignored".into(),
        };
        Summary {
            outcome,
            messages: routed
                .messages
                .iter()
                .map(|m| (m.destination.label(), m.header("reason").unwrap_or("-").to_string()))
                .collect(),
            ack: routed.ack.as_ref().map(|a| (a.device_id.clone(), a.boot_id.clone(), a.first_seq, a.count)),
        }
    }

    fn check(topic: &str, payload: &[u8], content_type: Option<&str>, expected: Summary) {
        let inbound = Inbound { topic, payload, content_type, traceparent: None };
        assert_eq!(summarize(&router().route(&inbound, NOW)), expected, "topic {topic}");
    }

    fn envelope_outcome(accepted: usize, rejected: &[&str]) -> String {
        format!("envelope dev-1 accepted={accepted} rejected={rejected:?}")
    }

    fn ack(count: u64) -> Option<(String, String, u64, u64)> {
        Some(("dev-1".into(), "boot-a".into(), 10, count))
    }

    fn payload_rejected(reason: &str) -> Summary {
        Summary { outcome: format!("payload {reason}"), messages: vec![("dead_letter", reason.into())], ack: None }
    }

    #[test]
    fn routing_table() {
        let good = envelope("dev-1", vec![record("temp"), record("rpm")]);
        // `Envelope::to_json` drops rejections: build a payload with a bad second record by hand.
        let mixed_json = br#"{"v":1,"source":{"device_id":"","boot_id":"boot-a"},"first_seq":10,"records":[
            {"measure_name":"temp","value":1.5,"time":1700000000000000000},
            {"measure_name":"bad","value":{"type":"BIGINT","value":"x"},"time":1700000000000000000}]}"#;
        let all_rejected = br#"{"v":1,"source":{"device_id":"dev-1","boot_id":"boot-a"},"first_seq":10,"records":[
            {"measure_name":"late","value":1,"time":1800000000000000000}]}"#;
        let empty = envelope("dev-1", vec![]);
        let at_bound = vec![b' '; 4096];
        let over_bound = vec![b' '; 4097];

        check(TOPIC, &good.to_cbor(), None, Summary {
            outcome: envelope_outcome(2, &[]),
            messages: vec![("ingest", "-".into())],
            ack: ack(2),
        });
        check(TOPIC, &good.to_json(), Some("application/json"), Summary {
            outcome: envelope_outcome(2, &[]),
            messages: vec![("ingest", "-".into())],
            ack: ack(2),
        });
        check(TOPIC, mixed_json, None, Summary {
            outcome: envelope_outcome(1, &["invalid_value"]),
            messages: vec![("ingest", "-".into()), ("dead_letter", "invalid_value".into())],
            ack: ack(2),
        });
        check(TOPIC, all_rejected, None, Summary {
            outcome: envelope_outcome(0, &["time_too_far_in_future"]),
            messages: vec![("dead_letter", "time_too_far_in_future".into())],
            ack: ack(1),
        });
        check(TOPIC, &empty.to_cbor(), None, Summary { outcome: envelope_outcome(0, &[]), messages: vec![], ack: ack(0) });
        check("lodestone/v1/ack/dev-1", b"{}", None, Summary { outcome: "ignored".into(), messages: vec![], ack: None });
        check("lodestone/v1/fleet/trucks", b"{}", None, payload_rejected("invalid_destination"));
        check("other/topic", b"{}", None, payload_rejected("invalid_destination"));
        check("lodestone/v1/f!/trucks/dev-1", &good.to_cbor(), None, payload_rejected("invalid_destination"));
        check("lodestone/v1/fleet/trucks/dev-2", &good.to_cbor(), None, payload_rejected("identity_mismatch"));
        check(TOPIC, b"{not json", None, payload_rejected("malformed_payload"));
        check(TOPIC, b"\xff\x00", None, payload_rejected("malformed_payload"));
        check(TOPIC, br#"{"v":9,"source":{"device_id":"d"},"records":[]}"#, None, payload_rejected("unsupported_version"));
        // At the bound the payload is decoded (and is malformed); one past it is too large.
        check(TOPIC, &at_bound, None, payload_rejected("malformed_payload"));
        check(TOPIC, &over_bound, None, payload_rejected("payload_too_large"));
    }

    #[test]
    fn ingest_message_carries_the_envelope_and_its_headers() {
        let good = envelope("", vec![record("temp")]);
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let payload = good.to_cbor();
        let inbound = Inbound { topic: TOPIC, payload: &payload, content_type: Some("application/cbor"), traceparent: Some(traceparent) };
        let routed = router().route(&inbound, NOW);
        let [message] = routed.messages.as_slice() else { panic!("{routed:?}") };
        assert_eq!(message.key.as_deref(), Some("dev-1"));
        assert_eq!(message.header("content-type"), Some("application/cbor"));
        assert_eq!(message.header("device_id"), Some("dev-1"));
        assert_eq!(message.header("traceparent"), Some(traceparent));
        let sent = Envelope::decode(&message.payload, Some(ContentType::Cbor), &Limits::default(), NOW).unwrap();
        assert_eq!(sent.database.as_deref(), Some("fleet"));
        assert_eq!(sent.table.as_deref(), Some("trucks"));
        assert_eq!(sent.source.device_id, "dev-1");
        assert_eq!(sent.traceparent.as_deref(), Some(traceparent));
        assert_eq!(sent.records, good.records);
    }

    #[test]
    fn dead_letter_entries() {
        let json = br#"{"v":1,"source":{"device_id":"dev-1","boot_id":"boot-a"},"first_seq":10,"records":[
            {"measure_name":"ok","value":1,"time":1700000000000000000},
            {"measure_name":"","value":1,"time":1700000000000000000}]}"#;
        let routed = router().route(&Inbound { topic: TOPIC, payload: json, content_type: None, traceparent: None }, NOW);
        let dead = &routed.messages[1];
        assert_eq!(dead.destination, Destination::DeadLetter);
        assert_eq!(dead.key.as_deref(), Some("dev-1"));
        let entry: serde_json::Value = serde_json::from_slice(&dead.payload).unwrap();
        let reason = dead.header("reason").unwrap();
        assert_eq!(entry["reason"], reason);
        assert_eq!(entry["device_id"], "dev-1");
        assert_eq!(entry["boot_id"], "boot-a");
        assert_eq!(entry["seq"], 11);
        assert_eq!(entry["database"], "fleet");
        assert_eq!(entry["table"], "trucks");
        assert_eq!(entry["source"], "bridge");
        assert_eq!(dead.header("source"), Some("bridge"));
        assert!(entry["detail"].as_str().is_some_and(|d| !d.is_empty()));

        let raw = b"{not json";
        let routed = router().route(&Inbound { topic: TOPIC, payload: raw, content_type: Some("application/json"), traceparent: None }, NOW);
        let dead = &routed.messages[0];
        assert_eq!(dead.payload, raw);
        assert_eq!(dead.header("device_id"), Some("dev-1"));
        assert_eq!(dead.header("topic"), Some(TOPIC));
        assert!(dead.header("detail").is_some_and(|d| d.contains("JSON")));
    }
}
