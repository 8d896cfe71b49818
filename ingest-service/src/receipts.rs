//! The receipts of messages a writer waits on (those with the [`lodestone_model::RECEIPT_HEADER`]),
//! kept for a while by partition and offset, and the partitions this worker holds, so that
//! `GET /v1/receipts/{partition}/{offset}` can wait for one, or say at once that another worker
//! applies that partition.
//!
//! Bounded: at most [`RECEIPTS_MAX`] receipts, none older than [`RECEIPT_TTL`]; a writer that
//! asks later than that gets no receipt (it answers as for a timeout).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lodestone_model::Receipt;
use tokio::sync::Notify;

/// Receipts kept at once; the oldest go first.
pub const RECEIPTS_MAX: usize = 100_000;

/// How long a receipt is kept after its message was applied.
pub const RECEIPT_TTL: Duration = Duration::from_secs(60);

/// The longest a request may wait for a receipt.
pub const RECEIPT_WAIT_MAX: Duration = Duration::from_secs(30);

/// What a wait for a receipt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    Applied(Receipt),
    /// This worker does not hold the partition (now): ask the others.
    NotAssigned,
    /// Not applied within the wait.
    Pending,
}

#[derive(Default)]
struct Kept {
    receipts: HashMap<(i32, i64), Receipt>,
    /// The keys of `receipts` in the order they were added, with when.
    added: VecDeque<(Instant, (i32, i64))>,
    assigned: BTreeSet<i32>,
}

/// The receipts of one worker; shared by its loop (which adds) and its HTTP server (which waits).
#[derive(Default)]
pub struct Receipts {
    kept: Mutex<Kept>,
    added: Notify,
}

impl Receipts {
    /// Keeps the receipt of the message at `partition` and `offset` and wakes its waiters.
    pub fn add(&self, partition: i32, offset: i64, receipt: Receipt) {
        let now = Instant::now();
        {
            let mut kept = self.kept.lock().expect("receipts lock");
            while let Some(&(added, key)) = kept.added.front() {
                if now.duration_since(added) < RECEIPT_TTL && kept.added.len() < RECEIPTS_MAX {
                    break;
                }
                kept.added.pop_front();
                kept.receipts.remove(&key);
            }
            // A replay applies the same offset again: its newer receipt replaces the older.
            if kept.receipts.insert((partition, offset), receipt).is_none() {
                kept.added.push_back((now, (partition, offset)));
            }
        }
        self.added.notify_waiters();
    }

    /// Notes that this worker now holds (`true`) or no longer holds partitions of the ingest topic.
    pub fn set_assigned(&self, partitions: impl IntoIterator<Item = i32>, held: bool) {
        {
            let mut kept = self.kept.lock().expect("receipts lock");
            for partition in partitions {
                match held {
                    true => kept.assigned.insert(partition),
                    false => kept.assigned.remove(&partition),
                };
            }
        }
        // A waiter on a revoked partition must hear it.
        self.added.notify_waiters();
    }

    fn look(&self, partition: i32, offset: i64) -> Option<Waited> {
        let kept = self.kept.lock().expect("receipts lock");
        if let Some(receipt) = kept.receipts.get(&(partition, offset)) {
            return Some(Waited::Applied(receipt.clone()));
        }
        (!kept.assigned.contains(&partition)).then_some(Waited::NotAssigned)
    }

    /// The receipt of the message at `partition` and `offset`, waiting up to `wait` (at most
    /// [`RECEIPT_WAIT_MAX`]) for it to be applied here.
    pub async fn wait(&self, partition: i32, offset: i64, wait: Duration) -> Waited {
        let deadline = tokio::time::Instant::now() + wait.min(RECEIPT_WAIT_MAX);
        loop {
            // Registered before looking, so an add between the look and the wait is not missed.
            let added = self.added.notified();
            if let Some(found) = self.look(partition, offset) {
                return found;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return Waited::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_waiter_gets_the_receipt_once_applied_and_other_partitions_are_not_ours() {
        let receipts = Arc::new(Receipts::default());
        receipts.set_assigned([0, 1], true);
        assert_eq!(receipts.wait(2, 0, Duration::from_secs(5)).await, Waited::NotAssigned);
        assert_eq!(receipts.wait(0, 7, Duration::from_millis(20)).await, Waited::Pending);
        let waiting = tokio::spawn({
            let receipts = receipts.clone();
            async move { receipts.wait(1, 42, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        let receipt = Receipt { envelopes: vec![vec![]], replayed: false };
        receipts.add(1, 41, Receipt::default());
        receipts.add(1, 42, receipt.clone());
        assert_eq!(waiting.await.unwrap(), Waited::Applied(receipt));
    }

    #[tokio::test]
    async fn a_partition_revoked_while_waiting_is_answered_not_assigned() {
        let receipts = Arc::new(Receipts::default());
        receipts.set_assigned([3], true);
        let waiting = tokio::spawn({
            let receipts = receipts.clone();
            async move { receipts.wait(3, 1, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        receipts.set_assigned([3], false);
        assert_eq!(waiting.await.unwrap(), Waited::NotAssigned);
    }
}
