//! `WriteRecords`' path to the store: records to the ingest topic like any Kafka producer's, then
//! the workers' receipts, so that the answer lists exactly the records they rejected and comes
//! only once the rest can be queried.
//!
//! A record goes to the partition of its series (FNV-1a of database, table, dimensions and
//! measure name, [`lodestone_model::topic::partition_of`]), so one series is always applied by
//! one worker in order and a version conflict is found when it is written, as Timestream finds
//! it. One call becomes one envelope per partition it touches, each asking for a receipt
//! ([`lodestone_model::RECEIPT_HEADER`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lodestone_kit::kafka::{partition_count, producer_config, send_waiting_for_room};
use lodestone_model::{Envelope, Record, RejectedRecord, Source, RECEIPT_HEADER};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::memory::MemoryClient;

/// How long the topic's partition count is trusted before it is asked again.
const PARTITIONS_TTL: Duration = Duration::from_secs(60);

/// Why a write got no answer from the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("Kafka did not take the records: {0}")]
    Kafka(String),
    /// Kafka has the records, but no worker applied them within the wait: they will be
    /// applied, and writing them again is safe (the same values are no-ops).
    #[error("the records are in Kafka but were not applied within {0} ms (ingest is behind); retrying is safe")]
    NotApplied(u64),
}

/// Writes records into the ingest topic and waits for the workers' receipts.
pub struct RecordWriter {
    producer: FutureProducer,
    topic: String,
    workers: MemoryClient,
    timeout: Duration,
    partitions: Mutex<Option<(usize, Instant)>>,
}

impl RecordWriter {
    /// A producer as `config` says (idempotent, `acks=all`); its deliveries time out after
    /// `timeout`, the bound of the whole write.
    pub fn new(config: &KafkaConfig, workers: MemoryClient, timeout: Duration) -> Result<RecordWriter, rdkafka::error::KafkaError> {
        let mut client = producer_config(&config.bootstrap_servers, "lodestone-query");
        client.set("message.timeout.ms", timeout.as_millis().max(1).to_string());
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        Ok(RecordWriter { producer: client.create()?, topic: config.ingest_topic.clone(), workers, timeout, partitions: Mutex::new(None) })
    }

    /// Produces `records` (each with its index in the call) into `database`.`table` as
    /// `writer`, then waits for every receipt. Returns the rejected records by their index in the
    /// call, once Kafka holds every record and the workers have applied them: what was not
    /// rejected can then be queried. Without workers to ask, it returns once Kafka holds them,
    /// with no rejections known.
    pub async fn write(&self, database: &str, table: &str, writer: &str, records: Vec<(usize, Record)>, traceparent: Option<String>) -> Result<Vec<(usize, RejectedRecord)>, WriteError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let partitions = self.partitions().await?;
        let groups = by_partition(database, table, records, partitions);
        let mut deliveries = Vec::with_capacity(groups.len());
        for (partition, indexes, records) in groups {
            let envelope = Envelope {
                database: Some(database.into()),
                table: Some(table.into()),
                source: Source { device_id: format!("timestream:{writer}"), boot_id: String::new() },
                records,
                traceparent: traceparent.clone(),
                ..Envelope::default()
            };
            let payload = envelope.to_cbor();
            let mut headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header { key: "content-type", value: Some("application/cbor") })
                .insert(Header { key: RECEIPT_HEADER, value: Some("1") });
            if let Some(traceparent) = &traceparent {
                headers = headers.insert(Header { key: "traceparent", value: Some(traceparent.as_str()) });
            }
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).partition(partition).payload(payload.as_slice()).headers(headers);
            let delivery = send_waiting_for_room(&self.producer, record).await.map_err(|e| WriteError::Kafka(e.to_string()))?;
            deliveries.push((indexes, delivery));
        }
        let mut delivered = Vec::with_capacity(deliveries.len());
        for (indexes, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(at)) => delivered.push((indexes, at.partition, at.offset)),
                Ok(Err((error, _))) => {
                    self.forget_partitions();
                    return Err(WriteError::Kafka(error.to_string()));
                }
                Err(_) => return Err(WriteError::Kafka("the delivery was cancelled".into())),
            }
        }
        if !self.workers.has_workers() {
            return Ok(Vec::new());
        }
        let receipts = delivered.iter().map(|(_, partition, offset)| self.workers.receipt(*partition, *offset, deadline));
        let receipts = futures::future::join_all(receipts).await;
        let mut rejected = Vec::new();
        for ((indexes, _, _), receipt) in delivered.iter().zip(receipts) {
            let receipt = receipt.ok_or(WriteError::NotApplied(self.timeout.as_millis() as u64))?;
            for envelope in &receipt.envelopes {
                for record in envelope {
                    if let Some(index) = indexes.get(record.index) {
                        rejected.push((*index, record.clone()));
                    }
                }
            }
        }
        Ok(rejected)
    }

    /// The ingest topic's partition count, asked of Kafka at most once per [`PARTITIONS_TTL`].
    async fn partitions(&self) -> Result<usize, WriteError> {
        if let Some((count, at)) = *self.partitions.lock().expect("partitions lock") {
            if at.elapsed() < PARTITIONS_TTL {
                return Ok(count);
            }
        }
        let count = partition_count(&self.producer, &self.topic, self.timeout).await.map_err(WriteError::Kafka)?;
        *self.partitions.lock().expect("partitions lock") = Some((count, Instant::now()));
        Ok(count)
    }

    fn forget_partitions(&self) {
        *self.partitions.lock().expect("partitions lock") = None;
    }
}

/// The records grouped by the partition of their series: (partition, each record's index in
/// the call, the records), in the order of each group's first record.
fn by_partition(database: &str, table: &str, records: Vec<(usize, Record)>, partitions: usize) -> Vec<(i32, Vec<usize>, Vec<Record>)> {
    let mut groups: Vec<(i32, Vec<usize>, Vec<Record>)> = Vec::new();
    for (index, record) in records {
        let partition = lodestone_model::topic::partition_of(&series_key(database, table, &record), partitions) as i32;
        match groups.iter_mut().find(|(p, _, _)| *p == partition) {
            Some((_, indexes, records)) => {
                indexes.push(index);
                records.push(record);
            }
            None => groups.push((partition, vec![index], vec![record])),
        }
    }
    groups
}

/// A series as text: database, table, sorted dimensions and measure name, separated by NULs
/// (which no name holds).
fn series_key(database: &str, table: &str, record: &Record) -> String {
    let mut key = format!("{database}\0{table}\0");
    for dimension in &record.dimensions {
        key.push_str(&dimension.name);
        key.push('=');
        key.push_str(&dimension.value);
        key.push('\0');
    }
    key.push_str(&record.measure_name);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{Dimension, MeasureValue, Scalar};

    fn record(truck: &str, time_ns: i64) -> Record {
        Record {
            dimensions: vec![Dimension { name: "truck".into(), value: truck.into() }],
            measure_name: "speed".into(),
            value: MeasureValue::Single(Scalar::Double(1.0)),
            time_ns,
            version: 1,
        }
    }

    #[test]
    fn one_series_always_goes_to_one_partition_and_indexes_follow_their_records() {
        let records: Vec<(usize, Record)> = (0..40).map(|i| (i, record(&format!("t{}", i % 8), i as i64))).collect();
        let groups = by_partition("fleet", "trucks", records, 4);
        assert!(groups.len() > 1, "eight series spread over the partitions");
        let mut seen = 0;
        for (partition, indexes, records) in &groups {
            assert_eq!(indexes.len(), records.len());
            for (index, record) in indexes.iter().zip(records) {
                assert_eq!(record.time_ns, *index as i64, "an index names its own record");
                let again = lodestone_model::topic::partition_of(&series_key("fleet", "trucks", record), 4) as i32;
                assert_eq!(again, *partition);
            }
            seen += indexes.len();
        }
        assert_eq!(seen, 40);
        let t0: Vec<i32> = groups.iter().filter(|(_, _, rs)| rs.iter().any(|r| r.dimensions[0].value == "t0")).map(|(p, _, _)| *p).collect();
        assert_eq!(t0.len(), 1, "series t0 is in one partition only");
    }
}
