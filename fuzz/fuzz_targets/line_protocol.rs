//! The edge agent's line protocol: parsed or refused, never a panic; the record bound's count
//! taken before parsing is never below the number of records parsed.
#![no_main]

use edge_agent::line_protocol::{line_count, parse, Precision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let precision = [Precision::Nanoseconds, Precision::Microseconds, Precision::Milliseconds, Precision::Seconds][usize::from(selector % 4)];
    if let Ok(records) = parse(body, precision, 1_700_000_000_000_000_000) {
        assert!(records.len() <= line_count(body), "{} records from {} lines", records.len(), line_count(body));
    }
});
