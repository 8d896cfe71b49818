//! Crash safety: a writer process is killed with SIGKILL at 50 seeded moments while it writes,
//! persists, compacts and deletes garbage in one store. After every kill the catalog must load,
//! point only at files that exist, and hold every committed record exactly once.
//!
//! The writer is the crate's `crash_writer` binary (cargo builds it for the integration tests). It commits a
//! watermark (the next record id) atomically with each persist and resumes from it, so
//! "committed" is exactly the records below the latest watermark.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lodestone_store::{Store, TableRef};
use object_store::ObjectStoreExt;
use rand::{Rng, SeedableRng};

const KILLS: u64 = 50;

fn table() -> TableRef {
    TableRef { database: "crash".into(), table: "records".into() }
}

fn writer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_crash_writer")
}

/// Checks the store after a crash; returns the committed record count.
async fn check_store(path: &std::path::Path) -> u64 {
    let store = Store::open_local(path).unwrap();
    let snapshot = store.snapshot().await.expect("the latest catalog version loads");
    let committed = snapshot.watermarks.get("next_id").copied().unwrap_or(0);
    let mut ids = Vec::new();
    for file in snapshot.table(&table()).map(|t| t.files.clone()).unwrap_or_default() {
        assert!(store.object_store().head(&file.path.as_str().into()).await.is_ok(), "catalog points at missing {}", file.path);
        for batch in store.read_file(&file).await.unwrap() {
            let column = batch.column_by_name("measure_value::bigint").unwrap();
            let values = column.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            ids.extend(values.iter().map(|v| v.unwrap() as u64));
        }
    }
    ids.sort_unstable();
    let expected: Vec<u64> = (0..committed).collect();
    assert!(ids == expected, "store holds {} ids (first difference at {:?}), committed {committed}", ids.len(),
        ids.iter().zip(&expected).position(|(a, b)| a != b));
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_50_moments_never_loses_duplicates_or_dangles() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut committed = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(writer_bin())
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the writer committed at least once in this life, then kill it at a seeded
        // moment within the next few commits.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !line.starts_with("committed") {
            line.clear();
            let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
            assert!(read > 0 && Instant::now() < deadline, "writer ended before its first commit (kill {kill})");
        }
        let delay = Duration::from_micros(rng.gen_range(0..150_000));
        std::thread::sleep(delay); // the fault's timing, not synchronisation
        child.kill().unwrap();
        child.wait().unwrap();
        let now_committed = check_store(dir.path()).await;
        assert!(now_committed > committed, "kill {kill}: no progress");
        committed = now_committed;
    }
    eprintln!("{KILLS} kills, {committed} records committed and verified");
}
