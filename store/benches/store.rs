//! `make bench-store`: the store on TSBS-iot-style data — a truck fleet with tags, `readings`
//! (7 fields) and `diagnostics` (3 fields) every 10 s, about 1% of points missing and 1% arriving
//! out of order. A point is one field value, as TSBS and VictoriaMetrics count them.
//!
//! Prints one line per figure: `figure <name> <value> <unit>`. Scans report the median of 5 runs.

use std::collections::BTreeMap;
use std::time::Instant;

use lodestone_model::Record;
use lodestone_tsbs::{points, TruckFleet};
use lodestone_store::{CompactionPolicy, DimensionFilter, HotTier, PersistBatch, ScanRequest, Store, TableProperties, TableRef};

const TRUCKS: usize = 1_000;
const STEP_NS: i64 = 10_000_000_000;
const HOURS: i64 = 3;

/// The fleet's records in arrival order, and how many points (field values) they hold.
fn fleet(start_ns: i64) -> (Vec<Record>, u64) {
    let mut fleet = TruckFleet::new(TRUCKS, start_ns, STEP_NS, HOURS * 3600 * 1_000_000_000 / STEP_NS, 7);
    let mut records = Vec::new();
    while let Some(step) = fleet.next_step() {
        records.extend(step);
    }
    let points = records.iter().map(points).sum();
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

/// Runs `scan` 5 times (or `LODESTONE_BENCH_SCAN_RUNS`, to profile a scan); its result and the
/// median time in milliseconds.
async fn median_ms<F, Fut>(scan: F) -> (Vec<arrow::array::RecordBatch>, f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<arrow::array::RecordBatch>, lodestone_store::StoreError>>,
{
    let mut times = Vec::new();
    let mut result = Vec::new();
    let runs: usize = std::env::var("LODESTONE_BENCH_SCAN_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        result = scan().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (result, times[times.len() / 2])
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
    // Rounds of compaction, as a worker's maintenance runs them, until every file is compacted.
    let policy = CompactionPolicy { files_min: 2, fresh_age_max_ns: 0, ..CompactionPolicy::default() };
    loop {
        let report = store.compact(&policy, now_ns).await.unwrap();
        eprintln!("compaction: {report:?}");
        if report.partitions_compacted == 0 {
            break;
        }
    }
    figure("compaction_s", started.elapsed().as_secs_f64(), "s");
    let snapshot = store.snapshot().await.unwrap();
    let files = &snapshot.table(&table).unwrap().files;
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    figure("cold_bytes_per_point", bytes as f64 / points as f64, "bytes/point");
    eprintln!("cold tier: {bytes} bytes in {} files for {points} points", files.len());
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
