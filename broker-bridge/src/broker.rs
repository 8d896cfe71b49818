//! The embedded rumqttd broker: started with the bridge's link already subscribed, so no publish
//! from a device can arrive before the bridge listens.
//!
//! rumqttd facts this module relies on (rumqttd 0.20):
//! - `Broker::start` binds the listeners in threads of its own and blocks while they run; a
//!   listener that cannot bind logs an error and its thread ends. There is no shutdown API.
//! - A publish to a topic that matches no subscription filter makes rumqttd *disconnect the
//!   publisher* (unless dynamic filters are on, which would create a log per topic). The bridge
//!   therefore subscribes to `#`: every topic matches, bad topics reach the dead-letter topic and
//!   the bridge's own acks (which come back through `#`) are skipped by the router.
//! - A client that connects with the bridge link's client id would replace the link, so the id
//!   carries a random suffix.
//! - **rumqttd's router can stall with work queued.** Its scheduler stops at a disconnected
//!   connection's stale entry in the ready queue as if the queue were empty, and the router then
//!   waits for the next event. Meanwhile the listener thread, which runs *every* device
//!   connection, blocks synchronously on the router's CONNACK for a new connection, so no event
//!   comes: the broker hangs for good (seen with 10,000 devices connecting and disconnecting;
//!   rumqtt issue #928 shows the same log lines). The bridge therefore sends the router a cheap
//!   event every [`ROUTER_TICK`] (a shadow request for a filter nobody publishes to), which lets
//!   it drain its ready queue.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Notification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::config::BridgeConfig;
use crate::Error;

/// The bridge's subscription: everything (see the module documentation).
pub const BRIDGE_FILTER: &str = "#";

/// How often the router is nudged (see the module documentation), and with what.
pub const ROUTER_TICK: Duration = Duration::from_millis(10);
pub const ROUTER_TICK_FILTER: &str = "$lodestone/router-tick";

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running broker and the bridge's link into it.
pub struct EmbeddedBroker {
    pub link_tx: LinkTx,
    pub link_rx: LinkRx,
    pub serving: Serving,
}

/// How devices reach the broker.
pub enum Serving {
    /// rumqttd's own plain-text listeners.
    Listeners {
        /// The MQTT 3.1.1 listener's address (the concrete port when 0 was configured).
        listen: SocketAddr,
        listen_v5: Option<SocketAddr>,
        /// Resolves if rumqttd's listener threads all end.
        stopped: oneshot::Receiver<String>,
    },
    /// No listener: the TLS front links each device session to the router in-process
    /// ([`crate::session`]).
    Links(Arc<Broker>),
}

/// Where devices connect: rumqttd's own listeners in plain text, or none (the TLS front).
#[derive(Debug, Clone, Copy)]
pub enum Listeners {
    Plain { listen: SocketAddr, listen_v5: Option<SocketAddr> },
    None,
}

/// Starts rumqttd and subscribes the bridge link. With [`Listeners::Plain`] it then opens the
/// listeners on `listen` (MQTT 3.1.1) and `listen_v5` (MQTT 5), and returns once each answers an
/// MQTT CONNECT.
pub async fn start(config: &BridgeConfig, listeners: Listeners) -> Result<EmbeddedBroker, Error> {
    let addresses = match listeners {
        Listeners::Plain { listen, listen_v5 } => Some((reserve(listen)?, listen_v5.map(reserve).transpose()?)),
        Listeners::None => None,
    };
    let rumqttd_config = config.rumqttd_config(addresses);
    let link_id = format!("lodestone-bridge-{}", random_hex());

    // Broker::new spawns the router thread; `link` blocks until the router answers.
    let (broker, mut link_tx, mut link_rx) = tokio::task::spawn_blocking(move || {
        let broker = Broker::new(rumqttd_config);
        let (link_tx, link_rx) = broker.link(&link_id).map_err(Error::Link)?;
        Ok::<_, Error>((broker, link_tx, link_rx))
    })
    .await
    .map_err(|e| Error::BrokerStopped(format!("broker setup panicked: {e}")))??;

    link_tx.subscribe(BRIDGE_FILTER).map_err(Error::Link)?;
    await_suback(&mut link_rx).await?;

    let Some((listen, listen_v5)) = addresses else {
        return Ok(EmbeddedBroker { link_tx, link_rx, serving: Serving::Links(Arc::new(broker)) });
    };
    let (stopped_tx, mut stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = broker;
            let why = match broker.start() {
                Ok(()) => "all MQTT listeners stopped".to_string(),
                Err(e) => format!("MQTT broker failed to start: {e}"),
            };
            let _ = stopped_tx.send(why);
        })
        .map_err(|e| Error::BrokerStopped(format!("cannot spawn the broker thread: {e}")))?;

    await_listener(listen, 4, &mut stopped).await?;
    if let Some(addr) = listen_v5 {
        await_listener(addr, 5, &mut stopped).await?;
    }
    Ok(EmbeddedBroker { link_tx, link_rx, serving: Serving::Listeners { listen, listen_v5, stopped } })
}

/// Checks that `addr` can be bound (so a taken port is a clear error rather than a rumqttd log
/// line) and turns port 0 into a free port. rumqttd binds it again a moment later.
fn reserve(addr: SocketAddr) -> Result<SocketAddr, Error> {
    let listener = StdTcpListener::bind(addr).map_err(|e| Error::MqttListen { addr, detail: e.to_string() })?;
    listener.local_addr().map_err(|e| Error::MqttListen { addr, detail: e.to_string() })
}

async fn await_suback(link_rx: &mut LinkRx) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, link_rx.next())
            .await
            .map_err(|_| Error::SubscribeTimeout(SUBSCRIBE_TIMEOUT))?
            .map_err(Error::Link)?;
        match next {
            Some(Notification::DeviceAck(_)) => return Ok(()),
            Some(Notification::Unschedule) => link_rx.wake().await.map_err(Error::Link)?,
            _ => {}
        }
    }
}

/// Polls `addr` with an MQTT CONNECT until it answers CONNACK (success), the broker stops, or
/// the deadline passes.
async fn await_listener(addr: SocketAddr, version: u8, stopped: &mut oneshot::Receiver<String>) -> Result<(), Error> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    let mut last_error = String::from("no answer");
    while Instant::now() < deadline {
        if let Ok(why) = stopped.try_recv() {
            return Err(Error::MqttListen { addr, detail: why });
        }
        match tokio::time::timeout(Duration::from_secs(2), probe(addr, version)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "probe timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::MqttListen { addr, detail: last_error })
}

/// One MQTT session: CONNECT (clean, keep-alive 10 s), expect a successful CONNACK, close.
async fn probe(addr: SocketAddr, version: u8) -> std::io::Result<()> {
    let client_id = format!("lodestone-bridge-probe-{}", random_hex());
    let mut variable = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', version, 0x02, 0x00, 0x0a];
    if version == 5 {
        variable.push(0x00); // no properties
    }
    variable.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    variable.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend_from_slice(&variable);

    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&packet).await?;
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await?;
    let mut body = vec![0u8; header[1] as usize];
    stream.read_exact(&mut body).await?;
    // CONNACK: flags, then the return (v4) or reason (v5) code.
    if header[0] != 0x20 || body.len() < 2 || body[1] != 0 {
        return Err(std::io::Error::other(format!("unexpected CONNACK {header:?} {body:?}")));
    }
    // Closing without DISCONNECT: rumqttd logs a DISCONNECT that races the socket close as a
    // router error, while a plain close only reaches the (silenced) connection log.
    drop(stream);
    Ok(())
}

/// 64 random bits from the standard library's randomly seeded hasher.
fn random_hex() -> String {
    format!("{:016x}", RandomState::new().build_hasher().finish())
}
