//! Compaction and retention against real Parquet files, under a controllable clock.

use std::collections::BTreeMap;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{CompactionPolicy, HotTier, Store, TableProperties, TableRef, DAY_NS};
use object_store::ObjectStoreExt;

const NOW: i64 = 1_700_000_000_000_000_000;

fn table() -> TableRef {
    TableRef { database: "fleet".into(), table: "trucks".into() }
}

fn reading(truck: &str, time_ns: i64, value: f64, version: u64) -> Record {
    Record {
        dimensions: vec![Dimension { name: "truck".into(), value: truck.into() }],
        measure_name: "load".into(),
        value: MeasureValue::Single(Scalar::Double(value)),
        time_ns,
        version,
    }
}

/// Persists each group of records as its own file (one hot-tier drain per group).
async fn persist_groups(store: &Store, properties: TableProperties, groups: &[Vec<Record>]) {
    let snapshot = store.ensure_table(&table(), properties).await.unwrap();
    let entry = snapshot.table(&table()).unwrap().clone();
    for group in groups {
        let mut hot = HotTier::new(1000);
        for record in group {
            hot.write(&table(), &entry.properties, &entry.schema, record.clone(), NOW, 0).unwrap();
        }
        store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
    }
}

/// (truck, time, value, version) of every row of the table, in file order.
async fn rows(store: &Store) -> Vec<(String, i64, f64, u64)> {
    let snapshot = store.snapshot().await.unwrap();
    let mut out = Vec::new();
    for file in &snapshot.table(&table()).unwrap().files {
        for batch in store.read_file(file).await.unwrap() {
            let column = |name| batch.column_by_name(name).unwrap().clone();
            let trucks = arrow::compute::cast(&column("truck"), &arrow::datatypes::DataType::Utf8).unwrap();
            let trucks = trucks.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
            let times = column("time");
            let times = times.as_any().downcast_ref::<arrow::array::TimestampNanosecondArray>().unwrap();
            let values = column("measure_value::double");
            let values = values.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
            let versions = column("version");
            let versions = versions.as_any().downcast_ref::<arrow::array::UInt64Array>().unwrap();
            for i in 0..batch.num_rows() {
                out.push((trucks.value(i).to_string(), times.value(i), values.value(i), versions.value(i)));
            }
        }
    }
    out
}

#[tokio::test]
async fn compaction_merges_a_partition_into_one_sorted_file_by_the_upsert_rule() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    let groups = vec![
        vec![reading("b", NOW, 1.0, 1), reading("a", NOW + 1, 2.0, 1)],
        // A duplicate delivery of the same record: a no-op.
        vec![reading("b", NOW, 1.0, 1)],
        // A higher version replaces.
        vec![reading("a", NOW + 1, 5.0, 2)],
        // The same version with another value must not replace the accepted one.
        vec![reading("b", NOW, 9.0, 1)],
        vec![reading("a", NOW, 3.0, 1)],
    ];
    persist_groups(&store, TableProperties::default(), &groups).await;
    assert_eq!(store.snapshot().await.unwrap().table(&table()).unwrap().files.len(), 5);

    let policy = CompactionPolicy { files_min: 2, ..CompactionPolicy::default() };
    let report = store.compact(&policy, NOW).await.unwrap();
    assert_eq!((report.partitions_compacted, report.files_merged, report.rows_before, report.rows_after), (1, 5, 6, 3));
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.table(&table()).unwrap().files.len(), 1);
    assert_eq!(snapshot.garbage.len(), 5);
    assert_eq!(
        rows(&store).await,
        vec![("a".into(), NOW, 3.0, 1), ("a".into(), NOW + 1, 5.0, 2), ("b".into(), NOW, 1.0, 1)]
    );
    // Below the threshold nothing happens.
    assert_eq!(store.compact(&policy, NOW).await.unwrap().partitions_compacted, 0);

    // A late duplicate with another value lands in a fresh file; once that file is old enough it
    // merges into its compacted slice even though the partition has fewer than files_min files.
    persist_groups(&store, TableProperties::default(), &[vec![reading("b", NOW, 7.0, 1)]]).await;
    assert_eq!(store.compact(&policy, NOW).await.unwrap().partitions_compacted, 0);
    let wall_clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let later = wall_clock + policy.fresh_age_max_ns;
    assert_eq!(store.compact(&policy, later).await.unwrap().partitions_compacted, 1);
    assert_eq!(store.snapshot().await.unwrap().table(&table()).unwrap().files.len(), 1);
    assert_eq!(
        rows(&store).await,
        vec![("a".into(), NOW, 3.0, 1), ("a".into(), NOW + 1, 5.0, 2), ("b".into(), NOW, 1.0, 1)]
    );
}

#[tokio::test]
async fn retention_drops_whole_partitions_and_garbage_goes_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    let properties = TableProperties { magnetic_retention_days: 2, magnetic_store_writes: true, ..TableProperties::default() };
    // Written at NOW: the oldest is as old as the magnetic retention lets a write be.
    let groups = vec![vec![reading("a", NOW - 2 * DAY_NS, 1.0, 1)], vec![reading("a", NOW - DAY_NS / 2, 2.0, 1)], vec![reading("a", NOW, 3.0, 1)]];
    persist_groups(&store, properties, &groups).await;
    let old_file = store.snapshot().await.unwrap().table(&table()).unwrap().files[0].path.clone();

    // A day later, the oldest day partition has ended more than two days ago.
    let policy = CompactionPolicy::default();
    let report = store.apply_retention(&policy, NOW + DAY_NS).await.unwrap();
    assert_eq!((report.partitions_expired, report.files_deleted), (1, 0));
    assert_eq!(rows(&store).await.iter().map(|r| r.2).collect::<Vec<_>>(), vec![2.0, 3.0]);
    assert!(store.object_store().head(&old_file.as_str().into()).await.is_ok(), "kept during the grace period");

    let later = NOW + DAY_NS + policy.garbage_grace_ns;
    let report = store.apply_retention(&policy, later).await.unwrap();
    assert_eq!(report.files_deleted, 1);
    assert!(store.object_store().head(&old_file.as_str().into()).await.is_err());
    assert!(store.snapshot().await.unwrap().garbage.is_empty());
}

#[tokio::test]
async fn compaction_gives_way_when_its_inputs_changed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    let groups: Vec<Vec<Record>> = (0..4).map(|i| vec![reading("a", NOW + i, i as f64, 1)]).collect();
    persist_groups(&store, TableProperties::default(), &groups).await;
    let policy = CompactionPolicy { files_min: 2, ..CompactionPolicy::default() };
    let (first, second) = tokio::join!(store.compact(&policy, NOW), store.compact(&policy, NOW));
    let compacted = first.unwrap().partitions_compacted + second.unwrap().partitions_compacted;
    assert!(compacted >= 1);
    let values: Vec<f64> = rows(&store).await.iter().map(|r| r.2).collect();
    assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0], "no row lost or duplicated");
    let files = store.snapshot().await.unwrap().table(&table()).unwrap().files.len();
    assert_eq!(files, 1);
}

#[tokio::test]
async fn compaction_refuses_a_cross_tier_conflict_into_rejected_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    // Each group is persisted on its own, so the hot tier never holds two of them at once: the
    // second value of t1 at NOW arrives after the first left memory (a cross-tier write).
    let groups = [
        vec![reading("t1", NOW, 1.0, 1), reading("t2", NOW, 5.0, 1)],
        vec![reading("t1", NOW, 2.0, 1), reading("t2", NOW, 5.0, 1)], // conflict; duplicate
        vec![reading("t1", NOW + 1, 3.0, 1)],
        vec![reading("t1", NOW + 1, 4.0, 2)], // a higher version replaces
    ];
    persist_groups(&store, TableProperties::default(), &groups).await;
    let policy = CompactionPolicy { files_min: 2, ..CompactionPolicy::default() };
    let report = store.compact(&policy, NOW).await.unwrap();
    assert_eq!(report.conflicts_rejected, 1, "{report:?}");
    let values: Vec<(String, i64, f64, u64)> = rows(&store).await;
    assert_eq!(
        values,
        [("t1".to_string(), NOW, 1.0, 1), ("t1".to_string(), NOW + 1, 4.0, 2), ("t2".to_string(), NOW, 5.0, 1)],
        "the first value stays, the higher version replaces, the duplicate is one row"
    );

    let rejected = store.scan(&lodestone_store::rejected_records_table(), i64::MIN, i64::MAX).await.unwrap();
    let text = |name: &str| {
        let column = arrow::compute::cast(rejected.column_by_name(name).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
        column.as_any().downcast_ref::<arrow::array::StringArray>().unwrap().value(0).to_string()
    };
    assert_eq!(rejected.num_rows(), 1);
    assert_eq!((text("reason"), text("source")), ("version_conflict".to_string(), "store".to_string()));
    assert!(text("detail").contains("at version 1"), "{}", text("detail"));
    let payload: serde_json::Value = serde_json::from_str(&text("payload")).unwrap();
    assert_eq!(payload["dimensions"]["truck"], "t1", "{payload}");
    assert_eq!(payload["value"], 2.0, "{payload}");
}
