//! The Kafka producer path: the same envelopes as the MQTT fleet, written straight to the ingest
//! topic the way the bridge writes them — database and table inside the envelope, key = device
//! id (one device's data stays ordered in one partition), header `content-type`.
//!
//! One idempotent `FutureProducer` (`acks=all`) sends for every device, taking one batch from
//! each device in turn; up to `inflight_envelopes_max` deliveries are awaited concurrently.
//! Envelopes are queued with `send_result`, which enqueues synchronously, so each device's
//! envelopes reach librdkafka — and its partition — in sequence order.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lodestone_model::{ContentType, Source};
use lodestone_kit::kafka::{producer_config, send_waiting_for_room};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::time::Instant;

use crate::error::SimError;
use crate::rate::{RateLimiter, RATE_PER_S_MAX};
use crate::series::{validate_destination, FleetSpec, Series, Tally};
use crate::summary::{Progress, SeriesOutcome, Summary};
use crate::wire::{encode_envelope, Destination};

/// Largest `--inflight` (envelopes awaiting delivery across the run).
pub const INFLIGHT_ENVELOPES_MAX: usize = 100_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One `lodestone-sim kafka` run.
#[derive(Debug, Clone)]
pub struct KafkaRun {
    pub bootstrap: String,
    pub topic: String,
    pub fleet: FleetSpec,
    pub destination: Destination,
    pub format: ContentType,
    pub boot_id: String,
    pub rate_per_s: u64,
    pub inflight_envelopes_max: usize,
    /// Extra librdkafka settings (`-X key=value`), applied after the simulator's own.
    pub producer_config: Vec<(String, String)>,
    /// The whole run's bound; undelivered readings count as `unacked`.
    pub timeout: Duration,
}

impl KafkaRun {
    /// Checks every bound, with the clock at `now_ns`.
    pub fn validate(&self, now_ns: i64) -> Result<(), SimError> {
        self.fleet.validate(now_ns)?;
        validate_destination(&self.destination.database, &self.destination.table)?;
        let invalid = |flag, detail: String| Err(SimError::InvalidArgument { flag, detail });
        if self.topic.is_empty() {
            return invalid("topic", "must not be empty".into());
        }
        if !(1..=INFLIGHT_ENVELOPES_MAX).contains(&self.inflight_envelopes_max) {
            return invalid("inflight", format!("must be 1 to {INFLIGHT_ENVELOPES_MAX}"));
        }
        if self.rate_per_s > RATE_PER_S_MAX {
            return invalid("rate", format!("must be at most {RATE_PER_S_MAX} readings per second"));
        }
        Ok(())
    }

    /// The producer's settings: idempotent, `acks=all`, deliveries bounded by the run's timeout.
    fn client_config(&self) -> ClientConfig {
        let mut config = producer_config(&self.bootstrap, "lodestone-sim");
        config.set("message.timeout.ms", self.timeout.as_millis().clamp(1, i32::MAX as u128).to_string());
        for (key, value) in &self.producer_config {
            config.set(key, value);
        }
        config
    }
}

/// Sends every device's envelopes and awaits every delivery, or stops at `run.timeout`.
/// Returns the summary; `unacked > 0` means deliveries failed or the timeout ended the run.
pub async fn run_kafka(run: KafkaRun) -> Result<Summary, SimError> {
    let progress = Arc::new(Progress::new(run.fleet.planned_total(), false));
    run_kafka_observed(run, progress).await
}

/// [`run_kafka`], counting into `progress` (which a load test samples meanwhile).
pub async fn run_kafka_observed(run: KafkaRun, progress: Arc<Progress>) -> Result<Summary, SimError> {
    let producer: FutureProducer = run
        .client_config()
        .create()
        .map_err(|source| SimError::KafkaProducer { bootstrap: run.bootstrap.clone(), source })?;
    let start = Instant::now();
    let reporter = progress.report_every(PROGRESS_EVERY);
    let limiter = RateLimiter::start(run.rate_per_s, run.fleet.batch_records_max);
    let mut fleet = ProducerFleet::new(&run, progress.clone());
    let produced = tokio::time::timeout_at(start + run.timeout, fleet.produce_all(&producer, &run, &limiter, start)).await;
    reporter.abort();
    if let Ok(Err(error)) = produced {
        return Err(error);
    }
    tracing::info!("{}", progress.line());
    Ok(Summary::new(fleet.outcomes(), start.elapsed()))
}

/// A delivery in flight: which device, how many readings, and librdkafka's answer to come.
type Pending = futures::future::BoxFuture<'static, (usize, u64, Result<(), String>)>;

/// Every device's generator and accounting.
struct ProducerFleet {
    series: Vec<Series>,
    sent: Vec<Tally>,
    delivered: Vec<u64>,
    in_flight: FuturesUnordered<Pending>,
    progress: Arc<Progress>,
}

impl ProducerFleet {
    fn new(run: &KafkaRun, progress: Arc<Progress>) -> ProducerFleet {
        let series: Vec<Series> = run.fleet.all_series().collect();
        let count = series.len();
        ProducerFleet { series, sent: vec![Tally::default(); count], delivered: vec![0; count], in_flight: FuturesUnordered::new(), progress }
    }

    /// Sends round-robin over the devices. Paced devices are due in round-robin order (their
    /// start offsets grow with their index), so waiting for each in turn keeps every pace.
    async fn produce_all(&mut self, producer: &FutureProducer, run: &KafkaRun, limiter: &RateLimiter, start: Instant) -> Result<(), SimError> {
        let headers = OwnedHeaders::new().insert(Header { key: "content-type", value: Some(run.format.mime()) });
        loop {
            let mut sent_any = false;
            for device in 0..self.series.len() {
                if !self.series[device].has_next() {
                    continue;
                }
                sent_any = true;
                if let Some(due) = self.series[device].next_batch_due() {
                    self.await_deliveries_until(start + due).await;
                }
                limiter.take(self.series[device].next_batch_len()).await;
                self.produce_next(device, producer, run, &headers).await?;
                while self.in_flight.len() >= run.inflight_envelopes_max {
                    self.await_one().await;
                }
            }
            if !sent_any {
                break;
            }
        }
        while self.await_one().await {}
        Ok(())
    }

    /// Queues the device's next envelope; returns once librdkafka holds a copy of it.
    async fn produce_next(&mut self, device: usize, producer: &FutureProducer, run: &KafkaRun, headers: &OwnedHeaders) -> Result<(), SimError> {
        let series = &mut self.series[device];
        let device_id = series.id().to_owned();
        let batch = series.next_batch().expect("called only while the series has readings");
        let source = Source { device_id: device_id.clone(), boot_id: run.boot_id.clone() };
        let encoded = encode_envelope(batch, &source, Some(&run.destination), None, run.format);
        let record = FutureRecord::to(&run.topic).key(device_id.as_str()).payload(&encoded.bytes[..]).headers(headers.clone());
        let delivery = match send_waiting_for_room(producer, record).await {
            Ok(delivery) => delivery,
            Err(source) => return Err(SimError::KafkaEnqueue { device_id, first_seq: encoded.first_seq, source }),
        };
        self.sent[device].add(encoded.tally);
        Progress::add(&self.progress.sent, encoded.tally.count);
        self.in_flight.push(Box::pin(await_delivery(device, encoded.tally.count, delivery)));
        Ok(())
    }

    /// Counts deliveries as they come until `at`.
    async fn await_deliveries_until(&mut self, at: Instant) {
        let sleep = tokio::time::sleep_until(at);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                more = self.await_one(), if !self.in_flight.is_empty() => if !more { sleep.as_mut().await; return },
            }
        }
    }

    /// Waits for one delivery and accounts for it; `false` when none was in flight.
    async fn await_one(&mut self) -> bool {
        let Some((device, count, result)) = self.in_flight.next().await else { return false };
        match result {
            Ok(()) => {
                self.delivered[device] += count;
                Progress::add(&self.progress.acked, count);
            }
            Err(error) => self.progress.note_error(self.series[device].id(), &error),
        }
        true
    }

    fn outcomes(self) -> impl Iterator<Item = SeriesOutcome> {
        self.series.into_iter().zip(self.sent).zip(self.delivered).map(|((series, sent), delivered)| SeriesOutcome {
            id: series.id().to_owned(),
            sent,
            unacked: series.last_seq() - delivered,
        })
    }
}

async fn await_delivery(device: usize, count: u64, delivery: DeliveryFuture) -> (usize, u64, Result<(), String>) {
    let result = match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _message))) => Err(format!("delivery failed: {error}")),
        Err(_canceled) => Err("delivery canceled: the producer shut down".to_owned()),
    };
    (device, count, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::SeriesKind;

    fn run() -> KafkaRun {
        KafkaRun {
            bootstrap: "127.0.0.1:9092".into(),
            topic: "lodestone.ingest".into(),
            fleet: FleetSpec {
                seed: 1,
                kind: SeriesKind::Device,
                id_prefix: "sim-".into(),
                series_count: 3,
                readings_per_series: 120,
                batch_records_max: 50,
                start_ns: 1_600_000_000_000_000_000,
                interval_ms: 1000,
                profile: crate::Profile::Walk,
                series_rate_per_s: 0.0,
            },
            destination: Destination { database: "sim".into(), table: "readings".into() },
            format: ContentType::Json,
            boot_id: "b".into(),
            rate_per_s: 0,
            inflight_envelopes_max: 64,
            producer_config: vec![],
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn validation_bounds() {
        let check = |run: KafkaRun, flag: Option<&str>| {
            let got = run.validate(1_700_000_000_000_000_000).err().map(|e| match e {
                SimError::InvalidArgument { flag, .. } => flag,
                other => panic!("unexpected {other}"),
            });
            assert_eq!(got, flag);
        };
        check(run(), None);
        check(KafkaRun { topic: String::new(), ..run() }, Some("topic"));
        check(KafkaRun { inflight_envelopes_max: 0, ..run() }, Some("inflight"));
        check(KafkaRun { inflight_envelopes_max: INFLIGHT_ENVELOPES_MAX + 1, ..run() }, Some("inflight"));
        check(KafkaRun { destination: Destination { database: "sim".into(), table: "a b".into() }, ..run() }, Some("table"));
    }

    #[test]
    fn producer_settings() {
        let run = KafkaRun { producer_config: vec![("linger.ms".into(), "50".into())], ..run() };
        let config = run.client_config();
        for (key, expected) in [
            ("bootstrap.servers", "127.0.0.1:9092"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "60000"),
            ("linger.ms", "50"), // -X overrides the simulator's own settings
        ] {
            assert_eq!(config.get(key), Some(expected), "{key}");
        }
    }

    /// Against rdkafka's in-process mock cluster: every envelope delivered, in device order
    /// within a partition, with the content-type header and the destination inside.
    #[tokio::test]
    async fn delivers_every_envelope_to_a_mock_cluster() {
        use lodestone_model::{Envelope, Limits};
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::{Headers, Message};
        use rdkafka::mocking::MockCluster;

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("lodestone.ingest", 2, 1).unwrap();
        let run = KafkaRun { bootstrap: cluster.bootstrap_servers(), ..run() };
        let summary = run_kafka(run.clone()).await.unwrap();
        assert_eq!((summary.total, summary.unacked), (360, 0));

        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "check")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["lodestone.ingest"]).unwrap();
        let mut next_seq = std::collections::BTreeMap::new();
        let mut sums = std::collections::BTreeMap::new();
        for _ in 0..9 {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
            let header = message.headers().unwrap().get(0);
            assert_eq!((header.key, header.value), ("content-type", Some(&b"application/json"[..])));
            let envelope = Envelope::decode(message.payload().unwrap(), None, &Limits::default(), i64::MAX / 2).unwrap();
            let device_id = std::str::from_utf8(message.key().unwrap()).unwrap().to_owned();
            assert_eq!(envelope.source.device_id, device_id);
            assert_eq!((envelope.database.as_deref(), envelope.table.as_deref()), (Some("sim"), Some("readings")));
            let expected_seq = next_seq.entry(device_id.clone()).or_insert(1);
            assert_eq!(envelope.first_seq, *expected_seq, "{device_id}: in order, without gaps");
            *expected_seq = envelope.last_seq() + 1;
            let sum: f64 = envelope
                .records
                .iter()
                .map(|r| match r.value {
                    lodestone_model::MeasureValue::Single(lodestone_model::Scalar::Double(v)) => v,
                    _ => unreachable!(),
                })
                .sum();
            *sums.entry(device_id).or_insert(0.0) += sum;
        }
        for (device_id, device) in &summary.devices {
            assert_eq!(next_seq[device_id], 121);
            assert_eq!(sums[device_id].to_bits(), device.sum.to_bits(), "{device_id}");
        }
    }
}
