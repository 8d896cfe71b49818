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
//! - [`Worker`] (`worker.rs`): the loop around an ingestor, behind the small [`worker::Log`]
//!   trait: [`Worker::handle`] applies a message (or skips it, below its partition's catalog
//!   watermark), [`Worker::checkpoint`] is the one order *persist → dead letters delivered →
//!   commit offsets*. Unit-tested against a fake log. Its bookkeeping is [`offsets::OffsetBook`].
//! - `kafka.rs`: the Kafka consumer and producer behind [`worker::Log`], and the receive loop.
//! - `http.rs`: `/health`, `/ready`, `/metrics`, `GET /v1/memory/{database}/{table}` and
//!   `GET /v1/receipts/{partition}/{offset}`.
//! - [`receipts::Receipts`]: what the worker did with the messages a writer waits on (the
//!   Timestream API's `WriteRecords`), by partition and offset.
//! - `maintenance.rs`: compaction and retention rounds.
//!
//! Data enters as Kafka messages (envelopes in CBOR or JSON) and leaves as Parquet files and
//! catalog commits through the store, and as dead-letter messages. `main.rs` only wires these.
//!
//! **Invariant:** only this crate owns Kafka offsets; the store sees opaque watermarks.

pub mod config;
pub mod http;
mod ingestor;
pub mod kafka;
pub mod maintenance;
mod metrics;
pub mod offsets;
pub mod receipts;
pub mod worker;

pub use config::IngestConfig;
pub use ingestor::{Applied, Ingestor, MessageTrace, Origin, REJECTED_RECORDS};
pub use metrics::Counters;
pub use worker::{Worker, WorkerError};
