//! The Kafka producer settings the end-to-end ack relies on, and the send loop that waits for
//! room in librdkafka's local queue instead of failing. Every producer in Lodestone (the bridge,
//! the ingest worker's dead letters, the simulator) is built from [`producer_config`].

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

/// The producer properties that make "Kafka acknowledged it" mean "it is on every in-sync
/// replica, once": no configuration may override them.
pub const GUARANTEE_PROPERTIES: [&str; 3] = ["enable.idempotence", "acks", "request.required.acks"];

/// How long to wait before trying again when librdkafka's local queue is full.
pub const QUEUE_FULL_RETRY: Duration = Duration::from_millis(20);

/// An idempotent producer's settings (`enable.idempotence=true`, `acks=all`, `linger.ms=5`),
/// named `client_id`. Callers add their own properties after it; none may override
/// [`GUARANTEE_PROPERTIES`] (see [`guarantee_overridden`]).
pub fn producer_config(bootstrap_servers: &str, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    client
}

/// The first of `names` (librdkafka property names) that would override a guarantee, if any.
pub fn guarantee_overridden<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().find(|name| GUARANTEE_PROPERTIES.contains(name))
}

/// Hands `record` to librdkafka, waiting while its local queue is full. Returns once the message
/// is queued, *not* when it is durable: await the returned future for Kafka's answer. Any other
/// refusal is returned at once.
pub async fn send_waiting_for_room<K, P>(producer: &FutureProducer, mut record: FutureRecord<'_, K, P>) -> Result<DeliveryFuture, KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(QUEUE_FULL_RETRY).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The topic's partition count from the brokers' metadata (a blocking call, run off the async
/// threads). An error if Kafka does not answer within `timeout` or the topic has no partitions.
pub async fn partition_count(producer: &FutureProducer, topic: &str, timeout: Duration) -> Result<usize, String> {
    let (producer, topic) = (producer.clone(), topic.to_owned());
    let fetched = tokio::task::spawn_blocking(move || {
        let metadata = producer.client().fetch_metadata(Some(&topic), timeout).map_err(|e| e.to_string())?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(format!("no metadata for topic {topic:?}"));
        };
        match (found.error(), found.partitions().len()) {
            (Some(error), _) => Err(format!("topic {topic:?}: {:?}", RDKafkaErrorCode::from(error))),
            (None, 0) => Err(format!("topic {topic:?} has no partitions")),
            (None, partitions) => Ok(partitions),
        }
    });
    fetched.await.map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guarantees_are_set_and_cannot_be_overridden() {
        let config = producer_config("127.0.0.1:9092", "lodestone-test");
        for (key, expected) in [("bootstrap.servers", "127.0.0.1:9092"), ("client.id", "lodestone-test"), ("enable.idempotence", "true"), ("acks", "all")] {
            assert_eq!(config.get(key), Some(expected), "{key}");
        }
        assert_eq!(guarantee_overridden(["linger.ms", "acks"]), Some("acks"));
        assert_eq!(guarantee_overridden(["linger.ms", "batch.size"]), None);
    }
}
