//! The REST API over real HTTPS with tokens: paging with next_token, CSV and Arrow answers, a
//! running query's progress and its cancellation, the OpenAPI document, and what each token may
//! read and change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use query_service::config::LimitsConfig;
use query_service::engine::Engine;
use serde_json::{json, Value};

mod common;

struct Service {
    url: String,
    /// Sends the admin token.
    http: reqwest::Client,
    credentials: lodestone_admin::Credentials,
    _server: lodestone_kit::http::Server,
    _stop: lodestone_kit::ShutdownTrigger,
    _dir: tempfile::TempDir,
}

async fn start(limits: LimitsConfig) -> Service {
    start_with(limits, lodestone_store::StoreLimits::default()).await
}

async fn start_with(limits: LimitsConfig, store_limits: lodestone_store::StoreLimits) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let credentials = lodestone_admin::Credentials::create(&dir.path().join("certs")).unwrap();
    let store = common::fleet_store(&dir.path().join("store")).await.with_limits(store_limits);
    // A second database, for what a token of the first may not read.
    let plant = lodestone_store::TableRef { database: "plant".into(), table: "boilers".into() };
    store.ensure_table(&plant, Default::default()).await.unwrap();
    let engine = Arc::new(Engine::new(store, limits));
    let (stop, shutdown) = lodestone_kit::shutdown::shutdown_channel();
    let router = query_service::api::router(engine);
    let server = lodestone_kit::http::serve_service("127.0.0.1:0", router, &credentials.tls(), &credentials.auth(), shutdown).await.unwrap();
    let url = format!("https://{}", server.addr());
    let http = client(&credentials, Some(&credentials.admin_bearer));
    Service { url, http, credentials, _server: server, _stop: stop, _dir: dir }
}

/// A client trusting `credentials`' CA, sending `bearer` if given.
fn client(credentials: &lodestone_admin::Credentials, bearer: Option<&str>) -> reqwest::Client {
    let tls = Some(credentials.client_tls());
    match bearer {
        Some(bearer) => lodestone_kit::http::client_with_token(tls, bearer),
        None => lodestone_kit::http::client(tls),
    }
    .build()
    .unwrap()
}

impl Service {
    async fn post(&self, body: Value) -> (u16, Value) {
        let response = self.http.post(format!("{}/v1/query", self.url)).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

const ALL: &str = "SELECT truck, time, measure_name FROM fleet.trucks ORDER BY truck, time, measure_name";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_next_token_to_the_whole_answer() {
    let service = start(LimitsConfig::default()).await;
    let (status, whole) = service.post(json!({"sql": ALL})).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["row_count"], 100);
    assert!(whole.get("next_token").is_none());
    assert!(whole["bytes_scanned"].as_u64().unwrap() > 0, "{whole}");

    let (mut rows, mut sizes) = (Vec::new(), Vec::new());
    let (_, mut page) = service.post(json!({"sql": ALL, "max_rows": 30})).await;
    let first_token = page["next_token"].as_str().unwrap().to_string();
    loop {
        sizes.push(page["row_count"].as_u64().unwrap());
        rows.extend(page["rows"].as_array().unwrap().iter().cloned());
        let Some(token) = page["next_token"].as_str() else { break };
        let (status, next) = service.post(json!({"next_token": token, "max_rows": 30})).await;
        assert_eq!(status, 200, "{next}");
        assert_eq!(next["query_id"], page["query_id"], "pages belong to one query");
        page = next;
    }
    assert_eq!(sizes, [30, 30, 30, 10]);
    assert_eq!(Value::Array(rows), whole["rows"], "the pages are the whole answer, in order");

    // A token may be used again while it is valid; an unknown one is gone.
    let (status, again) = service.post(json!({"next_token": first_token, "max_rows": 30})).await;
    assert_eq!((status, again["rows"][0].clone()), (200, whole["rows"][30].clone()));
    let (status, gone) = service.post(json!({"next_token": "no-such-token"})).await;
    assert_eq!((status, gone["error"]["code"].as_str()), (410, Some("token_expired")));
    let (status, empty) = service.post(json!({})).await;
    assert_eq!((status, empty["error"]["code"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_arrow_answers_by_the_accept_header() {
    let service = start(LimitsConfig::default()).await;
    let body = json!({"sql": "SELECT truck, count(*) AS records FROM fleet.trucks GROUP BY truck ORDER BY truck", "max_rows": 1});
    let response = service.http.post(format!("{}/v1/query", service.url)).header("accept", "text/csv").json(&body).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(response.headers().contains_key("x-lodestone-query-id"));
    let token = response.headers()["x-lodestone-next-token"].to_str().unwrap().to_string();
    assert_eq!(response.text().await.unwrap(), "truck,records\nt1,50\n");
    let next = json!({"next_token": token});
    let response = service.http.post(format!("{}/v1/query", service.url)).header("accept", "text/csv").json(&next).send().await.unwrap();
    assert!(!response.headers().contains_key("x-lodestone-next-token"), "the last page");
    assert_eq!(response.text().await.unwrap(), "truck,records\nt2,50\n");

    let arrow = "application/vnd.apache.arrow.stream";
    let response = service.http.post(format!("{}/v1/query", service.url)).header("accept", arrow).json(&json!({"sql": ALL})).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], arrow);
    let bytes = response.bytes().await.unwrap();
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
    assert_eq!(rows, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_query_shows_progress_and_can_be_cancelled() {
    let service = Arc::new(start(LimitsConfig { query_timeout_ms: 60_000, ..LimitsConfig::default() }).await);
    let runaway = {
        let service = service.clone();
        tokio::spawn(async move {
            let sql = "SELECT count(*) FROM fleet.trucks a, fleet.trucks b, fleet.trucks c, fleet.trucks d, fleet.trucks e";
            service.post(json!({"sql": sql, "query_id": "runaway-1"})).await
        })
    };
    let progress_url = format!("{}/v1/queries/runaway-1", service.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    let progress: Value = loop {
        let response = service.http.get(&progress_url).send().await.unwrap();
        if response.status() == 200 {
            break response.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the query never showed up as running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((progress["state"].as_str(), progress["query_id"].as_str()), (Some("running"), Some("runaway-1")), "{progress}");
    let cancelled_at = Instant::now();
    let response = service.http.delete(&progress_url).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let (status, answer) = runaway.await.unwrap();
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("query_cancelled")), "{answer}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(5), "cancelled after {:?}", cancelled_at.elapsed());
    assert_eq!(service.http.get(&progress_url).send().await.unwrap().status(), 404, "no longer running");
    assert_eq!(service.http.delete(&progress_url).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_openapi_document_names_every_route() {
    let service = start(LimitsConfig::default()).await;
    let document: Value = service.http.get(format!("{}/v1/openapi.json", service.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(document["openapi"], "3.0.3");
    for path in ["/v1/query", "/v1/queries/{query_id}", "/v1/databases", "/v1/databases/{database}/tables/{table}", "/v1/openapi.json"] {
        assert!(document["paths"].get(path).is_some(), "{path} is not documented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_answers_with_its_code() {
    let limits = LimitsConfig {
        query_timeout_ms: 20_000,
        query_memory_bytes_max: 4 * 1024 * 1024,
        concurrent_queries_max: 1,
        sql_bytes_max: 300,
        rows_max: 60,
        ..LimitsConfig::default()
    };
    let service = Arc::new(start(limits).await);
    let code = |answer: &(u16, Value)| (answer.0, answer.1["error"]["code"].as_str().map(str::to_string));

    // SQL text past its bound.
    let long = format!("SELECT 1 AS x{}", " ".repeat(300));
    assert_eq!(code(&service.post(json!({"sql": long})).await), (413, Some("sql_too_large".into())));
    // Rows past rows_max, and at it.
    assert_eq!(code(&service.post(json!({"sql": "SELECT * FROM fleet.trucks"})).await), (413, Some("too_many_rows".into())));
    let (status, _) = service.post(json!({"sql": "SELECT * FROM fleet.trucks LIMIT 60"})).await;
    assert_eq!(status, 200);
    // Memory: an array of ten million values does not fit in 4 MiB.
    let distinct = "SELECT array_length(array_agg(value), 1) FROM generate_series(1, 10000000)";
    assert_eq!(code(&service.post(json!({"sql": distinct})).await), (422, Some("memory_limit".into())));
    // Concurrency: one query at a time; a second one while it runs is refused.
    let runaway = {
        let service = service.clone();
        tokio::spawn(async move {
            let sql = "SELECT count(*) FROM fleet.trucks a, fleet.trucks b, fleet.trucks c, fleet.trucks d, fleet.trucks e";
            service.post(json!({"sql": sql, "query_id": "busy"})).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.http.get(format!("{}/v1/queries/busy", service.url)).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the first query never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code(&service.post(json!({"sql": "SELECT 1"})).await), (503, Some("too_many_queries".into())));
    service.http.delete(format!("{}/v1/queries/busy", service.url)).send().await.unwrap();
    assert_eq!(code(&runaway.await.unwrap()), (400, Some("query_cancelled".into())));
    // Not a query.
    assert_eq!(code(&service.post(json!({"sql": "DROP TABLE fleet.trucks"})).await), (400, Some("statement_not_allowed".into())));
}

/// Regression: JSON answers printed doubles one unit in the last place off (the answer path
/// re-parses arrow's JSON output, which serde_json did exactly only with `float_roundtrip`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubles_come_back_in_json_exactly_as_stored() {
    let service = start(LimitsConfig::default()).await;
    for text in ["-95.24089298036279", "62.18930203618957", "0.1", "-0.000123456789012345", "1.7976931348623157e308"] {
        let (status, answer) = service.post(json!({"sql": format!("SELECT CAST('{text}' AS DOUBLE) AS v")})).await;
        assert_eq!(status, 200, "{answer}");
        let got = answer["rows"][0][0].as_f64().unwrap();
        assert_eq!(got.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{text} answered as {got:?}");
    }
}

/// Regression: a `query_id` with a control character, asked for as CSV, panicked the handler
/// (the id went into an answer header as it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_id_that_is_no_header_value_is_refused_not_a_panic() {
    let service = start(LimitsConfig::default()).await;
    let post = |query_id: String| {
        let body = json!({"sql": "SELECT 1 AS one", "query_id": query_id});
        service.http.post(format!("{}/v1/query", service.url)).header("accept", "text/csv").json(&body).send()
    };
    for bad in ["line\nbreak".to_string(), "bell\u{7}".to_string(), String::new(), "x".repeat(129), "spa ce".into()] {
        let response = post(bad.clone()).await.unwrap();
        assert_eq!(refusal(response).await, (400, "invalid_request".to_string()), "query_id {bad:?}");
    }
    let response = post("grafana:panel-7.refresh_1".into()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-lodestone-query-id"], "grafana:panel-7.refresh_1");
    // The service is still there.
    assert_eq!(service.post(json!({"sql": "SELECT 2 AS two"})).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_past_the_store_limits_answers_limit_exceeded() {
    let store_limits = lodestone_store::StoreLimits { databases_max: 3, tables_per_database_max: 1, ..Default::default() };
    let service = start_with(LimitsConfig::default(), store_limits).await;
    let create = |path: &str, name: &str| service.http.post(format!("{}{path}", service.url)).json(&json!({"name": name})).send();
    // "fleet" and "plant" exist: one more database fits, then none.
    assert_eq!(create("/v1/databases", "third").await.unwrap().status(), 201);
    let refused = create("/v1/databases", "fourth").await.unwrap();
    assert_eq!(refusal(refused).await, (422, "limit_exceeded".to_string()));
    // "plant" holds its one table.
    let refused = create("/v1/databases/plant/tables", "kettles").await.unwrap();
    assert_eq!(refusal(refused).await, (422, "limit_exceeded".to_string()));
    assert_eq!(create("/v1/databases/third/tables", "kettles").await.unwrap().status(), 201);
}

/// The code of an error answer, with its status.
async fn refusal(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap_or("(none)").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reads_only_its_databases_however_the_statement_reaches_another() {
    let service = start(LimitsConfig::default()).await;
    let reader_bearer = service.credentials.issue("grafana", &["fleet:read".parse().unwrap()], None).unwrap();
    let expired_bearer = service.credentials.issue("old", &["admin".parse().unwrap()], Some(chrono::Utc::now() - chrono::Duration::hours(1))).unwrap();
    // The service re-reads the token file at most once a second: wait until it knows the new
    // tokens (polling with a deadline).
    let reader = client(&service.credentials, Some(&reader_bearer));
    let query = |http: reqwest::Client, sql: &str| {
        let request = http.post(format!("{}/v1/query", service.url)).json(&json!({ "sql": sql }));
        async move { request.send().await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while query(reader.clone(), "SELECT 1").await.status() != 200 {
        assert!(Instant::now() < deadline, "the new token was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No token, a wrong one, an expired one: 401 with a stable code.
    let anonymous = client(&service.credentials, None);
    assert_eq!(refusal(query(anonymous.clone(), "SELECT 1").await).await, (401, "missing_credentials".into()));
    let forged = format!("{}.{}", reader_bearer.split_once('.').unwrap().0, "0".repeat(64));
    assert_eq!(refusal(query(client(&service.credentials, Some(&forged)), "SELECT 1").await).await, (401, "invalid_credentials".into()));
    assert_eq!(refusal(query(client(&service.credentials, Some(&expired_bearer)), "SELECT 1").await).await, (401, "expired_credentials".into()));
    let health = anonymous.get(format!("{}/health", service.url)).send().await.unwrap();
    assert_eq!(health.status(), 200, "health needs no token");

    // Its own database: every form works.
    for sql in [
        "SELECT count(*) FROM fleet.trucks",
        "WITH t AS (SELECT * FROM fleet.trucks) SELECT count(*) FROM t",
        "SHOW TABLES FROM fleet",
        "DESCRIBE fleet.trucks",
        "SHOW MEASURES FROM fleet.trucks",
    ] {
        assert_eq!(query(reader.clone(), sql).await.status(), 200, "{sql}");
    }
    // Another database, however it is reached: 403 forbidden.
    for sql in [
        "SELECT count(*) FROM plant.boilers",
        "WITH t AS (SELECT * FROM plant.boilers) SELECT count(*) FROM t",
        "SELECT count(*) FROM fleet.trucks WHERE measure_name IN (SELECT measure_name FROM plant.boilers)",
        "SELECT (SELECT count(*) FROM plant.boilers) AS n",
        "SELECT measure_name FROM fleet.trucks UNION ALL SELECT measure_name FROM plant.boilers",
        "SELECT * FROM fleet.trucks f JOIN plant.boilers b ON f.measure_name = b.measure_name",
        "EXPLAIN SELECT * FROM plant.boilers",
        "SHOW TABLES FROM plant",
        "DESCRIBE plant.boilers",
        "SHOW MEASURES FROM plant.boilers",
        "SELECT * FROM information_schema.tables",
    ] {
        assert_eq!(refusal(query(reader.clone(), sql).await).await, (403, "forbidden".into()), "{sql}");
    }
    // Listings leave out what it may not read.
    let (_, databases) = {
        let response = query(reader.clone(), "SHOW DATABASES").await;
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(databases["rows"], json!([["fleet"]]));
    let listed: Value = reader.get(format!("{}/v1/databases", service.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["databases"].as_array().unwrap().len(), 1, "{listed}");

    // Every management call needs admin.
    let url = &service.url;
    let calls = [
        reader.post(format!("{url}/v1/databases")).json(&json!({"name": "new_db"})),
        reader.delete(format!("{url}/v1/databases/fleet")),
        reader.post(format!("{url}/v1/databases/fleet/tables")).json(&json!({"name": "t2"})),
        reader.patch(format!("{url}/v1/databases/fleet/tables/trucks")).json(&json!({"memory_store_retention_hours": 1})),
        reader.delete(format!("{url}/v1/databases/fleet/tables/trucks")),
        reader.get(format!("{url}/v1/databases/plant/tables")),
        reader.get(format!("{url}/v1/databases/plant/tables/boilers")),
        reader.get(format!("{url}/metrics")),
    ];
    for call in calls {
        assert_eq!(refusal(call.send().await.unwrap()).await, (403, "forbidden".into()));
    }
    let tables = service.http.get(format!("{url}/v1/databases/fleet/tables")).send().await.unwrap();
    assert_eq!(tables.status(), 200, "the admin token reads everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_token_that_started_a_query_sees_its_progress_and_pages() {
    let service = Arc::new(start(LimitsConfig { query_timeout_ms: 60_000, ..LimitsConfig::default() }).await);
    let other_bearer = service.credentials.issue("other", &["fleet:read".parse().unwrap()], None).unwrap();
    let other = client(&service.credentials, Some(&other_bearer));
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_page = loop {
        let response = other.post(format!("{}/v1/query", service.url)).json(&json!({"sql": ALL, "max_rows": 10})).send().await.unwrap();
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the new token was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Another caller's page token is unknown to the admin.
    let (status, answer) = service.post(json!({"next_token": first_page["next_token"]})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (410, Some("token_expired")));

    let runaway = {
        let service = service.clone();
        tokio::spawn(async move {
            let sql = "SELECT count(*) FROM fleet.trucks a, fleet.trucks b, fleet.trucks c, fleet.trucks d, fleet.trucks e";
            service.post(json!({"sql": sql, "query_id": "mine"})).await
        })
    };
    let progress_url = format!("{}/v1/queries/mine", service.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.http.get(&progress_url).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the query never showed up as running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(other.get(&progress_url).send().await.unwrap().status(), 404, "another token sees nothing");
    assert_eq!(other.delete(&progress_url).send().await.unwrap().status(), 404, "another token cannot cancel");
    assert_eq!(service.http.delete(&progress_url).send().await.unwrap().status(), 202);
    let (status, answer) = runaway.await.unwrap();
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("query_cancelled")));
}
