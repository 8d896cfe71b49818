//! TSBS's iot use case as Lodestone records: a truck fleet with 8 tags, a `readings` record
//! (7 fields) and a `diagnostics` record (3 fields) per truck every step, the fields random walks
//! with the steps, bounds and precision of TSBS (`pkg/data/usecases/iot`), about 1% of records
//! missing and 1% arriving a few steps late. Seeded: the same seed gives the same fleet.
//!
//! A point is one field value, as TSBS and VictoriaMetrics count them.
//!
//! A crate of its own, with no dependency but the model and `rand`, so that the store's and the
//! query service's benchmarks generate the fleet without building MQTT and Kafka clients. The
//! live simulators (`lodestone-simulators`) drive the same [`Truck`] per series.

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One field of a truck: a clamped random walk rounded to `decimals`, as TSBS's iot use case
/// generates them (`pkg/data/usecases/iot`): its start, step range, bounds and precision.
#[derive(Debug, Clone)]
struct Walk {
    name: &'static str,
    value: f64,
    step: (f64, f64),
    bounds: (f64, f64),
    decimals: i32,
}

impl Walk {
    fn advance(&mut self, rng: &mut impl Rng) -> f64 {
        self.value = (self.value + rng.gen_range(self.step.0..=self.step.1)).clamp(self.bounds.0, self.bounds.1);
        let factor = 10f64.powi(self.decimals);
        (self.value * factor).round() / factor
    }
}

/// A truck's state: `readings` (7 fields), and `diagnostics` (fuel_state, current_load, status).
/// The live simulators drive one per series (their `truck` profile).
#[derive(Debug, Clone)]
pub struct Truck {
    pub tags: Vec<Dimension>,
    readings: Vec<Walk>,
    fuel: Walk,
    load: f64,
    status: Walk,
}

impl Truck {
    pub fn new(index: usize, rng: &mut impl Rng) -> Truck {
        let fleets = ["East", "West", "North", "South"];
        let models = ["F-150", "G-2000", "H-2"];
        let tag = |name: &str, value: String| Dimension { name: name.into(), value };
        let tags = vec![
            tag("device_version", format!("v{}.0", index % 3)),
            tag("driver", format!("Driver-{}", index % 97)),
            tag("fleet", fleets[index % 4].into()),
            tag("fuel_capacity", format!("{}", 100 + 50 * (index % 4))),
            tag("load_capacity", format!("{}", 1000 + 500 * (index % 5))),
            tag("model", models[index % 3].into()),
            tag("name", format!("truck_{index}")),
            tag("nominal_fuel_consumption", format!("{}", 10 + index % 15)),
        ];
        let walk = |name, value, step, bounds, decimals| Walk { name, value, step, bounds, decimals };
        let readings = vec![
            walk("latitude", rng.gen_range(0.0..90.0), (-0.005, 0.005), (-90.0, 90.0), 5),
            walk("longitude", rng.gen_range(0.0..180.0), (-0.005, 0.005), (-180.0, 180.0), 5),
            walk("elevation", rng.gen_range(0.0..500.0), (-10.0, 10.0), (0.0, 5000.0), 0),
            walk("velocity", 0.0, (-10.0, 10.0), (0.0, 100.0), 0),
            walk("heading", rng.gen_range(0.0..360.0), (-5.0, 5.0), (0.0, 360.0), 0),
            walk("grade", 0.0, (-5.0, 5.0), (0.0, 100.0), 0),
            walk("fuel_consumption", 25.0, (-5.0, 5.0), (0.0, 50.0), 1),
        ];
        Truck {
            tags,
            readings,
            fuel: walk("fuel_state", 1.0, (-0.001, 0.0), (0.0, 1.0), 1),
            load: rng.gen_range(0.0..5000.0f64).round(),
            status: walk("status", 0.0, (-1.0, 1.0), (0.0, 5.0), 0),
        }
    }

    pub fn readings(&mut self, rng: &mut impl Rng) -> Vec<(String, Scalar)> {
        // Multi-measure values are kept sorted by name.
        let mut values: Vec<_> = self.readings.iter_mut().map(|w| (w.name.to_string(), Scalar::Double(w.advance(rng)))).collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values
    }

    pub fn diagnostics(&mut self, rng: &mut impl Rng) -> Vec<(String, Scalar)> {
        let mut fuel = self.fuel.advance(rng);
        if self.fuel.value <= 0.0 {
            self.fuel.value = 1.0; // refuelled
            fuel = 1.0;
        }
        if rng.gen_bool(0.05) {
            self.load = rng.gen_range(0.0..5000.0f64).round();
        }
        let status = self.status.advance(rng) as i64;
        vec![
            ("current_load".into(), Scalar::Double(self.load)),
            ("fuel_state".into(), Scalar::Double(fuel)),
            ("status".into(), Scalar::Bigint(status)),
        ]
    }
}

/// The fleet, step by step.
pub struct TruckFleet {
    trucks: Vec<Truck>,
    rng: StdRng,
    start_ns: i64,
    step_ns: i64,
    steps: i64,
    step: i64,
    late: Vec<Record>,
}

impl TruckFleet {
    /// `trucks` trucks reporting every `step_ns` for `steps` steps from `start_ns`.
    pub fn new(trucks: usize, start_ns: i64, step_ns: i64, steps: i64, seed: u64) -> TruckFleet {
        let mut rng = StdRng::seed_from_u64(seed);
        let trucks = (0..trucks).map(|i| Truck::new(i, &mut rng)).collect();
        TruckFleet { trucks, rng, start_ns, step_ns, steps, step: 0, late: Vec::new() }
    }

    /// The records that arrive at the next step, in arrival order (late ones from earlier steps
    /// included); `None` after the last step, which also brings every late record.
    pub fn next_step(&mut self) -> Option<Vec<Record>> {
        if self.step >= self.steps {
            return None;
        }
        let time_ns = self.start_ns + self.step * self.step_ns;
        let mut records = Vec::with_capacity(self.trucks.len() * 2);
        for truck in self.trucks.iter_mut() {
            let readings = truck.readings(&mut self.rng);
            let diagnostics = truck.diagnostics(&mut self.rng);
            for (measure, values) in [("readings", readings), ("diagnostics", diagnostics)] {
                if self.rng.gen_bool(0.01) {
                    continue; // missing
                }
                let record = Record { dimensions: truck.tags.clone(), measure_name: measure.into(), value: MeasureValue::Multi(values), time_ns, version: 1 };
                if self.rng.gen_bool(0.01) {
                    self.late.push(record); // out of order: arrives a few steps later
                } else {
                    records.push(record);
                }
            }
        }
        self.step += 1;
        if self.step % 5 == 0 || self.step == self.steps {
            records.append(&mut self.late);
        }
        Some(records)
    }
}

/// The points (field values) of a record.
pub fn points(record: &Record) -> u64 {
    match &record.value {
        MeasureValue::Multi(values) => values.len() as u64,
        MeasureValue::Single(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_fleet_repeats_itself_and_reports_every_step() {
        let run = || {
            let mut fleet = TruckFleet::new(10, 0, 10, 50, 7);
            let mut records = Vec::new();
            while let Some(step) = fleet.next_step() {
                records.extend(step);
            }
            records
        };
        let (first, second) = (run(), run());
        assert_eq!(first, second);
        // 10 trucks × 50 steps × 2 records, about 1% missing.
        assert!((970..=1000).contains(&first.len()), "{}", first.len());
        let readings = first.iter().find(|r| r.measure_name == "readings").unwrap();
        assert_eq!(points(readings), 7);
        assert_eq!(readings.dimensions.len(), 8);
    }
}
