//! The fleet store the query service's tests share.

use std::collections::BTreeMap;
use std::path::Path;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use lodestone_store::{HotTier, Store, TableProperties, TableRef};

pub const NOW: i64 = 1_700_000_000_000_000_000;
pub const MINUTE: i64 = 60_000_000_000;

/// Two trucks, a reading every minute for ten minutes: speed (DOUBLE), odometer (BIGINT),
/// status (VARCHAR), moving (BOOLEAN), and a MULTI `position` record. A second persist then
/// delivers t2's first five minutes again (duplicates) and a version-2 status of t1 at minute 9,
/// so that files overlap and queries must deduplicate.
pub async fn fleet_store(dir: &Path) -> Store {
    let store = Store::open_local(dir).unwrap();
    let table = TableRef { database: "fleet".into(), table: "trucks".into() };
    let snapshot = store.ensure_table(&table, TableProperties { magnetic_store_writes: true, ..Default::default() }).await.unwrap();
    let entry = snapshot.table(&table).unwrap().clone();
    let mut hot = HotTier::new(10_000);
    for truck in ["t1", "t2"] {
        for minute in 0..10i64 {
            for record in truck_minute(truck, minute) {
                hot.write(&table, &entry.properties, &entry.schema, record, NOW, 0).unwrap();
            }
        }
    }
    store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
    for minute in 0..5 {
        for record in truck_minute("t2", minute) {
            hot.write(&table, &entry.properties, &entry.schema, record, NOW, 0).unwrap();
        }
    }
    let mut fixed = truck_minute("t1", 9).into_iter().find(|r| r.measure_name == "status").unwrap();
    fixed.value = MeasureValue::Single(Scalar::Varchar("ok-after-fix".into()));
    fixed.version = 2;
    hot.write(&table, &entry.properties, &entry.schema, fixed, NOW, 0).unwrap();
    store.persist(&hot.drain(), &BTreeMap::new()).await.unwrap();
    store
}

/// The five records of one truck at one minute, version 1.
pub fn truck_minute(truck: &str, minute: i64) -> Vec<Record> {
    let time_ns = NOW + minute * MINUTE;
    let offset = if truck == "t1" { 0 } else { 100 };
    let values = [
        ("speed", MeasureValue::Single(Scalar::Double(minute as f64 * 1.5 + offset as f64))),
        ("odometer", MeasureValue::Single(Scalar::Bigint(1_000 + offset + minute * 7))),
        ("status", MeasureValue::Single(Scalar::Varchar(if minute < 5 { "ok" } else { "check" }.into()))),
        ("moving", MeasureValue::Single(Scalar::Boolean(minute % 2 == 0))),
        (
            "position",
            MeasureValue::Multi(vec![("lat".into(), Scalar::Double(52.0 + minute as f64 / 100.0)), ("lon".into(), Scalar::Double(4.25))]),
        ),
    ];
    values
        .into_iter()
        .map(|(measure, value)| Record {
            dimensions: vec![Dimension { name: "truck".into(), value: truck.into() }],
            measure_name: measure.into(),
            value,
            time_ns,
            version: 1,
        })
        .collect()
}

