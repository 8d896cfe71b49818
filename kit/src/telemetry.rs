//! Traces and metrics over OTLP/HTTP (OpenTelemetry), besides the log lines of [`crate::log`].
//! Off unless an endpoint is configured: `[telemetry] otlp_endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (with `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the default,
//! or `http/json`). The service is named `lodestone-<service>` (or `OTEL_SERVICE_NAME`).
//!
//! Spans are `tracing` spans: a service makes them as it logs, and [`continue_trace`] gives one
//! the parent a device or a producer sent (`traceparent`, W3C Trace Context). Sampling is
//! parent-based: a sampled parent is kept, an unsampled one dropped, and a root is kept at
//! `sampling_ratio`. Spans leave in batches from a thread of their own, through a bounded
//! queue that drops when full, so a collector that is slow or gone never holds up a service;
//! failed exports are counted ([`export_failures`]).
//!
//! Metrics: the service's own Prometheus text ([`crate::metrics`]) is read every
//! `metrics_interval_ms` and exported as OTLP counters and gauges of the same names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{ensure, InvalidValue};

/// `[telemetry]`: where traces and metrics go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP endpoint's base URL (e.g. `http://127.0.0.1:4318`); `/v1/traces` and
    /// `/v1/metrics` are added. Empty: `OTEL_EXPORTER_OTLP_ENDPOINT`, or no export at all.
    pub otlp_endpoint: String,
    /// Traces begun here (no parent) kept, 0 to 1; a parent's own decision wins.
    /// `OTEL_TRACES_SAMPLER_ARG` overrides it.
    pub sampling_ratio: f64,
    /// How often metrics are exported.
    pub metrics_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: String::new(), sampling_ratio: 1.0, metrics_interval_ms: 10_000 }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        ensure((0.0..=1.0).contains(&self.sampling_ratio), "telemetry.sampling_ratio", || "must be between 0 and 1".into())?;
        ensure(self.metrics_interval_ms > 0, "telemetry.metrics_interval_ms", || "must be at least 1".into())?;
        let url = &self.otlp_endpoint;
        ensure(url.is_empty() || url.starts_with("http://") || url.starts_with("https://"), "telemetry.otlp_endpoint", || format!("{url:?} must be an http:// or https:// URL"))
    }

    /// The endpoint in use: the config's, else `OTEL_EXPORTER_OTLP_ENDPOINT`'s; `None`: off.
    fn endpoint(&self) -> Option<String> {
        let from_env = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
        let endpoint = if self.otlp_endpoint.is_empty() { from_env? } else { self.otlp_endpoint.clone() };
        Some(endpoint.trim_end_matches('/').to_string())
    }

    fn ratio(&self) -> f64 {
        std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().and_then(|r| r.parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r)).unwrap_or(self.sampling_ratio)
    }
}

/// Spans waiting to leave at most; past it new ones are dropped.
const SPAN_QUEUE_MAX: usize = 8192;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static EXPORT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Exports of spans or metrics that failed (the collector unreachable, say), for `/metrics`.
pub fn export_failures() -> u64 {
    EXPORT_FAILURES.load(Ordering::Relaxed)
}

/// What [`init`] set up; flushes what is queued when dropped (at the end of `main`).
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.tracer.is_some()
    }

}

/// The meter provider [`init`] made, for [`export_metrics`].
static METERS: std::sync::OnceLock<opentelemetry_sdk::metrics::SdkMeterProvider> = std::sync::OnceLock::new();

/// Exports `render` (the service's Prometheus text, as `/metrics` serves it) as OTLP metrics
/// every `metrics_interval_ms`; nothing when telemetry is off. Call once, where the service
/// makes its metrics.
pub fn export_metrics(render: impl Fn() -> String + Send + Sync + 'static) {
    if let Some(meter) = METERS.get() {
        metrics_bridge::register(meter, Arc::new(render));
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
        }
        if let Some(meter) = self.meter.take() {
            let _ = meter.shutdown();
        }
    }
}

/// Installs the global subscriber: the log lines of [`crate::log`] (filtered by `RUST_LOG`,
/// default `default_filter`) and, when an endpoint is configured, spans to OTLP for service
/// `lodestone-{service}`. Call once, first thing in `main` after the config is loaded.
pub fn init(service: &str, default_filter: &str, config: &TelemetryConfig) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = crate::log::fmt_layer();
    let Some(endpoint) = config.endpoint() else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        return Telemetry { tracer: None, meter: None };
    };
    let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("lodestone-{service}"));
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name.clone()).build();
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(EXPORT_TIMEOUT)
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{endpoint}/v1/metrics"))
        .with_timeout(EXPORT_TIMEOUT)
        .build();
    let (spans, metrics) = match (spans, metrics) {
        (Ok(spans), Ok(metrics)) => (spans, metrics),
        (Err(error), _) | (_, Err(error)) => {
            tracing_subscriber::registry().with(filter).with(fmt).init();
            tracing::error!(%error, "cannot set up the OTLP exporter; no traces or metrics are exported");
            return Telemetry { tracer: None, meter: None };
        }
    };
    let batch = BatchConfigBuilder::default().with_max_queue_size(SPAN_QUEUE_MAX).build();
    let processor = BatchSpanProcessor::builder(CountingExporter(spans)).with_batch_config(batch).build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.ratio())));
    let tracer = SdkTracerProvider::builder().with_span_processor(processor).with_sampler(sampler).with_resource(resource.clone()).build();
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics).with_interval(Duration::from_millis(config.metrics_interval_ms)).build();
    let meter = opentelemetry_sdk::metrics::SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    let _ = METERS.set(meter.clone());
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let layer = tracing_opentelemetry::layer().with_tracer(tracer.tracer("lodestone"));
    tracing_subscriber::registry().with(filter).with(fmt).with(layer).init();
    tracing::info!(%endpoint, service = %name, ratio = config.ratio(), "exporting traces and metrics over OTLP");
    Telemetry { tracer: Some(tracer), meter: Some(meter) }
}

/// A span exporter that counts its failures.
#[derive(Debug)]
struct CountingExporter<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let exported = self.0.export(batch).await;
        if exported.is_err() {
            EXPORT_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        exported
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// The context a W3C `traceparent` (`00-TRACE-SPAN-FLAGS`) names; `None` when it does not parse.
pub fn remote_context(traceparent: &str) -> Option<Context> {
    let parsed = parse_traceparent(traceparent)?;
    Some(Context::new().with_remote_span_context(parsed))
}

/// A `traceparent` as a span context (remote, as it came from elsewhere).
pub fn parse_traceparent(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let [version, trace, span, flags] = parts.as_slice() else { return None };
    if version.len() != 2 || *version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(trace, span, TraceFlags::new(flags & 1), true, TraceState::default()))
}

/// Makes `span` a child of `traceparent` (when it parses): how a trace a device or a producer
/// began goes on here. A no-op when telemetry is off.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(context) = traceparent.and_then(remote_context) {
        let _ = span.set_parent(context);
    }
}

/// Adds a link from `span` to each of `traceparents` that parses (a bundle to the envelopes it
/// carries, a persist to the writes it made durable), at most `links_max`.
pub fn link_to<'a>(span: &tracing::Span, traceparents: impl IntoIterator<Item = &'a str>, links_max: usize) {
    for context in traceparents.into_iter().filter_map(parse_traceparent).take(links_max) {
        span.add_link(context);
    }
}

/// `span`'s own context as a `traceparent`, to send on; `None` when the span is not recorded
/// (telemetry off, or not sampled).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() || !span_context.is_sampled() {
        return None;
    }
    Some(format!("00-{}-{}-01", span_context.trace_id(), span_context.span_id()))
}

/// Attributes on a span, by OpenTelemetry's names (`lodestone.query_id`, `db.query.text`).
pub fn set_attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    span.set_attribute(key, value);
}

mod metrics_bridge {
    //! The service's Prometheus text as OTLP instruments: one observable counter or gauge per
    //! family (its label as an attribute), each reading the text rendered at most once per
    //! collection.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::KeyValue;

    type Render = Arc<dyn Fn() -> String + Send + Sync>;

    /// (kind, samples by label) of every family of one rendering.
    type Families = BTreeMap<String, (bool, Vec<(Option<(String, String)>, f64)>)>;

    fn parse(text: &str) -> Families {
        let mut families = Families::new();
        let mut kinds: BTreeMap<String, bool> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    kinds.insert(name.to_string(), kind.trim() == "counter");
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((head, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, label) = match head.split_once('{') {
                Some((name, labels)) => {
                    let label = labels.trim_end_matches('}').split_once('=').map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()));
                    (name, label)
                }
                None => (head, None),
            };
            let counter = kinds.get(name).copied().unwrap_or(false);
            families.entry(name.to_string()).or_insert((counter, Vec::new())).1.push((label, value));
        }
        families
    }

    /// The last rendering, parsed, reused within a second.
    struct Cache {
        render: Render,
        last: Mutex<Option<(Instant, Arc<Families>)>>,
    }

    impl Cache {
        fn families(&self) -> Arc<Families> {
            let mut last = self.last.lock().expect("metrics cache lock");
            if let Some((at, families)) = last.as_ref() {
                if at.elapsed() < Duration::from_secs(1) {
                    return families.clone();
                }
            }
            let families = Arc::new(parse(&(self.render)()));
            *last = Some((Instant::now(), families.clone()));
            families
        }
    }

    pub fn register(provider: &opentelemetry_sdk::metrics::SdkMeterProvider, render: Render) {
        let meter = provider.meter("lodestone");
        let cache = Arc::new(Cache { render: render.clone(), last: Mutex::new(None) });
        for (name, (counter, _)) in parse(&render()) {
            let cache = cache.clone();
            let family = name.clone();
            let observe = move |observe: &dyn Fn(f64, &[KeyValue])| {
                if let Some((_, samples)) = cache.families().get(&family) {
                    for (label, value) in samples {
                        let attributes: Vec<KeyValue> = label.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
                        observe(*value, &attributes);
                    }
                }
            };
            if counter {
                let _counter = meter.f64_observable_counter(name).with_callback(move |observer| observe(&|v, a| observer.observe(v, a))).build();
            } else {
                let _gauge = meter.f64_observable_gauge(name).with_callback(move |observer| observe(&|v, a| observer.observe(v, a))).build();
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn families_keep_their_kind_and_labels() {
            let families = parse("# HELP a_total A.\n# TYPE a_total counter\na_total{reason=\"x\"} 3\na_total{reason=\"y\"} 4\n# TYPE g gauge\ng 1.5\n");
            assert_eq!(families["a_total"], (true, vec![(Some(("reason".into(), "x".into())), 3.0), (Some(("reason".into(), "y".into())), 4.0)]));
            assert_eq!(families["g"], (false, vec![(None, 1.5)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_as_w3c_says() {
        let context = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.is_sampled() && context.is_remote());
        assert!(!parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().is_sampled());
        for bad in ["", "00-abc-def-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn sampling_ratio_and_endpoint_are_checked() {
        assert!(TelemetryConfig::default().validate().is_ok());
        assert_eq!(TelemetryConfig { sampling_ratio: 1.5, ..Default::default() }.validate().unwrap_err().key, "telemetry.sampling_ratio");
        assert_eq!(TelemetryConfig { otlp_endpoint: "127.0.0.1:4318".into(), ..Default::default() }.validate().unwrap_err().key, "telemetry.otlp_endpoint");
    }
}
