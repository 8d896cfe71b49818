//! `GET /health` and `GET /metrics` (scope `metrics`; served inside
//! `lodestone_kit::auth::require_token`, which finds the caller).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::Shared;

pub fn router(shared: Arc<Shared>) -> axum::Router {
    let metrics = lodestone_kit::auth::with_scope(axum::Router::new().route("/metrics", get(metrics)), lodestone_kit::auth::Scope::Metrics);
    axum::Router::new().route("/health", get(health)).merge(metrics).with_state(shared)
}

/// 200 `ok` once the link is subscribed and the MQTT listeners answer; 503 before and while
/// shutting down.
async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.health() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.metrics.set_inflight_envelopes(shared.inflight_envelopes());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render())
}
