//! The bridge's counters and their Prometheus text rendering.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::route::Destination;

/// Why something was dropped without a dead-letter entry.
pub mod discard {
    /// Kafka refused or timed out a message; its envelope is not acked (the device resends).
    pub const KAFKA_DELIVERY_FAILED: &str = "kafka_delivery_failed";
    /// An ack could not be handed to the broker.
    pub const ACK_PUBLISH_FAILED: &str = "ack_publish_failed";
}

#[derive(Debug, Default)]
pub struct Metrics {
    received: AtomicU64,
    records_accepted: AtomicU64,
    sent_ingest: AtomicU64,
    sent_dead_letter: AtomicU64,
    bundles_sent: AtomicU64,
    acks_sent: AtomicU64,
    sequence_gaps: AtomicU64,
    inflight_envelopes: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    discarded: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn records_accepted(&self, count: usize) {
        self.records_accepted.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// `envelopes` delivered to `destination` (in one message, or one bundle).
    pub fn sent(&self, destination: Destination, envelopes: usize) {
        let counter = match destination {
            Destination::Ingest => &self.sent_ingest,
            Destination::DeadLetter => &self.sent_dead_letter,
        };
        counter.fetch_add(envelopes as u64, Ordering::Relaxed);
    }

    pub fn bundle_sent(&self) {
        self.bundles_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acks_sent(&self, count: usize) {
        self.acks_sent.fetch_add(count as u64, Ordering::Relaxed);
    }

    pub fn sequence_gap(&self) {
        self.sequence_gaps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_inflight_envelopes(&self, count: usize) {
        self.inflight_envelopes.store(count as u64, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: &'static str) {
        *self.rejected.lock().expect("metrics lock").entry(reason).or_default() += 1;
    }

    pub fn discarded(&self, reason: &'static str) {
        *self.discarded.lock().expect("metrics lock").entry(reason).or_default() += 1;
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP lodestone_bridge_{name} {help}");
            let _ = writeln!(out, "# TYPE lodestone_bridge_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "lodestone_bridge_{name}{labels} {value}");
            }
        };
        let labelled = |label: &str, map: &Mutex<BTreeMap<&'static str, u64>>| -> Vec<(String, u64)> {
            map.lock().expect("metrics lock").iter().map(|(k, v)| (format!("{{{label}=\"{k}\"}}"), *v)).collect()
        };
        family("received_total", "counter", "MQTT publishes read from the embedded broker.", &[(String::new(), load(&self.received))]);
        family("records_accepted_total", "counter", "Records that decoded and validated.", &[(String::new(), load(&self.records_accepted))]);
        family(
            "sent_total",
            "counter",
            "Envelopes and dead letters acknowledged by Kafka, by topic (a bundle counts its envelopes).",
            &[
                ("{topic=\"ingest\"}".into(), load(&self.sent_ingest)),
                ("{topic=\"dead_letter\"}".into(), load(&self.sent_dead_letter)),
            ],
        );
        family("bundles_sent_total", "counter", "Bundles of envelopes acknowledged by Kafka.", &[(String::new(), load(&self.bundles_sent))]);
        family("rejected_total", "counter", "Records and payloads sent to the dead-letter topic, by reason.", &labelled("reason", &self.rejected));
        family("discarded_total", "counter", "Messages and acks dropped without a dead-letter entry, by reason.", &labelled("reason", &self.discarded));
        family("acks_sent_total", "counter", "End-to-end acks published to devices.", &[(String::new(), load(&self.acks_sent))]);
        family(
            "sequence_gaps_total",
            "counter",
            "Envelopes that did not continue their device's sequence (not acked until resent).",
            &[(String::new(), load(&self.sequence_gaps))],
        );
        family("inflight_envelopes", "gauge", "Envelopes awaiting Kafka delivery.", &[(String::new(), load(&self.inflight_envelopes))]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let metrics = Metrics::default();
        metrics.received();
        metrics.sent(Destination::DeadLetter, 1);
        metrics.bundle_sent();
        metrics.rejected("malformed_payload");
        metrics.rejected("malformed_payload");
        metrics.discarded(discard::KAFKA_DELIVERY_FAILED);
        let text = metrics.render();
        for line in [
            "# TYPE lodestone_bridge_received_total counter",
            "lodestone_bridge_received_total 1",
            "lodestone_bridge_sent_total{topic=\"dead_letter\"} 1",
            "lodestone_bridge_sent_total{topic=\"ingest\"} 0",
            "lodestone_bridge_bundles_sent_total 1",
            "lodestone_bridge_rejected_total{reason=\"malformed_payload\"} 2",
            "lodestone_bridge_discarded_total{reason=\"kafka_delivery_failed\"} 1",
            "lodestone_bridge_inflight_envelopes 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
