//! Reading a value without a type in mind. The envelope reads each record's fields as [`Loose`]
//! values and converts them afterwards, so that a field of the wrong type (a string `time`, a
//! `null` dimension) rejects its own record and not the whole envelope: once serde's typed
//! deserializer fails, the rest of the payload cannot be read.
//!
//! Bounded: a list is counted, not kept (no field of a record is a list), and nesting is bounded
//! by the format's own recursion limit (serde_json 128, ciborium 256).

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Any value of a JSON or CBOR document, as far as a record needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Loose {
    Null,
    Bool(bool),
    /// Every integer either format can carry (CBOR reaches -2^64).
    Int(i128),
    Float(f64),
    Text(String),
    Bytes,
    /// A list's length; its items are read and dropped.
    List(usize),
    /// A map's entries in the order they came, duplicates kept so that they can be refused.
    Map(Vec<(Loose, Loose)>),
}

impl Loose {
    /// What this is, for an error message: "a string", "null", …
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Loose::Null => "null",
            Loose::Bool(_) => "a boolean",
            Loose::Int(_) => "an integer",
            Loose::Float(_) => "a number with a fraction",
            Loose::Text(_) => "a string",
            Loose::Bytes => "a byte string",
            Loose::List(_) => "a list",
            Loose::Map(_) => "a map",
        }
    }

    /// The text of a string, or an error naming `what` and the kind found instead.
    pub(crate) fn into_text(self, what: &str) -> Result<String, String> {
        match self {
            Loose::Text(text) => Ok(text),
            other => Err(format!("{what} must be a string, not {}", other.kind())),
        }
    }

    /// The map's entries with string keys, in the order they came; `what` names the map in errors.
    pub(crate) fn into_text_keyed(self, what: &str) -> Result<Vec<(String, Loose)>, String> {
        let Loose::Map(entries) = self else {
            return Err(format!("{what} must be a map, not {}", self.kind()));
        };
        entries.into_iter().map(|(key, value)| Ok((key.into_text(&format!("a key of {what}"))?, value))).collect()
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Loose, D::Error> {
        deserializer.deserialize_any(LooseVisitor)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Loose, E> {
        Ok(Loose::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
        Ok(Loose::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
        Ok(Loose::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Loose, E> {
        Ok(Loose::Int(v))
    }

    /// Past `i128::MAX` no format produces an integer; kept as the nearest double.
    fn visit_u128<E>(self, v: u128) -> Result<Loose, E> {
        Ok(i128::try_from(v).map_or(Loose::Float(v as f64), Loose::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
        Ok(Loose::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
        Ok(Loose::Text(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Loose, E> {
        Ok(Loose::Text(v))
    }

    fn visit_bytes<E>(self, _: &[u8]) -> Result<Loose, E> {
        Ok(Loose::Bytes)
    }

    fn visit_none<E>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }

    fn visit_unit<E>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Loose, D::Error> {
        Loose::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
        let mut length = 0usize;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            length = length.saturating_add(1);
        }
        Ok(Loose::List(length))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
        while let Some((key, value)) = map.next_entry::<Loose, Loose>()? {
            entries.push((key, value));
        }
        Ok(Loose::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Loose {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn reads_every_kind_and_keeps_duplicate_keys() {
        assert_eq!(json("null"), Loose::Null);
        assert_eq!(json("18446744073709551615"), Loose::Int(u64::MAX.into()));
        assert_eq!(json("-1.5"), Loose::Float(-1.5));
        assert_eq!(json("[1, [2, 3], {}]"), Loose::List(3));
        let map = json(r#"{"a": "x", "a": 2}"#);
        assert_eq!(map, Loose::Map(vec![(Loose::Text("a".into()), Loose::Text("x".into())), (Loose::Text("a".into()), Loose::Int(2))]));
    }

    #[test]
    fn nesting_past_the_format_limit_is_an_error_not_a_stack_overflow() {
        // serde_json skips what it ignores with a loop of its own: a deep list is one list.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(serde_json::from_str::<Loose>(&deep).unwrap(), Loose::List(1));
        let deep_map = r#"{"a":"#.repeat(100_000) + "1" + &"}".repeat(100_000);
        assert!(serde_json::from_str::<Loose>(&deep_map).is_err());
        let mut cbor = vec![0x81u8; 100_000]; // arrays of one element, nested
        cbor.push(0x00);
        assert!(ciborium::from_reader::<Loose, _>(cbor.as_slice()).is_err());
    }
}
