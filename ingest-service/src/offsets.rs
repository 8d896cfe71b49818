//! What a worker knows of its partitions' positions: the offset after the last message applied
//! to the hot tier, per partition, and which partitions' catalog watermarks it has loaded since
//! they were assigned. Pure bookkeeping, no Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// A partition of a topic: `(topic, partition)`.
pub type Partition = (String, i32);

/// The catalog watermark of a Kafka partition: the offset after the last persisted message.
pub fn watermark_key(topic: &str, partition: i32) -> String {
    format!("kafka/{topic}/{partition}")
}

/// Whether a message at `offset` is already persisted (below the partition's watermark), by this
/// worker in an earlier life or by another (offsets lost, replay from earliest): it is skipped,
/// not stored twice.
pub fn below_watermark(offset: i64, watermark: Option<u64>) -> bool {
    watermark.is_some_and(|next| u64::try_from(offset).is_ok_and(|offset| offset < next))
}

#[derive(Debug, Default)]
pub struct OffsetBook {
    /// Partition → offset after the last message applied to the hot tier, not committed yet.
    next: BTreeMap<Partition, i64>,
    /// Partitions read since they were (last) assigned: their watermarks are loaded.
    seen: BTreeSet<Partition>,
}

impl OffsetBook {
    /// True the first time a partition is read after its assignment: load its watermark first.
    pub fn first_read(&mut self, topic: &str, partition: i32) -> bool {
        self.seen.insert((topic.to_string(), partition))
    }

    /// The message at `offset` was applied (or skipped): the partition may be committed past it.
    pub fn applied(&mut self, topic: &str, partition: i32, offset: i64) {
        self.next.insert((topic.to_string(), partition), offset.saturating_add(1));
    }

    /// Forgets partitions that changed hands. One assigned (again) reloads its watermark, since
    /// another worker may have persisted further meanwhile; a revoked one's offsets are not
    /// committed by this worker any more (rows it applied are persisted with the next
    /// checkpoint, and the new owner's copies deduplicate).
    pub fn forget(&mut self, partitions: impl IntoIterator<Item = Partition>) {
        for partition in partitions {
            self.seen.remove(&partition);
            self.next.remove(&partition);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// The catalog watermarks a persist of everything applied so far commits.
    pub fn watermarks(&self) -> BTreeMap<String, u64> {
        self.next.iter().map(|((topic, partition), offset)| (watermark_key(topic, *partition), (*offset).max(0) as u64)).collect()
    }

    /// The offsets to commit, emptying the book (until more messages are applied).
    pub fn take(&mut self) -> BTreeMap<Partition, i64> {
        std::mem::take(&mut self.next)
    }
}

/// Partitions assigned and revoked by the group, noted by librdkafka's rebalance callback (on
/// its own thread) and taken by the worker before its next message or commit.
#[derive(Debug, Clone, Default)]
pub struct Rebalances(Arc<Mutex<Vec<Partition>>>);

impl Rebalances {
    pub fn note(&self, partitions: impl IntoIterator<Item = Partition>) {
        self.0.lock().expect("rebalance lock").extend(partitions);
    }

    pub fn take(&self) -> Vec<Partition> {
        std::mem::take(&mut *self.0.lock().expect("rebalance lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_next_offset_to_store() {
        let check = |offset, watermark, expected| assert_eq!(below_watermark(offset, watermark), expected, "{offset} {watermark:?}");
        check(9, None, false);
        check(9, Some(10), true);
        check(10, Some(10), false);
        check(-1, Some(10), false);
    }

    #[test]
    fn a_partition_that_changed_hands_is_read_afresh_and_not_committed() {
        let mut book = OffsetBook::default();
        assert!(book.first_read("t", 0));
        assert!(!book.first_read("t", 0));
        book.applied("t", 0, 41);
        book.applied("t", 1, 7);
        assert_eq!(book.watermarks(), BTreeMap::from([("kafka/t/0".into(), 42), ("kafka/t/1".into(), 8)]));
        book.forget([("t".to_string(), 0)]);
        assert!(book.first_read("t", 0));
        assert_eq!(book.take(), BTreeMap::from([(("t".to_string(), 1), 8)]));
        assert!(book.is_empty());
    }
}
