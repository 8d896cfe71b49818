//! Bundling, without I/O: envelopes bound for one Kafka partition are packed into one message.
//!
//! Ten thousand devices publishing one reading a second are ten thousand envelopes a second; as
//! single Kafka messages they cost the broker ten thousand messages a second (tansu on SQLite
//! carries about 1,300). The [`Bundler`] keeps one open bundle per partition of the ingest topic
//! and seals it when it holds `envelopes_max` envelopes, when the next envelope would take it past
//! `bytes_max`, or `linger` after its first envelope — whichever comes first.
//!
//! A device always maps to the same partition ([`partition_of`]) and a partition's bundles are
//! sealed in order, so one device's envelopes stay in order on Kafka, as keyed messages would.

use std::time::{Duration, Instant};

pub use lodestone_model::topic::partition_of;

/// The bundling bounds (`kafka.bundle_*` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub envelopes_max: usize,
    pub bytes_max: usize,
    pub linger: Duration,
}

/// A bundle ready to produce: the encoded envelopes and what the caller attached to each.
#[derive(Debug)]
pub struct Sealed<T> {
    pub partition: i32,
    pub envelopes: Vec<Vec<u8>>,
    pub items: Vec<T>,
}

#[derive(Debug)]
struct Open<T> {
    envelopes: Vec<Vec<u8>>,
    items: Vec<T>,
    bytes: usize,
    /// When the bundle must be sealed however small it is.
    due: Instant,
}

/// One open bundle per partition. `T` is whatever the caller needs back when the bundle is sealed
/// (the bridge keeps each envelope's ack ticket and flow-control permits there).
#[derive(Debug)]
pub struct Bundler<T> {
    bounds: Bounds,
    open: Vec<Option<Open<T>>>,
}

impl<T> Bundler<T> {
    pub fn new(bounds: Bounds) -> Bundler<T> {
        Bundler { bounds, open: Vec::new() }
    }

    /// How many partitions envelopes are spread over (0 until [`Bundler::set_partitions`]).
    pub fn partitions(&self) -> usize {
        self.open.len()
    }

    /// Adopts a new partition count. Bundles open under the old count are sealed first (returned),
    /// so that nothing sealed later overtakes them.
    pub fn set_partitions(&mut self, partitions: usize) -> Vec<Sealed<T>> {
        if partitions == self.open.len() {
            return Vec::new();
        }
        let sealed = self.seal_all();
        self.open = (0..partitions).map(|_| None).collect();
        sealed
    }

    /// Adds one encoded envelope of `device_id`. Returns the bundles this seals: the partition's
    /// open bundle if the envelope does not fit in it, and the new one if it is now full.
    /// Call only once [`Bundler::partitions`] is non-zero.
    pub fn add(&mut self, device_id: &str, envelope: Vec<u8>, item: T, now: Instant) -> Vec<Sealed<T>> {
        assert!(!self.open.is_empty(), "Bundler::add before the partition count is known");
        let partition = partition_of(device_id, self.open.len());
        let mut sealed = Vec::new();
        let fits = |open: &Open<T>| open.bytes + envelope.len() <= self.bounds.bytes_max;
        if self.open[partition].as_ref().is_some_and(|open| !fits(open)) {
            sealed.extend(self.seal(partition));
        }
        let open = self.open[partition].get_or_insert_with(|| Open {
            envelopes: Vec::new(),
            items: Vec::new(),
            bytes: 0,
            due: now + self.bounds.linger,
        });
        open.bytes += envelope.len();
        open.envelopes.push(envelope);
        open.items.push(item);
        if open.envelopes.len() >= self.bounds.envelopes_max || open.bytes >= self.bounds.bytes_max {
            sealed.extend(self.seal(partition));
        }
        sealed
    }

    /// The earliest time a bundle is due, if any is open.
    pub fn next_due(&self) -> Option<Instant> {
        self.open.iter().flatten().map(|open| open.due).min()
    }

    /// Seals every bundle due by `now`.
    pub fn seal_due(&mut self, now: Instant) -> Vec<Sealed<T>> {
        let due: Vec<usize> = (0..self.open.len()).filter(|&p| self.open[p].as_ref().is_some_and(|open| open.due <= now)).collect();
        due.into_iter().filter_map(|partition| self.seal(partition)).collect()
    }

    /// Seals every open bundle (before waiting for flow control, and on shutdown).
    pub fn seal_all(&mut self) -> Vec<Sealed<T>> {
        (0..self.open.len()).filter_map(|partition| self.seal(partition)).collect()
    }

    fn seal(&mut self, partition: usize) -> Option<Sealed<T>> {
        let open = self.open[partition].take()?;
        Some(Sealed { partition: partition as i32, envelopes: open.envelopes, items: open.items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(10);

    fn bundler(envelopes_max: usize, bytes_max: usize) -> Bundler<u32> {
        let mut bundler = Bundler::new(Bounds { envelopes_max, bytes_max, linger: LINGER });
        assert!(bundler.set_partitions(4).is_empty());
        bundler
    }

    /// (partition, items) of each sealed bundle.
    fn summary(sealed: &[Sealed<u32>]) -> Vec<(i32, Vec<u32>)> {
        sealed.iter().map(|s| (s.partition, s.items.clone())).collect()
    }

    #[test]
    fn partition_is_stable_and_spread() {
        assert_eq!(partition_of("dev-1", 4), partition_of("dev-1", 4));
        // Pinned: a change here moves every device to another partition.
        assert_eq!(partition_of("", 1000), (0xcbf2_9ce4_8422_2325u64 % 1000) as usize);
        let mut per_partition = [0usize; 4];
        for i in 0..10_000 {
            per_partition[partition_of(&format!("sensor-{i:05}"), 4)] += 1;
        }
        assert!(per_partition.iter().all(|&n| (2_000..3_000).contains(&n)), "{per_partition:?}");
    }

    #[test]
    fn seals_at_the_envelope_bound() {
        let mut bundler = bundler(3, 1 << 20);
        let now = Instant::now();
        assert!(bundler.add("dev-1", vec![0; 10], 1, now).is_empty());
        assert!(bundler.add("dev-1", vec![0; 10], 2, now).is_empty());
        let sealed = bundler.add("dev-1", vec![0; 10], 3, now);
        assert_eq!(summary(&sealed), vec![(partition_of("dev-1", 4) as i32, vec![1, 2, 3])]);
        assert_eq!(bundler.next_due(), None);
    }

    #[test]
    fn seals_before_the_byte_bound_is_crossed() {
        let mut bundler = bundler(100, 100);
        let now = Instant::now();
        assert!(bundler.add("dev-1", vec![0; 60], 1, now).is_empty());
        // 60 + 50 > 100: the open bundle goes first, the new envelope opens the next one.
        assert_eq!(summary(&bundler.add("dev-1", vec![0; 50], 2, now)), vec![(partition_of("dev-1", 4) as i32, vec![1])]);
        // Exactly at the bound: sealed with it.
        assert_eq!(summary(&bundler.add("dev-1", vec![0; 50], 3, now)), vec![(partition_of("dev-1", 4) as i32, vec![2, 3])]);
        // One envelope larger than the bound travels alone.
        assert_eq!(summary(&bundler.add("dev-1", vec![0; 101], 4, now)), vec![(partition_of("dev-1", 4) as i32, vec![4])]);
    }

    #[test]
    fn seals_after_the_linger_and_keeps_order_per_partition() {
        let mut bundler = bundler(100, 1 << 20);
        let start = Instant::now();
        let devices = ["a", "b", "c", "d", "e", "f", "g", "h"];
        for (i, device) in devices.iter().enumerate() {
            assert!(bundler.add(device, vec![1], i as u32, start + Duration::from_millis(i as u64)).is_empty());
        }
        assert_eq!(bundler.next_due(), Some(start + LINGER));
        assert!(bundler.seal_due(start + LINGER - Duration::from_nanos(1)).is_empty());
        let sealed = bundler.seal_due(start + LINGER + Duration::from_millis(devices.len() as u64));
        let mut expected: Vec<(i32, Vec<u32>)> = Vec::new();
        for partition in 0..4 {
            let items: Vec<u32> = (0..devices.len()).filter(|&i| partition_of(devices[i], 4) == partition).map(|i| i as u32).collect();
            if !items.is_empty() {
                expected.push((partition as i32, items));
            }
        }
        assert_eq!(summary(&sealed), expected);
        assert_eq!(bundler.next_due(), None);
    }

    #[test]
    fn a_new_partition_count_seals_what_is_open() {
        let mut bundler = bundler(100, 1 << 20);
        let now = Instant::now();
        assert!(bundler.add("dev-1", vec![1], 1, now).is_empty());
        assert!(bundler.set_partitions(4).is_empty(), "same count: nothing sealed");
        assert_eq!(summary(&bundler.set_partitions(8)), vec![(partition_of("dev-1", 4) as i32, vec![1])]);
        assert_eq!(bundler.partitions(), 8);
        assert!(bundler.add("dev-1", vec![1], 2, now).is_empty());
        assert_eq!(summary(&bundler.seal_all()), vec![(partition_of("dev-1", 8) as i32, vec![2])]);
    }
}
