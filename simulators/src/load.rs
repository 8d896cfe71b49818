//! Load-test mode: runs a scenario (`configs/scenarios/*.toml`) against a running stack and
//! measures what an operator needs to size it:
//!
//! - **throughput**: readings acknowledged by the transport (Kafka or the bridge's end-to-end
//!   acks) and rows visible to SQL, sampled every second;
//! - **latency from publish to queryable**: a probe reading is published through the same
//!   transport every `probe_interval_ms` and the query service is polled until it answers it;
//! - **each service's CPU and memory**, read from `/proc` by process name;
//! - connections up (MQTT).
//!
//! A progress line is redrawn on stderr while it runs. At the end it prints a table, and writes a
//! JSON report and an SVG chart of throughput and latency over time.
//!
//! A scenario is a list of phases run one after another. Each phase has its own device-id prefix
//! (`{phase}-`), so phases never write the same series. A phase's rate may be a fraction of the
//! throughput the previous phase sustained (`rate_fraction_of_previous`): that is how `steady`
//! measures latency at half the maximum rate.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lodestone_model::{ContentType, Dimension, Envelope, MeasureValue, Record, Scalar, Source};
use serde::{Deserialize, Serialize};

use crate::kafka::{run_kafka_observed, KafkaRun};
use crate::mqtt::{run_mqtt_observed, MqttRun, PACKET_BYTES_MAX_DEFAULT};
use crate::agent::{run_agent_observed, AgentRun};
use crate::series::{FleetSpec, Profile, SeriesKind};
use crate::summary::Progress;
use crate::wire::Destination;

/// The device id of the probe readings.
const PROBE_DEVICE: &str = "load-probe";

/// Longest a probe may take to become queryable before it counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest pause between two counts of a phase's rows while waiting for all to be visible.
const COUNT_POLL_MIN: Duration = Duration::from_millis(500);
/// Longest wait, after a phase ends, for all its rows to be visible.
const VISIBLE_WAIT_MAX: Duration = Duration::from_secs(120);
/// Pause between two polls of the query service for one probe (the latency's resolution). At
/// 20 ms the polls alone kept the query service at a quarter of a core.
const PROBE_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "default_database")]
    pub database: String,
    /// Readings go to `{table}`; probes to `{table}_probe`.
    pub table: String,
    /// Time between two readings of one device.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub transport: Transport,
    pub devices: u32,
    /// Records per envelope.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// What each device measures (`walk`, `temperature`, `vibration`, `meter`, `truck`).
    #[serde(default)]
    pub profile: Profile,
    /// Readings per second in total; 0 = as fast as the stack acknowledges.
    #[serde(default)]
    pub rate: u64,
    /// Readings per second of each device (0.1 = one every 10 s); 0 = unpaced.
    #[serde(default)]
    pub rate_per_device: f64,
    /// MQTT: new connections per second while the devices come up; 0 = all at once.
    #[serde(default)]
    pub connect_rate: u32,
    /// The table this phase writes [default: the scenario's].
    pub table: Option<String>,
    /// Instead of `rate`: this fraction of what the previous phase sustained end to end (from its
    /// start until all its readings were queryable).
    pub rate_fraction_of_previous: Option<f64>,
    /// How much to send: a count per device, or a duration at the phase's rate.
    pub readings_per_device: Option<u64>,
    pub duration_s: Option<u64>,
    /// The phase's bound; readings not acknowledged by then count as `unacked`.
    #[serde(default = "default_phase_timeout_s")]
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Producers straight to the ingest topic.
    Kafka,
    /// One MQTT connection per device, awaiting the bridge's end-to-end acks.
    Mqtt,
    /// Sensors posting to edge agents (`--agent-url`, once per agent; sensors are spread over
    /// them), which forward over MQTT.
    Agent,
}

fn default_database() -> String {
    "loadtest".into()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_probe_interval_ms() -> u64 {
    1000
}
fn default_seed() -> u64 {
    1
}
fn default_phase_timeout_s() -> u64 {
    300
}
fn default_batch() -> u32 {
    100
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading scenario {}: {e}", path.display()))?;
        let scenario: Scenario = toml::from_str(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.phases.is_empty(), "scenario {}: no phases", self.name);
        for (i, phase) in self.phases.iter().enumerate() {
            let at = |what: &str| anyhow::anyhow!("scenario {}, phase {}: {what}", self.name, phase.name);
            if phase.devices == 0 {
                return Err(at("devices must be at least 1"));
            }
            match (phase.readings_per_device, phase.duration_s) {
                (Some(_), None) => {}
                (None, Some(_)) if phase.rate > 0 || phase.rate_per_device > 0.0 || phase.rate_fraction_of_previous.is_some() => {}
                (None, Some(_)) => return Err(at("duration_s needs a rate (rate, rate_per_device or rate_fraction_of_previous)")),
                _ => return Err(at("give exactly one of readings_per_device and duration_s")),
            }
            if phase.rate_fraction_of_previous.is_some() && i == 0 {
                return Err(at("the first phase has no previous phase to take a fraction of"));
            }
        }
        Ok(())
    }
}

/// Where the stack is.
#[derive(Debug, Clone)]
pub struct Target {
    pub bootstrap: String,
    pub topic: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub query_url: String,
    /// Edge agents' base URLs (phases with `transport = "agent"`).
    pub agent_urls: Vec<String>,
    /// Process names (`/proc/*/comm`) whose CPU and memory are sampled.
    pub watch: Vec<String>,
    /// The CA and token for the query service and the agents.
    pub access: crate::access::HttpAccess,
    /// Devices' certificates for MQTT phases (`None`: plain text).
    pub identities: Option<crate::identity::DeviceIdentities>,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: String,
    /// Readings acknowledged in this second.
    pub acked_per_sec: f64,
    pub connections: i64,
    /// Per watched process: CPU in % of one core, resident memory in MiB.
    pub cpu_percent: BTreeMap<String, f64>,
    pub rss_mib: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub t_s: f64,
    /// `None`: not queryable within 30 s.
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub transport: Transport,
    pub devices: u32,
    pub rate_asked: u64,
    /// Readings sent (resends not counted twice), acknowledged, and planned but not acknowledged
    /// within the phase's timeout.
    pub readings: u64,
    pub acked: u64,
    pub unacked: u64,
    pub elapsed_s: f64,
    pub acked_per_sec: f64,
    pub connections_max: i64,
    /// Readings of this phase visible to SQL when the phase ended, and how long it then took
    /// until all were (the backlog left behind).
    pub visible_at_end: i64,
    pub all_visible_after_s: Option<f64>,
    pub latency_ms: Percentiles,
    /// Whether the rate was a fraction of the previous phase's.
    pub at_fraction: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub lost: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    fn of(probes: &[Probe]) -> Percentiles {
        let mut values: Vec<f64> = probes.iter().filter_map(|p| p.latency_ms).collect();
        values.sort_by(f64::total_cmp);
        let at = |q: f64| (!values.is_empty()).then(|| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1]);
        Percentiles {
            count: values.len(),
            lost: probes.len() - values.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: values.last().copied(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub phases: Vec<PhaseReport>,
    pub samples: Vec<Sample>,
    pub probes: Vec<Probe>,
    /// Per watched process over the whole run: mean CPU % of one core and peak memory.
    pub cpu_percent_mean: BTreeMap<String, f64>,
    pub rss_mib_max: BTreeMap<String, f64>,
}

/// Shared between the phases, the sampler and the prober.
struct Live {
    started: Instant,
    phase: Mutex<(String, Arc<Progress>)>,
    samples: Mutex<Vec<Sample>>,
    probes: Mutex<Vec<Probe>>,
}

impl Live {
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Runs `scenario` against `target`.
pub async fn run_load(scenario: &Scenario, target: &Target) -> anyhow::Result<Report> {
    let http = target.access.client(Duration::from_secs(10))?;
    let live = Arc::new(Live {
        started: Instant::now(),
        phase: Mutex::new((String::new(), Arc::new(Progress::new(0, false)))),
        samples: Mutex::new(Vec::new()),
        probes: Mutex::new(Vec::new()),
    });
    let sampler = tokio::spawn(sample_every_second(live.clone(), target.watch.clone()));
    let (stop_probes, probes_stopped) = tokio::sync::watch::channel(false);
    let prober = tokio::spawn(probe(live.clone(), scenario.clone(), target.clone(), http.clone(), probes_stopped));

    let mut reports: Vec<PhaseReport> = Vec::new();
    for phase in &scenario.phases {
        let rate = match phase.rate_fraction_of_previous {
            // Of the end-to-end rate (acknowledged and queryable): Kafka acknowledges far faster
            // than the store ingests, so the acknowledged rate alone would overload the stack.
            Some(fraction) => {
                let previous = reports.last().map_or(0.0, |r| r.end_to_end_per_sec().unwrap_or(r.acked_per_sec));
                (previous * fraction).round().max(1.0) as u64
            }
            None => phase.rate,
        };
        let per_device = phase.readings_per_device.unwrap_or_else(|| {
            let seconds = phase.duration_s.unwrap_or(0);
            let at_total_rate = (rate * seconds).div_ceil(u64::from(phase.devices));
            let at_device_rate = (phase.rate_per_device * seconds as f64).ceil() as u64;
            match (rate, at_device_rate) {
                (0, paced) => paced,
                (_, 0) => at_total_rate,
                (_, paced) => paced.min(at_total_rate),
            }
            .max(1)
        });
        let progress = Arc::new(Progress::new(per_device * u64::from(phase.devices), phase.transport == Transport::Mqtt));
        *live.phase.lock().expect("live lock") = (phase.name.clone(), progress.clone());
        let kind = if phase.transport == Transport::Agent { SeriesKind::Sensor } else { SeriesKind::Device };
        let fleet = FleetSpec {
            seed: scenario.seed,
            kind,
            profile: phase.profile,
            series_rate_per_s: phase.rate_per_device,
            id_prefix: format!("{}-", phase.name),
            series_count: phase.devices,
            readings_per_series: per_device,
            batch_records_max: phase.batch,
            start_ns: FleetSpec::default_start_ns(now_ns(), per_device, scenario.interval_ms),
            interval_ms: scenario.interval_ms,
        };
        let table = phase.table.clone().unwrap_or_else(|| scenario.table.clone());
        let started = Instant::now();
        let summary = match phase.transport {
            Transport::Kafka => {
                let run = KafkaRun {
                    bootstrap: target.bootstrap.clone(),
                    topic: target.topic.clone(),
                    fleet,
                    destination: Destination { database: scenario.database.clone(), table: table.clone() },
                    format: ContentType::Cbor,
                    boot_id: format!("load-{}-{}", scenario.name, phase.name),
                    rate_per_s: rate,
                    inflight_envelopes_max: 4096,
                    producer_config: vec![("linger.ms".into(), "5".into())],
                    timeout: Duration::from_secs(phase.timeout_s),
                };
                run.validate(now_ns())?;
                run_kafka_observed(run, progress.clone()).await?
            }
            Transport::Mqtt => {
                let run = MqttRun {
                    host: target.mqtt_host.clone(),
                    port: target.mqtt_port,
                    identities: target.identities.clone(),
                    fleet,
                    database: scenario.database.clone(),
                    table: table.clone(),
                    format: ContentType::Cbor,
                    boot_id: format!("load-{}-{}", scenario.name, phase.name),
                    rate_per_s: rate,
                    inflight_envelopes_max: 8,
                    packet_bytes_max: PACKET_BYTES_MAX_DEFAULT,
                    resend_after: Duration::from_secs(10),
                    keep_alive: Duration::from_secs(30),
                    connect_rate_per_s: phase.connect_rate,
                    timeout: Duration::from_secs(phase.timeout_s),
                };
                run.validate(now_ns())?;
                run_mqtt_observed(run, progress.clone()).await?
            }
            Transport::Agent => {
                anyhow::ensure!(!target.agent_urls.is_empty(), "phase {} writes through edge agents: give --agent-url", phase.name);
                let run = AgentRun {
                    urls: target.agent_urls.clone(),
                    fleet,
                    database: scenario.database.clone(),
                    table: table.clone(),
                    rate_per_s: rate,
                    timeout: Duration::from_secs(phase.timeout_s),
                    access: target.access.clone(),
                    api: crate::agent::WriteApi::EdgeAgent,
                    clients: 0,
                };
                run.validate(now_ns())?;
                run_agent_observed(run, progress.clone()).await?
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        let connections_max = live
            .samples
            .lock()
            .expect("live lock")
            .iter()
            .filter(|s| s.phase == phase.name)
            .map(|s| s.connections)
            .max()
            .unwrap_or(0);
        let sql = format!(
            "SELECT count(*) FROM \"{}\".\"{table}\" WHERE starts_with({}, '{}-')",
            scenario.database,
            kind.id_dimension(),
            phase.name
        );
        let visible_at_end = count(&http, &target.query_url, &sql).await.unwrap_or(0);
        let expected = progress.acked.load(Ordering::Relaxed) as i64;
        let mut all_visible_after_s = (visible_at_end >= expected).then_some(0.0);
        let waiting = Instant::now();
        // A count over millions of rows takes the query service a while; pausing as long as the
        // last one took keeps the measurement from taking more than half a core off the stack.
        let mut pause = COUNT_POLL_MIN;
        while all_visible_after_s.is_none() && waiting.elapsed() < VISIBLE_WAIT_MAX {
            tokio::time::sleep(pause).await;
            let asked = waiting.elapsed();
            let counted = count(&http, &target.query_url, &sql).await.unwrap_or(0);
            pause = (waiting.elapsed() - asked).max(COUNT_POLL_MIN);
            if counted >= expected {
                // Visible when the count that saw them all was asked.
                all_visible_after_s = Some(asked.as_secs_f64());
            }
        }
        let phase_start = live.t() - elapsed - waiting.elapsed().as_secs_f64();
        let probes: Vec<Probe> = live.probes.lock().expect("live lock").iter().filter(|p| p.t_s >= phase_start).cloned().collect();
        reports.push(PhaseReport {
            name: phase.name.clone(),
            transport: phase.transport,
            devices: phase.devices,
            rate_asked: rate,
            readings: summary.total,
            acked: progress.acked.load(Ordering::Relaxed),
            unacked: summary.unacked,
            elapsed_s: elapsed,
            acked_per_sec: progress.acked.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9),
            connections_max,
            visible_at_end,
            all_visible_after_s,
            latency_ms: Percentiles::of(&probes),
            at_fraction: phase.rate_fraction_of_previous.is_some(),
        });
    }
    let _ = stop_probes.send(true);
    let _ = prober.await;
    sampler.abort();
    eprintln!();
    let samples = live.samples.lock().expect("live lock").clone();
    let probes = live.probes.lock().expect("live lock").clone();
    let mut cpu_percent_mean = BTreeMap::new();
    let mut rss_mib_max: BTreeMap<String, f64> = BTreeMap::new();
    for name in &target.watch {
        let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_percent.get(name).copied()).collect();
        if !cpu.is_empty() {
            cpu_percent_mean.insert(name.clone(), cpu.iter().sum::<f64>() / cpu.len() as f64);
        }
        if let Some(rss) = samples.iter().filter_map(|s| s.rss_mib.get(name).copied()).max_by(f64::total_cmp) {
            rss_mib_max.insert(name.clone(), rss);
        }
    }
    Ok(Report { scenario: scenario.name.clone(), phases: reports, samples, probes, cpu_percent_mean, rss_mib_max })
}

/// Every second: acked readings, connections, and each watched process's CPU and memory;
/// redraws the progress line on stderr.
async fn sample_every_second(live: Arc<Live>, watch: Vec<String>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut last_acked: (String, u64) = (String::new(), 0);
    let mut last_cpu: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    let ticks_per_s = clock_ticks_per_second();
    loop {
        ticks.tick().await;
        let (phase, progress) = live.phase.lock().expect("live lock").clone();
        let acked = progress.acked.load(Ordering::Relaxed);
        let planned = progress.planned.load(Ordering::Relaxed);
        let previous = if last_acked.0 == phase { last_acked.1 } else { 0 };
        last_acked = (phase.clone(), acked);
        let t = live.t();
        let mut cpu_percent = BTreeMap::new();
        let mut rss_mib = BTreeMap::new();
        for name in &watch {
            let Some((cpu_ticks, rss_pages)) = process_usage(name) else { continue };
            let cpu_s = cpu_ticks as f64 / ticks_per_s;
            if let Some((then, before)) = last_cpu.get(name) {
                if t > *then {
                    cpu_percent.insert(name.clone(), 100.0 * (cpu_s - *before as f64 / ticks_per_s) / (t - then));
                }
            }
            last_cpu.insert(name.clone(), (t, cpu_ticks));
            rss_mib.insert(name.clone(), rss_pages as f64 * 4096.0 / (1024.0 * 1024.0));
        }
        let sample = Sample {
            t_s: t,
            phase: phase.clone(),
            acked_per_sec: acked.saturating_sub(previous) as f64,
            connections: progress.connected.load(Ordering::Relaxed),
            cpu_percent,
            rss_mib,
        };
        let latency = live.probes.lock().expect("live lock").last().and_then(|p| p.latency_ms);
        let filled = if planned > 0 { (acked * 30 / planned).min(30) as usize } else { 0 };
        eprint!(
            "\r{phase:>10} [{}{}] {acked:>10}/{planned} acked {:>9.0} readings/s {:>6} conns  probe {:>7}   ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            sample.acked_per_sec,
            sample.connections,
            latency.map_or("-".to_string(), |l| format!("{l:.0} ms")),
        );
        live.samples.lock().expect("live lock").push(sample);
    }
}

/// Publishes one probe reading per interval through the transport of the phase running, and
/// polls the query service until it is visible.
async fn probe(live: Arc<Live>, scenario: Scenario, target: Target, http: reqwest::Client, mut stop: tokio::sync::watch::Receiver<bool>) {
    let producer: Option<rdkafka::producer::FutureProducer> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &target.bootstrap).set("acks", "all").create().ok();
    let table = format!("{}_probe", scenario.table);
    let mqtt = mqtt_probe_client(&target);
    let mut n: i64 = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(scenario.probe_interval_ms.max(10)));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        let sent_at = live.t();
        let transport = {
            let phase = live.phase.lock().expect("live lock").0.clone();
            scenario.phases.iter().find(|p| p.name == phase).map_or(Transport::Kafka, |p| p.transport)
        };
        let envelope = Envelope {
            database: Some(scenario.database.clone()),
            table: Some(table.clone()),
            source: Source { device_id: PROBE_DEVICE.into(), boot_id: format!("probe-{}", std::process::id()) },
            first_seq: n as u64,
            unacked_from: None,
            records: vec![Record {
                dimensions: vec![Dimension { name: "device_id".into(), value: PROBE_DEVICE.into() }],
                measure_name: "probe".into(),
                value: MeasureValue::Single(Scalar::Bigint(n)),
                time_ns: now_ns(),
                version: 1,
            }],
            ..Default::default()
        };
        let sent = match (transport, &mqtt, &producer) {
            (Transport::Agent, _, _) if !target.agent_urls.is_empty() => {
                let url = format!("{}/v1/write?database={}&table={table}", target.agent_urls[0].trim_end_matches('/'), scenario.database);
                let body = serde_json::json!({ "records": envelope.records.iter().map(lodestone_model::record_to_json).collect::<Vec<_>>() });
                http.post(url).json(&body).send().await.is_ok_and(|r| r.status().is_success())
            }
            (Transport::Mqtt, Some(client), _) => client
                .publish(
                    lodestone_model::topic::data_topic(&scenario.database, &table, PROBE_DEVICE),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    envelope.to_cbor(),
                )
                .await
                .is_ok(),
            (_, _, Some(producer)) => {
                let payload = envelope.to_cbor();
                let record = rdkafka::producer::FutureRecord::to(&target.topic).key(PROBE_DEVICE).payload(&payload).headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header { key: "content-type", value: Some("application/cbor") }),
                );
                producer.send(record, Duration::from_secs(10)).await.is_ok()
            }
            _ => false,
        };
        let sql = format!("SELECT max(measure_value::bigint) FROM \"{}\".\"{table}\"", scenario.database);
        let mut latency_ms = None;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while sent && Instant::now() < deadline {
            if max_value(&http, &target.query_url, &sql).await.is_some_and(|seen| seen >= n) {
                latency_ms = Some((live.t() - sent_at) * 1000.0);
                break;
            }
            tokio::time::sleep(PROBE_POLL).await;
        }
        live.probes.lock().expect("live lock").push(Probe { t_s: sent_at, latency_ms });
    }
}

fn mqtt_probe_client(target: &Target) -> Option<rumqttc::AsyncClient> {
    // The probe is a device like any other: its client id is the device id of its topic, and
    // over TLS it has a certificate of its own.
    let mut options = rumqttc::MqttOptions::new(PROBE_DEVICE, target.mqtt_host.clone(), target.mqtt_port);
    if let Some(identities) = &target.identities {
        let tls = identities.tls_for(PROBE_DEVICE).ok()?;
        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    }
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    Some(client)
}

async fn query(http: &reqwest::Client, url: &str, sql: &str) -> Option<serde_json::Value> {
    let response = http.post(format!("{}/v1/query", url.trim_end_matches('/'))).json(&serde_json::json!({ "sql": sql })).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

async fn count(http: &reqwest::Client, url: &str, sql: &str) -> Option<i64> {
    query(http, url, sql).await?["rows"][0][0].as_i64()
}

async fn max_value(http: &reqwest::Client, url: &str, sql: &str) -> Option<i64> {
    query(http, url, sql).await?["rows"][0][0].as_i64()
}

/// CPU time (clock ticks) and resident pages of the processes named `name`, summed.
fn process_usage(name: &str) -> Option<(u64, u64)> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        // Fields after the command (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let (Some(utime), Some(stime), Some(rss)) = (fields.get(11), fields.get(12), fields.get(21)) else { continue };
        let (cpu, pages) = found.unwrap_or((0, 0));
        found = Some((cpu + utime.parse::<u64>().unwrap_or(0) + stime.parse::<u64>().unwrap_or(0), pages + rss.parse::<u64>().unwrap_or(0)));
    }
    found
}

/// The unit of `/proc/PID/stat`'s CPU times.
#[cfg(unix)]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(not(unix))]
fn clock_ticks_per_second() -> f64 {
    100.0
}

use lodestone_kit::now_ns;

impl PhaseReport {
    /// Readings per second from the phase's start until all of them were queryable.
    pub fn end_to_end_per_sec(&self) -> Option<f64> {
        Some(self.acked as f64 / (self.elapsed_s + self.all_visible_after_s?).max(1e-9))
    }
}

impl Report {
    /// The run's headline figures: the best end-to-end rate of a phase whose readings all became
    /// queryable, the p99 latency of the last phase run at a fraction of its predecessor's rate
    /// (or of the whole run), and the most MQTT connections up at once.
    pub fn figures(&self) -> Vec<(&'static str, f64, &'static str)> {
        let mut figures = Vec::new();
        if let Some(rate) = self.phases.iter().filter_map(PhaseReport::end_to_end_per_sec).max_by(f64::total_cmp) {
            figures.push(("e2e_readings_per_sec", rate, "readings/s"));
        }
        let p99 = self.phases.iter().rev().find(|p| p.at_fraction).and_then(|p| p.latency_ms.p99).or_else(|| Percentiles::of(&self.probes).p99);
        if let Some(p99) = p99 {
            figures.push(("e2e_p99_latency_ms", p99, "ms"));
        }
        figures.push(("devices_connected", self.phases.iter().map(|p| p.connections_max).max().unwrap_or(0) as f64, "devices"));
        figures
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!("scenario {}\n", self.scenario);
        out += "phase        transport  devices   readings   acked/s      conns  backlog_s   p50_ms   p95_ms   p99_ms  lost\n";
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        for p in &self.phases {
            out += &format!(
                "{:<12} {:<9} {:>8} {:>10} {:>9.0} {:>10} {:>10} {:>8} {:>8} {:>8} {:>5}\n",
                p.name,
                format!("{:?}", p.transport).to_lowercase(),
                p.devices,
                p.readings,
                p.acked_per_sec,
                p.connections_max,
                p.all_visible_after_s.map_or("> 120".to_string(), |s| format!("{s:.1}")),
                ms(p.latency_ms.p50),
                ms(p.latency_ms.p95),
                ms(p.latency_ms.p99),
                p.latency_ms.lost,
            );
        }
        out += "process          cpu_mean_%  rss_max_MiB\n";
        for (name, cpu) in &self.cpu_percent_mean {
            out += &format!("{name:<16} {cpu:>10.0} {:>12.0}\n", self.rss_mib_max.get(name).copied().unwrap_or(0.0));
        }
        out
    }

    /// An SVG chart: acknowledged readings/s (left axis, blue) and probe latency (right axis,
    /// orange) over the run's seconds.
    pub fn svg(&self) -> String {
        let (width, height, margin) = (900.0, 360.0, 60.0);
        let t_max = self.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
        let rate_max = self.samples.iter().map(|s| s.acked_per_sec).fold(1.0, f64::max);
        let latency_max = self.probes.iter().filter_map(|p| p.latency_ms).fold(1.0, f64::max);
        let x = |t: f64| margin + (width - 2.0 * margin) * t / t_max;
        let y = |v: f64, max: f64| height - margin - (height - 2.0 * margin) * v / max;
        let rate: Vec<String> = self.samples.iter().map(|s| format!("{:.1},{:.1}", x(s.t_s), y(s.acked_per_sec, rate_max))).collect();
        let latency: Vec<String> =
            self.probes.iter().filter_map(|p| Some(format!("{:.1},{:.1}", x(p.t_s), y(p.latency_ms?, latency_max)))).collect();
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{margin}" y="20">Lodestone load test: {name}</text>
<line x1="{margin}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{bottom}" stroke="black"/>
<line x1="{right}" y1="{margin}" x2="{right}" y2="{bottom}" stroke="black"/>
<text x="5" y="{margin}" fill="#1f77b4">{rate_max:.0}/s</text>
<text x="{right_label}" y="{margin}" fill="#ff7f0e">{latency_max:.0} ms</text>
<text x="{right}" y="{time_label}" text-anchor="end">{t_max:.0} s</text>
<text x="{margin}" y="{time_label}">0 s</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{rate}"/>
<polyline fill="none" stroke="#ff7f0e" stroke-width="1.5" points="{latency}"/>
<text x="{legend}" y="20" fill="#1f77b4">readings acknowledged per second</text>
<text x="{legend}" y="36" fill="#ff7f0e">publish-to-queryable latency</text>
</svg>
"##,
            name = self.scenario,
            bottom = height - margin,
            right = width - margin,
            right_label = width - margin + 5.0,
            time_label = height - margin + 18.0,
            legend = width - 300.0,
            rate = rate.join(" "),
            latency = latency.join(" "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_count_lost_probes_apart() {
        let probes: Vec<Probe> =
            (1..=100).map(|i| Probe { t_s: i as f64, latency_ms: Some(i as f64) }).chain([Probe { t_s: 0.0, latency_ms: None }]).collect();
        let p = Percentiles::of(&probes);
        assert_eq!((p.count, p.lost, p.p50, p.p95, p.p99, p.max), (100, 1, Some(50.0), Some(95.0), Some(99.0), Some(100.0)));
        assert_eq!(Percentiles::of(&[]).p99, None);
    }

    #[test]
    fn every_scenario_in_configs_is_valid() {
        let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../configs/scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            names.push(Scenario::load(&path).unwrap_or_else(|e| panic!("{e}")).name);
        }
        names.sort();
        assert_eq!(names, ["burst", "reconnect-storm", "smoke", "steady"]);
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_phase_named() {
        let bad = |toml: &str| toml::from_str::<Scenario>(toml).map_err(|e| e.to_string()).and_then(|s| s.check().map_err(|e| e.to_string())).unwrap_err();
        let base = "name = \"x\"\ntable = \"t\"\n";
        assert!(bad(&format!("{base}phases = []")).contains("no phases"));
        let phase = "[[phases]]\nname = \"p\"\ntransport = \"kafka\"\ndevices = 1\n";
        assert!(bad(&format!("{base}{phase}")).contains("phase p: give exactly one"));
        assert!(bad(&format!("{base}{phase}duration_s = 5\n")).contains("needs a rate"));
        assert!(bad(&format!("{base}{phase}readings_per_device = 5\nrate_fraction_of_previous = 0.5\n")).contains("no previous phase"));
        assert!(bad(&format!("{base}{phase}readings_per_device = 5\nprofile = \"banana\"\n")).contains("unknown variant"));
        let paced = format!("{base}{phase}duration_s = 5\nrate_per_device = 0.5\n");
        assert!(toml::from_str::<Scenario>(&paced).unwrap().check().is_ok(), "a per-device rate is a rate");
    }
}
