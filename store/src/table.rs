//! What names a table and what a table promises: its reference, Timestream's retention
//! properties, and the bounds on how many tables and names writers may create. Every layer of the
//! store uses these; they depend on nothing else in it.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A table's name within its database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableRef {
    pub database: String,
    pub table: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}

/// Timestream's retention properties of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableProperties {
    /// How long rows stay in the memory store (1–8766 h, default 6). Older writes are rejected
    /// unless `magnetic_store_writes` is on.
    pub memory_retention_hours: u32,
    /// How long rows stay in the magnetic store (1–73000 days, default 73000).
    pub magnetic_retention_days: u32,
    /// Whether late records (older than the memory retention) are written to the magnetic store.
    pub magnetic_store_writes: bool,
}

impl Default for TableProperties {
    fn default() -> Self {
        TableProperties { memory_retention_hours: 6, magnetic_retention_days: 73_000, magnetic_store_writes: false }
    }
}

impl TableProperties {
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |detail: String| Err(StoreError::Invalid { what: "table properties", detail });
        if !(1..=8766).contains(&self.memory_retention_hours) {
            return invalid(format!("memory_retention_hours {} is not within 1..=8766", self.memory_retention_hours));
        }
        if !(1..=73_000).contains(&self.magnetic_retention_days) {
            return invalid(format!("magnetic_retention_days {} is not within 1..=73000", self.magnetic_retention_days));
        }
        Ok(())
    }
}

/// What the catalog keeps of a database or a table besides its data: when it was made and last
/// changed, its tags (Timestream's `TagResource`), and a database's KMS key id (kept and shown
/// as given: the object store's own encryption applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// Unix nanoseconds; 0 for one made before the catalog kept it.
    #[serde(default)]
    pub created_ns: i64,
    #[serde(default)]
    pub updated_ns: i64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

impl ResourceInfo {
    /// Made at `now_ns` with `tags`.
    pub fn new(now_ns: i64, tags: std::collections::BTreeMap<String, String>) -> ResourceInfo {
        ResourceInfo { created_ns: now_ns, updated_ns: now_ns, tags, kms_key_id: None }
    }
}

/// Bounds on what writers can make the store hold (`[store.limits]`). Devices and producers
/// create databases and tables implicitly, and every new dimension or measure name widens a
/// table; past a bound the record is rejected with its own reason and the API answers
/// `limit_exceeded`, instead of the catalog and every scan growing without end. Timestream's
/// quotas are the defaults where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreLimits {
    /// Databases, not counting Lodestone's own `_lodestone` (Timestream: 500 per account).
    pub databases_max: usize,
    /// Tables in one database.
    pub tables_per_database_max: usize,
    /// Distinct dimension names in one table (Timestream: 128).
    pub dimensions_per_table_max: usize,
    /// Distinct measure names plus multi-measure columns in one table (Timestream: 8,192
    /// measure names).
    pub measures_per_table_max: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits { databases_max: 500, tables_per_database_max: 10_000, dimensions_per_table_max: 128, measures_per_table_max: 8192 }
    }
}

impl StoreLimits {
    /// Refuses a bound of 0 (nothing could ever be written), naming its key.
    pub fn validate(&self) -> Result<(), StoreError> {
        for (key, value) in [
            ("store.limits.databases_max", self.databases_max),
            ("store.limits.tables_per_database_max", self.tables_per_database_max),
            ("store.limits.dimensions_per_table_max", self.dimensions_per_table_max),
            ("store.limits.measures_per_table_max", self.measures_per_table_max),
        ] {
            if value == 0 {
                return Err(StoreError::Invalid { what: "limit", detail: format!("{key} must be at least 1") });
            }
        }
        Ok(())
    }
}

/// `text` cut to at most `bytes_max` bytes, at a character boundary.
pub fn truncate_text(text: &str, bytes_max: usize) -> String {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
