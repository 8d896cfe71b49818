//! Compaction and retention rounds, one every `maintenance.interval_ms`, until shutdown. Safe in
//! any number of workers at once: every step commits atomically in the catalog.

use std::sync::Arc;
use std::time::Duration;

use lodestone_kit::{now_ns, Shutdown};
use lodestone_store::{CompactionPolicy, Store};

use crate::config::MaintenanceConfig;
use crate::metrics::Counters;

pub fn policy(config: &MaintenanceConfig) -> CompactionPolicy {
    CompactionPolicy {
        files_min: config.compact_files_min.max(2),
        input_bytes_max: config.compact_input_bytes_max,
        garbage_grace_ns: (config.garbage_grace_ms as i64).saturating_mul(1_000_000),
        fresh_age_max_ns: (config.compact_fresh_age_ms as i64).saturating_mul(1_000_000),
        ..CompactionPolicy::default()
    }
}

/// Runs rounds until `shutdown`. A failed round is logged and retried on the next one: an
/// interrupted round leaves no damage. A round in progress at shutdown is dropped at its next
/// await; what it had not committed is redone by a later round.
pub async fn run(store: Store, config: MaintenanceConfig, counters: Arc<Counters>, mut shutdown: Shutdown) {
    let policy = policy(&config);
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = round(&store, &policy, &counters) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn round(store: &Store, policy: &CompactionPolicy, counters: &Counters) {
    match store.compact(policy, now_ns()).await {
        Ok(report) if report.partitions_compacted > 0 => {
            // Cross-tier conflicts: refused by compaction, recorded in rejected_records.
            (0..report.conflicts_rejected).for_each(|_| counters.reject(lodestone_model::RejectReason::VersionConflict));
            tracing::info!(?report, "compacted")
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "compaction round failed"),
    }
    match store.apply_retention(policy, now_ns()).await {
        Ok(report) if report.partitions_expired + report.files_deleted > 0 => tracing::info!(?report, "retention"),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "retention round failed"),
    }
}
