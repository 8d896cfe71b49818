//! A runaway query is cancelled by the limits, stops working, and does not hold up others. In a
//! file of its own: it measures this process's CPU time, which no other test may share.

use query_service::config::LimitsConfig;
use query_service::engine::Engine;

mod common;

use common::fleet_store;

/// A cross join of ten billion rows is cancelled by the query time limit within 5 s, while a
/// normal query sent at the same time still answers. The engine runs as the binary runs it: plans
/// on an executor runtime of their own, requests on another; the cancelled task stops there too.
#[test]
fn a_runaway_cross_join_is_cancelled_while_a_normal_query_answers() {
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let executor = runtime();
    runtime().block_on(runaway_and_normal(executor.handle().clone()));
}

async fn runaway_and_normal(executor: tokio::runtime::Handle) {
    let dir = tempfile::tempdir().unwrap();
    let limits = LimitsConfig { query_timeout_ms: 3_000, ..LimitsConfig::default() };
    let engine = std::sync::Arc::new(Engine::new(fleet_store(dir.path()).await, limits).with_executor(executor));
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
