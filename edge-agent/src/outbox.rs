//! The outbox: an LMDB environment (heed) holding every reading from the moment it is accepted
//! until the bridge acknowledges it end to end.
//!
//! Layout: database `entries` maps a sequence number (u64 big-endian, so keys sort by number) to
//! the CBOR of a one-record [`Envelope`] carrying the destination and `first_seq` = that number;
//! database `meta` holds `next_seq` and `acked_through`. Sequence numbers start at 1, are
//! assigned only inside a committed transaction, and so are gap-free and survive restarts.
//!
//! [`Outbox`] is synchronous and may be shared (it is a cheap clone); only one thread should
//! write (see [`crate::writer`]), any number may read. Every write is one LMDB transaction that
//! is synced to disk before the call returns.

use std::path::{Path, PathBuf};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvOpenOptions, RoTxn};
use lodestone_model::{ContentType, Envelope, Limits, Record, Source};

pub use crate::config::FullPolicy;

type SeqKey = U64<BigEndian>;

const META_NEXT_SEQ: &str = "next_seq";
const META_ACKED_THROUGH: &str = "acked_through";
/// The LMDB map size is rounded up to a multiple of this (every common page size divides it).
const MAP_ALIGN_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutboxError {
    /// The stored readings would take more than the admission bound (90% of `bytes_max`).
    #[error("the outbox is full ({bytes_max} bytes); nothing of this write was stored")]
    Full { bytes_max: u64 },
    /// One write that would not fit even into an empty outbox: retrying cannot help.
    #[error("this write alone would take more than the outbox holds ({bytes_max} bytes); it can never be stored, split it")]
    TooLarge { bytes_max: u64 },
    #[error("outbox {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("outbox storage error: {0}")]
    Storage(String),
    /// The writer task has stopped (shutdown, or it failed); nothing more can be stored.
    #[error("the outbox writer has stopped")]
    WriterStopped,
}

impl From<heed::Error> for OutboxError {
    fn from(error: heed::Error) -> Self {
        OutboxError::Storage(error.to_string())
    }
}

/// Where a reading goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub database: String,
    pub table: String,
}

/// One caller's readings for one destination: stored all together or not at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    pub destination: Destination,
    pub records: Vec<Record>,
    /// The trace the write that brought them belongs to (W3C `traceparent`), kept with each
    /// record so that the envelope forwarding it continues that trace.
    pub traceparent: Option<String>,
}

/// Sequence numbers `first..=last` (empty when `last < first`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl SeqRange {
    pub fn len(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// One range per [`Append`], in order.
    pub ranges: Vec<SeqRange>,
    /// Entries deleted by the release.
    pub released: u64,
    /// The next sequence number to be assigned, after this commit.
    pub next_seq: u64,
    /// Unacknowledged entries deleted to make room ([`FullPolicy::DropOldest`]).
    pub dropped: u64,
}

/// A stored reading, as read back for forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    pub seq: u64,
    pub destination: Destination,
    pub record: Record,
    /// The trace of the write that brought it, if it came with one.
    pub traceparent: Option<String>,
    /// Size of the stored one-record envelope: an upper bound on what the record adds to a
    /// forwarded envelope.
    pub stored_bytes: usize,
}

/// Entries read from the outbox, oldest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReadBatch {
    /// May have gaps where an entry could not be decoded (logged as an error and skipped).
    pub entries: Vec<StoredEntry>,
    /// The last sequence number looked at, decoded or not; `None` when nothing was there.
    pub scanned_through: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Readings stored and not yet acknowledged.
    pub entries: u64,
    /// Pages those readings take, in bytes.
    pub bytes: u64,
    pub next_seq: u64,
    /// Every reading up to this sequence number was acknowledged and deleted (0: none yet).
    pub acked_through: u64,
}

#[derive(Clone)]
pub struct Outbox {
    env: Env,
    entries: Database<SeqKey, Bytes>,
    meta: Database<Str, SeqKey>,
    source: Source,
    admission_bytes_max: u64,
    bytes_max: u64,
    full_policy: FullPolicy,
    /// Entries dropped by this process (all clones share it); a change tells the forwarder that
    /// the sequence it was sending has a hole.
    dropped_total: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Outbox {
    /// An event that fires once every handle of this outbox is dropped and LMDB has closed it.
    pub fn closing_event(&self) -> heed::EnvClosingEvent {
        self.env.clone().prepare_for_closing()
    }

    /// Opens the outbox at `path` (creating the directory and the databases when missing) with an
    /// LMDB map of `bytes_max` bytes (rounded up to 64 KiB). `source` goes into every stored
    /// envelope.
    pub fn open(path: &Path, bytes_max: u64, source: Source) -> Result<Outbox, OutboxError> {
        let open_error = |detail: String| OutboxError::Open { path: path.to_path_buf(), detail };
        std::fs::create_dir_all(path).map_err(|e| open_error(format!("cannot create the directory: {e}")))?;
        let map_bytes = bytes_max.div_ceil(MAP_ALIGN_BYTES) * MAP_ALIGN_BYTES;
        let map_size = usize::try_from(map_bytes).map_err(|_| open_error(format!("bytes_max {bytes_max} is too large")))?;
        // SAFETY: LMDB memory-maps the files in `path`. They must not be modified other than
        // through LMDB; the outbox directory belongs to this agent, and LMDB's own lock file
        // coordinates any other process that opens it through LMDB.
        let env = unsafe { EnvOpenOptions::new().map_size(map_size).max_dbs(2).open(path) }.map_err(|e| open_error(e.to_string()))?;
        let mut txn = env.write_txn()?;
        let entries = env.create_database(&mut txn, Some("entries"))?;
        let meta: Database<Str, SeqKey> = env.create_database(&mut txn, Some("meta"))?;
        txn.commit()?;
        Ok(Outbox {
            env,
            entries,
            meta,
            source,
            admission_bytes_max: map_bytes / 10 * 9,
            bytes_max,
            full_policy: FullPolicy::RejectNew,
            dropped_total: Default::default(),
        })
    }

    /// What a commit does when the appended readings would not fit (reject by default).
    pub fn with_full_policy(mut self, policy: FullPolicy) -> Outbox {
        self.full_policy = policy;
        self
    }

    /// Entries this process dropped to make room, since it opened the outbox.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends `appends` in order, each under consecutive sequence numbers, in ONE transaction.
    /// Returns after the LMDB commit; the caller may acknowledge the readings. All or nothing:
    /// on error nothing was stored.
    pub fn append(&self, appends: &[Append]) -> Result<Vec<SeqRange>, OutboxError> {
        self.commit(appends, None).map(|committed| committed.ranges)
    }

    /// Deletes every entry with a sequence number up to `through` in one transaction and records
    /// `through` as acknowledged. Returns after the LMDB commit, with the number deleted.
    pub fn release_through(&self, through: u64) -> Result<u64, OutboxError> {
        self.commit(&[], Some(through)).map(|committed| committed.released)
    }

    /// The group commit: first the release (if any), then every append, in ONE transaction.
    /// Returns after the LMDB commit (synced); the caller may acknowledge the appended readings.
    /// Refused with [`OutboxError::Full`] (nothing stored, nothing released) when the appended
    /// readings would not fit, or [`OutboxError::TooLarge`] when they are one write that would
    /// not fit even if the outbox held nothing else (with `drop_oldest`, after dropping all).
    pub fn commit(&self, appends: &[Append], release_through: Option<u64>) -> Result<Committed, OutboxError> {
        match self.commit_once(appends, release_through) {
            Err(OutboxError::Full { bytes_max })
                if appends.len() == 1 && (self.full_policy == FullPolicy::DropOldest || self.holds_nothing()?) =>
            {
                Err(OutboxError::TooLarge { bytes_max })
            }
            result => result,
        }
    }

    fn holds_nothing(&self) -> Result<bool, OutboxError> {
        let txn = self.env.read_txn()?;
        Ok(self.entries.is_empty(&txn)?)
    }

    fn commit_once(&self, appends: &[Append], release_through: Option<u64>) -> Result<Committed, OutboxError> {
        let mut txn = self.env.write_txn()?;
        let mut next_seq = self.read_next_seq(&txn)?;
        let mut released = 0;
        if let Some(through) = release_through {
            released = self.entries.delete_range(&mut txn, &(..=through))? as u64;
            let acked = self.meta.get(&txn, META_ACKED_THROUGH)?.unwrap_or(0);
            if through > acked {
                self.meta.put(&mut txn, META_ACKED_THROUGH, &through)?;
            }
        }
        let first_appended = next_seq;
        let encoded: Vec<(u64, Vec<u8>)> = appends
            .iter()
            .flat_map(|append| append.records.iter().map(move |record| (append, record)))
            .enumerate()
            .map(|(i, (append, record))| (first_appended + i as u64, self.encode(first_appended + i as u64, &append.destination, record, append.traceparent.as_deref())))
            .collect();
        let mut dropped = 0;
        if self.full_policy == FullPolicy::DropOldest && !encoded.is_empty() {
            // Room first, so that the puts below do not fill the map: each entry takes about
            // twice its bytes in pages (keys, page headers, half-full leaves).
            let incoming: u64 = encoded.iter().map(|(_, value)| 2 * (value.len() as u64 + 16)).sum();
            dropped += self.drop_oldest(&mut txn, self.admission_bytes_max.saturating_sub(incoming), first_appended)?;
        }
        for (seq, value) in &encoded {
            self.entries.put(&mut txn, seq, value).map_err(|e| self.full_or(e))?;
        }
        next_seq += encoded.len() as u64;
        let mut ranges = Vec::with_capacity(appends.len());
        let mut first = first_appended;
        for append in appends {
            let last = first + append.records.len() as u64;
            ranges.push(SeqRange { first, last: last.wrapping_sub(1) });
            first = last;
        }
        if !appends.is_empty() {
            if self.entries_bytes(&txn)? > self.admission_bytes_max {
                match self.full_policy {
                    FullPolicy::RejectNew => return Err(OutboxError::Full { bytes_max: self.bytes_max }),
                    FullPolicy::DropOldest => dropped += self.drop_oldest(&mut txn, self.admission_bytes_max, first_appended)?,
                }
            }
            self.meta.put(&mut txn, META_NEXT_SEQ, &next_seq).map_err(|e| self.full_or(e))?;
        }
        txn.commit().map_err(|e| self.full_or(e))?;
        if dropped > 0 {
            self.dropped_total.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Committed { ranges, released, next_seq, dropped })
    }

    /// Deletes the oldest entries (all below `keep_from`, the first one being appended) until
    /// the stored entries take at most `bytes` of pages; their count. [`OutboxError::Full`] when
    /// even that is not enough: a write larger than the whole quota.
    fn drop_oldest(&self, txn: &mut heed::RwTxn, bytes: u64, keep_from: u64) -> Result<u64, OutboxError> {
        let mut dropped = 0;
        loop {
            let used = self.entries_bytes(txn)?;
            if used <= bytes {
                return Ok(dropped);
            }
            let Some((oldest, _)) = self.entries.first(txn)? else { return Ok(dropped) };
            if oldest >= keep_from {
                return Err(OutboxError::Full { bytes_max: self.bytes_max });
            }
            // Pages per entry vary; aim at the excess plus 1% of the entries, so that a commit
            // takes a few rounds at most.
            let count = self.entries.len(txn)?.max(1);
            let per_entry = (used / count).max(1);
            let batch = ((used - bytes) / per_entry + 1).max(count / 100).max(1);
            let through = (oldest + batch - 1).min(keep_from - 1);
            dropped += self.entries.delete_range(txn, &(oldest..=through))? as u64;
        }
    }

    /// Reads up to `max_entries` entries with sequence numbers from `from` on, oldest first.
    pub fn read_from(&self, from: u64, max_entries: usize) -> Result<ReadBatch, OutboxError> {
        let txn = self.env.read_txn()?;
        let mut batch = ReadBatch::default();
        for item in self.entries.range(&txn, &(from..))?.take(max_entries) {
            let (seq, bytes) = item?;
            batch.scanned_through = Some(seq);
            match decode_entry(seq, bytes) {
                Ok(entry) => batch.entries.push(entry),
                Err(detail) => tracing::error!(seq, %detail, "skipping an outbox entry that cannot be decoded"),
            }
        }
        Ok(batch)
    }

    pub fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let txn = self.env.read_txn()?;
        Ok(OutboxStatus {
            entries: self.entries.len(&txn)?,
            bytes: self.entries_bytes(&txn)?,
            next_seq: self.read_next_seq(&txn)?,
            acked_through: self.meta.get(&txn, META_ACKED_THROUGH)?.unwrap_or(0),
        })
    }

    pub fn path(&self) -> &Path {
        self.env.path()
    }

    fn read_next_seq(&self, txn: &RoTxn) -> Result<u64, OutboxError> {
        let stored = self.meta.get(txn, META_NEXT_SEQ)?.unwrap_or(1);
        let after_last = self.entries.last(txn)?.map_or(1, |(seq, _)| seq + 1);
        Ok(stored.max(after_last))
    }

    fn entries_bytes(&self, txn: &RoTxn) -> Result<u64, OutboxError> {
        let stat = self.entries.stat(txn)?;
        let pages = stat.branch_pages + stat.leaf_pages + stat.overflow_pages;
        Ok(pages as u64 * u64::from(stat.page_size))
    }

    fn encode(&self, seq: u64, destination: &Destination, record: &Record, traceparent: Option<&str>) -> Vec<u8> {
        Envelope {
            database: Some(destination.database.clone()),
            table: Some(destination.table.clone()),
            source: self.source.clone(),
            first_seq: seq,
            unacked_from: None,
            records: vec![record.clone()],
            rejected: Vec::new(),
            traceparent: traceparent.map(str::to_string),
        }
        .to_cbor()
    }

    fn full_or(&self, error: heed::Error) -> OutboxError {
        match error {
            heed::Error::Mdb(heed::MdbError::MapFull) => OutboxError::Full { bytes_max: self.bytes_max },
            other => other.into(),
        }
    }
}

fn decode_entry(seq: u64, bytes: &[u8]) -> Result<StoredEntry, String> {
    // Stored records were validated when they arrived; a clock at the end of time skips the
    // "too far in the future" check, which could only have passed then.
    let envelope = Envelope::decode(bytes, Some(ContentType::Cbor), &Limits::default(), i64::MAX).map_err(|e| e.to_string())?;
    let Envelope { database: Some(database), table: Some(table), mut records, rejected, first_seq, traceparent, .. } = envelope else {
        return Err("entry has no destination".into());
    };
    if records.len() != 1 || !rejected.is_empty() || first_seq != seq {
        return Err(format!("entry holds {} records, {} rejected, first_seq {first_seq}", records.len(), rejected.len()));
    }
    let record = records.pop().expect("one record");
    Ok(StoredEntry { seq, destination: Destination { database, table }, record, traceparent, stored_bytes: bytes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{Dimension, MeasureValue, Scalar};

    const MIB: u64 = 1 << 20;

    fn source() -> Source {
        Source { device_id: "dev-1".into(), boot_id: "b00t".into() }
    }

    fn record(i: i64) -> Record {
        Record {
            dimensions: vec![Dimension { name: "sensor".into(), value: "s1".into() }],
            measure_name: "temperature".into(),
            value: MeasureValue::Single(Scalar::Double(i as f64)),
            time_ns: 1_700_000_000_000_000_000 + i,
            version: 1,
        }
    }

    fn append(table: &str, n: i64) -> Append {
        Append { destination: Destination { database: "iot".into(), table: table.into() }, records: (0..n).map(record).collect(), traceparent: None }
    }

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox.read_from(0, usize::MAX).unwrap().entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn append_assigns_consecutive_seqs_per_caller() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 16 * MIB, source()).unwrap();
        let ranges = outbox.append(&[append("a", 3), append("b", 0), append("b", 2)]).unwrap();
        assert_eq!(ranges, vec![SeqRange { first: 1, last: 3 }, SeqRange { first: 4, last: 3 }, SeqRange { first: 4, last: 5 }]);
        assert_eq!(ranges.iter().map(SeqRange::len).collect::<Vec<_>>(), vec![3, 0, 2]);
        let batch = outbox.read_from(2, 3).unwrap();
        let got: Vec<_> = batch.entries.iter().map(|e| (e.seq, e.destination.table.as_str(), e.record.clone())).collect();
        assert_eq!(got, vec![(2, "a", record(1)), (3, "a", record(2)), (4, "b", record(0))]);
        assert_eq!(batch.scanned_through, Some(4));
        assert_eq!(outbox.read_from(6, 10).unwrap(), ReadBatch::default());
        let status = outbox.status().unwrap();
        assert_eq!((status.entries, status.next_seq, status.acked_through), (5, 6, 0));
        assert!(status.bytes > 0);
    }

    #[test]
    fn release_deletes_through_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 16 * MIB, source()).unwrap();
        outbox.append(&[append("a", 5)]).unwrap();
        assert_eq!(outbox.release_through(3).unwrap(), 3);
        assert_eq!(seqs(&outbox), vec![4, 5]);
        assert_eq!(outbox.release_through(2).unwrap(), 0, "an older ack releases nothing");
        let status = outbox.status().unwrap();
        assert_eq!((status.entries, status.next_seq, status.acked_through), (2, 6, 3));
        let committed = outbox.commit(&[append("a", 1)], Some(5)).unwrap();
        assert_eq!(committed, Committed { ranges: vec![SeqRange { first: 6, last: 6 }], released: 2, next_seq: 7, dropped: 0 });
        assert_eq!(seqs(&outbox), vec![6]);
    }

    #[test]
    fn reopen_keeps_entries_and_next_seq() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 16 * MIB, source()).unwrap();
            outbox.append(&[append("a", 4)]).unwrap();
            outbox.release_through(4).unwrap();
            outbox.append(&[append("a", 2)]).unwrap();
        }
        let outbox = Outbox::open(dir.path(), 16 * MIB, source()).unwrap();
        assert_eq!(seqs(&outbox), vec![5, 6]);
        outbox.release_through(6).unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path(), 16 * MIB, source()).unwrap();
        assert_eq!(outbox.status().unwrap(), OutboxStatus { entries: 0, bytes: 0, next_seq: 7, acked_through: 6 });
        assert_eq!(outbox.append(&[append("a", 1)]).unwrap(), vec![SeqRange { first: 7, last: 7 }]);
    }

    #[test]
    fn full_outbox_refuses_whole_appends_and_recovers_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), MIB, source()).unwrap();
        let mut stored = 0;
        let err = loop {
            match outbox.append(&[append("a", 100)]) {
                Ok(_) => stored += 100,
                Err(err) => break err,
            }
            assert!(stored < 100_000, "a 1 MiB outbox never filled up");
        };
        assert_eq!(err, OutboxError::Full { bytes_max: MIB });
        assert!(stored > 0);
        assert_eq!(outbox.status().unwrap().entries, stored, "the refused append stored nothing");
        assert_eq!(outbox.release_through(stored).unwrap(), stored);
        assert_eq!(outbox.append(&[append("a", 100)]).unwrap(), vec![SeqRange { first: stored + 1, last: stored + 100 }]);
        // A write that would not fit into the empty outbox either can never be stored.
        outbox.release_through(stored + 100).unwrap();
        assert_eq!(outbox.append(&[append("a", 20_000)]).unwrap_err(), OutboxError::TooLarge { bytes_max: MIB });
        assert_eq!(outbox.status().unwrap().entries, 0);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_readings_within_the_quota_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), MIB, source()).unwrap().with_full_policy(FullPolicy::DropOldest);
        let mut dropped = 0;
        for _ in 0..200 {
            let committed = outbox.commit(&[append("a", 100)], None).unwrap();
            dropped += committed.dropped;
            assert!(outbox.status().unwrap().bytes <= MIB / 10 * 9, "within the admission bound after every commit");
        }
        assert!(dropped > 0, "20,000 readings do not fit in 1 MiB");
        assert_eq!(outbox.dropped_total(), dropped);
        let kept = seqs(&outbox);
        assert_eq!(kept.len() as u64 + dropped, 20_000, "every reading is kept or counted as dropped");
        let expected: Vec<u64> = (dropped + 1..=20_000).collect();
        assert_eq!(kept, expected, "the newest are kept, gap-free");
        // A write larger than the whole quota is refused as one that can never fit, and drops
        // nothing.
        assert_eq!(outbox.commit(&[append("a", 20_000)], None).unwrap_err(), OutboxError::TooLarge { bytes_max: MIB });
        assert_eq!(seqs(&outbox), expected);
    }
}
