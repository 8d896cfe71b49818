//! A built-in source of fake readings (`[simulated]`), for demos and load: every `interval_ms`,
//! one DOUBLE reading per sensor, stored through the same [`Intake`] as HTTP writes.

use std::time::Duration;

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use rand::Rng;

use crate::config::SimulatedConfig;
use crate::intake::Intake;
use lodestone_kit::now_ns;
use crate::outbox::Destination;
use lodestone_kit::Shutdown;

/// The sensors' state: each reading takes a small random step from the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedSensors {
    device_id: String,
    measure_name: String,
    values: Vec<f64>,
}

impl SimulatedSensors {
    pub fn new(device_id: &str, measure_name: &str, sensors: usize) -> SimulatedSensors {
        SimulatedSensors { device_id: device_id.into(), measure_name: measure_name.into(), values: vec![20.0; sensors] }
    }

    /// One reading per sensor at `time_ns`: dimensions `device_id` and `sensor` = `sensor-N`.
    pub fn readings(&mut self, time_ns: i64, rng: &mut impl Rng) -> Vec<Record> {
        let device_id = self.device_id.clone();
        let measure_name = self.measure_name.clone();
        self.values
            .iter_mut()
            .enumerate()
            .map(|(i, value)| {
                *value += rng.gen_range(-0.5..0.5);
                Record {
                    dimensions: vec![
                        Dimension { name: "device_id".into(), value: device_id.clone() },
                        Dimension { name: "sensor".into(), value: format!("sensor-{i}") },
                    ],
                    measure_name: measure_name.clone(),
                    value: MeasureValue::Single(Scalar::Double((*value * 100.0).round() / 100.0)),
                    time_ns,
                    version: 1,
                }
            })
            .collect()
    }
}

/// Runs until `shutdown`. A refused batch (e.g. outbox full) is logged and dropped; it is counted
/// as rejected.
pub async fn run(config: SimulatedConfig, device_id: String, destination: Destination, intake: Intake, mut shutdown: Shutdown) {
    let mut sensors = SimulatedSensors::new(&device_id, &config.measure_name, config.sensors);
    let mut ticker = tokio::time::interval(Duration::from_millis(config.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(sensors = config.sensors, interval_ms = config.interval_ms, "simulated sensors on");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = now_ns();
        let records = sensors.readings(now, &mut rand::thread_rng());
        if let Err(error) = intake.submit(destination.clone(), records, now, None).await {
            tracing::warn!(code = error.code(), %error, "simulated readings refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_model::{validate_record, Limits};
    use rand::SeedableRng;

    #[test]
    fn readings_are_valid_and_one_per_sensor() {
        let mut sensors = SimulatedSensors::new("dev-1", "temperature", 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let records = sensors.readings(1_000, &mut rng);
        assert_eq!(records.len(), 3);
        for (i, record) in records.iter().enumerate() {
            validate_record(record, &Limits::default(), 1_000, i).unwrap();
            assert_eq!(record.dimensions[1].value, format!("sensor-{i}"));
            assert_eq!(record.time_ns, 1_000);
        }
    }
}
