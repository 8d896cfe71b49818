//! Fault tests of the durability contract (DESIGN.md): each runs a load through the real
//! pipeline, injects a fault (kill -9, a restart, a cut connection, bad payloads), and checks the
//! store against the load's ledger with SQL: every acknowledged reading present exactly once.
//! Each prints `figure <test>_lost <n>` and `figure <test>_duplicated <n>`.
//!
//! `make test-faults` runs this file alone. The tests take one at a time ([`SERIAL`]): each
//! drives the machine's two cores and a fault schedule measured in seconds.

use std::time::Duration;

use lodestone_tests::{report, sim, Ledger, Stack, StackOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One fault test at a time, even under `--test-threads=2`.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the store may stop growing before a test reports what is missing.
const STALL: Duration = Duration::from_secs(90);

/// The simulator's readings for `devices` × `per_device` at 100 ms apart (so the whole run lies
/// within the tables' memory retention), `rate` readings/s in total.
fn load_args(devices: u64, per_device: u64, rate: u64, table: &str) -> Vec<String> {
    [
        "--devices",
        &devices.to_string(),
        "--readings-per-device",
        &per_device.to_string(),
        "--interval-ms",
        "100",
        "--rate",
        &rate.to_string(),
        "--database",
        "faults",
        "--table",
        table,
        "--timeout-s",
        "900",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_workers_killed_every_20_to_40_s_lose_and_duplicate_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions { edge_agent: false, ingest_workers: 2, ..Default::default() }).await;
    // 1,000,000 readings at 10,000/s: about 100 s of load, so 2 to 5 kills land in it.
    let mut args = vec!["kafka".to_string(), "--bootstrap".into(), stack.bootstrap(), "--batch".into(), "500".into()];
    args.extend(load_args(100, 10_000, 10_000, "ingest_kill"));
    let mut load = sim(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut rng = StdRng::seed_from_u64(20);
    let mut kills = 0;
    let summary = loop {
        let wait = Duration::from_secs(rng.gen_range(20..=40));
        tokio::select! {
            summary = &mut load => break summary.expect("the load task"),
            () = tokio::time::sleep(wait) => {
                let victim = format!("ingest-{}", rng.gen_range(0..2));
                eprintln!("kill -9 {victim}");
                stack.kill9(&victim);
                kills += 1;
                stack.restart(&victim).await;
            }
        }
    };
    assert!(kills >= 2, "the load ended after {kills} kills; it must span at least two");
    let ledger = Ledger::from_summary(&summary);
    assert_eq!(ledger.total(), 1_000_000);
    stack.settle_count("faults.ingest_kill", ledger.total(), STALL).await;
    let audit = stack.audit("faults.ingest_kill", "device_id", &ledger).await;
    println!("figure ingest_kill_kills {kills} kills");
    report("ingest_kill", &audit);
}
