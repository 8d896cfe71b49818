//! The bridge's counters and their Prometheus text rendering.

use std::sync::atomic::{AtomicU64, Ordering};

use lodestone_kit::metrics::{CountsBy, Exposition, Kind};

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
    /// MQTT sessions the TLS front is serving now.
    mqtt_sessions: AtomicU64,
    rejected: CountsBy<&'static str>,
    discarded: CountsBy<&'static str>,
    mqtt_refused: CountsBy<&'static str>,
    mqtt_denied: CountsBy<&'static str>,
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

    /// A device's TLS session began (`true`) or ended.
    pub fn mqtt_session(&self, began: bool) {
        match began {
            true => self.mqtt_sessions.fetch_add(1, Ordering::Relaxed),
            false => self.mqtt_sessions.fetch_sub(1, Ordering::Relaxed),
        };
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.add(reason, 1);
    }

    pub fn discarded(&self, reason: &'static str) {
        self.discarded.add(reason, 1);
    }

    /// A device connection the MQTT front refused before any MQTT packet: `handshake` (no,
    /// expired, foreign or revoked certificate), `handshake_timeout`, `handshakes_max`,
    /// `identity` (a certificate that names no device).
    pub fn mqtt_refused(&self, reason: &'static str) {
        self.mqtt_refused.add(reason, 1);
    }

    /// A device packet the gate refused (the connection is closed), by what it tried:
    /// `client_id`, `topic`, `policy`, `retain`, `subscribe`, `protocol`.
    pub fn mqtt_denied(&self, action: &'static str) {
        self.mqtt_denied.add(action, 1);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut text = Exposition::new();
        text.counter("lodestone_bridge_received_total", "MQTT publishes read from the embedded broker.", load(&self.received))
            .counter("lodestone_bridge_records_accepted_total", "Records that decoded and validated.", load(&self.records_accepted))
            .family(
                "lodestone_bridge_sent_total",
                Kind::Counter,
                "Envelopes and dead letters acknowledged by Kafka, by topic (a bundle counts its envelopes).",
                "topic",
                [(Destination::Ingest.label(), load(&self.sent_ingest)), (Destination::DeadLetter.label(), load(&self.sent_dead_letter))],
            )
            .counter("lodestone_bridge_bundles_sent_total", "Bundles of envelopes acknowledged by Kafka.", load(&self.bundles_sent))
            .family(
                "lodestone_bridge_rejected_total",
                Kind::Counter,
                "Records and payloads sent to the dead-letter topic, by reason.",
                "reason",
                self.rejected.snapshot(),
            )
            .family(
                "lodestone_bridge_discarded_total",
                Kind::Counter,
                "Messages and acks dropped without a dead-letter entry, by reason.",
                "reason",
                self.discarded.snapshot(),
            )
            .counter("lodestone_bridge_acks_sent_total", "End-to-end acks published to devices.", load(&self.acks_sent))
            .counter(
                "lodestone_bridge_sequence_gaps_total",
                "Envelopes that did not continue their device's sequence (not acked until resent).",
                load(&self.sequence_gaps),
            )
            .gauge("lodestone_bridge_inflight_envelopes", "Envelopes awaiting Kafka delivery.", load(&self.inflight_envelopes))
            .gauge("lodestone_bridge_mqtt_sessions", "Devices connected to the TLS front now (their TLS sessions).", load(&self.mqtt_sessions))
            .family(
                "lodestone_bridge_mqtt_refused_total",
                Kind::Counter,
                "Device connections refused by the MQTT front before MQTT, by reason.",
                "reason",
                self.mqtt_refused.snapshot(),
            )
            .family(
                "lodestone_bridge_mqtt_denied_total",
                Kind::Counter,
                "Device packets refused by the MQTT gate (the connection is closed), by action.",
                "action",
                self.mqtt_denied.snapshot(),
            );
        text.service_families();
        text.finish()
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
