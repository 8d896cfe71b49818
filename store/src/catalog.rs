//! The catalog: one immutable JSON snapshot per version on the object store, at
//! `_catalog/{version:020}.json`. A commit writes version N+1 with a create-if-absent put, so two
//! writers can never both commit N+1: the loser reloads and retries. A crash at any instant leaves
//! either the old latest version or the new one; files written but never committed are garbage
//! that a reader never sees.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::schema::TableSchema;
use crate::table::{ResourceInfo, TableProperties, TableRef};

const CATALOG_PREFIX: &str = "_catalog";
/// Old catalog versions kept behind the latest, for readers that listed just before a commit.
const CATALOG_VERSIONS_KEPT: u64 = 20;
const COMMIT_ATTEMPTS_MAX: u32 = 100;

/// One Parquet file of the cold tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Object path relative to the store's root.
    pub path: String,
    /// Day partition (days since the Unix epoch).
    pub day: i64,
    pub min_time_ns: i64,
    pub max_time_ns: i64,
    pub rows: u64,
    pub bytes: u64,
    /// 0: written by a persist; 1: written by compaction (sorted, deduplicated, one time slice).
    /// Every level-1 row was accepted before every level-0 row of the same partition.
    #[serde(default)]
    pub level: u8,
    /// When the file was written (Unix nanoseconds).
    #[serde(default)]
    pub created_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    pub properties: TableProperties,
    pub schema: TableSchema,
    pub files: Vec<FileMeta>,
    /// Creation and change times, tags.
    #[serde(default)]
    pub info: ResourceInfo,
}

/// One version of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// database → table → entry.
    pub databases: BTreeMap<String, BTreeMap<String, TableEntry>>,
    /// database → its creation and change times, tags and KMS key id (absent for databases made
    /// before the catalog kept them, and for those made implicitly by a write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub database_info: BTreeMap<String, ResourceInfo>,
    /// Alert rules by name, with their state (see [`crate::AlertEntry`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alerts: BTreeMap<String, crate::alert::AlertEntry>,
    /// Opaque progress markers that writers commit with their files (e.g. "next input position").
    pub watermarks: BTreeMap<String, u64>,
    /// Files no longer referenced, with the time they were dropped; deleted after a grace period.
    #[serde(default)]
    pub garbage: Vec<(String, i64)>,
}

impl Snapshot {
    pub fn table(&self, table: &TableRef) -> Option<&TableEntry> {
        self.databases.get(&table.database)?.get(&table.table)
    }

    pub(crate) fn table_mut(&mut self, table: &TableRef) -> Result<&mut TableEntry, StoreError> {
        let not_found = || StoreError::TableNotFound { database: table.database.clone(), table: table.table.clone() };
        self.databases.get_mut(&table.database).ok_or_else(not_found)?.get_mut(&table.table).ok_or_else(not_found)
    }

    /// Refuses a new database past `limits.databases_max` (Lodestone's own reserved database
    /// does not count).
    pub(crate) fn check_room_for_database(&self, limits: &crate::table::StoreLimits) -> Result<(), StoreError> {
        let databases = self.databases.keys().filter(|name| !lodestone_model::is_reserved_database(name)).count();
        if databases >= limits.databases_max {
            return Err(StoreError::LimitReached { what: "databases".into(), limit: limits.databases_max, reason: lodestone_model::RejectReason::TooManyDatabases });
        }
        Ok(())
    }

    /// Refuses a new table in `database` past `limits.tables_per_database_max`.
    pub(crate) fn check_room_for_table(&self, database: &str, limits: &crate::table::StoreLimits) -> Result<(), StoreError> {
        let tables = self.databases.get(database).map_or(0, BTreeMap::len);
        if tables >= limits.tables_per_database_max {
            return Err(StoreError::LimitReached {
                what: format!("tables in database {database:?}"),
                limit: limits.tables_per_database_max,
                reason: lodestone_model::RejectReason::TooManyTables,
            });
        }
        Ok(())
    }

    /// What the catalog keeps of `database` besides its tables (the default when it kept nothing).
    pub fn database_info(&self, database: &str) -> ResourceInfo {
        self.database_info.get(database).cloned().unwrap_or_default()
    }

    pub(crate) fn add_table(&mut self, table: &TableRef, properties: TableProperties, info: ResourceInfo) -> Result<(), StoreError> {
        properties.validate()?;
        let tables = self.databases.get_mut(&table.database).ok_or_else(|| StoreError::DatabaseNotFound(table.database.clone()))?;
        if tables.contains_key(&table.table) {
            return Err(StoreError::TableExists { database: table.database.clone(), table: table.table.clone() });
        }
        tables.insert(table.table.clone(), TableEntry { properties, schema: TableSchema::default(), files: Vec::new(), info });
        Ok(())
    }
}

/// The versions of the catalog on one object store: read the latest, commit the next.
#[derive(Clone, Debug)]
pub(crate) struct Catalog {
    objects: Arc<dyn ObjectStore>,
}

impl Catalog {
    pub(crate) fn new(objects: Arc<dyn ObjectStore>) -> Catalog {
        Catalog { objects }
    }

    /// The latest committed version (version 0, empty, for a new store).
    pub(crate) async fn latest(&self) -> Result<Snapshot, StoreError> {
        let prefix = Path::from(CATALOG_PREFIX);
        let metas: Vec<_> = self.objects.list(Some(&prefix)).try_collect().await?;
        let latest = metas.iter().filter_map(|m| version_of(&m.location)).max();
        match latest {
            None => Ok(Snapshot::default()),
            Some(version) => self.read_version(version).await,
        }
    }

    async fn read_version(&self, version: u64) -> Result<Snapshot, StoreError> {
        let bytes = self.objects.get(&catalog_path(version)).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptCatalog { version, detail: e.to_string() })
    }

    /// Applies `change` to the latest snapshot and commits the result as the next version,
    /// retrying on a lost race (see the module's comment).
    pub(crate) async fn commit<F>(&self, mut change: F) -> Result<Snapshot, StoreError>
    where
        F: FnMut(&mut Snapshot) -> Result<(), StoreError>,
    {
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            let mut next = self.latest().await?;
            change(&mut next)?;
            next.version += 1;
            let bytes = serde_json::to_vec(&next).expect("catalog snapshots always encode");
            let options = PutOptions { mode: PutMode::Create, ..Default::default() };
            match self.objects.put_opts(&catalog_path(next.version), PutPayload::from(bytes), options).await {
                Ok(_) => {
                    self.forget_old_versions(next.version).await;
                    return Ok(next);
                }
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::CommitContention { attempts: COMMIT_ATTEMPTS_MAX })
    }

    async fn forget_old_versions(&self, latest: u64) {
        if latest > CATALOG_VERSIONS_KEPT {
            // Best effort: a leftover old version is harmless.
            let _ = self.objects.delete(&catalog_path(latest - CATALOG_VERSIONS_KEPT)).await;
        }
    }
}

fn catalog_path(version: u64) -> Path {
    Path::from(format!("{CATALOG_PREFIX}/{version:020}.json"))
}

fn version_of(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".json")?.parse().ok()
}
