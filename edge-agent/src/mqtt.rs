//! The forwarder: publishes outbox entries over MQTT (QoS 1) and deletes them when the bridge's
//! end-to-end [`Ack`] covers them. Decisions come from [`ForwardWindow`], [`plan_envelopes`] and
//! [`Backoff`]; this module only moves bytes.
//!
//! Each connection is a session with a fresh rumqttc client and event loop (clean session), so
//! nothing queued for a dead connection leaks into the next one. The event loop is polled by its
//! own task, which passes the few events that matter (connected, subscribed, ack, lost) to the
//! session over a bounded channel. The session never awaits the MQTT client: it only publishes
//! with `try_publish` into a request queue sized above the window, so the two tasks cannot
//! block each other. On every new connection it subscribes to the ack topic, waits for the
//! SUBACK, then resends everything not yet acknowledged from the oldest. PUBACKs release
//! nothing; only an [`Ack`] on `lodestone/v1/ack/{device_id}` with this process's boot id does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lodestone_model::topic::{ack_topic, data_topic, Ack};
use lodestone_model::{Envelope, Source};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};

use crate::config::{AgentConfig, ForwardConfig, MqttConfig};
use crate::forward::{plan_envelopes, Backoff, ForwardWindow};
use crate::outbox::{Outbox, OutboxError, StoredEntry};
use lodestone_kit::Shutdown;
use crate::telemetry::Telemetry;
use crate::writer::OutboxWriter;

/// Events from the event-loop task to the session; a handful per ack, so a small bound suffices.
const LINK_EVENTS_MAX: usize = 64;
/// Acks are small JSON objects; nothing larger is expected from the broker.
const INCOMING_PACKET_BYTES_MAX: usize = 64 * 1024;
/// Room for the fixed header, topic and packet id on top of an envelope.
const PACKET_OVERHEAD_BYTES: usize = 1024;
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the forwarder needs; built by [`crate::agent`].
pub struct Forwarder {
    /// TLS with the device certificate; `None` with `mqtt.plaintext`.
    tls: Option<Arc<rustls::ClientConfig>>,
    pub mqtt: MqttConfig,
    pub forward: ForwardConfig,
    pub client_id: String,
    pub source: Source,
    pub outbox: Outbox,
    pub writer: OutboxWriter,
    /// The next sequence number the outbox will assign; changes after each commit.
    pub committed: watch::Receiver<u64>,
    pub telemetry: Arc<Telemetry>,
    /// The outbox's `dropped_total` when this forwarder last changed its boot id.
    dropped_seen: u64,
}

enum LinkEvent {
    Connected,
    Subscribed { granted: bool },
    Ack(Ack),
    Lost(String),
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// The MQTT client's TLS: trusting `mqtt.ca_path`, presenting `mqtt.cert_path` and `key_path`;
/// `None` with `mqtt.plaintext`.
pub fn mqtt_tls(config: &crate::config::MqttConfig) -> Result<Option<Arc<rustls::ClientConfig>>, lodestone_kit::tls::TlsError> {
    if config.plaintext {
        tracing::warn!("mqtt.plaintext = true: readings travel to the bridge unencrypted, without a device certificate");
        return Ok(None);
    }
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| lodestone_kit::tls::TlsError::Read { what: "device certificate or key", path: path.to_string(), detail: e.to_string() })
    };
    let (cert, key) = (read(&config.cert_path)?, read(&config.key_path)?);
    let tls = lodestone_kit::tls::client_config_with_identity(std::path::Path::new(&config.ca_path), &cert, &key)?;
    Ok(Some(Arc::new(tls)))
}

impl Forwarder {
    /// `tls`: the client configuration with the agent's device certificate ([`mqtt_tls`]); `None`
    /// only with `mqtt.plaintext`.
    pub fn new(
        config: &AgentConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        source: Source,
        outbox: Outbox,
        writer: OutboxWriter,
        committed: watch::Receiver<u64>,
        telemetry: Arc<Telemetry>,
    ) -> Forwarder {
        Forwarder {
            tls,
            mqtt: config.mqtt.clone(),
            forward: config.forward.clone(),
            client_id: config.client_id().to_string(),
            source,
            outbox,
            writer,
            committed,
            telemetry,
            dropped_seen: 0,
        }
    }

    /// Runs until `shutdown`: connects, forwards, reconnects with backoff. Returns after a clean
    /// MQTT disconnect (bounded by one second).
    pub async fn run(mut self, acked_through: u64, mut shutdown: Shutdown) {
        let ack_timeout = Duration::from_millis(self.forward.ack_timeout_ms);
        let mut window = ForwardWindow::new(acked_through, self.forward.inflight_envelopes_max, ack_timeout);
        let min = Duration::from_millis(self.mqtt.reconnect_backoff_min_ms);
        let mut backoff = Backoff::new(min, Duration::from_millis(self.mqtt.reconnect_backoff_max_ms));
        loop {
            let end = self.run_session(&mut window, &mut backoff, &mut shutdown).await;
            self.telemetry.set_connected(false);
            let reason = match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost(reason) => reason,
            };
            let delay = backoff.next_delay(rand::random::<f64>());
            tracing::warn!(broker = %self.broker(), %reason, delay_ms = delay.as_millis() as u64, "MQTT connection lost; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn broker(&self) -> String {
        format!("{}:{}", self.mqtt.host, self.mqtt.port)
    }

    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(self.client_id.clone(), self.mqtt.host.clone(), self.mqtt.port);
        if let Some(tls) = &self.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
        }
        options.set_keep_alive(Duration::from_secs(self.mqtt.keep_alive_s));
        options.set_clean_session(true);
        options.set_max_packet_size(INCOMING_PACKET_BYTES_MAX, self.forward.envelope_bytes_max + PACKET_OVERHEAD_BYTES);
        let inflight = (2 * self.forward.inflight_envelopes_max).clamp(1, usize::from(u16::MAX));
        options.set_inflight(inflight as u16);
        options
    }

    async fn run_session(&mut self, window: &mut ForwardWindow, backoff: &mut Backoff, shutdown: &mut Shutdown) -> SessionEnd {
        // The request queue holds at most a window of publishes, plus one more after an ack
        // timeout rewinds the window, plus subscribe and disconnect.
        let requests_max = 2 * self.forward.inflight_envelopes_max + 8;
        let (client, eventloop) = AsyncClient::new(self.options(), requests_max);
        let (events_tx, mut events) = mpsc::channel(LINK_EVENTS_MAX);
        let ack_topic = ack_topic(&self.source.device_id);
        let poller = tokio::spawn(poll_link(eventloop, events_tx, ack_topic.clone()));
        let _stop_poller = AbortOnDrop(poller.abort_handle());
        window.rewind();
        let mut subscribed = false;
        loop {
            if subscribed {
                if let Err(end) = self.fill_window(&client, window).await {
                    return end;
                }
            }
            let deadline = window.resend_deadline().filter(|_| subscribed);
            let resend_at = tokio::time::Instant::from_std(deadline.unwrap_or_else(Instant::now));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = client.try_disconnect();
                    // The poller exits once the DISCONNECT is written (or the link fails).
                    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async { while events.recv().await.is_some() {} }).await;
                    return SessionEnd::Shutdown;
                }
                event = events.recv() => {
                    let Some(event) = event else { return SessionEnd::Lost("MQTT event loop ended".into()) };
                    match event {
                        LinkEvent::Connected => {
                            backoff.reset();
                            if let Err(error) = client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce) {
                                return SessionEnd::Lost(format!("cannot subscribe: {error}"));
                            }
                        }
                        LinkEvent::Subscribed { granted: true } => {
                            subscribed = true;
                            self.telemetry.set_connected(true);
                            tracing::info!(broker = %self.broker(), ack_topic = %ack_topic, resend_from = window.acked_through() + 1, "MQTT connected");
                        }
                        LinkEvent::Subscribed { granted: false } => {
                            return SessionEnd::Lost(format!("the broker refused the subscription to {ack_topic}"));
                        }
                        LinkEvent::Ack(ack) => {
                            if let Err(end) = self.apply_ack(window, ack).await {
                                return end;
                            }
                        }
                        LinkEvent::Lost(reason) => return SessionEnd::Lost(reason),
                    }
                }
                changed = self.committed.changed() => {
                    if changed.is_err() {
                        tracing::error!("the outbox writer stopped; forwarding stops");
                        return SessionEnd::Shutdown;
                    }
                }
                _ = tokio::time::sleep_until(resend_at), if deadline.is_some() => {
                    tracing::warn!(acked_through = window.acked_through(), "no end-to-end ack within forward.ack_timeout_ms; resending everything unacknowledged");
                    window.rewind();
                }
            }
        }
    }

    /// Publishes outbox entries while the window has room and the outbox has entries.
    async fn fill_window(&mut self, client: &AsyncClient, window: &mut ForwardWindow) -> Result<(), SessionEnd> {
        loop {
            self.start_new_epoch_after_drops(window);
            let Some(from) = window.next_seq() else { return Ok(()) };
            if from >= *self.committed.borrow() {
                return Ok(());
            }
            let max_entries = window.free_slots() * self.forward.batch_records_max;
            let outbox = self.outbox.clone();
            let batch = match tokio::task::spawn_blocking(move || outbox.read_from(from, max_entries)).await {
                Ok(Ok(batch)) => batch,
                Ok(Err(error)) => return Err(SessionEnd::Lost(format!("cannot read the outbox: {error}"))),
                Err(error) => return Err(SessionEnd::Lost(format!("outbox read task failed: {error}"))),
            };
            let Some(scanned_through) = batch.scanned_through else { return Ok(()) };
            let plan = plan_envelopes(&batch.entries, self.forward.batch_records_max, self.forward.envelope_bytes_max);
            let mut entries = batch.entries.into_iter();
            for range in plan {
                if window.free_slots() == 0 {
                    break;
                }
                let group: Vec<StoredEntry> = entries.by_ref().take(range.len()).collect();
                let (first, last) = (group[0].seq, group[group.len() - 1].seq);
                self.publish(client, group, window.unacked_from(first))?;
                window.record_sent(first, last, Instant::now());
            }
            if entries.len() == 0 {
                // Everything read went out: move past entries that could not be decoded.
                window.skip_through(scanned_through);
            }
        }
    }

    /// After the outbox dropped readings to make room (`full_policy = "drop_oldest"`), the
    /// sequence this agent was sending has a hole the bridge would wait on forever: its acks
    /// cover only gap-free runs. The agent therefore continues under a new boot id, a fresh
    /// sequence space for the bridge, and resends everything still unacknowledged under it.
    fn start_new_epoch_after_drops(&mut self, window: &mut ForwardWindow) {
        let dropped = self.outbox.dropped_total();
        if dropped == self.dropped_seen {
            return;
        }
        self.dropped_seen = dropped;
        self.source.boot_id = crate::agent::new_boot_id();
        tracing::warn!(dropped_total = dropped, boot_id = %self.source.boot_id, "the outbox dropped its oldest readings; forwarding continues under a new boot id");
        window.rewind();
    }

    fn publish(&self, client: &AsyncClient, group: Vec<StoredEntry>, unacked_from: u64) -> Result<(), SessionEnd> {
        let destination = group[0].destination.clone();
        let count = group.len() as u64;
        // An envelope continues the trace of the first write it carries that had one.
        let traceparent = group.iter().find_map(|entry| entry.traceparent.clone());
        let envelope = Envelope {
            first_seq: group[0].seq,
            unacked_from: Some(unacked_from),
            source: self.source.clone(),
            records: group.into_iter().map(|entry| entry.record).collect(),
            database: Some(destination.database.clone()),
            table: Some(destination.table.clone()),
            rejected: Vec::new(),
            traceparent,
        };
        let topic = data_topic(&destination.database, &destination.table, &self.source.device_id);
        client
            .try_publish(topic, QoS::AtLeastOnce, false, envelope.to_cbor())
            .map_err(|error| SessionEnd::Lost(format!("MQTT request queue: {error}")))?;
        Telemetry::add(&self.telemetry.forwarded, count);
        Ok(())
    }

    /// Releases what the ack covers, through the writer (one commit).
    async fn apply_ack(&mut self, window: &mut ForwardWindow, ack: Ack) -> Result<(), SessionEnd> {
        if ack.boot_id != self.source.boot_id {
            tracing::debug!(boot_id = %ack.boot_id, through_seq = ack.through_seq, "ignoring an ack for another boot");
            return Ok(());
        }
        let Some(through) = window.on_ack(ack.through_seq, Instant::now()) else { return Ok(()) };
        match self.writer.release_through(through).await {
            Ok(released) => {
                Telemetry::add(&self.telemetry.acked, released);
                tracing::debug!(through, released, "released acknowledged readings");
                Ok(())
            }
            Err(OutboxError::WriterStopped) => Err(SessionEnd::Shutdown),
            // The entries stay; the next ack (or a later session) releases them.
            Err(error) => {
                tracing::error!(%error, through, "cannot release acknowledged readings");
                Ok(())
            }
        }
    }
}

/// Polls the MQTT event loop until the link fails or a DISCONNECT was sent, passing on the
/// events that matter.
async fn poll_link(mut eventloop: EventLoop, events: mpsc::Sender<LinkEvent>, ack_topic: String) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => LinkEvent::Connected,
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let granted = suback.return_codes.iter().all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                LinkEvent::Subscribed { granted }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == ack_topic => match Ack::from_json(&publish.payload) {
                Some(ack) => LinkEvent::Ack(ack),
                None => {
                    tracing::warn!(topic = %publish.topic, bytes = publish.payload.len(), "ignoring an ack that is not JSON {{boot_id, through_seq}}");
                    continue;
                }
            },
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(error) => {
                let _ = events.send(LinkEvent::Lost(error.to_string())).await;
                return;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
