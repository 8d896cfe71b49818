//! The store on an S3-compatible object store: moto's S3 server (installed by `make setup` into
//! the cache; `MOTO_SERVER` names its path), on a port of this machine. Persist, scan and
//! compaction through `s3://`, and catalog commits that race each other through S3's
//! create-if-absent writes.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{CompactionPolicy, HotTier, Store, TableProperties, TableRef};

const NOW: i64 = 1_700_000_000_000_000_000;

/// moto's server on a free port, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let server = std::env::var("MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|_| "/var/cache/lodestone/moto-venv/bin/moto_server".into());
        assert!(server.exists(), "{} is missing: run `make setup` (scripts/ensure-moto.sh installs it)", server.display());
        let port = lodestone_kit::ports::unused_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on port {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    fn create_bucket(&self, name: &str) {
        let status = Command::new("curl").args(["-sf", "-X", "PUT", &format!("{}/{name}", self.endpoint())]).status().expect("curl runs");
        assert!(status.success(), "creating bucket {name}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn open(moto: &Moto, location: &str) -> Store {
    let options: BTreeMap<String, String> = [
        ("aws_endpoint", moto.endpoint()),
        ("aws_region", "us-east-1".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
        ("aws_allow_http", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Store::open(location, &options).unwrap()
}

fn reading(truck: &str, time_ns: i64, value: f64, version: u64) -> Record {
    Record {
        dimensions: vec![Dimension { name: "truck".into(), value: truck.into() }],
        measure_name: "load".into(),
        value: MeasureValue::Single(Scalar::Double(value)),
        time_ns,
        version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_scan_compact_and_racing_commits_on_s3() {
    let moto = Moto::start();
    moto.create_bucket("lodestone");
    let store = open(&moto, "s3://lodestone/fleet-store");
    let table = TableRef { database: "fleet".into(), table: "trucks".into() };
    let snapshot = store.ensure_table(&table, TableProperties::default()).await.unwrap();
    let entry = snapshot.table(&table).unwrap().clone();
    for (round, value) in [(0, 1.0), (1, 2.0), (2, 3.0)] {
        let mut hot = HotTier::new(100);
        for truck in ["t1", "t2"] {
            // Round 1 repeats round 0's times with version 2: it replaces them.
            let time = NOW + if round == 1 { 0 } else { round };
            hot.write(&table, &entry.properties, &entry.schema, reading(truck, time, value, 1 + u64::from(round == 1)), NOW, 0).unwrap();
        }
        store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
    }
    let scanned = store.scan(&table, i64::MIN, i64::MAX).await.unwrap();
    assert_eq!(scanned.num_rows(), 4, "two trucks at two times, round 1 replacing round 0");
    let report = store.compact(&CompactionPolicy { files_min: 2, ..CompactionPolicy::default() }, NOW).await.unwrap();
    assert_eq!((report.files_merged, report.rows_before, report.rows_after), (3, 6, 4), "{report:?}");
    assert_eq!(store.scan(&table, i64::MIN, i64::MAX).await.unwrap().num_rows(), 4);

    // Two writers (think two ingest workers) commit at once: create-if-absent puts make one of
    // them retry, and no change is lost. A store opened on the same bucket sees all of them.
    let other = open(&moto, "s3://lodestone/fleet-store");
    let writes = (0..10).map(|i| {
        let store = if i % 2 == 0 { store.clone() } else { other.clone() };
        async move { store.create_database(&format!("db{i}")).await.map(|_| ()) }
    });
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    let seen = open(&moto, "s3://lodestone/fleet-store").snapshot().await.unwrap();
    assert_eq!(seen.databases.len(), 11, "fleet and db0..db9: {:?}", seen.databases.keys().collect::<Vec<_>>());
}
