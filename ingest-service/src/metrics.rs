//! Counters of what the worker received, wrote and rejected, rendered for Prometheus.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use lodestone_kit::metrics::{CountsBy, Exposition, Kind};
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
    /// Messages of the assigned partitions not consumed yet, from librdkafka's statistics
    /// (every 5 s).
    pub lag_messages: AtomicI64,
    /// When the oldest message applied since the last checkpoint was applied, Unix
    /// nanoseconds; 0 when everything applied is persisted.
    pub unpersisted_since_ns: AtomicI64,
    rejected: CountsBy<RejectReason>,
    /// Records dropped after they were received, by reason (a dead letter Kafka refused).
    discarded: CountsBy<&'static str>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected.add(reason, 1);
    }

    pub fn discard(&self, reason: &'static str) {
        self.discarded.add(reason, 1);
    }

    /// Whether the group has assigned this worker a partition: it is consuming.
    pub fn is_assigned(&self) -> bool {
        self.partitions_assigned.load(Ordering::Relaxed) > 0
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rejected = self.rejected.snapshot().into_iter().map(|(reason, count)| (reason.as_str(), count));
        let mut text = Exposition::new();
        text.counter("lodestone_ingest_messages_received_total", "Messages consumed from the ingest and dead-letter topics.", load(&self.messages_received))
            .counter(
                "lodestone_ingest_messages_skipped_total",
                "Messages below their partition's catalog watermark: already persisted, not stored again.",
                load(&self.messages_skipped),
            )
            .counter("lodestone_ingest_records_received_total", "Records in the envelopes consumed.", load(&self.records_received))
            .counter("lodestone_ingest_records_written_total", "Records written to the memory tier.", load(&self.records_written))
            .counter("lodestone_ingest_records_persisted_total", "Records made durable in Parquet files.", load(&self.records_persisted))
            .counter("lodestone_ingest_persists_total", "Persists committed to the catalog.", load(&self.persists))
            .gauge(
                "lodestone_ingest_partitions_assigned",
                "Partitions of the ingest and dead-letter topics assigned to this worker.",
                self.partitions_assigned.load(Ordering::Relaxed),
            )
            .gauge("lodestone_ingest_lag_messages", "Messages of the assigned partitions not consumed yet.", self.lag_messages.load(Ordering::Relaxed))
            .gauge(
                "lodestone_ingest_unpersisted_since_seconds",
                "When the oldest message not persisted yet was applied, Unix seconds (0: everything applied is persisted).",
                self.unpersisted_since_ns.load(Ordering::Relaxed) as f64 / 1e9,
            )
            .family("lodestone_ingest_records_rejected_total", Kind::Counter, "Records and messages sent to the dead-letter topic, by reason.", "reason", rejected)
            .family(
                "lodestone_ingest_records_discarded_total",
                Kind::Counter,
                "Records dropped after they were received, by reason.",
                "reason",
                self.discarded.snapshot(),
            );
        text.service_families();
        text.finish()
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
