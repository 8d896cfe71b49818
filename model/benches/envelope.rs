//! Decoding envelopes: what an ingest worker does with every Kafka message.
//!
//! Decodes a CBOR envelope of 1,000 single-measure records (two dimensions each, the simulator's
//! shape) with [`Envelope::decode`], and as a baseline in the same run, the same bytes with serde's
//! `untagged` enums for the values (how values were decoded before). Prints
//! `figure <name> <value> <unit>` lines.

use std::collections::BTreeMap;
use std::time::Instant;

use lodestone_model::{Dimension, Envelope, Limits, MeasureValue, Record, Scalar, Source};
use serde::Deserialize;

const RECORDS: usize = 1_000;
const ROUNDS: usize = 400;
const NOW: i64 = 1_700_000_000_000_000_000;

#[derive(Deserialize)]
#[allow(dead_code)]
struct BaselineEnvelope {
    v: u32,
    database: Option<String>,
    table: Option<String>,
    source: BaselineSource,
    first_seq: u64,
    records: Vec<BaselineRecord>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BaselineSource {
    device_id: String,
    boot_id: String,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct BaselineRecord {
    dimensions: BTreeMap<String, String>,
    measure_name: String,
    value: Option<BaselineValue>,
    values: Option<BTreeMap<String, BaselineValue>>,
    time: i64,
    version: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum BaselineValue {
    Typed {
        #[serde(rename = "type")]
        ty: String,
        value: BaselinePlain,
    },
    Plain(BaselinePlain),
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum BaselinePlain {
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

fn envelope() -> Vec<u8> {
    let records = (0..RECORDS)
        .map(|i| Record {
            dimensions: vec![
                Dimension { name: "device_id".into(), value: format!("max-{:04}", i % 1000) },
                Dimension { name: "fleet".into(), value: "sim".into() },
            ],
            measure_name: "value".into(),
            value: MeasureValue::Single(Scalar::Double(85.25 + (i % 37) as f64 * 0.25)),
            time_ns: NOW - 1_000_000_000 * (RECORDS - i) as i64,
            version: 1,
        })
        .collect();
    let envelope = Envelope {
        database: Some("loadtest".into()),
        table: Some("bench".into()),
        source: Source { device_id: "max-0001".into(), boot_id: "boot".into() },
        first_seq: 1,
        unacked_from: None,
        records,
        ..Default::default()
    };
    envelope.to_cbor()
}

/// Records decoded per second by `decode`, best of three runs of `ROUNDS` envelopes.
fn records_per_sec(bytes: &[u8], decode: impl Fn(&[u8]) -> usize) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let records: usize = (0..ROUNDS).map(|_| decode(bytes)).sum();
            records as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let bytes = envelope();
    let limits = Limits::default();
    let decoded = |b: &[u8]| Envelope::decode(b, None, &limits, NOW).expect("a valid envelope").records.len();
    let baseline = |b: &[u8]| ciborium::from_reader::<BaselineEnvelope, _>(b).expect("a valid envelope").records.len();
    assert_eq!(decoded(&bytes), RECORDS);
    assert_eq!(baseline(&bytes), RECORDS);
    let ours = records_per_sec(&bytes, decoded);
    let before = records_per_sec(&bytes, baseline);
    println!("figure envelope_cbor_bytes_per_record {:.1} bytes", bytes.len() as f64 / RECORDS as f64);
    println!("figure envelope_decode_records_per_sec {ours:.0} records/s");
    println!("figure envelope_untagged_parse_only_records_per_sec {before:.0} records/s");
}
