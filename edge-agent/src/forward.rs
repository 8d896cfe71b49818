//! Forwarding bookkeeping, without I/O: which envelopes to build from outbox entries, what is in
//! flight, what to send next, what an ack releases, when to resend, how long to wait before
//! reconnecting. The MQTT task in [`crate::mqtt`] only moves bytes according to these answers.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::outbox::StoredEntry;

/// Splits consecutive outbox entries into envelopes: each envelope holds entries with
/// consecutive sequence numbers for one destination, at most `records_max` of them and at most
/// `bytes_max` stored bytes (an envelope always takes at least one entry). Returns index ranges
/// into `entries`.
pub fn plan_envelopes(entries: &[StoredEntry], records_max: usize, bytes_max: usize) -> Vec<Range<usize>> {
    let mut envelopes = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        if i > start {
            let previous = &entries[i - 1];
            let continues = previous.seq + 1 == entry.seq
                && previous.destination == entry.destination
                && i - start < records_max
                && bytes + entry.stored_bytes <= bytes_max;
            if !continues {
                envelopes.push(start..i);
                start = i;
                bytes = 0;
            }
        }
        bytes += entry.stored_bytes;
    }
    if start < entries.len() {
        envelopes.push(start..entries.len());
    }
    envelopes
}

/// An envelope published and not yet acknowledged end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The sending window over the outbox's sequence numbers.
///
/// Everything up to `acked_through` is acknowledged (and may be deleted); everything after it up
/// to `sent_through` was published on the current connection and waits for an ack. At most
/// `inflight_max` envelopes wait at once. Only an end-to-end ack moves `acked_through`; a PUBACK
/// means nothing here. A new connection, or an ack that does not come within `ack_timeout`,
/// rewinds the window: everything not acknowledged is sent again, from the oldest.
#[derive(Debug)]
pub struct ForwardWindow {
    inflight_max: usize,
    ack_timeout: Duration,
    acked_through: u64,
    sent_through: u64,
    /// The highest sequence number ever published by this process; acks are clamped to it.
    published_max: u64,
    inflight: VecDeque<InFlight>,
    /// Since when the oldest in-flight envelope has waited without the ack advancing.
    waiting_since: Option<Instant>,
}

impl ForwardWindow {
    /// A window that starts after `acked_through` (from the outbox's persisted state).
    pub fn new(acked_through: u64, inflight_max: usize, ack_timeout: Duration) -> ForwardWindow {
        ForwardWindow {
            inflight_max,
            ack_timeout,
            acked_through,
            sent_through: acked_through,
            published_max: acked_through,
            inflight: VecDeque::new(),
            waiting_since: None,
        }
    }

    /// The sequence number to send from next, or `None` while the window is full.
    pub fn next_seq(&self) -> Option<u64> {
        (self.free_slots() > 0).then_some(self.sent_through + 1)
    }

    /// Envelopes that may still be published before the window is full.
    pub fn free_slots(&self) -> usize {
        self.inflight_max.saturating_sub(self.inflight.len())
    }

    pub fn in_flight(&self) -> impl Iterator<Item = &InFlight> {
        self.inflight.iter()
    }

    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// What an envelope starting at `first_seq`, about to be published, declares as the oldest
    /// record this agent still holds unacknowledged and will send again (the envelope's
    /// `unacked_from`): the first in flight, or this envelope's own first when nothing is.
    /// Records before it are acknowledged, or were dropped or skipped and will never be sent.
    pub fn unacked_from(&self, first_seq: u64) -> u64 {
        self.inflight.front().map_or(first_seq, |envelope| envelope.first_seq.min(first_seq))
    }

    /// Records that the envelope `first_seq..=last_seq` was published at `now`.
    pub fn record_sent(&mut self, first_seq: u64, last_seq: u64, now: Instant) {
        debug_assert!(first_seq > self.sent_through && last_seq >= first_seq, "sent {first_seq}..={last_seq} after {}", self.sent_through);
        if self.inflight.is_empty() {
            self.waiting_since = Some(now);
        }
        self.inflight.push_back(InFlight { first_seq, last_seq });
        self.sent_through = last_seq;
        self.published_max = self.published_max.max(last_seq);
    }

    /// Moves past sequence numbers that will not be sent (entries that could not be decoded).
    pub fn skip_through(&mut self, seq: u64) {
        self.sent_through = self.sent_through.max(seq);
    }

    /// Applies an end-to-end ack. Returns the new `acked_through` when it advanced: the outbox may
    /// delete every entry up to it. An ack beyond anything this process published is clamped.
    pub fn on_ack(&mut self, through_seq: u64, now: Instant) -> Option<u64> {
        let through = through_seq.min(self.published_max);
        if through <= self.acked_through {
            return None;
        }
        self.acked_through = through;
        self.sent_through = self.sent_through.max(through);
        while self.inflight.front().is_some_and(|envelope| envelope.last_seq <= through) {
            self.inflight.pop_front();
        }
        self.waiting_since = (!self.inflight.is_empty()).then_some(now);
        Some(through)
    }

    /// Forgets what is in flight: the next send starts again after `acked_through`. Called on
    /// every new connection and when an ack is overdue.
    pub fn rewind(&mut self) {
        self.inflight.clear();
        self.sent_through = self.acked_through;
        self.waiting_since = None;
    }

    /// When the window should be rewound if no ack advances before then.
    pub fn resend_deadline(&self) -> Option<Instant> {
        self.waiting_since.map(|since| since + self.ack_timeout)
    }
}

/// Exponential reconnect backoff with jitter: the n-th delay (from 0) is drawn uniformly from
/// the upper half of `min * 2^(n+1)`, capped at `max` (so the first lies in `[min, 2 min]`, and
/// a fleet that lost its broker at one instant does not come back at one instant).
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, attempt: 0 }
    }

    /// The next delay; `jitter` is uniform in `[0, 1)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.min.saturating_mul(2u32 << self.attempt.min(30)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)).clamp(self.min, self.max)
    }

    /// After a successful connection the next failure starts again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Destination;
    use lodestone_model::{MeasureValue, Record, Scalar};

    fn entry(seq: u64, table: &str, stored_bytes: usize) -> StoredEntry {
        StoredEntry {
            seq,
            destination: Destination { database: "iot".into(), table: table.into() },
            record: Record { dimensions: vec![], measure_name: "m".into(), value: MeasureValue::Single(Scalar::Bigint(1)), time_ns: 1, version: 1 },
            traceparent: None,
            stored_bytes,
        }
    }

    #[test]
    fn envelopes_group_consecutive_entries_for_one_destination() {
        let check = |entries: &[StoredEntry], records_max, bytes_max, expected: &[Range<usize>]| {
            assert_eq!(plan_envelopes(entries, records_max, bytes_max), expected, "entries {:?}", entries.iter().map(|e| e.seq).collect::<Vec<_>>());
        };
        let a = |seq| entry(seq, "a", 10);
        let b = |seq| entry(seq, "b", 10);
        check(&[], 500, 1000, &[]);
        check(&[a(1), a(2), a(3)], 500, 1000, &[0..3]);
        check(&[a(1), a(2), b(3), b(4), a(5)], 500, 1000, &[0..2, 2..4, 4..5]);
        check(&[a(1), a(2), a(3), a(4), a(5)], 2, 1000, &[0..2, 2..4, 4..5]);
        check(&[a(1), a(2), a(3)], 500, 20, &[0..2, 2..3]);
        check(&[a(1), a(2), a(3)], 500, 19, &[0..1, 1..2, 2..3]);
        check(&[entry(1, "a", 50), a(2)], 500, 20, &[0..1, 1..2]);
        check(&[a(1), a(2), a(4), a(5)], 500, 1000, &[0..2, 2..4]);
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn window_fills_and_acks_release_in_order() {
        let t0 = Instant::now();
        let mut window = ForwardWindow::new(10, 2, TIMEOUT);
        assert_eq!(window.next_seq(), Some(11));
        window.record_sent(11, 15, t0);
        window.record_sent(16, 20, t0);
        assert_eq!(window.next_seq(), None, "two envelopes fill a window of two");
        assert_eq!(window.on_ack(9, t0), None, "an old ack changes nothing");
        assert_eq!(window.on_ack(13, t0), Some(13), "a partial ack releases its records");
        assert_eq!(window.next_seq(), None, "the partly acked envelope still takes its slot");
        assert_eq!(window.on_ack(15, t0), Some(15));
        assert_eq!(window.next_seq(), Some(21));
        assert_eq!(window.on_ack(15, t0), None, "a repeated ack releases nothing");
        assert_eq!(window.on_ack(100, t0), Some(20), "an ack past what was published is clamped");
        assert_eq!(window.in_flight().count(), 0);
        assert_eq!(window.acked_through(), 20);
    }

    #[test]
    fn reconnect_resends_everything_unacked_from_the_oldest() {
        let t0 = Instant::now();
        let mut window = ForwardWindow::new(0, 16, TIMEOUT);
        window.record_sent(1, 5, t0);
        window.record_sent(6, 9, t0);
        window.on_ack(3, t0);
        window.rewind();
        assert_eq!(window.next_seq(), Some(4));
        assert_eq!(window.in_flight().count(), 0);
        window.record_sent(4, 9, t0);
        assert_eq!(window.on_ack(9, t0), Some(9));
        window.rewind();
        assert_eq!(window.next_seq(), Some(10));
    }

    #[test]
    fn ack_from_an_earlier_connection_still_counts_and_moves_the_window() {
        let t0 = Instant::now();
        let mut window = ForwardWindow::new(0, 16, TIMEOUT);
        window.record_sent(1, 5, t0);
        window.rewind();
        window.record_sent(1, 2, t0);
        assert_eq!(window.on_ack(5, t0), Some(5));
        assert_eq!(window.next_seq(), Some(6), "no need to resend what the ack covers");
    }

    #[test]
    fn overdue_ack_sets_a_resend_deadline_that_progress_moves() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut window = ForwardWindow::new(0, 16, TIMEOUT);
        assert_eq!(window.resend_deadline(), None, "nothing in flight, nothing to wait for");
        window.record_sent(1, 5, t0);
        window.record_sent(6, 9, t0 + second);
        assert_eq!(window.resend_deadline(), Some(t0 + TIMEOUT));
        window.on_ack(5, t0 + 2 * second);
        assert_eq!(window.resend_deadline(), Some(t0 + 2 * second + TIMEOUT));
        window.on_ack(9, t0 + 3 * second);
        assert_eq!(window.resend_deadline(), None);
    }

    #[test]
    fn envelopes_declare_the_oldest_record_still_to_be_sent() {
        let t0 = Instant::now();
        let mut window = ForwardWindow::new(0, 16, TIMEOUT);
        assert_eq!(window.unacked_from(1), 1, "nothing in flight: the envelope's own first");
        window.record_sent(1, 5, t0);
        assert_eq!(window.unacked_from(6), 1, "the oldest envelope in flight");
        window.record_sent(6, 9, t0);
        window.on_ack(5, t0);
        assert_eq!(window.unacked_from(10), 6);
        window.on_ack(7, t0);
        assert_eq!(window.unacked_from(10), 6, "a partly acked envelope is still in flight");
        window.rewind();
        assert_eq!(window.next_seq(), Some(8));
        assert_eq!(window.unacked_from(8), 8, "after a rewind the resend starts from what is left");
        window.skip_through(12);
        assert_eq!(window.unacked_from(13), 13, "skipped entries will never be sent");
    }

    #[test]
    fn skipped_entries_are_not_sent() {
        let mut window = ForwardWindow::new(0, 16, TIMEOUT);
        window.skip_through(3);
        assert_eq!(window.next_seq(), Some(4));
    }

    #[test]
    fn backoff_doubles_with_jitter_within_bounds_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(30_000));
        let lows: Vec<_> = (0..12).map(|_| backoff.next_delay(0.0)).collect();
        assert_eq!(lows[..5], [ms(100), ms(200), ms(400), ms(800), ms(1_600)]);
        assert_eq!(lows[11], ms(15_000));
        backoff.reset();
        let highs: Vec<_> = (0..12).map(|_| backoff.next_delay(0.999_999)).collect();
        assert!(highs[0] <= ms(200) && highs[0] > ms(199), "the first retry is jittered too: {:?}", highs[0]);
        assert!(highs[11] <= ms(30_000) && highs[11] > ms(29_999), "{:?}", highs[11]);
        let mut backoff = Backoff::new(ms(100), ms(30_000));
        for _ in 0..100 {
            assert!(backoff.next_delay(0.5) <= ms(30_000));
        }
    }
}
