//! Configuration files: any text is read into a config and validated, or refused with an error;
//! never a panic (`persist.interval_ms = 0` once panicked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lodestone_kit::config::Validate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = toml::from_str::<edge_agent::config::AgentConfig>(text) {
        let _ = config.validate();
    }
    if let Ok(config) = toml::from_str::<query_service::QueryConfig>(text) {
        let _ = config.validate();
    }
    if let Ok(config) = toml::from_str::<broker_bridge::config::BridgeConfig>(text) {
        let _ = config.validate();
    }
});
