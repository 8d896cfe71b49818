//! One device's MQTT session behind the TLS front, handed to rumqttd's router through an
//! in-process link: no socket between the front and the broker.
//!
//! Relaying each device to rumqttd's own listener cost three file descriptors per device (the
//! device's socket, and both ends of a loopback connection), so this machine's hard limit of
//! 20,000 open files held 6,325 devices; and rumqttd runs every connection of a listener on one
//! thread. Here the front speaks MQTT itself with rumqttd's codec ([`Protocol`]) and passes each
//! packet to the router over a [`rumqttd::local`] link, as rumqttd's `RemoteLink` does: one
//! descriptor per device, and the sessions run on the bridge's runtime.
//!
//! What `RemoteLink` did and this module does in its place:
//! - CONNACK: `Broker::link` keeps the router's own, so the session writes a success CONNACK. Sessions
//!   are always clean (`session_present` is false): a device resubscribes after each CONNECT.
//! - Keep-alive: no packet from the device for 1.5 × its keep-alive closes the session.
//! - A will is published (QoS 0) when the session ends without the device's DISCONNECT.
//! - `Unschedule` is answered with `wake()` (the router pauses the link otherwise).
//! - The router is sent DISCONNECT when the session ends, unless the router ended it (a newer
//!   connection with the same client id takes the session over).
//!
//! Every packet from the device passes the [`Gate`] first; a refused one ends the session.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol, Publish};
use rumqttd::{Broker, Notification};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use lodestone_kit::auth::Authenticator;

use crate::gate::{Framer, Gate, Policy, TopicBook, Verdict};

/// How long a device has, after its TLS handshake, to send CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the device at a time.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// What every session shares.
pub struct SessionSettings {
    pub broker: Arc<Broker>,
    /// What each device may write.
    pub policy: Arc<Policy>,
    /// The data topics published on so far, up to `mqtt.topics_max`.
    pub topics: Arc<TopicBook>,
    /// The largest packet a device may send.
    pub packet_bytes_max: usize,
    /// Device passwords (`mqtt.passwords_path`), for devices without a certificate.
    pub passwords: Option<Arc<Authenticator>>,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The device sent DISCONNECT.
    Disconnected,
    /// The device closed the connection, or it broke, without DISCONNECT.
    Gone,
    /// No packet within 1.5 × the keep-alive.
    KeepAlive,
    /// The gate refused a packet (counted by the caller).
    Refused { denied: &'static str, detail: String },
    /// The router ended the session: a newer connection took the client id, or the router stopped.
    Router(String),
    /// A packet that rumqttd's codec cannot read, or a second CONNECT.
    Protocol(String),
}

/// Serves one device on `stream` (its TLS handshake done) until the session ends. Its identity is
/// `certified` (from its certificate), else the user name of its CONNECT if the password matches.
pub async fn serve<S>(mut stream: S, certified: Option<String>, settings: &SessionSettings) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framer = Framer::default();
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, next_packet(&mut stream, &mut framer, &mut buffer, settings.packet_bytes_max)).await {
        Ok(Ok(Some(packet))) => packet,
        Ok(Err(detail)) => return Ending::Protocol(detail),
        Ok(Ok(None)) | Err(_) => return Ending::Gone,
    };
    let device_id = match certified {
        Some(device_id) => device_id,
        None => match password_identity(&connect, settings) {
            Ok(device_id) => device_id,
            Err(detail) => {
                let _ = stream.write_all(&bad_credentials(connect_level(&connect))).await;
                let _ = stream.shutdown().await;
                return Ending::Refused { denied: "credentials", detail };
            }
        },
    };
    let mut gate = Gate::new(device_id, settings.policy.clone(), settings.topics.clone());
    if let Verdict::Refuse { denied, detail, reply } = gate.check(&connect) {
        if let Some(reply) = reply {
            let _ = stream.write_all(&reply).await;
            let _ = stream.shutdown().await;
        }
        return Ending::Refused { denied: denied.as_str(), detail };
    }
    // The gate has read the CONNECT, so its protocol level is 4 or 5.
    if connect_level(&connect) == Some(5) {
        Session::start(stream, gate, framer, rumqttd::protocol::v5::V5, &connect, settings).await
    } else {
        Session::start(stream, gate, framer, rumqttd::protocol::v4::V4, &connect, settings).await
    }
}

struct Session<'a, S, P> {
    stream: S,
    gate: Gate,
    framer: Framer,
    codec: P,
    settings: &'a SessionSettings,
    link_tx: LinkTx,
    link_rx: LinkRx,
    will: Option<LastWill>,
    keep_alive: Duration,
    /// Encoded packets on their way to the device.
    out: BytesMut,
}

impl<'a, S, P> Session<'a, S, P>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Protocol,
{
    async fn start(stream: S, gate: Gate, framer: Framer, mut codec: P, connect: &[u8], settings: &'a SessionSettings) -> Ending {
        let (connect, will) = match codec.read_mut(&mut BytesMut::from(connect), settings.packet_bytes_max) {
            Ok(Packet::Connect(connect, _, will, _, _)) => (connect, will),
            Ok(other) => return Ending::Protocol(format!("expected CONNECT, got {other:?}")),
            Err(error) => return Ending::Protocol(format!("CONNECT: {error}")),
        };
        if connect.keep_alive == 0 {
            // As rumqttd: a session that never has to speak could hold its place for ever.
            return Ending::Protocol("keep-alive 0 is not allowed".into());
        }
        // `Broker::link` waits for the router's answer: a blocking call.
        let broker = settings.broker.clone();
        let client_id = connect.client_id.clone();
        let link = tokio::task::spawn_blocking(move || broker.link(&client_id)).await;
        let (link_tx, link_rx) = match link {
            Ok(Ok(link)) => link,
            Ok(Err(error)) => return unavailable(stream, codec, format!("the router refused the session: {error:?}")).await,
            Err(error) => return unavailable(stream, codec, format!("the router link task failed: {error}")).await,
        };
        let accepted = Packet::ConnAck(ConnAck { session_present: false, code: ConnectReturnCode::Success }, None);
        let keep_alive = Duration::from_secs(u64::from(connect.keep_alive)).mul_f32(1.5);
        let mut session = Session { stream, gate, framer, codec, settings, link_tx, link_rx, will, keep_alive, out: BytesMut::new() };
        if let Err(error) = session.write(accepted).await {
            return session.close(Ending::Protocol(error)).await;
        }
        let ending = session.run().await;
        session.close(ending).await
    }

    async fn run(&mut self) -> Ending {
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut deadline = tokio::time::Instant::now() + self.keep_alive;
        loop {
            tokio::select! {
                read = self.stream.read(&mut buffer) => {
                    let read = match read {
                        Ok(0) | Err(_) => return Ending::Gone,
                        Ok(read) => read,
                    };
                    deadline = tokio::time::Instant::now() + self.keep_alive;
                    self.framer.push(&buffer[..read]);
                    if let Some(ending) = self.forward_packets().await {
                        return ending;
                    }
                }
                notification = self.link_rx.next() => {
                    match notification {
                        Ok(Some(notification)) => {
                            if let Some(ending) = self.deliver(notification).await {
                                return ending;
                            }
                        }
                        Ok(None) => {}
                        Err(error) => return Ending::Router(format!("{error:?}")),
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Ending::KeepAlive,
            }
        }
    }

    /// Checks and passes to the router every whole packet read so far; the ending if one ends
    /// the session.
    async fn forward_packets(&mut self) -> Option<Ending> {
        let mut packets = Vec::new();
        let mut ending = None;
        loop {
            let raw = match self.framer.next_packet(self.settings.packet_bytes_max) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(error) => {
                    ending = Some(Ending::Protocol(error.to_string()));
                    break;
                }
            };
            if let Verdict::Refuse { denied, detail, .. } = self.gate.check(&raw) {
                ending = Some(Ending::Refused { denied: denied.as_str(), detail });
                break;
            }
            match self.codec.read_mut(&mut BytesMut::from(&raw[..]), self.settings.packet_bytes_max) {
                Ok(Packet::Disconnect(..)) => {
                    self.will = None;
                    ending = Some(Ending::Disconnected);
                    break;
                }
                Ok(Packet::Connect(..)) => {
                    ending = Some(Ending::Protocol("a second CONNECT".into()));
                    break;
                }
                Ok(packet) => packets.push(packet),
                Err(error) => {
                    ending = Some(Ending::Protocol(error.to_string()));
                    break;
                }
            }
        }
        // What came before a refused or closing packet still reaches the router, as it would
        // have over a socket.
        if let Some(last) = packets.pop() {
            self.link_tx.buffer().extend(packets);
            if let Err(error) = self.link_tx.send(last).await {
                return Some(Ending::Router(format!("{error:?}")));
            }
        }
        ending
    }

    /// Writes one notification from the router to the device; the ending if it ends the session.
    async fn deliver(&mut self, notification: Notification) -> Option<Ending> {
        if let Notification::Disconnect(..) = notification {
            return Some(Ending::Router("a newer connection took over the client id".into()));
        }
        let unscheduled = matches!(notification, Notification::Unschedule);
        let packet: Option<Packet> = notification.into();
        if let Some(packet) = packet {
            if let Err(error) = self.write(packet).await {
                return Some(Ending::Protocol(error));
            }
        }
        if unscheduled {
            if let Err(error) = self.link_rx.wake().await {
                return Some(Ending::Router(format!("{error:?}")));
            }
        }
        None
    }

    async fn write(&mut self, packet: Packet) -> Result<(), String> {
        self.out.clear();
        self.codec.write(packet, &mut self.out).map_err(|e| e.to_string())?;
        self.stream.write_all(&self.out).await.map_err(|e| e.to_string())?;
        self.stream.flush().await.map_err(|e| e.to_string())
    }

    /// Ends the session with the router (the will first, if one is due) and closes the stream.
    async fn close(mut self, ending: Ending) -> Ending {
        if !matches!(ending, Ending::Router(_)) {
            if let Some(will) = self.will.take() {
                self.link_tx.buffer().push_back(Packet::Publish(Publish::new(will.topic, will.message, false), None));
            }
            let disconnect = Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection };
            let _ = self.link_tx.send(Packet::Disconnect(disconnect, None)).await;
        }
        let _ = self.stream.shutdown().await;
        ending
    }
}

/// The device a CONNECT without a certificate proves: its user name, when its password is that
/// device's in the password file.
fn password_identity(connect: &[u8], settings: &SessionSettings) -> Result<String, String> {
    let Some(passwords) = &settings.passwords else {
        return Err("no client certificate (and mqtt.passwords_path is not set)".into());
    };
    let mut bytes = BytesMut::from(connect);
    let decoded = match connect_level(connect) {
        Some(5) => rumqttd::protocol::v5::V5.read_mut(&mut bytes, settings.packet_bytes_max),
        _ => rumqttd::protocol::v4::V4.read_mut(&mut bytes, settings.packet_bytes_max),
    };
    let login = match decoded {
        Ok(Packet::Connect(_, _, _, _, login)) => login,
        Ok(_) => return Err("expected CONNECT".into()),
        Err(error) => return Err(format!("CONNECT: {error}")),
    };
    let Some(login) = login else {
        return Err("no client certificate and no user name and password".into());
    };
    // The secret is never logged: only whether it matched.
    match passwords.check_secret(&login.username, &login.password) {
        Ok(principal) if principal.is_device() => Ok(login.username),
        Ok(_) => Err(format!("user {:?} is not a device", login.username)),
        Err(error) => Err(format!("user {:?}: {error}", login.username)),
    }
}

/// CONNACK "bad user name or password": return code 4 in 3.1.1, reason 0x86 in 5.0.
fn bad_credentials(level: Option<u8>) -> Vec<u8> {
    if level == Some(5) {
        vec![0x20, 0x03, 0x00, 0x86, 0x00]
    } else {
        vec![0x20, 0x02, 0x00, 0x04]
    }
}

/// Answers CONNACK "service unavailable" and closes: the router has no room for the session.
async fn unavailable<S: AsyncWrite + Unpin, P: Protocol>(mut stream: S, codec: P, detail: String) -> Ending {
    let mut out = BytesMut::new();
    let refused = Packet::ConnAck(ConnAck { session_present: false, code: ConnectReturnCode::ServiceUnavailable }, None);
    if codec.write(refused, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    }
    Ending::Router(detail)
}

/// The next whole packet from the device; `Ok(None)` at the end of the stream or on a read error.
async fn next_packet<R: AsyncRead + Unpin>(reader: &mut R, framer: &mut Framer, buffer: &mut [u8], bytes_max: usize) -> Result<Option<Vec<u8>>, String> {
    loop {
        if let Some(packet) = framer.next_packet(bytes_max).map_err(|e| e.to_string())? {
            return Ok(Some(packet));
        }
        let read = match reader.read(buffer).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(read) => read,
        };
        framer.push(&buffer[..read]);
    }
}

/// The protocol level of a CONNECT packet (4: 3.1.1, 5: 5.0).
pub fn connect_level(packet: &[u8]) -> Option<u8> {
    let (start, _) = crate::gate::remaining_length(packet)?;
    let body = packet.get(start..)?;
    let name_length = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_length).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::PolicyRule;
    use rumqttd::protocol::{v4::V4, Connect, QoS};

    const DEVICE: &str = "dev-1";
    const DATA_TOPIC: &str = "lodestone/v1/db1/tbl1/dev-1";
    const WAIT: Duration = Duration::from_secs(10);

    fn settings() -> Arc<SessionSettings> {
        let broker = Broker::new(crate::config::BridgeConfig::default().rumqttd_config(None));
        let policy = Arc::new(Policy::new(vec![PolicyRule { devices: vec!["*".into()], write: vec!["*/*".into()] }]));
        let topics = Arc::new(TopicBook::new(100));
        Arc::new(SessionSettings { broker: Arc::new(broker), policy, topics, packet_bytes_max: 64 * 1024, passwords: None })
    }

    fn connect(keep_alive: u16, will: Option<&str>) -> BytesMut {
        let will = will.map(|message| LastWill { topic: DATA_TOPIC.into(), message: message.to_string().into(), qos: QoS::AtMostOnce, retain: false });
        let mut bytes = BytesMut::new();
        V4.write(Packet::Connect(Connect { keep_alive, client_id: DEVICE.into(), clean_session: true }, None, will, None, None), &mut bytes).unwrap();
        bytes
    }

    /// Starts a session on one end of an in-memory stream; returns the device's end (after
    /// reading a successful CONNACK) and the session's task.
    async fn session(settings: &Arc<SessionSettings>, connect: BytesMut) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Ending>) {
        let (mut device, server) = tokio::io::duplex(64 * 1024);
        let settings = settings.clone();
        let task = tokio::spawn(async move { serve(server, Some(DEVICE.into()), &settings).await });
        device.write_all(&connect).await.unwrap();
        let mut connack = [0u8; 4];
        tokio::time::timeout(WAIT, device.read_exact(&mut connack)).await.expect("CONNACK in time").unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK, no session present, accepted");
        (device, task)
    }

    /// A link subscribed to every topic, as the bridge's own.
    async fn observer(settings: &SessionSettings) -> LinkRx {
        let broker = settings.broker.clone();
        let (mut tx, mut rx) = tokio::task::spawn_blocking(move || broker.link("observer")).await.unwrap().unwrap();
        tx.subscribe("#").unwrap();
        loop {
            match tokio::time::timeout(WAIT, rx.next()).await.expect("SUBACK in time").unwrap() {
                Some(Notification::DeviceAck(_)) => return rx,
                Some(Notification::Unschedule) => rx.wake().await.unwrap(),
                _ => {}
            }
        }
    }

    /// The payloads published on `DATA_TOPIC` that `rx` receives within `wait`.
    async fn publishes(rx: &mut LinkRx, wait: Duration) -> Vec<Vec<u8>> {
        let mut payloads = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(next) = tokio::time::timeout_at(deadline, rx.next()).await {
            match next.unwrap() {
                Some(Notification::Forward(forward)) if forward.publish.topic.as_ref() == DATA_TOPIC.as_bytes() => payloads.push(forward.publish.payload.to_vec()),
                Some(Notification::Unschedule) => rx.wake().await.unwrap(),
                _ => {}
            }
        }
        payloads
    }

    #[tokio::test]
    async fn a_device_that_vanishes_leaves_its_will_and_one_that_disconnects_does_not() {
        let settings = settings();
        let mut observed = observer(&settings).await;

        let (device, task) = session(&settings, connect(30, Some("gone"))).await;
        drop(device);
        assert_eq!(tokio::time::timeout(WAIT, task).await.unwrap().unwrap(), Ending::Gone);
        assert_eq!(publishes(&mut observed, Duration::from_secs(2)).await, vec![b"gone".to_vec()]);

        let (mut device, task) = session(&settings, connect(30, Some("gone"))).await;
        device.write_all(&[0xE0, 0x00]).await.unwrap(); // DISCONNECT
        assert_eq!(tokio::time::timeout(WAIT, task).await.unwrap().unwrap(), Ending::Disconnected);
        assert!(publishes(&mut observed, Duration::from_secs(2)).await.is_empty(), "no will after DISCONNECT");
    }

    #[tokio::test]
    async fn a_silent_device_is_closed_after_one_and_a_half_keep_alives() {
        let settings = settings();
        let (_device, task) = session(&settings, connect(1, None)).await;
        let started = std::time::Instant::now();
        assert_eq!(tokio::time::timeout(WAIT, task).await.unwrap().unwrap(), Ending::KeepAlive);
        assert!(started.elapsed() >= Duration::from_millis(1400), "closed after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
        let settings = settings();
        let (_first, first_task) = session(&settings, connect(30, None)).await;
        let (_second, second_task) = session(&settings, connect(30, None)).await;
        assert!(matches!(tokio::time::timeout(WAIT, first_task).await.unwrap().unwrap(), Ending::Router(_)));
        assert!(!second_task.is_finished());
    }
}
