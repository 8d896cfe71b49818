//! The MQTT fleet against a real broker (rumqttd, in process, on a free 127.0.0.1 port) and a
//! stand-in bridge that decodes every envelope and acks each device through its highest
//! gapless sequence number — the contract the real broker-bridge keeps.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lodestone_model::topic::{ack_topic, parse_data_topic, Ack, DATA_FILTER};
use lodestone_model::{ContentType, Envelope, Limits, MeasureValue, Scalar};
use lodestone_simulators::mqtt::{run_mqtt, MqttRun};
use lodestone_simulators::{FleetSpec, SeriesKind, Summary};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const PACKET_BYTES_MAX: usize = 2 * 1024 * 1024;

use lodestone_kit::now_ns;

/// Starts rumqttd on a free port in its own thread (it lives until the test process ends).
fn start_broker() -> SocketAddr {
    let addr = SocketAddr::from(([127, 0, 0, 1], lodestone_kit::ports::unused_port()));
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: PACKET_BYTES_MAX,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 5_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || rumqttd::Broker::new(config).start().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "rumqttd did not start listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    addr
}

/// What the stand-in bridge received from one device.
#[derive(Debug, Default)]
struct DeviceLog {
    /// first_seq → last_seq of every distinct envelope.
    envelopes: BTreeMap<u64, u64>,
    acked_through: u64,
    count: u64,
    sum: f64,
    duplicates: u64,
    dropped_first: bool,
}

#[derive(Clone, Copy)]
struct BridgeBehaviour {
    ack: bool,
    /// Ignore the first envelope from this device index once (as if it were lost).
    drop_first_of: Option<u32>,
}

type Logs = Arc<Mutex<BTreeMap<String, DeviceLog>>>;

/// Subscribes to every data topic and acks devices through their highest gapless sequence
/// number. Returns once its subscription is confirmed.
async fn start_bridge(broker: SocketAddr, behaviour: BridgeBehaviour, fleet: &FleetSpec) -> Logs {
    let logs: Logs = Arc::default();
    let drop_id = behaviour.drop_first_of.map(|index| fleet.series_id(index));
    let mut options = MqttOptions::new("stand-in-bridge", broker.ip().to_string(), broker.port());
    options.set_max_packet_size(PACKET_BYTES_MAX, PACKET_BYTES_MAX).set_inflight(1000).set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 100_000);
    client.subscribe(DATA_FILTER, QoS::AtLeastOnce).await.unwrap();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let (payloads_tx, mut payloads_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed_tx.take().map(|tx| tx.send(()));
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = payloads_tx.send(publish);
                }
                Ok(_) => {}
                Err(error) => panic!("stand-in bridge lost the broker: {error}"),
            }
        }
    });
    let bridge_logs = Arc::clone(&logs);
    tokio::spawn(async move {
        while let Some(publish) = payloads_rx.recv().await {
            let topic = parse_data_topic(&publish.topic).expect("a data topic");
            let envelope = Envelope::decode(&publish.payload, None, &Limits::default(), now_ns()).unwrap();
            assert_eq!(envelope.rejected, vec![], "the simulator sent an invalid record");
            assert_eq!(envelope.source.device_id, topic.device_id);
            let ack = {
                let mut logs = bridge_logs.lock().unwrap();
                let log = logs.entry(topic.device_id.clone()).or_default();
                if drop_id.as_deref() == Some(topic.device_id.as_str()) && !log.dropped_first {
                    log.dropped_first = true;
                    continue;
                }
                if log.envelopes.insert(envelope.first_seq, envelope.last_seq()).is_some() {
                    log.duplicates += 1;
                } else {
                    log.count += envelope.records.len() as u64;
                    log.sum += envelope
                        .records
                        .iter()
                        .map(|r| match r.value {
                            MeasureValue::Single(Scalar::Double(v)) => v,
                            ref other => panic!("not a double: {other:?}"),
                        })
                        .sum::<f64>();
                }
                while let Some(&last) = log.envelopes.get(&(log.acked_through + 1)) {
                    log.acked_through = last;
                }
                Ack { boot_id: envelope.source.boot_id.clone(), through_seq: log.acked_through }
            };
            if behaviour.ack && ack.through_seq > 0 {
                client.publish(ack_topic(&topic.device_id), QoS::AtLeastOnce, false, ack.to_json()).await.unwrap();
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await.unwrap().unwrap();
    logs
}

fn fleet(devices: u32, readings: u64, batch: u32) -> FleetSpec {
    FleetSpec {
        seed: 11,
        kind: SeriesKind::Device,
        id_prefix: "sim-".into(),
        series_count: devices,
        readings_per_series: readings,
        batch_records_max: batch,
        start_ns: FleetSpec::default_start_ns(now_ns(), readings, 1000),
        interval_ms: 1000,
        profile: lodestone_simulators::Profile::Walk,
        series_rate_per_s: 0.0,
    }
}

fn mqtt_run(broker: SocketAddr, fleet: FleetSpec) -> MqttRun {
    MqttRun {
        host: broker.ip().to_string(),
        port: broker.port(),
        // A bare broker in plain text: this file tests the fleet's MQTT conversation, the
        // end-to-end tests run it over TLS with device certificates.
        identities: None,
        fleet,
        database: "sim".into(),
        table: "readings".into(),
        format: ContentType::Cbor,
        boot_id: "0123456789abcdef0123456789abcdef".into(),
        rate_per_s: 0,
        inflight_envelopes_max: 8,
        packet_bytes_max: lodestone_simulators::mqtt::PACKET_BYTES_MAX_DEFAULT,
        resend_after: Duration::from_secs(10),
        keep_alive: Duration::from_secs(30),
        connect_rate_per_s: 0,
        timeout: Duration::from_secs(120),
    }
}

/// The summary and the bridge agree on every device: count, exact sum, gapless sequence.
fn assert_bridge_saw_summary(summary: &Summary, logs: &Logs, readings: u64) {
    let logs = logs.lock().unwrap();
    assert_eq!(logs.len(), summary.devices.len());
    for (device_id, device) in &summary.devices {
        let log = &logs[device_id];
        assert_eq!(log.acked_through, readings, "{device_id}: gapless through the last seq");
        assert_eq!(log.count, device.count, "{device_id}");
        assert_eq!(log.sum.to_bits(), device.sum.to_bits(), "{device_id}: {} vs {}", log.sum, device.sum);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_each_with_a_connection_get_every_reading_acked() {
    let broker = start_broker();
    let fleet = fleet(1000, 40, 20);
    let logs = start_bridge(broker, BridgeBehaviour { ack: true, drop_first_of: None }, &fleet).await;
    let run = MqttRun { format: ContentType::Json, ..mqtt_run(broker, fleet) };
    let summary = run_mqtt(run).await.unwrap();
    assert_eq!((summary.total, summary.unacked, summary.devices.len()), (40_000, 0, 1000));
    assert_bridge_saw_summary(&summary, &logs, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_envelope_is_published_again_when_acks_stall() {
    let broker = start_broker();
    let fleet = fleet(3, 100, 10);
    let logs = start_bridge(broker, BridgeBehaviour { ack: true, drop_first_of: Some(2) }, &fleet).await;
    let run = MqttRun { inflight_envelopes_max: 4, resend_after: Duration::from_millis(300), ..mqtt_run(broker, fleet) };
    let summary = run_mqtt(run).await.unwrap();
    assert_eq!((summary.total, summary.unacked), (300, 0));
    assert_bridge_saw_summary(&summary, &logs, 100);
    let logs = logs.lock().unwrap();
    assert!(logs["sim-0002"].dropped_first);
    assert!(logs["sim-0002"].duplicates >= 1, "the envelopes after the lost one were sent again too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acks_the_run_times_out_and_counts_what_is_unacked() {
    let broker = start_broker();
    let fleet = fleet(2, 100, 10);
    let _logs = start_bridge(broker, BridgeBehaviour { ack: false, drop_first_of: None }, &fleet).await;
    let run = MqttRun { inflight_envelopes_max: 2, timeout: Duration::from_secs(1), ..mqtt_run(broker, fleet) };
    let started = Instant::now();
    let summary = run_mqtt(run).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "the timeout bounds the run");
    // Each device sent its window (2 envelopes of 10) and then waited for acks that never came.
    assert_eq!((summary.total, summary.unacked, summary.unacked_series), (40, 200, 2));
}

/// A TCP proxy in front of the broker. While `swallow` is set it discards what devices send
/// (those publishes are lost for sure); `cut` then drops every connection open at that moment.
struct CuttingProxy {
    addr: SocketAddr,
    swallow: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::broadcast::Sender<()>,
}

async fn start_cutting_proxy(broker: SocketAddr) -> CuttingProxy {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let swallow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (cut, _) = tokio::sync::broadcast::channel(1);
    let (cut_tx, swallowing) = (cut.clone(), Arc::clone(&swallow));
    tokio::spawn(async move {
        loop {
            let (device, _) = listener.accept().await.unwrap();
            let mut cut_rx = cut_tx.subscribe();
            let swallowing = Arc::clone(&swallowing);
            tokio::spawn(async move {
                let upstream = tokio::net::TcpStream::connect(broker).await.unwrap();
                let (mut device_rx, mut device_tx) = device.into_split();
                let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
                let to_broker = async {
                    let mut buffer = vec![0; 64 * 1024];
                    loop {
                        let n = device_rx.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if !swallowing.load(Ordering::SeqCst) && upstream_tx.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = to_broker => {}
                    _ = tokio::io::copy(&mut upstream_rx, &mut device_tx) => {}
                    _ = cut_rx.recv() => {}
                }
            });
        }
    });
    CuttingProxy { addr, swallow, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_devices_resubscribe_and_publish_unacked_envelopes_again() {
    let broker = start_broker();
    let proxy = start_cutting_proxy(broker).await;
    let fleet = fleet(5, 200, 10);
    let logs = start_bridge(broker, BridgeBehaviour { ack: true, drop_first_of: None }, &fleet).await;
    // Slow enough that the cut lands mid-run; resends on stalled acks are out of reach, so only
    // the reconnect path can finish the run in time.
    let run = MqttRun { rate_per_s: 500, resend_after: Duration::from_secs(600), ..mqtt_run(proxy.addr, fleet) };
    let running = tokio::spawn(run_mqtt(run));
    // Cut once the run is under way (a fifth of the readings arrived), and before it can end.
    let received = || logs.lock().unwrap().values().map(|log| log.count).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received() < 200 {
        assert!(Instant::now() < deadline, "the run did not get under way");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.swallow.store(true, std::sync::atomic::Ordering::SeqCst);
    // The outage: publishes are swallowed for a while (its length is the fault, not a wait).
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut.send(()).unwrap();
    proxy.swallow.store(false, std::sync::atomic::Ordering::SeqCst);
    let summary = tokio::time::timeout(Duration::from_secs(30), running).await.unwrap().unwrap().unwrap();
    assert_eq!((summary.total, summary.unacked), (1000, 0));
    assert_bridge_saw_summary(&summary, &logs, 200);
    let logs = logs.lock().unwrap();
    assert!(logs.values().any(|log| log.duplicates > 0), "some envelopes were published again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spans_the_fleet() {
    let broker = start_broker();
    let fleet = fleet(10, 20, 10);
    let _logs = start_bridge(broker, BridgeBehaviour { ack: true, drop_first_of: None }, &fleet).await;
    let run = MqttRun { rate_per_s: 200, ..mqtt_run(broker, fleet) };
    let summary = run_mqtt(run).await.unwrap();
    assert_eq!((summary.total, summary.unacked), (200, 0));
    assert!(summary.elapsed_s >= 0.9, "200 readings at 200/s took {} s", summary.elapsed_s);
}
