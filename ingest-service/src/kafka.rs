//! The worker's Kafka side: the consumer (one group member, offsets committed by hand), the
//! dead-letter producer, the [`Log`] they make together, and the loop that feeds a [`Worker`]
//! until the shutdown signal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lodestone_kit::kafka::{producer_config, send_waiting_for_room};
use lodestone_kit::Shutdown;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::{KafkaConfig, PersistConfig};
use crate::ingestor::Origin;
use lodestone_model::DeadLetter;
use crate::metrics::Counters;
use crate::offsets::{Partition, Rebalances};
use crate::receipts::Receipts;
use crate::worker::{Log, Message, Worker, WorkerError};

pub type Consumer = StreamConsumer<RebalanceContext>;

/// librdkafka's rebalance callback: notes partitions that changed hands for the worker, and
/// keeps `partitions_assigned` (readiness) up to date.
pub struct RebalanceContext {
    rebalances: Rebalances,
    counters: Arc<Counters>,
    receipts: Arc<Receipts>,
    ingest_topic: String,
}

impl ClientContext for RebalanceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of the partitions held.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lags = statistics.topics.values().flat_map(|topic| topic.partitions.values()).filter(|p| p.partition >= 0 && p.consumer_lag >= 0).map(|p| p.consumer_lag);
        self.counters.lag_messages.store(lags.sum(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl ConsumerContext for RebalanceContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (partitions, what, sign) = match rebalance {
            Rebalance::Assign(list) => (list.elements(), "assigned", 1),
            Rebalance::Revoke(list) => (list.elements(), "revoked", -1),
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance error");
                return;
            }
        };
        let names: Vec<String> = partitions.iter().map(|p| format!("{}/{}", p.topic(), p.partition())).collect();
        tracing::info!(partitions = ?names, "{what}");
        self.counters.partitions_assigned.fetch_add(sign * partitions.len() as i64, std::sync::atomic::Ordering::Relaxed);
        self.rebalances.note(partitions.iter().map(|p| (p.topic().to_string(), p.partition())));
        let ingest = partitions.iter().filter(|p| p.topic() == self.ingest_topic).map(|p| p.partition());
        self.receipts.set_assigned(ingest, sign > 0);
    }
}

/// The consumer of the ingest and dead-letter topics: auto-commit off, offsets committed only by
/// [`Worker::checkpoint`]; static membership when `kafka.instance_id` is set.
/// The partitions it holds are noted in `receipts`.
pub fn consumer(config: &KafkaConfig, rebalances: Rebalances, counters: Arc<Counters>, receipts: Arc<Receipts>) -> Result<Arc<Consumer>, rdkafka::error::KafkaError> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    // librdkafka's default (500 ms) is the floor of publish-to-queryable latency on tansu, which
    // holds a fetch for the whole wait when a partition has nothing new.
    client.set("fetch.wait.max.ms", "50");
    // The lag gauge (`lodestone_ingest_lag_messages`) comes from these statistics.
    client.set("statistics.interval.ms", "5000");
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    if !config.instance_id.is_empty() {
        client.set("group.instance.id", &config.instance_id);
    }
    let consumer: Consumer = client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(RebalanceContext { rebalances, counters, receipts, ingest_topic: config.ingest_topic.clone() })?;
    consumer.subscribe(&[config.ingest_topic.as_str(), config.dead_letter_topic.as_str()])?;
    Ok(Arc::new(consumer))
}

/// Dead letters to Kafka, offsets committed to the group.
pub struct KafkaLog {
    pub consumer: Arc<Consumer>,
    pub producer: FutureProducer,
    pub dead_letter_topic: String,
}

impl KafkaLog {
    pub fn new(config: &KafkaConfig, consumer: Arc<Consumer>) -> Result<KafkaLog, rdkafka::error::KafkaError> {
        let mut client = producer_config(&config.bootstrap_servers, "lodestone-ingest");
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        Ok(KafkaLog { consumer, producer: client.create()?, dead_letter_topic: config.dead_letter_topic.clone() })
    }
}

impl Log for KafkaLog {
    type Delivery = futures::future::BoxFuture<'static, Result<(), String>>;

    async fn send_dead_letter(&self, letter: &DeadLetter) -> Result<Self::Delivery, String> {
        let headers = letter.headers().into_iter().fold(OwnedHeaders::new(), |headers, (key, value)| headers.insert(Header { key, value: Some(value.as_bytes()) }));
        let key = letter.device_id.clone().unwrap_or_default();
        let record = FutureRecord::to(&self.dead_letter_topic).key(&key).payload(&letter.payload).headers(headers);
        let delivery: DeliveryFuture = send_waiting_for_room(&self.producer, record).await.map_err(|e| e.to_string())?;
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error.to_string()),
                Err(_) => Err("the delivery was cancelled".to_string()),
            }
        }))
    }

    async fn commit(&self, offsets: BTreeMap<Partition, i64>) -> Result<(), String> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            list.add_partition_offset(&topic, partition, Offset::Offset(offset)).map_err(|e| e.to_string())?;
        }
        // librdkafka's synchronous commit blocks its thread; keep it off the async workers so
        // that the shutdown bound can still fire while a broker does not answer.
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| format!("the commit task failed: {e}"))?
            .map_err(|e| e.to_string())
    }
}

/// Feeds `worker` from the consumer and checkpoints every `persist.interval_ms`, until
/// `shutdown`; then a last checkpoint within `shutdown_timeout`. Returns an error when a persist
/// or commit fails: nothing after the last commit is lost, Kafka replays it.
pub async fn run(worker: &mut Worker<KafkaLog>, consumer: &Consumer, persist: &PersistConfig, mut shutdown: Shutdown, shutdown_timeout: Duration) -> Result<(), WorkerError> {
    let mut tick = tokio::time::interval(Duration::from_millis(persist.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = consumer.recv() => {
                let message = match received {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "kafka consumer error");
                        continue;
                    }
                };
                let headers = message
                    .headers()
                    .map(|headers| headers.iter().filter_map(|h| Some((h.key, std::str::from_utf8(h.value?).ok()?))).collect())
                    .unwrap_or_default();
                let origin = Origin { topic: message.topic().to_string(), partition: message.partition(), offset: message.offset() };
                let message = Message { origin, payload: message.payload().unwrap_or_default(), headers };
                worker.handle(&message, lodestone_kit::now_ns()).await?;
            }
            _ = tick.tick() => worker.checkpoint().await?,
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("shutting down: persisting and committing");
    match tokio::time::timeout(shutdown_timeout, worker.checkpoint()).await {
        Ok(result) => result?,
        // Whatever was not committed is replayed from Kafka by the next owner of the partitions.
        Err(_) => tracing::warn!("persist and commit did not finish within shutdown.timeout_ms; exiting without committing"),
    }
    Ok(())
}
