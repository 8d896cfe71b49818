//! The Kafka producer: idempotent, `acks=all`, and patient while Kafka is away.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::route::{Destination, KafkaMessage};
use crate::Error;

/// How long to wait before retrying when librdkafka's local queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(20);

/// The producer settings: the bridge's own, then `[kafka.properties]` (underscores in their names
/// become dots, so that environment overrides can spell `batch.size` as `BATCH_SIZE`).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("client.id", "lodestone-broker-bridge");
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
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(QUEUE_FULL_RETRY).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
