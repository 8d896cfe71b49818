//! The Kafka producer: idempotent, `acks=all`, and patient while Kafka is away.

use lodestone_kit::kafka::{producer_config, send_waiting_for_room};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use lodestone_model::BUNDLE_MIME;

use crate::config::KafkaConfig;
use crate::route::{Destination, KafkaMessage};
use crate::Error;

/// The producer settings: the idempotent producer's, the bridge's own, then `[kafka.properties]`
/// (underscores in their names become dots, so that environment overrides can spell `batch.size`
/// as `BATCH_SIZE`).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = producer_config(&config.bootstrap_servers, "lodestone-broker-bridge");
    client.set("message.timeout.ms", config.message_timeout_ms.to_string());
    for (name, value) in &config.properties {
        client.set(name.replace('_', "."), value.to_string());
    }
    client
}

/// Creates the producer (it connects lazily; nothing here waits for Kafka).
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, Error> {
    client_config(config).create().map_err(Error::Producer)
}

/// The topic names behind [`Destination`].
#[derive(Debug, Clone)]
pub struct Topics {
    pub ingest: String,
    pub dead_letter: String,
}

impl Topics {
    pub fn name(&self, destination: Destination) -> &str {
        match destination {
            Destination::Ingest => &self.ingest,
            Destination::DeadLetter => &self.dead_letter,
        }
    }
}

/// Hands a bundle of `envelopes` envelopes to librdkafka for `partition` of the ingest topic,
/// waiting while its local queue is full.
/// `traceparents`: each envelope's trace context in order, comma-separated (empty for one
/// without), when any has one.
pub async fn enqueue_bundle(producer: &FutureProducer, topics: &Topics, partition: i32, envelopes: usize, payload: &[u8], traceparents: Option<&str>) -> Result<DeliveryFuture, KafkaError> {
    let count = envelopes.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(3)
        .insert(Header { key: "content-type", value: Some(BUNDLE_MIME) })
        .insert(Header { key: "envelopes", value: Some(count.as_str()) });
    if let Some(traceparents) = traceparents {
        headers = headers.insert(Header { key: lodestone_model::TRACEPARENTS_HEADER, value: Some(traceparents) });
    }
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topics.ingest).partition(partition).payload(payload).headers(headers);
    send_waiting_for_room(producer, record).await
}

/// Hands `message` to librdkafka, waiting while its local queue is full. Returns once the message
/// is queued, *not* when it is durable: await the returned future for Kafka's answer.
pub async fn enqueue(producer: &FutureProducer, topics: &Topics, message: &KafkaMessage) -> Result<DeliveryFuture, KafkaError> {
    let headers = message
        .headers
        .iter()
        .fold(OwnedHeaders::new_with_capacity(message.headers.len()), |headers, (key, value)| {
            headers.insert(Header { key, value: Some(value.as_str()) })
        });
    let mut record: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topics.name(message.destination)).payload(&message.payload[..]).headers(headers);
    if let Some(key) = &message.key {
        record = record.key(key.as_str());
    }
    send_waiting_for_room(producer, record).await
}
