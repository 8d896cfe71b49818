//! Bundles: many devices' envelopes in one Kafka message.
//!
//! A Kafka broker pays per message as well as per byte, and ten thousand devices each publishing
//! one reading a second would be ten thousand messages a second. The broker-bridge therefore
//! packs the envelopes bound for one partition into a bundle: a CBOR array of byte strings, each
//! the CBOR encoding of one envelope, unchanged. A consumer decodes the envelopes one by one, so
//! a bad one is rejected alone.
//!
//! The framing is written by hand (it is two CBOR headers), which lets [`split_bundle`] hand out
//! slices of the message instead of copies.

use crate::envelope::{ContentType, DecodeError};

/// The Kafka `content-type` of a bundle.
pub const BUNDLE_MIME: &str = "application/vnd.lodestone.bundle.v1+cbor";

/// The Kafka header of a bundle whose envelopes came with traces: each envelope's trace context
/// (`traceparent`) in order, comma-separated, empty for an envelope without.
pub const TRACEPARENTS_HEADER: &str = "traceparents";

/// CBOR major types used by the framing.
const MAJOR_BYTES: u8 = 2;
const MAJOR_ARRAY: u8 = 4;

/// Frames already-encoded envelopes as one bundle.
pub fn encode_bundle<E: AsRef<[u8]>>(envelopes: &[E]) -> Vec<u8> {
    let bytes: usize = envelopes.iter().map(|e| e.as_ref().len() + 9).sum();
    let mut out = Vec::with_capacity(9 + bytes);
    push_head(&mut out, MAJOR_ARRAY, envelopes.len() as u64);
    for envelope in envelopes {
        let envelope = envelope.as_ref();
        push_head(&mut out, MAJOR_BYTES, envelope.len() as u64);
        out.extend_from_slice(envelope);
    }
    out
}

/// The encoded envelopes of a bundle, in order (decode each with `Envelope::decode` as CBOR).
/// Fails if `bytes` is not a definite-length array of byte strings with nothing after it.
pub fn split_bundle(bytes: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut rest = bytes;
    let count = take_head(&mut rest, MAJOR_ARRAY, "an array")?;
    // Every item takes at least one byte: a count beyond that is a lie, not an allocation.
    if count > rest.len() as u64 {
        return Err(malformed(format!("bundle claims {count} envelopes in {} bytes", rest.len())));
    }
    let mut envelopes = Vec::with_capacity(count as usize);
    for index in 0..count {
        let len = take_head(&mut rest, MAJOR_BYTES, "a byte string")?;
        let Some(envelope) = usize::try_from(len).ok().and_then(|len| rest.get(..len)) else {
            return Err(malformed(format!("envelope {index} of the bundle is cut short")));
        };
        envelopes.push(envelope);
        rest = &rest[envelope.len()..];
    }
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes after the bundle's last envelope", rest.len())));
    }
    Ok(envelopes)
}

/// The encoded envelopes of one message on the ingest topic, each with its encoding: a bundle's
/// envelopes (CBOR) when `content_type` is [`BUNDLE_MIME`], else the message itself as one
/// envelope of its content type (sniffed when absent or unknown).
pub fn split_message<'a>(payload: &'a [u8], content_type: Option<&str>) -> Result<Vec<(&'a [u8], Option<ContentType>)>, DecodeError> {
    let mime = content_type.map(|mime| mime.split(';').next().unwrap_or("").trim());
    if mime == Some(BUNDLE_MIME) {
        return Ok(split_bundle(payload)?.into_iter().map(|envelope| (envelope, Some(ContentType::Cbor))).collect());
    }
    Ok(vec![(payload, content_type.and_then(ContentType::from_mime))])
}

fn malformed(detail: String) -> DecodeError {
    DecodeError::Malformed { encoding: "bundle", detail }
}

/// Appends a CBOR head: the major type and the shortest encoding of `value`.
fn push_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let major = major << 5;
    match value {
        0..=23 => out.push(major | value as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, value as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Reads a CBOR head of the `major` type off the front of `rest` and returns its value.
fn take_head(rest: &mut &[u8], major: u8, what: &str) -> Result<u64, DecodeError> {
    let Some((&first, tail)) = rest.split_first() else {
        return Err(malformed(format!("expected {what}, found the end")));
    };
    if first >> 5 != major {
        return Err(malformed(format!("expected {what}, found CBOR major type {}", first >> 5)));
    }
    let width = match first & 0x1f {
        small @ 0..=23 => {
            *rest = tail;
            return Ok(u64::from(small));
        }
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return Err(malformed(format!("expected {what} of definite length"))),
    };
    let Some(be) = tail.get(..width) else {
        return Err(malformed(format!("{what}'s length is cut short")));
    };
    *rest = &tail[width..];
    Ok(be.iter().fold(0, |value, byte| value << 8 | u64::from(*byte)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_every_head_width() {
        for len in [0, 1, 23, 24, 255, 256, 65_535, 65_536] {
            let envelopes = vec![vec![7u8; len], vec![], vec![1, 2, 3]];
            let bundle = encode_bundle(&envelopes);
            let split = split_bundle(&bundle).unwrap();
            assert_eq!(split, envelopes.iter().map(Vec::as_slice).collect::<Vec<_>>(), "len {len}");
        }
        let many: Vec<Vec<u8>> = (0..300u16).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(split_bundle(&encode_bundle(&many)).unwrap().len(), 300);
        assert_eq!(split_bundle(&encode_bundle::<Vec<u8>>(&[])).unwrap().len(), 0);
    }

    #[test]
    fn is_what_a_cbor_decoder_reads() {
        let bundle = encode_bundle(&[b"ab".to_vec(), vec![0u8; 300]]);
        let value: ciborium::Value = ciborium::from_reader(bundle.as_slice()).unwrap();
        let items = value.as_array().unwrap();
        assert_eq!(items[0].as_bytes().unwrap(), b"ab");
        assert_eq!(items[1].as_bytes().unwrap().len(), 300);
    }

    #[test]
    fn messages_split_by_their_content_type() {
        let bundle = encode_bundle(&[b"ab".to_vec(), b"c".to_vec()]);
        let cbor = Some(ContentType::Cbor);
        assert_eq!(split_message(&bundle, Some(BUNDLE_MIME)).unwrap(), vec![(&b"ab"[..], cbor), (&b"c"[..], cbor)]);
        assert_eq!(split_message(&bundle, Some("application/vnd.lodestone.bundle.v1+cbor; x=1")).unwrap().len(), 2);
        assert_eq!(split_message(b"x", Some("application/cbor")).unwrap(), vec![(&b"x"[..], cbor)]);
        assert_eq!(split_message(b"x", Some("text/plain")).unwrap(), vec![(&b"x"[..], None)]);
        assert_eq!(split_message(b"x", None).unwrap(), vec![(&b"x"[..], None)]);
        assert!(split_message(b"x", Some(BUNDLE_MIME)).is_err());
    }

    #[test]
    fn malformed_bundles_are_refused() {
        let good = encode_bundle(&[b"abc".to_vec(), b"de".to_vec()]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("a map", vec![0xa0]),
            ("an indefinite array", vec![0x9f, 0xff]),
            ("a text item", vec![0x81, 0x61, b'a']),
            ("cut short", good[..good.len() - 1].to_vec()),
            ("trailing bytes", [good.clone(), vec![0]].concat()),
            ("a count beyond the bytes", vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ("a length beyond the bytes", vec![0x81, 0x5a, 0xff, 0xff, 0xff, 0xff]),
            ("a cut head", vec![0x81, 0x59, 0x01]),
        ];
        for (name, bytes) in cases {
            let error = split_bundle(&bytes).expect_err(name);
            assert!(matches!(error, DecodeError::Malformed { encoding: "bundle", .. }), "{name}: {error}");
        }
    }
}
