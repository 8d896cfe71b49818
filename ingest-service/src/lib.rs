//! The ingest worker: one member of a Kafka consumer group on the ingest topic.
//!
//! Key types:
//! - [`IngestConfig`]: configuration (`configs/ingest-service.example.toml`).
//! - [`Ingestor`]: the Kafka-free core. [`Ingestor::apply`] takes one decoded envelope and writes
//!   its records into the store's [`lodestone_store::HotTier`], returning the rejections (with
//!   reasons) to send to the dead-letter topic. [`Ingestor::persist`] drains the hot tier into the
//!   cold tier and commits the catalog.
//! - [`REJECTED_RECORDS`]: every message on the dead-letter topic (the bridge's and the
//!   workers') also becomes a row of `"_lodestone"."rejected_records"`, so rejections are data.
//! - [`Counters`]: what the worker received, wrote and rejected, by reason, for `/metrics`.
//!
//! Data enters as Kafka messages (envelopes in CBOR or JSON) and leaves as Parquet files and
//! catalog commits through the store, and as dead-letter messages. The Kafka loop lives in
//! `main.rs`: it commits a partition's offset only after [`Ingestor::persist`] returned for every
//! record before it.
//!
//! **Invariant:** only this crate owns Kafka offsets; the store sees opaque watermarks.

pub mod config;
mod ingestor;
mod metrics;

pub use config::IngestConfig;
pub use ingestor::{Applied, DeadLetter, Ingestor, Memory, Origin, REJECTED_RECORDS};
pub use metrics::Counters;
