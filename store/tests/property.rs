//! Property: any interleaving of writes, duplicate deliveries, persists and compactions scans
//! back exactly what Timestream's upsert rule says — per key, the first accepted value unless a
//! higher version replaced it. 200 seeded random histories against a plain model.

use std::collections::BTreeMap;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{decide, CompactionPolicy, DimensionFilter, HotTier, ScanRequest, Store, TableProperties, TableRef, UpsertDecision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NOW: i64 = 1_700_000_000_000_000_000;
const HISTORIES: u64 = 200;

fn table() -> TableRef {
    TableRef { database: "prop".into(), table: "table1".into() }
}

type Key = (String, i64);

fn record(key: &Key, value: i64, version: u64) -> Record {
    Record {
        dimensions: vec![Dimension { name: "device".into(), value: key.0.clone() }],
        measure_name: "m".into(),
        value: MeasureValue::Single(Scalar::Bigint(value)),
        time_ns: key.1,
        version,
    }
}

/// What the upsert rule says the table holds after `writes`, in order.
fn model(writes: &[(Key, i64, u64)]) -> BTreeMap<Key, (i64, u64)> {
    let mut state: BTreeMap<Key, (i64, u64)> = BTreeMap::new();
    for (key, value, version) in writes {
        let existing = state.get(key).map(|(v, ver)| (MeasureValue::Single(Scalar::Bigint(*v)), *ver));
        let new = MeasureValue::Single(Scalar::Bigint(*value));
        match decide(existing.as_ref().map(|(v, ver)| (v, *ver)), (&new, *version)) {
            UpsertDecision::Insert | UpsertDecision::Replace => {
                state.insert(key.clone(), (*value, *version));
            }
            UpsertDecision::NoOp | UpsertDecision::Reject { .. } => {}
        }
    }
    state
}

async fn scanned(store: &Store) -> BTreeMap<Key, (i64, u64)> {
    keyed(&[store.scan(&table(), i64::MIN, i64::MAX).await.unwrap()])
}

/// The rows of `batches` by key; each key must come once.
fn keyed(batches: &[arrow::array::RecordBatch]) -> BTreeMap<Key, (i64, u64)> {
    let mut out = BTreeMap::new();
    for batch in batches {
        for (key, value) in keyed_batch(batch) {
            assert!(out.insert(key, value).is_none(), "a key scanned twice");
        }
    }
    out
}

fn keyed_batch(batch: &arrow::array::RecordBatch) -> BTreeMap<Key, (i64, u64)> {
    if batch.num_rows() == 0 {
        return BTreeMap::new();
    }
    let column = |name| batch.column_by_name(name).unwrap().clone();
    let devices = arrow::compute::cast(&column("device"), &arrow::datatypes::DataType::Utf8).unwrap();
    let devices = devices.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    let times = column("time");
    let times = times.as_any().downcast_ref::<arrow::array::TimestampNanosecondArray>().unwrap();
    let values = column("measure_value::bigint");
    let values = values.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
    let versions = column("version");
    let versions = versions.as_any().downcast_ref::<arrow::array::UInt64Array>().unwrap();
    let mut out = BTreeMap::new();
    for i in 0..batch.num_rows() {
        let previous = out.insert((devices.value(i).to_string(), times.value(i)), (values.value(i), versions.value(i)));
        assert!(previous.is_none(), "a key scanned twice");
    }
    out
}

#[tokio::test]
async fn every_interleaving_scans_back_what_the_upsert_rule_says() {
    for seed in 0..HISTORIES {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path()).unwrap();
        let snapshot = store.ensure_table(&table(), TableProperties::default()).await.unwrap();
        let entry = snapshot.table(&table()).unwrap().clone();
        let policy = CompactionPolicy { files_min: 2, file_span_ns: 2, ..CompactionPolicy::default() };
        let mut hot = HotTier::new(1_000);
        let mut accepted: Vec<(Key, i64, u64)> = Vec::new();
        let mut sent: Vec<(Key, i64, u64)> = Vec::new();
        for _ in 0..rng.gen_range(1..60) {
            match rng.gen_range(0..10) {
                0..=5 => {
                    let key = (format!("d{}", rng.gen_range(0..3)), NOW + rng.gen_range(0..4));
                    let write = (key, rng.gen_range(0..3), rng.gen_range(1..4));
                    sent.push(write.clone());
                    if hot.write(&table(), &entry.properties, &entry.schema, record(&write.0, write.1, write.2), NOW, 0).is_ok() {
                        accepted.push(write);
                    }
                }
                6 if !sent.is_empty() => {
                    // A duplicate delivery of something sent before (at-least-once upstream).
                    let write = sent[rng.gen_range(0..sent.len())].clone();
                    if hot.write(&table(), &entry.properties, &entry.schema, record(&write.0, write.1, write.2), NOW, 0).is_ok() {
                        accepted.push(write);
                    }
                }
                7 | 8 => {
                    store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
                }
                _ => {
                    store.compact(&policy, NOW).await.unwrap();
                }
            }
        }
        store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
        // Every write the hot tier refused must be one the model refuses too.
        assert_eq!(model(&accepted), model(&sent), "seed {seed}: the hot tier refused a write the rule accepts");
        assert_eq!(scanned(&store).await, model(&sent), "seed {seed}");

        // A scan with a time range, a dimension filter and a projection in another order sees
        // exactly the model's rows that match.
        let (from, to) = (NOW + rng.gen_range(0..3), NOW + rng.gen_range(1..5));
        let devices: Vec<String> = (0..3).map(|d| format!("d{d}")).filter(|_| rng.gen_bool(0.5)).collect();
        let request = ScanRequest {
            from_ns: from,
            to_ns: to,
            dimensions: vec![DimensionFilter { name: "device".into(), values: devices.clone() }],
            projection: Some(["version", "time", "measure_value::bigint", "device"].map(String::from).to_vec()),
        };
        let batches = store.scan_table(&table(), &request).await.unwrap();
        let expected: BTreeMap<Key, (i64, u64)> =
            model(&sent).into_iter().filter(|((device, time), _)| devices.contains(device) && (from..to).contains(time)).collect();
        assert_eq!(keyed(&batches), expected, "seed {seed}: filtered scan of {devices:?} over [{from}, {to})");
    }
}
