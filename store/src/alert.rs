//! Alert rules as the catalog keeps them, with their state, and the table their state changes are
//! recorded in: `"_lodestone"."alert_history"`. The store holds the data only; the query
//! service evaluates the rules (it runs their SQL) and decides the states.

use lodestone_model::{Dimension, MeasureValue, Record, Scalar};
use serde::{Deserialize, Serialize};

use crate::table::{truncate_text, TableProperties, TableRef};

/// Lodestone's own database (the rejected records are there too).
const LODESTONE_DATABASE: &str = "_lodestone";

/// Longest `detail` kept in a history row, in bytes.
const DETAIL_BYTES_MAX: usize = 1024;

pub const ALERT_HISTORY_TABLE: &str = "alert_history";

pub fn alert_history_table() -> TableRef {
    TableRef { database: LODESTONE_DATABASE.into(), table: ALERT_HISTORY_TABLE.into() }
}

/// The alert history keeps a year in the magnetic store; late rows are accepted.
pub fn alert_history_properties() -> TableProperties {
    TableProperties { memory_retention_hours: 6, magnetic_retention_days: 366, magnetic_store_writes: true }
}

/// A rule: a query, a condition on its rows, how often, how long before it fires, and where to
/// say so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub name: String,
    pub sql: String,
    pub condition: Condition,
    pub interval_s: u64,
    /// How long the condition must hold before the rule fires (Prometheus's `for`).
    pub for_s: u64,
    /// Where notifications are POSTed; none: state changes are recorded only.
    pub webhook: Option<String>,
}

/// A row matches when its `column` compares to `value` by `op` (`>`, `>=`, `<`, `<=`, `=`, `!=`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub column: String,
    pub op: String,
    pub value: f64,
}

/// Where a rule is, as Prometheus alerting rules are: `inactive`, `pending` (the condition holds,
/// not yet for `for_s`), `firing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    #[default]
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// A rule's state between evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertStatus {
    pub state: AlertState,
    /// When the rule entered `state` (Unix nanoseconds).
    pub since_ns: i64,
    /// When it may be evaluated next; an evaluator claims an evaluation by moving this forward in
    /// a catalog commit, so that one evaluation runs per interval however many query services run.
    pub next_due_ns: i64,
    pub last_evaluated_ns: i64,
    pub last_error: Option<String>,
    /// Rows that matched at the last evaluation.
    pub matching_rows: u64,
    /// A notification decided but not yet delivered: its state change (`firing` or `resolved`)
    /// and body. Delivered by whoever evaluates the rule next, then cleared.
    pub undelivered: Option<(String, String)>,
}

/// A rule and its state, as the catalog keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEntry {
    pub rule: AlertRule,
    #[serde(default)]
    pub status: AlertStatus,
}

/// The row of the alert history for a state change of `rule` to `state` (`pending`, `firing`,
/// `resolved`, `inactive`): dimensions `rule` and `state`; the MULTI measure `change` with
/// `previous` (the state before), `rows` (the rows that matched) and `detail` (cut to 1 KiB).
pub fn history_record(rule: &str, state: &str, previous: &str, rows: u64, detail: &str, time_ns: i64) -> Record {
    let dimension = |name: &str, value: &str| Dimension { name: name.into(), value: value.into() };
    Record {
        dimensions: vec![dimension("rule", rule), dimension("state", state)],
        measure_name: "change".into(),
        value: MeasureValue::Multi(vec![
            ("detail".into(), Scalar::Varchar(truncate_text(detail, DETAIL_BYTES_MAX))),
            ("previous".into(), Scalar::Varchar(previous.into())),
            ("rows".into(), Scalar::Bigint(i64::try_from(rows).unwrap_or(i64::MAX))),
        ]),
        time_ns,
        version: 1,
    }
}
