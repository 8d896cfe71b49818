//! Traces from device to answer, against the real stack with a small OTLP/HTTP receiver here
//! (`/v1/traces` and `/v1/metrics`, JSON): one reading posted to an edge agent with a
//! `traceparent` gives spans of the agent, the bridge and the ingest worker under that trace, each
//! the child of the one before; a query with a `traceparent` gives a span with its query id,
//! rows and bytes scanned. Then the receiver goes away: readings still land, and the services
//! count their failed exports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lodestone_tests::{free_port, poll_until, Stack, StackOptions};
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const QUERY_TRACE: &str = "5c0a2f3577b34da6a3ce929d0e0e4737";
const QUERY_CLIENT_SPAN: &str = "11f067aa0ba902b8";

/// A span as the receiver keeps it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: Value,
    links: usize,
}

fn string_attribute(attributes: &Value, key: &str) -> Option<String> {
    let found = attributes.as_array()?.iter().find(|a| a["key"] == key)?;
    let value = &found["value"];
    value["stringValue"].as_str().map(str::to_string).or_else(|| value["intValue"].as_str().map(str::to_string)).or_else(|| value["intValue"].as_i64().map(|v| v.to_string()))
}

/// Every span of an OTLP/JSON export request.
fn spans_of(request: &Value) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = string_attribute(&resource["resource"]["attributes"], "service.name").unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(Span {
                    service: service.clone(),
                    name: span["name"].as_str().unwrap_or_default().into(),
                    trace: span["traceId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    id: span["spanId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    parent: span["parentSpanId"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    attributes: span["attributes"].clone(),
                    links: span["links"].as_array().map_or(0, Vec::len),
                });
            }
        }
    }
    spans
}

/// The receiver: spans kept, metric exports counted. Stops when the returned trigger fires.
async fn receiver(port: u16) -> (Arc<Mutex<Vec<Span>>>, Arc<Mutex<usize>>, lodestone_kit::ShutdownTrigger) {
    let (spans, metrics) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
    let (kept, counted) = (spans.clone(), metrics.clone());
    let router = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().extend(spans_of(&body));
                    axum::Json(json!({}))
                }
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |_body: axum::body::Bytes| {
                let counted = counted.clone();
                async move {
                    *counted.lock().unwrap() += 1;
                    axum::Json(json!({}))
                }
            }),
        );
    let (trigger, shutdown) = lodestone_kit::shutdown::shutdown_channel();
    // The collector is plain HTTP on 127.0.0.1, as a local collector's OTLP port is.
    let server = lodestone_kit::http::serve(&format!("127.0.0.1:{port}"), router, &lodestone_kit::tls::ServerTls::Plain, shutdown).await.unwrap();
    std::mem::forget(server);
    (spans, metrics, trigger)
}

fn find<'a>(spans: &'a [Span], service: &str, name: &str, trace: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.service == service && s.name == name && s.trace == trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reading_is_one_trace_from_the_agent_through_the_bridge_to_the_worker_and_a_query_is_a_span() {
    let port = free_port();
    let (spans, metric_exports, stop_receiver) = receiver(port).await;
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), format!("http://127.0.0.1:{port}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), "http/json".to_string()),
        ("LODESTONE_AGENT__TELEMETRY__METRICS_INTERVAL_MS".to_string(), "1000".to_string()),
    ];
    let options = StackOptions { agent_env: otel.clone(), bridge_env: otel.clone(), ingest_env: otel.clone(), query_env: otel.clone(), ..StackOptions::default() };
    let stack = Stack::start(options).await;

    let time_ms = lodestone_kit::now_ns() / 1_000_000;
    let body = json!({"records": [{"dimensions": {"device_id": "truck-7"}, "measure_name": "speed", "value": 42.5, "time": time_ms, "time_unit": "ms"}]});
    let write = format!("{}/v1/write?database=fleet&table=traced", stack.url(stack.ports.agent_http));
    let posted = stack.http.post(&write).header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01")).json(&body).send().await.unwrap();
    assert!(posted.status().is_success());
    stack.wait_for_count("fleet.traced", 1, Duration::from_secs(30)).await;
    let query = format!("{}/v1/query", stack.url(stack.ports.query_http));
    let answered = stack.http.post(&query).header("traceparent", format!("00-{QUERY_TRACE}-{QUERY_CLIENT_SPAN}-01")).json(&json!({"sql": "SELECT * FROM fleet.traced"})).send().await.unwrap();
    assert!(answered.status().is_success());
    let answer: Value = answered.json().await.unwrap();

    let chain = poll_until("the spans of the reading and the query", Duration::from_secs(60), || async {
        let spans = spans.lock().unwrap().clone();
        let agent = find(&spans, "lodestone-edge-agent", "agent.write", TRACE)?.clone();
        let bridge = find(&spans, "lodestone-broker-bridge", "bridge.envelope", TRACE)?.clone();
        let ingest = find(&spans, "lodestone-ingest", "ingest.envelope", TRACE)?.clone();
        let query = find(&spans, "lodestone-query", "query", QUERY_TRACE)?.clone();
        Some((agent, bridge, ingest, query, spans))
    })
    .await;
    let (agent, bridge, ingest, query, all) = chain;
    assert_eq!(agent.parent, CLIENT_SPAN, "the agent's span continues the caller's");
    assert_eq!(bridge.parent, agent.id, "the bridge's span is the agent's child");
    assert_eq!(ingest.parent, bridge.id, "the worker's span is the bridge's child");
    assert_eq!(query.parent, QUERY_CLIENT_SPAN);
    assert_eq!(string_attribute(&query.attributes, "lodestone.query_id"), answer["query_id"].as_str().map(str::to_string));
    assert_eq!(string_attribute(&query.attributes, "rows").as_deref(), Some("1"));
    assert!(string_attribute(&query.attributes, "db.query.text").unwrap().contains("fleet.traced"));
    // The bridge bundles (it does by default): the bundle's span links the envelope's.
    let bundle = all.iter().find(|s| s.name == "bridge.bundle" && s.links > 0);
    assert!(bundle.is_some(), "a bundle span with links: {:?}", all.iter().map(|s| &s.name).collect::<Vec<_>>());
    // Persists link the traced writes they made durable.
    poll_until("a persist span linking the write", Duration::from_secs(30), || async { spans.lock().unwrap().iter().any(|s| s.name == "ingest.persist" && s.links > 0).then_some(()) }).await;
    poll_until("metrics exported over OTLP", Duration::from_secs(30), || async { (*metric_exports.lock().unwrap() > 0).then_some(()) }).await;

    // The collector goes away: the pipeline goes on, and the failed exports are counted.
    stop_receiver.trigger();
    let later = json!({"records": [{"dimensions": {"device_id": "truck-7"}, "measure_name": "speed", "value": 43.5, "time": time_ms + 1000, "time_unit": "ms"}]});
    let posted = stack.http.post(&write).header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01")).json(&later).send().await.unwrap();
    assert!(posted.status().is_success());
    stack.wait_for_count("fleet.traced", 2, Duration::from_secs(30)).await;
    poll_until("the agent to count a failed export", Duration::from_secs(60), || async {
        stack.metric(stack.ports.agent_http, "lodestone_otlp_export_failures_total").await.filter(|failures| *failures > 0.0)
    })
    .await;
}
