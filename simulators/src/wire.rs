//! Turning batches into the bytes each transport carries: envelopes (MQTT, Kafka) and the
//! edge agent's `{"records": [...]}` write body. The encodings themselves are the model crate's.

use bytes::Bytes;
use lodestone_model::{record_to_json, ContentType, Envelope, Source};
use rand::Rng;

use crate::series::{Batch, Tally};

/// Where a Kafka producer's records go; MQTT carries this in the topic instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub database: String,
    pub table: String,
}

/// One batch, encoded, with what the run needs to account for it once it is confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub first_seq: u64,
    pub last_seq: u64,
    pub tally: Tally,
    pub bytes: Bytes,
}

/// The share of envelopes whose `traceparent` is sampled (their W3C flag), when above 0: every
/// envelope then carries a fresh trace, as devices that trace do. 0 (the default): none.
static TRACEPARENT_RATIO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets [`TRACEPARENT_RATIO`] for the process (`lodestone-sim --traceparent-ratio`).
pub fn set_traceparent_ratio(ratio: f64) {
    TRACEPARENT_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), std::sync::atomic::Ordering::Relaxed);
}

/// A fresh `traceparent` for an envelope, sampled at the set ratio; `None` when the ratio is 0.
fn envelope_traceparent() -> Option<String> {
    let ratio = f64::from_bits(TRACEPARENT_RATIO.load(std::sync::atomic::Ordering::Relaxed));
    if ratio <= 0.0 {
        return None;
    }
    let mut rng = rand::thread_rng();
    let sampled = if rng.gen::<f64>() < ratio { "01" } else { "00" };
    Some(format!("00-{:032x}-{:016x}-{sampled}", rng.gen::<u128>() | 1, rng.gen::<u64>() | 1))
}

/// Encodes `batch` as one envelope from `source`; `destination` goes inside it (Kafka) or is
/// left out (MQTT, where the topic names it). `unacked_from` is for devices that wait for acks.
pub fn encode_envelope(batch: Batch, source: &Source, destination: Option<&Destination>, unacked_from: Option<u64>, format: ContentType) -> Encoded {
    let (first_seq, last_seq, tally) = (batch.first_seq, batch.last_seq(), batch.tally);
    let envelope = Envelope {
        database: destination.map(|d| d.database.clone()),
        table: destination.map(|d| d.table.clone()),
        source: source.clone(),
        first_seq,
        unacked_from,
        records: batch.records,
        rejected: Vec::new(),
        traceparent: envelope_traceparent(),
    };
    let bytes = match format {
        ContentType::Cbor => envelope.to_cbor(),
        ContentType::Json => envelope.to_json(),
    };
    Encoded { first_seq, last_seq, tally, bytes: Bytes::from(bytes) }
}

/// Encodes `batch` as the body of an edge agent's `POST /v1/write`: `{"records": [...]}` with
/// each record in the wire format's JSON shape.
pub fn encode_agent_write(batch: Batch) -> Encoded {
    let records: Vec<serde_json::Value> = batch.records.iter().map(record_to_json).collect();
    let body = serde_json::json!({ "records": records });
    Encoded {
        first_seq: batch.first_seq,
        last_seq: batch.last_seq(),
        tally: batch.tally,
        bytes: Bytes::from(serde_json::to_vec(&body).expect("JSON encoding of a write body cannot fail")),
    }
}

/// Encodes `batch` as the body of Timestream's `WriteRecords` into `database`.`table`: each
/// record in Timestream's shape, times in nanoseconds.
pub fn encode_write_records(batch: Batch, database: &str, table: &str) -> Encoded {
    let records: Vec<serde_json::Value> = batch.records.iter().map(timestream_record).collect();
    let body = serde_json::json!({"DatabaseName": database, "TableName": table, "Records": records});
    Encoded {
        first_seq: batch.first_seq,
        last_seq: batch.last_seq(),
        tally: batch.tally,
        bytes: Bytes::from(serde_json::to_vec(&body).expect("JSON encoding of a write body cannot fail")),
    }
}

/// One record as Timestream's `Record`.
fn timestream_record(record: &lodestone_model::Record) -> serde_json::Value {
    use lodestone_model::{MeasureValue, Scalar};
    let text = |scalar: &Scalar| match scalar {
        Scalar::Double(v) => format!("{v:?}"),
        Scalar::Bigint(v) | Scalar::Timestamp(v) => v.to_string(),
        Scalar::Varchar(v) => v.clone(),
        Scalar::Boolean(v) => v.to_string(),
    };
    let dimensions: Vec<serde_json::Value> = record.dimensions.iter().map(|d| serde_json::json!({"Name": d.name, "Value": d.value})).collect();
    let mut out = serde_json::json!({
        "Dimensions": dimensions,
        "MeasureName": record.measure_name,
        "MeasureValueType": record.value.measure_type().as_str(),
        "Time": record.time_ns.to_string(),
        "TimeUnit": "NANOSECONDS",
        "Version": record.version,
    });
    match &record.value {
        MeasureValue::Single(scalar) => out["MeasureValue"] = text(scalar).into(),
        MeasureValue::Multi(values) => {
            out["MeasureValues"] = values.iter().map(|(name, v)| serde_json::json!({"Name": name, "Value": text(v), "Type": v.measure_type().as_str()})).collect();
        }
    }
    out
}

/// A fresh boot id: 32 random hex digits. Each run is a new boot, so a bridge never mistakes
/// this run's sequence numbers for an earlier run's.
pub fn random_boot_id(rng: &mut impl Rng) -> String {
    format!("{:032x}", rng.gen::<u128>())
}

#[cfg(test)]
mod tests {
    use lodestone_model::{Limits, MeasureValue, Scalar};
    use rand::SeedableRng;

    use super::*;
    use crate::series::{FleetSpec, SeriesKind};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn fleet(kind: SeriesKind, readings: u64, batch: u32) -> FleetSpec {
        FleetSpec {
            seed: 3,
            kind,
            id_prefix: "sim-".into(),
            series_count: 2,
            readings_per_series: readings,
            batch_records_max: batch,
            start_ns: FleetSpec::default_start_ns(NOW, readings, 1000),
            interval_ms: 1000,
            profile: crate::Profile::Walk,
            series_rate_per_s: 0.0,
        }
    }

    #[test]
    fn envelopes_decode_back_without_rejections() {
        let source = Source { device_id: "sim-0002".into(), boot_id: "b007".into() };
        let destination = Destination { database: "sim".into(), table: "readings".into() };
        // (format, destination inside?, batch index)
        let cases = [
            (ContentType::Cbor, None, 0),
            (ContentType::Json, None, 0),
            (ContentType::Cbor, Some(&destination), 2),
            (ContentType::Json, Some(&destination), 2),
        ];
        for (format, dest, nth) in cases {
            let mut series = fleet(SeriesKind::Device, 120, 50).series(2);
            let batch = std::iter::from_fn(|| series.next_batch()).nth(nth).unwrap();
            let expected_records = batch.records.clone();
            let encoded = encode_envelope(batch, &source, dest, None, format);
            let decoded = Envelope::decode(&encoded.bytes, Some(format), &Limits::default(), NOW).unwrap();
            assert_eq!(decoded.rejected, vec![], "{format:?}");
            assert_eq!(decoded.records, expected_records, "{format:?}");
            assert_eq!(decoded.source, source);
            assert_eq!((decoded.first_seq, decoded.last_seq()), (encoded.first_seq, encoded.last_seq));
            assert_eq!(decoded.database.as_deref(), dest.map(|d| d.database.as_str()));
            assert_eq!(decoded.table.as_deref(), dest.map(|d| d.table.as_str()));
            // Sniffing finds the same encoding the content type names.
            assert_eq!(ContentType::sniff(&encoded.bytes), format);
        }
    }

    #[test]
    fn agent_write_body_shape() {
        let mut series = fleet(SeriesKind::Sensor, 3, 50).series(1);
        let batch = series.next_batch().unwrap();
        let first = batch.records[0].clone();
        let encoded = encode_agent_write(batch);
        let body: serde_json::Value = serde_json::from_slice(&encoded.bytes).unwrap();
        let records = body["records"].as_array().unwrap();
        assert_eq!(records.len(), 3);
        let MeasureValue::Single(Scalar::Double(value)) = first.value else { panic!() };
        assert_eq!(
            records[0],
            serde_json::json!({
                "dimensions": {"fleet": "sim", "sensor_id": "sim-0001"},
                "measure_name": "value",
                "value": value,
                "time": first.time_ns,
                "version": 1,
            })
        );
        assert_eq!((encoded.first_seq, encoded.last_seq, encoded.tally.count), (1, 3, 3));
    }

    #[test]
    fn boot_ids_are_32_hex_digits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (a, b) = (random_boot_id(&mut rng), random_boot_id(&mut rng));
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 32);
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
