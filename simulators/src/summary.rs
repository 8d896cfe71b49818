//! The one JSON line a run prints on stdout, and the live counters behind its progress lines.
//!
//! ```json
//! {"total":2000,"devices":{"sim-0001":{"count":1000,"sum":51234.75},"sim-0002":{...}},
//!  "elapsed_s":1.234,"readings_per_sec":1620.7,"unacked":0}
//! ```
//!
//! `devices` is keyed by series id (device ids, or sensor ids for `agent`). `count` and `sum`
//! are what the simulator handed to the transport — on a successful run, exactly what the store
//! must hold. `unacked` counts planned readings never confirmed (MQTT: not covered by the
//! bridge's ack; Kafka: not delivered; agent: not answered with a 2xx).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::series::Tally;

/// How one series ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesOutcome {
    pub id: String,
    /// Readings sent, with their exact sum.
    pub sent: Tally,
    /// Planned readings not confirmed by the far side.
    pub unacked: u64,
}

/// The run's result, printed as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub total: u64,
    pub devices: BTreeMap<String, SeriesSummary>,
    pub elapsed_s: f64,
    pub readings_per_sec: f64,
    pub unacked: u64,
    /// Percentiles of the time from sending a write to its answer (the HTTP paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    /// Series with at least one unacked reading (for the error message, not the JSON).
    #[serde(skip)]
    pub unacked_series: usize,
}

/// Write latencies, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub writes: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSummary {
    pub count: u64,
    pub sum: f64,
}

impl Summary {
    pub fn new(outcomes: impl IntoIterator<Item = SeriesOutcome>, elapsed: Duration) -> Summary {
        let mut summary = Summary {
            total: 0,
            devices: BTreeMap::new(),
            elapsed_s: round_to(elapsed.as_secs_f64(), 1e3),
            readings_per_sec: 0.0,
            unacked: 0,
            latency_ms: None,
            unacked_series: 0,
        };
        for outcome in outcomes {
            summary.total += outcome.sent.count;
            summary.unacked += outcome.unacked;
            summary.unacked_series += usize::from(outcome.unacked > 0);
            summary.devices.insert(outcome.id, SeriesSummary { count: outcome.sent.count, sum: outcome.sent.sum() });
        }
        let seconds = elapsed.as_secs_f64();
        if seconds > 0.0 {
            summary.readings_per_sec = round_to(summary.total as f64 / seconds, 10.0);
        }
        summary
    }

    /// This summary with the percentiles of `latencies` (none when empty).
    pub fn with_latencies(mut self, mut latencies: Vec<Duration>) -> Summary {
        if latencies.is_empty() {
            return self;
        }
        latencies.sort_unstable();
        let at = |fraction: f64| round_to(latencies[((latencies.len() - 1) as f64 * fraction).round() as usize].as_secs_f64() * 1e3, 10.0);
        self.latency_ms = Some(Latency { writes: latencies.len(), p50: at(0.5), p99: at(0.99), max: at(1.0) });
        self
    }

    /// The summary as one line of JSON, without a trailing newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("JSON encoding of a summary cannot fail")
    }
}

fn round_to(value: f64, per_unit: f64) -> f64 {
    (value * per_unit).round() / per_unit
}

/// Counters the transports bump as they go; a progress task logs them to stderr.
#[derive(Debug, Default)]
pub struct Progress {
    pub planned: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Connections currently up (MQTT).
    pub connected: AtomicI64,
    /// Connection attempts, requests or deliveries that failed.
    pub errors: AtomicU64,
    /// Whether `connected` means anything for this transport.
    pub tracks_connections: bool,
    first_error_logged: AtomicBool,
}

impl Progress {
    pub fn new(planned: u64, tracks_connections: bool) -> Progress {
        let progress = Progress { tracks_connections, ..Progress::default() };
        progress.planned.store(planned, Ordering::Relaxed);
        progress
    }

    /// Counts a failure; the run's first is logged as a warning, the rest only at debug level
    /// (a thousand devices losing the broker at once should not print a thousand lines).
    pub fn note_error(&self, series_id: &str, error: &dyn Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.first_error_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(series_id, %error, "first failure of this run; retrying (further failures are counted in the progress lines)");
        } else {
            tracing::debug!(series_id, %error, "failure; retrying");
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One human-readable progress line.
    pub fn line(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut line = format!("sent {} / acked {} of {} readings", load(&self.sent), load(&self.acked), load(&self.planned));
        if self.tracks_connections {
            line += &format!("; {} connections up", self.connected.load(Ordering::Relaxed));
        }
        line + &format!("; {} failures", load(&self.errors))
    }

    /// Logs [`Progress::line`] every `every` until the returned handle is aborted or dropped
    /// with the runtime.
    pub fn report_every(self: &std::sync::Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let progress = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                tracing::info!("{}", progress.line());
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, count: u64, sum_quarters: i64, unacked: u64) -> SeriesOutcome {
        SeriesOutcome { id: id.into(), sent: Tally { count, sum_quarters }, unacked }
    }

    #[test]
    fn json_line() {
        let check = |outcomes: Vec<SeriesOutcome>, elapsed_ms: u64, expected: &str| {
            let summary = Summary::new(outcomes, Duration::from_millis(elapsed_ms));
            assert_eq!(summary.to_json_line(), expected);
        };
        check(
            vec![outcome("sim-0002", 3, 5, 0), outcome("sim-0001", 2, -2, 0)],
            2000,
            r#"{"total":5,"devices":{"sim-0001":{"count":2,"sum":-0.5},"sim-0002":{"count":3,"sum":1.25}},"elapsed_s":2.0,"readings_per_sec":2.5,"unacked":0}"#,
        );
        check(
            vec![outcome("s-1", 10, 400, 4)],
            3,
            r#"{"total":10,"devices":{"s-1":{"count":10,"sum":100.0}},"elapsed_s":0.003,"readings_per_sec":3333.3,"unacked":4}"#,
        );
        check(vec![], 0, r#"{"total":0,"devices":{},"elapsed_s":0.0,"readings_per_sec":0.0,"unacked":0}"#);
    }

    #[test]
    fn progress_lines() {
        let mqtt = Progress::new(100, true);
        Progress::add(&mqtt.sent, 50);
        Progress::add(&mqtt.acked, 40);
        mqtt.connected.fetch_add(2, Ordering::Relaxed);
        mqtt.note_error("sim-0001", &"refused");
        assert_eq!(mqtt.line(), "sent 50 / acked 40 of 100 readings; 2 connections up; 1 failures");
        assert_eq!(Progress::new(7, false).line(), "sent 0 / acked 0 of 7 readings; 0 failures");
    }

    #[test]
    fn counts_unacked_series() {
        let summary = Summary::new(
            vec![outcome("a", 1, 0, 0), outcome("b", 1, 0, 1), outcome("c", 1, 0, 5)],
            Duration::from_secs(1),
        );
        assert_eq!((summary.unacked, summary.unacked_series), (6, 2));
    }
}
