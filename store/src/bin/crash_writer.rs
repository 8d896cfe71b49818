//! Test support, not a tool: the writer of the crash test (`tests/crash.rs`): persists batches of records into the store at
//! the path given as its argument, forever, committing the next record id as a watermark with
//! every persist and compacting now and then. It prints `committed N` after each commit.

use std::collections::BTreeMap;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{CompactionPolicy, HotTier, Store, TableProperties, TableRef};
use rand::{Rng, SeedableRng};

const BASE_NS: i64 = 1_700_000_000_000_000_000;

fn table() -> TableRef {
    TableRef { database: "crash".into(), table: "records".into() }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args().nth(1).expect("usage: crash_writer STORE_PATH");
    let store = Store::open_local(std::path::Path::new(&path)).unwrap();
    let snapshot = store.ensure_table(&table(), TableProperties { magnetic_store_writes: true, ..Default::default() }).await.unwrap();
    let entry = snapshot.table(&table()).unwrap().clone();
    let mut next_id = snapshot.watermarks.get("next_id").copied().unwrap_or(0);
    let policy = CompactionPolicy { files_min: 3, input_bytes_max: u64::MAX, input_rows_max: u64::MAX, garbage_grace_ns: 0, file_span_ns: 1_000, fresh_age_max_ns: i64::MAX };
    let mut rng = rand::rngs::StdRng::seed_from_u64(next_id);
    loop {
        let mut hot = HotTier::new(10_000);
        for _ in 0..rng.gen_range(1..500) {
            let record = Record {
                dimensions: vec![Dimension { name: "writer".into(), value: format!("w{}", next_id % 3) }],
                measure_name: "id".into(),
                value: MeasureValue::Single(Scalar::Bigint(next_id as i64)),
                time_ns: BASE_NS + next_id as i64,
                version: 1,
            };
            hot.write(&table(), &entry.properties, &entry.schema, record, BASE_NS, 0).unwrap();
            next_id += 1;
        }
        store.persist(&hot.drain(), &BTreeMap::from([("next_id".to_string(), next_id)])).await.unwrap();
        println!("committed {next_id}");
        if rng.gen_bool(0.3) {
            store.compact(&policy, BASE_NS).await.unwrap();
            store.apply_retention(&policy, BASE_NS).await.unwrap();
        }
    }
}
