//! Golden-file SQL tests: every `tests/golden/NAME.sql` runs against a small fleet table in a
//! real store (Parquet files in a temporary folder), and its answer — columns and rows, or the
//! error code — must equal `tests/golden/NAME.expected`. Run with `LODESTONE_BLESS=1` to write
//! the expected files after a deliberate change, then review the diff.
//!
//! A `.sql` file may start with `-- max_rows: N` to pass a page size with the query (the golden
//! answer is the first page).

use std::path::Path;

use query_service::config::LimitsConfig;
use query_service::engine::Engine;

mod common;

use common::fleet_store;

fn answer(engine_result: Result<query_service::engine::QueryResult, query_service::engine::QueryError>) -> String {
    match engine_result {
        Ok(result) => {
            let columns: Vec<String> = result.columns.iter().map(|c| format!("{} {}", c.name, c.data_type)).collect();
            let mut out = format!("columns: {}\n", columns.join(", "));
            for row in result.rows {
                out.push_str(&serde_json::to_string(&row).unwrap());
                out.push('\n');
            }
            out
        }
        Err(error) => format!("error: {} {}: {}\n", error.status(), error.code(), error),
    }
}

#[tokio::test]
async fn golden_queries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(fleet_store(dir.path()).await, LimitsConfig { rows_max: 50, ..LimitsConfig::default() });
    // Found at run time: the binary may be reused from a checkout in another folder.
    let folder = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets it")).join("tests/golden");
    let bless = std::env::var("LODESTONE_BLESS").is_ok();
    let mut cases: Vec<_> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "sql")).collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden files in {}", folder.display());
    let mut failures = Vec::new();
    for case in &cases {
        let sql = std::fs::read_to_string(case).unwrap();
        let max_rows = sql.lines().next().and_then(|l| l.strip_prefix("-- max_rows: ")).map(|n| n.trim().parse().unwrap());
        let got = answer(engine.run(&sql, max_rows).await);
        let expected_path = case.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{got}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} golden queries differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A cross join of ten billion rows is cancelled by the query time limit within 5 s, while a
/// normal query sent at the same time still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_cross_join_is_cancelled_while_a_normal_query_answers() {
    let dir = tempfile::tempdir().unwrap();
    let limits = LimitsConfig { query_timeout_ms: 3_000, ..LimitsConfig::default() };
    let engine = std::sync::Arc::new(Engine::new(fleet_store(dir.path()).await, limits));
    let runaway = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // 100 rows to the fifth power: 10^10 rows.
            let sql = "SELECT count(*) FROM fleet.trucks a, fleet.trucks b, fleet.trucks c, fleet.trucks d, fleet.trucks e";
            (engine.run(sql, None).await, started.elapsed())
        })
    };
    // The normal query goes out once the runaway one holds the engine.
    let started = std::time::Instant::now();
    let normal = engine.run("SELECT truck, count(*) FROM fleet.trucks GROUP BY truck ORDER BY truck", None).await;
    let normal_elapsed = started.elapsed();
    let (runaway, runaway_elapsed) = runaway.await.unwrap();
    let normal = normal.expect("the normal query answers");
    assert_eq!(normal.rows, vec![vec![serde_json::json!("t1"), serde_json::json!(50)], vec![serde_json::json!("t2"), serde_json::json!(50)]]);
    assert!(normal_elapsed < std::time::Duration::from_secs(5), "the normal query took {normal_elapsed:?}");
    let error = runaway.expect_err("the cross join is cancelled");
    assert_eq!(error.code(), "query_timeout", "{error}");
    assert!(runaway_elapsed < std::time::Duration::from_secs(5), "cancelled after {runaway_elapsed:?}");
    // And its work stops: the process goes quiet (polled, in 200 ms windows, for up to 2 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let before = cpu_ticks();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let used = cpu_ticks() - before;
        if used <= 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cancelled query still uses the CPU: {used} ticks in 200 ms");
    }
}

/// CPU time of this process so far, in clock ticks (user + system, from /proc/self/stat).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
