//! What a device may do on MQTT, decided packet by packet from the identity its certificate
//! proved (pure logic: bytes in, a verdict out; the TLS front in `front.rs` moves the bytes).
//!
//! A device whose identity is `ID`:
//! - connects only with client id `ID` (else CONNACK "not authorized" and the connection closes);
//! - publishes only to `lodestone/v1/{database}/{table}/ID`, where its [`Policy`] allows that
//!   database and table, never retained (its will message likewise);
//! - subscribes only to `lodestone/v1/ack/ID`.
//!
//! Anything else closes the connection (MQTT 3.1.1 has no way to refuse one publish), and is
//! counted by action. Only client-to-broker packets pass through here; the broker's answers
//! go back untouched.

use lodestone_model::topic::{ack_topic, parse_data_topic, DataTopic};

/// MQTT control packet types (the high nibble of the first byte).
const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;

/// Why a packet was refused, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// CONNECT with another client id than the certificate's identity.
    ClientId,
    /// PUBLISH (or a will) on a topic that is not the device's own data topic.
    Topic,
    /// PUBLISH (or a will) to a database and table the policy does not allow.
    Policy,
    /// A retained PUBLISH or will.
    Retain,
    /// A PUBLISH on a new topic while the broker holds `mqtt.topics_max` topics.
    Topics,
    /// SUBSCRIBE to anything but the device's own ack topic.
    Subscribe,
    /// A packet that does not parse, or comes before CONNECT, or a second CONNECT.
    Protocol,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::ClientId => "client_id",
            Denied::Topic => "topic",
            Denied::Policy => "policy",
            Denied::Retain => "retain",
            Denied::Topics => "topics_max",
            Denied::Subscribe => "subscribe",
            Denied::Protocol => "protocol",
        }
    }
}

/// What to do with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the broker.
    Forward,
    /// Close the connection; first send `reply` to the device if there is one (a CONNACK).
    Refuse { denied: Denied, detail: String, reply: Option<Vec<u8>> },
}

/// Which databases and tables each device may write: rules of device-id patterns and
/// `database/table` patterns, `*` matching any run of characters (like AWS IoT policies with
/// `${iot:ClientId}`, the device's own id is always part of the topic).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Device ids this rule is for, e.g. `["truck-*"]`; `["*"]` for every device.
    pub devices: Vec<String>,
    /// What they may write: `"database/table"`, e.g. `"fleet/trucks"` or `"fleet/*"`.
    pub write: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    rules: Vec<PolicyRule>,
}

impl Policy {
    pub fn new(rules: Vec<PolicyRule>) -> Policy {
        Policy { rules }
    }

    /// Whether `device` may write into `database`.`table`: some rule for the device allows it.
    pub fn may_write(&self, device: &str, database: &str, table: &str) -> bool {
        self.rules.iter().filter(|rule| rule.devices.iter().any(|pattern| glob(pattern, device))).any(|rule| {
            rule.write.iter().any(|target| match target.split_once('/') {
                Some((db, tb)) => glob(db, database) && glob(tb, table),
                None => false,
            })
        })
    }
}

/// The distinct data topics devices have published on, up to `mqtt.topics_max`. rumqttd keeps
/// state for every topic it has seen and never forgets one, so the topics devices can create are
/// bounded here, before rumqttd sees them: past the bound, a publish on a new topic is refused
/// (and its connection closed) while the known topics work on.
#[derive(Debug)]
pub struct TopicBook {
    known: std::sync::Mutex<std::collections::HashSet<String>>,
    max: usize,
}

impl TopicBook {
    pub fn new(max: usize) -> TopicBook {
        TopicBook { known: Default::default(), max }
    }

    /// Whether `topic` may be published on: it is known, or there is room for it (and it is
    /// known from now on).
    pub fn admit(&self, topic: &str) -> bool {
        let mut known = self.known.lock().expect("topic book lock");
        if known.contains(topic) {
            return true;
        }
        if known.len() >= self.max {
            return false;
        }
        known.insert(topic.to_owned());
        true
    }
}

/// `*`-only wildcard match, in linear time for patterns with one `*` and at most quadratic
/// otherwise (the classic two-pointer walk, no backtracking blow-up).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, star_ti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The gate of one connection: the device's identity and what it has said so far.
#[derive(Debug)]
pub struct Gate {
    device_id: String,
    policy: std::sync::Arc<Policy>,
    topics: std::sync::Arc<TopicBook>,
    /// The MQTT protocol level of the CONNECT (4: 3.1.1, 5: 5.0); `None` before it.
    level: Option<u8>,
}

impl Gate {
    pub fn new(device_id: String, policy: std::sync::Arc<Policy>, topics: std::sync::Arc<TopicBook>) -> Gate {
        Gate { device_id, policy, topics, level: None }
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The verdict on one whole client-to-broker packet.
    pub fn check(&mut self, packet: &[u8]) -> Verdict {
        let Some(&first) = packet.first() else { return protocol("an empty packet") };
        let Some((body_start, _)) = remaining_length(packet) else { return protocol("a packet whose length does not parse") };
        let body = &packet[body_start..];
        match (first >> 4, self.level) {
            (CONNECT, None) => self.connect(body),
            (CONNECT, Some(_)) => protocol("a second CONNECT"),
            (_, None) => protocol("a packet before CONNECT"),
            (PUBLISH, Some(_)) => self.publish(first & 0x01 == 1, body),
            (SUBSCRIBE, Some(level)) => self.subscribe(level, body),
            _ => Verdict::Forward,
        }
    }

    fn connect(&mut self, body: &[u8]) -> Verdict {
        let mut reader = Reader::new(body);
        let parsed = (|| {
            let _protocol = reader.string()?;
            let level = reader.u8()?;
            let flags = reader.u8()?;
            let _keep_alive = reader.u16()?;
            if level == 5 {
                reader.properties()?;
            }
            let client_id = reader.string()?;
            let will = if flags & 0x04 != 0 {
                if level == 5 {
                    reader.properties()?;
                }
                Some((reader.string()?, flags & 0x20 != 0))
            } else {
                None
            };
            Some((level, client_id, will))
        })();
        let Some((level, client_id, will)) = parsed else { return protocol("a CONNECT that does not parse") };
        self.level = Some(level);
        if client_id != self.device_id {
            let detail = format!("client id {client_id:?} is not the certificate's identity {:?}", self.device_id);
            return Verdict::Refuse { denied: Denied::ClientId, detail, reply: Some(not_authorized(level)) };
        }
        if let Some((topic, retain)) = will {
            if let Verdict::Refuse { denied, detail, .. } = self.may_publish(&topic, retain) {
                return Verdict::Refuse { denied, detail: format!("will: {detail}"), reply: Some(not_authorized(level)) };
            }
        }
        Verdict::Forward
    }

    fn publish(&self, retain: bool, body: &[u8]) -> Verdict {
        match Reader::new(body).string() {
            Some(topic) => self.may_publish(&topic, retain),
            None => protocol("a PUBLISH whose topic does not parse"),
        }
    }

    fn may_publish(&self, topic: &str, retain: bool) -> Verdict {
        let refuse = |denied, detail: String| Verdict::Refuse { denied, detail, reply: None };
        let Some(DataTopic { database, table, device_id }) = parse_data_topic(topic) else {
            return refuse(Denied::Topic, format!("{topic:?} is not a data topic lodestone/v1/DATABASE/TABLE/{}", self.device_id));
        };
        if device_id != self.device_id {
            return refuse(Denied::Topic, format!("{topic:?} is another device's topic"));
        }
        if retain {
            return refuse(Denied::Retain, format!("retained publish on {topic:?}"));
        }
        if !self.policy.may_write(&self.device_id, &database, &table) {
            return refuse(Denied::Policy, format!("no policy lets {} write into {database}.{table}", self.device_id));
        }
        if !self.topics.admit(topic) {
            return refuse(Denied::Topics, format!("{topic:?} would be one topic more than mqtt.topics_max ({})", self.topics.max));
        }
        Verdict::Forward
    }

    fn subscribe(&self, level: u8, body: &[u8]) -> Verdict {
        let own = ack_topic(&self.device_id);
        let mut reader = Reader::new(body);
        let parsed = (|| {
            let _packet_id = reader.u16()?;
            if level == 5 {
                reader.properties()?;
            }
            let mut filters = Vec::new();
            while !reader.is_empty() {
                filters.push(reader.string()?);
                let _options = reader.u8()?;
            }
            Some(filters)
        })();
        let Some(filters) = parsed.filter(|f| !f.is_empty()) else { return protocol("a SUBSCRIBE that does not parse") };
        match filters.into_iter().find(|filter| *filter != own) {
            Some(filter) => Verdict::Refuse { denied: Denied::Subscribe, detail: format!("subscribe to {filter:?}; only {own:?} is allowed"), reply: None },
            None => Verdict::Forward,
        }
    }
}

fn protocol(detail: &str) -> Verdict {
    Verdict::Refuse { denied: Denied::Protocol, detail: detail.to_string(), reply: None }
}

/// CONNACK "not authorized": return code 5 in 3.1.1, reason 0x87 in 5.0.
fn not_authorized(level: u8) -> Vec<u8> {
    if level == 5 {
        vec![0x20, 0x03, 0x00, 0x87, 0x00]
    } else {
        vec![0x20, 0x02, 0x00, 0x05]
    }
}

/// Where a packet's body starts and how long it is, from its fixed header; `None` while the
/// length is incomplete or malformed (more than four bytes).
pub fn remaining_length(packet: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    for (i, &byte) in packet.iter().enumerate().skip(1).take(4) {
        length |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Some((i + 1, length));
        }
    }
    None
}

/// Splits a byte stream into whole MQTT packets.
#[derive(Debug, Default)]
pub struct Framer {
    buffer: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a packet of {bytes} bytes, over the {max}-byte bound")]
    TooLarge { bytes: usize, max: usize },
    #[error("a packet length that does not parse")]
    BadLength,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole packet, if one has arrived; a packet over `bytes_max` is an error before
    /// its body is read.
    pub fn next_packet(&mut self, bytes_max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buffer.len() < 2 {
            return Ok(None);
        }
        let Some((start, length)) = remaining_length(&self.buffer) else {
            return if self.buffer.len() >= 5 { Err(FrameError::BadLength) } else { Ok(None) };
        };
        let total = start.checked_add(length).ok_or(FrameError::BadLength)?;
        if total > bytes_max {
            return Err(FrameError::TooLarge { bytes: total, max: bytes_max });
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let rest = self.buffer.split_off(total);
        Ok(Some(std::mem::replace(&mut self.buffer, rest)))
    }
}

/// Reads MQTT's encoded fields from a packet body; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn string(&mut self) -> Option<String> {
        let length = usize::from(self.u16()?);
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    /// Skips MQTT 5 properties (a variable-byte length, then that many bytes).
    fn properties(&mut self) -> Option<()> {
        let mut length = 0usize;
        for shift in 0..4 {
            let byte = self.u8()?;
            length |= usize::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                self.take(length)?;
                return Some(());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(text: &str) -> Vec<u8> {
        let mut out = (text.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut out = vec![first, body.len() as u8];
        out.extend(body);
        out
    }

    fn connect(level: u8, client_id: &str, will: Option<(&str, bool)>) -> Vec<u8> {
        let mut body = string("MQTT");
        body.push(level);
        let mut flags = 0x02;
        if let Some((_, retain)) = will {
            flags |= 0x04 | if retain { 0x20 } else { 0 };
        }
        body.push(flags);
        body.extend([0, 30]);
        if level == 5 {
            body.push(0);
        }
        body.extend(string(client_id));
        if let Some((topic, _)) = will {
            if level == 5 {
                body.push(0);
            }
            body.extend(string(topic));
            body.extend(string("bye"));
        }
        packet(0x10, body)
    }

    fn publish(topic: &str, retain: bool) -> Vec<u8> {
        let mut body = string(topic);
        body.extend([0, 1]);
        body.extend(b"payload");
        packet(0x32 | u8::from(retain), body)
    }

    fn subscribe(level: u8, filters: &[&str]) -> Vec<u8> {
        let mut body = vec![0, 7];
        if level == 5 {
            body.push(0);
        }
        for filter in filters {
            body.extend(string(filter));
            body.push(1);
        }
        packet(0x82, body)
    }

    fn gate() -> Gate {
        gate_with_topics(std::sync::Arc::new(TopicBook::new(100)))
    }

    fn gate_with_topics(topics: std::sync::Arc<TopicBook>) -> Gate {
        let policy = Policy::new(vec![
            PolicyRule { devices: vec!["truck-*".into()], write: vec!["fleet/*".into()] },
            PolicyRule { devices: vec!["*".into()], write: vec!["sim/readings".into()] },
        ]);
        Gate::new("truck-7".into(), std::sync::Arc::new(policy), topics)
    }

    fn denied(verdict: Verdict) -> Option<Denied> {
        match verdict {
            Verdict::Forward => None,
            Verdict::Refuse { denied, .. } => Some(denied),
        }
    }

    #[test]
    fn a_device_connects_only_as_itself() {
        for level in [4, 5] {
            assert_eq!(denied(gate().check(&connect(level, "truck-7", None))), None);
            let verdict = gate().check(&connect(level, "truck-8", None));
            let expected_reply = if level == 5 { vec![0x20, 3, 0, 0x87, 0] } else { vec![0x20, 2, 0, 5] };
            assert!(matches!(verdict, Verdict::Refuse { denied: Denied::ClientId, reply: Some(ref r), .. } if *r == expected_reply), "{verdict:?}");
            // A will on another device's topic, or retained, is refused at CONNECT.
            assert_eq!(denied(gate().check(&connect(level, "truck-7", Some(("lodestone/v1/fleet/trucks/truck-8", false))))), Some(Denied::Topic));
            assert_eq!(denied(gate().check(&connect(level, "truck-7", Some(("lodestone/v1/fleet/trucks/truck-7", true))))), Some(Denied::Retain));
            assert_eq!(denied(gate().check(&connect(level, "truck-7", Some(("lodestone/v1/fleet/trucks/truck-7", false))))), None);
        }
    }

    #[test]
    fn publishes_only_to_its_own_topic_where_the_policy_allows() {
        let mut gate = gate();
        assert_eq!(denied(gate.check(&publish("lodestone/v1/fleet/trucks/truck-7", false))), Some(Denied::Protocol), "before CONNECT");
        assert_eq!(denied(gate.check(&connect(4, "truck-7", None))), None);
        let check = |gate: &mut Gate, topic: &str, retain: bool| denied(gate.check(&publish(topic, retain)));
        assert_eq!(check(&mut gate, "lodestone/v1/fleet/trucks/truck-7", false), None);
        assert_eq!(check(&mut gate, "lodestone/v1/sim/readings/truck-7", false), None);
        assert_eq!(check(&mut gate, "lodestone/v1/fleet/trucks/truck-8", false), Some(Denied::Topic));
        assert_eq!(check(&mut gate, "lodestone/v1/ack/truck-7", false), Some(Denied::Topic), "acks come from the bridge only");
        assert_eq!(check(&mut gate, "lodestone/v1/plant/boilers/truck-7", false), Some(Denied::Policy));
        assert_eq!(check(&mut gate, "lodestone/v1/fleet/trucks/truck-7", true), Some(Denied::Retain));
        assert_eq!(check(&mut gate, "#", false), Some(Denied::Topic));
        assert_eq!(denied(gate.check(&connect(4, "truck-7", None))), Some(Denied::Protocol), "a second CONNECT");
        // PINGREQ and PUBACK pass.
        assert_eq!(denied(gate.check(&[0xc0, 0x00])), None);
        assert_eq!(denied(gate.check(&[0x40, 0x02, 0x00, 0x01])), None);
    }

    /// Regression: rumqttd keeps state for every distinct topic forever, so a device could
    /// create them without end (one per table name). Past `mqtt.topics_max` a new topic is
    /// refused; the known ones, and every other device's, work on.
    #[test]
    fn new_topics_past_the_bound_are_refused_and_known_ones_still_pass() {
        let topics = std::sync::Arc::new(TopicBook::new(2));
        let mut gate = gate_with_topics(topics.clone());
        assert_eq!(denied(gate.check(&connect(4, "truck-7", None))), None);
        let check = |gate: &mut Gate, topic: &str| denied(gate.check(&publish(topic, false)));
        assert_eq!(check(&mut gate, "lodestone/v1/fleet/a/truck-7"), None);
        assert_eq!(check(&mut gate, "lodestone/v1/fleet/b/truck-7"), None, "at the bound");
        assert_eq!(check(&mut gate, "lodestone/v1/fleet/c/truck-7"), Some(Denied::Topics), "one past it");
        assert_eq!(check(&mut gate, "lodestone/v1/fleet/a/truck-7"), None, "a known topic");
        let mut other = gate_with_topics(topics);
        assert_eq!(denied(other.check(&connect(4, "truck-7", None))), None);
        assert_eq!(check(&mut other, "lodestone/v1/fleet/b/truck-7"), None, "known to every session");
    }

    #[test]
    fn subscribes_only_to_its_own_acks() {
        for level in [4, 5] {
            let mut gate = gate();
            gate.check(&connect(level, "truck-7", None));
            assert_eq!(denied(gate.check(&subscribe(level, &["lodestone/v1/ack/truck-7"]))), None);
            for filter in ["#", "lodestone/v1/ack/+", "lodestone/v1/ack/truck-8", "lodestone/v1/fleet/trucks/truck-7"] {
                assert_eq!(denied(gate.check(&subscribe(level, &["lodestone/v1/ack/truck-7", filter]))), Some(Denied::Subscribe), "{filter}");
            }
        }
    }

    #[test]
    fn the_framer_splits_a_stream_into_packets_and_bounds_them() {
        let mut framer = Framer::default();
        let stream: Vec<u8> = [connect(4, "truck-7", None), publish("lodestone/v1/fleet/trucks/truck-7", false), vec![0xc0, 0]].concat();
        let mut packets = Vec::new();
        for chunk in stream.chunks(3) {
            framer.push(chunk);
            while let Some(packet) = framer.next_packet(1024).unwrap() {
                packets.push(packet);
            }
        }
        assert_eq!(packets.len(), 3);
        assert_eq!(packets.concat(), stream);
        let mut framer = Framer::default();
        framer.push(&[0x30, 0xff, 0xff, 0x03]);
        assert_eq!(framer.next_packet(1024), Err(FrameError::TooLarge { bytes: 65_539, max: 1024 }));
        let mut framer = Framer::default();
        framer.push(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(framer.next_packet(1024), Err(FrameError::BadLength));
    }

    #[test]
    fn globs() {
        assert!(glob("truck-*", "truck-7") && glob("*", "") && glob("*-7", "truck-7") && glob("a*b*c", "axxbyyc"));
        assert!(!glob("truck-*", "car-7") && !glob("a*b", "a") && !glob("fleet", "fleet2"));
        // Many stars over a long text end quickly (no exponential backtracking).
        assert!(!glob(&format!("{}c", "*a".repeat(50)), &"ab".repeat(10_000)));
    }
}
