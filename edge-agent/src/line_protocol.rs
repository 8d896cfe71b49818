//! InfluxDB line protocol, read into Timestream multi-measure records. Pure: text in, records out.
//!
//! `measurement[,tag=value…] field=value[,field=value…] [timestamp]` becomes one [`Record`]:
//! the measurement is the `measure_name`, tags are dimensions, fields are the MULTI values
//! (`1.5` → DOUBLE, `12i` / `12u` → BIGINT, `"text"` → VARCHAR, `t`/`true`/`f`/`false` →
//! BOOLEAN), the timestamp is read in the request's [`Precision`] (nanoseconds by default) and
//! a line without one takes the receiver's clock. Escapes: `\,` and `\ ` in measurements; `\,`,
//! `\=` and `\ ` in tag keys, tag values and field keys; `\"` and `\\` inside string fields.
//! Blank lines and `#` comments are skipped. Quotas are not checked here: the caller validates.

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};

/// The unit of line-protocol timestamps (`?precision=ns|us|ms|s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    pub fn parse(text: &str) -> Option<Precision> {
        let precision = match text {
            "ns" | "n" => Precision::Nanoseconds,
            "us" | "u" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            _ => return None,
        };
        Some(precision)
    }

    fn nanoseconds(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
        }
    }
}

/// A line that is not line protocol; `line` counts from 1.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct LineProtocolError {
    pub line: usize,
    pub kind: LineErrorKind,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineErrorKind {
    #[error("the body is not valid UTF-8")]
    NotUtf8,
    #[error("missing measurement")]
    MissingMeasurement,
    #[error("tag {key:?} has no value")]
    MissingTagValue { key: String },
    #[error("empty tag key")]
    EmptyTagKey,
    #[error("missing fields (need at least one field=value after the tags)")]
    MissingFields,
    #[error("empty field key")]
    EmptyFieldKey,
    #[error("field {key:?} has no value")]
    MissingFieldValue { key: String },
    #[error("field {key:?}: cannot read value {value:?} (float, 12i, 12u, \"string\", t/f/true/false)")]
    InvalidFieldValue { key: String, value: String },
    #[error("field {key:?}: string value has no closing quote")]
    UnterminatedString { key: String },
    #[error("invalid timestamp {0:?}")]
    InvalidTimestamp(String),
    #[error("timestamp {0} does not fit in nanoseconds")]
    TimestampOverflow(i64),
}

/// Reads every line of `body`. Lines without a timestamp get `now_ns`. Stops at the first bad
/// line, naming it.
/// How many records `body` holds at most: its lines that are neither blank nor comments (each
/// other line is one record, or an error). Counted without decoding anything.
pub fn line_count(body: &[u8]) -> usize {
    body.split(|&b| b == b'\n').filter(|line| !matches!(line.iter().find(|b| !b.is_ascii_whitespace()), None | Some(b'#'))).count()
}

pub fn parse(body: &[u8], precision: Precision, now_ns: i64) -> Result<Vec<Record>, LineProtocolError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = 1 + body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        LineProtocolError { line, kind: LineErrorKind::NotUtf8 }
    })?;
    let mut records = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let record = parse_line(line, precision, now_ns).map_err(|kind| LineProtocolError { line: index + 1, kind })?;
        records.push(record);
    }
    Ok(records)
}

/// Characters a backslash escapes in measurements.
const MEASUREMENT_ESCAPES: &[char] = &[',', ' ', '\\'];
/// Characters a backslash escapes in tag keys, tag values and field keys.
const KEY_ESCAPES: &[char] = &[',', '=', ' ', '\\'];

fn parse_line(line: &str, precision: Precision, now_ns: i64) -> Result<Record, LineErrorKind> {
    let (measure_name, mut rest) = take_until(line, &[',', ' '], MEASUREMENT_ESCAPES);
    if measure_name.is_empty() {
        return Err(LineErrorKind::MissingMeasurement);
    }
    let mut dimensions = Vec::new();
    while let Some(after_comma) = rest.strip_prefix(',') {
        let (dimension, after) = parse_tag(after_comma)?;
        dimensions.push(dimension);
        rest = after;
    }
    let rest = rest.trim_start_matches(' ');
    let (mut values, rest) = parse_fields(rest)?;
    let time_ns = parse_timestamp(rest.trim_matches(' '), precision, now_ns)?;
    dimensions.sort();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Record { dimensions, measure_name, value: MeasureValue::Multi(values), time_ns, version: 1 })
}

fn parse_tag(text: &str) -> Result<(Dimension, &str), LineErrorKind> {
    let (name, rest) = take_until(text, &['=', ',', ' '], KEY_ESCAPES);
    if name.is_empty() {
        return Err(LineErrorKind::EmptyTagKey);
    }
    let Some(rest) = rest.strip_prefix('=') else { return Err(LineErrorKind::MissingTagValue { key: name }) };
    let (value, rest) = take_until(rest, &[',', ' '], KEY_ESCAPES);
    if value.is_empty() {
        return Err(LineErrorKind::MissingTagValue { key: name });
    }
    Ok((Dimension { name, value }, rest))
}

/// Reads `key=value[,key=value…]` up to the space before the timestamp (or the end).
fn parse_fields(mut text: &str) -> Result<(Vec<(String, Scalar)>, &str), LineErrorKind> {
    if text.is_empty() {
        return Err(LineErrorKind::MissingFields);
    }
    let mut values = Vec::new();
    loop {
        let (key, rest) = take_until(text, &['=', ',', ' '], KEY_ESCAPES);
        if key.is_empty() {
            return Err(LineErrorKind::EmptyFieldKey);
        }
        let Some(rest) = rest.strip_prefix('=') else { return Err(LineErrorKind::MissingFieldValue { key }) };
        let (value, rest) = if rest.starts_with('"') {
            let (text, rest) = take_quoted(&rest[1..]).ok_or_else(|| LineErrorKind::UnterminatedString { key: key.clone() })?;
            (Scalar::Varchar(text), rest)
        } else {
            let end = rest.find([',', ' ']).unwrap_or(rest.len());
            let raw = &rest[..end];
            if raw.is_empty() {
                return Err(LineErrorKind::MissingFieldValue { key });
            }
            let value = parse_field_value(raw).ok_or_else(|| LineErrorKind::InvalidFieldValue { key: key.clone(), value: raw.into() })?;
            (value, &rest[end..])
        };
        values.push((key, value));
        match rest.strip_prefix(',') {
            Some(next) => text = next,
            None => return Ok((values, rest)),
        }
    }
}

fn parse_field_value(raw: &str) -> Option<Scalar> {
    if let Some(int) = raw.strip_suffix('i') {
        return int.parse().ok().map(Scalar::Bigint);
    }
    if let Some(unsigned) = raw.strip_suffix('u') {
        return unsigned.parse::<u64>().ok().and_then(|v| i64::try_from(v).ok()).map(Scalar::Bigint);
    }
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(Scalar::Boolean(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(Scalar::Boolean(false)),
        _ => {}
    }
    let starts_like_a_number = raw.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.'));
    raw.parse::<f64>().ok().filter(|v| v.is_finite() && starts_like_a_number).map(Scalar::Double)
}

fn parse_timestamp(text: &str, precision: Precision, now_ns: i64) -> Result<i64, LineErrorKind> {
    if text.is_empty() {
        return Ok(now_ns);
    }
    let value: i64 = text.parse().map_err(|_| LineErrorKind::InvalidTimestamp(text.into()))?;
    value.checked_mul(precision.nanoseconds()).ok_or(LineErrorKind::TimestampOverflow(value))
}

/// Takes text up to the first unescaped `stops` character, resolving `\c` for `c` in `escapes`
/// (any other backslash is kept as it is).
fn take_until<'a>(text: &'a str, stops: &[char], escapes: &[char]) -> (String, &'a str) {
    let mut out = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '\\' {
            if let Some(&(_, next)) = chars.peek() {
                if escapes.contains(&next) {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
        } else if stops.contains(&c) {
            return (out, &text[at..]);
        }
        out.push(c);
    }
    (out, "")
}

/// Takes a string field's text after its opening quote, up to the closing one; `None` if there
/// is none.
fn take_quoted(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[at + 1..])),
            '\\' => match chars.next()? {
                (_, escaped @ ('"' | '\\')) => out.push(escaped),
                (_, other) => {
                    out.push('\\');
                    out.push(other);
                }
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    /// One line per record: `measure_name dims=[k=v,…] values=[k=TYPE:v,…] time=N`.
    fn render(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| {
                let dims: Vec<String> = r.dimensions.iter().map(|d| format!("{}={}", d.name, d.value)).collect();
                let MeasureValue::Multi(values) = &r.value else { panic!("line protocol gives MULTI records") };
                let values: Vec<String> = values
                    .iter()
                    .map(|(name, v)| match v {
                        Scalar::Double(v) => format!("{name}=DOUBLE:{v}"),
                        Scalar::Bigint(v) => format!("{name}=BIGINT:{v}"),
                        Scalar::Varchar(v) => format!("{name}=VARCHAR:{v}"),
                        Scalar::Boolean(v) => format!("{name}=BOOLEAN:{v}"),
                        Scalar::Timestamp(v) => format!("{name}=TIMESTAMP:{v}"),
                    })
                    .collect();
                format!("{} dims=[{}] values=[{}] time={}", r.measure_name, dims.join(","), values.join(","), r.time_ns)
            })
            .collect()
    }

    fn check(input: &str, expected: &[&str]) {
        check_with(input, Precision::Nanoseconds, expected);
    }

    fn check_with(input: &str, precision: Precision, expected: &[&str]) {
        let records = parse(input.as_bytes(), precision, NOW).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(render(&records), expected, "input {input:?}");
    }

    fn check_err(input: &str, expected: &str) {
        let err = parse(input.as_bytes(), Precision::Nanoseconds, NOW).expect_err(input);
        assert_eq!(err.to_string(), expected, "input {input:?}");
    }

    #[test]
    fn field_types() {
        check("m f=1.5 10", &["m dims=[] values=[f=DOUBLE:1.5] time=10"]);
        check("m f=1 10", &["m dims=[] values=[f=DOUBLE:1] time=10"]);
        check("m f=-2.5e3 10", &["m dims=[] values=[f=DOUBLE:-2500] time=10"]);
        check("m f=12i 10", &["m dims=[] values=[f=BIGINT:12] time=10"]);
        check("m f=-12i 10", &["m dims=[] values=[f=BIGINT:-12] time=10"]);
        check("m f=12u 10", &["m dims=[] values=[f=BIGINT:12] time=10"]);
        check(r#"m f="hello world" 10"#, &["m dims=[] values=[f=VARCHAR:hello world] time=10"]);
        check("m a=t,b=T,c=true,d=True,e=TRUE 10", &["m dims=[] values=[a=BOOLEAN:true,b=BOOLEAN:true,c=BOOLEAN:true,d=BOOLEAN:true,e=BOOLEAN:true] time=10"]);
        check("m a=f,b=F,c=false,d=False,e=FALSE 10", &["m dims=[] values=[a=BOOLEAN:false,b=BOOLEAN:false,c=BOOLEAN:false,d=BOOLEAN:false,e=BOOLEAN:false] time=10"]);
    }

    #[test]
    fn tags_fields_and_order() {
        check(
            "weather,site=b,room=a temp=21.5,hum=40i 1700000000000000000",
            &["weather dims=[room=a,site=b] values=[hum=BIGINT:40,temp=DOUBLE:21.5] time=1700000000000000000"],
        );
        check(
            "a x=1 1\n\n# a comment\n  b x=2 2\r\nc x=3 3\n",
            &["a dims=[] values=[x=DOUBLE:1] time=1", "b dims=[] values=[x=DOUBLE:2] time=2", "c dims=[] values=[x=DOUBLE:3] time=3"],
        );
    }

    #[test]
    fn escapes() {
        check(r"my\ meas\,ure f=1 1", &[r"my meas,ure dims=[] values=[f=DOUBLE:1] time=1"]);
        check(r"m,t\ k\=\,=v\ a\,l\=ue f=1 1", &[r"m dims=[t k=,=v a,l=ue] values=[f=DOUBLE:1] time=1"]);
        check(r"m f\ k\,e\=y=1 1", &[r"m dims=[] values=[f k,e=y=DOUBLE:1] time=1"]);
        check(r#"m s="say \"hi\", a\\b c=d" 1"#, &[r#"m dims=[] values=[s=VARCHAR:say "hi", a\b c=d] time=1"#]);
        check(r#"m s="a\nb" 1"#, &[r#"m dims=[] values=[s=VARCHAR:a\nb] time=1"#]);
        check(r"m\x f=1 1", &[r"m\x dims=[] values=[f=DOUBLE:1] time=1"]);
        check(r#"m s="",n=1i 1"#, &["m dims=[] values=[n=BIGINT:1,s=VARCHAR:] time=1"]);
    }

    #[test]
    fn timestamps_and_precision() {
        check("m f=1", &[&format!("m dims=[] values=[f=DOUBLE:1] time={NOW}")]);
        check("m f=1 ", &[&format!("m dims=[] values=[f=DOUBLE:1] time={NOW}")]);
        check("m f=1 -5", &["m dims=[] values=[f=DOUBLE:1] time=-5"]);
        check_with("m f=1 1700000000", Precision::Seconds, &["m dims=[] values=[f=DOUBLE:1] time=1700000000000000000"]);
        check_with("m f=1 1700000000000", Precision::Milliseconds, &["m dims=[] values=[f=DOUBLE:1] time=1700000000000000000"]);
        check_with("m f=1 1700000000000000", Precision::Microseconds, &["m dims=[] values=[f=DOUBLE:1] time=1700000000000000000"]);
        assert_eq!(Precision::parse("ms"), Some(Precision::Milliseconds));
        assert_eq!(Precision::parse("h"), None);
    }

    #[test]
    fn errors_name_the_line() {
        check_err("m f=1 1\n,t=1 f=1", "line 2: missing measurement");
        check_err("m,t f=1", "line 1: tag \"t\" has no value");
        check_err("m,t= f=1", "line 1: tag \"t\" has no value");
        check_err("m,=v f=1", "line 1: empty tag key");
        check_err("m", "line 1: missing fields (need at least one field=value after the tags)");
        check_err("m,t=v", "line 1: missing fields (need at least one field=value after the tags)");
        check_err("m f", "line 1: field \"f\" has no value");
        check_err("m f=", "line 1: field \"f\" has no value");
        check_err("m f=1,", "line 1: empty field key");
        check_err("m f=abc", "line 1: field \"f\": cannot read value \"abc\" (float, 12i, 12u, \"string\", t/f/true/false)");
        check_err("m f=1.5i", "line 1: field \"f\": cannot read value \"1.5i\" (float, 12i, 12u, \"string\", t/f/true/false)");
        check_err("m f=NaN", "line 1: field \"f\": cannot read value \"NaN\" (float, 12i, 12u, \"string\", t/f/true/false)");
        check_err("m f=18446744073709551615u", "line 1: field \"f\": cannot read value \"18446744073709551615u\" (float, 12i, 12u, \"string\", t/f/true/false)");
        check_err("a f=1\n\nm f=\"open 1", "line 3: field \"f\": string value has no closing quote");
        check_err("m f=1 12x", "line 1: invalid timestamp \"12x\"");
        check_err("m f=1 1 2", "line 1: invalid timestamp \"1 2\"");
        let err = parse(b"m f=1 9223372036854775807", Precision::Seconds, NOW).unwrap_err();
        assert_eq!(err.to_string(), "line 1: timestamp 9223372036854775807 does not fit in nanoseconds");
        let err = parse(b"m f=1 1\nm f=\"\xff\" 1", Precision::Nanoseconds, NOW).unwrap_err();
        assert_eq!(err.to_string(), "line 2: the body is not valid UTF-8");
    }
}
