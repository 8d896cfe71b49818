//! The bridge in-process against rdkafka's mock Kafka cluster and a real MQTT client: publishes in,
//! Kafka messages and end-to-end acks out.

use std::collections::HashMap;
use std::time::Duration;

use broker_bridge::{Bridge, BridgeConfig};
use lodestone_model::topic::{ack_topic, data_topic, Ack};
use lodestone_model::{split_message, Dimension, Envelope, Limits, MeasureValue, Record, Scalar, Source, BUNDLE_MIME};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);
const INGEST: &str = "test.ingest";
const DEAD_LETTER: &str = "test.dead-letter";

struct Harness {
    kafka: MockCluster<'static, DefaultProducerContext>,
    bridge: Bridge,
    /// HTTPS, with the admin token of the bridge's credentials.
    http: reqwest::Client,
    /// The CA of the bridge's certificate and of the devices'.
    credentials: lodestone_admin::Credentials,
    _credentials_dir: tempfile::TempDir,
}

async fn start() -> Harness {
    start_with(|_| {}).await
}

async fn start_with(edit: impl FnOnce(&mut BridgeConfig)) -> Harness {
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic(INGEST, 1, 1).unwrap();
    kafka.create_topic(DEAD_LETTER, 1, 1).unwrap();
    let mut config = BridgeConfig::default();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.payload_bytes_max = 4096;
    config.mqtt.packet_bytes_max = 8192;
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    let credentials_dir = tempfile::tempdir().unwrap();
    let credentials = lodestone_admin::Credentials::create(credentials_dir.path()).unwrap();
    config.tls = credentials.tls();
    config.auth = credentials.auth();
    config.mqtt.device_ca_path = credentials.ca_path.display().to_string();
    config.mqtt.policies = vec![broker_bridge::gate::PolicyRule { devices: vec!["*".into()], write: vec!["fleet/*".into()] }];
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.ingest_topic = INGEST.into();
    config.kafka.dead_letter_topic = DEAD_LETTER.into();
    config.shutdown.timeout_ms = 2_000;
    edit(&mut config);
    let bridge = Bridge::start(config).await.unwrap();
    let http = lodestone_kit::http::client_with_token(Some(credentials.client_tls()), &credentials.admin_bearer).build().unwrap();
    Harness { kafka, bridge, http, credentials, _credentials_dir: credentials_dir }
}

/// A device connection: its client and the publishes it receives (`None` once disconnected).
struct Device {
    client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<Option<(String, Vec<u8>)>>,
}

/// TLS with a certificate of `device_id`'s own, as every device connects.
fn device_transport(harness: &Harness, device_id: &str) -> rumqttc::Transport {
    let device = harness.credentials.issue_device(device_id).unwrap();
    let tls = lodestone_kit::tls::client_config_with_identity(
        &harness.credentials.ca_path,
        &std::fs::read(&device.cert_path).unwrap(),
        &std::fs::read(&device.key_path).unwrap(),
    )
    .unwrap();
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)))
}

async fn connect(harness: &Harness, device_id: &str) -> Device {
    let addr = harness.bridge.mqtt_addr();
    let mut options = MqttOptions::new(device_id, addr.ip().to_string(), addr.port());
    options.set_transport(device_transport(harness, device_id));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, inbox) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Some((p.topic.clone(), p.payload.to_vec())));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed_tx.take().map(|s| s.send(()));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
            }
        }
    });
    client.subscribe(ack_topic(device_id), QoS::AtLeastOnce).await.unwrap();
    timeout(WAIT, subscribed).await.expect("no SUBACK").unwrap();
    Device { client, inbox }
}

impl Device {
    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }

    /// Waits for the next ack; fails if the connection dropped.
    async fn next_ack(&mut self) -> Ack {
        let received = timeout(WAIT, self.inbox.recv()).await.expect("no ack in time").expect("inbox closed");
        let (topic, payload) = received.expect("the device was disconnected");
        assert!(topic.starts_with("lodestone/v1/ack/"), "{topic}");
        Ack::from_json(&payload).expect("ack JSON")
    }
}

fn envelope(device_id: &str, boot_id: &str, first_seq: u64, values: &[f64]) -> Envelope {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    Envelope {
        source: Source { device_id: device_id.into(), boot_id: boot_id.into() },
        first_seq,
        unacked_from: None,
        records: values
            .iter()
            .map(|v| Record {
                dimensions: vec![Dimension { name: "room".into(), value: "a".into() }],
                measure_name: "temp".into(),
                value: MeasureValue::Single(Scalar::Double(*v)),
                time_ns: now,
                version: 1,
            })
            .collect(),
        ..Envelope::default()
    }
}

struct KafkaRecord {
    key: Option<String>,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

/// Reads `count` messages from the start of `topic`.
async fn read_topic(harness: &Harness, topic: &str, count: usize) -> Vec<KafkaRecord> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", harness.kafka.bootstrap_servers())
        .set("group.id", format!("test-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&partitions).unwrap();
    let mut records = Vec::new();
    while records.len() < count {
        let message = timeout(WAIT, consumer.recv()).await.expect("no Kafka message in time").unwrap();
        let headers = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
            .unwrap_or_default();
        records.push(KafkaRecord {
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    records
}

/// The envelopes of ingest-topic messages, bundled or not, in order.
fn envelopes_in(records: &[KafkaRecord]) -> Vec<Envelope> {
    records
        .iter()
        .flat_map(|record| split_message(&record.payload, record.headers.get("content-type").map(String::as_str)).unwrap())
        .map(|(part, content_type)| Envelope::decode(part, content_type, &Limits::default(), i64::MAX / 2).unwrap())
        .collect()
}

async fn http_get(harness: &Harness, path: &str) -> (u16, String) {
    let response = harness.http.get(format!("https://{}{path}", harness.bridge.http_addr())).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_to_kafka_then_ack() {
    let harness = start().await;
    assert_eq!(http_get(&harness, "/health").await, (200, "ok".to_string()));
    let mut device = connect(&harness, "dev-1").await;
    let topic = data_topic("fleet", "trucks", "dev-1");

    device.publish(&topic, envelope("dev-1", "boot-a", 1, &[20.5, 21.0]).to_cbor()).await;
    assert_eq!(device.next_ack().await, Ack { boot_id: "boot-a".into(), through_seq: 2 });
    // JSON from a simple device that leaves source.device_id to the topic.
    device.publish(&topic, envelope("", "boot-a", 3, &[22.0]).to_json()).await;
    assert_eq!(device.next_ack().await, Ack { boot_id: "boot-a".into(), through_seq: 3 });

    // Each envelope was acked before the next was published: two bundles of one.
    let ingested = read_topic(&harness, INGEST, 2).await;
    assert_eq!(ingested[0].key, None);
    assert_eq!(ingested[0].headers["content-type"], BUNDLE_MIME);
    assert_eq!(ingested[0].headers["envelopes"], "1");
    let sent = envelopes_in(&ingested[1..]);
    assert_eq!((sent[0].database.as_deref(), sent[0].table.as_deref()), (Some("fleet"), Some("trucks")));
    assert_eq!((sent[0].source.device_id.as_str(), sent[0].first_seq, sent[0].records.len()), ("dev-1", 3, 1));

    let metrics = http_get(&harness, "/metrics").await.1;
    assert!(metrics.contains("lodestone_bridge_received_total 2"), "{metrics}");
    assert!(metrics.contains("lodestone_bridge_sent_total{topic=\"ingest\"} 2"), "{metrics}");
    assert!(metrics.contains("lodestone_bridge_bundles_sent_total 2"), "{metrics}");
    harness.bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_go_to_dead_letter_and_the_device_stays_connected() {
    let harness = start().await;
    let mut device = connect(&harness, "dev-2").await;
    let topic = data_topic("fleet", "trucks", "dev-2");

    device.publish(&topic, b"{not json".to_vec()).await;
    device.publish(&topic, vec![b' '; 4097]).await; // one past payload_bytes_max
    // On its own topic, in the name of another device.
    device.publish(&topic, envelope("someone-else", "b", 1, &[1.0]).to_cbor()).await;
    let late = br#"{"v":1,"source":{"device_id":"dev-2","boot_id":"b"},"first_seq":1,"records":[
        {"measure_name":"temp","value":1.0,"time":4102444800,"time_unit":"s"}]}"#;
    device.publish(&topic, late.to_vec()).await;
    // Only the envelope is acked (its one record is dead-lettered); the connection survived.
    assert_eq!(device.next_ack().await, Ack { boot_id: "b".into(), through_seq: 1 });

    let dead = read_topic(&harness, DEAD_LETTER, 4).await;
    let reasons: Vec<&str> = dead.iter().map(|r| r.headers["reason"].as_str()).collect();
    assert_eq!(reasons, ["malformed_payload", "payload_too_large", "identity_mismatch", "time_too_far_in_future"]);
    assert_eq!(dead[0].payload, b"{not json");
    assert_eq!(dead[0].headers["topic"], topic);
    assert_eq!(dead[0].headers["device_id"], "dev-2");
    assert_eq!(dead[1].payload.len(), 4097);
    let entry: serde_json::Value = serde_json::from_slice(&dead[3].payload).unwrap();
    assert_eq!((entry["seq"].as_u64(), entry["boot_id"].as_str(), entry["source"].as_str()), (Some(1), Some("b"), Some("bridge")));

    let metrics = http_get(&harness, "/metrics").await.1;
    assert!(metrics.contains("lodestone_bridge_rejected_total{reason=\"identity_mismatch\"} 1"), "{metrics}");
    harness.bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_wait_while_kafka_is_down() {
    let harness = start().await;
    let mut device = connect(&harness, "dev-3").await;
    let topic = data_topic("fleet", "trucks", "dev-3");
    device.publish(&topic, envelope("dev-3", "c", 1, &[1.0]).to_cbor()).await;
    assert_eq!(device.next_ack().await.through_seq, 1);

    harness.kafka.broker_down(-1).unwrap();
    device.publish(&topic, envelope("dev-3", "c", 2, &[2.0]).to_cbor()).await;
    device.publish(&topic, envelope("dev-3", "c", 3, &[3.0]).to_cbor()).await;
    assert!(timeout(Duration::from_secs(2), device.inbox.recv()).await.is_err(), "acked while Kafka was down");

    harness.kafka.broker_up(-1).unwrap();
    let mut through = 0;
    while through < 3 {
        let ack = device.next_ack().await;
        assert!(ack.through_seq > through, "acks went backwards: {ack:?} after {through}");
        through = ack.through_seq;
    }
    harness.bridge.shutdown().await.unwrap();
}

/// A bridge that never heard of a device (restarted, say) and whose broker lost the first
/// envelopes the device resent: what arrives first must not be acked over the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_never_acked_over_records_the_bridge_did_not_see() {
    let harness = start().await;
    let mut device = connect(&harness, "dev-7").await;
    let topic = data_topic("fleet", "trucks", "dev-7");
    // The device holds 1..=4 unacknowledged and says so in each envelope.
    let holding_from_1 = |first_seq, values: &[f64]| Envelope { unacked_from: Some(1), ..envelope("dev-7", "g", first_seq, values) }.to_cbor();
    device.publish(&topic, holding_from_1(3, &[3.0, 4.0])).await; // 1..=2 lost on the way
    device.publish(&topic, holding_from_1(1, &[1.0, 2.0])).await; // the device resends
    // A device's acks leave in order: an ack for 3..=4 on its own would come first.
    assert_eq!(device.next_ack().await, Ack { boot_id: "g".into(), through_seq: 2 });
    device.publish(&topic, holding_from_1(3, &[3.0, 4.0])).await;
    assert_eq!(device.next_ack().await, Ack { boot_id: "g".into(), through_seq: 4 });

    let metrics = http_get(&harness, "/metrics").await.1;
    assert!(metrics.contains("lodestone_bridge_sequence_gaps_total 1"), "{metrics}");
    harness.bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_content_type_and_traceparent_ride_along() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::{mqttbytes::QoS as QoS5, AsyncClient as AsyncClient5, MqttOptions as MqttOptions5};

    // MQTT 5 on the same TLS port as 3.1.1.
    let harness = start().await;
    let addr = harness.bridge.mqtt_v5_addr().expect("v5 listener");
    assert_eq!(addr, harness.bridge.mqtt_addr());
    let mut options = MqttOptions5::new("dev-5", addr.ip().to_string(), addr.port());
    options.set_transport(device_transport(&harness, "dev-5"));
    let (client, mut eventloop) = AsyncClient5::new(options, 10);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: vec![("traceparent".into(), traceparent.into())],
        ..Default::default()
    };
    let payload = envelope("", "boot-5", 1, &[5.0]).to_json();
    client.publish_with_properties(data_topic("fleet", "trucks", "dev-5"), QoS5::AtLeastOnce, false, payload, properties).await.unwrap();

    let ingested = read_topic(&harness, INGEST, 1).await;
    let sent = envelopes_in(&ingested);
    assert_eq!(sent[0].source.device_id, "dev-5");
    assert_eq!(sent[0].traceparent.as_deref(), Some(traceparent));
    harness.bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_of_many_devices_travel_in_bundles_and_stay_in_order() {
    // Sealed by count only (the linger is far longer than the test), so the bundles are exact.
    let harness = start_with(|c| {
        c.kafka.bundle_envelopes_max = 10;
        c.kafka.bundle_linger_ms = 1000;
    })
    .await;
    let mut devices = Vec::new();
    for d in 0..20 {
        devices.push(connect(&harness, &format!("dev-{d}")).await);
    }
    for seq in 1..=5 {
        for (d, device) in devices.iter().enumerate() {
            let id = format!("dev-{d}");
            device.publish(&data_topic("fleet", "trucks", &id), envelope(&id, "boot", seq, &[seq as f64]).to_cbor()).await;
        }
    }
    for device in &mut devices {
        let mut through = 0;
        while through < 5 {
            through = device.next_ack().await.through_seq;
        }
    }
    let ingested = read_topic(&harness, INGEST, 10).await;
    assert!(ingested.iter().all(|r| r.headers["envelopes"] == "10"), "100 envelopes in 10 bundles of 10");
    let sent = envelopes_in(&ingested);
    assert_eq!(sent.len(), 100);
    for d in 0..20 {
        let id = format!("dev-{d}");
        let seqs: Vec<u64> = sent.iter().filter(|e| e.source.device_id == id).map(|e| e.first_seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5], "{id}'s envelopes out of order");
    }
    let metrics = http_get(&harness, "/metrics").await.1;
    assert!(metrics.contains("lodestone_bridge_bundles_sent_total 10"), "{metrics}");
    harness.bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bundling_each_envelope_is_a_message_keyed_by_device() {
    let harness = start_with(|c| c.kafka.bundle_envelopes_max = 1).await;
    let mut device = connect(&harness, "dev-6").await;
    device.publish(&data_topic("fleet", "trucks", "dev-6"), envelope("dev-6", "boot", 1, &[6.0]).to_cbor()).await;
    assert_eq!(device.next_ack().await.through_seq, 1);
    let ingested = read_topic(&harness, INGEST, 1).await;
    assert_eq!(ingested[0].key.as_deref(), Some("dev-6"));
    assert_eq!(ingested[0].headers["content-type"], "application/cbor");
    assert_eq!(ingested[0].headers["device_id"], "dev-6");
    assert_eq!(envelopes_in(&ingested)[0].records.len(), 1);
    harness.bridge.shutdown().await.unwrap();
}
