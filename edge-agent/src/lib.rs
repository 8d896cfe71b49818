//! Lodestone's edge agent: takes sensor readings, keeps them in an LMDB outbox, forwards them
//! over MQTT and deletes them only when the bridge acknowledges them end to end.
//!
//! How data enters: `POST /v1/write` ([`http`]) with JSON records or InfluxDB line protocol
//! ([`line_protocol`]), decoded by [`intake`], or the built-in [`simulated`] sensors. Both go
//! through [`intake::Intake`]: every record is validated against the model's limits, then the
//! whole write is handed to the [`writer`] — the one thread that owns LMDB write transactions
//! and group-commits everything pending in one transaction (~2 fsyncs). A write is answered
//! only after that commit, so an acknowledged reading survives a crash. Sequence numbers are
//! per agent, gap-free and persistent across restarts.
//!
//! How data leaves: the [`mqtt`] forwarder reads the [`outbox`] from the oldest unacknowledged
//! entry, groups consecutive entries for one table into CBOR [`lodestone_model::Envelope`]s
//! (bounded in records and bytes) and publishes them with QoS 1 on
//! `lodestone/v1/{database}/{table}/{device_id}`, at most `inflight_envelopes_max` unacknowledged
//! at once. Forwarded envelopes carry this process's boot id. An
//! [`lodestone_model::topic::Ack`] for this boot id on `lodestone/v1/ack/{device_id}` deletes
//! every entry up to its `through_seq` (one commit through the writer); a PUBACK deletes
//! nothing. After a reconnect, or when no ack comes within `ack_timeout_ms`, everything
//! unacknowledged is sent again from the oldest. The bookkeeping behind these decisions is plain
//! data in [`forward`].
//!
//! Key types: [`outbox::Outbox`] (LMDB, synchronous), [`writer::OutboxWriter`] (async handle to
//! the writer thread), [`forward::ForwardWindow`] (what is in flight), [`agent::Agent`] (starts
//! and stops everything), [`config::AgentConfig`].
//!
//! Bounds and what happens at them: `outbox.bytes_max` (writes refused with 507 `outbox_full`),
//! `outbox.pending_requests_max` (writers wait), `outbox.commit_batch_max` (records per commit),
//! `http.body_bytes_max` / `http.records_per_request_max` (413), `http.bodies_bytes_max` (503
//! `overloaded`: bodies handled at once), `forward.batch_records_max` /
//! `forward.envelope_bytes_max` (envelope size), `forward.inflight_envelopes_max` (forwarding
//! waits for acks).

pub mod agent;
pub mod config;
pub mod forward;
pub mod http;
pub mod intake;
pub mod line_protocol;
pub mod mqtt;
pub mod outbox;
pub mod simulated;
pub mod telemetry;
pub mod writer;

pub use agent::{Agent, AgentError};
pub use config::AgentConfig;
