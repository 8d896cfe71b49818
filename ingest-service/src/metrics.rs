//! Counters of what the worker received, wrote and rejected, rendered for Prometheus.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use lodestone_model::RejectReason;

#[derive(Default)]
pub struct Counters {
    pub messages_received: AtomicU64,
    /// Messages below their partition's catalog watermark: already persisted, not stored again.
    pub messages_skipped: AtomicU64,
    pub records_received: AtomicU64,
    pub records_written: AtomicU64,
    pub records_persisted: AtomicU64,
    pub persists: AtomicU64,
    /// Partitions of the ingest and dead-letter topics the group has assigned to this worker.
    pub partitions_assigned: AtomicI64,
    rejected: Mutex<BTreeMap<RejectReason, u64>>,
    /// Records dropped after they were received, by reason (a dead letter Kafka refused).
    discarded: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reject(&self, reason: RejectReason) {
        *self.rejected.lock().expect("counters lock").entry(reason).or_default() += 1;
    }

    pub fn discard(&self, reason: &'static str) {
        *self.discarded.lock().expect("counters lock").entry(reason).or_default() += 1;
    }

    /// Whether the group has assigned this worker a partition: it is consuming.
    pub fn is_assigned(&self) -> bool {
        self.partitions_assigned.load(Ordering::Relaxed) > 0
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let plain = [
            ("lodestone_ingest_messages_received_total", &self.messages_received),
            ("lodestone_ingest_messages_skipped_total", &self.messages_skipped),
            ("lodestone_ingest_records_received_total", &self.records_received),
            ("lodestone_ingest_records_written_total", &self.records_written),
            ("lodestone_ingest_records_persisted_total", &self.records_persisted),
            ("lodestone_ingest_persists_total", &self.persists),
        ];
        for (name, counter) in plain {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", counter.load(Ordering::Relaxed));
        }
        let assigned = self.partitions_assigned.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE lodestone_ingest_partitions_assigned gauge\nlodestone_ingest_partitions_assigned {assigned}");
        let _ = writeln!(out, "# TYPE lodestone_ingest_records_rejected_total counter");
        for (reason, count) in self.rejected.lock().expect("counters lock").iter() {
            let _ = writeln!(out, "lodestone_ingest_records_rejected_total{{reason=\"{reason}\"}} {count}");
        }
        let _ = writeln!(out, "# TYPE lodestone_ingest_records_discarded_total counter");
        for (reason, count) in self.discarded.lock().expect("counters lock").iter() {
            let _ = writeln!(out, "lodestone_ingest_records_discarded_total{{reason=\"{reason}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_and_discarded_records_are_counted_by_reason() {
        let counters = Counters::default();
        counters.reject(RejectReason::MalformedPayload);
        counters.discard("dead_letter_refused_by_kafka");
        counters.discard("dead_letter_refused_by_kafka");
        let text = counters.render();
        assert!(text.contains("lodestone_ingest_records_rejected_total{reason=\"malformed_payload\"} 1"), "{text}");
        assert!(text.contains("lodestone_ingest_records_discarded_total{reason=\"dead_letter_refused_by_kafka\"} 2"), "{text}");
    }
}
