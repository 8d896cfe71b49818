//! The one log format of every service: `tracing`'s text lines on stderr, colours only on a
//! terminal, filtered by `RUST_LOG` (default: the service's own filter, usually `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset or invalid,
/// e.g. `"info"` or `"info,rumqttd=warn"`. Call once, first thing in `main`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
}
