//! Lodestone's broker-bridge: an embedded MQTT broker (rumqttd) whose publishes are validated and
//! produced to Kafka, with an end-to-end ack back to each device once Kafka holds its records.
//!
//! Data enters as MQTT publishes on `lodestone/v1/{database}/{table}/{device_id}` (v3.1.1, and
//! v5 when `mqtt.listen_v5` is set) and leaves as Kafka messages: on the ingest topic, bundles of
//! the envelopes bound for one partition (the accepted records as CBOR; [`bundle`]), and one
//! message per rejected record or unreadable payload on the dead-letter topic (with a `reason`
//! header). Acks leave as JSON
//! [`lodestone_model::topic::Ack`]s on `lodestone/v1/ack/{device_id}`.
//!
//! Key types:
//! - [`route::Router`]: the routing decision as a pure function — topic and payload in, Kafka
//!   messages and the sequence range to ack out.
//! - [`acks::AckLedger`]: per-device ack ordering and sequence-gap tracking, without I/O.
//! - [`bundle::Bundler`]: one open bundle per partition, sealed by count, size or linger.
//! - [`gate::Gate`]: what a device with a verified identity may do on MQTT, packet by packet
//!   (client id, own data topics under a [`gate::Policy`], own ack topic, no retain).
//! - [`service::Bridge`]: the running service — broker, link reader, producer, acker, HTTP
//!   (`/health`, `/metrics`).
//! - [`config::BridgeConfig`]: the configuration (`configs/broker-bridge.example.toml`).
//!
//! **Invariant:** an ack through N is published only after Kafka acknowledged (idempotent
//! producer, `acks=all`) every message carrying the device's records up to N, for envelopes the
//! bridge saw contiguously; rumqttd's in-memory state is never what an ack relies on.

pub mod acks;
pub mod broker;
pub mod bundle;
pub mod config;
pub mod front;
pub mod gate;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod route;
pub mod service;
pub mod session;

use std::net::SocketAddr;
use std::time::Duration;

pub use config::BridgeConfig;
pub use service::Bridge;

/// Everything that can stop the bridge from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] lodestone_kit::config::InvalidValue),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("bridge link to the embedded MQTT broker failed: {0}")]
    Link(#[source] rumqttd::local::LinkError),
    #[error("the embedded MQTT broker did not confirm the bridge's subscription within {0:?}")]
    SubscribeTimeout(Duration),
    #[error("MQTT listener on {addr} is not accepting connections: {detail}")]
    MqttListen { addr: SocketAddr, detail: String },
    #[error(transparent)]
    Http(#[from] lodestone_kit::http::ServeError),
    #[error("the embedded MQTT broker stopped: {0}")]
    BrokerStopped(String),
    #[error(transparent)]
    Front(#[from] front::FrontError),
}
