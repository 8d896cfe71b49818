//! The HTTP write paths: sensors that post their readings as JSON to an edge agent's
//! `POST /v1/write?database=DB&table=TBL` (body `{"records": [...]}`), or to Timestream's
//! `WriteRecords` on a query service ([`WriteApi::Timestream`]: `POST /`, AWS JSON 1.0, signed
//! with SigV4 by the token's id and secret). One tokio task per sensor posts its batches in
//! order, each after the previous one was answered; at most `clients` requests are in flight at
//! once (several concurrent clients, as a benchmark wants). With several URLs (`--url` given
//! more than once), sensor `i` posts to URL `(i - 1) mod M`. Each answered write's latency is
//! kept for the summary's percentiles.
//!
//! A 2xx answer confirms a batch (the agent has it in its outbox). 408, 429 and 5xx answers and
//! transport errors are retried with backoff until the run's timeout; any other answer means the
//! request itself is wrong, and stops the run with the agent's reason.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{header, StatusCode};
use tokio::time::Instant;

use crate::error::SimError;
use crate::rate::{RateLimiter, RATE_PER_S_MAX};
use crate::series::{validate_destination, FleetSpec, Series, Tally};
use crate::summary::{Progress, SeriesOutcome, Summary};
use crate::wire::{encode_agent_write, Encoded};

/// Bound on one write request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a refusing agent's answer goes into the error.
const REFUSAL_BODY_BYTES_MAX: usize = 1024;
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Which API the sensors write through.
#[derive(Debug, Clone, Default)]
pub enum WriteApi {
    /// An edge agent's `POST /v1/write` (bearer token from `access`).
    #[default]
    EdgeAgent,
    /// Timestream's `WriteRecords`, signed with this AWS access key id and secret in `region`.
    Timestream { key: String, secret: String, region: String },
}

/// One `lodestone-sim agent` (or `timestream`) run.
#[derive(Debug, Clone)]
pub struct AgentRun {
    /// The agents' base URLs, e.g. `http://127.0.0.1:8181`; sensors are spread over them.
    pub urls: Vec<String>,
    pub fleet: FleetSpec,
    pub database: String,
    pub table: String,
    pub rate_per_s: u64,
    /// The whole run's bound; unanswered readings count as `unacked`.
    pub timeout: Duration,
    /// The CA and token for the agents' API.
    pub access: crate::access::HttpAccess,
    pub api: WriteApi,
    /// Requests in flight at once over all sensors; 0: one per sensor.
    pub clients: usize,
}

impl AgentRun {
    /// Checks every bound, with the clock at `now_ns`.
    pub fn validate(&self, now_ns: i64) -> Result<(), SimError> {
        self.fleet.validate(now_ns)?;
        validate_destination(&self.database, &self.table)?;
        if self.urls.is_empty() {
            return Err(SimError::InvalidArgument { flag: "url", detail: "give at least one agent URL".into() });
        }
        if let Some(url) = self.urls.iter().find(|url| !(url.starts_with("http://") || url.starts_with("https://"))) {
            return Err(SimError::InvalidArgument { flag: "url", detail: format!("{url:?} is not an http:// URL") });
        }
        if self.rate_per_s > RATE_PER_S_MAX {
            return Err(SimError::InvalidArgument {
                flag: "rate",
                detail: format!("must be at most {RATE_PER_S_MAX} readings per second"),
            });
        }
        Ok(())
    }

    /// The write endpoint of URL `agent` (an edge agent's, with the destination in the query
    /// string; a query service's `/` for Timestream).
    pub fn write_url(&self, agent: usize) -> String {
        match self.api {
            WriteApi::EdgeAgent => format!("{}/v1/write?database={}&table={}", self.urls[agent].trim_end_matches('/'), self.database, self.table),
            WriteApi::Timestream { .. } => format!("{}/", self.urls[agent].trim_end_matches('/')),
        }
    }
}

/// Posts every sensor's batches and returns once each was answered with a 2xx, or at
/// `run.timeout` (then `unacked > 0`).
pub async fn run_agent(run: AgentRun) -> Result<Summary, SimError> {
    let progress = Arc::new(Progress::new(run.fleet.planned_total(), false));
    run_agent_observed(run, progress).await
}

/// [`run_agent`], counting into `progress` (which a load test samples meanwhile).
pub async fn run_agent_observed(run: AgentRun, progress: Arc<Progress>) -> Result<Summary, SimError> {
    // A signed request carries its own Authorization, never the bearer.
    let access = match run.api {
        WriteApi::EdgeAgent => run.access.clone(),
        WriteApi::Timestream { .. } => crate::access::HttpAccess { token_path: None, ..run.access.clone() },
    };
    let http = access.client(REQUEST_TIMEOUT)?;
    let clients = Arc::new(tokio::sync::Semaphore::new(if run.clients == 0 { tokio::sync::Semaphore::MAX_PERMITS } else { run.clients }));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = Arc::new(Writer { api: run.api.clone(), database: run.database.clone(), table: run.table.clone(), clients, latencies: latencies.clone() });
    let start = Instant::now();
    let deadline = start + run.timeout;
    let reporter = progress.report_every(PROGRESS_EVERY);
    let limiter = RateLimiter::start(run.rate_per_s, run.fleet.batch_records_max);
    let urls: Vec<Arc<String>> = (0..run.urls.len()).map(|agent| Arc::new(run.write_url(agent))).collect();
    let sensors: Vec<_> = run
        .fleet
        .all_series()
        .enumerate()
        .map(|(i, series)| {
            let sensor = Sensor { series, sent: Tally::default(), acked_through: 0 };
            let url = Arc::clone(&urls[i % urls.len()]);
            tokio::spawn(sensor.run(http.clone(), writer.clone(), url, limiter.clone(), Arc::clone(&progress), start, deadline))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(sensors.len());
    for sensor in sensors {
        outcomes.push(sensor.await??);
    }
    reporter.abort();
    tracing::info!("{}", progress.line());
    let latencies = std::mem::take(&mut *latencies.lock().expect("latencies lock"));
    Ok(Summary::new(outcomes, start.elapsed()).with_latencies(latencies))
}

/// What every sensor of a run shares: how to write, the bound on requests in flight, and the
/// latencies of answered writes.
struct Writer {
    api: WriteApi,
    database: String,
    table: String,
    clients: Arc<tokio::sync::Semaphore>,
    latencies: Arc<std::sync::Mutex<Vec<Duration>>>,
}

impl Writer {
    /// The body of one write of `batch`.
    fn encode(&self, batch: crate::series::Batch) -> Encoded {
        match self.api {
            WriteApi::EdgeAgent => encode_agent_write(batch),
            WriteApi::Timestream { .. } => crate::wire::encode_write_records(batch, &self.database, &self.table),
        }
    }

    /// The request for `body` to `url`, signed when the API wants it.
    fn request(&self, http: &reqwest::Client, url: &str, body: &bytes::Bytes) -> reqwest::RequestBuilder {
        match &self.api {
            WriteApi::EdgeAgent => http.post(url).header(header::CONTENT_TYPE, "application/json").body(body.clone()),
            WriteApi::Timestream { key, secret, region } => {
                let target = "Timestream_20181101.WriteRecords";
                let host = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("");
                let headers = [("content-type", "application/x-amz-json-1.0"), ("x-amz-target", target)];
                let signed = lodestone_kit::sigv4::sign("POST", host, "/", &headers, body, key, secret, region, "timestream", lodestone_kit::now_ns());
                let mut request = http.post(url).header(header::CONTENT_TYPE, "application/x-amz-json-1.0").header("x-amz-target", target).body(body.clone());
                for (name, value) in signed {
                    request = request.header(name, value);
                }
                request
            }
        }
    }
}

/// One simulated sensor behind the agent.
struct Sensor {
    series: Series,
    sent: Tally,
    acked_through: u64,
}

impl Sensor {
    async fn run(
        mut self,
        http: reqwest::Client,
        writer: Arc<Writer>,
        url: Arc<String>,
        limiter: RateLimiter,
        progress: Arc<Progress>,
        start: Instant,
        deadline: Instant,
    ) -> Result<SeriesOutcome, SimError> {
        let posted = tokio::time::timeout_at(deadline, self.post_all(&http, &writer, &url, &limiter, &progress, start)).await;
        if let Ok(Err(error)) = posted {
            return Err(error);
        }
        let unacked = self.series.last_seq() - self.acked_through;
        Ok(SeriesOutcome { id: self.series.id().to_owned(), sent: self.sent, unacked })
    }

    async fn post_all(&mut self, http: &reqwest::Client, writer: &Writer, url: &str, limiter: &RateLimiter, progress: &Progress, start: Instant) -> Result<(), SimError> {
        while self.series.has_next() {
            if let Some(due) = self.series.next_batch_due() {
                tokio::time::sleep_until(start + due).await;
            }
            limiter.take(self.series.next_batch_len()).await;
            let batch = self.series.next_batch().expect("the series has readings");
            let encoded = writer.encode(batch);
            self.sent.add(encoded.tally);
            Progress::add(&progress.sent, encoded.tally.count);
            let _client = writer.clients.acquire().await.expect("the clients semaphore is never closed");
            let posted = std::time::Instant::now();
            self.post_until_answered(http, writer, url, &encoded, progress).await?;
            writer.latencies.lock().expect("latencies lock").push(posted.elapsed());
            self.acked_through = encoded.last_seq;
            Progress::add(&progress.acked, encoded.tally.count);
        }
        Ok(())
    }

    /// Returns once the agent answered the write with a 2xx: it holds the readings.
    async fn post_until_answered(&self, http: &reqwest::Client, writer: &Writer, url: &str, write: &Encoded, progress: &Progress) -> Result<(), SimError> {
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            // Signed again for every attempt: a signature holds its time.
            let sent = writer.request(http, url, &write.bytes).send().await;
            match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if is_retryable(response.status()) => {
                    progress.note_error(self.series.id(), &format!("POST {url}: HTTP {}", response.status()));
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let mut body = response.text().await.unwrap_or_default();
                    truncate_at_char(&mut body, REFUSAL_BODY_BYTES_MAX);
                    return Err(SimError::AgentRejected { sensor_id: self.series.id().to_owned(), first_seq: write.first_seq, status, body });
                }
                Err(error) => progress.note_error(self.series.id(), &format!("POST {url}: {error}")),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }
}

/// Whether a write answered with `status` may succeed if sent again: timeouts, backpressure
/// and server errors.
fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

fn truncate_at_char(text: &mut String, bytes_max: usize) {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::SeriesKind;

    #[test]
    fn retryable_statuses() {
        for (status, retry) in [(200, false), (400, false), (404, false), (408, true), (413, false), (429, true), (500, true), (503, true)] {
            assert_eq!(is_retryable(StatusCode::from_u16(status).unwrap()), retry, "{status}");
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let check = |text: &str, max: usize, expected: &str| {
            let mut text = text.to_owned();
            truncate_at_char(&mut text, max);
            assert_eq!(text, expected);
        };
        check("short", 10, "short");
        check("exactly10!", 10, "exactly10!");
        check("abcdef", 3, "abc");
        check("aé", 2, "a"); // 'é' is two bytes
    }

    fn run(url: &str) -> AgentRun {
        AgentRun {
            urls: vec![url.into()],
            fleet: FleetSpec {
                seed: 1,
                kind: SeriesKind::Sensor,
                id_prefix: "sensor-".into(),
                series_count: 10,
                readings_per_series: 100,
                batch_records_max: 50,
                start_ns: 1_600_000_000_000_000_000,
                interval_ms: 1000,
                profile: crate::Profile::Walk,
                series_rate_per_s: 0.0,
            },
            database: "sim".into(),
            table: "readings".into(),
            rate_per_s: 0,
            timeout: Duration::from_secs(300),
            access: Default::default(),
            api: WriteApi::EdgeAgent,
            clients: 0,
        }
    }

    #[test]
    fn write_urls() {
        let check = |url: &str, expected: &str| assert_eq!(run(url).write_url(0), expected);
        check("http://127.0.0.1:8181", "http://127.0.0.1:8181/v1/write?database=sim&table=readings");
        check("http://127.0.0.1:8181/", "http://127.0.0.1:8181/v1/write?database=sim&table=readings");
        let timestream = AgentRun { api: WriteApi::Timestream { key: "k".into(), secret: "s".into(), region: "us-east-1".into() }, ..run("https://127.0.0.1:8080/") };
        assert_eq!(timestream.write_url(0), "https://127.0.0.1:8080/");
    }

    #[test]
    fn validation() {
        assert!(run("http://127.0.0.1:8181").validate(1_700_000_000_000_000_000).is_ok());
        let err = run("127.0.0.1:8181").validate(1_700_000_000_000_000_000).unwrap_err();
        assert!(matches!(err, SimError::InvalidArgument { flag: "url", .. }), "{err}");
        let two = AgentRun { urls: vec!["http://127.0.0.1:1".into(), "ftp://x".into()], ..run("http://127.0.0.1:8181") };
        assert!(matches!(two.validate(1_700_000_000_000_000_000), Err(SimError::InvalidArgument { flag: "url", .. })));
        let none = AgentRun { urls: vec![], ..run("http://127.0.0.1:8181") };
        assert!(matches!(none.validate(1_700_000_000_000_000_000), Err(SimError::InvalidArgument { flag: "url", .. })));
    }
}
