//! The one writer of the outbox: a dedicated thread that owns every LMDB write transaction and
//! does group commit.
//!
//! Callers hold an [`OutboxWriter`] and send their readings (or a release) over a bounded channel
//! with a oneshot for the reply. The thread takes one request, drains whatever else is pending
//! (up to `commit_batch_max` records), writes all of it in one transaction, commits (one sync),
//! then answers every caller. One commit costs about two fsyncs whatever its size, so the
//! throughput comes from the batching. After each commit the next sequence number is published
//! on a watch channel, which wakes the forwarder.
//!
//! When the outbox is full, the group commit is refused as a whole; the thread then retries the
//! release on its own and each append on its own, so that one large write does not fail the
//! others and an ack still frees space.
//!
//! The thread ends once every [`OutboxWriter`] is dropped and the requests already queued are
//! committed.

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::outbox::{Append, Destination, Outbox, OutboxError, SeqRange};
use lodestone_model::Record;

enum Request {
    Append { append: Append, reply: oneshot::Sender<Result<SeqRange, OutboxError>> },
    Release { through: u64, reply: oneshot::Sender<Result<u64, OutboxError>> },
}

impl Request {
    fn records(&self) -> usize {
        match self {
            Request::Append { append, .. } => append.records.len(),
            Request::Release { .. } => 0,
        }
    }
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct OutboxWriter {
    requests: mpsc::Sender<Request>,
}

impl OutboxWriter {
    /// Stores `records` for `destination` under consecutive sequence numbers, all or nothing.
    /// Returns after the LMDB commit that holds them; the caller may acknowledge the readings.
    /// Waits (backpressure) while `pending_requests_max` writes are already queued.
    /// `traceparent`: the trace the write belongs to, kept with the records.
    pub async fn append(&self, destination: Destination, records: Vec<Record>, traceparent: Option<String>) -> Result<SeqRange, OutboxError> {
        let (reply, answer) = oneshot::channel();
        let append = Append { destination, records, traceparent };
        self.requests.send(Request::Append { append, reply }).await.map_err(|_| OutboxError::WriterStopped)?;
        answer.await.map_err(|_| OutboxError::WriterStopped)?
    }

    /// Deletes every entry with a sequence number up to `through`. Returns after the LMDB commit,
    /// with the number of entries deleted.
    pub async fn release_through(&self, through: u64) -> Result<u64, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Release { through, reply }).await.map_err(|_| OutboxError::WriterStopped)?;
        answer.await.map_err(|_| OutboxError::WriterStopped)?
    }
}

/// Starts the writer thread. Returns the handle to write through, a watch of the next sequence
/// number to be assigned (it changes after each commit that appended), and the thread to join
/// at shutdown.
pub fn spawn_writer(
    outbox: Outbox,
    commit_batch_max: usize,
    pending_requests_max: usize,
) -> Result<(OutboxWriter, watch::Receiver<u64>, JoinHandle<()>), OutboxError> {
    let next_seq = outbox.status()?.next_seq;
    let (committed_tx, committed_rx) = watch::channel(next_seq);
    let (requests_tx, requests_rx) = mpsc::channel(pending_requests_max);
    let thread = std::thread::Builder::new()
        .name("outbox-writer".into())
        .spawn(move || run(outbox, requests_rx, commit_batch_max, committed_tx))
        .map_err(|e| OutboxError::Storage(format!("cannot start the writer thread: {e}")))?;
    Ok((OutboxWriter { requests: requests_tx }, committed_rx, thread))
}

fn run(outbox: Outbox, mut requests: mpsc::Receiver<Request>, commit_batch_max: usize, committed: watch::Sender<u64>) {
    while let Some(first) = requests.blocking_recv() {
        let mut records = first.records();
        let mut group = vec![first];
        while records < commit_batch_max {
            let Ok(next) = requests.try_recv() else { break };
            records += next.records();
            group.push(next);
        }
        commit_group(&outbox, group, &committed);
    }
    tracing::debug!("outbox writer stopped");
}

fn commit_group(outbox: &Outbox, group: Vec<Request>, committed: &watch::Sender<u64>) {
    let mut appends = Vec::new();
    let mut append_replies = Vec::new();
    let mut release_through = None;
    let mut release_replies = Vec::new();
    for request in group {
        match request {
            Request::Append { append, reply } => {
                appends.push(append);
                append_replies.push(reply);
            }
            Request::Release { through, reply } => {
                release_through = release_through.max(Some(through));
                release_replies.push(reply);
            }
        }
    }
    let units = appends.len() + usize::from(release_through.is_some());
    match outbox.commit(&appends, release_through) {
        Ok(done) => {
            publish_next_seq(committed, done.next_seq, !appends.is_empty());
            answer_releases(release_replies, Ok(done.released));
            for (reply, range) in append_replies.into_iter().zip(done.ranges) {
                let _ = reply.send(Ok(range));
            }
        }
        Err(OutboxError::Full { .. }) if units > 1 => {
            tracing::debug!(appends = appends.len(), "outbox full for the group; committing each write alone");
            if let Some(through) = release_through {
                answer_releases(release_replies, outbox.release_through(through));
            }
            for (append, reply) in appends.into_iter().zip(append_replies) {
                let result = outbox.commit(std::slice::from_ref(&append), None);
                if let Ok(done) = &result {
                    publish_next_seq(committed, done.next_seq, true);
                }
                let _ = reply.send(result.map(|done| done.ranges[0]));
            }
        }
        Err(error) => {
            if !matches!(error, OutboxError::Full { .. } | OutboxError::TooLarge { .. }) {
                tracing::error!(%error, "outbox commit failed");
            }
            answer_releases(release_replies, Err(error.clone()));
            for reply in append_replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn publish_next_seq(committed: &watch::Sender<u64>, next_seq: u64, appended: bool) {
    if appended {
        committed.send_replace(next_seq);
    }
}

/// The first release request gets the count; any later one in the same group gets 0, so that
/// deletions are counted once.
fn answer_releases(replies: Vec<oneshot::Sender<Result<u64, OutboxError>>>, result: Result<u64, OutboxError>) {
    for (i, reply) in replies.into_iter().enumerate() {
        let _ = reply.send(result.clone().map(|released| if i == 0 { released } else { 0 }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{MeasureValue, Scalar, Source};

    fn record(i: i64) -> Record {
        Record {
            dimensions: vec![],
            measure_name: "m".into(),
            value: MeasureValue::Single(Scalar::Bigint(i)),
            time_ns: i,
            version: 1,
        }
    }

    fn destination() -> Destination {
        Destination { database: "iot".into(), table: "readings".into() }
    }

    #[tokio::test]
    async fn concurrent_writers_get_disjoint_ranges_and_thread_ends_when_handles_drop() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 16 << 20, Source::default()).unwrap();
        let (writer, mut committed, thread) = spawn_writer(outbox.clone(), 10_000, 64).unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.append(destination(), (0..i + 1).map(record).collect(), None).await.unwrap() })
            })
            .collect();
        let mut ranges = Vec::new();
        for task in tasks {
            ranges.push(task.await.unwrap());
        }
        ranges.sort_by_key(|r| r.first);
        let total: u64 = ranges.iter().map(SeqRange::len).sum();
        assert_eq!(total, (1..=20).sum::<u64>());
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].last + 1, pair[1].first, "ranges are consecutive: {ranges:?}");
        }
        assert_eq!(*committed.borrow_and_update(), total + 1);
        assert_eq!(writer.release_through(10).await.unwrap(), 10);
        assert_eq!(outbox.status().unwrap().entries, total - 10);
        drop(writer);
        tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
        assert!(matches!(committed.changed().await, Err(_)), "the watch closes with the thread");
    }

    #[test]
    fn a_write_too_big_for_the_outbox_does_not_fail_the_rest_of_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20, Source::default()).unwrap();
        outbox.append(&[Append { destination: destination(), records: (0..10).map(record).collect(), traceparent: None }]).unwrap();
        let (committed, watch) = watch::channel(0);
        let (big_reply, big) = oneshot::channel();
        let (small_reply, small) = oneshot::channel();
        let (release_reply, release) = oneshot::channel();
        let group = vec![
            Request::Append { append: Append { destination: destination(), records: (0..50_000).map(record).collect(), traceparent: None }, reply: big_reply },
            Request::Release { through: 4, reply: release_reply },
            Request::Append { append: Append { destination: destination(), records: vec![record(1)], traceparent: None }, reply: small_reply },
        ];
        commit_group(&outbox, group, &committed);
        assert!(matches!(big.blocking_recv().unwrap(), Err(OutboxError::Full { .. })));
        assert_eq!(release.blocking_recv().unwrap(), Ok(4));
        assert_eq!(small.blocking_recv().unwrap(), Ok(SeqRange { first: 11, last: 11 }));
        assert_eq!(*watch.borrow(), 12);
        assert_eq!(outbox.status().unwrap().entries, 7);
    }
}
