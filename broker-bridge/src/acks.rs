//! End-to-end acknowledgement bookkeeping, without I/O.
//!
//! An [`Ack`] promises a device that *every* record of its boot up to `through_seq` is durable in
//! Kafka. The [`AckLedger`] keeps that promise:
//!
//! - **Order:** envelopes are admitted in the order the broker delivered them; per device, an
//!   ack is released only when the envelope and every envelope admitted before it are settled,
//!   so an ack for N+1 never leaves before N is durable.
//! - **Gaps:** rumqttd keeps publishes in a bounded in-memory log and drops the oldest when the
//!   bridge falls behind. Per (device, boot) the ledger tracks the end of the contiguous run of
//!   sequence numbers it has seen; an envelope that starts past that end is still produced to
//!   Kafka but earns no ack until the device resends what is missing.
//! - **Failures:** when Kafka refuses an envelope, the run is rolled back to what was covered
//!   before it, and envelopes admitted after it (same boot) lose their ack.
//!
//! - **Start of a run:** a device that tracks acks says in every envelope where its
//!   unacknowledged records start (`unacked_from`). The run of a (device, boot) the bridge has not
//!   heard of starts there, so when the broker lost the first envelopes a device resent after a
//!   bridge restart, the later ones earn no ack until those are resent too. Everything before
//!   `unacked_from` is acknowledged or given up by the device, so a run that ends before it moves
//!   up to it. Without `unacked_from` (devices that ignore acks) the first envelope seen sets the
//!   start: the bridge cannot know about records lost before it heard of the device.

use std::collections::{HashMap, VecDeque};

use lodestone_model::topic::Ack;

/// Boots remembered per device (an agent may still resend records of its previous boot).
const BOOTS_PER_DEVICE_MAX: usize = 4;

/// The records of one envelope: `first_seq .. first_seq + count`, accepted or rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRange {
    pub device_id: String,
    pub boot_id: String,
    pub first_seq: u64,
    pub count: u64,
    /// The envelope's `unacked_from`: the device's oldest record of this boot not yet acked.
    pub unacked_from: Option<u64>,
}

impl SeqRange {
    fn end(&self) -> u64 {
        self.first_seq.saturating_add(self.count)
    }
}

/// An admitted envelope; hand it back to [`AckLedger::delivered`] or [`AckLedger::failed`].
#[derive(Debug)]
pub struct Ticket {
    device_id: String,
    id: u64,
    /// The envelope did not continue its device's contiguous run: it will not be acked.
    pub gap: bool,
}

/// An ack ready to publish on the device's ack topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAck {
    pub device_id: String,
    pub ack: Ack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    boot_id: String,
    /// End (exclusive) of the contiguous run this envelope completes; `None`: nothing to ack.
    covers_end: Option<u64>,
    state: State,
}

#[derive(Debug)]
struct BootMarks {
    boot_id: String,
    /// Every sequence number from the base up to here (exclusive) was admitted, in order.
    received_end: u64,
    /// Every sequence number from the base up to here (exclusive) is durable and acked.
    durable_end: u64,
}

#[derive(Debug, Default)]
struct DeviceLedger {
    queue: VecDeque<Entry>,
    boots: VecDeque<BootMarks>,
    last_admitted: u64,
}

impl DeviceLedger {
    fn boot_mut(&mut self, boot_id: &str) -> Option<&mut BootMarks> {
        self.boots.iter_mut().find(|b| b.boot_id == boot_id)
    }
}

/// Per-device FIFO of envelopes awaiting Kafka, and the sequence watermarks behind the acks.
#[derive(Debug)]
pub struct AckLedger {
    devices: HashMap<String, DeviceLedger>,
    next_id: u64,
    devices_tracked_max: usize,
}

impl AckLedger {
    /// `devices_tracked_max` bounds the devices remembered; at the bound, devices with nothing in
    /// flight that were not seen recently are forgotten.
    pub fn new(devices_tracked_max: usize) -> AckLedger {
        AckLedger { devices: HashMap::new(), next_id: 0, devices_tracked_max: devices_tracked_max.max(1) }
    }

    /// Records that `range` was read from the broker, in broker order, before it is produced.
    pub fn admit(&mut self, range: &SeqRange) -> Ticket {
        let id = self.next_id;
        self.next_id += 1;
        let device = self.devices.entry(range.device_id.clone()).or_default();
        device.last_admitted = id;
        if device.boot_mut(&range.boot_id).is_none() {
            if device.boots.len() >= BOOTS_PER_DEVICE_MAX {
                device.boots.pop_front();
            }
            let base = range.unacked_from.map_or(range.first_seq, |from| from.min(range.first_seq));
            device.boots.push_back(BootMarks { boot_id: range.boot_id.clone(), received_end: base, durable_end: base });
        }
        let boot = device.boot_mut(&range.boot_id).expect("boot marks were just ensured");
        if let Some(from) = range.unacked_from {
            // The device holds nothing before `from` that it will send again.
            boot.received_end = boot.received_end.max(from.min(range.first_seq));
        }
        let contiguous = range.first_seq <= boot.received_end;
        let covers_end = contiguous.then(|| {
            boot.received_end = boot.received_end.max(range.end());
            boot.received_end
        });
        device.queue.push_back(Entry { id, boot_id: range.boot_id.clone(), covers_end, state: State::Pending });
        self.forget_idle_devices();
        Ticket { device_id: range.device_id.clone(), id, gap: !contiguous }
    }

    /// Kafka acknowledged every message of the ticket's envelope. Returns the acks that may now
    /// be published, in order.
    pub fn delivered(&mut self, ticket: Ticket) -> Vec<DeviceAck> {
        self.settle(ticket, State::Delivered)
    }

    /// Kafka refused a message of the ticket's envelope: it and what depends on it stay unacked
    /// (the device resends). Returns the acks that may now be published, in order.
    pub fn failed(&mut self, ticket: Ticket) -> Vec<DeviceAck> {
        self.settle(ticket, State::Failed)
    }

    /// Envelopes admitted and not yet settled or not yet released in order.
    pub fn queued(&self) -> usize {
        self.devices.values().map(|d| d.queue.len()).sum()
    }

    pub fn devices_tracked(&self) -> usize {
        self.devices.len()
    }

    fn settle(&mut self, ticket: Ticket, state: State) -> Vec<DeviceAck> {
        let Some(device) = self.devices.get_mut(&ticket.device_id) else { return Vec::new() };
        let Some(index) = device.queue.iter().position(|e| e.id == ticket.id) else { return Vec::new() };
        device.queue[index].state = state;
        if state == State::Failed {
            roll_back(device, index);
        }
        release(&ticket.device_id, device)
    }

    fn forget_idle_devices(&mut self) {
        if self.devices.len() <= self.devices_tracked_max {
            return;
        }
        // Keep devices admitted within the last half-bound of admissions: at most that many.
        let horizon = self.next_id.saturating_sub((self.devices_tracked_max as u64 / 2).max(1));
        self.devices.retain(|_, d| !d.queue.is_empty() || d.last_admitted >= horizon);
    }
}

/// The entry at `failed` will never be durable: its boot's run ends where the last live entry
/// before it (or the durable mark) ended, and later entries of that boot cannot be acked.
fn roll_back(device: &mut DeviceLedger, failed: usize) {
    let entry = &device.queue[failed];
    if entry.covers_end.is_none() {
        return; // it did not extend the run, so nothing depends on it
    }
    let boot_id = entry.boot_id.clone();
    let before = device
        .queue
        .iter()
        .take(failed)
        .rev()
        .filter(|e| e.boot_id == boot_id && e.state != State::Failed)
        .find_map(|e| e.covers_end);
    for later in device.queue.iter_mut().skip(failed + 1).filter(|e| e.boot_id == boot_id) {
        later.covers_end = None;
    }
    if let Some(boot) = device.boot_mut(&boot_id) {
        boot.received_end = before.unwrap_or(boot.durable_end).max(boot.durable_end);
    }
}

/// Pops settled entries from the front of the device's queue; consecutive acks of one boot are
/// merged into the highest.
fn release(device_id: &str, device: &mut DeviceLedger) -> Vec<DeviceAck> {
    let mut acks: Vec<DeviceAck> = Vec::new();
    while device.queue.front().is_some_and(|e| e.state != State::Pending) {
        let entry = device.queue.pop_front().expect("front was just checked");
        let Some(end) = entry.covers_end.filter(|&end| end > 0 && entry.state == State::Delivered) else { continue };
        if let Some(boot) = device.boot_mut(&entry.boot_id) {
            boot.durable_end = boot.durable_end.max(end);
        }
        let through_seq = end - 1;
        match acks.last_mut() {
            Some(last) if last.ack.boot_id == entry.boot_id => last.ack.through_seq = last.ack.through_seq.max(through_seq),
            _ => acks.push(DeviceAck { device_id: device_id.into(), ack: Ack { boot_id: entry.boot_id, through_seq } }),
        }
    }
    acks
}

/// Merges acks for the same device and boot, keeping each device's order: the highest
/// `through_seq` stands for the run. Used to publish one ack per device for a burst.
pub fn coalesce(acks: impl IntoIterator<Item = DeviceAck>) -> Vec<DeviceAck> {
    let mut merged: Vec<DeviceAck> = Vec::new();
    let mut last_by_device: HashMap<String, usize> = HashMap::new();
    for ack in acks {
        match last_by_device.get(&ack.device_id).map(|&i| &mut merged[i]) {
            Some(last) if last.ack.boot_id == ack.ack.boot_id => last.ack.through_seq = last.ack.through_seq.max(ack.ack.through_seq),
            _ => {
                last_by_device.insert(ack.device_id.clone(), merged.len());
                merged.push(ack);
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        /// device, boot, first_seq, count; no `unacked_from`
        Admit(&'static str, &'static str, u64, u64),
        /// device, boot, first_seq, count, unacked_from
        From(&'static str, &'static str, u64, u64, u64),
        /// the n-th admitted envelope
        Deliver(usize),
        Fail(usize),
    }
    use Step::*;

    /// Runs a script and returns what happened: `gap #n` for an admission past the run, and
    /// `ack DEVICE BOOT THROUGH` for each ack released.
    fn run(devices_tracked_max: usize, script: &[Step]) -> Vec<String> {
        let mut ledger = AckLedger::new(devices_tracked_max);
        let mut tickets: Vec<Option<Ticket>> = Vec::new();
        let mut events = Vec::new();
        for step in script {
            let acks = match *step {
                Admit(device_id, boot_id, first_seq, count) | From(device_id, boot_id, first_seq, count, _) => {
                    let unacked_from = match *step {
                        From(.., unacked_from) => Some(unacked_from),
                        _ => None,
                    };
                    let range = SeqRange { device_id: device_id.into(), boot_id: boot_id.into(), first_seq, count, unacked_from };
                    let ticket = ledger.admit(&range);
                    if ticket.gap {
                        events.push(format!("gap #{}", tickets.len()));
                    }
                    tickets.push(Some(ticket));
                    continue;
                }
                Deliver(n) => ledger.delivered(tickets[n].take().expect("settled twice")),
                Fail(n) => ledger.failed(tickets[n].take().expect("settled twice")),
            };
            events.extend(acks.into_iter().map(|a| format!("ack {} {} {}", a.device_id, a.ack.boot_id, a.ack.through_seq)));
        }
        events
    }

    fn check(script: &[Step], expected: &[&str]) {
        assert_eq!(run(1000, script), expected);
    }

    #[test]
    fn acks_leave_in_admission_order() {
        check(&[Admit("d1", "a", 10, 5), Admit("d1", "a", 15, 5), Deliver(0), Deliver(1)], &["ack d1 a 14", "ack d1 a 19"]);
        // N+1 delivered first waits for N; then both are released as one ack.
        check(&[Admit("d1", "a", 10, 5), Admit("d1", "a", 15, 5), Deliver(1), Deliver(0)], &["ack d1 a 19"]);
        // Devices do not wait for each other.
        check(&[Admit("d1", "a", 10, 5), Admit("d2", "a", 0, 1), Deliver(1), Deliver(0)], &["ack d2 a 0", "ack d1 a 14"]);
        // A new boot starts its own run; acks of different boots are not merged.
        check(
            &[Admit("d1", "a", 10, 5), Admit("d1", "b", 0, 3), Deliver(1), Deliver(0)],
            &["ack d1 a 14", "ack d1 b 2"],
        );
    }

    #[test]
    fn resends_and_empty_envelopes() {
        // A resend of acked records is acked again (the device may have missed the first ack).
        check(&[Admit("d1", "a", 10, 5), Deliver(0), Admit("d1", "a", 10, 5), Deliver(1)], &["ack d1 a 14", "ack d1 a 14"]);
        // An empty envelope acks the run so far, and nothing when there is none.
        check(&[Admit("d1", "a", 0, 0), Deliver(0)], &[]);
        check(&[Admit("d1", "a", 10, 5), Admit("d1", "a", 15, 0), Deliver(1), Deliver(0)], &["ack d1 a 14"]);
    }

    #[test]
    fn a_gap_is_not_acked_until_filled() {
        check(
            &[
                Admit("d1", "a", 10, 5),
                Admit("d1", "a", 20, 5), // 15..19 lost in the broker
                Deliver(0),
                Deliver(1),
                Admit("d1", "a", 15, 5), // the device resends
                Deliver(2),
                Admit("d1", "a", 20, 5),
                Deliver(3),
            ],
            &["gap #1", "ack d1 a 14", "ack d1 a 19", "ack d1 a 24"],
        );
    }

    #[test]
    fn a_run_starts_where_the_device_says_its_unacked_records_start() {
        // A restarted bridge: the broker lost the device's resent 10..19, and 20..24 arrives
        // first. Without `unacked_from` the run would start at 20 and ack 10..19 unseen.
        check(
            &[
                From("d1", "a", 20, 5, 10),
                Deliver(0),
                From("d1", "a", 10, 10, 10), // the device resends from its oldest
                Deliver(1),
                From("d1", "a", 20, 5, 10),
                Deliver(2),
            ],
            &["gap #0", "ack d1 a 19", "ack d1 a 24"],
        );
        // Records acked by an earlier bridge process: the run moves up to `unacked_from`.
        check(&[From("d1", "a", 30, 5, 30), Deliver(0)], &["ack d1 a 34"]);
        check(
            &[From("d1", "a", 10, 5, 10), Deliver(0), From("d1", "a", 30, 5, 30), Deliver(1)],
            &["ack d1 a 14", "ack d1 a 34"],
        );
        // The run moves up to `unacked_from` only: an envelope past it is still a gap.
        check(&[From("d1", "a", 10, 5, 10), Deliver(0), From("d1", "a", 30, 5, 20), Deliver(1)], &["ack d1 a 14", "gap #1"]);
        // A claim past the envelope's own first record is read as the envelope's first.
        check(&[From("d1", "a", 10, 5, 12), Deliver(0)], &["ack d1 a 14"]);
    }

    #[test]
    fn a_failure_withholds_later_acks_of_its_boot() {
        check(
            &[
                Admit("d1", "a", 10, 5),
                Admit("d1", "a", 15, 5),
                Admit("d1", "a", 20, 5),
                Admit("d1", "b", 0, 5),
                Fail(1),
                Deliver(2),
                Deliver(3),
                Deliver(0),          // releases 0 (acked), 1 (failed), 2 (no ack), 3 (other boot)
                Admit("d1", "a", 25, 5), // still past the rolled-back run
                Admit("d1", "a", 15, 5), // the resend
                Deliver(5),
                Deliver(4),
            ],
            // 20..24 reached Kafka but stays unacked until the device resends it.
            &["ack d1 a 14", "ack d1 b 4", "gap #4", "ack d1 a 19"],
        );
        // The first envelope of a run fails: the next one must start at its first record.
        check(
            &[Admit("d1", "a", 10, 5), Fail(0), Admit("d1", "a", 15, 5), Admit("d1", "a", 10, 5), Deliver(1), Deliver(2)],
            &["gap #1", "ack d1 a 14"],
        );
        // A failed envelope that was already a gap changes nothing.
        check(
            &[Admit("d1", "a", 10, 5), Admit("d1", "a", 20, 5), Admit("d1", "a", 15, 5), Fail(1), Deliver(0), Deliver(2)],
            &["gap #1", "ack d1 a 14", "ack d1 a 19"],
        );
    }

    #[test]
    fn coalescing_keeps_each_devices_order() {
        let ack = |device_id: &str, boot_id: &str, through_seq| DeviceAck {
            device_id: device_id.into(),
            ack: Ack { boot_id: boot_id.into(), through_seq },
        };
        let check = |input: Vec<DeviceAck>, expected: Vec<DeviceAck>| assert_eq!(coalesce(input), expected);
        check(vec![], vec![]);
        check(vec![ack("d1", "a", 1), ack("d2", "a", 5), ack("d1", "a", 3)], vec![ack("d1", "a", 3), ack("d2", "a", 5)]);
        check(vec![ack("d1", "a", 3), ack("d1", "a", 2)], vec![ack("d1", "a", 3)]);
        // A boot change ends the run: the old boot's ack still goes first.
        check(
            vec![ack("d1", "a", 1), ack("d1", "b", 0), ack("d1", "b", 4)],
            vec![ack("d1", "a", 1), ack("d1", "b", 4)],
        );
    }

    #[test]
    fn idle_devices_are_forgotten_at_the_bound() {
        let mut ledger = AckLedger::new(2);
        for device_id in ["d1", "d2", "d3", "d4"] {
            let ticket = ledger.admit(&SeqRange { device_id: device_id.into(), boot_id: "a".into(), first_seq: 10, count: 5, unacked_from: None });
            ledger.delivered(ticket);
        }
        assert!(ledger.devices_tracked() <= 2, "{}", ledger.devices_tracked());
        assert_eq!(ledger.queued(), 0);
        // d1 was forgotten: its next envelope starts a new run instead of being a gap.
        let ticket = ledger.admit(&SeqRange { device_id: "d1".into(), boot_id: "a".into(), first_seq: 30, count: 5, unacked_from: None });
        assert!(!ticket.gap);
        // Devices with envelopes in flight are never forgotten.
        let mut ledger = AckLedger::new(1);
        let pending = ledger.admit(&SeqRange { device_id: "d1".into(), boot_id: "a".into(), first_seq: 10, count: 5, unacked_from: None });
        let other = ledger.admit(&SeqRange { device_id: "d2".into(), boot_id: "a".into(), first_seq: 0, count: 1, unacked_from: None });
        ledger.delivered(other);
        let acks = ledger.delivered(pending);
        assert_eq!(acks, vec![DeviceAck { device_id: "d1".into(), ack: Ack { boot_id: "a".into(), through_seq: 14 } }]);
    }
}
