//! The whole pipeline through the real components: edge agent (LMDB) → MQTT → broker-bridge
//! (rumqttd) → tansu → ingest-service → Parquet store → query-service (DataFusion) over HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use lodestone_model::{Dimension, Envelope, MeasureValue, Record, Scalar, Source};
use lodestone_tests::{bin_dir, poll_until, Stack, StackOptions, DEAD_LETTER_TOPIC, INGEST_TOPIC};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const LANDING: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    lodestone_kit::now_ns() / 1_000_000
}

async fn produce(bootstrap: &str, key: &str, payload: &[u8], content_type: Option<&str>) {
    let producer: FutureProducer = lodestone_kit::kafka::producer_config(bootstrap, "lodestone-test").create().unwrap();
    let mut record = FutureRecord::to(INGEST_TOPIC).key(key).payload(payload);
    if let Some(content_type) = content_type {
        record = record.headers(OwnedHeaders::new().insert(Header { key: "content-type", value: Some(content_type) }));
    }
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produced");
}

/// Reads the dead-letter topic until `count` messages arrived; returns (reason header, payload).
async fn dead_letters(bootstrap: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[DEAD_LETTER_TOPIC]).unwrap();
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + LANDING;
    while letters.len() < count {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} dead letters arrived: {letters:?}", letters.len()))
            .unwrap();
        let reason = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "reason").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()))
            .unwrap_or_default();
        letters.push((reason, message.payload().unwrap_or_default().to_vec()));
    }
    letters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_posted_to_an_edge_agent_comes_back_from_sql() {
    let stack = Stack::start(StackOptions::default()).await;
    let time_ms = now_ms();
    let body = json!({"records": [{
        "dimensions": {"room": "boiler", "sensor": "s1"},
        "measure_name": "temperature",
        "value": 21.5,
        "time": time_ms,
        "time_unit": "ms",
    }]});
    let url = format!("{}/v1/write?database=plant&table=sensors", stack.url(stack.ports.agent_http));
    let response = stack.http.post(&url).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());

    let sql = r#"SELECT room, sensor, measure_name, "measure_value::double", CAST(time AS BIGINT) FROM plant.sensors"#;
    let rows = poll_until("the reading to be queryable", LANDING, || async { stack.try_rows(sql).await.filter(|r| !r.is_empty()) }).await;
    assert_eq!(rows, vec![vec![json!("boiler"), json!("s1"), json!("temperature"), json!(21.5), json!(time_ms * 1_000_000)]]);
    // The agent's Prometheus counters: the reading came in, went out, and the bridge's ack
    // deleted it from the outbox.
    let agent = stack.ports.agent_http;
    poll_until("the agent's ack to show in /metrics", LANDING, || async {
        (stack.metric(agent, "lodestone_agent_records_acked_total").await? >= 1.0).then_some(())
    })
    .await;
    assert!(stack.metric(agent, "lodestone_agent_records_received_total").await.unwrap() >= 1.0);
    assert_eq!(stack.metric(agent, "lodestone_agent_records_rejected_total").await, Some(0.0));

    // Only queries: anything else is refused with a stable code, and the data stays.
    let url = format!("{}/v1/query", stack.url(stack.ports.query_http));
    for sql in ["DROP TABLE plant.sensors", "CREATE TABLE plant.copy AS SELECT 1", "INSERT INTO plant.sensors VALUES (1)"] {
        let response = stack.http.post(&url).json(&json!({ "sql": sql })).send().await.unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("statement_not_allowed")), "{sql}: {body}");
    }
    stack.wait_for_count("plant.sensors", 1, LANDING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mqtt_json_and_a_kafka_producer_both_land() {
    let stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let time_ms = now_ms();
    let from_mqtt = json!({"v": 1, "source": {"device_id": "dev-json"}, "records": [
        {"dimensions": {"line": "a"}, "measure_name": "pressure", "value": 1.25, "time": time_ms, "time_unit": "ms"},
        {"dimensions": {"line": "a"}, "measure_name": "running", "value": true, "time": time_ms, "time_unit": "ms"},
    ]});
    assert!(stack.mosquitto_pub("lodestone/v1/plant/lines/dev-json", from_mqtt.to_string().as_bytes()).await.success());

    let from_kafka = Envelope {
        database: Some("plant".into()),
        table: Some("lines".into()),
        source: Source { device_id: "app-1".into(), boot_id: "b1".into() },
        first_seq: 1,
        unacked_from: None,
        records: vec![Record {
            dimensions: vec![Dimension { name: "line".into(), value: "b".into() }],
            measure_name: "pressure".into(),
            value: MeasureValue::Single(Scalar::Double(2.5)),
            time_ns: time_ms * 1_000_000,
            version: 1,
        }],
        ..Default::default()
    };
    produce(&stack.bootstrap(), "app-1", &from_kafka.to_cbor(), Some("application/cbor")).await;

    stack.wait_for_count("plant.lines", 3, LANDING).await;
    let rows = stack
        .query(r#"SELECT line, measure_name, "measure_value::double", "measure_value::boolean" FROM plant.lines ORDER BY line, measure_name"#)
        .await;
    assert_eq!(
        rows["rows"],
        json!([["a", "pressure", 1.25, null], ["a", "running", null, true], ["b", "pressure", 2.5, null]])
    );
    // Timestream's own spelling, unquoted: a cast of `measure_value` resolved to the typed column.
    let rows = stack
        .query(
            "SELECT line, measure_value::double, measure_value::boolean FROM plant.lines \
             WHERE measure_value::double > 1.0 OR measure_value::boolean ORDER BY line, measure_value::double",
        )
        .await;
    assert_eq!(rows["rows"], json!([["a", 1.25, null], ["a", null, true], ["b", 2.5, null]]));
    let rows = stack.query("SELECT line, max(measure_value::double) AS peak FROM plant.lines GROUP BY line ORDER BY peak DESC").await;
    assert_eq!(rows["rows"], json!([["b", 2.5], ["a", 1.25]]));

    // The worker that stored them reports itself ready, with the ingest topic's 4 partitions and
    // the dead-letter topic's one.
    let ready = stack.http.get(format!("{}/ready", stack.url(stack.ports.ingest_http))).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(stack.metric(stack.ports.ingest_http, "lodestone_ingest_partitions_assigned").await, Some(5.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_go_to_the_dead_letter_topic_and_valid_ones_still_land() {
    let stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let time_ms = now_ms();
    let valid = |device: &str, value: f64| {
        json!({"v": 1, "source": {"device_id": device}, "database": "plant", "table": "valves", "records": [
            {"dimensions": {"valve": device}, "measure_name": "open", "value": value, "time": time_ms, "time_unit": "ms"}
        ]})
        .to_string()
    };
    let topic = "lodestone/v1/plant/valves/dev-m";
    assert!(stack.mosquitto_pub(topic, valid("dev-m", 1.0).as_bytes()).await.success());
    assert!(stack.mosquitto_pub(topic, b"{\"v\": 1, \"this is not\": an envelope").await.success());
    assert!(stack.mosquitto_pub(topic, valid("dev-m", 1.0).replace(&time_ms.to_string(), &(time_ms + 1).to_string()).as_bytes()).await.success());

    produce(&stack.bootstrap(), "dev-k", valid("dev-k", 2.0).as_bytes(), None).await;
    produce(&stack.bootstrap(), "dev-k", b"\xa1\x61v\xff garbage", Some("application/cbor")).await;
    produce(&stack.bootstrap(), "dev-k2", valid("dev-k2", 3.0).as_bytes(), Some("application/json")).await;

    stack.wait_for_count("plant.valves", 4, LANDING).await;
    let letters = dead_letters(&stack.bootstrap(), 2).await;
    let reasons: Vec<&str> = letters.iter().map(|(reason, _)| reason.as_str()).collect();
    assert_eq!(reasons, ["malformed_payload", "malformed_payload"], "{letters:?}");
    let sums = stack.query(r#"SELECT valve, sum("measure_value::double") FROM plant.valves GROUP BY valve ORDER BY valve"#).await;
    assert_eq!(sums["rows"], json!([["dev-k", 2.0], ["dev-k2", 3.0], ["dev-m", 2.0]]));

    // Rejections are data: both are rows of the rejected_records table, with their reason.
    let sql = r#"SELECT source, reason, count(*) FROM "_lodestone".rejected_records GROUP BY source, reason ORDER BY source"#;
    let rejected = poll_until("rejections in rejected_records", LANDING, || async {
        stack.try_rows(sql).await.filter(|rows| rows.iter().map(|r| r[2].as_i64().unwrap_or(0)).sum::<i64>() == 2)
    })
    .await;
    assert_eq!(rejected, vec![vec![json!("bridge"), json!("malformed_payload"), json!(1)], vec![json!("ingest"), json!("malformed_payload"), json!(1)]]);
}

/// What writers may create is bounded (`[store.limits]`): past a bound a record is rejected with
/// its own reason, and the worker goes on storing the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_the_store_limits_are_rejected_and_the_others_still_land() {
    let limits = [("TABLES_PER_DATABASE_MAX", "2"), ("DIMENSIONS_PER_TABLE_MAX", "2")];
    let ingest_env = limits.iter().map(|(key, value)| (format!("LODESTONE_INGEST__STORE__LIMITS__{key}"), value.to_string())).collect();
    let stack = Stack::start(StackOptions { edge_agent: false, ingest_env, ..Default::default() }).await;
    let time_ms = now_ms();
    let envelope = |table: &str, dimensions: Value| {
        json!({"v": 1, "source": {"device_id": "dev-l"}, "database": "bounded", "table": table, "records": [
            {"dimensions": dimensions, "measure_name": "m", "value": 1.0, "time": time_ms, "time_unit": "ms"}
        ]})
        .to_string()
    };
    // One key: one partition, so the worker sees them in this order.
    for (table, dimensions) in [
        ("first", json!({"a": "x"})),
        ("second", json!({"a": "x"})),
        ("third", json!({"a": "x"})),             // a third table: too_many_tables
        ("first", json!({"a": "y", "b": "y"})),   // two dimensions: the bound
        ("first", json!({"a": "z", "c": "z"})),   // a third dimension name: too_many_table_dimensions
        ("first", json!({"a": "w"})),
    ] {
        produce(&stack.bootstrap(), "dev-l", envelope(table, dimensions).as_bytes(), None).await;
    }
    stack.wait_for_count("bounded.first", 3, LANDING).await;
    stack.wait_for_count("bounded.second", 1, LANDING).await;
    let sql = r#"SELECT reason, count(*) FROM "_lodestone".rejected_records GROUP BY reason ORDER BY reason"#;
    let rejected = poll_until("both rejections in rejected_records", LANDING, || async {
        stack.try_rows(sql).await.filter(|rows| rows.iter().map(|r| r[1].as_i64().unwrap_or(0)).sum::<i64>() == 2)
    })
    .await;
    assert_eq!(rejected, vec![vec![json!("too_many_table_dimensions"), json!(1)], vec![json!("too_many_tables"), json!(1)]]);
    let tables = stack.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'bounded' ORDER BY table_name").await;
    assert_eq!(tables["rows"], json!([["first"], ["second"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_of_100_devices_lands_every_reading() {
    let stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let output = tokio::process::Command::new(bin_dir().join("lodestone-sim"))
        .args(["mqtt", "--host", "127.0.0.1", "--port", &stack.ports.mqtt.to_string()])
        .args(["--devices", "100", "--readings-per-device", "1000", "--batch", "100", "--database", "sim", "--table", "fleet"])
        .args(["--timeout-s", "600"])
        .envs(stack.sim_env())
        .output()
        .await
        .expect("lodestone-sim runs");
    assert!(output.status.success(), "simulator failed: {}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(output.stdout.trim_ascii()).expect("one JSON summary line");
    assert_eq!(summary["total"], 100_000);
    eprintln!("simulator: {} readings/s published and acknowledged", summary["readings_per_sec"]);

    let started = std::time::Instant::now();
    stack.wait_for_count("sim.fleet", 100_000, Duration::from_secs(300)).await;
    eprintln!("all 100000 readings queryable {:?} after the last acknowledgement", started.elapsed());
    let rows = stack.query("SELECT device_id, count(*), sum(measure_value::double) FROM sim.fleet GROUP BY device_id").await;
    let stored: BTreeMap<String, (i64, f64)> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap().to_string(), (row[1].as_i64().unwrap(), row[2].as_f64().unwrap())))
        .collect();
    let sent: BTreeMap<String, (i64, f64)> = summary["devices"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(device, totals)| (device.clone(), (totals["count"].as_i64().unwrap(), totals["sum"].as_f64().unwrap())))
        .collect();
    assert_eq!(sent.len(), 100);
    assert_eq!(stored, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_ingest_topic_from_the_start_stores_nothing_twice() {
    let mut stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let time_ns = now_ms() * 1_000_000;
    for batch in 0..20 {
        let envelope = Envelope {
            database: Some("plant".into()),
            table: Some("replayed".into()),
            source: Source { device_id: format!("app-{}", batch % 4), boot_id: "b1".into() },
            first_seq: 1,
            unacked_from: None,
            records: (0..10)
                .map(|i| Record {
                    dimensions: vec![Dimension { name: "batch".into(), value: batch.to_string() }],
                    measure_name: "n".into(),
                    value: MeasureValue::Single(Scalar::Bigint(i)),
                    time_ns: time_ns + i,
                    version: 1,
                })
                .collect(),
            ..Default::default()
        };
        produce(&stack.bootstrap(), &format!("app-{}", batch % 4), &envelope.to_cbor(), Some("application/cbor")).await;
    }
    stack.wait_for_count("plant.replayed", 200, LANDING).await;
    let status = stack.process("ingest-0").terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "ingest-0 stops cleanly on SIGTERM");

    // A worker in a new consumer group reads the topic from the start: every message again.
    let port = stack.start_ingest_in_group("ingest-replay", "replay-from-earliest", false).await;
    poll_until("the new worker to read all 20 messages", LANDING, || async {
        stack.metric(port, "lodestone_ingest_messages_skipped_total").await.filter(|n| *n >= 20.0)
    })
    .await;
    let count = stack.query("SELECT count(*) FROM plant.replayed").await;
    assert_eq!(count["rows"], json!([[200]]), "replayed messages below the catalog watermark are not stored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_queryable_before_it_is_persisted() {
    // Workers persist every 10 minutes here: whatever a query sees comes from their memory.
    let stack = Stack::start(StackOptions { edge_agent: false, persist_interval_ms: Some(600_000), ..Default::default() }).await;
    let time_ns = now_ms() * 1_000_000;
    let envelope = |value: f64, version: u64| Envelope {
        database: Some("plant".into()),
        table: Some("boilers".into()),
        source: Source { device_id: "app-mem".into(), boot_id: "b1".into() },
        first_seq: version,
        unacked_from: None,
        records: vec![Record {
            dimensions: vec![Dimension { name: "boiler".into(), value: "b1".into() }],
            measure_name: "temperature".into(),
            value: MeasureValue::Single(Scalar::Double(value)),
            time_ns,
            version,
        }],
        ..Default::default()
    };
    let sql = r#"SELECT boiler, measure_value::double, version FROM plant.boilers"#;
    produce(&stack.bootstrap(), "app-mem", &envelope(80.5, 1).to_cbor(), Some("application/cbor")).await;
    let rows = poll_until("the reading to be queryable", LANDING, || async { stack.try_rows(sql).await.filter(|r| !r.is_empty()) }).await;
    assert_eq!(rows, vec![vec![json!("b1"), json!(80.5), json!(1)]]);
    // A higher version replaces it, still in memory.
    produce(&stack.bootstrap(), "app-mem", &envelope(81.0, 2).to_cbor(), Some("application/cbor")).await;
    let rows = poll_until("the replacement to be queryable", LANDING, || async { stack.try_rows(sql).await.filter(|r| r[0][2] == json!(2)) }).await;
    assert_eq!(rows, vec![vec![json!("b1"), json!(81.0), json!(2)]]);
    let persisted = stack.metric(stack.ingest_ports[0], "lodestone_ingest_records_persisted_total").await;
    assert_eq!(persisted, Some(0.0), "nothing was persisted: the rows came from the worker's memory");
    let answer = stack.query(sql).await;
    assert_eq!(answer["memory_workers_unreachable"], json!(0), "{answer}");
}

/// Rows fetched from a worker's memory were read in full, whatever the query's memory limit; now
/// they count against it. With a limit of 256 KiB, a count over 20,000 rows still in memory is
/// refused with `memory_limit`, while a count over a narrow time range (the range is pushed down
/// to the worker) answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_fetched_from_workers_memory_count_against_the_query_memory_limit() {
    let query_env = vec![("LODESTONE_QUERY__LIMITS__QUERY_MEMORY_BYTES_MAX".to_string(), (256 * 1024).to_string())];
    let stack = Stack::start(StackOptions { edge_agent: false, persist_interval_ms: Some(600_000), query_env, ..Default::default() }).await;
    let start_ns = now_ms() * 1_000_000;
    let record = |i: i64| Record {
        dimensions: vec![Dimension { name: "boiler".into(), value: format!("b{i}") }],
        measure_name: "temperature".into(),
        value: MeasureValue::Single(Scalar::Double(i as f64)),
        time_ns: start_ns + i * 1_000_000,
        version: 1,
    };
    for part in 0..4 {
        let envelope = Envelope {
            database: Some("plant".into()),
            table: Some("big".into()),
            source: Source { device_id: "app-big".into(), boot_id: "b1".into() },
            first_seq: part * 5_000,
            records: (part as i64 * 5_000..(part as i64 + 1) * 5_000).map(record).collect(),
            ..Default::default()
        };
        produce(&stack.bootstrap(), "app-big", &envelope.to_cbor(), Some("application/cbor")).await;
    }
    let worker = stack.ingest_ports[0];
    poll_until("20,000 rows in the worker's memory", LANDING, || async {
        stack.metric(worker, "lodestone_ingest_records_written_total").await.filter(|&written| written >= 20_000.0)
    })
    .await;
    assert_eq!(stack.metric(worker, "lodestone_ingest_records_persisted_total").await, Some(0.0), "the rows are in memory only");

    let url = format!("{}/v1/query", stack.url(stack.ports.query_http));
    let ask = |sql: String| {
        let request = stack.http.post(&url).json(&json!({ "sql": sql }));
        async move {
            let response = request.send().await.expect("the query service answers");
            (response.status().as_u16(), response.json::<Value>().await.expect("a JSON answer"))
        }
    };
    let (status, body) = ask("SELECT count(*) FROM plant.big".to_string()).await;
    assert_eq!((status, body["error"]["code"].clone()), (422, json!("memory_limit")), "{body}");
    let from = start_ns + 100 * 1_000_000;
    let narrow = format!("SELECT count(*) AS n FROM plant.big WHERE time >= to_timestamp_nanos({from}) AND time < to_timestamp_nanos({})", from + 10_000_000);
    let (status, body) = ask(narrow).await;
    assert_eq!((status, body["rows"].clone()), (200, json!([[10]])), "{body}");
}
