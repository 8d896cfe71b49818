//! The pipeline as the console's pipeline page shows it (`GET /v1/pipeline`): every service's
//! health, and figures read off their `/metrics` — devices connected (the bridges' TLS sessions),
//! readings in and rejected per second (the ingest workers' counters, and the bridges'
//! rejections), the workers' Kafka lag, how long the oldest unpersisted rows have waited, and
//! the rejections so far by reason.
//!
//! A sampler reads every service every [`SAMPLE_EVERY`]; rates are the difference of its last two
//! samples. The figures are computed by plain functions over parsed samples ([`Figures::of`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// How often every service is read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How long one service may take to answer a sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a service is, for the figures it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    BrokerBridge,
    IngestService,
    EdgeAgent,
}

/// One service to read: its kind, a name for people, and its base URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
    pub url: String,
}

/// Metric samples of one service: name → label value (or "") → value.
type Samples = BTreeMap<String, BTreeMap<String, f64>>;

/// Reads Prometheus text: every sample's name, its one label's value (Lodestone's families have
/// at most one), and its value. Lines that do not read are skipped.
pub fn parse_metrics(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, label) = match head.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}').split_once('=').map_or("", |(_, v)| v.trim_matches('"'))),
            None => (head, ""),
        };
        *samples.entry(name.to_string()).or_default().entry(label.to_string()).or_insert(0.0) += value;
    }
    samples
}

/// One reading of every service.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at_ns: i64,
    /// Per target: whether `/health` answered, the error if not, and its metrics.
    pub services: Vec<(Target, Result<Samples, String>)>,
}

impl Sample {
    /// The sum over the services of `kind` of a metric's samples (every label), `None` when no
    /// such service answered.
    fn total(&self, kind: Kind, name: &str) -> Option<f64> {
        let answered: Vec<&Samples> = self.services.iter().filter(|(t, _)| t.kind == kind).filter_map(|(_, s)| s.as_ref().ok()).collect();
        (!answered.is_empty()).then(|| answered.iter().filter_map(|s| s.get(name)).flat_map(|by| by.values()).sum())
    }

    /// A labelled metric summed by label over the services of `kind`.
    fn by_label(&self, kind: Kind, name: &str) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for samples in self.services.iter().filter(|(t, _)| t.kind == kind).filter_map(|(_, s)| s.as_ref().ok()) {
            for (label, value) in samples.get(name).into_iter().flatten() {
                *sums.entry(label.clone()).or_insert(0.0) += value;
            }
        }
        sums
    }

    /// The earliest `unpersisted_since` over the workers (Unix seconds), when any holds rows.
    fn oldest_unpersisted_s(&self) -> Option<f64> {
        let workers = self.services.iter().filter(|(t, _)| t.kind == Kind::IngestService).filter_map(|(_, s)| s.as_ref().ok());
        workers.filter_map(|s| s.get("lodestone_ingest_unpersisted_since_seconds")?.get("").copied()).filter(|since| *since > 0.0).reduce(f64::min)
    }
}

/// A service as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceHealth {
    pub name: String,
    pub kind: Kind,
    pub url: String,
    pub healthy: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejections {
    pub reason: String,
    pub count: u64,
}

/// `GET /v1/pipeline`'s answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    pub sampled_at_ms: i64,
    pub services: Vec<ServiceHealth>,
    pub devices_connected: Option<f64>,
    pub readings_in_per_sec: Option<f64>,
    pub readings_rejected_per_sec: Option<f64>,
    pub ingest_lag_messages: Option<f64>,
    pub persist_age_s: Option<f64>,
    pub rejections_by_reason: Vec<Rejections>,
}

const BRIDGE_REJECTED: &str = "lodestone_bridge_rejected_total";
const INGEST_REJECTED: &str = "lodestone_ingest_records_rejected_total";

impl Figures {
    /// The figures of the `last` sample, with rates over the time since `before` (none without it).
    pub fn of(last: &Sample, before: Option<&Sample>) -> Figures {
        let services = last
            .services
            .iter()
            .map(|(target, samples)| ServiceHealth {
                name: target.name.clone(),
                kind: target.kind,
                url: target.url.clone(),
                healthy: samples.is_ok(),
                error: samples.as_ref().err().cloned(),
            })
            .collect();
        let rejected = |sample: &Sample| -> Option<f64> {
            let bridge = sample.total(Kind::BrokerBridge, BRIDGE_REJECTED);
            let ingest = sample.total(Kind::IngestService, INGEST_REJECTED);
            match (bridge, ingest) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            }
        };
        let rate = |of: &dyn Fn(&Sample) -> Option<f64>| {
            let before = before?;
            let seconds = (last.at_ns - before.at_ns) as f64 / 1e9;
            let (now, then) = (of(last)?, of(before)?);
            (seconds > 0.0).then(|| ((now - then).max(0.0) / seconds * 10.0).round() / 10.0)
        };
        let mut reasons = last.by_label(Kind::BrokerBridge, BRIDGE_REJECTED);
        for (reason, count) in last.by_label(Kind::IngestService, INGEST_REJECTED) {
            *reasons.entry(reason).or_insert(0.0) += count;
        }
        let mut rejections_by_reason: Vec<Rejections> = reasons.into_iter().map(|(reason, count)| Rejections { reason, count: count as u64 }).collect();
        rejections_by_reason.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
        let any_worker = last.services.iter().any(|(t, s)| t.kind == Kind::IngestService && s.is_ok());
        Figures {
            sampled_at_ms: last.at_ns / 1_000_000,
            services,
            devices_connected: last.total(Kind::BrokerBridge, "lodestone_bridge_mqtt_sessions"),
            readings_in_per_sec: rate(&|s: &Sample| s.total(Kind::IngestService, "lodestone_ingest_records_received_total")),
            readings_rejected_per_sec: rate(&rejected),
            ingest_lag_messages: last.total(Kind::IngestService, "lodestone_ingest_lag_messages"),
            persist_age_s: match last.oldest_unpersisted_s() {
                Some(since) => Some(((last.at_ns as f64 / 1e9 - since).max(0.0) * 10.0).round() / 10.0),
                None => any_worker.then_some(0.0),
            },
            rejections_by_reason,
        }
    }
}

/// Reads the targets every [`SAMPLE_EVERY`] and keeps the last two samples.
pub struct Pipeline {
    targets: Vec<Target>,
    http: reqwest::Client,
    samples: Mutex<(Option<Sample>, Option<Sample>)>,
}

impl Pipeline {
    pub fn new(targets: Vec<Target>, http: reqwest::Client) -> Arc<Pipeline> {
        Arc::new(Pipeline { targets, http, samples: Mutex::new((None, None)) })
    }

    /// Samples until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: lodestone_kit::Shutdown) {
        if self.targets.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let sample = self.sample().await;
                    let mut samples = self.samples.lock().expect("samples lock");
                    let last = samples.1.take();
                    *samples = (last, Some(sample));
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn sample(&self) -> Sample {
        let reads = self.targets.iter().map(|target| async move {
            let base = target.url.trim_end_matches('/');
            let read = async {
                let health = self.http.get(format!("{base}/health")).timeout(SAMPLE_TIMEOUT).send().await.map_err(|e| e.to_string())?;
                if !health.status().is_success() {
                    return Err(format!("/health answered {}", health.status()));
                }
                let metrics = self.http.get(format!("{base}/metrics")).timeout(SAMPLE_TIMEOUT).send().await.map_err(|e| e.to_string())?;
                if !metrics.status().is_success() {
                    return Err(format!("/metrics answered {}", metrics.status()));
                }
                Ok(parse_metrics(&metrics.text().await.map_err(|e| e.to_string())?))
            };
            (target.clone(), read.await)
        });
        Sample { at_ns: lodestone_kit::now_ns(), services: futures::future::join_all(reads).await }
    }

    /// The figures of the last samples (services listed, figures unknown before the first).
    pub fn figures(&self) -> Figures {
        let samples = self.samples.lock().expect("samples lock");
        match &samples.1 {
            Some(last) => Figures::of(last, samples.0.as_ref()),
            None => {
                let unknown = Sample { at_ns: lodestone_kit::now_ns(), services: self.targets.iter().map(|t| (t.clone(), Err("not read yet".to_string()))).collect() };
                Figures::of(&unknown, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: Kind, name: &str) -> Target {
        Target { kind, name: name.into(), url: format!("https://{name}") }
    }

    fn sample(at_s: i64, bridge: &str, worker: &str) -> Sample {
        Sample {
            at_ns: at_s * 1_000_000_000,
            services: vec![
                (target(Kind::BrokerBridge, "bridge"), Ok(parse_metrics(bridge))),
                (target(Kind::IngestService, "ingest-0"), Ok(parse_metrics(worker))),
                (target(Kind::EdgeAgent, "edge-1"), Err("connection refused".into())),
            ],
        }
    }

    #[test]
    fn figures_are_read_off_the_services_metrics() {
        let bridge = |sessions: u32, rejected: u32| {
            format!("# TYPE x gauge\nlodestone_bridge_mqtt_sessions {sessions}\nlodestone_bridge_rejected_total{{reason=\"malformed_payload\"}} {rejected}\n")
        };
        let worker = |received: u32, since: f64| {
            format!(
                "lodestone_ingest_records_received_total {received}\nlodestone_ingest_lag_messages 7\nlodestone_ingest_unpersisted_since_seconds {since}\nlodestone_ingest_records_rejected_total{{reason=\"time_outside_retention\"}} 2\n"
            )
        };
        let before = sample(100, &bridge(3, 1), &worker(1_000, 0.0));
        let last = sample(102, &bridge(5, 5), &worker(3_000, 99.5));
        let figures = Figures::of(&last, Some(&before));
        assert_eq!(figures.devices_connected, Some(5.0));
        assert_eq!(figures.readings_in_per_sec, Some(1_000.0));
        assert_eq!(figures.readings_rejected_per_sec, Some(2.0), "(5 + 2 - 1 - 2) / 2 s");
        assert_eq!(figures.ingest_lag_messages, Some(7.0));
        assert_eq!(figures.persist_age_s, Some(2.5));
        let reasons: Vec<(&str, u64)> = figures.rejections_by_reason.iter().map(|r| (r.reason.as_str(), r.count)).collect();
        assert_eq!(reasons, [("malformed_payload", 5), ("time_outside_retention", 2)]);
        let health: Vec<(&str, bool)> = figures.services.iter().map(|s| (s.name.as_str(), s.healthy)).collect();
        assert_eq!(health, [("bridge", true), ("ingest-0", true), ("edge-1", false)]);
        assert_eq!(Figures::of(&last, None).readings_in_per_sec, None, "a rate needs two samples");
    }
}
