//! Alert rules against the real stack: a rule on a device's latest temperature fires once its
//! condition holds for its `for` duration, notifies a webhook served here (HTTPS, the stack's
//! certificate) exactly once, resolves when the condition clears, and its history is a query.
//! Two query services evaluate the same rules, and one of them is restarted while the rule
//! fires: the notification still arrives once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lodestone_tests::{free_port, poll_until, Stack, StackOptions};
use serde_json::{json, Value};

const INTERVAL_S: u64 = 2;

/// A webhook on 127.0.0.1 that keeps every notification it is sent.
async fn webhook(stack: &Stack) -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let config = lodestone_kit::tls::server_config(&stack.credentials.cert_path, &stack.credentials.key_path).unwrap();
    let tls = lodestone_kit::tls::ServerTls::Rustls { config: Arc::new(config), handshake_timeout: Duration::from_secs(5) };
    let (trigger, shutdown) = lodestone_kit::shutdown::shutdown_channel();
    let server = lodestone_kit::http::serve("127.0.0.1:0", router, &tls, shutdown).await.unwrap();
    let url = format!("https://127.0.0.1:{}/hook", server.addr().port());
    // The server lives as long as the test.
    std::mem::forget((server, trigger));
    (url, received)
}

/// Writes `value` through the edge agent and returns when it can be queried (Unix ms).
async fn write_temperature(stack: &Stack, value: f64) -> i64 {
    let time_ms = lodestone_kit::now_ns() / 1_000_000;
    let body = json!({"records": [{"dimensions": {"device_id": "truck-1"}, "measure_name": "temp", "value": value, "time": time_ms, "time_unit": "ms"}]});
    let url = format!("{}/v1/write?database=fleet&table=engines", stack.url(stack.ports.agent_http));
    let response = stack.http.post(&url).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    // Each value is written once.
    let sql = format!("SELECT count(*) FROM fleet.engines WHERE measure_value::double = {value:?}");
    poll_until("the reading to be queryable", Duration::from_secs(30), || async {
        stack.try_rows(&sql).await.filter(|rows| rows.first().and_then(|r| r.first()).and_then(Value::as_i64) == Some(1))
    })
    .await;
    lodestone_kit::now_ns() / 1_000_000
}

/// The rule's state and when it was last evaluated, as the query service at `base` lists it.
async fn rule_state(http: &reqwest::Client, base: &str) -> Option<(String, Option<i64>)> {
    let answer: Value = http.get(format!("{base}/v1/alerts")).send().await.ok()?.json().await.ok()?;
    let rule = answer["rules"].as_array()?.iter().find(|r| r["name"] == "hot-engine")?.clone();
    Some((rule["state"].as_str()?.to_string(), rule["last_evaluated_ms"].as_i64()))
}

fn notifications(received: &Mutex<Vec<Value>>, state: &str) -> usize {
    received.lock().unwrap().iter().filter(|n| n["state"] == state).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_fires_once_resolves_and_its_history_is_a_query_with_two_evaluators_and_a_restart() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let second_port = free_port();
    stack.start_query_service("query-service-2", second_port).await;
    let (hook, received) = webhook(&stack).await;
    write_temperature(&stack, 50.0).await;

    let rule = json!({
        "name": "hot-engine",
        "sql": "SELECT device_id, max_by(measure_value::double, time) AS temp FROM fleet.engines GROUP BY device_id",
        "condition": {"column": "temp", "op": ">", "value": 90.0},
        "interval_s": INTERVAL_S,
        "for_s": INTERVAL_S,
        "webhook": hook,
    });
    let alerts = format!("{}/v1/alerts", stack.url(stack.ports.query_http));
    let refused = stack.http.post(&alerts).json(&json!({"name": "bad", "sql": "SELECT 1 AS x", "condition": {"column": "nosuch", "op": ">", "value": 1.0}, "interval_s": 1, "for_s": 0, "webhook": null})).send().await.unwrap();
    assert_eq!(refused.status(), 400, "a condition on a column the query does not answer is refused");
    let created = stack.http.post(&alerts).json(&rule).send().await.unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    // Evaluated while cool: inactive, nothing sent.
    let (http, first, second) = (stack.http.clone(), stack.url(stack.ports.query_http), stack.url(second_port));
    poll_until("a first evaluation", Duration::from_secs(20), || async { rule_state(&http, &first).await.filter(|(_, evaluated)| evaluated.is_some()) }).await;

    let hot_at_ms = write_temperature(&stack, 95.0).await;
    poll_until("the firing notification", Duration::from_secs(30), || async { (notifications(&received, "firing") == 1).then_some(()) }).await;
    let (firing, _) = rule_state(&http, &second).await.unwrap();
    assert_eq!(firing, "firing", "the other service sees the same state");

    // A restart of a query service while the rule fires sends nothing again: three evaluations
    // past the restart, each still firing.
    stack.kill9("query-service");
    stack.restart("query-service").await;
    let mut seen = lodestone_kit::now_ns() / 1_000_000;
    for _ in 0..3 {
        let (state, evaluated) = poll_until("an evaluation after the restart", Duration::from_secs(20), || async {
            rule_state(&http, &first).await.filter(|(_, evaluated)| evaluated.is_some_and(|e| e > seen))
        })
        .await;
        assert_eq!(state, "firing");
        seen = evaluated.unwrap();
    }
    assert_eq!(notifications(&received, "firing"), 1, "two evaluators and a restart notified once");

    write_temperature(&stack, 40.0).await;
    poll_until("the resolved notification", Duration::from_secs(30), || async { (notifications(&received, "resolved") == 1).then_some(()) }).await;
    let sent = received.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "one firing and one resolved notification: {sent:?}");
    assert_eq!(sent[0]["rows"][0]["device_id"], "truck-1");
    assert_eq!(sent[0]["rows"][0]["temp"], 95.0);
    assert!(sent[0]["console"].as_str().unwrap().contains("/console/"));

    // Every change is a row of the history, in order.
    let history = stack
        .query(r#"SELECT state, previous, CAST(time AS BIGINT) / 1000000 FROM "_lodestone"."alert_history" WHERE rule = 'hot-engine' ORDER BY time"#)
        .await;
    let rows = history["rows"].as_array().unwrap();
    let states: Vec<(&str, &str)> = rows.iter().map(|r| (r[0].as_str().unwrap(), r[1].as_str().unwrap())).collect();
    assert_eq!(states, [("pending", "inactive"), ("firing", "pending"), ("resolved", "firing")]);
    // Fired within two intervals of the condition becoming true (the reading queryable), give
    // or take the evaluator's tick (500 ms) on each of the two evaluations.
    let fired_ms = rows[1][2].as_i64().unwrap();
    let within_ms = 2 * INTERVAL_S as i64 * 1000 + 1000;
    assert!(fired_ms - hot_at_ms <= within_ms, "fired {} ms after the condition became true", fired_ms - hot_at_ms);
}
