//! The load-test mode against the real stack: `lodestone-sim load` with the smoke scenario.

use std::time::Duration;

use lodestone_tests::{bin_dir, Stack, StackOptions};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_lands_every_reading_and_reports_its_figures() {
    let stack = Stack::start(StackOptions::default()).await;
    let out = tempfile::tempdir().unwrap();
    let (report_path, chart_path) = (out.path().join("report.json"), out.path().join("chart.svg"));
    let scenario = lodestone_kit::config::crate_path("../configs/scenarios/smoke.toml");
    let output = tokio::process::Command::new(bin_dir().join("lodestone-sim"))
        .arg("load")
        .arg("--scenario")
        .arg(&scenario)
        .args(["--bootstrap", &stack.bootstrap(), "--mqtt-port", &stack.ports.mqtt.to_string()])
        .args(["--query-url", &stack.url(stack.ports.query_http)])
        .args(["--agent-url", &stack.url(stack.ports.agent_http)])
        .envs(stack.sim_env())
        .arg("--report")
        .arg(&report_path)
        .arg("--chart")
        .arg(&chart_path)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output).await.expect("the smoke scenario ends within 5 minutes").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "lodestone-sim load failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("{stdout}");

    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let phases = report["phases"].as_array().unwrap();
    let counts: Vec<(Value, Value, Value, Value)> =
        phases.iter().map(|p| (p["name"].clone(), p["readings"].clone(), p["acked"].clone(), p["unacked"].clone())).collect();
    let all_acked = |name: &str| (json!(name), json!(2000), json!(2000), json!(0));
    assert_eq!(counts, vec![all_acked("kafka"), all_acked("mqtt"), all_acked("agent")]);
    for phase in phases {
        assert!(phase["all_visible_after_s"].is_number(), "every reading of phase {} became queryable", phase["name"]);
        assert!(phase["acked_per_sec"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(phases[1]["connections_max"], 10, "the MQTT phase's 10 devices were connected at once");
    let probes = report["probes"].as_array().unwrap();
    assert!(!probes.is_empty(), "probes ran");
    assert!(probes.iter().all(|p| p["latency_ms"].is_number()), "every probe became queryable: {probes:?}");
    assert!(!report["samples"].as_array().unwrap().is_empty());
    assert!(report["rss_mib_max"]["ingest-service"].as_f64().unwrap() > 0.0, "the ingest worker's memory was sampled");

    // Each profile landed with its own shape.
    let rows = stack.query("SELECT count(*), min(measure_value::double), max(measure_value::double) FROM loadtest.smoke WHERE measure_name = 'temperature'").await;
    let (min, max) = (rows["rows"][0][1].as_f64().unwrap(), rows["rows"][0][2].as_f64().unwrap());
    assert_eq!(rows["rows"][0][0], 2000, "the temperature readings");
    assert!((7.0..=33.0).contains(&min) && (7.0..=33.0).contains(&max), "temperatures between 7 and 33 °C: {rows}");
    let rows = stack.query("SELECT measure_name, count(*), count(DISTINCT device_id), count(DISTINCT fleet) FROM loadtest.smoke_trucks GROUP BY measure_name ORDER BY measure_name").await;
    let trucks = rows["rows"].as_array().unwrap();
    assert_eq!(trucks.len(), 2, "readings and diagnostics records: {rows}");
    assert_eq!(trucks[0][1].as_i64().unwrap() + trucks[1][1].as_i64().unwrap(), 2000, "{rows}");
    assert_eq!((&trucks[0][2], &trucks[1][2]), (&json!(10), &json!(10)), "every truck sent both kinds: {rows}");
    assert!(trucks.iter().all(|t| t[3].as_i64().unwrap() > 1), "trucks carry TSBS's fleet tag: {rows}");
    let rows = stack.query("SELECT count(*), count(DISTINCT sensor_id), min(measure_value::bigint) >= 0 FROM loadtest.smoke_meters").await;
    assert_eq!(rows["rows"], json!([[2000, 10, true]]), "the meters, through the edge agent");
    let chart = std::fs::read_to_string(&chart_path).unwrap();
    assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 2, "an SVG chart with two series");
    for figure in ["e2e_readings_per_sec", "e2e_p99_latency_ms", "devices_connected"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("figure {figure} "))), "figure {figure} printed");
    }
}
