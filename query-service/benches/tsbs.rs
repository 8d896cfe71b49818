//! `make bench-query`: TSBS's iot queries on TSBS-iot-style data (1,000 trucks, 3 days at 10 s),
//! in Lodestone SQL through the query service's REST API and in DuckDB (the Python wheel) over
//! the same Parquet files, in the same run. The answers must match.
//!
//! Prints `figure query_<name>_ms <v> ms` and `figure duckdb_<name>_ms <v> ms` per query (medians
//! of 3), and the load and compaction figures. `LODESTONE_BENCH_DAYS` shortens the data for a
//! quick look; `DUCKDB_PYTHON` names the python with the duckdb wheel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lodestone_tsbs::{points, TruckFleet};
use lodestone_store::{CompactionPolicy, HotTier, PersistBatch, Store, TableProperties, TableRef};
use query_service::config::LimitsConfig;
use query_service::engine::Engine;
use serde_json::{json, Value};

const TRUCKS: usize = 1_000;
const STEP_NS: i64 = 10_000_000_000;
const DAY_NS: i64 = 86_400 * 1_000_000_000;
/// Midnight, so that days are whole.
const START_NS: i64 = 1_699_920_000 * 1_000_000_000;
const FLEET: &str = "South";

/// A query: its name, Lodestone's SQL, DuckDB's SQL.
struct Query {
    name: &'static str,
    lodestone: String,
    duckdb: String,
}

/// Writes a query once with placeholders filled per engine: `{T}` the table, `{BIN10}` a
/// 10-minute bin of time, `{DAY}` a day as text, `{FROM}`/`{TO}` a time range ending at the end
/// of the data and lasting `window_ns`.
fn query(name: &'static str, sql: &str, end_ns: i64, window_ns: i64) -> Query {
    let (from, to) = ((end_ns - window_ns) / 1_000_000_000, end_ns / 1_000_000_000);
    let fill = |table: &str, bin10: &str, day: &str, from: String, to: String| {
        sql.replace("{T}", table).replace("{BIN10}", bin10).replace("{DAY}", day).replace("{FROM}", &from).replace("{TO}", &to)
    };
    Query {
        name,
        lodestone: fill(
            "benchmark.trucks",
            "bin(time, 10m)",
            "to_char(day, '%Y-%m-%d')",
            format!("from_unixtime({from})"),
            format!("from_unixtime({to})"),
        ),
        duckdb: fill(
            "trucks",
            "time_bucket(INTERVAL 10 MINUTE, time)",
            "strftime(day, '%Y-%m-%d')",
            format!("make_timestamp({from}000000)"),
            format!("make_timestamp({to}000000)"),
        ),
    }
}

fn queries(end_ns: i64) -> Vec<Query> {
    let minute = 60 * 1_000_000_000;
    vec![
        query(
            "last-loc",
            &format!("SELECT name, driver, max_by(latitude, time) AS latitude, max_by(longitude, time) AS longitude FROM {{T}} \
              WHERE measure_name = 'readings' AND fleet = '{FLEET}' GROUP BY name, driver ORDER BY name"),
            end_ns,
            0,
        ),
        query(
            "low-fuel",
            &format!("SELECT name, driver, fuel_state FROM (SELECT name, driver, max_by(fuel_state, time) AS fuel_state FROM {{T}} \
              WHERE measure_name = 'diagnostics' AND fleet = '{FLEET}' GROUP BY name, driver) s WHERE fuel_state < 0.1 ORDER BY name"),
            end_ns,
            0,
        ),
        query(
            "high-load",
            &format!("SELECT name, driver, current_load FROM (SELECT name, driver, load_capacity, max_by(current_load, time) AS current_load \
              FROM {{T}} WHERE measure_name = 'diagnostics' AND fleet = '{FLEET}' GROUP BY name, driver, load_capacity) s \
              WHERE current_load / CAST(load_capacity AS DOUBLE) > 0.9 ORDER BY name"),
            end_ns,
            0,
        ),
        query(
            "stationary-trucks",
            &format!("SELECT name, driver FROM {{T}} WHERE measure_name = 'readings' AND fleet = '{FLEET}' \
              AND time >= {{FROM}} AND time < {{TO}} GROUP BY name, driver HAVING avg(velocity) < 1 ORDER BY name"),
            end_ns,
            10 * minute,
        ),
        // Driving more than 22 ten-minute periods of the last 4 hours (resting 5 minutes an hour),
        // and more than 60 of the last 24 (resting 35), as TSBS counts them.
        driving_sessions("long-driving-sessions", 22, end_ns, 240 * minute),
        driving_sessions("long-daily-sessions", 60, end_ns, 1440 * minute),
        query(
            "avg-load",
            "SELECT fleet, model, load_capacity, avg(avg_load / CAST(load_capacity AS DOUBLE)) AS avg_load_percentage FROM \
             (SELECT fleet, model, load_capacity, name, avg(current_load) AS avg_load FROM {T} WHERE measure_name = 'diagnostics' \
             GROUP BY fleet, model, load_capacity, name) s GROUP BY fleet, model, load_capacity ORDER BY fleet, model, load_capacity",
            end_ns,
            0,
        ),
        query(
            "daily-activity",
            "SELECT fleet, model, {DAY} AS day, CAST(sum(ten_mins) AS DOUBLE) / 144 AS daily_activity FROM \
             (SELECT fleet, model, name, date_trunc('day', time) AS day, {BIN10} AS ten, count(*) AS ten_mins FROM {T} \
             WHERE measure_name = 'diagnostics' GROUP BY fleet, model, name, date_trunc('day', time), {BIN10} HAVING avg(status) < 1) s \
             GROUP BY fleet, model, day ORDER BY day, fleet, model",
            end_ns,
            0,
        ),
        query(
            "breakdown-frequency",
            "WITH b AS (SELECT model, name, {BIN10} AS ten, avg(CASE WHEN status = 0 THEN 1.0 ELSE 0.0 END) >= 0.5 AS broken FROM {T} \
             WHERE measure_name = 'diagnostics' GROUP BY model, name, {BIN10}), \
             t AS (SELECT model, broken, lead(broken) OVER (PARTITION BY name ORDER BY ten) AS next_broken FROM b) \
             SELECT model, count(*) AS breakdowns FROM t WHERE NOT broken AND next_broken GROUP BY model ORDER BY model",
            end_ns,
            0,
        ),
    ]
}

/// Trucks of the fleet with more than `periods` ten-minute periods of driving (average velocity
/// above 1) in the window.
fn driving_sessions(name: &'static str, periods: u32, end_ns: i64, window_ns: i64) -> Query {
    let sql = format!(
        "SELECT name, driver FROM (SELECT name, driver, {{BIN10}} AS ten FROM {{T}} WHERE measure_name = 'readings' \
         AND fleet = '{FLEET}' AND time >= {{FROM}} AND time < {{TO}} GROUP BY name, driver, {{BIN10}} HAVING avg(velocity) > 1) s \
         GROUP BY name, driver HAVING count(*) > {periods} ORDER BY name"
    );
    query(name, &sql, end_ns, window_ns)
}

fn figure(name: &str, value: f64, unit: &str) {
    println!("figure {name} {value:.3} {unit}");
}

/// Loads the fleet into `store`, as an ingest worker does, and compacts it; returns the points.
async fn load(store: &Store, table: &TableRef, steps: i64, end_ns: i64) -> u64 {
    let snapshot = store.ensure_table(table, TableProperties { magnetic_store_writes: true, ..Default::default() }).await.unwrap();
    let entry = snapshot.table(table).unwrap().clone();
    let started = Instant::now();
    let (drained, mut to_persist) = tokio::sync::mpsc::channel::<PersistBatch>(1);
    let persister = {
        let store = store.clone();
        tokio::spawn(async move {
            while let Some(batch) = to_persist.recv().await {
                store.persist(&batch, &BTreeMap::new()).await.unwrap();
            }
        })
    };
    let mut fleet = TruckFleet::new(TRUCKS, START_NS, STEP_NS, steps, 7);
    let mut hot = HotTier::new(2_000_000);
    let mut points_total = 0;
    let mut step = 0;
    while let Some(records) = fleet.next_step() {
        for record in records {
            points_total += points(&record);
            hot.write(table, &entry.properties, &entry.schema, record, end_ns, 0).unwrap();
        }
        step += 1;
        if step % 200 == 0 {
            drained.send(hot.drain()).await.unwrap();
        }
    }
    drained.send(hot.drain()).await.unwrap();
    drop(drained);
    persister.await.unwrap();
    figure("load_points_per_sec", points_total as f64 / started.elapsed().as_secs_f64(), "points/s");
    let started = Instant::now();
    let policy = CompactionPolicy { files_min: 2, fresh_age_max_ns: 0, ..CompactionPolicy::default() };
    while store.compact(&policy, end_ns).await.unwrap().partitions_compacted > 0 {}
    figure("compaction_s", started.elapsed().as_secs_f64(), "s");
    points_total
}

/// Numbers to 9 significant digits, so that both engines' doubles compare.
fn normalized(rows: &[Value]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| match v {
                    Value::Number(n) => format!("{:.9e}", n.as_f64().unwrap()),
                    Value::Bool(b) => b.to_string(),
                    Value::String(s) => s.clone(),
                    Value::Null => "null".into(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect()
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let days: i64 = std::env::var("LODESTONE_BENCH_DAYS").ok().and_then(|d| d.parse().ok()).unwrap_or(3);
    let steps = days * DAY_NS / STEP_NS;
    let end_ns = START_NS + days * DAY_NS;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(dir.path()).unwrap();
    let table = TableRef { database: "benchmark".into(), table: "trucks".into() };
    let points = load(&store, &table, steps, end_ns).await;
    eprintln!("{TRUCKS} trucks, {days} days at 10 s: {points} points");

    let engine = Arc::new(Engine::new(store.clone(), LimitsConfig { query_timeout_ms: 600_000, ..LimitsConfig::default() }));
    // Over HTTPS with a token, as every client of the service is served.
    let certs = tempfile::tempdir().unwrap();
    let credentials = lodestone_admin::Credentials::create(certs.path()).unwrap();
    let (_stop, shutdown) = lodestone_kit::shutdown::shutdown_channel();
    let router = query_service::api::router(engine);
    let server = lodestone_kit::http::serve_service("127.0.0.1:0", router, &credentials.tls(), &credentials.auth(), shutdown).await.unwrap();
    let url = format!("https://{}/v1/query", server.addr());
    let http = lodestone_kit::http::client_with_token(Some(credentials.client_tls()), &credentials.admin_bearer).build().unwrap();

    let queries = queries(end_ns);
    let mut lodestone: BTreeMap<&str, (f64, Value)> = BTreeMap::new();
    for query in &queries {
        let mut times = Vec::new();
        let mut answer = Value::Null;
        for _ in 0..3 {
            let started = Instant::now();
            answer = http.post(&url).json(&json!({ "sql": query.lodestone })).send().await.unwrap().json().await.unwrap();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        assert!(answer.get("rows").is_some(), "{}: {answer}", query.name);
        times.sort_by(f64::total_cmp);
        lodestone.insert(query.name, (times[1], answer["rows"].clone()));
    }

    // DuckDB over the same files.
    let snapshot = store.snapshot().await.unwrap();
    let files: Vec<String> =
        snapshot.table(&table).unwrap().files.iter().map(|f| dir.path().join(&f.path).display().to_string()).collect();
    let job = json!({
        "files": files,
        "queries": queries.iter().map(|q| json!({"name": q.name, "sql": q.duckdb})).collect::<Vec<_>>(),
    });
    let job_path = dir.path().join("duckdb-job.json");
    std::fs::write(&job_path, job.to_string()).unwrap();
    let python = std::env::var("DUCKDB_PYTHON").unwrap_or_else(|_| "/var/cache/lodestone/duckdb-venv/bin/python".into());
    let script = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("benches/tsbs_duckdb.py");
    let output = std::process::Command::new(&python).arg(&script).arg(&job_path).output().expect("python with duckdb (scripts/ensure-duckdb.sh)");
    assert!(output.status.success(), "duckdb: {}", String::from_utf8_lossy(&output.stderr));
    let duckdb: Value = serde_json::from_slice(&output.stdout).unwrap();

    let mut mismatches = Vec::new();
    for query in &queries {
        let (ms, rows) = &lodestone[query.name];
        let theirs = &duckdb[query.name];
        figure(&format!("query_{}_ms", query.name.replace('-', "_")), *ms, "ms");
        figure(&format!("duckdb_{}_ms", query.name.replace('-', "_")), theirs["ms"].as_f64().unwrap(), "ms");
        let (ours, theirs) = (normalized(rows.as_array().unwrap()), normalized(theirs["rows"].as_array().unwrap()));
        eprintln!("{}: {} rows", query.name, ours.len());
        if ours != theirs {
            mismatches.push(format!("{}: Lodestone {} rows, DuckDB {} rows; first differing: {:?} vs {:?}", query.name, ours.len(), theirs.len(),
                ours.iter().zip(&theirs).find(|(a, b)| a != b).map(|(a, _)| a), ours.iter().zip(&theirs).find(|(a, b)| a != b).map(|(_, b)| b)));
        }
    }
    assert!(mismatches.is_empty(), "answers differ:\n{}", mismatches.join("\n"));
    eprintln!("all {} answers match DuckDB's", queries.len());
}
