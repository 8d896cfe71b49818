//! Lodestone's load generators: seeded, reproducible fleets of simulated devices and sensors
//! that write through each entry point of the pipeline and report exactly what they wrote.
//!
//! Data enters nowhere — it is generated — and leaves through one of three transports:
//! - [`mqtt::run_mqtt`]: N devices, each with its own MQTT connection, publishing envelopes on
//!   their data topics and waiting for the bridge's end-to-end acks (as edge agents do).
//! - [`kafka::run_kafka`]: the same envelopes written straight to the ingest topic with an
//!   idempotent producer (as Kafka-native producers do).
//! - [`agent::run_agent`]: sensors posting JSON records to an edge agent's write endpoint.
//!
//! What each series measures is its [`Profile`]: a random walk (the default, used by the
//! tests), temperature, vibration, an energy meter with resets, or a TSBS iot truck
//! ([`tsbs::TruckFleet`] also generates the truck fleet in one stream for the benchmarks).
//! Rate control is fleet-wide (`--rate`, a token bucket) and per series (`--rate-per-device`,
//! a schedule that spreads the series over one batch period).
//!
//! Each returns a [`Summary`] — per series, how many readings were sent and their exact sum —
//! that `lodestone-sim` prints as one JSON line, so a test can compare it with what the query
//! service answers.
//!
//! Key types, all free of I/O and unit-tested on plain inputs:
//! - [`FleetSpec`] and [`Series`]: series ids, the seeded random walk (values are multiples of
//!   0.25 so sums are exact in any order), reading times, and [`Batch`]es with gapless sequence
//!   numbers.
//! - [`wire`]: batches into envelopes (CBOR or JSON) or agent write bodies.
//! - [`AckWindow`]: which envelopes a device has out beyond its latest ack.
//! - [`rate::TokenSchedule`]: the fleet-wide `--rate` token bucket's refill arithmetic.
//! - [`Summary`]: the result line.
//!
//! The async modules ([`mqtt`], [`kafka`], [`agent`]) only move those bytes and count
//! confirmations. Every failure is a [`SimError`]; a run that ends with unconfirmed readings is
//! not an error but a summary with `unacked > 0`.

pub mod access;
pub mod agent;
pub mod identity;
mod error;
mod fdlimit;
pub mod kafka;
pub mod load;
pub mod mqtt;
pub mod rate;
mod profile;
mod series;
mod summary;
pub use lodestone_tsbs as tsbs;
mod window;
pub mod wire;

pub use error::SimError;
pub use series::{
    validate_destination, Batch, FleetSpec, Profile, Series, SeriesKind, Tally, BATCH_RECORDS_MAX, FLEET_DIMENSION,
    FLEET_NAME, MEASURE_NAME, SERIES_COUNT_MAX, SERIES_RATE_PER_S_MAX, VALUE_STEP,
};
pub use summary::{Progress, SeriesOutcome, SeriesSummary, Summary};
pub use window::{ack_through, AckWindow};
