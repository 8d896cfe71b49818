//! Golden-file SQL tests: every `tests/golden/NAME.sql` runs against a small fleet table in a
//! real store (Parquet files in a temporary folder), and its answer — columns and rows, or the
//! error code — must equal `tests/golden/NAME.expected`. Run with `LODESTONE_BLESS=1` to write
//! the expected files after a deliberate change, then review the diff.
//!
//! A `.sql` file may start with `-- max_rows: N` to pass a page size with the query (the golden
//! answer is the first page), and with `-- limit: KEY=VALUE` lines to run it under other limits
//! (`query_timeout_ms`, `query_memory_bytes_max`, `rows_max`, `sql_bytes_max`,
//! `sql_operators_max`, `response_bytes_max`).

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
        let header = || sql.lines().take_while(|l| l.starts_with("--"));
        let max_rows = header().find_map(|l| l.strip_prefix("-- max_rows: ")).map(|n| n.trim().parse().unwrap());
        let mut limits = LimitsConfig { rows_max: 50, ..LimitsConfig::default() };
        for (key, value) in header().filter_map(|l| l.strip_prefix("-- limit: ")?.split_once('=')) {
            let value: usize = value.trim().parse().unwrap();
            match key.trim() {
                "query_timeout_ms" => limits.query_timeout_ms = value as u64,
                "query_memory_bytes_max" => limits.query_memory_bytes_max = value,
                "rows_max" => limits.rows_max = value,
                "sql_bytes_max" => limits.sql_bytes_max = value,
                "sql_operators_max" => limits.sql_operators_max = value,
                "response_bytes_max" => limits.response_bytes_max = value,
                other => panic!("{}: unknown limit {other}", case.display()),
            }
        }
        let got = if limits == (LimitsConfig { rows_max: 50, ..LimitsConfig::default() }) {
            answer(engine.run(&sql, max_rows).await)
        } else {
            answer(Engine::new(engine.store().clone(), limits).run(&sql, max_rows).await)
        };
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
