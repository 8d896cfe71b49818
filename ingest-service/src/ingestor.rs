//! The Kafka-free core of an ingest worker: envelopes in, hot-tier rows and dead letters out.

use std::collections::BTreeMap;
use std::sync::Arc;

use lodestone_model::{record_to_json, split_message, DeadLetter, DecodeError, Envelope, Limits, Receipt, ReceivedDeadLetter, RejectReason, RejectedBy, Rejection};
use lodestone_store::{Memory, Snapshot, Store, StoreError, TableProperties, TableRef};
use serde_json::json;

use crate::config::TablesConfig;
use crate::metrics::Counters;

/// Where a message came from, carried into its dead letters.
#[derive(Debug, Clone)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The traces a message continues: its `traceparent` header (the bridge's span of a single
/// envelope, or a Kafka producer's), and a bundle's per-envelope contexts
/// ([`lodestone_model::TRACEPARENTS_HEADER`]). An envelope without either continues its own
/// `traceparent` field.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageTrace<'a> {
    pub message: Option<&'a str>,
    pub envelopes: Option<&'a str>,
}

impl MessageTrace<'_> {
    /// The parent of envelope `index` of a message of `parts` envelopes.
    fn parent<'e>(&'e self, index: usize, parts: usize, envelope: &'e Envelope) -> Option<&'e str> {
        let listed = self.envelopes.and_then(|list| list.split(',').nth(index)).filter(|c| !c.is_empty());
        listed.or(self.message.filter(|_| parts == 1)).or(envelope.traceparent.as_deref())
    }
}

/// Links a persist span keeps to the envelopes it made durable at most.
pub const PERSIST_LINKS_MAX: usize = 128;

/// What [`Ingestor::apply`] did with a message.
#[derive(Debug)]
pub enum Applied {
    /// Written to the hot tier; these records (or the whole payload) were rejected, as dead
    /// letters and, per envelope, as the message's receipt. `traced`: the contexts of the spans
    /// of its traced envelopes, for the persist's links.
    Done { letters: Vec<DeadLetter>, receipt: Receipt, traced: Vec<String> },
    /// Nothing was written: the hot tier has no room for the message. Persist, then apply again.
    PersistFirst,
}

/// Where every rejection becomes a row: `"_lodestone"."rejected_records"`.
pub const REJECTED_RECORDS: (&str, &str) = (lodestone_store::REJECTED_RECORDS_DATABASE, lodestone_store::REJECTED_RECORDS_TABLE);

pub struct Ingestor {
    /// Time of the last rejected-records row, so that rows of one worker never share a key.
    last_rejection_ns: i64,
    store: Store,
    /// The rows not persisted yet, shared with the HTTP server that serves them to queries.
    memory: Memory,
    hot_rows_max: usize,
    snapshot: Snapshot,
    tables: TablesConfig,
    limits: Limits,
    counters: Arc<Counters>,
}

impl Ingestor {
    pub async fn open(store: Store, hot_rows_max: usize, tables: TablesConfig, counters: Arc<Counters>) -> Result<Ingestor, StoreError> {
        let snapshot = store.snapshot().await?;
        let memory = Memory::new(hot_rows_max, store.limits().clone());
        Ok(Ingestor { last_rejection_ns: 0, store, memory, hot_rows_max, snapshot, tables, limits: Limits::default(), counters })
    }

    pub fn hot_rows(&self) -> usize {
        self.memory.hot().row_count()
    }

    /// A handle on the rows this worker holds in memory, for serving them to queries.
    pub fn memory(&self) -> Memory {
        self.memory.clone()
    }

    /// Reloads the catalog snapshot (tables, schemas, watermarks).
    pub async fn refresh(&mut self) -> Result<(), StoreError> {
        self.snapshot = self.store.snapshot().await?;
        Ok(())
    }

    /// The input position up to which `source` (e.g. a Kafka partition) is already persisted,
    /// as committed in the catalog with the files (by any worker), in the last loaded snapshot.
    pub fn persisted_through(&self, source: &str) -> Option<u64> {
        self.snapshot.watermarks.get(source).copied()
    }

    /// Decodes one message (an envelope, or a bundle of them: its `content-type` header says) and writes its records into the
    /// hot tier. Returns before anything is durable: the caller must not commit the message's
    /// offset before [`Ingestor::persist`].
    pub async fn apply(&mut self, payload: &[u8], content_type: Option<&str>, trace: &MessageTrace<'_>, origin: &Origin, now_ns: i64) -> Result<Applied, StoreError> {
        let parts = match split_message(payload, content_type) {
            Ok(parts) => parts,
            Err(error) => {
                let receipt = Receipt::of(&[vec![Rejection::new(0, error.reason(), error.to_string())]]);
                let letter = DeadLetter::for_payload(RejectedBy::Ingest, error.reason(), error.to_string(), None, payload);
                self.counters.reject(letter.reason);
                return Ok(Applied::Done { letters: vec![letter], receipt, traced: Vec::new() });
            }
        };
        let decoded: Vec<Result<Envelope, (DecodeError, &[u8])>> = parts
            .into_iter()
            .map(|(part, content_type)| Envelope::decode(part, content_type, &self.limits, now_ns).map_err(|error| (error, part)))
            .collect();
        let rows: usize = decoded.iter().flatten().map(|envelope| envelope.records.len()).sum();
        let hot_rows = self.memory.hot().row_count();
        if hot_rows > 0 && hot_rows + rows > self.hot_rows_max {
            return Ok(Applied::PersistFirst);
        }
        let mut letters = Vec::new();
        let mut rejected = Vec::with_capacity(decoded.len());
        let mut traced = Vec::new();
        let parts = decoded.len();
        for (index, envelope) in decoded.into_iter().enumerate() {
            match envelope {
                Ok(envelope) => {
                    // A traced envelope has a span here, continuing the bridge's (or the device's).
                    let span = trace.parent(index, parts, &envelope).map(|parent| {
                        let span = tracing::info_span!("ingest.envelope", records = envelope.records.len(), partition = origin.partition, offset = origin.offset);
                        lodestone_kit::telemetry::continue_trace(&span, Some(parent));
                        span
                    });
                    let written = self.write(&envelope, origin, now_ns);
                    let (envelope_letters, rejections) = match &span {
                        Some(span) => tracing::Instrument::instrument(written, span.clone()).await?,
                        None => written.await?,
                    };
                    traced.extend(span.as_ref().and_then(lodestone_kit::telemetry::traceparent_of));
                    letters.extend(envelope_letters);
                    rejected.push(rejections);
                }
                Err((error, part)) => {
                    rejected.push(vec![Rejection::new(0, error.reason(), error.to_string())]);
                    let letter = DeadLetter::for_payload(RejectedBy::Ingest, error.reason(), error.to_string(), None, part);
                    self.counters.reject(letter.reason);
                    letters.push(letter);
                }
            }
        }
        Ok(Applied::Done { letters, receipt: Receipt::of(&rejected), traced })
    }

    /// Writes one envelope's records into the hot tier; returns the dead letters of those that
    /// were rejected, and the rejections by index.
    async fn write(&mut self, envelope: &Envelope, origin: &Origin, now_ns: i64) -> Result<(Vec<DeadLetter>, Vec<Rejection>), StoreError> {
        Counters::add(&self.counters.records_received, (envelope.records.len() + envelope.rejected.len()) as u64);
        let mut rejections: Vec<(Rejection, Option<serde_json::Value>)> = envelope.rejected.iter().map(|r| (r.clone(), None)).collect();
        match self.destination(envelope).await? {
            // Indexes as sent: `first_seq + index` is each record's sequence number in its
            // dead letter, also after records refused when decoding.
            Err(rejection) => {
                for (index, record) in envelope.record_indexes().zip(&envelope.records) {
                    rejections.push((Rejection { index, ..rejection.clone() }, Some(record_to_json(record))));
                }
            }
            Ok((table, properties)) => {
                let known = self.snapshot.table(&table).map(|t| t.schema.clone()).unwrap_or_default();
                let mut hot = self.memory.hot();
                for (index, record) in envelope.record_indexes().zip(&envelope.records) {
                    match hot.write(&table, &properties, &known, record.clone(), now_ns, index) {
                        Ok(_) => Counters::add(&self.counters.records_written, 1),
                        Err(rejection) => rejections.push((rejection, Some(record_to_json(record)))),
                    }
                }
                // New names go to the catalog now, not at the next persist: queries plan with the
                // catalog's schema and read the rows in memory through it.
                let learned = hot.table_schema(&table).filter(|learned| !known.covers(learned)).cloned();
                drop(hot);
                if let Some(learned) = learned {
                    self.snapshot = self.store.learn_schema(&table, &learned).await?;
                }
            }
        }
        for (rejection, _) in &rejections {
            self.counters.reject(rejection.reason);
        }
        let context = json!({"topic": origin.topic, "partition": origin.partition, "offset": origin.offset});
        let mut by_index: Vec<Rejection> = rejections.iter().map(|(rejection, _)| rejection.clone()).collect();
        by_index.sort_by_key(|rejection| rejection.index);
        Ok((DeadLetter::for_records(RejectedBy::Ingest, envelope, rejections, &context), by_index))
    }

    /// Writes one message of the dead-letter topic (from the bridge or any worker) into the
    /// `rejected_records` table: dimensions `reason`, `device_id`, `source`; measures `detail`,
    /// `payload` (both cut to 1 KiB), `records` (how many records the letter stands for), and the
    /// message's `dead_letter_partition` and `dead_letter_offset`. Returns before anything is durable, like [`Ingestor::apply`].
    pub async fn apply_dead_letter(&mut self, headers: &BTreeMap<String, String>, payload: &[u8], origin: &Origin, now_ns: i64) -> Result<(), StoreError> {
        let table = lodestone_store::rejected_records_table();
        if self.snapshot.table(&table).is_none() {
            self.snapshot = self.store.ensure_rejected_records().await?;
        }
        let entry = self.snapshot.table(&table).cloned().expect("table just ensured");
        let received = ReceivedDeadLetter::read(|name| headers.get(name).map(String::as_str), payload);
        self.last_rejection_ns = now_ns.max(self.last_rejection_ns + 1);
        let record = lodestone_store::Rejected {
            device_id: received.device_id,
            reason: received.reason,
            source: received.source,
            detail: received.detail,
            payload: String::from_utf8_lossy(payload).into_owned(),
            extra: vec![
                ("records".into(), lodestone_model::Scalar::Bigint(i64::try_from(received.records).unwrap_or(i64::MAX))),
                ("dead_letter_offset".into(), lodestone_model::Scalar::Bigint(origin.offset)),
                ("dead_letter_partition".into(), lodestone_model::Scalar::Bigint(i64::from(origin.partition))),
            ],
        }
        .into_record(self.last_rejection_ns);
        if let Err(rejection) = self.memory.hot().write(&table, &entry.properties, &entry.schema, record, now_ns, 0) {
            tracing::warn!(%rejection, "a dead letter could not be recorded in rejected_records");
        }
        Ok(())
    }

    /// The table an envelope goes to and its properties, creating it when allowed; or the
    /// rejection every record of the envelope gets.
    async fn destination(&mut self, envelope: &Envelope) -> Result<Result<(TableRef, TableProperties), Rejection>, StoreError> {
        let invalid = |reason, detail: String| Ok(Err(Rejection::new(0, reason, detail)));
        let (Some(database), Some(table)) = (&envelope.database, &envelope.table) else {
            return invalid(RejectReason::InvalidDestination, "an envelope on Kafka must name its database and table".into());
        };
        // Also for tables that exist: a producer may not write into Lodestone's own database.
        if let Err(detail) = lodestone_model::validate_name("database", database) {
            return invalid(RejectReason::InvalidDestination, detail);
        }
        let table = TableRef { database: database.clone(), table: table.clone() };
        if self.snapshot.table(&table).is_none() {
            self.snapshot = self.store.snapshot().await?;
        }
        if self.snapshot.table(&table).is_none() {
            if !self.tables.auto_create {
                return invalid(RejectReason::TableNotFound, format!("table {table} does not exist"));
            }
            let properties = TableProperties {
                memory_retention_hours: self.tables.memory_store_retention_hours,
                magnetic_retention_days: self.tables.magnetic_store_retention_days,
                magnetic_store_writes: self.tables.magnetic_store_writes,
            };
            match self.store.ensure_table(&table, properties).await {
                Ok(snapshot) => self.snapshot = snapshot,
                Err(StoreError::Invalid { detail, .. }) => return invalid(RejectReason::InvalidDestination, detail),
                Err(error @ StoreError::LimitReached { reason, .. }) => return invalid(reason, error.to_string()),
                Err(error) => return Err(error),
            }
        }
        let properties = self.snapshot.table(&table).map(|t| t.properties.clone()).unwrap_or_default();
        Ok(Ok((table, properties)))
    }

    /// Persists everything in the hot tier and commits `watermarks` with it. Returns after the
    /// catalog commit; the caller may commit its Kafka offsets up to the watermarks.
    pub async fn persist(&mut self, watermarks: &BTreeMap<String, u64>) -> Result<usize, StoreError> {
        // The drained rows stay visible to queries until their files are committed.
        let batch = self.memory.begin_persist();
        let rows = batch.row_count();
        let persisted = if rows > 0 || !watermarks.is_empty() { self.store.persist(&batch, watermarks).await.map(Some) } else { Ok(None) };
        self.memory.end_persist();
        if let Some(snapshot) = persisted? {
            self.snapshot = snapshot;
            Counters::add(&self.counters.records_persisted, rows as u64);
            Counters::add(&self.counters.persists, 1);
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{encode_bundle, Dimension, MeasureValue, Record, Scalar, Source, BUNDLE_MIME};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn envelope(device_id: &str, readings: usize) -> Envelope {
        Envelope {
            database: Some("fleet".into()),
            table: Some("sensors".into()),
            source: Source { device_id: device_id.into(), boot_id: "boot".into() },
            first_seq: 1,
            unacked_from: None,
            records: (0..readings)
                .map(|i| Record {
                    dimensions: vec![Dimension { name: "device_id".into(), value: device_id.into() }],
                    measure_name: "temp".into(),
                    value: MeasureValue::Single(Scalar::Double(i as f64)),
                    time_ns: NOW - 1_000_000_000 * (i as i64 + 1),
                    version: 1,
                })
                .collect(),
            ..Envelope::default()
        }
    }

    async fn ingestor(dir: &tempfile::TempDir, hot_rows_max: usize) -> Ingestor {
        let store = Store::open_local(dir.path()).unwrap();
        Ingestor::open(store, hot_rows_max, TablesConfig::default(), Arc::new(Counters::default())).await.unwrap()
    }

    fn origin() -> Origin {
        Origin { topic: "ingest".into(), partition: 0, offset: 7 }
    }

    fn done(applied: Applied) -> Vec<DeadLetter> {
        match applied {
            Applied::Done { letters, .. } => letters,
            Applied::PersistFirst => panic!("expected the message to be applied"),
        }
    }

    #[tokio::test]
    async fn a_bundle_is_applied_envelope_by_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingestor = ingestor(&dir, 1000).await;
        let bundle = encode_bundle(&[envelope("dev-1", 3).to_cbor(), b"\xa1\x61v\xff".to_vec(), envelope("dev-2", 2).to_cbor()]);
        let letters = done(ingestor.apply(&bundle, Some(BUNDLE_MIME), &MessageTrace::default(), &origin(), NOW).await.unwrap());
        // The malformed envelope alone is rejected, with its own bytes; both good ones are written.
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].reason, RejectReason::MalformedPayload);
        assert_eq!(letters[0].payload, b"\xa1\x61v\xff");
        assert_eq!(ingestor.hot_rows(), 5);

        let letters = done(ingestor.apply(b"\x82\x41", Some(BUNDLE_MIME), &MessageTrace::default(), &origin(), NOW).await.unwrap());
        assert_eq!(letters.iter().map(|l| l.reason).collect::<Vec<_>>(), vec![RejectReason::MalformedPayload]);
        assert_eq!(ingestor.hot_rows(), 5);
    }

    /// A record refused at the destination was given its position among the records that
    /// decoded, so after a record refused when decoding its dead letter named the wrong `seq`.
    #[tokio::test]
    async fn dead_letters_name_each_record_by_its_sequence_number_as_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingestor = ingestor(&dir, 1000).await;
        let hours_ago = |hours: i64| NOW - hours * 3_600_000_000_000;
        let record = |time: serde_json::Value| serde_json::json!({"measure_name": "m", "value": 1.0, "time": time, "time_unit": "ns"});
        let records = [record(hours_ago(1).into()), record("not a time".into()), record(hours_ago(24 * 400).into())];
        let payload = serde_json::json!({"v": 1, "database": "fleet", "table": "seqs", "source": {"device_id": "dev-seq"}, "first_seq": 100, "records": records});
        let letters = done(ingestor.apply(payload.to_string().as_bytes(), None, &MessageTrace::default(), &origin(), NOW).await.unwrap());
        let seq_of = |reason: RejectReason| {
            let letter = letters.iter().find(|l| l.reason == reason).unwrap_or_else(|| panic!("a {reason:?} letter in {letters:?}"));
            let body: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
            body["refused"][0]["seq"].as_u64()
        };
        assert_eq!(seq_of(RejectReason::InvalidValue), Some(101));
        assert_eq!(seq_of(RejectReason::TimeOutsideRetention), Some(102));
        assert_eq!(ingestor.hot_rows(), 1);
    }

    #[tokio::test]
    async fn a_bundle_that_does_not_fit_the_hot_tier_asks_for_a_persist_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingestor = ingestor(&dir, 10).await;
        done(ingestor.apply(&envelope("dev-0", 4).to_cbor(), None, &MessageTrace::default(), &origin(), NOW).await.unwrap());
        // 4 + 3 + 3 = 10 rows fit; 4 + 3 + 4 = 11 do not, and nothing of the bundle is written.
        let too_big = encode_bundle(&[envelope("dev-1", 3).to_cbor(), envelope("dev-2", 4).to_cbor()]);
        assert!(matches!(ingestor.apply(&too_big, Some(BUNDLE_MIME), &MessageTrace::default(), &origin(), NOW).await.unwrap(), Applied::PersistFirst));
        assert_eq!(ingestor.hot_rows(), 4);
        let fits = encode_bundle(&[envelope("dev-1", 3).to_cbor(), envelope("dev-2", 3).to_cbor()]);
        assert!(done(ingestor.apply(&fits, Some(BUNDLE_MIME), &MessageTrace::default(), &origin(), NOW).await.unwrap()).is_empty());
        assert_eq!(ingestor.hot_rows(), 10);
    }
}
