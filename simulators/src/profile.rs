//! What a simulated series measures, reading by reading: its measure names, value types and how
//! the values move. Every profile is seeded from the series' own random stream.
//!
//! Each reading also yields its *audit value* in quarters (whole multiples of
//! [`VALUE_STEP`]), which the run sums per series into its [`Tally`](crate::Tally) so a test can
//! compare an exact `SUM` from the store:
//!
//! | profile | record | audit value |
//! | --- | --- | --- |
//! | `walk` | `value` (double): a random walk in steps of 0.25 | the value |
//! | `temperature` | `temperature` (double, °C): a daily cycle of ±5 °C around a per-sensor base of 15–25 °C, with a slow drift; 0.25 °C resolution | the value |
//! | `vibration` | `vibration_rms` (double, mm/s): a base level of 0.5–2 with noise, and bursts of 20–100 readings at 4–10 times the level; 0.25 resolution | the value |
//! | `meter` | `energy_wh` (bigint): a counter that grows by 0–40 a reading, resets to 0 about once in 5,000 readings (a replaced meter) and rolls over at 100,000,000 | the value |
//! | `truck` | TSBS iot: `readings` (7 doubles) and `diagnostics` (2 doubles and a bigint), multi-measure, with the truck's tags as dimensions; about 1% of records missing and 1% sent a few records late | `velocity` of a `readings` record, `status` of a `diagnostics` record (both whole numbers) |
//!
//! A `truck` series sends two records per time step (its reading time is per step); every other
//! profile sends one reading per interval.

use std::collections::VecDeque;
use std::f64::consts::TAU;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::series::VALUE_STEP;
use crate::tsbs::Truck;

/// The measure of the `walk` profile.
pub const MEASURE_NAME: &str = "value";

/// What a series measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// `value`: a random walk in steps of 0.25.
    #[default]
    Walk,
    /// `temperature` in °C: a daily cycle, a per-sensor base and a slow drift.
    Temperature,
    /// `vibration_rms` in mm/s: noise around a base level, with bursts.
    Vibration,
    /// `energy_wh`: a growing counter with resets and roll-over.
    Meter,
    /// TSBS's iot truck: multi-measure `readings` and `diagnostics` records with tags.
    Truck,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Walk => "walk",
            Profile::Temperature => "temperature",
            Profile::Vibration => "vibration",
            Profile::Meter => "meter",
            Profile::Truck => "truck",
        }
    }
}

const QUARTERS_PER_UNIT: i64 = 4;
/// The walk is reflected into `[-VALUE_ABS_MAX, VALUE_ABS_MAX]`.
pub const VALUE_ABS_MAX: f64 = 10_000.0;
const WALK_START_QUARTERS_MAX: i64 = 400; // first value in 0.0..=100.0
const WALK_STEP_QUARTERS_MAX: i64 = 4; // each step in -1.0..=1.0
pub(crate) const WALK_BOUND_QUARTERS: i64 = VALUE_ABS_MAX as i64 * QUARTERS_PER_UNIT;

const DAY_NS: i64 = 86_400_000_000_000;
const TEMPERATURE_BASE_QUARTERS: std::ops::RangeInclusive<i64> = 60..=100; // 15..=25 °C
const TEMPERATURE_CYCLE_QUARTERS: f64 = 20.0; // ±5 °C
const TEMPERATURE_DRIFT_QUARTERS_MAX: i64 = 12; // ±3 °C

const VIBRATION_BASE_QUARTERS: std::ops::RangeInclusive<i64> = 2..=8; // 0.5..=2 mm/s
const VIBRATION_NOISE_QUARTERS: i64 = 2;
/// A burst starts at a reading with probability 1 in this.
const VIBRATION_BURST_ODDS: u32 = 500;
const VIBRATION_BURST_READINGS: std::ops::RangeInclusive<u32> = 20..=100;
const VIBRATION_BURST_FACTOR: std::ops::RangeInclusive<i64> = 4..=10;

const METER_STEP_WH_MAX: i64 = 40;
/// A meter is replaced (reset to 0) at a reading with probability 1 in this.
const METER_RESET_ODDS: u32 = 5_000;
pub const METER_ROLLOVER_WH: i64 = 100_000_000;

/// A truck record goes missing, or is held back, with probability 1 in this.
const TRUCK_MISSING_ODDS: u32 = 100;
const TRUCK_LATE_ODDS: u32 = 100;
/// A held-back record is sent after this many later records.
const TRUCK_LATE_BY: std::ops::RangeInclusive<u64> = 2..=10;

/// One series' value generator.
#[derive(Debug, Clone)]
pub(crate) enum Generator {
    Walk { quarters: i64 },
    Temperature { base_quarters: i64, drift_quarters: i64 },
    Vibration { base_quarters: i64, burst_left: u32, burst_factor: i64 },
    Meter { wh: i64 },
    Truck(Box<TruckSeries>),
}

/// A reading: its record and its audit value in quarters.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub record: Record,
    pub audit_quarters: i64,
}

impl Generator {
    /// The generator of series `index` (1-based) with the given id dimensions; draws its start
    /// from `rng`.
    pub(crate) fn new(profile: Profile, index: u32, dimensions: &[Dimension], rng: &mut ChaCha8Rng) -> Generator {
        match profile {
            Profile::Walk => Generator::Walk { quarters: rng.gen_range(0..=WALK_START_QUARTERS_MAX) },
            Profile::Temperature => Generator::Temperature { base_quarters: rng.gen_range(TEMPERATURE_BASE_QUARTERS), drift_quarters: 0 },
            Profile::Vibration => Generator::Vibration { base_quarters: rng.gen_range(VIBRATION_BASE_QUARTERS), burst_left: 0, burst_factor: 1 },
            Profile::Meter => Generator::Meter { wh: rng.gen_range(0..1_000_000) },
            Profile::Truck => Generator::Truck(Box::new(TruckSeries::new(index, dimensions, rng))),
        }
    }

    /// The reading at `time_ns` (the series' `n`-th interval; a truck keeps its own steps).
    pub(crate) fn next(&mut self, rng: &mut ChaCha8Rng, dimensions: &[Dimension], time_ns: i64, remaining: u64) -> Reading {
        let single = |measure: &str, value: Scalar, audit_quarters: i64| Reading {
            record: Record { dimensions: dimensions.to_vec(), measure_name: measure.into(), value: MeasureValue::Single(value), time_ns, version: 1 },
            audit_quarters,
        };
        let quarters_value = |q: i64| Scalar::Double(q as f64 * VALUE_STEP);
        match self {
            Generator::Walk { quarters } => {
                let value = *quarters;
                *quarters = walk_step(rng, value);
                single(MEASURE_NAME, quarters_value(value), value)
            }
            Generator::Temperature { base_quarters, drift_quarters } => {
                let phase = time_ns.rem_euclid(DAY_NS) as f64 / DAY_NS as f64;
                let cycle = (TEMPERATURE_CYCLE_QUARTERS * (TAU * phase).sin()).round() as i64;
                let value = *base_quarters + cycle + *drift_quarters;
                *drift_quarters = (*drift_quarters + rng.gen_range(-1..=1)).clamp(-TEMPERATURE_DRIFT_QUARTERS_MAX, TEMPERATURE_DRIFT_QUARTERS_MAX);
                single("temperature", quarters_value(value), value)
            }
            Generator::Vibration { base_quarters, burst_left, burst_factor } => {
                let noise = rng.gen_range(-VIBRATION_NOISE_QUARTERS..=VIBRATION_NOISE_QUARTERS);
                let mut value = (*base_quarters + noise).max(0);
                if *burst_left > 0 {
                    value *= *burst_factor;
                    *burst_left -= 1;
                } else if rng.gen_ratio(1, VIBRATION_BURST_ODDS) {
                    *burst_left = rng.gen_range(VIBRATION_BURST_READINGS);
                    *burst_factor = rng.gen_range(VIBRATION_BURST_FACTOR);
                }
                single("vibration_rms", quarters_value(value), value)
            }
            Generator::Meter { wh } => {
                let value = *wh;
                *wh = if rng.gen_ratio(1, METER_RESET_ODDS) { 0 } else { (*wh + rng.gen_range(0..=METER_STEP_WH_MAX)) % METER_ROLLOVER_WH };
                single("energy_wh", Scalar::Bigint(value), value * QUARTERS_PER_UNIT)
            }
            Generator::Truck(truck) => truck.next(rng, remaining),
        }
    }
}

/// One random-walk step, reflected at the bounds.
pub(crate) fn walk_step(rng: &mut ChaCha8Rng, quarters: i64) -> i64 {
    let next = quarters + rng.gen_range(-WALK_STEP_QUARTERS_MAX..=WALK_STEP_QUARTERS_MAX);
    if next.abs() > WALK_BOUND_QUARTERS {
        quarters - (next - quarters)
    } else {
        next
    }
}

/// A TSBS truck as one series: a step every interval brings a `readings` and a `diagnostics`
/// record; some go missing, some are held back and sent a few records later.
#[derive(Debug, Clone)]
pub(crate) struct TruckSeries {
    truck: Truck,
    dimensions: Vec<Dimension>,
    start_ns: i64,
    interval_ns: i64,
    step: i64,
    /// Records of the current step not yet handed out.
    pending: VecDeque<Reading>,
    /// Held-back records and the count of handed-out records after which each goes.
    late: Vec<(u64, Reading)>,
    emitted: u64,
    missed: u64,
}

impl TruckSeries {
    fn new(index: u32, id_dimensions: &[Dimension], rng: &mut ChaCha8Rng) -> TruckSeries {
        let truck = Truck::new(index as usize, rng);
        // The truck's TSBS tags, with the series id in place of TSBS's `name`.
        let mut dimensions: Vec<Dimension> = truck.tags.iter().filter(|d| d.name != "name" && d.name != "fleet").cloned().collect();
        dimensions.extend(id_dimensions.iter().cloned());
        if let Some(fleet) = truck.tags.iter().find(|d| d.name == "fleet") {
            // TSBS's fleet (East, West, ...) replaces the simulator's `fleet` dimension.
            dimensions.retain(|d| d.name != "fleet");
            dimensions.push(fleet.clone());
        }
        dimensions.sort();
        TruckSeries {
            truck,
            dimensions,
            start_ns: 0,
            interval_ns: 1,
            step: 0,
            pending: VecDeque::new(),
            late: Vec::new(),
            emitted: 0,
            missed: 0,
        }
    }

    pub(crate) fn set_times(&mut self, start_ns: i64, interval_ns: i64) {
        self.start_ns = start_ns;
        self.interval_ns = interval_ns;
    }

    /// The next record to send. `remaining` counts the records still to send, this one
    /// included: held-back records all go before the series ends.
    fn next(&mut self, rng: &mut ChaCha8Rng, remaining: u64) -> Reading {
        let due = self.late.iter().position(|(after, _)| *after <= self.emitted);
        let must_flush = remaining as usize <= self.late.len();
        let reading = match (due, must_flush) {
            (Some(i), _) => self.late.swap_remove(i).1,
            (None, true) => self.late.swap_remove(0).1,
            (None, false) => loop {
                if let Some(reading) = self.pending.pop_front() {
                    if rng.gen_ratio(1, TRUCK_LATE_ODDS) && remaining as usize > self.late.len() + 1 {
                        self.late.push((self.emitted + rng.gen_range(TRUCK_LATE_BY), reading));
                        continue;
                    }
                    break reading;
                }
                self.generate_step(rng);
            },
        };
        self.emitted += 1;
        reading
    }

    fn generate_step(&mut self, rng: &mut ChaCha8Rng) {
        let time_ns = self.start_ns + self.step * self.interval_ns;
        self.step += 1;
        let readings = self.truck.readings(rng);
        let diagnostics = self.truck.diagnostics(rng);
        let audit = |values: &[(String, Scalar)], field: &str| {
            values.iter().find(|(name, _)| name == field).map_or(0, |(_, value)| match value {
                Scalar::Double(v) => (*v * VALUE_STEP.recip()) as i64,
                Scalar::Bigint(v) => *v * QUARTERS_PER_UNIT,
                _ => 0,
            })
        };
        for (measure, values, field) in [("readings", readings, "velocity"), ("diagnostics", diagnostics, "status")] {
            // At most one record in 50 goes missing, so a series' time span stays within its
            // reading count times the interval (the future-time check relies on it).
            if rng.gen_ratio(1, TRUCK_MISSING_ODDS) && self.missed < self.emitted / 50 + 1 {
                self.missed += 1;
                continue;
            }
            let audit_quarters = audit(&values, field);
            let record = Record { dimensions: self.dimensions.clone(), measure_name: measure.into(), value: MeasureValue::Multi(values), time_ns, version: 1 };
            self.pending.push_back(Reading { record, audit_quarters });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::{FleetSpec, SeriesKind, Tally};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn fleet(profile: Profile, readings: u64) -> FleetSpec {
        FleetSpec {
            seed: 11,
            kind: SeriesKind::Device,
            profile,
            id_prefix: "p-".into(),
            series_count: 3,
            readings_per_series: readings,
            batch_records_max: 64,
            start_ns: NOW - 100_000_000_000_000,
            interval_ms: 1000,
            series_rate_per_s: 0.0,
        }
    }

    /// Every record of series 1, and the tally of all its batches.
    fn generate(profile: Profile, readings: u64) -> (Vec<Record>, Tally) {
        let mut series = fleet(profile, readings).series(1);
        let (mut records, mut tally) = (Vec::new(), Tally::default());
        while let Some(batch) = series.next_batch() {
            tally.add(batch.tally);
            records.extend(batch.records);
        }
        (records, tally)
    }

    fn single(record: &Record) -> f64 {
        match &record.value {
            MeasureValue::Single(Scalar::Double(v)) => *v,
            MeasureValue::Single(Scalar::Bigint(v)) => *v as f64,
            other => panic!("not a single number: {other:?}"),
        }
    }

    #[test]
    fn every_profile_is_seeded_sends_exactly_its_count_and_tallies_exactly() {
        for profile in [Profile::Walk, Profile::Temperature, Profile::Vibration, Profile::Meter, Profile::Truck] {
            let (records, tally) = generate(profile, 5_000);
            assert_eq!(records.len(), 5_000, "{profile:?}");
            assert_eq!(tally.count, 5_000);
            assert_eq!(generate(profile, 5_000).0, records, "{profile:?}: the same seed gives the same records");
            let last = fleet(profile, 5_000).start_ns + 4_999 * 1_000_000_000;
            assert!(records.iter().all(|r| r.time_ns <= last), "{profile:?}: no record after the last interval");
            if profile != Profile::Truck {
                let sum: f64 = records.iter().map(single).sum();
                assert_eq!(sum, tally.sum(), "{profile:?}: the tally is the sum of the values");
                let measures: std::collections::BTreeSet<_> = records.iter().map(|r| r.measure_name.as_str()).collect();
                assert_eq!(measures.len(), 1);
            }
        }
    }

    #[test]
    fn temperature_cycles_daily_around_its_base() {
        let (records, _) = generate(Profile::Temperature, 86_400 / 60 * 60);
        let values: Vec<f64> = records.iter().map(single).collect();
        assert!(values.iter().all(|v| (7.0..=33.0).contains(v) && (v / VALUE_STEP).fract() == 0.0));
        let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!(max - min >= 8.0, "a day spans the ±5 °C cycle: {min}..{max}");
        assert_eq!(records[0].measure_name, "temperature");
    }

    #[test]
    fn vibration_has_bursts_over_a_quiet_base() {
        let (records, _) = generate(Profile::Vibration, 20_000);
        let values: Vec<f64> = records.iter().map(single).collect();
        assert!(values.iter().all(|v| (0.0..=25.0).contains(v)));
        let loud = values.iter().filter(|v| **v > 3.0).count();
        assert!(loud > 100 && loud < 10_000, "bursts: {loud} loud readings of 20,000");
        assert_eq!(records[0].measure_name, "vibration_rms");
    }

    #[test]
    fn a_meter_only_grows_except_when_it_resets() {
        let (records, _) = generate(Profile::Meter, 30_000);
        let values: Vec<i64> = records.iter().map(|r| single(r) as i64).collect();
        let drops: Vec<_> = values.windows(2).filter(|w| w[1] < w[0]).collect();
        assert!(!drops.is_empty(), "30,000 readings see a reset");
        assert!(drops.iter().all(|w| w[1] == 0 || w[0] + METER_STEP_WH_MAX >= METER_ROLLOVER_WH), "a drop is a reset to 0 or a roll-over: {drops:?}");
        assert!(values.windows(2).all(|w| w[1] < w[0] || w[1] - w[0] <= METER_STEP_WH_MAX));
        assert!(matches!(records[0].value, MeasureValue::Single(Scalar::Bigint(_))));
    }

    #[test]
    fn trucks_send_readings_and_diagnostics_with_gaps_and_late_records() {
        let (records, tally) = generate(Profile::Truck, 20_000);
        let names: Vec<&str> = records[0].dimensions.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["device_id", "device_version", "driver", "fleet", "fuel_capacity", "load_capacity", "model", "nominal_fuel_consumption"]);
        assert_eq!(records[0].dimensions[0].value, "p-0001");
        let readings = records.iter().filter(|r| r.measure_name == "readings").count();
        let diagnostics = records.iter().filter(|r| r.measure_name == "diagnostics").count();
        assert_eq!(readings + diagnostics, 20_000);
        let steps = records.iter().map(|r| r.time_ns).collect::<std::collections::BTreeSet<_>>().len();
        let missing = 2 * steps - 20_000;
        assert!((50..=400).contains(&missing), "about 1% missing: {missing}");
        let late = records.windows(2).filter(|w| w[1].time_ns < w[0].time_ns).count();
        assert!((50..=400).contains(&late), "about 1% out of order: {late}");
        // The audit value: velocity of readings plus status of diagnostics, all whole numbers.
        let field = |r: &Record, name: &str| match &r.value {
            MeasureValue::Multi(values) => values.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
            _ => None,
        };
        let audit: f64 = records
            .iter()
            .map(|r| match (field(r, "velocity"), field(r, "status")) {
                (Some(Scalar::Double(v)), None) => v,
                (None, Some(Scalar::Bigint(s))) => s as f64,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(audit, tally.sum());
    }

    #[test]
    fn a_short_truck_series_still_sends_its_late_records() {
        for readings in [1, 2, 3, 7, 50] {
            let (records, tally) = generate(Profile::Truck, readings);
            assert_eq!(records.len() as u64, readings);
            assert_eq!(tally.count, readings);
        }
    }
}
