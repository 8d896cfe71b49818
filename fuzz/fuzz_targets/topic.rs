//! MQTT data topics: a topic that parses is rebuilt exactly from its parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lodestone_model::topic::{data_topic, parse_data_topic};

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else { return };
    if let Some(parsed) = parse_data_topic(topic) {
        assert_eq!(data_topic(&parsed.database, &parsed.table, &parsed.device_id), topic);
    }
});
