//! The data model and wire format every Lodestone component shares.
//!
//! Key types:
//! - [`Record`]: one Timestream-style record — dimensions, a measure name, a typed value
//!   ([`MeasureValue`]: a single [`Scalar`] or a multi-measure list), nanosecond time, version.
//! - [`Envelope`]: what travels on MQTT and Kafka — a source (device id, boot id), the sequence
//!   number of its first record, the records and an optional `traceparent`. Encoded as CBOR by
//!   agents ([`Envelope::to_cbor`]); JSON ([`Envelope::to_json`]) is accepted from simple devices
//!   and Kafka producers. [`Envelope::decode`] sniffs the encoding, converts and validates every
//!   record, and splits the good records from the [`Rejection`]s.
//! - [`Limits`]: Timestream's quotas, checked by [`validate_record`].
//! - [`RejectReason`]: the stable reason codes shared by dead-letter entries, metrics and errors.
//! - [`DeadLetter`]: a refused payload or record on the dead-letter topic — its headers, who
//!   refused it ([`RejectedBy`]) and how a worker reads it back ([`ReceivedDeadLetter`]).
//! - [`topic`]: the MQTT topic layout and the end-to-end [`topic::Ack`].
//! - Bundles ([`encode_bundle`], [`split_bundle`]): many envelopes in one Kafka message, as the
//!   broker-bridge produces them; [`split_message`] reads either kind of ingest-topic message.
//!
//! - [`Receipt`]: what an ingest worker did with a message a writer waits on (the Timestream
//!   API's `WriteRecords`): its rejected records, asked for with the [`RECEIPT_HEADER`].
//!
//! Nothing here does network I/O: bytes in, values out.

mod bundle;
mod dead_letter;
mod envelope;
mod loose;
mod receipt;
mod record;
pub mod topic;
mod validate;

pub use bundle::{encode_bundle, split_bundle, split_message, BUNDLE_MIME, TRACEPARENTS_HEADER};
pub use dead_letter::{header as dead_letter_header, DeadLetter, ReceivedDeadLetter, RejectedBy};
pub use envelope::{record_to_json, ContentType, DecodeError, Envelope, Source, ENVELOPE_VERSION};
pub use receipt::{Receipt, RejectedRecord, RECEIPT_HEADER};
pub use record::{Dimension, MeasureType, MeasureValue, Record, Scalar};
pub use validate::{is_reserved_database, validate_name, validate_record, Limits, RejectReason, Rejection};
