//! A Kafka message as the ingest worker reads it: a bundle of envelopes (or one envelope), split
//! and each part decoded. Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lodestone_model::{split_message, Envelope, Limits, BUNDLE_MIME};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let content_type = [Some(BUNDLE_MIME), Some("application/json"), Some("application/cbor"), None][usize::from(selector % 4)];
    let Ok(parts) = split_message(bytes, content_type) else { return };
    for (part, content_type) in parts {
        let _ = Envelope::decode(part, content_type, &Limits::default(), 1_700_000_000_000_000_000);
    }
});
