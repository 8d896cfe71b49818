//! Alert rules: a SQL query, a condition on its rows, an evaluation interval and a `for`
//! duration, and a webhook. They live in the catalog ([`lodestone_store::AlertEntry`]), so they
//! survive restarts and every query service sees the same; each evaluation is claimed in a
//! catalog commit ([`Store::claim_alert`]), so a rule runs once per interval however many query
//! services run. States go `inactive → pending → firing → (resolved) inactive`, as Prometheus
//! alerting rules do; every change is a row of `"_lodestone"."alert_history"`, written with the
//! state in one commit, and `firing` and `resolved` are POSTed to the rule's webhook.
//!
//! A notification is decided in the commit that changes the state and delivered after it; until
//! delivered it stays in the rule's state (`undelivered`) and whoever evaluates the rule next
//! delivers it again. So a restart delivers nothing twice, and a crash between the commit and the
//! delivery delays it by one interval.
//!
//! The decisions are plain functions ([`next_status`], [`matching`]); [`Evaluator`] runs them.
//!
//! Routes: `GET /v1/alerts` (a reader of every database), `POST /v1/alerts` and
//! `DELETE /v1/alerts/{name}` (`admin`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Json;
use lodestone_kit::auth::{Principal, Scope};
use lodestone_store::{history_record, AlertEntry, AlertRule, AlertState, AlertStatus, Condition, Store, StoreError};
use serde_json::{json, Map, Value};

use crate::api::ApiError;
use crate::engine::{Engine, QueryResult};

/// How often the evaluator looks for rules that are due (a rule is evaluated at most this late).
const TICK: Duration = Duration::from_millis(500);
/// Bounds on a rule's timing.
const INTERVAL_S_MAX: u64 = 86_400;
/// Rows of a notification's body at most (all are counted).
const NOTIFIED_ROWS_MAX: usize = 100;
/// How long a webhook may take to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Operators of a condition.
const OPERATORS: [&str; 6] = [">", ">=", "<", "<=", "=", "!="];

/// What one evaluation changed: the history row's state and the one before, and whether to
/// notify (`firing` or `resolved`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub state: &'static str,
    pub previous: &'static str,
    pub notify: bool,
}

/// The state after an evaluation at `now_ns` that found `matching` rows (or failed), from
/// `status`; and the change, if the state changed.
pub fn next_status(rule: &AlertRule, status: &AlertStatus, matching: Result<u64, String>, now_ns: i64) -> (AlertStatus, Option<Change>) {
    let mut next = AlertStatus { last_evaluated_ns: now_ns, ..status.clone() };
    let rows = match matching {
        Ok(rows) => rows,
        Err(error) => {
            next.last_error = Some(error);
            return (next, None);
        }
    };
    next.last_error = None;
    next.matching_rows = rows;
    let held_ns = now_ns.saturating_sub(status.since_ns);
    let for_ns = i64::try_from(rule.for_s).unwrap_or(i64::MAX).saturating_mul(1_000_000_000);
    let (state, change) = match (status.state, rows > 0) {
        (AlertState::Inactive, true) if rule.for_s == 0 => (AlertState::Firing, Some(("firing", true))),
        (AlertState::Inactive, true) => (AlertState::Pending, Some(("pending", false))),
        (AlertState::Pending, true) if held_ns >= for_ns => (AlertState::Firing, Some(("firing", true))),
        (AlertState::Pending, false) => (AlertState::Inactive, Some(("inactive", false))),
        (AlertState::Firing, false) => (AlertState::Inactive, Some(("resolved", true))),
        (state, _) => (state, None),
    };
    let Some((name, notify)) = change else { return (next, None) };
    next.state = state;
    next.since_ns = now_ns;
    (next, Some(Change { state: name, previous: status.state.as_str(), notify }))
}

/// The rows of `answer` that meet `condition`, as objects; an error when the answer has no such
/// column. A value counts when it is a number, or text that reads as one.
pub fn matching(answer: &QueryResult, condition: &Condition) -> Result<Vec<Map<String, Value>>, String> {
    let names: Vec<&str> = answer.columns.iter().map(|c| c.name.as_str()).collect();
    let column = names.iter().position(|name| *name == condition.column).ok_or_else(|| format!("the query answers no column {:?} (it answers {})", condition.column, names.join(", ")))?;
    let meets = |value: f64| match condition.op.as_str() {
        ">" => value > condition.value,
        ">=" => value >= condition.value,
        "<" => value < condition.value,
        "<=" => value <= condition.value,
        "=" => value == condition.value,
        _ => value != condition.value,
    };
    let number = |value: &Value| value.as_f64().or_else(|| value.as_str()?.parse().ok());
    Ok(answer
        .rows
        .iter()
        .filter(|row| row.get(column).and_then(number).is_some_and(meets))
        .map(|row| names.iter().zip(row).map(|(name, value)| (name.to_string(), value.clone())).collect())
        .collect())
}

/// A rule as `POST /v1/alerts` takes it, checked.
pub async fn checked_rule(engine: &Engine, rule: AlertRule) -> Result<AlertRule, String> {
    let name_ok = (1..=64).contains(&rule.name.len()) && rule.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(format!("name {:?} must be 1 to 64 of A-Z a-z 0-9 - _ .", rule.name));
    }
    if !(1..=INTERVAL_S_MAX).contains(&rule.interval_s) || rule.for_s > INTERVAL_S_MAX {
        return Err(format!("interval_s must be 1 to {INTERVAL_S_MAX}, for_s 0 to {INTERVAL_S_MAX}"));
    }
    if !OPERATORS.contains(&rule.condition.op.as_str()) || !rule.condition.value.is_finite() {
        return Err(format!("condition.op must be one of {} and condition.value a finite number", OPERATORS.join(" ")));
    }
    if let Some(url) = rule.webhook.as_deref().filter(|u| !(u.starts_with("https://") || u.starts_with("http://"))) {
        return Err(format!("webhook {url:?} must be an http:// or https:// URL"));
    }
    let columns = engine.columns_of(&rule.sql, &Principal::anonymous()).await.map_err(|e| format!("sql: {e}"))?;
    if columns.field_with_name(&rule.condition.column).is_err() {
        let names: Vec<&str> = columns.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(format!("the query answers no column {:?} (it answers {})", rule.condition.column, names.join(", ")));
    }
    Ok(rule)
}

/// Evaluates the rules that are due, claims each evaluation in the catalog, records and delivers
/// their changes.
pub struct Evaluator {
    engine: Arc<Engine>,
    webhooks: reqwest::Client,
    /// The console's URL, given in notifications.
    console_url: String,
}

impl Evaluator {
    pub fn new(engine: Arc<Engine>, webhooks: reqwest::Client, console_url: String) -> Arc<Evaluator> {
        Arc::new(Evaluator { engine, webhooks, console_url })
    }

    fn store(&self) -> &Store {
        self.engine.store()
    }

    /// Evaluates until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: lodestone_kit::Shutdown) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(error) = self.round().await {
                        tracing::warn!(%error, "alert round failed; trying again at the next tick");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One look at every rule: those due are claimed and evaluated.
    pub async fn round(&self) -> Result<(), StoreError> {
        let now = lodestone_kit::now_ns();
        let snapshot = self.store().snapshot().await?;
        let due: Vec<String> = snapshot.alerts.values().filter(|e| e.status.next_due_ns <= now).map(|e| e.rule.name.clone()).collect();
        for name in due {
            if let Some(entry) = self.store().claim_alert(&name, now).await? {
                self.evaluate(entry).await?;
            }
        }
        Ok(())
    }

    async fn evaluate(&self, entry: AlertEntry) -> Result<(), StoreError> {
        let AlertEntry { rule, mut status } = entry;
        // A notification decided before and never delivered goes first.
        if let Some((state, body)) = status.undelivered.clone() {
            if self.deliver(&rule, &state, &body).await {
                status.undelivered = None;
                status = self.store().settle_alert(&rule.name, status.clone(), None).await?.alerts.get(&rule.name).map_or(status, |e| e.status.clone());
            }
        }
        let now = lodestone_kit::now_ns();
        let answered = self.engine.run(&rule.sql, None).await.map_err(|e| format!("{} ({})", e, e.code()));
        let rows = answered.and_then(|answer| matching(&answer, &rule.condition));
        let (mut next, change) = next_status(&rule, &status, rows.as_ref().map(|r| r.len() as u64).map_err(Clone::clone), now);
        let Some(change) = change else {
            if next.last_error.is_some() {
                tracing::warn!(rule = %rule.name, error = ?next.last_error, "an alert rule's query failed");
            }
            self.store().settle_alert(&rule.name, next, None).await?;
            return Ok(());
        };
        let rows = rows.unwrap_or_default();
        let body = json!({
            "rule": rule.name,
            "state": change.state,
            "previous": change.previous,
            "since_ms": now / 1_000_000,
            "condition": rule.condition,
            "sql": rule.sql,
            "matching_rows": rows.len(),
            "rows": rows.iter().take(NOTIFIED_ROWS_MAX).collect::<Vec<_>>(),
            "console": format!("{}?page=alerts", self.console_url),
        })
        .to_string();
        if change.notify && rule.webhook.is_some() {
            next.undelivered = Some((change.state.to_string(), body.clone()));
        }
        let history = history_record(&rule.name, change.state, change.previous, rows.len() as u64, &body, now);
        tracing::info!(rule = %rule.name, state = change.state, previous = change.previous, rows = rows.len(), "alert state changed");
        self.store().settle_alert(&rule.name, next.clone(), Some(history)).await?;
        if let Some((state, body)) = next.undelivered.clone() {
            if self.deliver(&rule, &state, &body).await {
                self.store().settle_alert(&rule.name, AlertStatus { undelivered: None, ..next }, None).await?;
            }
        }
        Ok(())
    }

    /// POSTs a notification to the rule's webhook; whether it answered 2xx.
    async fn deliver(&self, rule: &AlertRule, state: &str, body: &str) -> bool {
        let Some(url) = &rule.webhook else { return true };
        let sent = self.webhooks.post(url).header("content-type", "application/json").body(body.to_string()).timeout(WEBHOOK_TIMEOUT).send().await;
        match sent {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::warn!(rule = %rule.name, state, status = %response.status(), "the webhook refused a notification; it is sent again at the next evaluation");
                false
            }
            Err(error) => {
                tracing::warn!(rule = %rule.name, state, %error, "the webhook did not take a notification; it is sent again at the next evaluation");
                false
            }
        }
    }
}

/// The routes, inside `require_token`.
pub fn router(engine: Arc<Engine>) -> axum::Router {
    axum::Router::new()
        .route("/v1/alerts", get(list).post(create))
        .route("/v1/alerts/{name}", delete(remove))
        .with_state(engine)
}

fn rule_json(entry: &AlertEntry) -> Value {
    let status = &entry.status;
    let mut rule = serde_json::to_value(&entry.rule).expect("a rule encodes");
    let extra = json!({
        "state": status.state.as_str(),
        "since_ms": status.since_ns / 1_000_000,
        "last_evaluated_ms": (status.last_evaluated_ns > 0).then_some(status.last_evaluated_ns / 1_000_000),
        "last_error": status.last_error,
        "firing_rows": status.matching_rows,
    });
    if let (Value::Object(rule), Value::Object(extra)) = (&mut rule, extra) {
        rule.extend(extra);
    }
    rule
}

async fn list(State(engine): State<Arc<Engine>>, caller: Principal) -> Result<Response, ApiError> {
    if !caller.can_read_all() {
        return Err(lodestone_kit::auth::AuthError::Forbidden(format!("token {} may not read every database, which alert rules may query", caller.id)).into());
    }
    let snapshot = engine.store().snapshot().await?;
    Ok(Json(json!({"rules": snapshot.alerts.values().map(rule_json).collect::<Vec<_>>()})).into_response())
}

async fn create(State(engine): State<Arc<Engine>>, caller: Principal, Json(rule): Json<AlertRule>) -> Result<Response, ApiError> {
    caller.require(&Scope::Admin)?;
    let rule = checked_rule(&engine, rule).await.map_err(ApiError::invalid)?;
    let name = rule.name.clone();
    let snapshot = engine.store().put_alert(rule).await?;
    let entry = snapshot.alerts.get(&name).ok_or_else(|| ApiError::invalid("the rule was removed as it was made".into()))?;
    Ok((StatusCode::CREATED, Json(rule_json(entry))).into_response())
}

async fn remove(State(engine): State<Arc<Engine>>, caller: Principal, Path(name): Path<String>) -> Result<Response, ApiError> {
    caller.require(&Scope::Admin)?;
    engine.store().drop_alert(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn rule(for_s: u64) -> AlertRule {
        AlertRule {
            name: "hot".into(),
            sql: "SELECT 1".into(),
            condition: Condition { column: "temp".into(), op: ">".into(), value: 90.0 },
            interval_s: 10,
            for_s,
            webhook: Some("https://hooks".into()),
        }
    }

    /// Runs evaluations finding `rows` at 10 s apart; the changes' states.
    fn run(for_s: u64, rows: &[u64]) -> Vec<Option<&'static str>> {
        let rule = rule(for_s);
        let mut status = AlertStatus::default();
        rows.iter()
            .enumerate()
            .map(|(i, rows)| {
                let (next, change) = next_status(&rule, &status, Ok(*rows), (i as i64 + 1) * 10 * S);
                status = next;
                change.map(|c| c.state)
            })
            .collect()
    }

    #[test]
    fn states_go_pending_then_firing_after_for_then_resolved() {
        assert_eq!(run(10, &[0, 2, 2, 2, 0, 0]), [None, Some("pending"), Some("firing"), None, Some("resolved"), None]);
        assert_eq!(run(0, &[1, 0]), [Some("firing"), Some("resolved")], "for 0 fires at once");
        assert_eq!(run(30, &[1, 1, 0]), [Some("pending"), None, Some("inactive")], "pending that clears was never firing");
    }

    #[test]
    fn only_firing_and_resolved_notify_and_a_failed_query_changes_nothing() {
        let rule = rule(0);
        let (firing, change) = next_status(&rule, &AlertStatus::default(), Ok(1), 10 * S);
        assert_eq!(change, Some(Change { state: "firing", previous: "inactive", notify: true }));
        let (failed, change) = next_status(&rule, &firing, Err("boom".into()), 20 * S);
        assert_eq!((change, failed.state, failed.last_error.as_deref()), (None, AlertState::Firing, Some("boom")));
    }

    #[test]
    fn rows_match_on_their_condition_column() {
        let answer = QueryResult {
            query_id: "q".into(),
            columns: vec![crate::engine::Column { name: "truck".into(), data_type: "VARCHAR".into() }, crate::engine::Column { name: "temp".into(), data_type: "DOUBLE".into() }],
            rows: vec![vec![json!("t1"), json!(95.5)], vec![json!("t2"), json!(80)], vec![json!("t3"), Value::Null]],
            row_count: 3,
            elapsed_ms: 0,
            bytes_scanned: 0,
            memory_workers_unreachable: 0,
            next_token: None,
        };
        let rows = matching(&answer, &rule(0).condition).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["truck"], json!("t1"));
        let missing = Condition { column: "speed".into(), ..rule(0).condition };
        assert!(matching(&answer, &missing).unwrap_err().contains("no column \"speed\""));
    }
}
