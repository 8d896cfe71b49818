//! The edge-agent path against a minimal HTTP/1.1 stand-in for the agent's write endpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lodestone_simulators::agent::{run_agent, AgentRun};
use lodestone_simulators::{FleetSpec, SeriesKind, SimError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Request {
    target: String,
    content_type: String,
    body: serde_json::Value,
}

/// Answers requests with `statuses` in turn (then 204), recording each request.
async fn start_agent(statuses: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let answers = Arc::new(Mutex::new(statuses.into_iter()));
    let recorder = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, answers) = (Arc::clone(&recorder), Arc::clone(&answers));
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let target = request_line.split(' ').nth(1).unwrap().to_owned();
                    let (mut length, mut content_type) = (0, String::new());
                    loop {
                        let mut line = String::new();
                        stream.read_line(&mut line).await.unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').unwrap();
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "content-type" => content_type = value.trim().to_owned(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    seen.lock().unwrap().push(Request { target, content_type, body: serde_json::from_slice(&body).unwrap() });
                    let (status, text) = answers.lock().unwrap().next().unwrap_or((204, ""));
                    let response = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}", text.len());
                    stream.get_mut().write_all(response.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (url, seen)
}

fn agent_run(url: String, sensors: u32, readings: u64, batch: u32) -> AgentRun {
    AgentRun {
        urls: vec![url],
        fleet: FleetSpec {
            seed: 4,
            kind: SeriesKind::Sensor,
            id_prefix: "sensor-".into(),
            series_count: sensors,
            readings_per_series: readings,
            batch_records_max: batch,
            start_ns: 1_600_000_000_000_000_000,
            interval_ms: 1000,
            profile: lodestone_simulators::Profile::Walk,
            series_rate_per_s: 0.0,
        },
        database: "sim".into(),
        table: "readings".into(),
        rate_per_s: 0,
        timeout: Duration::from_secs(60),
        access: Default::default(),
        api: Default::default(),
        clients: 0,
    }
}

#[tokio::test]
async fn every_reading_is_posted_once_answered_and_summed_per_sensor() {
    // The agent is busy once: that write is retried, not lost or counted twice.
    let (url, seen) = start_agent(vec![(503, "busy")]).await;
    let summary = run_agent(agent_run(url, 3, 120, 50)).await.unwrap();
    assert_eq!((summary.total, summary.unacked), (360, 0));
    assert_eq!(summary.devices.keys().collect::<Vec<_>>(), ["sensor-0001", "sensor-0002", "sensor-0003"]);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3 * 3 + 1, "three writes per sensor, one retried");
    let mut per_sensor: std::collections::BTreeMap<String, (u64, f64, Vec<i64>)> = Default::default();
    let mut distinct = std::collections::BTreeSet::new();
    for request in seen.iter() {
        assert_eq!(request.target, "/v1/write?database=sim&table=readings");
        assert_eq!(request.content_type, "application/json");
        for record in request.body["records"].as_array().unwrap() {
            let sensor = record["dimensions"]["sensor_id"].as_str().unwrap().to_owned();
            let time = record["time"].as_i64().unwrap();
            assert_eq!(record["dimensions"]["fleet"], "sim");
            assert_eq!(record["measure_name"], "value");
            if distinct.insert((sensor.clone(), time)) {
                let entry = per_sensor.entry(sensor).or_default();
                entry.0 += 1;
                entry.1 += record["value"].as_f64().unwrap();
                entry.2.push(time);
            }
        }
    }
    for (sensor, (count, sum, times)) in per_sensor {
        let summed = &summary.devices[&sensor];
        assert_eq!((count, sum.to_bits()), (summed.count, summed.sum.to_bits()), "{sensor}");
        assert!(times.windows(2).all(|w| w[1] - w[0] == 1_000_000_000), "{sensor}: distinct times, in order");
    }
}

#[tokio::test]
async fn a_write_the_agent_refuses_stops_the_run_with_its_reason() {
    let (url, _seen) = start_agent(vec![(400, "unknown table readings")]).await;
    let err = run_agent(agent_run(url, 1, 10, 10)).await.unwrap_err();
    match err {
        SimError::AgentRejected { sensor_id, first_seq, status, body } => {
            assert_eq!((sensor_id.as_str(), first_seq, status, body.as_str()), ("sensor-0001", 1, 400, "unknown table readings"));
        }
        other => panic!("unexpected {other}"),
    }
}
