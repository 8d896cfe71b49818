//! Seeded, reproducible readings: series ids, the random walk, reading times and batches.
//!
//! A *series* is one simulated device (MQTT, Kafka) or one sensor behind an edge agent. Series
//! `i` (1-based) of a fleet draws its values from ChaCha8 stream `i` of the fleet's seed, so one
//! seed gives the same data for every series on every platform, and a series' data does not
//! depend on how many other series run or in which order their batches are sent.
//!
//! Reading `k` (0-based) of a series has sequence number `k + 1` and time
//! `start_ns + k * interval`: times are distinct within a series. Values are whole multiples of
//! [`VALUE_STEP`] (0.25, a power of two) bounded by [`VALUE_ABS_MAX`], so any sum of them is exact
//! in `f64` whatever the order of addition — a store's `SUM` must match [`Tally::sum`] exactly.

use std::time::Duration;

use lodestone_model::{validate_name, Dimension, Record};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::SimError;
pub use crate::profile::{Profile, MEASURE_NAME};
use crate::profile::Generator;
/// The dimension that groups all simulated series, and its value.
pub const FLEET_DIMENSION: &str = "fleet";
pub const FLEET_NAME: &str = "sim";

/// Values are whole multiples of this step.
pub const VALUE_STEP: f64 = 0.25;
/// Largest `--batch`: records in one envelope or one HTTP write.
pub const BATCH_RECORDS_MAX: u32 = 10_000;
/// Largest number of series (devices or sensors) in one run.
pub const SERIES_COUNT_MAX: u32 = 1_000_000;
/// Largest number of readings per series. With |value| ≤ 10 000 a series' sum stays below
/// 2^47, far inside the 2^51 quarters an `f64` holds exactly.
pub const READINGS_PER_SERIES_MAX: u64 = 10_000_000_000;
/// Longest id prefix, in bytes.
pub const ID_PREFIX_BYTES_MAX: usize = 64;
/// How far ahead of the clock a reading may be (the store's quota, Timestream's 15 minutes).
const FUTURE_NS_MAX: i64 = 15 * 60 * 1_000_000_000;
/// Largest per-series rate (`--rate-per-device`), readings per second.
pub const SERIES_RATE_PER_S_MAX: f64 = 1_000_000.0;
const ID_DIGITS_MIN: usize = 4;

/// What a series stands for; decides its id dimension and the flag names in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// A device with its own connection: dimension `device_id`.
    Device,
    /// A sensor behind an edge agent: dimension `sensor_id`.
    Sensor,
}

impl SeriesKind {
    pub fn id_dimension(self) -> &'static str {
        match self {
            SeriesKind::Device => "device_id",
            SeriesKind::Sensor => "sensor_id",
        }
    }

    fn count_flag(self) -> &'static str {
        match self {
            SeriesKind::Device => "devices",
            SeriesKind::Sensor => "sensors",
        }
    }

    fn readings_flag(self) -> &'static str {
        match self {
            SeriesKind::Device => "readings-per-device",
            SeriesKind::Sensor => "readings-per-sensor",
        }
    }

    fn prefix_flag(self) -> &'static str {
        match self {
            SeriesKind::Device => "device-prefix",
            SeriesKind::Sensor => "sensor-prefix",
        }
    }
}

/// Everything that determines a run's data, and each series' pace. Two equal specs generate
/// identical readings.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    pub seed: u64,
    pub kind: SeriesKind,
    /// What each series measures.
    pub profile: Profile,
    /// Series ids are the prefix and a zero-padded 1-based index: `sim-0001`.
    pub id_prefix: String,
    pub series_count: u32,
    pub readings_per_series: u64,
    /// Records per envelope (or per HTTP write); the last batch of a series may be shorter.
    pub batch_records_max: u32,
    /// Time of each series' first reading, nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// Time between two readings of one series.
    pub interval_ms: u64,
    /// Readings per second of each series (`--rate-per-device`); 0 = unpaced. A paced series
    /// sends a batch when its last reading is due; series start spread evenly over one batch
    /// period, so a fleet does not send in lock-step. Pacing never changes the data.
    pub series_rate_per_s: f64,
}

impl FleetSpec {
    /// The default start: the last reading falls `interval` before `now_ns`, so the whole run
    /// is in the recent past (inside the store's memory window for modest runs).
    pub fn default_start_ns(now_ns: i64, readings_per_series: u64, interval_ms: u64) -> i64 {
        let span_ns = (readings_per_series as i128) * (interval_ms as i128) * 1_000_000;
        (now_ns as i128 - span_ns).clamp(0, i64::MAX as i128) as i64
    }

    /// Checks every bound, and that no reading is more than 15 minutes after `now_ns`.
    pub fn validate(&self, now_ns: i64) -> Result<(), SimError> {
        let invalid = |flag: &'static str, detail: String| Err(SimError::InvalidArgument { flag, detail });
        let kind = self.kind;
        if !(1..=SERIES_COUNT_MAX).contains(&self.series_count) {
            return invalid(kind.count_flag(), format!("must be 1 to {SERIES_COUNT_MAX}, not {}", self.series_count));
        }
        if self.readings_per_series > READINGS_PER_SERIES_MAX {
            return invalid(kind.readings_flag(), format!("must be at most {READINGS_PER_SERIES_MAX}"));
        }
        if !(1..=BATCH_RECORDS_MAX).contains(&self.batch_records_max) {
            return invalid("batch", format!("must be 1 to {BATCH_RECORDS_MAX}, not {}", self.batch_records_max));
        }
        if !(0.0..=SERIES_RATE_PER_S_MAX).contains(&self.series_rate_per_s) {
            return invalid("rate-per-device", format!("must be 0 to {SERIES_RATE_PER_S_MAX} readings per second"));
        }
        if self.interval_ms == 0 {
            return invalid("interval-ms", "must be at least 1 so that every reading has its own time".into());
        }
        check_id_prefix(&self.id_prefix).or_else(|detail| invalid(kind.prefix_flag(), detail))?;
        match self.last_time_ns() {
            None => invalid("start-ns", "the last reading's time overflows 64-bit nanoseconds".into()),
            Some(last) if last > now_ns.saturating_add(FUTURE_NS_MAX) => invalid(
                "start-ns",
                format!("the last reading ({last} ns) would be more than 15 minutes in the future"),
            ),
            Some(_) => Ok(()),
        }
    }

    /// Time of the last reading of each series, `None` if it overflows (or there are none:
    /// then the start time itself).
    fn last_time_ns(&self) -> Option<i64> {
        let steps = self.readings_per_series.saturating_sub(1);
        let offset = (steps as i128) * (self.interval_ms as i128) * 1_000_000;
        i64::try_from(self.start_ns as i128 + offset).ok()
    }

    /// Readings the whole fleet sends.
    pub fn planned_total(&self) -> u64 {
        self.readings_per_series * u64::from(self.series_count)
    }

    /// Id of series `index` (1-based): the prefix and the index padded to at least four digits,
    /// or to the width of the largest index, so ids sort like their indexes.
    pub fn series_id(&self, index: u32) -> String {
        let width = self.series_count.to_string().len().max(ID_DIGITS_MIN);
        format!("{}{index:0width$}", self.id_prefix)
    }

    /// Series `index` (1-based), positioned at its first reading.
    pub fn series(&self, index: u32) -> Series {
        let id = self.series_id(index);
        let mut dimensions = vec![
            Dimension { name: self.kind.id_dimension().into(), value: id.clone() },
            Dimension { name: FLEET_DIMENSION.into(), value: FLEET_NAME.into() },
        ];
        dimensions.sort();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(index));
        let interval_ns = self.interval_ms as i64 * 1_000_000;
        let mut generator = Generator::new(self.profile, index, &dimensions, &mut rng);
        if let Generator::Truck(truck) = &mut generator {
            truck.set_times(self.start_ns, interval_ns);
        }
        let pace = (self.series_rate_per_s > 0.0).then(|| {
            let batch_period_s = f64::from(self.batch_records_max) / self.series_rate_per_s;
            let offset = Duration::from_secs_f64(batch_period_s * f64::from(index - 1) / f64::from(self.series_count));
            Pace { offset, rate_per_s: self.series_rate_per_s }
        });
        Series {
            id,
            dimensions,
            rng,
            generator,
            next_seq: 1,
            last_seq: self.readings_per_series,
            batch_records_max: self.batch_records_max,
            start_ns: self.start_ns,
            interval_ns,
            pace,
        }
    }

    /// Every series of the fleet, in index order.
    pub fn all_series(&self) -> impl Iterator<Item = Series> + '_ {
        (1..=self.series_count).map(|index| self.series(index))
    }
}

fn check_id_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > ID_PREFIX_BYTES_MAX {
        return Err(format!("{prefix:?} is longer than {ID_PREFIX_BYTES_MAX} bytes"));
    }
    // Ids become MQTT topic levels and client ids: the same characters as database names.
    if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(format!("{prefix:?} may hold only ASCII letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

/// Checks `--database` and `--table` by the store's naming rule.
pub fn validate_destination(database: &str, table: &str) -> Result<(), SimError> {
    validate_name("database", database).map_err(|detail| SimError::InvalidArgument { flag: "database", detail })?;
    validate_name("table", table).map_err(|detail| SimError::InvalidArgument { flag: "table", detail })
}

/// One series' reading generator. Hands out its readings in batches, in sequence order.
#[derive(Debug, Clone)]
pub struct Series {
    id: String,
    dimensions: Vec<Dimension>,
    rng: ChaCha8Rng,
    generator: Generator,
    next_seq: u64,
    last_seq: u64,
    batch_records_max: u32,
    start_ns: i64,
    interval_ns: i64,
    pace: Option<Pace>,
}

/// When a paced series' readings are due, counted from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pace {
    offset: Duration,
    rate_per_s: f64,
}

impl Series {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sequence number of the series' last reading (0 when it has none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether readings remain to be batched.
    pub fn has_next(&self) -> bool {
        self.next_seq <= self.last_seq
    }

    /// Records in the next batch (0 when done).
    pub fn next_batch_len(&self) -> u32 {
        let remaining = (self.last_seq + 1).saturating_sub(self.next_seq);
        remaining.min(u64::from(self.batch_records_max)) as u32
    }

    /// When the next batch is due, from the start of the run: when its last reading is, at the
    /// series' rate. `None` for an unpaced series (or one with nothing left).
    pub fn next_batch_due(&self) -> Option<Duration> {
        let pace = self.pace?;
        let len = self.next_batch_len();
        if len == 0 {
            return None;
        }
        let last_reading = (self.next_seq - 1 + u64::from(len) - 1) as f64;
        Some(pace.offset + Duration::from_secs_f64(last_reading / pace.rate_per_s))
    }

    /// The next up to `batch_records_max` readings, or `None` when every reading was handed out.
    pub fn next_batch(&mut self) -> Option<Batch> {
        let len = self.next_batch_len();
        if len == 0 {
            return None;
        }
        let first_seq = self.next_seq;
        let mut records: Vec<Record> = Vec::with_capacity(len as usize);
        let mut sum_quarters = 0;
        for seq in first_seq..first_seq + u64::from(len) {
            let time_ns = self.start_ns + (seq - 1) as i64 * self.interval_ns;
            let reading = self.generator.next(&mut self.rng, &self.dimensions, time_ns, self.last_seq - seq + 1);
            sum_quarters += reading.audit_quarters;
            records.push(reading.record);
        }
        self.next_seq = first_seq + u64::from(len);
        Some(Batch { first_seq, records, tally: Tally { count: u64::from(len), sum_quarters } })
    }
}

/// Consecutive readings of one series: record `i` has sequence number `first_seq + i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub first_seq: u64,
    pub records: Vec<Record>,
    /// Count and exact sum of the batch's values.
    pub tally: Tally,
}

impl Batch {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64 - 1
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// How many readings, and their sum, kept exactly as a whole number of quarters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub sum_quarters: i64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.count += other.count;
        self.sum_quarters += other.sum_quarters;
    }

    /// The sum as the `f64` a store computes: exact, since it is a multiple of 0.25 below 2^51.
    pub fn sum(&self) -> f64 {
        self.sum_quarters as f64 * VALUE_STEP
    }
}

#[cfg(test)]
mod tests {
    use lodestone_model::{MeasureValue, Scalar};

    use super::*;
    use crate::profile::VALUE_ABS_MAX;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn spec(seed: u64, series_count: u32, readings_per_series: u64, batch_records_max: u32) -> FleetSpec {
        FleetSpec {
            seed,
            kind: SeriesKind::Device,
            id_prefix: "sim-".into(),
            series_count,
            readings_per_series,
            batch_records_max,
            start_ns: NOW - 1_000_000_000_000,
            interval_ms: 1000,
            profile: Profile::Walk,
            series_rate_per_s: 0.0,
        }
    }

    fn all_batches(series: &mut Series) -> Vec<Batch> {
        std::iter::from_fn(|| series.next_batch()).collect()
    }

    fn values(series: &mut Series) -> Vec<f64> {
        all_batches(series)
            .into_iter()
            .flat_map(|b| b.records)
            .map(|r| match r.value {
                MeasureValue::Single(Scalar::Double(v)) => v,
                other => panic!("not a double: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn series_ids() {
        let check = |prefix: &str, count: u32, index: u32, expected: &str| {
            let fleet = FleetSpec { id_prefix: prefix.into(), ..spec(1, count, 1, 1) };
            assert_eq!(fleet.series_id(index), expected, "count {count}, index {index}");
        };
        check("sim-", 100, 1, "sim-0001");
        check("sim-", 100, 100, "sim-0100");
        check("sim-", 9_999, 42, "sim-0042");
        check("sim-", 10_000, 42, "sim-00042");
        check("sim-", 1_000_000, 1_000_000, "sim-1000000");
        check("", 3, 3, "0003");
    }

    #[test]
    fn same_seed_same_data() {
        // (seed a, index a, seed b, index b, batch b, same data?)
        let cases = [
            (1, 1, 1, 1, 50, true),
            (1, 1, 1, 1, 7, true), // batching does not change the data
            (1, 1, 2, 1, 50, false),
            (1, 1, 1, 2, 50, false),
            (7, 3, 7, 3, 1000, true),
        ];
        for (seed_a, index_a, seed_b, index_b, batch_b, same) in cases {
            let a = values(&mut spec(seed_a, 10, 500, 50).series(index_a));
            let b = values(&mut spec(seed_b, 10, 500, batch_b).series(index_b));
            assert_eq!(a == b, same, "seed {seed_a}/{seed_b}, index {index_a}/{index_b}, batch {batch_b}");
        }
    }

    #[test]
    fn data_does_not_depend_on_fleet_size() {
        let small = values(&mut spec(5, 2, 100, 10).series(2));
        let large = values(&mut spec(5, 2000, 100, 10).series(2));
        assert_eq!(small, large);
    }

    #[test]
    fn pinned_first_values() {
        // Changing these means every earlier run's expectations change: bump deliberately.
        let check = |index: u32, expected: [f64; 8]| assert_eq!(values(&mut spec(1, 2, 8, 5).series(index)), expected);
        check(1, [85.25, 84.25, 84.5, 84.25, 85.25, 85.75, 85.0, 84.75]);
        check(2, [87.75, 88.25, 88.0, 87.25, 87.0, 86.25, 86.75, 87.25]);
    }

    #[test]
    fn values_are_quarters_and_sums_exact_in_any_order() {
        for (seed, readings) in [(1, 1), (2, 1000), (3, 20_000)] {
            let mut series = spec(seed, 1, readings, 64).series(1);
            let mut tally = Tally::default();
            let mut all = Vec::new();
            for batch in all_batches(&mut series) {
                tally.add(batch.tally);
                all.extend(batch.records.iter().map(|r| match r.value {
                    MeasureValue::Single(Scalar::Double(v)) => v,
                    _ => unreachable!(),
                }));
            }
            assert!(all.iter().all(|v| (v / VALUE_STEP).fract() == 0.0 && v.abs() <= VALUE_ABS_MAX));
            let forward: f64 = all.iter().sum();
            let backward: f64 = all.iter().rev().sum();
            let mut by_magnitude = all.clone();
            by_magnitude.sort_by(|a, b| b.abs().total_cmp(&a.abs()));
            let sorted: f64 = by_magnitude.iter().sum();
            let pairwise: f64 = all.chunks(7).map(|c| c.iter().sum::<f64>()).sum();
            assert_eq!(tally.count, readings);
            for sum in [forward, backward, sorted, pairwise] {
                assert_eq!(sum.to_bits(), tally.sum().to_bits(), "seed {seed}");
            }
        }
    }

    #[test]
    fn walk_stays_within_bounds() {
        use crate::profile::{walk_step, WALK_BOUND_QUARTERS};
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut quarters = WALK_BOUND_QUARTERS;
        for _ in 0..10_000 {
            quarters = walk_step(&mut rng, quarters);
            assert!(quarters.abs() <= WALK_BOUND_QUARTERS);
        }
    }

    #[test]
    fn batches_cover_seqs_without_gaps() {
        // (readings per series, batch, expected batch lengths)
        let cases: [(u64, u32, &[usize]); 7] = [
            (0, 50, &[]),
            (1, 50, &[1]),
            (50, 50, &[50]),
            (51, 50, &[50, 1]),
            (7, 3, &[3, 3, 1]),
            (6, 1, &[1, 1, 1, 1, 1, 1]),
            (1000, 250, &[250, 250, 250, 250]),
        ];
        for (readings, batch, lengths) in cases {
            let fleet = spec(1, 1, readings, batch);
            let mut series = fleet.series(1);
            assert_eq!(series.last_seq(), readings);
            let batches = all_batches(&mut series);
            assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), lengths, "{readings}/{batch}");
            let mut next_seq = 1;
            for b in &batches {
                assert_eq!(b.first_seq, next_seq);
                assert_eq!(b.tally.count, b.len() as u64);
                next_seq = b.last_seq() + 1;
            }
            assert_eq!(next_seq, readings + 1);
            assert!(!series.has_next());
            assert_eq!(series.next_batch(), None);
        }
    }

    #[test]
    fn records_shape_and_times() {
        let check = |kind: SeriesKind, expected_dims: &[(&str, &str)]| {
            let fleet = FleetSpec { kind, ..spec(1, 10, 5, 5) };
            let batch = fleet.series(3).next_batch().unwrap();
            for (i, record) in batch.records.iter().enumerate() {
                let dims: Vec<_> = record.dimensions.iter().map(|d| (d.name.as_str(), d.value.as_str())).collect();
                assert_eq!(dims, expected_dims);
                assert_eq!(record.measure_name, "value");
                assert_eq!(record.version, 1);
                assert_eq!(record.time_ns, fleet.start_ns + i as i64 * 1_000_000_000);
            }
        };
        check(SeriesKind::Device, &[("device_id", "sim-0003"), ("fleet", "sim")]);
        check(SeriesKind::Sensor, &[("fleet", "sim"), ("sensor_id", "sim-0003")]);
    }

    #[test]
    fn a_paced_series_is_due_when_its_last_reading_is_and_the_fleet_is_spread() {
        // 4 series, batches of 10, 5 readings/s each: a batch every 2 s, series 3 half a period in.
        let fleet = FleetSpec { series_rate_per_s: 5.0, ..spec(1, 4, 25, 10) };
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        let mut first = fleet.series(1);
        let mut third = fleet.series(3);
        assert_eq!(first.next_batch_due(), secs(1.8));
        assert_eq!(third.next_batch_due(), secs(1.0 + 1.8));
        first.next_batch();
        third.next_batch();
        assert_eq!(first.next_batch_due(), secs(3.8));
        assert_eq!(third.next_batch_due(), secs(4.8));
        first.next_batch();
        assert_eq!(first.next_batch_due(), secs(4.8), "the last, short batch: readings 21 to 25");
        first.next_batch();
        assert_eq!(first.next_batch_due(), None);
        assert_eq!(spec(1, 4, 25, 10).series(1).next_batch_due(), None, "unpaced");
    }

    #[test]
    fn default_start_ends_one_interval_before_now() {
        let start = FleetSpec::default_start_ns(NOW, 1000, 1000);
        let fleet = FleetSpec { start_ns: start, ..spec(1, 1, 1000, 50) };
        assert_eq!(fleet.last_time_ns(), Some(NOW - 1_000_000_000));
        assert_eq!(FleetSpec::default_start_ns(5, 10, 1000), 0);
    }

    #[test]
    fn validation_bounds() {
        let check = |fleet: FleetSpec, flag: Option<&str>| {
            let got = fleet.validate(NOW).err().map(|e| match e {
                SimError::InvalidArgument { flag, .. } => flag,
                other => panic!("unexpected {other}"),
            });
            assert_eq!(got, flag, "{fleet:?}");
        };
        let ok = spec(1, 10, 100, 50);
        check(ok.clone(), None);
        check(FleetSpec { series_count: 0, ..ok.clone() }, Some("devices"));
        check(FleetSpec { series_count: SERIES_COUNT_MAX, ..ok.clone() }, None);
        check(FleetSpec { series_count: SERIES_COUNT_MAX + 1, ..ok.clone() }, Some("devices"));
        check(FleetSpec { kind: SeriesKind::Sensor, series_count: 0, ..ok.clone() }, Some("sensors"));
        check(FleetSpec { batch_records_max: 0, ..ok.clone() }, Some("batch"));
        check(FleetSpec { batch_records_max: BATCH_RECORDS_MAX, ..ok.clone() }, None);
        check(FleetSpec { batch_records_max: BATCH_RECORDS_MAX + 1, ..ok.clone() }, Some("batch"));
        check(FleetSpec { readings_per_series: 0, ..ok.clone() }, None);
        check(FleetSpec { readings_per_series: READINGS_PER_SERIES_MAX + 1, ..ok.clone() }, Some("readings-per-device"));
        check(FleetSpec { interval_ms: 0, ..ok.clone() }, Some("interval-ms"));
        check(FleetSpec { series_rate_per_s: SERIES_RATE_PER_S_MAX, ..ok.clone() }, None);
        check(FleetSpec { series_rate_per_s: SERIES_RATE_PER_S_MAX * 1.01, ..ok.clone() }, Some("rate-per-device"));
        check(FleetSpec { series_rate_per_s: -1.0, ..ok.clone() }, Some("rate-per-device"));
        check(FleetSpec { series_rate_per_s: f64::NAN, ..ok.clone() }, Some("rate-per-device"));
        check(FleetSpec { id_prefix: "a/b".into(), ..ok.clone() }, Some("device-prefix"));
        check(FleetSpec { id_prefix: "x".repeat(ID_PREFIX_BYTES_MAX), ..ok.clone() }, None);
        check(FleetSpec { id_prefix: "x".repeat(ID_PREFIX_BYTES_MAX + 1), ..ok.clone() }, Some("device-prefix"));
        // The last reading may be 15 minutes ahead, not one nanosecond more.
        let last_at = |t: i64| FleetSpec { start_ns: t - 99_000_000_000, ..ok.clone() };
        check(last_at(NOW + FUTURE_NS_MAX), None);
        check(last_at(NOW + FUTURE_NS_MAX + 1), Some("start-ns"));
        check(FleetSpec { start_ns: i64::MAX - 1, ..ok.clone() }, Some("start-ns"));
    }

    #[test]
    fn destinations() {
        assert!(validate_destination("sim", "readings").is_ok());
        assert!(matches!(validate_destination("a/b", "readings"), Err(SimError::InvalidArgument { flag: "database", .. })));
        assert!(matches!(validate_destination("sim", "+"), Err(SimError::InvalidArgument { flag: "table", .. })));
    }
}
