//! The one log format of every service: `tracing`'s text lines on stderr, colours only on a
//! terminal, filtered by `RUST_LOG` (default: the service's own filter, usually `info`).
//! Services install it through [`crate::telemetry::init`], which adds OpenTelemetry's spans when
//! configured; tools call [`init`].

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset or invalid,
/// e.g. `"info"` or `"info,rumqttd=warn"`. Call once, first thing in `main`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::registry().with(filter).with(fmt_layer()).init();
}

/// The log lines' layer.
pub fn fmt_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal())
}
