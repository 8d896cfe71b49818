//! `make bench-store`: the store on TSBS-iot-style data — a truck fleet with tags, `readings`
//! (7 fields) and `diagnostics` (3 fields) every 10 s, about 1% of points missing and 1% arriving
//! out of order. A point is one field value, as TSBS and VictoriaMetrics count them.
//!
//! Prints one line per figure: `figure <name> <value> <unit>`.

use std::collections::BTreeMap;
use std::time::Instant;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{CompactionPolicy, HotTier, Store, TableProperties, TableRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TRUCKS: usize = 1_000;
const STEP_NS: i64 = 10_000_000_000;
const HOURS: i64 = 3;
const READINGS: [&str; 7] = ["latitude", "longitude", "elevation", "velocity", "heading", "grade", "fuel_consumption"];
const DIAGNOSTICS: [&str; 3] = ["current_load", "fuel_state", "status"];

fn truck_tags(truck: usize) -> Vec<Dimension> {
    let fleets = ["East", "West", "North", "South"];
    let models = ["F-150", "G-2000", "H-2"];
    let tag = |name: &str, value: String| Dimension { name: name.into(), value };
    vec![
        tag("device_version", format!("v{}.0", truck % 3)),
        tag("driver", format!("Driver-{}", truck % 97)),
        tag("fleet", fleets[truck % 4].into()),
        tag("model", models[truck % 3].into()),
        tag("name", format!("truck_{truck}")),
    ]
}

/// The fleet's records in arrival order, and how many points they hold.
fn fleet(start_ns: i64) -> (Vec<Record>, u64) {
    let mut rng = StdRng::seed_from_u64(7);
    let steps = HOURS * 3600 * 1_000_000_000 / STEP_NS;
    let mut state: Vec<[f64; 10]> = (0..TRUCKS).map(|_| [0.0; 10]).collect();
    let mut records = Vec::with_capacity(TRUCKS * steps as usize * 2);
    let mut late = Vec::new();
    let mut points = 0;
    for step in 0..steps {
        let time_ns = start_ns + step * STEP_NS;
        for (truck, walk) in state.iter_mut().enumerate() {
            for value in walk.iter_mut() {
                *value = (*value + rng.gen_range(-1.0..1.0f64)).clamp(-1000.0, 1000.0);
            }
            for (measure, names, offset) in [("readings", &READINGS[..], 0), ("diagnostics", &DIAGNOSTICS[..], 7)] {
                if rng.gen_bool(0.01) {
                    continue; // missing
                }
                let values = names.iter().enumerate().map(|(i, n)| (n.to_string(), Scalar::Double((walk[offset + i] * 100.0).round() / 100.0)));
                let mut values: Vec<_> = values.collect();
                values.sort_by(|a, b| a.0.cmp(&b.0));
                points += values.len() as u64;
                let record = Record { dimensions: truck_tags(truck), measure_name: measure.into(), value: MeasureValue::Multi(values), time_ns, version: 1 };
                if rng.gen_bool(0.01) {
                    late.push(record); // out of order: arrives a few steps later
                } else {
                    records.push(record);
                }
            }
        }
        if step % 5 == 4 {
            records.append(&mut late);
        }
    }
    records.append(&mut late);
    (records, points)
}

fn figure(name: &str, value: f64, unit: &str) {
    println!("figure {name} {value:.3} {unit}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    let table = TableRef { database: "benchmark".into(), table: "trucks".into() };
    let properties = TableProperties { magnetic_store_writes: true, ..TableProperties::default() };
    let snapshot = store.ensure_table(&table, properties).await.unwrap();
    let entry = snapshot.table(&table).unwrap().clone();
    let now_ns = 1_700_000_000_000_000_000 + HOURS * 3_600_000_000_000;
    let start_ns = now_ns - HOURS * 3_600_000_000_000;
    let (records, points) = fleet(start_ns);
    eprintln!("{} records, {points} points, {TRUCKS} trucks, {HOURS} h at 10 s", records.len());

    // Write: the hot tier (upsert checks) and a persist every 100,000 records, as a worker does.
    let started = Instant::now();
    let mut hot = HotTier::new(2_000_000);
    let (mut hot_s, mut persist_s) = (0.0, 0.0);
    for (index, chunk) in records.chunks(100_000).enumerate() {
        let phase = Instant::now();
        for record in chunk {
            hot.write(&table, &entry.properties, &entry.schema, record.clone(), now_ns, index).unwrap();
        }
        hot_s += phase.elapsed().as_secs_f64();
        let phase = Instant::now();
        store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
        persist_s += phase.elapsed().as_secs_f64();
    }
    let write_s = started.elapsed().as_secs_f64();
    figure("store_write_points_per_sec", points as f64 / write_s, "points/s");
    // The two halves of a write, for finding where the time goes.
    figure("hot_tier_write_points_per_sec", points as f64 / hot_s, "points/s");
    figure("persist_points_per_sec", points as f64 / persist_s, "points/s");

    let started = Instant::now();
    let policy = CompactionPolicy { files_min: 2, input_bytes_max: u64::MAX, ..CompactionPolicy::default() };
    let report = store.compact(&policy, now_ns).await.unwrap();
    figure("compaction_s", started.elapsed().as_secs_f64(), "s");
    eprintln!("compaction: {report:?}");
    let snapshot = store.snapshot().await.unwrap();
    let files = &snapshot.table(&table).unwrap().files;
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    figure("cold_bytes_per_point", bytes as f64 / points as f64, "bytes/point");

    // Window scan: one hour in the middle, every truck, all fields.
    let (from, to) = (start_ns + 3_600_000_000_000, start_ns + 2 * 3_600_000_000_000);
    let started = Instant::now();
    let mut rows = 0;
    for file in files.iter().filter(|f| f.max_time_ns >= from && f.min_time_ns < to) {
        for batch in store.read_file(file).await.unwrap() {
            let time = arrow::compute::cast(batch.column_by_name("time").unwrap(), &arrow::datatypes::DataType::Int64).unwrap();
            let time = time.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            let ge = arrow::compute::kernels::cmp::gt_eq(time, &arrow::array::Int64Array::new_scalar(from)).unwrap();
            let lt = arrow::compute::kernels::cmp::lt(time, &arrow::array::Int64Array::new_scalar(to)).unwrap();
            let mask = arrow::compute::and(&ge, &lt).unwrap();
            rows += arrow::compute::filter_record_batch(&batch, &mask).unwrap().num_rows();
        }
    }
    figure("window_scan_ms", started.elapsed().as_secs_f64() * 1000.0, "ms");
    eprintln!("window scan: {rows} records");

    let started = Instant::now();
    let mut scanned = 0;
    for file in files {
        scanned += store.read_file(file).await.unwrap().iter().map(|b| b.num_rows()).sum::<usize>();
    }
    let full_s = started.elapsed().as_secs_f64();
    assert_eq!(scanned as u64, files.iter().map(|f| f.rows).sum::<u64>());
    figure("full_scan_points_per_sec", points as f64 / full_s, "points/s");
}
