//! The store's front door: where a store is ([`StoreConfig`]), opening it, and the operations
//! every service calls — the catalog's reads and commits, databases and tables, and persisting
//! the hot tier's rows. Scans ([`crate::scan`]) and background work ([`crate::compact`]) add their
//! operations to [`Store`] in their own files.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use serde::Deserialize;

use crate::catalog::{Catalog, FileMeta, Snapshot};
use crate::cold::write_partition_file;
use crate::error::StoreError;
use crate::hot::PersistBatch;
use crate::schema::TableSchema;
use lodestone_model::Record;
use crate::alert::{AlertEntry, AlertRule, AlertStatus};
use crate::table::{ResourceInfo, StoreLimits, TableProperties, TableRef};

/// Where a store is, as services configure it (the `[store]` section of their TOML files).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Local folder of the store (catalog and Parquet files), when `url` is empty.
    pub path: std::path::PathBuf,
    /// Any S3-compatible bucket instead, e.g. `s3://bucket/prefix`; empty: the local `path`.
    pub url: String,
    /// Options of the object store at `url`, passed to object_store as they are (`aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`…).
    pub options: BTreeMap<String, String>,
    /// Bounds on what writers can create (`[store.limits]`).
    pub limits: StoreLimits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: "data/store".into(), url: String::new(), options: BTreeMap::new(), limits: StoreLimits::default() }
    }
}

impl StoreConfig {
    pub fn open(&self) -> Result<Store, StoreError> {
        self.limits.validate()?;
        let store = if self.url.is_empty() { Store::open_local(&self.path)? } else { Store::open(&self.url, &self.options)? };
        Ok(store.with_limits(self.limits.clone()))
    }

    /// Where the store is, for messages (never the options: they may hold secrets).
    pub fn describe(&self) -> String {
        if self.url.is_empty() {
            self.path.display().to_string()
        } else {
            self.url.clone()
        }
    }
}

/// A database or a table, for [`Store::update_info`].
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    Database(&'a str),
    Table(&'a TableRef),
}

/// The cold tier and the catalog on one object store.
#[derive(Clone, Debug)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    catalog: Catalog,
    limits: StoreLimits,
}

impl Store {
    /// Opens (creating if needed) a store in a local folder.
    pub fn open_local(root: &FsPath) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::Invalid { what: "store path", detail: format!("{}: {e}", root.display()) })?;
        let objects = LocalFileSystem::new_with_prefix(root)?;
        Ok(Store::with_object_store(Arc::new(objects)))
    }

    /// Opens the store at `location`: a local folder (a path, or a `file://` URL), or any
    /// S3-compatible bucket (`s3://bucket/prefix`). `options` go to object_store's builder as
    /// they are: `aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_allow_http`… For S3, `aws_conditional_put` defaults to `etag`: catalog commits need
    /// create-if-absent writes (S3's `If-None-Match: *`).
    pub fn open(location: &str, options: &BTreeMap<String, String>) -> Result<Store, StoreError> {
        let invalid = |detail: String| StoreError::Invalid { what: "store location", detail };
        if !location.contains("://") {
            return Store::open_local(FsPath::new(location));
        }
        let url = url::Url::parse(location).map_err(|e| invalid(format!("{location}: {e}")))?;
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| invalid(format!("{location} is not a local path")))?;
            return Store::open_local(&path);
        }
        let mut options = options.clone();
        if url.scheme() == "s3" {
            options.entry("aws_conditional_put".into()).or_insert_with(|| "etag".into());
        }
        let (objects, prefix) = object_store::parse_url_opts(&url, options)?;
        let objects: Arc<dyn ObjectStore> = Arc::from(objects);
        if prefix.as_ref().is_empty() {
            return Ok(Store::with_object_store(objects));
        }
        Ok(Store::with_object_store(Arc::new(object_store::prefix::PrefixStore::new(objects, prefix))))
    }

    /// Wraps any object store (S3-compatible, in-memory for tests…).
    pub fn with_object_store(objects: Arc<dyn ObjectStore>) -> Store {
        Store { catalog: Catalog::new(objects.clone()), objects, limits: StoreLimits::default() }
    }

    /// This store with other bounds on what writers can create.
    pub fn with_limits(mut self, limits: StoreLimits) -> Store {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// The object store holding the Parquet files; paths in [`FileMeta::path`] are relative to it.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.objects.clone()
    }

    /// The latest committed catalog version (version 0, empty, for a new store).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.catalog.latest().await
    }

    /// Applies `change` to the latest snapshot and commits the result as the next version,
    /// retrying on a lost race. Returns after the object store accepted the commit: on S3 it is durable;
    /// on a local folder (no fsync) it survives a process crash, not a power loss.
    pub async fn commit<F>(&self, change: F) -> Result<Snapshot, StoreError>
    where
        F: FnMut(&mut Snapshot) -> Result<(), StoreError>,
    {
        self.catalog.commit(change).await
    }

    pub async fn create_database(&self, name: &str) -> Result<Snapshot, StoreError> {
        self.create_database_tagged(name, BTreeMap::new()).await
    }

    /// Creates database `name` with `tags`.
    pub async fn create_database_tagged(&self, name: &str, tags: BTreeMap<String, String>) -> Result<Snapshot, StoreError> {
        lodestone_model::validate_name("database", name).map_err(|detail| StoreError::Invalid { what: "database name", detail })?;
        let info = ResourceInfo::new(lodestone_kit::now_ns(), tags);
        self.commit(|snapshot| {
            if snapshot.databases.contains_key(name) {
                return Err(StoreError::DatabaseExists(name.into()));
            }
            snapshot.check_room_for_database(&self.limits)?;
            snapshot.databases.insert(name.into(), BTreeMap::new());
            snapshot.database_info.insert(name.into(), info.clone());
            Ok(())
        })
        .await
    }

    pub async fn drop_database(&self, name: &str) -> Result<Snapshot, StoreError> {
        self.commit(|snapshot| {
            let tables = snapshot.databases.get(name).ok_or_else(|| StoreError::DatabaseNotFound(name.into()))?;
            if !tables.is_empty() {
                return Err(StoreError::DatabaseNotEmpty(name.into()));
            }
            snapshot.databases.remove(name);
            snapshot.database_info.remove(name);
            Ok(())
        })
        .await
    }

    pub async fn create_table(&self, table: &TableRef, properties: TableProperties) -> Result<Snapshot, StoreError> {
        self.create_table_tagged(table, properties, BTreeMap::new()).await
    }

    /// Creates `table` with `properties` and `tags`; its database must exist.
    pub async fn create_table_tagged(&self, table: &TableRef, properties: TableProperties, tags: BTreeMap<String, String>) -> Result<Snapshot, StoreError> {
        lodestone_model::validate_name("database", &table.database).map_err(|detail| StoreError::Invalid { what: "database name", detail })?;
        lodestone_model::validate_name("table", &table.table).map_err(|detail| StoreError::Invalid { what: "table name", detail })?;
        let info = ResourceInfo::new(lodestone_kit::now_ns(), tags);
        self.commit(|snapshot| {
            snapshot.check_room_for_table(&table.database, &self.limits)?;
            snapshot.add_table(table, properties.clone(), info.clone())
        })
        .await
    }

    /// Changes what the catalog keeps of a database or table besides its data (tags, KMS key id),
    /// and marks it updated now.
    pub async fn update_info(&self, resource: Resource<'_>, change: impl Fn(&mut ResourceInfo)) -> Result<Snapshot, StoreError> {
        let now = lodestone_kit::now_ns();
        self.commit(|snapshot| {
            let info = match resource {
                Resource::Database(name) => {
                    if !snapshot.databases.contains_key(name) {
                        return Err(StoreError::DatabaseNotFound(name.into()));
                    }
                    snapshot.database_info.entry(name.to_string()).or_default()
                }
                Resource::Table(table) => &mut snapshot.table_mut(table)?.info,
            };
            change(info);
            info.updated_ns = now;
            Ok(())
        })
        .await
    }

    /// Creates the database and table if they do not exist yet (an ingest worker's implicit
    /// creation, as InfluxDB does); existing ones are left as they are.
    /// Names reserved for Lodestone (`_lodestone`, `_catalog`) are refused.
    pub async fn ensure_table(&self, table: &TableRef, properties: TableProperties) -> Result<Snapshot, StoreError> {
        lodestone_model::validate_name("database", &table.database).map_err(|detail| StoreError::Invalid { what: "database name", detail })?;
        lodestone_model::validate_name("table", &table.table).map_err(|detail| StoreError::Invalid { what: "table name", detail })?;
        self.ensure_table_unchecked(table, properties, Some(&self.limits)).await
    }

    /// Creates `"_lodestone"."rejected_records"` if it does not exist: the one table in a reserved
    /// database, written only by Lodestone itself.
    pub async fn ensure_rejected_records(&self) -> Result<Snapshot, StoreError> {
        self.ensure_table_unchecked(&crate::rejected::rejected_records_table(), crate::rejected::rejected_records_properties(), None).await
    }

    async fn ensure_table_unchecked(&self, table: &TableRef, properties: TableProperties, limits: Option<&StoreLimits>) -> Result<Snapshot, StoreError> {
        let existing = self.snapshot().await?;
        if existing.table(table).is_some() {
            return Ok(existing);
        }
        self.commit(|snapshot| {
            if snapshot.table(table).is_some() {
                return Ok(());
            }
            if let Some(limits) = limits {
                if !snapshot.databases.contains_key(&table.database) {
                    snapshot.check_room_for_database(limits)?;
                }
                snapshot.check_room_for_table(&table.database, limits)?;
            }
            snapshot.databases.entry(table.database.clone()).or_default();
            snapshot.add_table(table, properties.clone(), ResourceInfo::new(lodestone_kit::now_ns(), BTreeMap::new()))
        })
        .await
    }

    pub async fn update_table(&self, table: &TableRef, properties: TableProperties) -> Result<Snapshot, StoreError> {
        properties.validate()?;
        let now = lodestone_kit::now_ns();
        self.commit(|snapshot| {
            let entry = snapshot.table_mut(table)?;
            entry.properties = properties.clone();
            entry.info.updated_ns = now;
            Ok(())
        })
        .await
    }

    /// Adds the names and types `learned` to the table's schema, so that queries know the
    /// columns of rows still in a worker's memory. A table dropped meanwhile is left dropped.
    pub async fn learn_schema(&self, table: &TableRef, learned: &TableSchema) -> Result<Snapshot, StoreError> {
        self.commit(|snapshot| {
            if let Some(entry) = snapshot.databases.get_mut(&table.database).and_then(|tables| tables.get_mut(&table.table)) {
                entry.schema.merge(learned);
            }
            Ok(())
        })
        .await
    }

    /// Adds alert rule `rule`, or replaces the one of its name (whose state starts over).
    pub async fn put_alert(&self, rule: AlertRule) -> Result<Snapshot, StoreError> {
        let now = lodestone_kit::now_ns();
        let status = AlertStatus { since_ns: now, next_due_ns: now, ..AlertStatus::default() };
        self.commit(|snapshot| {
            snapshot.alerts.insert(rule.name.clone(), AlertEntry { rule: rule.clone(), status: status.clone() });
            Ok(())
        })
        .await
    }

    pub async fn drop_alert(&self, name: &str) -> Result<Snapshot, StoreError> {
        self.commit(|snapshot| snapshot.alerts.remove(name).map(|_| ()).ok_or_else(|| StoreError::AlertNotFound(name.into()))).await
    }

    /// Claims the evaluation of rule `name` due at `now_ns`: moves its next due time one
    /// interval on in a catalog commit. Returns the rule when this caller won it; `None` when it
    /// is not due (another evaluator claimed it first) or is gone.
    pub async fn claim_alert(&self, name: &str, now_ns: i64) -> Result<Option<AlertEntry>, StoreError> {
        let claimed = std::sync::Mutex::new(None);
        self.commit(|snapshot| {
            *claimed.lock().expect("claim lock") = None;
            let Some(entry) = snapshot.alerts.get_mut(name) else { return Ok(()) };
            if entry.status.next_due_ns > now_ns {
                return Ok(());
            }
            let interval_ns = i64::try_from(entry.rule.interval_s).unwrap_or(i64::MAX).saturating_mul(1_000_000_000);
            entry.status.next_due_ns = now_ns.saturating_add(interval_ns);
            *claimed.lock().expect("claim lock") = Some(entry.clone());
            Ok(())
        })
        .await?;
        Ok(claimed.into_inner().expect("claim lock"))
    }

    /// Sets rule `name`'s state to `status` (its `next_due_ns` is kept) and, in the same commit,
    /// writes `history` into `"_lodestone"."alert_history"` (created if needed). A rule removed
    /// meanwhile stays removed. Returns after the commit.
    pub async fn settle_alert(&self, name: &str, status: AlertStatus, history: Option<Record>) -> Result<Snapshot, StoreError> {
        let apply = |snapshot: &mut Snapshot| {
            if let Some(entry) = snapshot.alerts.get_mut(name) {
                let next_due_ns = entry.status.next_due_ns;
                entry.status = AlertStatus { next_due_ns, ..status.clone() };
            }
            Ok(())
        };
        let Some(record) = history else { return self.commit(apply).await };
        let table = crate::alert::alert_history_table();
        let snapshot = self.ensure_table_unchecked(&table, crate::alert::alert_history_properties(), None).await?;
        let entry = snapshot.table(&table).cloned().expect("the table just ensured");
        let now = lodestone_kit::now_ns();
        let mut hot = crate::HotTier::new(1);
        hot.write(&table, &entry.properties, &entry.schema, record, now, 0).map_err(|rejection| StoreError::Invalid { what: "alert history row", detail: rejection.to_string() })?;
        self.persist_with(&hot.drain(), &BTreeMap::new(), apply).await
    }

    /// Removes the table from the catalog. Its files are left for a later garbage collection.
    pub async fn drop_table(&self, table: &TableRef) -> Result<Snapshot, StoreError> {
        self.commit(|snapshot| {
            snapshot.table_mut(table)?;
            snapshot.databases.get_mut(&table.database).map(|tables| tables.remove(&table.table));
            Ok(())
        })
        .await
    }

    /// Writes `batch` as Parquet files (one per table and day) and commits them, the tables'
    /// learned schemas and `watermarks` in one catalog version. Returns after that commit: the
    /// rows are as safe as the object store makes them (durable on S3; on a local folder, safe
    /// from a process crash) and the caller may acknowledge its input up to the watermarks.
    /// Rows of a table dropped since they were written are dropped with it (their files go to
    /// the garbage list in the same commit). On error nothing is committed (files already
    /// written are unreferenced garbage).
    pub async fn persist(&self, batch: &PersistBatch, watermarks: &BTreeMap<String, u64>) -> Result<Snapshot, StoreError> {
        self.persist_with(batch, watermarks, |_| Ok(())).await
    }

    /// [`Store::persist`] that also applies `change` in the same catalog commit.
    pub async fn persist_with<F>(&self, batch: &PersistBatch, watermarks: &BTreeMap<String, u64>, mut change: F) -> Result<Snapshot, StoreError>
    where
        F: FnMut(&mut Snapshot) -> Result<(), StoreError>,
    {
        let mut written: Vec<(usize, FileMeta)> = Vec::new();
        for (index, table_rows) in batch.tables.iter().enumerate() {
            let snapshot_schema = self.snapshot().await?.table(&table_rows.table).map(|t| t.schema.clone()).unwrap_or_default();
            let mut schema = snapshot_schema;
            schema.merge(&table_rows.schema);
            for file in write_partition_file(self.objects.as_ref(), &table_rows.table, &schema, &table_rows.rows).await? {
                written.push((index, file));
            }
        }
        let now = lodestone_kit::now_ns();
        let committed = self
            .commit(|snapshot| {
                let mut dropped = Vec::new();
                for (index, table_rows) in batch.tables.iter().enumerate() {
                    match snapshot.table_mut(&table_rows.table) {
                        Ok(entry) => entry.schema.merge(&table_rows.schema),
                        Err(StoreError::TableNotFound { .. }) => dropped.push(index),
                        Err(error) => return Err(error),
                    }
                }
                for (index, file) in &written {
                    match dropped.contains(index) {
                        true => snapshot.garbage.push((file.path.clone(), now)),
                        false => snapshot.table_mut(&batch.tables[*index].table)?.files.push(file.clone()),
                    }
                }
                for (key, value) in watermarks {
                    snapshot.watermarks.insert(key.clone(), *value);
                }
                change(snapshot)
            })
            .await?;
        for table_rows in batch.tables.iter().filter(|t| committed.table(&t.table).is_none()) {
            tracing::warn!(table = %table_rows.table, rows = table_rows.rows.len(), "rows of a table dropped before they were persisted are dropped with it");
        }
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::RejectReason;

    fn store(limits: StoreLimits) -> Store {
        Store::with_object_store(Arc::new(object_store::memory::InMemory::new())).with_limits(limits)
    }

    fn t(database: &str, table: &str) -> TableRef {
        TableRef { database: database.into(), table: table.into() }
    }

    fn reason(result: Result<Snapshot, StoreError>) -> Option<RejectReason> {
        result.err().and_then(|error| error.reject_reason())
    }

    #[tokio::test]
    async fn databases_and_tables_stop_at_their_limits_however_they_are_created() {
        let store = store(StoreLimits { databases_max: 2, tables_per_database_max: 2, ..StoreLimits::default() });
        // Lodestone's own database does not count.
        store.ensure_rejected_records().await.unwrap();
        store.create_database("db-one").await.unwrap();
        store.ensure_table(&t("db-two", "table1"), TableProperties::default()).await.unwrap();
        assert_eq!(reason(store.create_database("db-three").await), Some(RejectReason::TooManyDatabases));
        assert_eq!(reason(store.ensure_table(&t("db-three", "table1"), TableProperties::default()).await), Some(RejectReason::TooManyDatabases));

        store.create_table(&t("db-two", "table2"), TableProperties::default()).await.unwrap();
        assert_eq!(reason(store.create_table(&t("db-two", "table3"), TableProperties::default()).await), Some(RejectReason::TooManyTables));
        assert_eq!(reason(store.ensure_table(&t("db-two", "table3"), TableProperties::default()).await), Some(RejectReason::TooManyTables));
        // An existing table is still found, and dropping one makes room.
        store.ensure_table(&t("db-two", "table2"), TableProperties::default()).await.unwrap();
        store.drop_table(&t("db-two", "table2")).await.unwrap();
        store.ensure_table(&t("db-two", "table3"), TableProperties::default()).await.unwrap();
        let message = store.create_database("db-four").await.unwrap_err().to_string();
        assert!(message.contains("2 databases") && message.contains("store.limits"), "{message}");
    }

    #[tokio::test]
    async fn databases_and_tables_keep_their_creation_times_and_tags() {
        let store = store(StoreLimits::default());
        let tags = BTreeMap::from([("team".to_string(), "fleet".to_string())]);
        let made = store.create_database_tagged("fleet", tags.clone()).await.unwrap();
        let info = made.database_info("fleet");
        assert!(info.created_ns > 0 && info.updated_ns == info.created_ns);
        assert_eq!(info.tags, tags);
        store.create_table_tagged(&t("fleet", "trucks"), TableProperties::default(), tags.clone()).await.unwrap();
        let changed = store
            .update_info(Resource::Table(&t("fleet", "trucks")), |info| {
                info.tags.remove("team");
                info.tags.insert("env".into(), "test".into());
            })
            .await
            .unwrap();
        let table = &changed.table(&t("fleet", "trucks")).unwrap().info;
        assert_eq!(table.tags, BTreeMap::from([("env".to_string(), "test".to_string())]));
        assert!(table.updated_ns >= table.created_ns);
        store.update_info(Resource::Database("fleet"), |info| info.kms_key_id = Some("key-1".into())).await.unwrap();
        assert_eq!(store.snapshot().await.unwrap().database_info("fleet").kms_key_id.as_deref(), Some("key-1"));
        assert!(matches!(store.update_info(Resource::Database("nosuch"), |_| {}).await, Err(StoreError::DatabaseNotFound(_))));
        store.drop_table(&t("fleet", "trucks")).await.unwrap();
        let dropped = store.drop_database("fleet").await.unwrap();
        assert!(dropped.database_info.is_empty(), "a dropped database's info goes with it");
    }

    /// Names may be 256 bytes (Timestream's bound) but a local folder's path components 255: a
    /// table of such a name made every persist fail (a worker that could never commit).
    #[tokio::test]
    async fn a_table_with_a_256_byte_name_persists_to_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path()).unwrap();
        let table = t(&"d".repeat(256), &"t".repeat(256));
        store.create_database(&table.database).await.unwrap();
        store.create_table(&table, TableProperties::default()).await.unwrap();
        let now = lodestone_kit::now_ns();
        let mut hot = crate::HotTier::new(10);
        let record = lodestone_model::Record {
            dimensions: vec![lodestone_model::Dimension { name: "truck".into(), value: "t1".into() }],
            measure_name: "speed".into(),
            value: lodestone_model::MeasureValue::Single(lodestone_model::Scalar::Double(1.0)),
            time_ns: now,
            version: 1,
        };
        hot.write(&table, &TableProperties::default(), &TableSchema::default(), record, now, 0).unwrap();
        let persisted = store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
        let files = &persisted.table(&table).unwrap().files;
        assert_eq!(files.len(), 1);
        assert!(files[0].path.split('/').all(|part| part.len() <= 255), "{}", files[0].path);
    }

    /// Dropping a table while a worker still held rows of it made that worker's persist fail,
    /// and the worker stop (every later write then waited on it).
    #[tokio::test]
    async fn rows_of_a_table_dropped_before_the_persist_are_dropped_with_it() {
        let store = store(StoreLimits::default());
        let (kept, dropped) = (t("fleet", "kept"), t("fleet", "dropped"));
        let now = lodestone_kit::now_ns();
        let mut hot = crate::HotTier::new(10);
        for table in [&kept, &dropped] {
            store.ensure_table(table, TableProperties::default()).await.unwrap();
            let record = lodestone_model::Record {
                dimensions: vec![],
                measure_name: "m".into(),
                value: lodestone_model::MeasureValue::Single(lodestone_model::Scalar::Double(1.0)),
                time_ns: now,
                version: 1,
            };
            hot.write(table, &TableProperties::default(), &TableSchema::default(), record, now, 0).unwrap();
        }
        store.drop_table(&dropped).await.unwrap();
        store.learn_schema(&dropped, &TableSchema::default()).await.unwrap();
        let watermarks = BTreeMap::from([("kafka/ingest/0".to_string(), 7)]);
        let persisted = store.persist(&hot.drain(), &watermarks).await.unwrap();
        assert_eq!(persisted.table(&kept).unwrap().files.len(), 1);
        assert!(persisted.table(&dropped).is_none(), "a dropped table stays dropped");
        assert_eq!(persisted.garbage.len(), 1, "the dropped table's file is garbage");
        assert_eq!(persisted.watermarks.get("kafka/ingest/0"), Some(&7));
    }

    #[tokio::test]
    async fn an_alert_evaluation_is_claimed_once_per_interval_and_its_changes_are_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path()).unwrap();
        let condition = crate::alert::Condition { column: "temp".into(), op: ">".into(), value: 90.0 };
        let rule = AlertRule { name: "hot".into(), sql: "SELECT 1 AS temp".into(), condition, interval_s: 10, for_s: 0, webhook: None };
        store.put_alert(rule).await.unwrap();
        let now = lodestone_kit::now_ns();
        let claimed = store.claim_alert("hot", now).await.unwrap().expect("due at once");
        assert_eq!(claimed.status.next_due_ns, now + 10_000_000_000);
        assert!(store.claim_alert("hot", now).await.unwrap().is_none(), "a second evaluator finds it claimed");
        assert!(store.claim_alert("hot", now + 10_000_000_000).await.unwrap().is_some(), "due again an interval later");
        let firing = AlertStatus { state: crate::alert::AlertState::Firing, since_ns: now, matching_rows: 2, ..AlertStatus::default() };
        let history = crate::alert::history_record("hot", "firing", "pending", 2, "{}", now);
        let settled = store.settle_alert("hot", firing, Some(history)).await.unwrap();
        let entry = &settled.alerts["hot"];
        assert_eq!((entry.status.state, entry.status.next_due_ns), (crate::alert::AlertState::Firing, now + 20_000_000_000), "the claim is kept");
        assert_eq!(settled.table(&crate::alert::alert_history_table()).unwrap().files.len(), 1, "the change is a history row");
        store.drop_alert("hot").await.unwrap();
        assert!(matches!(store.drop_alert("hot").await, Err(StoreError::AlertNotFound(_))));
    }

    #[test]
    fn a_limit_of_zero_is_refused_with_its_key() {
        let error = StoreLimits { tables_per_database_max: 0, ..StoreLimits::default() }.validate().unwrap_err().to_string();
        assert!(error.contains("store.limits.tables_per_database_max"), "{error}");
    }
}
