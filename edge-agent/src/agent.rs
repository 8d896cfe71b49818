//! Wiring: opens the outbox, starts the writer thread, the HTTP server, the forwarder and the
//! simulated source, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lodestone_model::{Limits, Source};
use rand::Rng;
use tokio::task::JoinHandle;

use crate::config::AgentConfig;
use lodestone_kit::config::Validate;
use crate::http::{router, HttpState};
use crate::intake::Intake;
use crate::mqtt::Forwarder;
use crate::outbox::{Destination, Outbox, OutboxError};
use lodestone_kit::shutdown::{shutdown_channel, ShutdownTrigger};
use crate::telemetry::Telemetry;
use crate::writer::spawn_writer;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Bind(#[from] lodestone_kit::http::ServeError),
    #[error("invalid configuration: {0}")]
    Config(#[from] lodestone_kit::config::InvalidValue),
    #[error("MQTT TLS: {0}")]
    Tls(#[from] lodestone_kit::tls::TlsError),
}

/// A running agent. [`Agent::shutdown`] stops it and waits; dropping it only fires the shutdown
/// signal.
pub struct Agent {
    http_addr: SocketAddr,
    boot_id: String,
    trigger: ShutdownTrigger,
    http: lodestone_kit::http::Server,
    forwarder: JoinHandle<()>,
    simulated: Option<JoinHandle<()>>,
    /// Closes when the writer thread has committed its last request and ended.
    writer_done: tokio::sync::watch::Receiver<u64>,
    /// Fires when the last handle of the LMDB environment is gone and it is closed.
    outbox_closed: heed::EnvClosingEvent,
    shutdown_timeout: Duration,
}

/// A random hex string naming this process start.
pub fn new_boot_id() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

impl Agent {
    /// Opens the outbox and starts every task. Returns once the HTTP server is listening (the
    /// log line `listening on https://ADDR` has been written).
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        config.validate()?;
        let mqtt_tls = crate::mqtt::mqtt_tls(&config.mqtt)?;
        let boot_id = new_boot_id();
        let source = Source { device_id: config.device_id.clone(), boot_id: boot_id.clone() };
        let outbox = Outbox::open(&config.outbox.path, config.outbox.bytes_max, source.clone())?.with_full_policy(config.outbox.full_policy);
        let status = outbox.status()?;
        let outbox_closed = outbox.closing_event();
        tracing::info!(
            device_id = %config.device_id, %boot_id, outbox = %config.outbox.path.display(),
            entries = status.entries, next_seq = status.next_seq, acked_through = status.acked_through,
            "outbox open"
        );
        let (writer, committed, _thread) = spawn_writer(outbox.clone(), config.outbox.commit_batch_max, config.outbox.pending_requests_max)?;
        let telemetry = Arc::new(Telemetry::default());
        let (exported, exported_outbox) = (telemetry.clone(), outbox.clone());
        // Called on the metric exporter's own thread, where reading the outbox may block.
        lodestone_kit::telemetry::export_metrics(move || match exported_outbox.status() {
            Ok(status) => exported.render(&status, exported_outbox.dropped_total()),
            Err(_) => String::new(),
        });
        let intake = Intake::new(writer.clone(), telemetry.clone(), Limits::default());
        let defaults = Destination { database: config.database.clone(), table: config.table.clone() };
        let (trigger, shutdown) = shutdown_channel();

        let state = Arc::new(HttpState {
            intake: intake.clone(),
            outbox: outbox.clone(),
            telemetry: telemetry.clone(),
            defaults: defaults.clone(),
            device_id: config.device_id.clone(),
            boot_id: boot_id.clone(),
            bytes_max: config.outbox.bytes_max,
            body_bytes_max: config.http.body_bytes_max,
            records_per_request_max: config.http.records_per_request_max,
        });
        let router = lodestone_kit::http::bound_body_bytes(router(state), config.http.body_bytes_max, config.http.bodies_bytes_max);
        let http = lodestone_kit::http::serve_service(&config.http.listen.to_string(), router, &config.tls, &config.auth, shutdown.clone()).await?;

        let forwarder = Forwarder::new(&config, mqtt_tls, source, outbox, writer, committed.clone(), telemetry);
        let forwarder = tokio::spawn(forwarder.run(status.acked_through, shutdown.clone()));
        let simulated = config
            .simulated
            .enabled
            .then(|| tokio::spawn(crate::simulated::run(config.simulated.clone(), config.device_id.clone(), defaults, intake, shutdown)));

        Ok(Agent {
            http_addr: http.addr(),
            boot_id,
            trigger,
            http,
            forwarder,
            simulated,
            writer_done: committed,
            outbox_closed,
            shutdown_timeout: config.shutdown.timeout(),
        })
    }

    /// The bound address of the HTTP server (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Stops taking writes, lets writes already handed to the writer commit, disconnects MQTT
    /// and waits for the writer thread to end, all within `shutdown.timeout_ms`. Every write that
    /// was answered 200 is in LMDB whatever happens here: answers are sent only after the commit.
    pub async fn shutdown(self) {
        self.trigger.trigger();
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let mut tasks = vec![("HTTP server", self.http.into_task()), ("forwarder", self.forwarder)];
        tasks.extend(self.simulated.map(|task| ("simulated sensors", task)));
        for (name, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(task = name, "did not stop within shutdown.timeout_ms; abandoning it");
                task.abort();
            }
        }
        // The writer ends once every handle is gone (the tasks above held them) and its queue is
        // committed; its watch closes then.
        let mut writer_done = self.writer_done;
        let writer_ended = tokio::time::timeout_at(deadline, async { while writer_done.changed().await.is_ok() {} }).await;
        if writer_ended.is_err() {
            tracing::warn!("the outbox writer is still busy at the shutdown deadline; every acknowledged write is already committed");
        }
        // The environment closes when its last handle drops, which may be a moment after the
        // writer's watch closed; wait for it so that the outbox can be reopened in this process.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let closed = self.outbox_closed;
        let closed_in_time = tokio::task::spawn_blocking(move || closed.wait_timeout(remaining)).await.unwrap_or(false);
        if !closed_in_time {
            tracing::warn!("the outbox environment was still open at the shutdown deadline");
        }
        tracing::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_admin::Credentials;

    /// A client trusting `credentials`' CA and sending `bearer`.
    fn client(credentials: &Credentials, bearer: &str) -> reqwest::Client {
        lodestone_kit::http::client_with_token(Some(credentials.client_tls()), bearer).build().unwrap()
    }

    /// One HTTPS request; returns the status and the body.
    async fn request(http: &reqwest::Client, addr: SocketAddr, method: &str, path: &str, content_type: &str, body: &str) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("https://{addr}{path}");
        let response = http.request(method, url).header("content-type", content_type).body(body.to_string()).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)))
    }

    fn config(dir: &std::path::Path, credentials: &Credentials) -> AgentConfig {
        // Nothing listens on the MQTT port: forwarding keeps retrying while writes are stored.
        let unused_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut config = AgentConfig::default();
        config.tls = credentials.tls();
        config.auth = credentials.auth();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.http.records_per_request_max = 3;
        config.outbox.path = dir.join("outbox");
        config.mqtt.port = unused_port;
        let device = credentials.issue_device(&config.device_id).unwrap();
        config.mqtt.ca_path = credentials.ca_path.display().to_string();
        config.mqtt.cert_path = device.cert_path.display().to_string();
        config.mqtt.key_path = device.key_path.display().to_string();
        config
    }

    #[tokio::test]
    async fn writes_are_stored_all_or_nothing_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::create(&dir.path().join("certs")).unwrap();
        let http = client(&credentials, &credentials.admin_bearer);
        let plant_writer = client(&credentials, &credentials.issue("plant", &["plant:write".parse().unwrap()], None).unwrap());
        let anonymous = lodestone_kit::http::client(Some(credentials.client_tls())).build().unwrap();
        let agent = Agent::start(config(dir.path(), &credentials)).await.unwrap();
        let addr = agent.http_addr();
        assert_eq!(request(&anonymous, addr, "GET", "/health", "text/plain", "").await, (200, serde_json::json!("ok")));

        // Without a token: 401. A token for another database: 403, and nothing stored.
        let (status, body) = request(&anonymous, addr, "POST", "/v1/write", "text/plain", "m v=1").await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_credentials")));
        let (status, body) = request(&plant_writer, addr, "POST", "/v1/write", "text/plain", "m v=1").await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "the default database is iot");

        let (status, body) = request(&http, addr, "POST", "/v1/write?table=rooms&precision=s", "text/plain", "temp,room=a v=21.5 1700000000\ntemp,room=b v=19i 1700000000\n").await;
        assert_eq!((status, body), (200, serde_json::json!({"accepted": 2, "first_seq": 1, "last_seq": 2})));
        let json = r#"{"records":[{"dimensions":{"room":"c"},"measure_name":"temp","value":1.5,"time":1700000000,"time_unit":"s"}]}"#;
        let (status, body) = request(&http, addr, "POST", "/v1/write", "application/json", json).await;
        assert_eq!((status, body), (200, serde_json::json!({"accepted": 1, "first_seq": 3, "last_seq": 3})));

        let (status, body) = request(&http, addr, "POST", "/v1/write", "text/plain", "ok v=1 1\ntime v=2 1\n").await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "invalid_measure_name");
        assert_eq!(body["error"]["rejected"][0]["index"], 1);
        let (status, body) = request(&http, addr, "POST", "/v1/write", "text/plain", "m v=1\nm v=2\nm v=3\nm v=4\n").await;
        assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_many_records")));
        let (status, body) = request(&http, addr, "POST", "/v1/write?table=x", "text/plain", "m v=1").await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_destination")));
        let (status, body) = request(&http, addr, "POST", "/v1/write", "text/plain", "m v=1\nm v=\"x").await;
        assert_eq!((status, body["error"]["message"].as_str()), (400, Some("line 2: field \"v\": string value has no closing quote")));

        let (status, body) = request(&http, addr, "GET", "/v1/status", "text/plain", "").await;
        assert_eq!(status, 200);
        assert_eq!((&body["outbox"]["entries"], &body["next_seq"], &body["acked_through"]), (&serde_json::json!(3), &serde_json::json!(4), &serde_json::json!(0)));
        assert_eq!(body["connected"], false);
        assert_eq!(body["counters"]["received"], 2 + 1 + 2 + 4 + 1 + 1);
        assert_eq!(body["counters"]["rejected"], 2 + 4 + 1 + 1);
        let by_code = body["counters"]["rejected_by_code"].as_object().expect("rejected_by_code");
        assert_eq!(by_code.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 2 + 4 + 1 + 1, "{by_code:?}");
        assert_eq!((&by_code["too_many_records"], &by_code["invalid_destination"]), (&serde_json::json!(4), &serde_json::json!(1)));
        agent.shutdown().await;

        let agent = Agent::start(config(dir.path(), &credentials)).await.unwrap();
        let (status, body) = request(&http, agent.http_addr(), "POST", "/v1/write", "text/plain", "m v=1").await;
        assert_eq!((status, body["first_seq"].as_u64()), (200, Some(4)), "sequence numbers continue after a restart");
        agent.shutdown().await;
    }
}
