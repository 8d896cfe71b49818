//! `make bench-store`: the store on TSBS-iot-style data — a truck fleet with tags, `readings`
//! (7 fields) and `diagnostics` (3 fields) every 10 s, about 1% of points missing and 1% arriving
//! out of order. A point is one field value, as TSBS and VictoriaMetrics count them.
//!
//! Prints one line per figure: `figure <name> <value> <unit>`. Scans report the median of 5 runs.

use std::collections::BTreeMap;
use std::time::Instant;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{CompactionPolicy, DimensionFilter, HotTier, PersistBatch, ScanRequest, Store, TableProperties, TableRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TRUCKS: usize = 1_000;
const STEP_NS: i64 = 10_000_000_000;
const HOURS: i64 = 3;

/// One field of a truck: a clamped random walk rounded to `decimals`, as TSBS's iot use case
/// generates them (`pkg/data/usecases/iot`): its start, step range, bounds and precision.
struct Walk {
    name: &'static str,
    value: f64,
    step: (f64, f64),
    bounds: (f64, f64),
    decimals: i32,
}

impl Walk {
    fn advance(&mut self, rng: &mut StdRng) -> f64 {
        self.value = (self.value + rng.gen_range(self.step.0..=self.step.1)).clamp(self.bounds.0, self.bounds.1);
        let factor = 10f64.powi(self.decimals);
        (self.value * factor).round() / factor
    }
}

/// A truck's state: `readings` (7 fields), and `diagnostics` (fuel_state, current_load, status).
struct Truck {
    tags: Vec<Dimension>,
    readings: Vec<Walk>,
    fuel: Walk,
    load: f64,
    status: Walk,
}

impl Truck {
    fn new(index: usize, rng: &mut StdRng) -> Truck {
        let fleets = ["East", "West", "North", "South"];
        let models = ["F-150", "G-2000", "H-2"];
        let tag = |name: &str, value: String| Dimension { name: name.into(), value };
        let tags = vec![
            tag("device_version", format!("v{}.0", index % 3)),
            tag("driver", format!("Driver-{}", index % 97)),
            tag("fleet", fleets[index % 4].into()),
            tag("fuel_capacity", format!("{}", 100 + 50 * (index % 4))),
            tag("load_capacity", format!("{}", 1000 + 500 * (index % 5))),
            tag("model", models[index % 3].into()),
            tag("name", format!("truck_{index}")),
            tag("nominal_fuel_consumption", format!("{}", 10 + index % 15)),
        ];
        let walk = |name, value, step, bounds, decimals| Walk { name, value, step, bounds, decimals };
        let readings = vec![
            walk("latitude", rng.gen_range(0.0..90.0), (-0.005, 0.005), (-90.0, 90.0), 5),
            walk("longitude", rng.gen_range(0.0..180.0), (-0.005, 0.005), (-180.0, 180.0), 5),
            walk("elevation", rng.gen_range(0.0..500.0), (-10.0, 10.0), (0.0, 5000.0), 0),
            walk("velocity", 0.0, (-10.0, 10.0), (0.0, 100.0), 0),
            walk("heading", rng.gen_range(0.0..360.0), (-5.0, 5.0), (0.0, 360.0), 0),
            walk("grade", 0.0, (-5.0, 5.0), (0.0, 100.0), 0),
            walk("fuel_consumption", 25.0, (-5.0, 5.0), (0.0, 50.0), 1),
        ];
        Truck {
            tags,
            readings,
            fuel: walk("fuel_state", 1.0, (-0.001, 0.0), (0.0, 1.0), 1),
            load: rng.gen_range(0.0..5000.0f64).round(),
            status: walk("status", 0.0, (-1.0, 1.0), (0.0, 5.0), 0),
        }
    }

    fn readings(&mut self, rng: &mut StdRng) -> Vec<(String, Scalar)> {
        // Multi-measure values are kept sorted by name.
        let mut values: Vec<_> = self.readings.iter_mut().map(|w| (w.name.to_string(), Scalar::Double(w.advance(rng)))).collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values
    }

    fn diagnostics(&mut self, rng: &mut StdRng) -> Vec<(String, Scalar)> {
        let mut fuel = self.fuel.advance(rng);
        if self.fuel.value <= 0.0 {
            self.fuel.value = 1.0; // refuelled
            fuel = 1.0;
        }
        if rng.gen_bool(0.05) {
            self.load = rng.gen_range(0.0..5000.0f64).round();
        }
        let status = self.status.advance(rng) as i64;
        vec![
            ("current_load".into(), Scalar::Double(self.load)),
            ("fuel_state".into(), Scalar::Double(fuel)),
            ("status".into(), Scalar::Bigint(status)),
        ]
    }
}

/// The fleet's records in arrival order, and how many points (field values) they hold.
fn fleet(start_ns: i64) -> (Vec<Record>, u64) {
    let mut rng = StdRng::seed_from_u64(7);
    let steps = HOURS * 3600 * 1_000_000_000 / STEP_NS;
    let mut trucks: Vec<Truck> = (0..TRUCKS).map(|i| Truck::new(i, &mut rng)).collect();
    let mut records = Vec::with_capacity(TRUCKS * steps as usize * 2);
    let mut late = Vec::new();
    let mut points = 0;
    for step in 0..steps {
        let time_ns = start_ns + step * STEP_NS;
        for truck in trucks.iter_mut() {
            let readings = truck.readings(&mut rng);
            let diagnostics = truck.diagnostics(&mut rng);
            for (measure, values) in [("readings", readings), ("diagnostics", diagnostics)] {
                if rng.gen_bool(0.01) {
                    continue; // missing
                }
                points += values.len() as u64;
                let record = Record { dimensions: truck.tags.clone(), measure_name: measure.into(), value: MeasureValue::Multi(values), time_ns, version: 1 };
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

/// Compressed bytes of each column over `files`, largest first: where the bytes per point go.
async fn bytes_by_column(store: &Store, files: &[lodestone_store::FileMeta]) -> Vec<(String, u64)> {
    use object_store::ObjectStoreExt;
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    for file in files {
        let bytes = store.object_store().get(&object_store::path::Path::from(file.path.clone())).await.unwrap().bytes().await.unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
        for group in parquet::file::reader::FileReader::metadata(&reader).row_groups() {
            for column in group.columns() {
                *sizes.entry(column.column_path().string()).or_default() += column.compressed_size() as u64;
            }
        }
    }
    let mut sizes: Vec<_> = sizes.into_iter().collect();
    sizes.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    sizes
}

/// Runs `scan` 5 times; its result and the median time in milliseconds.
async fn median_ms<F, Fut>(scan: F) -> (Vec<arrow::array::RecordBatch>, f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<arrow::array::RecordBatch>, lodestone_store::StoreError>>,
{
    let mut times = Vec::new();
    let mut result = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        result = scan().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (result, times[2])
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

    // Write, as an ingest worker does: records go into the hot tier, which is drained every
    // 100,000 records and persisted by a second task while the next records arrive.
    let started = Instant::now();
    let (drained, mut to_persist) = tokio::sync::mpsc::channel::<PersistBatch>(1);
    let persister = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut busy_s = 0.0;
            while let Some(batch) = to_persist.recv().await {
                let phase = Instant::now();
                store.persist(&batch, &BTreeMap::new()).await.unwrap();
                busy_s += phase.elapsed().as_secs_f64();
            }
            busy_s
        })
    };
    let mut hot = HotTier::new(2_000_000);
    let mut hot_s = 0.0;
    let mut arriving = records.into_iter();
    for index in 0.. {
        let chunk: Vec<Record> = arriving.by_ref().take(100_000).collect();
        if chunk.is_empty() {
            break;
        }
        let phase = Instant::now();
        for record in chunk {
            hot.write(&table, &entry.properties, &entry.schema, record, now_ns, index).unwrap();
        }
        hot_s += phase.elapsed().as_secs_f64();
        drained.send(hot.drain()).await.unwrap();
    }
    drop(drained);
    let persist_s = persister.await.unwrap();
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
    eprintln!("bytes per column: {:?}", bytes_by_column(&store, files).await);
    let rows = |batches: &[arrow::array::RecordBatch]| batches.iter().map(|b| b.num_rows()).sum::<usize>();

    // Window scan: one hour in the middle, every truck, every column.
    let (from, to) = (start_ns + 3_600_000_000_000, start_ns + 2 * 3_600_000_000_000);
    let request = ScanRequest::time_range(from, to);
    let (window, window_ms) = median_ms(|| store.scan_table(&table, &request)).await;
    figure("window_scan_ms", window_ms, "ms");
    eprintln!("window scan: {} records", rows(&window));

    // The same window, the columns a dashboard panel reads.
    let columns = ["name", "measure_name", "time", "velocity", "fuel_consumption"];
    let request = ScanRequest { projection: Some(columns.iter().map(|c| c.to_string()).collect()), ..ScanRequest::time_range(from, to) };
    let (projected, projected_ms) = median_ms(|| store.scan_table(&table, &request)).await;
    figure("window_scan_5_columns_ms", projected_ms, "ms");
    assert_eq!(rows(&projected), rows(&window));

    // One truck over the whole run: pruned by the statistics of the `name` dimension.
    let filter = DimensionFilter { name: "name".into(), values: vec!["truck_42".into()] };
    let request = ScanRequest { dimensions: vec![filter], ..ScanRequest::time_range(i64::MIN, i64::MAX) };
    let (truck, truck_ms) = median_ms(|| store.scan_table(&table, &request)).await;
    figure("one_truck_scan_ms", truck_ms, "ms");
    eprintln!("one truck: {} records", rows(&truck));

    let started = Instant::now();
    let all = store.scan_table(&table, &ScanRequest::time_range(i64::MIN, i64::MAX)).await.unwrap();
    let full_s = started.elapsed().as_secs_f64();
    assert_eq!(rows(&all) as u64, files.iter().map(|f| f.rows).sum::<u64>());
    figure("full_scan_points_per_sec", points as f64 / full_s, "points/s");
}
