//! Security of the HTTP services, on the real binaries: every one serves HTTPS only (plain HTTP
//! gets no answer, TLS below 1.2 is refused), wants a token on everything but `/health` and
//! `/ready`, honours scopes (the workers' memory only for `service`), drops a revoked token
//! within seconds, and never writes a secret to its log.

use std::time::Duration;

use lodestone_kit::auth::{Scope, TokenFile};
use lodestone_tests::{poll_until, Stack, StackOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP ports of a stack's four services, by name.
fn services(stack: &Stack) -> [(&'static str, u16); 4] {
    let p = stack.ports;
    [("broker-bridge", p.bridge_http), ("ingest-service", p.ingest_http), ("query-service", p.query_http), ("edge-agent", p.agent_http)]
}

/// What a plain-text HTTP request to `port` gets back, up to 5 s.
async fn plain_http(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether `openssl s_client` completes a handshake with `port` at `version` (`-tls1_1`,
/// `-tls1_2`); the client is allowed every protocol and cipher, so only the server can refuse.
fn openssl_handshake(stack: &Stack, port: u16, version: &str) -> bool {
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), version, "-cipher", "DEFAULT:@SECLEVEL=0"])
        .arg("-CAfile")
        .arg(&stack.credentials.ca_path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success() && text.contains("Verify return code: 0 (ok)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_service_speaks_only_tls_of_1_2_or_later_and_wants_a_token() {
    let stack = Stack::start(StackOptions::default()).await;
    let anonymous = lodestone_kit::http::client(Some(stack.credentials.client_tls())).build().unwrap();
    for (name, port) in services(&stack) {
        let plain = plain_http(port).await;
        assert!(!plain.contains("HTTP/1."), "{name} answered plain HTTP: {plain:?}");
        assert!(openssl_handshake(&stack, port, "-tls1_2"), "{name} refused TLS 1.2");
        assert!(!openssl_handshake(&stack, port, "-tls1_1"), "{name} accepted TLS 1.1");

        let health = anonymous.get(format!("{}/health", stack.url(port))).send().await.unwrap();
        assert_eq!(health.status(), 200, "{name}: /health needs no token");
        let metrics = anonymous.get(format!("{}/metrics", stack.url(port))).send().await.unwrap();
        assert_eq!(metrics.status(), 401, "{name}: /metrics without a token");
        assert_eq!(metrics.headers()["www-authenticate"], "Bearer");
        let body: Value = metrics.json().await.unwrap();
        assert_eq!(body["error"]["code"], "missing_credentials", "{name}");
        let metrics = stack.http.get(format!("{}/metrics", stack.url(port))).send().await.unwrap();
        assert_eq!(metrics.status(), 200, "{name}: /metrics with the admin token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_hold_revocation_takes_effect_and_no_secret_is_logged() {
    let stack = Stack::start(StackOptions::default()).await;
    let reader_bearer = stack.credentials.issue("reader", &[Scope::Read("fleet".into())], None).unwrap();
    let reader = stack.client_with_token(&reader_bearer);
    let memory_url = format!("{}/v1/memory/fleet/trucks", stack.url(stack.ports.ingest_http));
    let query_url = format!("{}/v1/query", stack.url(stack.ports.query_http));
    let query = |http: reqwest::Client, sql: &'static str| {
        let request = http.post(&query_url).json(&serde_json::json!({ "sql": sql }));
        async move { request.send().await.unwrap() }
    };

    // A new token works within seconds of its creation, without a restart.
    poll_until("the query service to accept the new token", Duration::from_secs(10), || async {
        (query(reader.clone(), "SELECT 1").await.status() == 200).then_some(())
    })
    .await;
    // The workers' memory is for the service scope (and admin) only.
    poll_until("the ingest worker to know the new token", Duration::from_secs(10), || async {
        (reader.get(&memory_url).send().await.unwrap().status() == 403).then_some(())
    })
    .await;
    let anonymous = lodestone_kit::http::client(Some(stack.credentials.client_tls())).build().unwrap();
    assert_eq!(anonymous.get(&memory_url).send().await.unwrap().status(), 401);
    let service = stack.client_with_token(&stack.credentials.service_bearer);
    assert_eq!(service.get(&memory_url).send().await.unwrap().status(), 200);
    // The reader may not write through the edge agent, nor manage tables.
    let write_url = format!("{}/v1/write?database=fleet&table=trucks", stack.url(stack.ports.agent_http));
    poll_until("the edge agent to refuse the reader's write with 403", Duration::from_secs(10), || async {
        let refused = reader.post(&write_url).header("content-type", "text/plain").body("m v=1").send().await.unwrap();
        (refused.status() == 403).then_some(())
    })
    .await;
    let drop_url = format!("{}/v1/databases/fleet", stack.url(stack.ports.query_http));
    assert_eq!(reader.delete(&drop_url).send().await.unwrap().status(), 403);

    // Revoked: refused within seconds, by every service.
    let mut tokens = TokenFile::read(&stack.credentials.tokens_path).unwrap();
    let reader_id = reader_bearer.split_once('.').unwrap().0;
    assert!(tokens.revoke(reader_id));
    tokens.write(&stack.credentials.tokens_path).unwrap();
    poll_until("the revoked token to be refused", Duration::from_secs(10), || async {
        (query(reader.clone(), "SELECT 1").await.status() == 401).then_some(())
    })
    .await;

    // No secret in any log of the run.
    let secrets: Vec<String> = [&reader_bearer, &stack.credentials.admin_bearer, &stack.credentials.service_bearer]
        .iter()
        .map(|bearer| bearer.split_once('.').unwrap().1.to_string())
        .collect();
    for process in &stack.processes {
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        assert!(!log.is_empty() || process.name == "tansu", "{} wrote no log", process.name);
        for secret in &secrets {
            assert!(!log.contains(secret.as_str()), "{}'s log holds a token secret", process.name);
        }
    }
}

/// Kafka over TLS with SASL/SCRAM: the bridge produces and the worker consumes with
/// `security.protocol = sasl_ssl`, checking the broker's certificate and logging in, and a reading
/// posted to the edge agent still reaches SQL. (tansu 0.6.0 cannot serve TLS, so the stack puts a
/// TLS front before it: see `StackOptions::kafka_tls`.) A client without the login gets no
/// metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_kafka_with_tls_and_sasl() {
    let stack = Stack::start(StackOptions { kafka_tls: true, kafka_sasl: true, ..Default::default() }).await;
    let time_ms = lodestone_kit::now_ns() / 1_000_000;
    let body = serde_json::json!({"records": [{"dimensions": {"line": "tls"}, "measure_name": "load", "value": 0.5, "time": time_ms, "time_unit": "ms"}]});
    let url = format!("{}/v1/write?database=secured&table=kafka", stack.url(stack.ports.agent_http));
    let response = stack.http.post(&url).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let rows = poll_until("the reading queryable", Duration::from_secs(60), || async {
        stack.try_rows("SELECT line, measure_value::double FROM secured.kafka").await.filter(|rows| !rows.is_empty())
    })
    .await;
    assert_eq!(rows, vec![vec![Value::from("tls"), Value::from(0.5)]]);

    use rdkafka::consumer::{BaseConsumer, Consumer};
    let plain: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", stack.bootstrap()).create().unwrap();
    assert!(plain.fetch_metadata(None, Duration::from_secs(3)).is_err(), "plain text on the TLS port got metadata");
    let mut anonymous = rdkafka::ClientConfig::new();
    anonymous.set("bootstrap.servers", stack.bootstrap()).set("security.protocol", "ssl");
    anonymous.set("ssl.ca.location", stack.credentials.ca_path.display().to_string());
    let anonymous: BaseConsumer = anonymous.create().unwrap();
    assert!(anonymous.fetch_metadata(None, Duration::from_secs(3)).is_err(), "TLS without a login got metadata");
    let mut secured = rdkafka::ClientConfig::new();
    secured.set("bootstrap.servers", stack.bootstrap());
    for (key, value) in stack.kafka_properties() {
        secured.set(key, value);
    }
    let secured: BaseConsumer = secured.create().unwrap();
    let metadata = secured.fetch_metadata(None, Duration::from_secs(10)).expect("metadata over TLS");
    assert!(metadata.topics().iter().any(|t| t.name() == lodestone_tests::INGEST_TOPIC));
}
