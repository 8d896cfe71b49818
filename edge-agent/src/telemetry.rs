//! What every stage counted, shared by the tasks and read by `GET /v1/status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
}
