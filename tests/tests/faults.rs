//! Fault tests of the durability contract (ARCHITECTURE.md, invariants): each runs a load through the real
//! pipeline, injects a fault (kill -9, a restart, a cut connection, bad payloads), and checks the
//! store against the load's ledger with SQL: every acknowledged reading present exactly once.
//! Each prints `figure <test>_lost <n>` and `figure <test>_duplicated <n>`.
//!
//! `make test-faults` runs this file alone. The tests take one at a time ([`SERIAL`]): each
//! drives the machine's two cores and a fault schedule measured in seconds.

use std::time::Duration;

use lodestone_tests::{poll_until, report, KafkaStorage, Ledger, Relay, Stack, StackOptions, INGEST_PARTITIONS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One fault test at a time, even under `--test-threads=2`.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the store may stop growing before a test reports what is missing.
const STALL: Duration = Duration::from_secs(90);

/// `lodestone-sim` arguments: `subcommand` with its own `args`, then the data shared by every
/// test: readings 100 ms apart (so a whole run lies within the tables' memory retention), `rate`
/// readings/s in total, into `faults.{table}`.
fn sim_args(subcommand: &str, args: &[&str], rate: u64, table: &str) -> Vec<String> {
    let rate = rate.to_string();
    let data = ["--interval-ms", "100", "--rate", &rate, "--database", "faults", "--table", table, "--timeout-s", "900"];
    std::iter::once(subcommand).chain(args.iter().copied()).chain(data).map(str::to_string).collect()
}

fn start_sim(stack: &Stack, args: &[String]) -> tokio::task::JoinHandle<serde_json::Value> {
    stack.sim(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// 100,000 readings from 50 MQTT devices at 2,000/s into `faults.{table}`; devices resend what
/// is not acknowledged within 3 s.
fn mqtt_load(stack: &Stack, table: &str) -> tokio::task::JoinHandle<serde_json::Value> {
    let port = stack.ports.mqtt.to_string();
    let args = ["--port", &port, "--batch", "50", "--devices", "50", "--readings-per-device", "2000", "--resend-after-ms", "3000"];
    start_sim(stack, &sim_args("mqtt", &args, 2_000, table))
}

/// Waits `delay` (a fault schedule, not a synchronisation) and checks the load is still running.
async fn mid_load(load: &tokio::task::JoinHandle<serde_json::Value>, delay: Duration) {
    tokio::time::sleep(delay).await;
    assert!(!load.is_finished(), "the load ended before the fault; make it longer");
}

/// Audits `faults.{table}` against the load's summary and prints the test's figures.
async fn settle_and_report(stack: &Stack, test: &str, table: &str, id_dimension: &str, summary: &serde_json::Value, expected: i64) {
    let ledger = Ledger::from_summary(summary);
    assert_eq!(ledger.total(), expected, "the load's acknowledged readings");
    let table = format!("faults.{table}");
    stack.settle_count(&table, ledger.total(), STALL).await;
    let audit = stack.audit(&table, id_dimension, &ledger).await;
    report(test, &audit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_workers_killed_every_20_to_40_s_lose_and_duplicate_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions { edge_agent: false, ingest_workers: 2, ..Default::default() }).await;
    // The two workers share the partitions: each reads some, and together all of the ingest
    // topic's and the dead-letter topic's one (the gauge counts both topics).
    let assigned = poll_until("both ingest workers to be assigned partitions", Duration::from_secs(60), || async {
        let mut counts = Vec::new();
        for &port in &stack.ingest_ports {
            counts.push(stack.metric(port, "lodestone_ingest_partitions_assigned").await?);
        }
        (counts.iter().all(|&c| c > 0.0) && counts.iter().sum::<f64>() == f64::from(INGEST_PARTITIONS + 1)).then_some(counts)
    })
    .await;
    println!("ingest_kill: partitions assigned per worker {assigned:?}");
    // 1,000,000 readings at 10,000/s: about 100 s of load, so 2 to 5 kills land in it.
    let bootstrap = stack.bootstrap();
    let args = ["--bootstrap", &bootstrap, "--batch", "500", "--devices", "100", "--readings-per-device", "10000"];
    let mut load = start_sim(&stack, &sim_args("kafka", &args, 10_000, "ingest_kill"));
    let mut rng = StdRng::seed_from_u64(20);
    let mut kills = 0;
    let summary = loop {
        let wait = Duration::from_secs(rng.gen_range(20..=40));
        tokio::select! {
            summary = &mut load => break summary.expect("the load task"),
            () = tokio::time::sleep(wait) => {
                let victim = format!("ingest-{}", rng.gen_range(0..2));
                eprintln!("kill -9 {victim}");
                stack.kill9(&victim);
                kills += 1;
                stack.restart(&victim).await;
            }
        }
    };
    assert!(kills >= 2, "the load ended after {kills} kills; it must span at least two");
    println!("figure ingest_kill_kills {kills} kills");
    settle_and_report(&stack, "ingest_kill", "ingest_kill", "device_id", &summary, 1_000_000).await;
}

/// MQTT devices keep publishing while the bridge (rumqttd inside, memory only) is killed and
/// restarted: devices reconnect and resend what was not acknowledged end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_bridge_killed_mid_load_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let load = mqtt_load(&stack, "bridge_kill");
    for _ in 0..2 {
        mid_load(&load, Duration::from_secs(12)).await;
        eprintln!("kill -9 broker-bridge");
        stack.kill9("broker-bridge");
        stack.restart("broker-bridge").await;
    }
    let summary = load.await.expect("the load task");
    settle_and_report(&stack, "bridge_kill", "bridge_kill", "device_id", &summary, 100_000).await;
}

/// tansu (SQLite storage) is killed and restarted under MQTT load: the bridge holds its acks
/// while Kafka is away, devices resend, and the ingest workers resume from committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_killed_and_restarted_mid_load_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions { edge_agent: false, kafka_storage: KafkaStorage::Sqlite, ..Default::default() }).await;
    let load = mqtt_load(&stack, "tansu_kill");
    mid_load(&load, Duration::from_secs(15)).await;
    eprintln!("kill -9 tansu");
    stack.kill9("tansu");
    stack.restart("tansu").await;
    let summary = load.await.expect("the load task");
    settle_and_report(&stack, "tansu_kill", "tansu_kill", "device_id", &summary, 100_000).await;
}

/// The edge agent is killed 20 times while sensors post to it: every write it answered with
/// success is in its LMDB outbox and reaches the store after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_agent_killed_20_times_mid_publish_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions::default()).await;
    let url = stack.url(stack.ports.agent_http);
    let args = ["--url", &url, "--batch", "50", "--sensors", "20", "--readings-per-sensor", "5000"];
    let load = start_sim(&stack, &sim_args("agent", &args, 2_000, "agent_kill"));
    let mut rng = StdRng::seed_from_u64(21);
    for kill in 0..20 {
        mid_load(&load, Duration::from_millis(rng.gen_range(500..2_000))).await;
        eprintln!("kill -9 edge agent ({})", kill + 1);
        stack.kill9("agent-edge-1");
        stack.restart("agent-edge-1").await;
    }
    let summary = load.await.expect("the load task");
    settle_and_report(&stack, "agent_kill", "agent_kill", "sensor_id", &summary, 100_000).await;
}

/// 10,000 bad payloads (9,800 undecodable, 200 over the bridge's payload bound) from one device,
/// among 50,000 valid readings from 20 others: each bad one is on the dead-letter topic with its
/// reason, every valid one is stored, and the bad device is never disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_payloads_go_to_the_dead_letter_topic_and_valid_traffic_lands() {
    const MALFORMED: usize = 9_800;
    const OVERSIZED: usize = 200;
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let port = stack.ports.mqtt.to_string();
    let args = ["--port", &port, "--batch", "50", "--devices", "20", "--readings-per-device", "2500"];
    let load = start_sim(&stack, &sim_args("mqtt", &args, 2_000, "bad_payloads"));

    let mut options = rumqttc::MqttOptions::new("bad-device", "127.0.0.1", stack.ports.mqtt);
    options.set_transport(stack.device_transport("bad-device"));
    options.set_max_packet_size(64 * 1024, 512 * 1024); // (incoming, outgoing)
    options.set_inflight(100);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 200);
    let link = tokio::spawn(async move {
        let (mut connacks, mut pubacks) = (0, 0);
        while pubacks < MALFORMED + OVERSIZED {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => connacks += 1,
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => pubacks += 1,
                Ok(_) => {}
                Err(error) => panic!("the bad device lost its connection: {error}"),
            }
        }
        connacks
    });
    let topic = lodestone_model::topic::data_topic("faults", "bad_payloads", "bad-device");
    for i in 0..MALFORMED + OVERSIZED {
        let payload = if i % 49 == 0 && i / 49 < OVERSIZED {
            vec![b'{'; 270 * 1024] // over payload_bytes_max (256 KiB), under packet_bytes_max
        } else {
            format!("\u{fffd} not an envelope #{i}").into_bytes()
        };
        client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("queued");
    }
    let connacks = tokio::time::timeout(Duration::from_secs(300), link).await.expect("every bad payload acknowledged").expect("link task");
    assert_eq!(connacks, 1, "the bad device connected once: no reconnect loop");

    let reasons = dead_letter_reasons(&stack.bootstrap(), "bad-device", MALFORMED + OVERSIZED).await;
    println!("figure bad_payloads_dead_letters {} messages", reasons.values().sum::<usize>());
    assert_eq!(reasons.get("payload_too_large"), Some(&OVERSIZED), "{reasons:?}");
    assert_eq!(reasons.get("malformed_payload"), Some(&MALFORMED), "{reasons:?}");

    let summary = load.await.expect("the load task");
    settle_and_report(&stack, "bad_payloads", "bad_payloads", "device_id", &summary, 50_000).await;
}

/// Reads the dead-letter topic from the start until `count` letters of `device_id` arrived (or
/// 5 minutes passed); their count per `reason` header.
async fn dead_letter_reasons(bootstrap: &str, device_id: &str, count: usize) -> std::collections::BTreeMap<String, usize> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fault-test-dead-letters")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[lodestone_tests::DEAD_LETTER_TOPIC]).expect("subscribe");
    let header = |message: &rdkafka::message::BorrowedMessage, name: &str| {
        message.headers().and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()))
    };
    let mut reasons = std::collections::BTreeMap::new();
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while seen < count {
        let Ok(message) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            panic!("only {seen} of {count} dead letters arrived: {reasons:?}");
        };
        let message = message.expect("a dead letter");
        if header(&message, "device_id").as_deref() == Some(device_id) {
            *reasons.entry(header(&message, "reason").unwrap_or_default()).or_insert(0) += 1;
            seen += 1;
        }
    }
    reasons
}

/// Sensors post to the edge agent while each service in turn gets SIGTERM, must exit cleanly
/// within 10 s, and is started again: nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_each_service_under_load_exits_within_10_s_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions::default()).await;
    let url = stack.url(stack.ports.agent_http);
    let args = ["--url", &url, "--batch", "50", "--sensors", "20", "--readings-per-sensor", "4000"];
    let load = start_sim(&stack, &sim_args("agent", &args, 1_500, "sigterm"));
    for service in ["agent-edge-1", "broker-bridge", "ingest-0", "query-service"] {
        mid_load(&load, Duration::from_secs(8)).await;
        let started = std::time::Instant::now();
        let status = stack.process(service).terminate(Duration::from_secs(10));
        let Some(status) = status else { panic!("{service} still running 10 s after SIGTERM:\n{}", stack.process(service).tail()) };
        assert!(status.success(), "{service} exited with {status} after SIGTERM:\n{}", stack.process(service).tail());
        // A clean exit within its budget: no service gave up on draining, persisting or committing.
        let log = std::fs::read_to_string(&stack.process(service).log).unwrap_or_default();
        let overran: Vec<&str> =
            log.lines().filter(|l| l.contains("WARN") && ["shutdown.timeout_ms", "shutdown timeout", "shutdown deadline"].iter().any(|m| l.contains(m))).collect();
        assert!(overran.is_empty(), "{service} ran out of its shutdown budget:\n{}", overran.join("\n"));
        println!("figure sigterm_{}_exit_ms {} ms", service.replace('-', "_"), started.elapsed().as_millis());
        stack.restart(service).await;
    }
    let summary = load.await.expect("the load task");
    settle_and_report(&stack, "sigterm", "sigterm", "sensor_id", &summary, 80_000).await;
}

/// Two edge agents are cut off from the broker for 5 minutes, each taking 2,000 readings/s.
/// - `edge-1` (quota 64 MiB, `reject_new`) never exceeds its quota and counts the writes it
///   refused; after the link returns, its backlog drains and every reading it accepted is stored.
/// - `edge-2` (quota 8 MiB, `drop_oldest`) accepts everything and drops its oldest readings: the
///   readings missing from the store are exactly as many as it reports dropped, and for every
///   sensor they are its oldest (what is stored is a gap-free run up to its last reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_agents_cut_off_for_5_minutes_stay_within_their_quotas_and_lose_only_what_they_drop() {
    const QUOTA_BYTES: u64 = 64 * 1024 * 1024;
    const SMALL_QUOTA_BYTES: u64 = 8 * 1024 * 1024;
    const CUT: Duration = Duration::from_secs(300);
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let relay = Relay::start(stack.ports.mqtt).await;
    let quota = |bytes: u64, policy: &str| {
        vec![
            ("LODESTONE_AGENT__OUTBOX__BYTES_MAX".to_string(), bytes.to_string()),
            ("LODESTONE_AGENT__OUTBOX__FULL_POLICY".to_string(), policy.to_string()),
        ]
    };
    let port_1 = stack.start_agent_via("edge-1", relay.port, &quota(QUOTA_BYTES, "reject_new")).await;
    let port_2 = stack.start_agent_via("edge-2", relay.port, &quota(SMALL_QUOTA_BYTES, "drop_oldest")).await;
    let (url_1, url_2) = (stack.url(port_1), stack.url(port_2));
    let args = ["--url", &url_1, "--batch", "50", "--sensors", "20", "--readings-per-sensor", "35000"];
    let load_1 = start_sim(&stack, &sim_args("agent", &args, 2_000, "agent_cut"));
    let status = |url: String| {
        let http = stack.http.clone();
        async move {
            let response = http.get(format!("{url}/v1/status")).send().await.ok()?;
            assert!(response.status().is_success(), "GET {url}/v1/status: {}", response.status());
            response.json::<serde_json::Value>().await.ok()
        }
    };

    mid_load(&load_1, Duration::from_secs(10)).await;
    eprintln!("cutting the agents off the broker for {CUT:?}");
    relay.cut();
    let cut_at = std::time::Instant::now();
    // An agent learns of the cut when its connection's read fails; only then must it stay down.
    for url in [&url_1, &url_2] {
        lodestone_tests::poll_until("an agent to notice the cut", Duration::from_secs(30), || async {
            status(url.clone()).await.filter(|s| s["connected"] == false)
        })
        .await;
    }
    // edge-2's whole load arrives while it is cut off, so nothing it drops was ever delivered.
    let args = ["--url", &url_2, "--batch", "50", "--sensors", "20", "--readings-per-sensor", "25000", "--seed", "2"];
    let load_2 = start_sim(&stack, &sim_args("agent", &args, 2_000, "agent_drop"));
    let (mut bytes_max_seen, mut entries_max_seen, mut small_bytes_max_seen, mut samples) = (0, 0, 0, 0);
    // Sampling both outboxes once a second for the length of the cut (a measurement, not a wait
    // for a condition).
    while cut_at.elapsed() < CUT {
        if let (Some(one), Some(two)) = (status(url_1.clone()).await, status(url_2.clone()).await) {
            assert_eq!((&one["connected"], &two["connected"]), (&false.into(), &false.into()), "an agent reached the broker while cut off");
            bytes_max_seen = bytes_max_seen.max(one["outbox"]["bytes"].as_u64().unwrap_or(0));
            entries_max_seen = entries_max_seen.max(one["outbox"]["entries"].as_u64().unwrap_or(0));
            small_bytes_max_seen = small_bytes_max_seen.max(two["outbox"]["bytes"].as_u64().unwrap_or(0));
            samples += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(load_2.is_finished(), "edge-2's load must end while it is cut off");
    relay.restore();
    let restored_at = std::time::Instant::now();
    assert!(samples >= CUT.as_secs() / 2, "only {samples} samples of the outboxes during the cut");
    assert!(entries_max_seen > 0, "the backlog never grew: the cut did not hold");
    assert!(bytes_max_seen <= QUOTA_BYTES, "edge-1's outbox took {bytes_max_seen} bytes, over its quota of {QUOTA_BYTES}");
    assert!(small_bytes_max_seen <= SMALL_QUOTA_BYTES, "edge-2's outbox took {small_bytes_max_seen} bytes, over its quota");

    let summary_1 = load_1.await.expect("the load task");
    let summary_2 = load_2.await.expect("the load task");
    let drained = |url: String| {
        let status = &status;
        async move {
            lodestone_tests::poll_until("an agent's backlog to drain", Duration::from_secs(600), || async {
                status(url.clone()).await.filter(|s| s["outbox"]["entries"] == 0)
            })
            .await
        }
    };
    let (one, two) = (drained(url_1.clone()).await, drained(url_2.clone()).await);
    println!("figure agent_cut_backlog_max {entries_max_seen} readings");
    println!("figure agent_cut_outbox_max {bytes_max_seen} bytes");
    println!("figure agent_cut_refused_writes {} readings", one["counters"]["rejected"]);
    println!("figure agent_cut_drain_s {:.1} s", restored_at.elapsed().as_secs_f64());
    settle_and_report(&stack, "agent_cut", "agent_cut", "sensor_id", &summary_1, 700_000).await;
    for device in ["edge-1", "edge-2"] {
        let envelopes = assert_sent_in_order(&stack.bootstrap(), device).await;
        println!("figure agent_cut_{}_envelopes_in_order {envelopes} envelopes", device.replace('-', "_"));
    }

    // edge-2: the gap in the store equals what it dropped, and it is each sensor's oldest.
    let dropped = two["counters"]["dropped"].as_i64().expect("edge-2 reports `dropped`");
    let ledger = Ledger::from_summary(&summary_2);
    assert_eq!(ledger.total(), 500_000);
    assert!(dropped > 0, "an 8 MiB outbox cannot hold 500,000 readings");
    stack.settle_count("faults.agent_drop", ledger.total() - dropped, STALL).await;
    let audit = stack.audit("faults.agent_drop", "sensor_id", &ledger).await;
    println!("figure agent_drop_dropped {dropped} readings");
    println!("figure agent_drop_gap {} readings", audit.lost);
    println!("figure agent_drop_duplicated {} readings", audit.duplicated);
    assert_eq!((audit.lost, audit.duplicated), (dropped, 0), "the gap is exactly the dropped readings");
    let runs = stack
        .query("SELECT sensor_id, count(*), min(CAST(time AS BIGINT)), max(CAST(time AS BIGINT)) FROM faults.agent_drop GROUP BY sensor_id")
        .await;
    let rows = runs["rows"].as_array().expect("rows").clone();
    let last = rows.iter().map(|r| r[3].as_i64().unwrap()).max().expect("edge-2 delivered something");
    for row in &rows {
        let (count, first, latest) = (row[1].as_i64().unwrap(), row[2].as_i64().unwrap(), row[3].as_i64().unwrap());
        assert_eq!(latest, last, "sensor {}: its newest reading is kept", row[0]);
        assert_eq!((latest - first) / 100_000_000 + 1, count, "sensor {}: what is kept is gap-free", row[0]);
    }
}

/// Reads every message of `device_id` on the ingest topic and checks that the device's readings
/// left in order: within a boot, an envelope never starts past the highest sequence number sent
/// before it plus one. A resend may go back; nothing may skip ahead. Returns the envelopes read.
async fn assert_sent_in_order(bootstrap: &str, device_id: &str) -> usize {
    use lodestone_model::{split_message, Envelope, Limits, BUNDLE_MIME};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let (bootstrap, device_id) = (bootstrap.to_string(), device_id.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "fault-test-order")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let topic = lodestone_tests::INGEST_TOPIC;
        let mut assignment = rdkafka::TopicPartitionList::new();
        let mut ends = std::collections::BTreeMap::new();
        for partition in 0..lodestone_tests::INGEST_PARTITIONS {
            let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, rdkafka::Offset::Beginning).expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        let mut done: std::collections::BTreeSet<i32> = ends.iter().filter(|(_, high)| **high == 0).map(|(p, _)| *p).collect();
        let mut next_by_boot: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut envelopes = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while done.len() < ends.len() {
            assert!(std::time::Instant::now() < deadline, "the ingest topic was not read to its end within 2 minutes");
            let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
            let message = message.expect("a message");
            if message.offset() + 1 >= ends[&message.partition()] {
                done.insert(message.partition());
            }
            let content_type = message.headers().and_then(|h| {
                h.iter().find(|h| h.key == "content-type").and_then(|h| std::str::from_utf8(h.value?).ok().map(str::to_owned))
            });
            // The bridge bundles many devices' envelopes into one message; a Kafka producer's
            // message is one envelope, keyed by its device.
            if content_type.as_deref() != Some(BUNDLE_MIME) && message.key() != Some(device_id.as_bytes()) {
                continue;
            }
            let parts = split_message(message.payload().unwrap_or_default(), content_type.as_deref()).expect("a readable message");
            for (part, content_type) in parts {
                let envelope = Envelope::decode(part, content_type, &Limits::default(), i64::MAX).expect("an envelope");
                if envelope.source.device_id != device_id {
                    continue;
                }
                let sent = (envelope.records.len() + envelope.rejected.len()) as u64;
                let next = next_by_boot.entry(envelope.source.boot_id.clone()).or_insert(envelope.first_seq);
                assert!(
                    envelope.first_seq <= *next,
                    "{device_id} sent {}.. of boot {} before {}: out of order",
                    envelope.first_seq,
                    envelope.source.boot_id,
                    next
                );
                *next = (*next).max(envelope.first_seq + sent);
                envelopes += 1;
            }
        }
        assert!(envelopes > 0, "no envelope of {device_id} on the ingest topic");
        envelopes
    })
    .await
    .expect("the order check")
}
