//! What every Lodestone service does alike, in one place, so that a cross-cutting change (TLS,
//! authentication, telemetry) lands once instead of four times.
//!
//! Key items:
//! - [`log::init`]: the one log format (`tracing`, to stderr, filtered by `RUST_LOG`).
//! - [`config::load`]: a service's TOML file plus `LODESTONE_<SERVICE>__SECTION__KEY` environment
//!   overrides, unknown keys refused, then [`config::Validate::validate`]: a value that parses
//!   but cannot work is refused with the key named, before anything starts.
//! - [`shutdown`]: one signal per process ([`shutdown::Shutdown`], fired by SIGINT or SIGTERM or by
//!   its trigger) that every task listens to, and the `[shutdown] timeout_ms` key
//!   ([`shutdown::ShutdownConfig`]) that bounds each service's drain.
//! - [`http::serve`]: the HTTP listener every service serves its router through, plain or TLS
//!   ([`tls::TlsConfig`], `[tls]`); it stops on the shutdown signal.
//! - [`auth`]: bearer tokens with scopes (`[auth]`, [`auth::require_token`] around a router,
//!   [`auth::Principal`] in every handler), and the token file `lodestone-admin` manages.
//! - [`sigv4`]: AWS Signature V4 checked, for the Timestream API; [`auth::require_token`] verifies
//!   AWS-signed requests against the tokens that may sign ([`auth::TokenFile::issue_signing`]).
//! - [`telemetry`]: traces and metrics over OTLP (OpenTelemetry), off unless configured; a
//!   `traceparent` from a device or a producer continued ([`telemetry::continue_trace`]).
//! - [`clock::now_ns`]: wall-clock nanoseconds since the Unix epoch, saturating at the `i64` range.
//! - [`metrics::Exposition`]: the Prometheus text format every `/metrics` endpoint writes.
//! - [`ports::unused_port`]: a port for a server another process is about to start (tests, scripts),
//!   picked below the ephemeral range so that no client socket takes it first.
//! - `kafka` (feature `kafka`): the idempotent producer settings the end-to-end ack relies on,
//!   and the "queue full: wait for room" send loop.
//!
//! Configuration comes in from files and the environment; everything else here is plumbing that
//! services call, with no state of its own.

pub mod auth;
pub mod clock;
pub mod config;
pub mod fdlimit;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod ports;
pub mod shutdown;
pub mod sigv4;
pub mod telemetry;
pub mod tls;

pub use clock::now_ns;
pub use shutdown::{Shutdown, ShutdownConfig, ShutdownTrigger};
