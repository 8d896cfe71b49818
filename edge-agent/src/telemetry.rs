//! What every stage counted, shared by the tasks and read by `GET /v1/status` and `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    pub rejected_by_code: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
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
        *self.rejected_by_code.lock().expect("telemetry lock").entry(code).or_insert(0) += records;
    }

    pub fn rejected_by_code(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.rejected_by_code.lock().expect("telemetry lock").clone()
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
        let mut out = String::new();
        let counters = [
            ("lodestone_agent_records_received_total", Telemetry::get(&self.received)),
            ("lodestone_agent_records_forwarded_total", Telemetry::get(&self.forwarded)),
            ("lodestone_agent_records_acked_total", Telemetry::get(&self.acked)),
        ];
        for (name, value) in counters {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(out, "# TYPE lodestone_agent_records_rejected_total counter");
        for (code, count) in self.rejected_by_code() {
            let _ = writeln!(out, "lodestone_agent_records_rejected_total{{reason=\"{code}\"}} {count}");
        }
        let _ = writeln!(out, "# TYPE lodestone_agent_records_discarded_total counter");
        let _ = writeln!(out, "lodestone_agent_records_discarded_total{{reason=\"outbox_drop_oldest\"}} {dropped}");
        let gauges = [
            ("lodestone_agent_outbox_entries", outbox.entries),
            ("lodestone_agent_outbox_bytes", outbox.bytes),
            ("lodestone_agent_acked_through", outbox.acked_through),
            ("lodestone_agent_connected", u64::from(self.is_connected())),
        ];
        for (name, value) in gauges {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
        }
        out
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
