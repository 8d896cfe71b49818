//! The load-test mode against the real stack: `lodestone-sim load` with the smoke scenario.

use std::time::Duration;

use lodestone_tests::{bin_dir, Stack, StackOptions};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_lands_every_reading_and_reports_its_figures() {
    let stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let out = tempfile::tempdir().unwrap();
    let (report_path, chart_path) = (out.path().join("report.json"), out.path().join("chart.svg"));
    let scenario = lodestone_model::config::crate_path("../configs/scenarios/smoke.toml");
    let output = tokio::process::Command::new(bin_dir().join("lodestone-sim"))
        .arg("load")
        .arg("--scenario")
        .arg(&scenario)
        .args(["--bootstrap", &stack.bootstrap(), "--mqtt-port", &stack.ports.mqtt.to_string()])
        .args(["--query-url", &format!("http://127.0.0.1:{}", stack.ports.query_http)])
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
    assert_eq!(counts, vec![(json!("kafka"), json!(2000), json!(2000), json!(0)), (json!("mqtt"), json!(2000), json!(2000), json!(0))]);
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

    let rows = stack.query("SELECT count(*) FROM loadtest.smoke").await;
    assert_eq!(rows["rows"], json!([[4000]]));
    let chart = std::fs::read_to_string(&chart_path).unwrap();
    assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 2, "an SVG chart with two series");
    for figure in ["e2e_readings_per_sec", "e2e_p99_latency_ms", "devices_connected"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("figure {figure} "))), "figure {figure} printed");
    }
}
