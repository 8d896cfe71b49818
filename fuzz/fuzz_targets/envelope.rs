//! The envelope decoder (CBOR and JSON, sniffed or declared) on any bytes: it returns an envelope
//! or an error, never panics; what it accepts encodes and decodes back to the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lodestone_model::{ContentType, Envelope, Limits};

const NOW: i64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let declared = match selector % 3 {
        0 => None,
        1 => Some(ContentType::Cbor),
        _ => Some(ContentType::Json),
    };
    let Ok(envelope) = Envelope::decode(bytes, declared, &Limits::default(), NOW) else { return };
    let _ = envelope.last_seq();
    for encoded in [envelope.to_cbor(), envelope.to_json()] {
        let again = Envelope::decode(&encoded, None, &Limits::default(), NOW).expect("an encoded envelope decodes");
        assert_eq!(again.records, envelope.records, "records survive a round trip");
    }
});
