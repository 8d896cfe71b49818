//! What every stage counted, shared by the tasks and read by `GET /v1/status` and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lodestone_kit::metrics::{CountsBy, Exposition, Kind};

use crate::outbox::OutboxStatus;

/// Counters in records (Vector's convention: received, sent, rejected).
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Records taken in by HTTP writes and the simulated source, stored or not. A payload that
    /// could not be parsed at all counts as one.
    pub received: AtomicU64,
    /// Records published on MQTT, resends included.
    pub forwarded: AtomicU64,
    /// Records deleted from the outbox because the bridge acknowledged them end to end.
    pub acked: AtomicU64,
    /// Records refused: every record of a refused write (invalid, outbox full, too large, …).
    pub rejected: AtomicU64,
    /// `rejected` by the refusal's error code (`outbox_full`, `too_many_records`, …).
    pub rejected_by_code: CountsBy<&'static str>,
    /// Whether the MQTT connection is up and subscribed to the ack topic.
    pub connected: AtomicBool,
}

impl Telemetry {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts `records` refused with error `code`.
    pub fn reject(&self, code: &'static str, records: u64) {
        Telemetry::add(&self.rejected, records);
        self.rejected_by_code.add(code, records);
    }

    pub fn rejected_by_code(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.rejected_by_code.snapshot().into_iter().collect()
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The counters in Prometheus' text format, with the outbox's state and `dropped` (readings
    /// the outbox discarded under `drop_oldest`).
    pub fn render(&self, outbox: &OutboxStatus, dropped: u64) -> String {
        let mut out = Exposition::new();
        out.counter("lodestone_agent_records_received_total", "Records taken in by HTTP writes and the simulated source.", Telemetry::get(&self.received))
            .counter("lodestone_agent_records_forwarded_total", "Records published on MQTT, resends included.", Telemetry::get(&self.forwarded))
            .counter("lodestone_agent_records_acked_total", "Records deleted from the outbox on the bridge's end-to-end ack.", Telemetry::get(&self.acked))
            .family("lodestone_agent_records_rejected_total", Kind::Counter, "Records refused, by error code.", "reason", self.rejected_by_code.snapshot())
            .family(
                "lodestone_agent_records_discarded_total",
                Kind::Counter,
                "Records the outbox dropped unsent, by reason.",
                "reason",
                [("outbox_drop_oldest", dropped)],
            )
            .gauge("lodestone_agent_outbox_entries", "Envelopes in the outbox.", outbox.entries)
            .gauge("lodestone_agent_outbox_bytes", "Bytes of readings in the outbox.", outbox.bytes)
            .gauge("lodestone_agent_acked_through", "The last sequence number acknowledged end to end.", outbox.acked_through)
            .gauge("lodestone_agent_connected", "1 while the MQTT connection is up and subscribed to acks.", u64::from(self.is_connected()))
            .service_families();
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_every_counter_and_the_outbox() {
        let telemetry = Telemetry::default();
        Telemetry::add(&telemetry.received, 12);
        Telemetry::add(&telemetry.forwarded, 9);
        Telemetry::add(&telemetry.acked, 7);
        telemetry.reject("outbox_full", 3);
        telemetry.set_connected(true);
        let text = telemetry.render(&OutboxStatus { entries: 2, bytes: 8192, next_seq: 10, acked_through: 7 }, 4);
        for line in [
            "lodestone_agent_records_received_total 12",
            "lodestone_agent_records_forwarded_total 9",
            "lodestone_agent_records_acked_total 7",
            "lodestone_agent_records_rejected_total{reason=\"outbox_full\"} 3",
            "lodestone_agent_records_discarded_total{reason=\"outbox_drop_oldest\"} 4",
            "lodestone_agent_outbox_entries 2",
            "lodestone_agent_outbox_bytes 8192",
            "lodestone_agent_acked_through 7",
            "lodestone_agent_connected 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
