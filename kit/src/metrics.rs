//! The Prometheus text exposition format (0.0.4) that every service's `/metrics` writes, and the
//! counter-by-reason that every stage keeps for what it rejected and discarded.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::Mutex;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A `/metrics` answer being written: one family after another, each with its `# HELP` and
/// `# TYPE` lines and its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition { out: String::with_capacity(2048) }
    }

    /// A family of one unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Exposition {
        self.family(name, Kind::Counter, help, "", [((), value)])
    }

    /// A family of one unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) -> &mut Exposition {
        self.family(name, Kind::Gauge, help, "", [((), value)])
    }

    /// A family whose samples differ by one label, `label` (unlabelled when `label` is empty).
    /// Label values are escaped as the format requires.
    pub fn family<L: LabelValue, V: Display>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) -> &mut Exposition {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        for (value_of_label, value) in samples {
            match value_of_label.label_value() {
                Some(text) if !label.is_empty() => {
                    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    let _ = writeln!(self.out, "{name}{{{label}=\"{escaped}\"}} {value}");
                }
                _ => {
                    let _ = writeln!(self.out, "{name} {value}");
                }
            }
        }
        self
    }

    /// The families every service has: OTLP exports that failed ([`crate::telemetry`]).
    pub fn service_families(&mut self) -> &mut Exposition {
        self.counter("lodestone_otlp_export_failures_total", "Exports of spans to the OTLP collector that failed (the spans are dropped).", crate::telemetry::export_failures())
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// What can stand as a label's value: text, or `()` for an unlabelled sample.
pub trait LabelValue {
    fn label_value(&self) -> Option<String>;
}

impl LabelValue for () {
    fn label_value(&self) -> Option<String> {
        None
    }
}

impl LabelValue for &str {
    fn label_value(&self) -> Option<String> {
        Some((*self).to_string())
    }
}

impl LabelValue for String {
    fn label_value(&self) -> Option<String> {
        Some(self.clone())
    }
}

/// Counts by reason (or any other label): what a stage rejected or discarded, and why.
#[derive(Debug)]
pub struct CountsBy<K> {
    counts: Mutex<BTreeMap<K, u64>>,
}

impl<K> Default for CountsBy<K> {
    fn default() -> Self {
        CountsBy { counts: Mutex::new(BTreeMap::new()) }
    }
}

impl<K: Ord + Clone> CountsBy<K> {
    pub fn add(&self, key: K, n: u64) {
        *self.counts.lock().expect("counts lock").entry(key).or_insert(0) += n;
    }

    /// Every key counted so far, in order, with its count.
    pub fn snapshot(&self) -> Vec<(K, u64)> {
        self.counts.lock().expect("counts lock").iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn get(&self, key: &K) -> u64 {
        self.counts.lock().expect("counts lock").get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_carry_help_type_and_escaped_labels() {
        let rejected = CountsBy::default();
        rejected.add("malformed_payload", 2);
        rejected.add("say \"hi\"\\", 1);
        let mut text = Exposition::new();
        text.counter("x_received_total", "Things received.", 3).gauge("x_inflight", "In flight.", -1i64);
        text.family("x_rejected_total", Kind::Counter, "Rejected, by reason.", "reason", rejected.snapshot());
        let text = text.finish();
        let expected = "\
# HELP x_received_total Things received.
# TYPE x_received_total counter
x_received_total 3
# HELP x_inflight In flight.
# TYPE x_inflight gauge
x_inflight -1
# HELP x_rejected_total Rejected, by reason.
# TYPE x_rejected_total counter
x_rejected_total{reason=\"malformed_payload\"} 2
x_rejected_total{reason=\"say \\\"hi\\\"\\\\\"} 1
";
        assert_eq!(text, expected);
    }
}
