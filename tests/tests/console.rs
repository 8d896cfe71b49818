//! The web console in headless Chromium (Debian's `chromium`) against the real stack: the page
//! loads with no request outside the service (Chromium's network log), a query typed in the URL
//! shows the same rows as the REST answer, the chart has one point per row, bad SQL shows its
//! error code, the pipeline page shows the stack's live counters, the alerts page its rules, and
//! without a token the console asks for one and sends no query. A screenshot of each page is
//! kept in `$LODESTONE_CACHE/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lodestone_tests::{poll_until, Stack, StackOptions};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Where the screenshots go (kept after the test).
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(std::env::var("LODESTONE_CACHE").unwrap_or_else(|_| "/var/cache/lodestone".into())).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    dir
}

/// Headless Chromium on `url`: the DOM it reached within its virtual-time budget, and every URL
/// it requested (from its network log).
async fn chromium(url: &str, screenshot: Option<&Path>) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let net_log = profile.path().join("net-log.json");
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        // The stack's own CA, which Chromium's store does not hold.
        "--ignore-certificate-errors",
        "--virtual-time-budget=10000",
        "--window-size=1280,800",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    args.push(format!("--log-net-log={}", net_log.display()));
    match screenshot {
        Some(path) => args.push(format!("--screenshot={}", path.display())),
        None => args.push("--dump-dom".into()),
    }
    args.push(url.to_string());
    let output = tokio::time::timeout(Duration::from_secs(120), tokio::process::Command::new(CHROMIUM).args(&args).kill_on_drop(true).output())
        .await
        .expect("chromium ends within 2 minutes")
        .expect("Debian's chromium is installed (scripts/setup.sh)");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = std::fs::read_to_string(&net_log).unwrap_or_default();
    let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
    (dom, requested_urls(&log, &origin))
}

/// The URLs of the requests a Chromium network log shows the page making: those whose initiator
/// is the page's `origin` (its scripts, styles, images and fetches, wherever they go). Chromium's
/// own traffic (update checks, network time, autofill) has no page as initiator.
fn requested_urls(log: &str, origin: &str) -> Vec<String> {
    let text = log.trim_end();
    // A log cut off at exit lacks its closing brackets.
    let log: Value = serde_json::from_str(text).or_else(|_| serde_json::from_str(&format!("{}]}}", text.trim_end_matches(',')))).unwrap_or(Value::Null);
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_i64();
    log["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"].as_i64() == start_job && start_job.is_some())
        .filter(|event| event["params"]["initiator"].as_str() == Some(origin))
        .filter_map(|event| event["params"]["url"].as_str().map(str::to_string))
        .collect()
}

/// The opening tags of the elements with `data-testid="{testid}"`.
fn tags<'a>(dom: &'a str, testid: &str) -> Vec<&'a str> {
    let marker = format!("data-testid=\"{testid}\"");
    dom.match_indices(&marker)
        .filter_map(|(at, _)| {
            let start = dom[..at].rfind('<')?;
            Some(&dom[start..at + dom[at..].find('>')?])
        })
        .collect()
}

/// The value of attribute `name` in an opening tag.
fn value_in(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let value = tag.find(&key)? + key.len();
    Some(tag[value..value + tag[value..].find('"')?].to_string())
}

/// The value of attribute `name` on the first element with `data-testid="{testid}"`.
fn attribute(dom: &str, testid: &str, name: &str) -> Option<String> {
    value_in(tags(dom, testid).first()?, name)
}

/// The text of every `<td>` of every `<tr data-testid="row">`, by row.
fn grid(dom: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for chunk in dom.split("data-testid=\"row\"").skip(1) {
        let row = &chunk[..chunk.find("</tr>").unwrap_or(chunk.len())];
        let cells = row.split("<td").skip(1).map(|cell| {
            let text = &cell[cell.find('>').map_or(0, |i| i + 1)..cell.find("</td>").unwrap_or(cell.len())];
            text.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        });
        rows.push(cells.collect());
    }
    rows
}

fn encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_queries_charts_errors_the_pipeline_and_alerts() {
    let stack = Stack::start(StackOptions::default()).await;
    let base = stack.url(stack.ports.query_http);
    let token = stack.credentials.admin_bearer.clone();

    // 20 readings a minute apart, through the edge agent.
    let now_ms = lodestone_kit::now_ns() / 1_000_000;
    let records: Vec<Value> = (0..20)
        .map(|i| json!({"dimensions": {"device_id": "truck-1"}, "measure_name": "speed", "value": i as f64 + 0.25, "time": now_ms - (20 - i) * 60_000, "time_unit": "ms"}))
        .collect();
    let write = format!("{}/v1/write?database=fleet&table=speeds", stack.url(stack.ports.agent_http));
    assert!(stack.http.post(&write).json(&json!({"records": records})).send().await.unwrap().status().is_success());
    stack.wait_for_count("fleet.speeds", 20, Duration::from_secs(30)).await;

    // The page and its assets come without a token; nothing in them points elsewhere.
    let page = reqwest::Client::builder().use_preconfigured_tls(stack.credentials.client_tls()).build().unwrap().get(format!("{base}/console/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));

    // A query in the URL: the grid holds the REST answer's rows, the chart one point per row.
    let sql = "SELECT time, measure_value::double AS speed FROM fleet.speeds ORDER BY time";
    let rest = stack.query(sql).await;
    let url = format!("{base}/console/?page=query&sql={}&run=1#token={token}", encode(sql));
    let (dom, requested) = chromium(&url, None).await;
    let outside: Vec<&String> = requested.iter().filter(|u| !u.starts_with(&base)).collect();
    assert!(outside.is_empty(), "the console requested {outside:?}");
    assert!(requested.iter().any(|u| u.starts_with(&format!("{base}/v1/query"))), "the network log holds the query: {requested:?}");
    assert_eq!(attribute(&dom, "result", "data-row-count").as_deref(), Some("20"), "{dom}");
    let shown = grid(&dom);
    let expected: Vec<Vec<String>> = rest["rows"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect()).collect();
    assert_eq!(shown, expected, "the grid shows the REST answer");
    assert_eq!(attribute(&dom, "series", "data-points").as_deref(), Some("20"), "one point per row");
    chromium(&url, Some(&screenshots().join("query.png"))).await;

    // Bad SQL: its error code.
    let (dom, _) = chromium(&format!("{base}/console/?sql={}&run=1#token={token}", encode("SELEC nonsense")), None).await;
    assert_eq!(attribute(&dom, "error", "data-code").as_deref(), Some("invalid_sql"), "{dom}");

    // The pipeline page: the bridge serves the edge agent's session, every service answers.
    poll_until("the pipeline to see the agent's session", Duration::from_secs(30), || async {
        let figures: Value = stack.http.get(format!("{base}/v1/pipeline")).send().await.ok()?.json().await.ok()?;
        (figures["devices_connected"] == 1.0).then_some(())
    })
    .await;
    let pipeline = format!("{base}/console/?page=pipeline#token={token}");
    let (dom, _) = chromium(&pipeline, None).await;
    assert_eq!(attribute(&dom, "pipeline-devices", "data-value").as_deref(), Some("1"), "{dom}");
    let services: Vec<(Option<String>, Option<String>)> = tags(&dom, "pipeline-service").iter().map(|tag| (value_in(tag, "data-name"), value_in(tag, "data-healthy"))).collect();
    for service in ["broker-bridge-0", "ingest-0", "edge-agent-0"] {
        assert!(services.contains(&(Some(service.into()), Some("true".into()))), "{service} healthy on the page: {services:?}");
    }
    chromium(&pipeline, Some(&screenshots().join("pipeline.png"))).await;

    // The alerts page lists a rule with its state.
    let rule = json!({"name": "fast", "sql": "SELECT max(measure_value::double) AS speed FROM fleet.speeds", "condition": {"column": "speed", "op": ">", "value": 1000.0}, "interval_s": 60, "for_s": 0, "webhook": null});
    assert_eq!(stack.http.post(format!("{base}/v1/alerts")).json(&rule).send().await.unwrap().status(), 201);
    let alerts = format!("{base}/console/?page=alerts#token={token}");
    let (dom, _) = chromium(&alerts, None).await;
    assert_eq!(attribute(&dom, "alert-rule", "data-name").as_deref(), Some("fast"), "{dom}");
    chromium(&alerts, Some(&screenshots().join("alerts.png"))).await;

    // Without a token: the prompt, and no query sent.
    let pages_before = stack.metric(stack.ports.query_http, "lodestone_query_pages_total").await.unwrap();
    let (dom, requested) = chromium(&format!("{base}/console/?sql={}&run=1", encode(sql)), None).await;
    assert!(dom.contains("data-testid=\"token-prompt\""), "{dom}");
    assert!(!requested.iter().any(|u| u.contains("/v1/query")), "a query was sent without a token: {requested:?}");
    assert_eq!(stack.metric(stack.ports.query_http, "lodestone_query_pages_total").await, Some(pages_before));
}
