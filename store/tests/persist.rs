//! The cold tier and the catalog against real Parquet files in a temporary folder.

use std::collections::BTreeMap;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{HotTier, Store, TableProperties, TableRef};

const NOW: i64 = 1_700_000_000_000_000_000;

fn table() -> TableRef {
    TableRef { database: "fleet".into(), table: "trucks".into() }
}

fn reading(truck: &str, time_ns: i64, value: MeasureValue) -> Record {
    Record {
        dimensions: vec![Dimension { name: "truck".into(), value: truck.into() }],
        measure_name: "load".into(),
        value,
        time_ns,
        version: 1,
    }
}

#[tokio::test]
async fn persisted_rows_read_back_from_parquet_sorted_by_series_then_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    let snapshot = store.ensure_table(&table(), TableProperties::default()).await.unwrap();
    let entry = snapshot.table(&table()).unwrap().clone();
    let mut hot = HotTier::new(1000);
    for (truck, offset, value) in [("b", 2, 1.5), ("a", 1, 2.5), ("a", 0, 3.5)] {
        let record = reading(truck, NOW + offset, MeasureValue::Single(Scalar::Double(value)));
        hot.write(&table(), &entry.properties, &entry.schema, record, NOW, 0).unwrap();
    }
    let multi = MeasureValue::Multi(vec![("lat".into(), Scalar::Double(1.0)), ("moving".into(), Scalar::Boolean(true))]);
    let mut record = reading("c", NOW, multi);
    record.measure_name = "position".into();
    hot.write(&table(), &entry.properties, &entry.schema, record, NOW, 0).unwrap();

    let watermarks = BTreeMap::from([("input/0".to_string(), 42)]);
    let committed = store.persist(&hot.drain(), &watermarks).await.unwrap();
    assert_eq!(committed.watermarks["input/0"], 42);
    let files = &committed.table(&table()).unwrap().files;
    assert_eq!(files.len(), 1);
    assert_eq!((files[0].rows, files[0].min_time_ns, files[0].max_time_ns), (4, NOW, NOW + 2));

    let batches = store.read_file(&files[0]).await.unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let names: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(
        names,
        [
            "truck", "measure_name", "time", "measure_value::double", "measure_value::bigint", "measure_value::varchar",
            "measure_value::boolean", "measure_value::timestamp", "lat", "moving", "version"
        ]
    );
    let trucks = arrow::util::display::ArrayFormatter::try_new(batch.column(0).as_ref(), &Default::default()).unwrap();
    let order: Vec<String> = (0..batch.num_rows()).map(|i| trucks.value(i).to_string()).collect();
    assert_eq!(order, ["a", "a", "b", "c"]);
    let doubles = batch.column(3).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
    assert_eq!(doubles.iter().collect::<Vec<_>>(), [Some(3.5), Some(2.5), Some(1.5), None]);
}

#[tokio::test]
async fn concurrent_commits_never_lose_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    let writer = |name: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..30u64 {
                let key = format!("{name}/{i}");
                store
                    .commit(|snapshot| {
                        snapshot.watermarks.insert(key.clone(), i);
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        })
    };
    let (a, b) = (writer("a"), writer("b"));
    a.await.unwrap();
    b.await.unwrap();
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.version, 60);
    assert_eq!(snapshot.watermarks.len(), 60);
}

#[tokio::test]
async fn table_management_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    store.create_database("fleet").await.unwrap();
    assert!(store.create_database("fleet").await.is_err());
    assert!(store.create_database("x").await.is_err());
    let bad = TableProperties { memory_retention_hours: 0, ..TableProperties::default() };
    assert!(store.create_table(&table(), bad).await.is_err());
    let at_bound = TableProperties { memory_retention_hours: 8766, magnetic_retention_days: 73_000, magnetic_store_writes: true };
    store.create_table(&table(), at_bound).await.unwrap();
    assert!(store.drop_database("fleet").await.is_err());
    store.drop_table(&table()).await.unwrap();
    store.drop_database("fleet").await.unwrap();
    assert!(store.snapshot().await.unwrap().databases.is_empty());
}
