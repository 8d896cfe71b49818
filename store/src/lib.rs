//! The store: where Lodestone keeps readings.
//!
//! Key types:
//! - [`HotTier`]: the memory store. Ingest workers [`HotTier::write`] records into it; it applies
//!   the upsert rules and the table's retention, and keeps rows per table, series and time until
//!   they are persisted. [`HotTier::drain`] hands everything over as a [`PersistBatch`].
//! - [`Store`]: the magnetic store and the catalog on an object store (a local folder by
//!   default). [`Store::persist`] writes a [`PersistBatch`] as Parquet files (one per table and
//!   day, sorted by series then time) and commits them atomically in the catalog.
//! - [`Snapshot`]: one immutable version of the catalog: databases, tables with their
//!   [`TableProperties`] and [`TableSchema`], every file with its time range, and opaque
//!   watermarks that a writer commits together with its files.
//! - [`arrow_schema`]: the Arrow shape of a table, the one Timestream users query.
//! - [`Store::scan_table`]: the read path — a time range, dimension filters and a projection
//!   in, Arrow record batches out, deduplicated by the upsert rule. [`plan_scan`] splits a scan
//!   into independent [`ScanUnit`]s for readers that run them in parallel (the query service).
//! - [`Store::compact`] and [`Store::apply_retention`]: background work on the cold tier —
//!   merging small files into sorted, deduplicated partition files, and dropping partitions past
//!   the magnetic retention. Both are safe to interrupt and to run from several processes.
//!
//! Data enters as [`lodestone_model::Record`]s through the hot tier and leaves as Parquet files
//! (read by the query service through [`Store::object_store`]) and Arrow record batches.
//!
//! **Invariant:** the store knows nothing of Kafka or MQTT; a writer's progress is an opaque
//! watermark in the catalog.

// The modules, from the bottom layer up; each uses only those above it in this list.
mod error;
mod schema;
mod table;
mod alert;
mod rows;
mod upsert;
mod catalog;
mod cold;
mod hot;
mod memory;
mod rejected;
mod store;
mod scan;
mod compact;

pub use alert::{alert_history_properties, alert_history_table, history_record, AlertEntry, AlertRule, AlertState, AlertStatus, Condition, ALERT_HISTORY_TABLE};
pub use catalog::{FileMeta, Snapshot, TableEntry};
pub use compact::{CompactionPolicy, MaintenanceReport};
pub use store::{Resource, Store, StoreConfig};
pub use table::{ResourceInfo, StoreLimits, TableProperties, TableRef};
pub use error::StoreError;
pub use hot::{HotTier, PersistBatch, TableRows, WriteOutcome};
pub use memory::{decode_ipc, encode_ipc, Memory};
pub use rejected::{
    records_of, rejected_records_properties, rejected_records_table, truncate, Rejected, REJECTED_RECORDS_DATABASE, REJECTED_RECORDS_TABLE,
    REJECTION_TEXT_BYTES_MAX,
};
pub use scan::{attach_memory, plan_scan, scan_schema, DimensionFilter, ScanRequest, ScanUnit};
pub use schema::{arrow_schema, dimension_type, TableSchema, MEASURE_NAME_COLUMN, TIME_COLUMN, VERSION_COLUMN};
pub use upsert::{decide, merge_dedup, UpsertDecision};

/// Nanoseconds in a day: the cold tier's partition width.
pub const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// The day partition a time falls in (days since the Unix epoch).
pub fn day_of(time_ns: i64) -> i64 {
    time_ns.div_euclid(DAY_NS)
}

/// The first nanosecond of day partition `day`, saturating at the ends of `i64` (the day of
/// `i64::MIN` starts before it).
pub fn day_start_ns(day: i64) -> i64 {
    day.saturating_mul(DAY_NS)
}

/// How far back `days` reaches from `now_ns`, saturating.
pub fn days_before(now_ns: i64, days: u32) -> i64 {
    now_ns.saturating_sub(i64::from(days).saturating_mul(DAY_NS))
}
