//! The MQTT fleet: every simulated device has its own rumqttc connection (client id = device
//! id), subscribes to its ack topic, then publishes its envelopes with QoS 1, keeping at most
//! `inflight_envelopes_max` of them beyond the bridge's latest end-to-end ack.
//!
//! Each device is two tokio tasks: the *link* polls the rumqttc event loop and reports
//! connection, subscription and ack state through a `watch` channel; the *device* reads that
//! state and decides what to publish. A clean session drops whatever was queued when the
//! connection broke, so after every reconnect (and whenever acks stall for `resend_after`) the
//! device publishes its unacknowledged envelopes again; the store's upsert key makes the
//! duplicates harmless.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lodestone_model::topic::{ack_topic, data_topic};
use bytes::Bytes;
use lodestone_model::{ContentType, Envelope, Source};
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::SimError;
use crate::fdlimit::ensure_open_files;
use crate::rate::{RateLimiter, RATE_PER_S_MAX};
use crate::series::{validate_destination, FleetSpec, Series, Tally};
use crate::summary::{Progress, SeriesOutcome, Summary};
use crate::window::{ack_through, AckWindow};
use crate::wire::encode_envelope;

/// Default for the largest MQTT packet a device sends (envelope, topic and header): the
/// broker-bridge's default `packet_bytes_max`. An envelope that does not fit is an error naming
/// the device and sequence number, not a connection the broker drops.
pub const PACKET_BYTES_MAX_DEFAULT: usize = 512 * 1024;
/// Bounds of `--packet-bytes-max` (MQTT's own limit is 256 MiB).
pub const PACKET_BYTES_MAX_RANGE: std::ops::RangeInclusive<usize> = 1024..=256 * 1024 * 1024;
/// Largest packet a device accepts from the broker (acks are well under 100 bytes).
pub const INCOMING_PACKET_BYTES_MAX: usize = 64 * 1024;
/// Largest `--inflight`.
pub const INFLIGHT_ENVELOPES_MAX: u16 = 1024;
/// Bytes of an MQTT PUBLISH beyond its topic and payload (fixed header, lengths, packet id).
const PUBLISH_OVERHEAD_BYTES: usize = 16;
/// Bound on connecting (TCP and CONNACK) and on any one network read or write, in seconds: the
/// Paho clients' default. A broker busy with thousands of new connections answers slowly, and a
/// device that gives up early only adds another connection to its queue.
const CONNECT_TIMEOUT_S: u64 = 30;
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a finished device waits for its DISCONNECT to go out.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One `lodestone-sim mqtt` run.
#[derive(Debug, Clone)]
pub struct MqttRun {
    pub host: String,
    pub port: u16,
    /// Each device's certificate (MQTT over TLS); `None`: plain text, to a bridge with
    /// `mqtt.plaintext`.
    pub identities: Option<crate::identity::DeviceIdentities>,
    pub fleet: FleetSpec,
    pub database: String,
    pub table: String,
    pub format: ContentType,
    /// Shared by every device of the run.
    pub boot_id: String,
    /// Readings per second across the fleet; 0 = as fast as acks allow.
    pub rate_per_s: u64,
    /// Envelopes a device may have beyond its latest ack.
    pub inflight_envelopes_max: u16,
    /// Largest MQTT packet a device sends; set it to the broker's bound.
    pub packet_bytes_max: usize,
    /// Publish unacked envelopes again when no ack arrived for this long.
    pub resend_after: Duration,
    pub keep_alive: Duration,
    /// New connections per second while the fleet comes up (device `i` connects at `i / rate`
    /// seconds); 0 = every device at once, a reconnect storm.
    pub connect_rate_per_s: u32,
    /// The whole run's bound; devices not fully acked by then count as `unacked`.
    pub timeout: Duration,
}

impl MqttRun {
    /// Checks every bound, with the clock at `now_ns`.
    pub fn validate(&self, now_ns: i64) -> Result<(), SimError> {
        self.fleet.validate(now_ns)?;
        validate_destination(&self.database, &self.table)?;
        let invalid = |flag, detail: String| Err(SimError::InvalidArgument { flag, detail });
        if !(1..=INFLIGHT_ENVELOPES_MAX).contains(&self.inflight_envelopes_max) {
            return invalid("inflight", format!("must be 1 to {INFLIGHT_ENVELOPES_MAX}"));
        }
        if self.rate_per_s > RATE_PER_S_MAX {
            return invalid("rate", format!("must be at most {RATE_PER_S_MAX} readings per second"));
        }
        if !PACKET_BYTES_MAX_RANGE.contains(&self.packet_bytes_max) {
            let (min, max) = (PACKET_BYTES_MAX_RANGE.start(), PACKET_BYTES_MAX_RANGE.end());
            return invalid("packet-bytes-max", format!("must be {min} to {max}"));
        }
        if self.resend_after.is_zero() {
            return invalid("resend-after-ms", "must be at least 1".into());
        }
        if self.keep_alive < Duration::from_secs(1) {
            return invalid("keep-alive-s", "must be at least 1".into());
        }
        Ok(())
    }

    fn mqtt_options(&self, device_id: &str) -> Result<MqttOptions, SimError> {
        let mut options = MqttOptions::new(device_id, self.host.clone(), self.port);
        if let Some(identities) = &self.identities {
            let tls = identities.tls_for(device_id)?;
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        }
        let inflight = self.inflight_envelopes_max;
        options
            .set_clean_session(true)
            .set_keep_alive(self.keep_alive)
            .set_max_packet_size(INCOMING_PACKET_BYTES_MAX, self.packet_bytes_max)
            // A resend can put a second window's worth of envelopes in flight.
            .set_inflight(inflight.saturating_mul(2))
            .set_request_channel_capacity(request_channel_capacity(inflight));
        Ok(options)
    }
}

/// rumqttc's request channel holds a window of publishes, a window of resends and the
/// subscribe and disconnect requests; the device never queues more than that.
fn request_channel_capacity(inflight_envelopes_max: u16) -> usize {
    2 * usize::from(inflight_envelopes_max) + 4
}

/// Runs the fleet until every device's last envelope is acked or `run.timeout` passes.
/// Returns the summary; `unacked > 0` means the timeout ended the run.
pub async fn run_mqtt(run: MqttRun) -> Result<Summary, SimError> {
    let progress = Arc::new(Progress::new(run.fleet.planned_total(), true));
    run_mqtt_observed(run, progress).await
}

/// [`run_mqtt`], counting into `progress` (which a load test samples meanwhile).
pub async fn run_mqtt_observed(run: MqttRun, progress: Arc<Progress>) -> Result<Summary, SimError> {
    let open_files = ensure_open_files(run.fleet.series_count)?;
    tracing::debug!(open_files, "open-files soft limit");
    let start = Instant::now();
    let deadline = start + run.timeout;
    let reporter = progress.report_every(PROGRESS_EVERY);
    let limiter = RateLimiter::start(run.rate_per_s, run.fleet.batch_records_max);
    let run = Arc::new(run);
    let devices: Vec<_> = run
        .fleet
        .all_series()
        .enumerate()
        .map(|(i, series)| {
            let connect_at = match run.connect_rate_per_s {
                0 => start,
                rate => start + Duration::from_secs_f64(i as f64 / f64::from(rate)),
            };
            tokio::spawn(run_device(Arc::clone(&run), series, limiter.clone(), Arc::clone(&progress), connect_at, deadline))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(devices.len());
    for device in devices {
        outcomes.push(device.await??);
    }
    reporter.abort();
    tracing::info!("{}", progress.line());
    Ok(Summary::new(outcomes, start.elapsed()))
}

/// What the link task knows, as of its latest event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LinkState {
    /// How many times the connection came up (1 after the first CONNACK).
    connection: u64,
    up: bool,
    /// The connection on which the ack-topic subscription was last confirmed.
    subscribed: u64,
    /// The highest `through_seq` acked for this boot.
    acked_through: u64,
}

impl LinkState {
    /// Connected, and subscribed to acks on this connection: publishing now cannot miss acks.
    fn ready(&self) -> bool {
        self.up && self.connection > 0 && self.subscribed == self.connection
    }
}

async fn run_device(
    run: Arc<MqttRun>,
    series: Series,
    limiter: RateLimiter,
    progress: Arc<Progress>,
    connect_at: Instant,
    deadline: Instant,
) -> Result<SeriesOutcome, SimError> {
    // A paced device's schedule starts when it connects, so a slow ramp does not make it burst.
    tokio::time::sleep_until(connect_at).await;
    let start = connect_at;
    let device_id = series.id().to_owned();
    let (client, mut eventloop) = AsyncClient::new(run.mqtt_options(&device_id)?, request_channel_capacity(run.inflight_envelopes_max));
    eventloop.network_options.set_connection_timeout(CONNECT_TIMEOUT_S);
    let (link_tx, link_rx) = watch::channel(LinkState::default());
    let link = tokio::spawn(run_link(eventloop, device_id.clone(), run.boot_id.clone(), link_tx, Arc::clone(&progress)));
    let mut device = Device {
        source: Source { device_id: device_id.clone(), boot_id: run.boot_id.clone() },
        data_topic: data_topic(&run.database, &run.table, &device_id),
        packet_bytes_max: run.packet_bytes_max,
        ack_topic: ack_topic(&device_id),
        window: AckWindow::new(usize::from(run.inflight_envelopes_max)),
        sent: Tally::default(),
        series,
        client,
    };
    let finished = tokio::time::timeout_at(deadline, device.publish_all(link_rx, &run, &limiter, &progress, start)).await;
    // Best effort: the link task sends the DISCONNECT, then stops (its watch has no reader).
    let _ = device.client.try_disconnect();
    let _ = link.await;
    if let Ok(Err(error)) = finished {
        return Err(error);
    }
    let unacked = device.series.last_seq() - device.window.acked_through();
    Ok(SeriesOutcome { id: device_id, sent: device.sent, unacked })
}

/// One simulated device's publishing side.
struct Device {
    source: Source,
    data_topic: String,
    packet_bytes_max: usize,
    ack_topic: String,
    series: Series,
    window: AckWindow,
    sent: Tally,
    client: AsyncClient,
}

impl Device {
    /// Publishes every envelope of the series and returns once the last one is acked.
    async fn publish_all(
        &mut self,
        mut link: watch::Receiver<LinkState>,
        run: &MqttRun,
        limiter: &RateLimiter,
        progress: &Progress,
        start: Instant,
    ) -> Result<(), SimError> {
        let mut subscribe_requested_on = 0;
        let mut published_on = 1;
        let mut last_ack_progress = Instant::now();
        loop {
            let state = *link.borrow_and_update();
            let newly_acked = self.window.ack(state.acked_through);
            if newly_acked > 0 {
                Progress::add(&progress.acked, newly_acked);
                last_ack_progress = Instant::now();
            }
            if !self.series.has_next() && self.window.is_empty() {
                return Ok(());
            }
            if state.up && state.connection > subscribe_requested_on {
                subscribe_requested_on = state.connection;
                self.client.subscribe(&self.ack_topic, QoS::AtLeastOnce).await.map_err(|e| self.mqtt_error(e))?;
            }
            if state.ready() {
                let stalled = !self.window.is_empty() && last_ack_progress.elapsed() >= run.resend_after;
                if state.connection != published_on || stalled {
                    self.republish_unacked(run.format).await?;
                    published_on = state.connection;
                    last_ack_progress = Instant::now();
                }
                if self.window.has_room() && self.series.has_next() && self.series.next_batch_due().is_none_or(|due| start + due <= Instant::now()) {
                    if self.window.is_empty() {
                        last_ack_progress = Instant::now();
                    }
                    limiter.take(self.series.next_batch_len()).await;
                    self.publish_next(run.format, progress).await?;
                    continue;
                }
            }
            let resend_at = last_ack_progress + run.resend_after;
            // A paced device with room in its window waits for its next batch's time.
            let due_at = self.series.next_batch_due().filter(|_| state.ready() && self.window.has_room()).map(|due| start + due);
            tokio::select! {
                changed = link.changed() => {
                    if changed.is_err() {
                        return Err(SimError::LinkStopped { device_id: self.source.device_id.clone() });
                    }
                }
                // Only while connected: a device waiting to reconnect has nothing to resend to.
                () = tokio::time::sleep_until(resend_at), if state.ready() && !self.window.is_empty() => {}
                () = tokio::time::sleep_until(due_at.unwrap_or(resend_at)), if due_at.is_some() => {}
            }
        }
    }

    async fn publish_next(&mut self, format: ContentType, progress: &Progress) -> Result<(), SimError> {
        let batch = self.series.next_batch().expect("called only while the series has readings");
        let unacked_from = self.window.unacked_from(batch.first_seq);
        let encoded = encode_envelope(batch, &self.source, None, Some(unacked_from), format);
        // A resend restamps `unacked_from`, which may then take up to 8 bytes more.
        let packet_bytes = encoded.bytes.len() + 8 + self.data_topic.len() + PUBLISH_OVERHEAD_BYTES;
        if packet_bytes > self.packet_bytes_max {
            return Err(SimError::PayloadTooLarge {
                device_id: self.source.device_id.clone(),
                first_seq: encoded.first_seq,
                bytes: packet_bytes,
                bytes_max: self.packet_bytes_max,
            });
        }
        self.publish(encoded.bytes.clone()).await?;
        self.sent.add(encoded.tally);
        Progress::add(&progress.sent, encoded.tally.count);
        self.window.sent(encoded);
        Ok(())
    }

    /// Publishes every unacked envelope again, each stating the oldest unacked record as it is
    /// now: an ack may have arrived since the envelope was first encoded.
    async fn republish_unacked(&self, format: ContentType) -> Result<(), SimError> {
        let Some(oldest) = self.window.unacked().next() else { return Ok(()) };
        let unacked_from = self.window.unacked_from(oldest.first_seq);
        for encoded in self.window.unacked() {
            let bytes = Envelope::restamp_unacked_from(&encoded.bytes, format, unacked_from).expect("the simulator's own envelope decodes");
            self.publish(Bytes::from(bytes)).await?;
        }
        Ok(())
    }

    /// Returns once rumqttc has queued the publish; the end-to-end ack says when it is durable.
    async fn publish(&self, payload: Bytes) -> Result<(), SimError> {
        self.client
            .publish_bytes(self.data_topic.as_str(), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| self.mqtt_error(e))
    }

    fn mqtt_error(&self, source: rumqttc::ClientError) -> SimError {
        SimError::Mqtt { device_id: self.source.device_id.clone(), source }
    }
}

/// Polls one device's event loop until the device drops its end of `state`, reconnecting with
/// jittered exponential backoff after every failure.
async fn run_link(
    mut eventloop: EventLoop,
    device_id: String,
    boot_id: String,
    state: watch::Sender<LinkState>,
    progress: Arc<Progress>,
) {
    let ack_topic = ack_topic(&device_id);
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            () = state.closed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = RECONNECT_BACKOFF_MIN;
                progress.connected.fetch_add(1, Ordering::Relaxed);
                state.send_modify(|s| {
                    s.connection += 1;
                    s.up = true;
                });
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                if suback.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))) {
                    state.send_modify(|s| s.subscribed = s.connection);
                } else {
                    tracing::warn!(device_id, topic = ack_topic, "the broker refused the ack subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == ack_topic => {
                if let Some(through) = ack_through(&publish.payload, &boot_id) {
                    state.send_if_modified(|s| {
                        let newer = through > s.acked_through;
                        s.acked_through = s.acked_through.max(through);
                        newer
                    });
                }
            }
            Ok(_) => {}
            Err(error) => {
                if state.borrow().up {
                    progress.connected.fetch_sub(1, Ordering::Relaxed);
                    state.send_modify(|s| s.up = false);
                }
                progress.note_error(&device_id, &error);
                let pause = jittered(backoff);
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = state.closed() => break,
                }
            }
        }
    }
    if state.borrow().up {
        progress.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// `backoff` plus up to half of it again, so a fleet that lost its broker does not reconnect
/// in lockstep.
fn jittered(backoff: Duration) -> Duration {
    let extra_ms = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
    backoff + Duration::from_millis(extra_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::SeriesKind;

    fn run() -> MqttRun {
        MqttRun {
            host: "127.0.0.1".into(),
            port: 1883,
            identities: None,
            fleet: FleetSpec {
                seed: 1,
                kind: SeriesKind::Device,
                id_prefix: "sim-".into(),
                series_count: 10,
                readings_per_series: 100,
                batch_records_max: 50,
                start_ns: 0,
                interval_ms: 1000,
                profile: crate::Profile::Walk,
                series_rate_per_s: 0.0,
            },
            database: "sim".into(),
            table: "readings".into(),
            format: ContentType::Cbor,
            boot_id: "b".into(),
            rate_per_s: 0,
            inflight_envelopes_max: 8,
            packet_bytes_max: PACKET_BYTES_MAX_DEFAULT,
            resend_after: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            connect_rate_per_s: 0,
            timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn validation_bounds() {
        let check = |run: MqttRun, flag: Option<&str>| {
            let got = run.validate(1_700_000_000_000_000_000).err().map(|e| match e {
                SimError::InvalidArgument { flag, .. } => flag,
                other => panic!("unexpected {other}"),
            });
            assert_eq!(got, flag);
        };
        check(run(), None);
        check(MqttRun { inflight_envelopes_max: 0, ..run() }, Some("inflight"));
        check(MqttRun { inflight_envelopes_max: INFLIGHT_ENVELOPES_MAX, ..run() }, None);
        check(MqttRun { inflight_envelopes_max: INFLIGHT_ENVELOPES_MAX + 1, ..run() }, Some("inflight"));
        check(MqttRun { rate_per_s: RATE_PER_S_MAX, ..run() }, None);
        check(MqttRun { rate_per_s: RATE_PER_S_MAX + 1, ..run() }, Some("rate"));
        check(MqttRun { resend_after: Duration::ZERO, ..run() }, Some("resend-after-ms"));
        check(MqttRun { packet_bytes_max: 1023, ..run() }, Some("packet-bytes-max"));
        check(MqttRun { packet_bytes_max: 1024, ..run() }, None);
        check(MqttRun { database: "s".into(), ..run() }, Some("database"));
    }

    #[test]
    fn link_readiness() {
        let check = |connection, up, subscribed, ready| {
            let state = LinkState { connection, up, subscribed, acked_through: 0 };
            assert_eq!(state.ready(), ready, "{state:?}");
        };
        check(0, false, 0, false);
        check(1, true, 0, false);
        check(1, true, 1, true);
        check(1, false, 1, false);
        check(2, true, 1, false); // reconnected, not yet resubscribed
        check(2, true, 2, true);
    }

    fn device(fleet: &FleetSpec) -> (Device, EventLoop) {
        let run = MqttRun { fleet: fleet.clone(), ..run() };
        let id = fleet.series_id(1);
        let (client, eventloop) = AsyncClient::new(run.mqtt_options(&id).unwrap(), request_channel_capacity(8));
        let device = Device {
            source: Source { device_id: id.clone(), boot_id: "b".into() },
            data_topic: data_topic("sim", "readings", &id),
            packet_bytes_max: PACKET_BYTES_MAX_DEFAULT,
            ack_topic: ack_topic(&id),
            series: fleet.series(1),
            window: AckWindow::new(8),
            sent: Tally::default(),
            client,
        };
        (device, eventloop)
    }

    #[tokio::test]
    async fn publishing_fills_the_window_and_the_tally() {
        let fleet = FleetSpec { readings_per_series: 120, ..run().fleet };
        let (mut device, _eventloop) = device(&fleet);
        let progress = Progress::new(120, true);
        for _ in 0..3 {
            device.publish_next(ContentType::Cbor, &progress).await.unwrap();
        }
        assert!(!device.series.has_next());
        assert_eq!(device.sent.count, 120);
        assert_eq!(progress.sent.load(Ordering::Relaxed), 120);
        assert_eq!(device.window.unacked().map(|e| (e.first_seq, e.last_seq)).collect::<Vec<_>>(), [(1, 50), (51, 100), (101, 120)]);
    }

    #[tokio::test]
    async fn an_envelope_over_the_packet_bound_is_refused_with_its_seq() {
        // 10 000 JSON records of ~170 bytes: well over 512 KiB.
        let batch = crate::series::BATCH_RECORDS_MAX;
        let fleet = FleetSpec { batch_records_max: batch, readings_per_series: u64::from(batch), ..run().fleet };
        let (mut device, _eventloop) = device(&fleet);
        let err = device.publish_next(ContentType::Json, &Progress::new(1, true)).await.unwrap_err();
        match err {
            SimError::PayloadTooLarge { device_id, first_seq, bytes, bytes_max } => {
                assert_eq!((device_id.as_str(), first_seq, bytes_max), ("sim-0001", 1, PACKET_BYTES_MAX_DEFAULT));
                assert!(bytes > PACKET_BYTES_MAX_DEFAULT);
            }
            other => panic!("unexpected {other}"),
        }
        assert_eq!(device.sent, Tally::default(), "nothing counts as sent");
    }
}
