//! What names a table and what a table promises: its reference and Timestream's retention
//! properties. Every layer of the store uses these; they depend on nothing else in it.

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
