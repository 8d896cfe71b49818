//! MQTT topics and the end-to-end acknowledgement.
//!
//! Data: `lodestone/v1/{database}/{table}/{device_id}`. Acks to a device:
//! `lodestone/v1/ack/{device_id}`, payload [`Ack`] as JSON.

use serde::{Deserialize, Serialize};

pub const DATA_FILTER: &str = "lodestone/v1/+/+/+";
const PREFIX: &str = "lodestone/v1/";

/// The destination named by a data topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTopic {
    pub database: String,
    pub table: String,
    pub device_id: String,
}

pub fn data_topic(database: &str, table: &str, device_id: &str) -> String {
    format!("{PREFIX}{database}/{table}/{device_id}")
}

pub fn ack_topic(device_id: &str) -> String {
    format!("{PREFIX}ack/{device_id}")
}

/// Parses a data topic; `None` for anything else (including ack topics).
pub fn parse_data_topic(topic: &str) -> Option<DataTopic> {
    let rest = topic.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let (database, table, device_id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || database == "ack" || [database, table, device_id].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(DataTopic { database: database.into(), table: table.into(), device_id: device_id.into() })
}

/// The bridge's promise to a device: every record of `boot_id` with a sequence number up to and
/// including `through_seq` is durable in Kafka; the device may delete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub boot_id: String,
    pub through_seq: u64,
}

impl Ack {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("JSON encoding of an ack cannot fail")
    }

    pub fn from_json(bytes: &[u8]) -> Option<Ack> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        let topic = data_topic("fleet", "trucks", "dev-1");
        assert_eq!(
            parse_data_topic(&topic),
            Some(DataTopic { database: "fleet".into(), table: "trucks".into(), device_id: "dev-1".into() })
        );
        assert_eq!(parse_data_topic(&ack_topic("dev-1")), None);
        assert_eq!(parse_data_topic("lodestone/v1/a/b"), None);
        assert_eq!(parse_data_topic("lodestone/v1/a/b/c/d"), None);
        assert_eq!(parse_data_topic("other/v1/a/b/c"), None);
    }
}

/// The partition a key's messages go to: FNV-1a of the key, modulo `partitions`. A device's
/// envelopes go by its device id, a Timestream write's records by their series; written out here
/// rather than taken from std's hasher so that it never changes between builds.
pub fn partition_of(key: &str, partitions: usize) -> usize {
    (fnv1a(key.as_bytes()) % partitions.max(1) as u64) as usize
}

/// FNV-1a, 64 bits: a hash that never changes between builds (partitions, folder names).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}
