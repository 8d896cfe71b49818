//! Write receipts: what an ingest worker did with one message of the ingest topic, for a writer
//! that waits to answer until the records are applied (the Timestream API's `WriteRecords`,
//! which must list exactly the records it rejected, with Timestream's `ExistingVersion` for a
//! version conflict).
//!
//! A writer asks for a receipt with the Kafka header [`RECEIPT_HEADER`]; the worker that applies
//! the message keeps its [`Receipt`] for a while and serves it over HTTP by partition and offset.
//! Messages without the header (the bridge's) get none, so the devices' path pays nothing.

use serde::{Deserialize, Serialize};

use crate::validate::Rejection;

/// The Kafka header (any value) that asks the worker applying a message for its receipt.
pub const RECEIPT_HEADER: &str = "lodestone-receipt";

/// What a worker did with one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Per envelope of the message (one, or each of a bundle's, in order): its records that
    /// were rejected, by their index in that envelope. Every other record was written.
    pub envelopes: Vec<Vec<RejectedRecord>>,
    /// The message was below its partition's watermark: a worker applied and persisted it
    /// before (a replay after a crash or a rebalance), so what it rejected then is not known.
    #[serde(default)]
    pub replayed: bool,
}

/// One rejected record of a [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// Its index in its envelope.
    pub index: usize,
    /// The stable reason code ([`crate::RejectReason::as_str`]).
    pub reason: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_version: Option<u64>,
}

impl From<&Rejection> for RejectedRecord {
    fn from(rejection: &Rejection) -> RejectedRecord {
        RejectedRecord {
            index: rejection.index,
            reason: rejection.reason.as_str().to_string(),
            detail: rejection.detail.clone(),
            existing_version: rejection.existing_version,
        }
    }
}

impl Receipt {
    /// The receipt of a message whose envelopes had these rejections.
    pub fn of(rejections: &[Vec<Rejection>]) -> Receipt {
        Receipt { envelopes: rejections.iter().map(|envelope| envelope.iter().map(RejectedRecord::from).collect()).collect(), replayed: false }
    }
}
