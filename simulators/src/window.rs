//! A device's side of the end-to-end ack: which envelopes are out and not yet covered.
//!
//! The bridge acks a device with [`Ack`] `{boot_id, through_seq}` once Kafka holds every record
//! up to `through_seq`. A simulated device keeps at most `envelopes_max` envelopes beyond its
//! latest ack, and keeps their bytes so it can publish them again after a reconnect (a clean
//! MQTT session drops whatever was queued) or when acks stop coming.

use std::collections::VecDeque;

use lodestone_model::topic::Ack;

use crate::wire::Encoded;

/// Envelopes sent and not yet acknowledged, oldest first.
#[derive(Debug)]
pub struct AckWindow {
    envelopes_max: usize,
    unacked: VecDeque<Encoded>,
    sent_through: u64,
    acked_through: u64,
}

impl AckWindow {
    /// A window for up to `envelopes_max` (at least 1) unacknowledged envelopes.
    pub fn new(envelopes_max: usize) -> AckWindow {
        AckWindow { envelopes_max: envelopes_max.max(1), unacked: VecDeque::new(), sent_through: 0, acked_through: 0 }
    }

    /// Whether another envelope may be sent.
    pub fn has_room(&self) -> bool {
        self.unacked.len() < self.envelopes_max
    }

    /// The `unacked_from` of an envelope starting at `first_seq`, about to be sent: the first
    /// record of the oldest unacked envelope (what a resend starts with), or `first_seq` itself.
    pub fn unacked_from(&self, first_seq: u64) -> u64 {
        self.unacked.front().map_or(first_seq, |envelope| envelope.first_seq)
    }

    /// Records a newly sent envelope; it must follow the previous one without a gap.
    pub fn sent(&mut self, envelope: Encoded) {
        debug_assert_eq!(envelope.first_seq, self.sent_through + 1, "envelopes must be sent in sequence order");
        self.sent_through = envelope.last_seq;
        self.unacked.push_back(envelope);
    }

    /// Applies an ack through `through_seq` (an ack beyond what was sent counts up to what was
    /// sent; an older one changes nothing). Returns how many readings it newly covers.
    pub fn ack(&mut self, through_seq: u64) -> u64 {
        let through = through_seq.min(self.sent_through);
        if through <= self.acked_through {
            return 0;
        }
        let newly = through - self.acked_through;
        self.acked_through = through;
        while self.unacked.front().is_some_and(|e| e.last_seq <= through) {
            self.unacked.pop_front();
        }
        newly
    }

    /// The highest sequence number covered by an ack (0 before the first).
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// Envelopes not yet fully covered, oldest first: what to publish again.
    pub fn unacked(&self) -> impl Iterator<Item = &Encoded> {
        self.unacked.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// The `through_seq` of an ack payload meant for this boot, `None` for anything else (an ack
/// for another boot of the same device id, or a payload that is not an ack).
pub fn ack_through(payload: &[u8], boot_id: &str) -> Option<u64> {
    Ack::from_json(payload).filter(|ack| ack.boot_id == boot_id).map(|ack| ack.through_seq)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::series::Tally;

    fn envelope(first_seq: u64, last_seq: u64) -> Encoded {
        let count = last_seq - first_seq + 1;
        Encoded { first_seq, last_seq, tally: Tally { count, sum_quarters: 0 }, bytes: Bytes::new() }
    }

    /// Sends envelopes of `sizes` records into a window of `max`, then applies `acks`; checks
    /// the readings each ack covers, and what stays unacked.
    fn check(max: usize, sizes: &[u64], acks: &[u64], newly: &[u64], acked_through: u64, unacked_firsts: &[u64]) {
        let mut window = AckWindow::new(max);
        let mut next = 1;
        for size in sizes {
            assert!(window.has_room());
            window.sent(envelope(next, next + size - 1));
            next += size;
        }
        let got: Vec<u64> = acks.iter().map(|&a| window.ack(a)).collect();
        assert_eq!(got, newly, "acks {acks:?}");
        assert_eq!(window.acked_through(), acked_through);
        assert_eq!(window.unacked().map(|e| e.first_seq).collect::<Vec<_>>(), unacked_firsts);
        // The next envelope declares the oldest unacked one's first record, or its own.
        assert_eq!(window.unacked_from(next), unacked_firsts.first().copied().unwrap_or(next));
    }

    #[test]
    fn acks_cover_envelopes() {
        check(8, &[50, 50, 50], &[], &[], 0, &[1, 51, 101]);
        check(8, &[50, 50, 50], &[50], &[50], 50, &[51, 101]);
        check(8, &[50, 50, 50], &[150], &[150], 150, &[]);
        // An ack inside an envelope keeps it (its tail is not yet durable).
        check(8, &[50, 50, 50], &[75], &[75], 75, &[51, 101]);
        check(8, &[50, 50, 50], &[75, 100], &[75, 25], 100, &[101]);
        // Stale and repeated acks change nothing.
        check(8, &[50, 50], &[100, 50, 100], &[100, 0, 0], 100, &[]);
        // An ack beyond what was sent counts only what was sent.
        check(8, &[10], &[1_000], &[10], 10, &[]);
        check(8, &[], &[5], &[0], 0, &[]);
    }

    #[test]
    fn window_bound() {
        for max in [1, 2, 8] {
            let mut window = AckWindow::new(max);
            for i in 0..max as u64 {
                assert!(window.has_room(), "max {max}");
                window.sent(envelope(i * 10 + 1, i * 10 + 10));
            }
            assert!(!window.has_room(), "max {max}: one past the bound");
            window.ack(10);
            assert!(window.has_room(), "max {max}: an ack frees room");
        }
        assert!(AckWindow::new(0).has_room(), "a window holds at least one envelope");
    }

    #[test]
    fn acks_for_this_boot_only() {
        let check = |payload: &[u8], expected: Option<u64>| assert_eq!(ack_through(payload, "b1"), expected);
        check(br#"{"boot_id":"b1","through_seq":150}"#, Some(150));
        check(br#"{"boot_id":"b0","through_seq":150}"#, None);
        check(br#"{"through_seq":150}"#, None);
        check(b"not json", None);
        check(&Ack { boot_id: "b1".into(), through_seq: 7 }.to_json(), Some(7));
    }
}
