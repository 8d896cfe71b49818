//! The ingest worker's loop, without Kafka: messages in, the hot tier filled, dead letters out,
//! and the one order that makes the worker safe to kill at any instant:
//!
//! **persist → dead letters delivered → offsets committed.**
//!
//! [`Worker::checkpoint`] is that order. A committed offset is a promise that every message
//! before it is in a Parquet file committed in the catalog, or is a dead letter Kafka holds; a
//! crash anywhere before the commit replays the messages, and the catalog's watermarks (committed
//! with the files) make the replay store nothing twice. The log (Kafka in `kafka.rs`, a fake in
//! the tests below) sits behind the small [`Log`] trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::join_all;
use lodestone_store::StoreError;

use crate::ingestor::{Applied, Ingestor, MessageTrace, Origin, PERSIST_LINKS_MAX};
use crate::receipts::Receipts;
use lodestone_model::{DeadLetter, Receipt, RECEIPT_HEADER};
use crate::metrics::Counters;
use crate::offsets::{below_watermark, watermark_key, OffsetBook, Partition, Rebalances};

/// The log a worker consumes and produces to: where its dead letters go and its offsets are
/// committed.
pub trait Log {
    /// Resolves when the log has durably accepted a dead letter (or failed to).
    type Delivery: Future<Output = Result<(), String>> + Send;

    /// Queues a dead letter, waiting while the client's queue is full. Returns once queued, not
    /// when delivered; an error if the client refuses it outright.
    fn send_dead_letter(&self, letter: &DeadLetter) -> impl Future<Output = Result<Self::Delivery, String>> + Send;

    /// Commits, per partition, the offset of the next message to read. Returns after the log
    /// has the commit.
    fn commit(&self, offsets: BTreeMap<Partition, i64>) -> impl Future<Output = Result<(), String>> + Send;
}

/// One message of the log, as the worker needs it.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub origin: Origin,
    pub payload: &'a [u8],
    /// Header names and values (values that are not UTF-8 are left out).
    pub headers: Vec<(&'a str, &'a str)>,
}

impl Message<'_> {
    /// A header's value; names compare without case, as HTTP's do.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| *value)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("a dead letter was not delivered: {0}")]
    DeadLetterUndelivered(String),
    #[error("committing offsets: {0}")]
    Commit(String),
}

/// An [`Ingestor`] fed from a [`Log`].
pub struct Worker<L: Log> {
    ingestor: Ingestor,
    log: L,
    book: OffsetBook,
    /// Dead letters queued since the last checkpoint; it waits for all of them.
    pending_letters: Vec<L::Delivery>,
    rebalances: Rebalances,
    dead_letter_topic: String,
    hot_rows_max: usize,
    counters: Arc<Counters>,
    /// Where the receipts of messages that ask for one go (see [`crate::receipts`]).
    receipts: Arc<Receipts>,
    /// Contexts of the traced envelopes applied since the last checkpoint (at most
    /// [`PERSIST_LINKS_MAX`]): the persist's span links them.
    traced: Vec<String>,
}

impl<L: Log> Worker<L> {
    /// `rebalances` is where the log's client notes partitions that changed hands; messages of
    /// `dead_letter_topic` become rows of the rejected-records table.
    pub fn new(ingestor: Ingestor, log: L, rebalances: Rebalances, dead_letter_topic: String, hot_rows_max: usize, counters: Arc<Counters>) -> Self {
        let (book, pending_letters, receipts, traced) = Default::default();
        Worker { ingestor, log, book, pending_letters, rebalances, dead_letter_topic, hot_rows_max, counters, receipts, traced }
    }

    /// This worker keeping the receipts of messages that ask for one in `receipts`.
    pub fn with_receipts(mut self, receipts: Arc<Receipts>) -> Self {
        self.receipts = receipts;
        self
    }

    /// Applies one message to the hot tier (or skips it, below its partition's watermark) and
    /// queues its dead letters. Returns before anything is durable; a persist may run first when
    /// the hot tier is full (a whole [`checkpoint`](Self::checkpoint)).
    pub async fn handle(&mut self, message: &Message<'_>, now_ns: i64) -> Result<(), WorkerError> {
        self.book.forget(self.rebalances.take());
        let origin = &message.origin;
        Counters::add(&self.counters.messages_received, 1);
        let wants_receipt = message.header(RECEIPT_HEADER).is_some();
        if self.already_persisted(origin).await? {
            Counters::add(&self.counters.messages_skipped, 1);
            if wants_receipt {
                self.receipts.add(origin.partition, origin.offset, Receipt { replayed: true, ..Receipt::default() });
            }
        } else if origin.topic == self.dead_letter_topic {
            if self.ingestor.hot_rows() >= self.hot_rows_max {
                self.checkpoint().await?;
            }
            let headers: BTreeMap<String, String> = message.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            self.ingestor.apply_dead_letter(&headers, message.payload, origin, now_ns).await?;
        } else {
            let trace = MessageTrace { message: message.header("traceparent"), envelopes: message.header(lodestone_model::TRACEPARENTS_HEADER) };
            let (letters, receipt) = loop {
                match self.ingestor.apply(message.payload, message.header("content-type"), &trace, origin, now_ns).await? {
                    Applied::Done { letters, receipt, traced } => {
                        let room = PERSIST_LINKS_MAX.saturating_sub(self.traced.len());
                        self.traced.extend(traced.into_iter().take(room));
                        break (letters, receipt);
                    }
                    Applied::PersistFirst => self.checkpoint().await?,
                }
            };
            // Kept once applied, so that the writer waiting on it can query what it wrote.
            if wants_receipt {
                self.receipts.add(origin.partition, origin.offset, receipt);
            }
            for letter in letters {
                self.send_dead_letter(letter, origin).await;
            }
        }
        self.book.applied(&origin.topic, origin.partition, origin.offset);
        let _ = self.counters.unpersisted_since_ns.compare_exchange(0, now_ns, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Persists the hot tier with the watermarks of everything applied, waits for every dead
    /// letter's delivery, then commits the offsets. Returns after the commit: every message
    /// before a committed offset is in the catalog or in the dead-letter topic. On an error
    /// nothing more is committed, and Kafka replays from the last committed offset.
    pub async fn checkpoint(&mut self) -> Result<(), WorkerError> {
        self.book.forget(self.rebalances.take());
        if self.book.is_empty() {
            self.counters.unpersisted_since_ns.store(0, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        // The persist's span links the traced writes it makes durable.
        let span = tracing::info_span!("ingest.persist", rows = tracing::field::Empty);
        lodestone_kit::telemetry::link_to(&span, self.traced.drain(..).collect::<Vec<_>>().iter().map(String::as_str), PERSIST_LINKS_MAX);
        let rows = tracing::Instrument::instrument(self.ingestor.persist(&self.book.watermarks()), span.clone()).await?;
        span.record("rows", rows);
        for delivery in join_all(std::mem::take(&mut self.pending_letters)).await {
            delivery.map_err(WorkerError::DeadLetterUndelivered)?;
        }
        self.log.commit(self.book.take()).await.map_err(WorkerError::Commit)?;
        self.counters.unpersisted_since_ns.store(0, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(rows, "persisted and committed");
        Ok(())
    }

    /// Whether a message is below its partition's watermark in the catalog. A partition's
    /// watermark is loaded when it is first read after its assignment.
    async fn already_persisted(&mut self, origin: &Origin) -> Result<bool, WorkerError> {
        let key = watermark_key(&origin.topic, origin.partition);
        if self.book.first_read(&origin.topic, origin.partition) {
            self.ingestor.refresh().await?;
            let watermark = self.ingestor.persisted_through(&key);
            tracing::info!(topic = %origin.topic, partition = origin.partition, offset = origin.offset, ?watermark, "reading a partition");
        }
        Ok(below_watermark(origin.offset, self.ingestor.persisted_through(&key)))
    }

    /// Queues a dead letter; [`checkpoint`](Self::checkpoint) waits for its delivery. One the log
    /// refuses outright is counted as discarded, with the reason.
    async fn send_dead_letter(&mut self, letter: DeadLetter, origin: &Origin) {
        tracing::warn!(reason = %letter.reason, device_id = ?letter.device_id, offset = origin.offset, "rejected");
        match self.log.send_dead_letter(&letter).await {
            Ok(delivery) => self.pending_letters.push(delivery),
            Err(error) => {
                tracing::error!(%error, reason = %letter.reason, offset = origin.offset, "cannot queue a dead letter; it is discarded");
                self.counters.discard("dead_letter_refused_by_kafka");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use lodestone_model::{Dimension, Envelope, MeasureValue, Record, Scalar, Source};
    use lodestone_store::Store;

    use crate::config::TablesConfig;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const INGEST: &str = "ingest";
    const DEAD_LETTERS: &str = "dead-letters";

    /// What the fake log saw at a commit: the offsets, how far the catalog had persisted each
    /// partition, and how many dead letters were queued but not delivered yet.
    #[derive(Debug, Clone, PartialEq)]
    struct Commit {
        offsets: BTreeMap<Partition, i64>,
        persisted_through: BTreeMap<Partition, Option<u64>>,
        undelivered_letters: usize,
    }

    /// A log that records every commit with what was true at that moment. Its dead letters are
    /// delivered only when their delivery is awaited.
    #[derive(Clone)]
    struct FakeLog {
        store: Store,
        queued: Arc<AtomicUsize>,
        delivered: Arc<AtomicUsize>,
        commits: Arc<Mutex<Vec<Commit>>>,
    }

    impl Log for FakeLog {
        type Delivery = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

        async fn send_dead_letter(&self, _letter: &DeadLetter) -> Result<Self::Delivery, String> {
            self.queued.fetch_add(1, Ordering::SeqCst);
            let delivered = self.delivered.clone();
            Ok(Box::pin(async move {
                tokio::task::yield_now().await;
                delivered.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }))
        }

        async fn commit(&self, offsets: BTreeMap<Partition, i64>) -> Result<(), String> {
            let snapshot = self.store.snapshot().await.map_err(|e| e.to_string())?;
            let persisted_through =
                offsets.keys().map(|(topic, partition)| ((topic.clone(), *partition), snapshot.watermarks.get(&watermark_key(topic, *partition)).copied())).collect();
            let undelivered_letters = self.queued.load(Ordering::SeqCst) - self.delivered.load(Ordering::SeqCst);
            self.commits.lock().unwrap().push(Commit { offsets, persisted_through, undelivered_letters });
            Ok(())
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        log: FakeLog,
        rebalances: Rebalances,
        counters: Arc<Counters>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_local(dir.path()).unwrap();
            let log = FakeLog { store: store.clone(), queued: Default::default(), delivered: Default::default(), commits: Default::default() };
            Fixture { _dir: dir, store, log, rebalances: Rebalances::default(), counters: Arc::new(Counters::default()) }
        }

        /// A worker on the fixture's store and log, as a freshly started process would be.
        async fn worker(&self) -> Worker<FakeLog> {
            let ingestor = Ingestor::open(self.store.clone(), 1000, TablesConfig::default(), self.counters.clone()).await.unwrap();
            Worker::new(ingestor, self.log.clone(), self.rebalances.clone(), DEAD_LETTERS.into(), 1000, self.counters.clone())
        }

        fn commits(&self) -> Vec<Commit> {
            self.log.commits.lock().unwrap().clone()
        }
    }

    /// A CBOR envelope of `readings` good records from `device`, plus one with an empty measure
    /// name (rejected: a dead letter) when `with_bad_record`.
    fn envelope(device: &str, readings: usize, with_bad_record: bool) -> Vec<u8> {
        let record = |i: usize, measure_name: &str| Record {
            dimensions: vec![Dimension { name: "device_id".into(), value: device.into() }],
            measure_name: measure_name.into(),
            value: MeasureValue::Single(Scalar::Double(i as f64)),
            time_ns: NOW - 1_000_000_000 * (i as i64 + 1),
            version: 1,
        };
        let mut records: Vec<Record> = (0..readings).map(|i| record(i, "temp")).collect();
        if with_bad_record {
            records.push(record(readings, ""));
        }
        Envelope {
            database: Some("fleet".into()),
            table: Some("sensors".into()),
            source: Source { device_id: device.into(), boot_id: "boot".into() },
            first_seq: 1,
            records,
            ..Envelope::default()
        }
        .to_cbor()
    }

    fn message(partition: i32, offset: i64, payload: &[u8]) -> Message<'_> {
        Message { origin: Origin { topic: INGEST.into(), partition, offset }, payload, headers: vec![] }
    }

    fn offsets(entries: &[(i32, i64)]) -> BTreeMap<Partition, i64> {
        entries.iter().map(|(partition, offset)| ((INGEST.to_string(), *partition), *offset)).collect()
    }

    #[tokio::test]
    async fn offsets_are_committed_only_after_the_persist() {
        let fixture = Fixture::new();
        let mut worker = fixture.worker().await;
        let (first, second) = (envelope("dev-1", 3, false), envelope("dev-2", 2, false));
        worker.handle(&message(0, 10, &first), NOW).await.unwrap();
        worker.handle(&message(1, 4, &second), NOW).await.unwrap();
        assert!(fixture.commits().is_empty(), "nothing is committed before a checkpoint");
        worker.checkpoint().await.unwrap();
        let commits = fixture.commits();
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].offsets, offsets(&[(0, 11), (1, 5)]));
        // At the moment of the commit the catalog already held the files and the watermarks.
        let persisted: BTreeMap<Partition, i64> = commits[0].persisted_through.iter().map(|(p, w)| (p.clone(), w.map_or(-1, |w| w as i64))).collect();
        assert_eq!(persisted, commits[0].offsets, "an offset was committed before its messages were persisted");
        assert_eq!(fixture.counters.records_persisted.load(Ordering::Relaxed), 5);
        // A checkpoint with nothing new applied commits nothing.
        worker.checkpoint().await.unwrap();
        assert_eq!(fixture.commits().len(), 1);
    }

    #[tokio::test]
    async fn dead_letters_are_delivered_before_the_commit() {
        let fixture = Fixture::new();
        let mut worker = fixture.worker().await;
        let payload = envelope("dev-1", 2, true);
        worker.handle(&message(0, 0, &payload), NOW).await.unwrap();
        worker.handle(&message(0, 1, b"not an envelope"), NOW).await.unwrap();
        assert_eq!(fixture.log.queued.load(Ordering::SeqCst), 2, "one bad record and one undecodable message");
        worker.checkpoint().await.unwrap();
        let commits = fixture.commits();
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].undelivered_letters, 0, "offsets were committed before the dead letters were delivered");
        assert_eq!(commits[0].offsets, offsets(&[(0, 2)]));
    }

    #[tokio::test]
    async fn a_replay_below_the_watermark_stores_nothing_twice() {
        let fixture = Fixture::new();
        let (first, second, third) = (envelope("dev-1", 3, false), envelope("dev-2", 2, false), envelope("dev-3", 4, false));
        let mut worker = fixture.worker().await;
        worker.handle(&message(0, 0, &first), NOW).await.unwrap();
        worker.handle(&message(0, 1, &second), NOW).await.unwrap();
        worker.checkpoint().await.unwrap();

        // Another worker (or this one restarted, its Kafka offsets lost) reads from the start.
        let mut restarted = fixture.worker().await;
        restarted.handle(&message(0, 0, &first), NOW).await.unwrap();
        restarted.handle(&message(0, 1, &second), NOW).await.unwrap();
        restarted.handle(&message(0, 2, &third), NOW).await.unwrap();
        assert_eq!(fixture.counters.messages_skipped.load(Ordering::Relaxed), 2);
        restarted.checkpoint().await.unwrap();
        assert_eq!(fixture.counters.records_persisted.load(Ordering::Relaxed), 3 + 2 + 4);
        assert_eq!(fixture.commits().last().unwrap().offsets, offsets(&[(0, 3)]));
    }

    #[tokio::test]
    async fn a_partition_revoked_before_the_checkpoint_is_not_committed() {
        let fixture = Fixture::new();
        let mut worker = fixture.worker().await;
        let (first, second) = (envelope("dev-1", 1, false), envelope("dev-2", 1, false));
        worker.handle(&message(0, 5, &first), NOW).await.unwrap();
        worker.handle(&message(1, 9, &second), NOW).await.unwrap();
        fixture.rebalances.note([(INGEST.to_string(), 0)]);
        worker.checkpoint().await.unwrap();
        assert_eq!(fixture.commits()[0].offsets, offsets(&[(1, 10)]), "only the partition still held is committed");
    }

    /// A message that asks for a receipt gets one once applied, naming exactly the records that
    /// were rejected (a version conflict with the version it met); a replay below the watermark
    /// gets one saying so; a message that does not ask gets none.
    #[tokio::test]
    async fn messages_that_ask_for_a_receipt_get_one_naming_their_rejections() {
        use crate::receipts::Waited;
        let fixture = Fixture::new();
        let receipts = Arc::new(Receipts::default());
        receipts.set_assigned([0], true);
        let mut worker = fixture.worker().await.with_receipts(receipts.clone());
        let asking = |offset, payload| Message { headers: vec![(RECEIPT_HEADER, "1")], ..message(0, offset, payload) };
        let first = envelope("dev-1", 2, false);
        worker.handle(&asking(0, &first), NOW).await.unwrap();
        // The same keys with other values and no higher version: both conflict, at version 1.
        let conflicting = Envelope {
            records: Envelope::decode(&first, None, &lodestone_model::Limits::default(), NOW).unwrap().records.into_iter().map(|r| Record { value: MeasureValue::Single(Scalar::Double(99.0)), ..r }).collect(),
            ..Envelope::default()
        };
        let conflicting = Envelope { database: Some("fleet".into()), table: Some("sensors".into()), source: Source { device_id: "dev-1".into(), boot_id: "b".into() }, ..conflicting }.to_cbor();
        worker.handle(&asking(1, &conflicting), NOW).await.unwrap();
        worker.handle(&message(0, 2, &envelope("dev-2", 1, false)), NOW).await.unwrap();

        let receipt = |offset| {
            let receipts = receipts.clone();
            async move { receipts.wait(0, offset, std::time::Duration::ZERO).await }
        };
        assert_eq!(receipt(0).await, Waited::Applied(Receipt { envelopes: vec![vec![]], replayed: false }));
        let Waited::Applied(conflicts) = receipt(1).await else { panic!("no receipt for offset 1") };
        let found: Vec<(usize, &str, Option<u64>)> = conflicts.envelopes[0].iter().map(|r| (r.index, r.reason.as_str(), r.existing_version)).collect();
        assert_eq!(found, vec![(0, "version_conflict", Some(1)), (1, "version_conflict", Some(1))]);
        assert_eq!(receipt(2).await, Waited::Pending, "a message that did not ask has no receipt");

        worker.checkpoint().await.unwrap();
        let mut restarted = fixture.worker().await.with_receipts(receipts.clone());
        restarted.handle(&asking(0, &first), NOW).await.unwrap();
        assert_eq!(receipt(0).await, Waited::Applied(Receipt { envelopes: vec![], replayed: true }));
    }

    #[tokio::test]
    async fn a_dead_letter_topic_message_becomes_a_rejected_records_row() {
        let fixture = Fixture::new();
        let mut worker = fixture.worker().await;
        let letter = Message {
            origin: Origin { topic: DEAD_LETTERS.into(), partition: 0, offset: 3 },
            payload: b"{}",
            headers: vec![("reason", "malformed_payload"), ("source", "bridge"), ("device_id", "dev-9")],
        };
        worker.handle(&letter, NOW).await.unwrap();
        worker.checkpoint().await.unwrap();
        let commits = fixture.commits();
        assert_eq!(commits[0].offsets, BTreeMap::from([((DEAD_LETTERS.to_string(), 0), 4)]));
        assert_eq!(fixture.counters.records_persisted.load(Ordering::Relaxed), 1);
    }
}
