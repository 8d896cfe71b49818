//! The running bridge: tasks that move bytes between the broker link, the routing decision, the
//! Kafka producer and the ack ledger.
//!
//! - The **reader** task takes publishes from the link in broker order, routes them, admits
//!   their sequence ranges into the [`AckLedger`] and queues their messages in librdkafka. Each
//!   envelope holds one permit of `kafka.inflight_envelopes_max` and its payload's bytes of
//!   `kafka.inflight_bytes_max` until Kafka has answered for all its messages. **At either bound
//!   the reader stops reading from the link**: rumqttd then keeps publishes in its in-memory log
//!   (`mqtt.log_segment_bytes * log_segments_max`) and drops the oldest beyond that; devices are
//!   not acked for dropped data and resend it.
//! - Envelopes bound for one partition are bundled into one Kafka message ([`crate::bundle`]);
//!   the reader seals a bundle when it is full or has lingered `kafka.bundle_linger_ms`, and
//!   before it waits for flow control (so that no permit sits in an open bundle meanwhile).
//! - A small task per bundle (or unbundled envelope) awaits Kafka's delivery reports and tells
//!   the acker about each envelope in it.
//! - A **partition watcher** task keeps the ingest topic's partition count, which the bundler
//!   needs; until it is first known the reader does not read (backpressure, as above).
//! - The **acker** thread settles envelopes in the ledger and publishes the released acks through
//!   the link (a plain thread: rumqttd's link sends block when the router is busy).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lodestone_kit::shutdown::{shutdown_channel, Shutdown, ShutdownTrigger};
use lodestone_kit::{config::Validate, now_ns};
use lodestone_model::topic::ack_topic;
use lodestone_model::Limits;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Forward, Notification};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::acks::{coalesce, AckLedger, Ticket};
use crate::bundle::{self, Bundler, Sealed};
use crate::config::BridgeConfig;
use crate::kafka::{self, Topics};
use crate::metrics::{discard, Metrics};
use crate::route::{Destination, Inbound, Outcome, Router};
use crate::{broker, front, http, Error};

/// State shared with the HTTP endpoints.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    ready: AtomicBool,
    stopping: AtomicBool,
    envelopes: Arc<Semaphore>,
    envelopes_max: usize,
}

impl Shared {
    pub fn health(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            Err("stopping")
        } else if !self.ready.load(Ordering::Relaxed) {
            Err("starting")
        } else {
            Ok(())
        }
    }

    pub fn inflight_envelopes(&self) -> usize {
        self.envelopes_max.saturating_sub(self.envelopes.available_permits())
    }
}

enum AckerMessage {
    Settled { ticket: Ticket, delivered: bool },
    /// Nudges rumqttd's router (see [`broker::ROUTER_TICK`]).
    Tick,
    /// Answered once every message sent before it is handled.
    Flush(oneshot::Sender<()>),
}

/// A started bridge. Dropping it leaves the broker running; call [`Bridge::shutdown`] or
/// [`Bridge::run_until`].
pub struct Bridge {
    mqtt_addr: SocketAddr,
    mqtt_v5_addr: Option<SocketAddr>,
    /// The TLS front devices connect to (`None` with `mqtt.plaintext`).
    front: Option<front::Front>,
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    producer: FutureProducer,
    stop: ShutdownTrigger,
    /// Stops the HTTP server, last: `/health` answers 503 while the bridge drains.
    http_stop: ShutdownTrigger,
    reader: JoinHandle<Result<(), Error>>,
    /// rumqttd's listener threads' end (plain text only: over TLS it has no listeners).
    broker_stopped: Option<oneshot::Receiver<String>>,
    acker: mpsc::Sender<AckerMessage>,
    shutdown_timeout: Duration,
}

impl Bridge {
    /// Validates `config`, binds HTTP (503 until ready), starts the broker with the bridge
    /// subscribed, and returns once the MQTT listeners accept devices (`/health` is then 200).
    pub async fn start(config: BridgeConfig) -> Result<Bridge, Error> {
        config.validate()?;
        let producer = kafka::producer(&config.kafka)?;
        let envelopes_max = config.kafka.inflight_envelopes_max;
        let shared = Arc::new(Shared {
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            envelopes: Arc::new(Semaphore::new(envelopes_max)),
            envelopes_max,
        });
        let exported = shared.clone();
        lodestone_kit::telemetry::export_metrics(move || exported.metrics.render());

        let (http_stop, http_stopped) = shutdown_channel();
        let http = lodestone_kit::http::serve_service(&config.http.listen.to_string(), http::router(shared.clone()), &config.tls, &config.auth, http_stopped).await?;
        let http_addr = http.addr();

        // In plain text rumqttd listens itself; over TLS the front serves every session.
        let listeners = match config.mqtt.plaintext {
            true => broker::Listeners::Plain { listen: config.mqtt.listen, listen_v5: config.mqtt.listen_v5 },
            false => broker::Listeners::None,
        };
        let broker = broker::start(&config, listeners).await?;
        let (front, mqtt_addr, mqtt_v5_addr, broker_stopped) = match broker.serving {
            broker::Serving::Listeners { listen, listen_v5, stopped } => {
                tracing::warn!("mqtt.plaintext = true: devices connect without TLS, identity or topic rules");
                (None, listen, listen_v5, Some(stopped))
            }
            broker::Serving::Links(rumqttd) => {
                let tls = front::FrontTls::load(front::TlsFiles {
                    cert: config.tls.cert_path.clone().into(),
                    key: config.tls.key_path.clone().into(),
                    device_ca: config.mqtt.device_ca_path.clone().into(),
                    crl: (!config.mqtt.crl_path.is_empty()).then(|| config.mqtt.crl_path.clone().into()),
                    certificate_optional: !config.mqtt.passwords_path.is_empty(),
                })?;
                let passwords = match config.mqtt.passwords_path.as_str() {
                    "" => None,
                    path => Some(Arc::new(lodestone_kit::auth::Authenticator::from_file(std::path::Path::new(path)).map_err(|e| front::FrontError::Read { what: "device password file (mqtt.passwords_path)", path: path.into(), detail: e.to_string() })?)),
                };
                let session = crate::session::SessionSettings {
                    broker: rumqttd,
                    policy: Arc::new(crate::gate::Policy::new(config.mqtt.policies.clone())),
                    topics: Arc::new(crate::gate::TopicBook::new(config.mqtt.topics_max)),
                    packet_bytes_max: config.mqtt.packet_bytes_max,
                    passwords,
                };
                let settings = front::FrontSettings { tls, handshake_timeout: Duration::from_millis(config.tls.handshake_timeout_ms), session, shared: shared.clone() };
                let front = front::start(config.mqtt.listen, settings).await?;
                let addr = front.addr;
                (Some(front), addr, Some(addr), None)
            }
        };
        match &front {
            Some(_) => info!("mqtt listening on {mqtt_addr} (TLS with device certificates; MQTT 3.1.1 and 5)"),
            None => info!("mqtt listening on {mqtt_addr} (plain text)"),
        }
        if let (None, Some(addr)) = (&front, mqtt_v5_addr) {
            info!("mqtt v5 listening on {addr} (plain text)");
        }

        let ledger = Arc::new(Mutex::new(AckLedger::new(config.mqtt.devices_tracked_max)));
        let (acker, acker_rx) = mpsc::channel(envelopes_max + 1);
        spawn_acker(broker.link_tx, ledger.clone(), shared.clone(), acker_rx)?;
        tokio::spawn(tick_router(acker.downgrade()));

        let (stop, stop_rx) = shutdown_channel();
        let topics = Topics { ingest: config.kafka.ingest_topic.clone(), dead_letter: config.kafka.dead_letter_topic.clone() };
        let bundler = (config.kafka.bundle_envelopes_max > 1).then(|| {
            Bundler::new(bundle::Bounds {
                envelopes_max: config.kafka.bundle_envelopes_max,
                bytes_max: config.kafka.bundle_bytes_max,
                linger: Duration::from_millis(config.kafka.bundle_linger_ms),
            })
        });
        let (partitions_tx, partitions) = watch::channel(0);
        if bundler.is_some() {
            tokio::spawn(watch_partitions(producer.clone(), topics.ingest.clone(), partitions_tx, stop_rx.clone()));
        }
        let reader = Reader {
            link_rx: broker.link_rx,
            router: Router { limits: Limits::default(), payload_bytes_max: config.mqtt.payload_bytes_max },
            ledger,
            producer: producer.clone(),
            topics,
            bundler,
            partitions,
            shared: shared.clone(),
            bytes: Arc::new(Semaphore::new(config.kafka.inflight_bytes_max)),
            bytes_max: config.kafka.inflight_bytes_max,
            acker: acker.clone(),
        };
        let reader = tokio::spawn(reader.run(stop_rx));
        shared.ready.store(true, Ordering::Relaxed);
        Ok(Bridge {
            mqtt_addr,
            mqtt_v5_addr,
            front,
            http_addr,
            shared,
            producer,
            stop,
            http_stop,
            reader,
            broker_stopped,
            acker,
            shutdown_timeout: config.shutdown.timeout(),
        })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn mqtt_v5_addr(&self) -> Option<SocketAddr> {
        self.mqtt_v5_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics(&self) -> String {
        self.shared.metrics.set_inflight_envelopes(self.shared.inflight_envelopes());
        self.shared.metrics.render()
    }

    /// Runs until `signal` resolves, then shuts down (see [`Bridge::shutdown`]). Returns an error
    /// if the broker or the link fails first.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        enum Ended {
            Signal,
            Reader(Result<(), Error>),
            Broker(String),
        }
        let ended = tokio::select! {
            () = signal => Ended::Signal,
            result = &mut self.reader => Ended::Reader(result.unwrap_or_else(|e| Err(Error::BrokerStopped(format!("reader task: {e}"))))),
            why = listeners_ended(&mut self.broker_stopped) => Ended::Broker(why),
        };
        match ended {
            Ended::Signal => {
                info!("shutting down");
                self.shutdown().await
            }
            Ended::Reader(result) => {
                let error = result.err().unwrap_or_else(|| Error::BrokerStopped("the link reader stopped".into()));
                self.drain().await;
                Err(error)
            }
            Ended::Broker(why) => {
                let _ = self.stop_reading().await; // the broker failure is the error to report
                self.drain().await;
                Err(Error::BrokerStopped(why))
            }
        }
    }

    /// Stops reading from the broker (`/health` turns 503), waits up to
    /// `shutdown.timeout_ms` for in-flight envelopes, publishes their acks and flushes the
    /// producer. Returns when whatever Kafka acknowledged in that time has been acked to devices;
    /// the rest is unacked and devices resend it to the next bridge.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let result = self.stop_reading().await;
        self.drain().await;
        result
    }

    async fn stop_reading(&mut self) -> Result<(), Error> {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(front) = &self.front {
            front.stop();
        }
        self.stop.trigger();
        match (&mut self.reader).await {
            Ok(result) => result,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(Error::BrokerStopped(format!("reader task: {e}"))),
        }
    }

    async fn drain(self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let all = self.shared.envelopes_max as u32;
        if tokio::time::timeout_at(deadline, self.shared.envelopes.acquire_many(all)).await.is_err() {
            warn!(inflight_envelopes = self.shared.inflight_envelopes(), "shutdown timeout: envelopes left unacked");
        }
        let (flushed_tx, flushed) = oneshot::channel();
        if self.acker.send(AckerMessage::Flush(flushed_tx)).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, flushed).await;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(remaining)).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "producer flush incomplete");
        }
        self.http_stop.trigger();
        info!("stopped");
    }
}

/// Settled envelopes handled per ack burst: their acks are coalesced into one per device.
const ACKER_BATCH_MAX: usize = 1024;

fn spawn_acker(
    mut link_tx: LinkTx,
    ledger: Arc<Mutex<AckLedger>>,
    shared: Arc<Shared>,
    mut messages: mpsc::Receiver<AckerMessage>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("bridge-acker".into())
        .spawn(move || {
            let mut flushes = Vec::new();
            while let Some(first) = messages.blocking_recv() {
                let mut acks = Vec::new();
                let mut next = Some(first);
                let mut handled = 0;
                while let Some(message) = next.take() {
                    match message {
                        AckerMessage::Settled { ticket, delivered } => {
                            let mut ledger = ledger.lock().expect("ack ledger lock");
                            acks.extend(if delivered { ledger.delivered(ticket) } else { ledger.failed(ticket) });
                        }
                        AckerMessage::Flush(done) => flushes.push(done),
                        // Best effort: a full router channel means the router is busy anyway.
                        AckerMessage::Tick => drop(link_tx.shadow(broker::ROUTER_TICK_FILTER)),
                    }
                    handled += 1;
                    if handled < ACKER_BATCH_MAX {
                        next = messages.try_recv().ok();
                    }
                }
                for device_ack in coalesce(acks) {
                    match link_tx.publish(ack_topic(&device_ack.device_id), device_ack.ack.to_json()) {
                        Ok(_) => shared.metrics.acks_sent(1),
                        Err(e) => {
                            error!(device_id = %device_ack.device_id, error = %e, "cannot publish ack");
                            shared.metrics.discarded(discard::ACK_PUBLISH_FAILED);
                        }
                    }
                }
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        })
        .map(drop)
        .map_err(|e| Error::BrokerStopped(format!("cannot spawn the acker thread: {e}")))
}

/// How often the partition watcher asks for the ingest topic's partition count, and how soon it
/// asks again while Kafka has not answered.
const PARTITIONS_REFRESH: Duration = Duration::from_secs(30);
const PARTITIONS_RETRY: Duration = Duration::from_secs(1);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Links a bundle's span keeps to its envelopes' at most.
const BUNDLE_LINKS_MAX: usize = 128;

/// When an envelope came with a trace (`traceparent`, from the envelope or the MQTT v5
/// property): a span of it here, as a child of that trace, whose context replaces the message's
/// `traceparent` header so that the worker continues from the bridge. `None` without a trace or
/// when the span is not recorded.
fn continue_envelope_trace(message: &mut crate::route::KafkaMessage) -> Option<(tracing::Span, String)> {
    let header = message.headers.iter_mut().find(|(name, _)| *name == "traceparent")?;
    let span = tracing::info_span!("bridge.envelope", device_id = message.key.as_deref().unwrap_or(""));
    lodestone_kit::telemetry::continue_trace(&span, Some(&header.1));
    let context = lodestone_kit::telemetry::traceparent_of(&span)?;
    header.1 = context.clone();
    Some((span, context))
}

/// Keeps `partitions` at the ingest topic's partition count until `stop`.
async fn watch_partitions(producer: FutureProducer, topic: String, partitions: watch::Sender<usize>, mut stop: Shutdown) {
    loop {
        let wait = match lodestone_kit::kafka::partition_count(&producer, &topic, METADATA_TIMEOUT).await {
            Ok(count) => {
                if partitions.send_replace(count) != count {
                    info!(topic = %topic, partitions = count, "ingest topic partitions");
                }
                PARTITIONS_REFRESH
            }
            Err(e) if *partitions.borrow() == 0 => {
                warn!(topic = %topic, error = %e, "cannot read the ingest topic's partition count; holding publishes back");
                PARTITIONS_RETRY
            }
            // Kafka away: keep the count we have, the producer holds the messages meanwhile.
            Err(_) => PARTITIONS_RETRY,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Sends the acker a [`AckerMessage::Tick`] every [`broker::ROUTER_TICK`] until the bridge is
/// dropped. Skips a tick when the acker is behind: its own publishes wake the router then.
async fn tick_router(acker: mpsc::WeakSender<AckerMessage>) {
    let mut ticks = tokio::time::interval(broker::ROUTER_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(acker) = acker.upgrade() else { return };
        let _ = acker.try_send(AckerMessage::Tick);
    }
}

struct Reader {
    link_rx: LinkRx,
    router: Router,
    ledger: Arc<Mutex<AckLedger>>,
    producer: FutureProducer,
    topics: Topics,
    /// `None`: bundling is off (`kafka.bundle_envelopes_max = 1`).
    bundler: Option<Bundler<Pending>>,
    /// The ingest topic's partition count (0 until known).
    partitions: watch::Receiver<usize>,
    shared: Arc<Shared>,
    bytes: Arc<Semaphore>,
    bytes_max: usize,
    acker: mpsc::Sender<AckerMessage>,
}

/// What an envelope holds while Kafka has not answered for it.
struct Permits {
    _envelope: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// An envelope on its way to Kafka: what to tell the acker once its messages are delivered.
struct Pending {
    ticket: Option<Ticket>,
    permits: Permits,
    /// Its own messages (dead letters; the ingest message too when it is not bundled).
    deliveries: Vec<(Destination, DeliveryFuture)>,
    /// False if one of its messages could not even be queued: it must not be acked.
    queued: bool,
    /// Its span when it came with a trace (ends when Kafka has answered), and that span's
    /// context, the ingest worker's parent.
    trace: Option<(tracing::Span, String)>,
}

impl Reader {
    /// Reads until `stop` turns true. Returns an error if the link fails.
    async fn run(mut self, mut stop: Shutdown) -> Result<(), Error> {
        if self.bundler.is_some() {
            let known = tokio::select! {
                known = self.partitions.wait_for(|count| *count > 0) => Some(known.is_ok()),
                _ = stop.cancelled() => None,
            };
            match known {
                None => return Ok(()),
                Some(false) => return Err(Error::BrokerStopped("the partition watcher stopped".into())),
                Some(true) => {}
            }
        }
        loop {
            let due = self.bundler.as_ref().and_then(Bundler::next_due);
            enum Next {
                Notification(Option<Notification>),
                BundleDue,
                Stop,
            }
            let next = tokio::select! {
                next = self.link_rx.next() => Next::Notification(next.map_err(Error::Link)?),
                () = sleep_until_some(due) => Next::BundleDue,
                _ = stop.cancelled() => Next::Stop,
            };
            let notification = match next {
                Next::Notification(notification) => notification,
                Next::BundleDue => {
                    self.seal_due().await;
                    continue;
                }
                Next::Stop => return self.seal_all_and_stop().await,
            };
            match notification {
                Some(Notification::Forward(forward)) => {
                    // At the bound the reader waits here, holding this one publish, and rumqttd
                    // pauses the link once its buffer fills.
                    let Some(envelope) = self.acquire(&self.shared.envelopes.clone(), 1, &mut stop).await else {
                        return self.seal_all_and_stop().await;
                    };
                    if !self.handle(forward, envelope, &mut stop).await {
                        return self.seal_all_and_stop().await;
                    }
                    self.seal_due().await;
                }
                // rumqttd pauses a link whose buffer filled up until it says it is ready again.
                Some(Notification::Unschedule) => self.link_rx.wake().await.map_err(Error::Link)?,
                Some(Notification::Disconnect(..)) => {
                    self.seal_all().await;
                    return Err(Error::BrokerStopped("the broker disconnected the bridge link".into()));
                }
                Some(_) | None => {}
            }
        }
    }

    /// Takes `count` permits of `semaphore`. Open bundles hold permits, so they are sealed and
    /// produced before the reader waits. `None` if `stop` came first.
    async fn acquire(&mut self, semaphore: &Arc<Semaphore>, count: u32, stop: &mut Shutdown) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = semaphore.clone().try_acquire_many_owned(count) {
            return Some(permit);
        }
        self.seal_all().await;
        tokio::select! {
            permit = semaphore.clone().acquire_many_owned(count) => Some(permit.expect("semaphore is never closed")),
            _ = stop.cancelled() => None,
        }
    }

    /// Routes one publish and sends (or bundles) its messages. False if `stop` came first.
    async fn handle(&mut self, forward: Forward, envelope: OwnedSemaphorePermit, stop: &mut Shutdown) -> bool {
        let publish = &forward.publish;
        let topic = String::from_utf8_lossy(&publish.topic);
        let properties = forward.properties.as_ref();
        let inbound = Inbound {
            topic: &topic,
            payload: &publish.payload,
            content_type: properties.and_then(|p| p.content_type.as_deref()),
            traceparent: properties
                .and_then(|p| p.user_properties.iter().find(|(key, _)| key == "traceparent"))
                .map(|(_, value)| value.as_str()),
        };
        let routed = self.router.route(&inbound, now_ns());
        match &routed.outcome {
            Outcome::Ignored => return true,
            Outcome::Envelope { device_id, accepted, rejected } => {
                self.shared.metrics.received();
                self.shared.metrics.records_accepted(*accepted);
                for reason in rejected {
                    debug!(device_id = %device_id, reason = %reason, "rejected record");
                    self.shared.metrics.rejected(reason.as_str());
                }
            }
            Outcome::PayloadRejected { device_id, reason, detail } => {
                self.shared.metrics.received();
                warn!(device_id = device_id.as_deref().unwrap_or(""), topic = %topic, reason = %reason, detail = %detail, "rejected payload");
                self.shared.metrics.rejected(reason.as_str());
            }
        }
        let bytes = publish.payload.len().clamp(1, self.bytes_max) as u32;
        let Some(bytes) = self.acquire(&self.bytes.clone(), bytes, stop).await else {
            return false;
        };
        let permits = Permits { _envelope: envelope, _bytes: bytes };

        let ticket = routed.ack.as_ref().map(|range| self.ledger.lock().expect("ack ledger lock").admit(range));
        if let (Some(range), Some(ticket)) = (&routed.ack, &ticket) {
            if ticket.gap {
                self.shared.metrics.sequence_gap();
                warn!(
                    device_id = %range.device_id, boot_id = %range.boot_id, first_seq = range.first_seq,
                    "sequence gap: envelope produced but not acked until the device resends what is missing"
                );
            }
        }
        let mut pending = Pending { ticket, permits, deliveries: Vec::with_capacity(routed.messages.len()), queued: true, trace: None };
        let mut to_bundle = None;
        for mut message in routed.messages {
            if message.destination == Destination::Ingest {
                pending.trace = continue_envelope_trace(&mut message);
            }
            if message.destination == Destination::Ingest && self.bundler.is_some() {
                to_bundle = Some(message);
                continue;
            }
            match kafka::enqueue(&self.producer, &self.topics, &message).await {
                Ok(delivery) => pending.deliveries.push((message.destination, delivery)),
                Err(e) => {
                    error!(error = %e, topic = self.topics.name(message.destination), "Kafka refused a message");
                    self.shared.metrics.discarded(discard::KAFKA_DELIVERY_FAILED);
                    pending.queued = false;
                }
            }
        }
        match (to_bundle, self.bundler.as_mut()) {
            (Some(message), Some(bundler)) => {
                let partitions = *self.partitions.borrow_and_update();
                let mut sealed = bundler.set_partitions(partitions);
                let device_id = message.key.as_deref().unwrap_or_default();
                sealed.extend(bundler.add(device_id, message.payload, pending, Instant::now()));
                self.produce_bundles(sealed).await;
            }
            _ => self.settle_later(None, vec![pending]),
        }
        true
    }

    async fn seal_due(&mut self) {
        if let Some(bundler) = self.bundler.as_mut() {
            let sealed = bundler.seal_due(Instant::now());
            self.produce_bundles(sealed).await;
        }
    }

    async fn seal_all(&mut self) {
        if let Some(bundler) = self.bundler.as_mut() {
            let sealed = bundler.seal_all();
            self.produce_bundles(sealed).await;
        }
    }

    async fn seal_all_and_stop(mut self) -> Result<(), Error> {
        self.seal_all().await;
        Ok(())
    }

    async fn produce_bundles(&mut self, sealed: Vec<Sealed<Pending>>) {
        for bundle in sealed {
            let payload = lodestone_model::encode_bundle(&bundle.envelopes);
            // A bundle of traced envelopes has a span of its own, linked to theirs, and names each
            // envelope's context in order (`traceparents`) for the worker.
            let contexts: Vec<&str> = bundle.items.iter().map(|p| p.trace.as_ref().map_or("", |(_, context)| context.as_str())).collect();
            let traced = contexts.iter().any(|c| !c.is_empty());
            let span = traced.then(|| {
                let span = tracing::info_span!("bridge.bundle", envelopes = bundle.items.len(), partition = bundle.partition);
                lodestone_kit::telemetry::link_to(&span, contexts.iter().copied().filter(|c| !c.is_empty()), BUNDLE_LINKS_MAX);
                span
            });
            let traceparents = traced.then(|| contexts.join(","));
            match kafka::enqueue_bundle(&self.producer, &self.topics, bundle.partition, bundle.items.len(), &payload, traceparents.as_deref()).await {
                Ok(delivery) => self.settle_later(Some((delivery, span)), bundle.items),
                Err(e) => {
                    error!(error = %e, topic = %self.topics.ingest, partition = bundle.partition, "Kafka refused a bundle");
                    self.shared.metrics.discarded(discard::KAFKA_DELIVERY_FAILED);
                    let failed = bundle.items.into_iter().map(|pending| Pending { queued: false, ..pending }).collect();
                    self.settle_later(None, failed);
                }
            }
        }
    }

    /// Spawns the task that awaits Kafka's answers for `envelopes` (and the bundle carrying
    /// them, if any), then tells the acker about each envelope and releases its permits.
    fn settle_later(&self, bundle: Option<(DeliveryFuture, Option<tracing::Span>)>, envelopes: Vec<Pending>) {
        let shared = self.shared.clone();
        let acker = self.acker.clone();
        tokio::spawn(async move {
            let bundle_delivered = match bundle {
                None => true,
                Some((delivery, _span)) => {
                    let delivered = delivered(delivery, Destination::Ingest, &shared).await;
                    if delivered {
                        shared.metrics.bundle_sent();
                        shared.metrics.sent(Destination::Ingest, envelopes.len());
                    }
                    delivered
                }
            };
            for pending in envelopes {
                let mut all_delivered = bundle_delivered && pending.queued;
                for (destination, delivery) in pending.deliveries {
                    if delivered(delivery, destination, &shared).await {
                        shared.metrics.sent(destination, 1);
                    } else {
                        all_delivered = false;
                    }
                }
                if let Some(ticket) = pending.ticket {
                    let _ = acker.send(AckerMessage::Settled { ticket, delivered: all_delivered }).await;
                }
                drop(pending.permits);
            }
        });
    }
}

/// Whether Kafka acknowledged a message (failures are logged and counted).
async fn delivered(delivery: DeliveryFuture, destination: Destination, shared: &Shared) -> bool {
    match delivery.await {
        Ok(Ok(_)) => true,
        Ok(Err((e, _))) => {
            warn!(error = %e, destination = destination.label(), "Kafka delivery failed");
            shared.metrics.discarded(discard::KAFKA_DELIVERY_FAILED);
            false
        }
        Err(_canceled) => false,
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}


/// Resolves when rumqttd's listener threads all end; never when it has none.
async fn listeners_ended(stopped: &mut Option<oneshot::Receiver<String>>) -> String {
    match stopped {
        Some(stopped) => stopped.await.unwrap_or_else(|_| "broker thread ended".into()),
        None => std::future::pending().await,
    }
}
