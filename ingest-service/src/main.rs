use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::routing::get;
use clap::Parser;
use futures::future::join_all;
use ingest_service::{Applied, Counters, DeadLetter, IngestConfig, Ingestor, Memory, Origin};
use lodestone_store::{CompactionPolicy, Store};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::ClientContext;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// How long to wait before retrying when librdkafka's local queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(20);

/// Lodestone's ingest worker: consumes the ingest topic into the store.
#[derive(Parser)]
struct Args {
    /// TOML configuration file; every key can be overridden with LODESTONE_INGEST__SECTION__KEY.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config: IngestConfig = lodestone_model::config::load(args.config.as_deref(), "LODESTONE_INGEST")?;
    let counters = Arc::new(Counters::default());

    let store = config.store.open().with_context(|| format!("opening store {}", config.store.describe()))?;
    if config.maintenance.enabled {
        tokio::spawn(maintain(store.clone(), config.maintenance.clone(), counters.clone()));
    }
    let ingestor = Ingestor::open(store, config.persist.hot_rows_max, config.tables.clone(), counters.clone()).await?;
    serve_http(&config.http.listen, counters.clone(), ingestor.memory()).await?;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (key, value) in &config.kafka.properties {
        client.set(key, value);
    }
    let rebalances = Arc::new(Rebalances { changes: Default::default(), counters: counters.clone() });
    let mut consumer_config = client.clone();
    // librdkafka's default (500 ms) is the floor of publish-to-queryable latency on tansu, which
    // holds a fetch for the whole wait when a partition has nothing new.
    if !config.kafka.properties.contains_key("fetch.wait.max.ms") {
        consumer_config.set("fetch.wait.max.ms", "50");
    }
    if !config.kafka.instance_id.is_empty() {
        consumer_config.set("group.instance.id", &config.kafka.instance_id);
    }
    let consumer: Arc<StreamConsumer<Rebalances>> = consumer_config
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Rebalances { changes: rebalances.changes.clone(), counters: counters.clone() })
        .map(Arc::new)
        .context("creating the Kafka consumer")?;
    let topics = [config.kafka.ingest_topic.as_str(), config.kafka.dead_letter_topic.as_str()];
    consumer.subscribe(&topics).context("subscribing to the ingest and dead-letter topics")?;
    let producer: FutureProducer = client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .context("creating the dead-letter producer")?;
    tracing::info!(topic = %config.kafka.ingest_topic, group = %config.kafka.group_id, instance = %config.kafka.instance_id, "consuming");
    let worker = Worker {
        ingestor,
        consumer,
        producer,
        config,
        counters,
        pending_letters: Vec::new(),
        next_offsets: BTreeMap::new(),
        seen_partitions: BTreeSet::new(),
        rebalances,
    };
    worker.run().await?;
    // Everything acknowledged is persisted and committed (or will be replayed); leave without
    // waiting for librdkafka's own close, which can block while a broker is unreachable.
    std::process::exit(0)
}

/// The Kafka loop around an [`Ingestor`].
struct Worker {
    ingestor: Ingestor,
    consumer: Arc<StreamConsumer<Rebalances>>,
    producer: FutureProducer,
    config: IngestConfig,
    counters: Arc<Counters>,
    pending_letters: Vec<rdkafka::producer::DeliveryFuture>,
    /// (topic, partition) → offset after the last message applied to the hot tier.
    next_offsets: BTreeMap<(String, i32), i64>,
    /// Partitions this worker has read since it was assigned them (their watermarks are loaded).
    seen_partitions: BTreeSet<(String, i32)>,
    rebalances: Arc<Rebalances>,
}

/// Partitions assigned and revoked by the group, noted by librdkafka's rebalance callback and
/// taken by the worker before its next message or commit.
struct Rebalances {
    changes: Arc<Mutex<Vec<(String, i32)>>>,
    /// `partitions_assigned` follows the group's assignments (readiness).
    counters: Arc<Counters>,
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (partitions, what, sign) = match rebalance {
            Rebalance::Assign(list) => (list.elements(), "assigned", 1),
            Rebalance::Revoke(list) => (list.elements(), "revoked", -1),
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance error");
                return;
            }
        };
        let names: Vec<String> = partitions.iter().map(|p| format!("{}/{}", p.topic(), p.partition())).collect();
        tracing::info!(partitions = ?names, "{what}");
        self.counters.partitions_assigned.fetch_add(sign * partitions.len() as i64, std::sync::atomic::Ordering::Relaxed);
        let mut changes = self.changes.lock().expect("rebalance lock");
        changes.extend(partitions.iter().map(|p| (p.topic().to_string(), p.partition())));
    }
}

impl Worker {
    async fn run(mut self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.persist.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                message = self.consumer.recv() => {
                    let message = match message {
                        Ok(message) => message.detach(),
                        Err(error) => {
                            tracing::warn!(%error, "kafka consumer error");
                            continue;
                        }
                    };
                    self.take_rebalances();
                    self.handle(&message).await?;
                }
                _ = tick.tick() => self.persist_and_commit().await?,
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        tracing::info!("shutting down: persisting and committing");
        let drained = tokio::time::timeout(Duration::from_millis(self.config.persist.shutdown_timeout_ms), self.persist_and_commit()).await;
        match drained {
            Ok(result) => result?,
            // Whatever was not committed is replayed from Kafka by the next owner of the partitions.
            Err(_) => tracing::warn!("persist and commit did not finish within shutdown_timeout_ms; exiting without committing"),
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Forgets what this worker knew of partitions that changed hands: a partition assigned
    /// (again) reloads its watermark from the catalog, since another worker may have persisted
    /// further meanwhile; a revoked partition's offsets are not committed by this worker any
    /// more (rows it already applied are persisted, and the new owner's copies deduplicate).
    fn take_rebalances(&mut self) {
        let changed = std::mem::take(&mut *self.rebalances.changes.lock().expect("rebalance lock"));
        for partition in changed {
            self.seen_partitions.remove(&partition);
            self.next_offsets.remove(&partition);
        }
    }

    async fn handle(&mut self, message: &rdkafka::message::OwnedMessage) -> anyhow::Result<()> {
        let content_type = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case("content-type"))
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        });
        let origin = Origin { topic: message.topic().to_string(), partition: message.partition(), offset: message.offset() };
        let payload = message.payload().unwrap_or_default();
        Counters::add(&self.counters.messages_received, 1);
        if self.already_persisted(&origin).await? {
            Counters::add(&self.counters.messages_skipped, 1);
            self.next_offsets.insert((origin.topic, origin.partition), origin.offset + 1);
            return Ok(());
        }
        if origin.topic == self.config.kafka.dead_letter_topic {
            self.record_rejection(message, &origin).await?;
            self.next_offsets.insert((origin.topic, origin.partition), origin.offset + 1);
            return Ok(());
        }
        let letters = loop {
            match self.ingestor.apply(payload, content_type, &origin, now_ns()).await? {
                Applied::Done(letters) => break letters,
                Applied::PersistFirst => self.persist_and_commit().await?,
            }
        };
        for letter in letters {
            self.send_dead_letter(letter, &origin).await;
        }
        self.next_offsets.insert((origin.topic, origin.partition), origin.offset + 1);
        Ok(())
    }

    /// Writes a message of the dead-letter topic into the rejected_records table.
    async fn record_rejection(&mut self, message: &rdkafka::message::OwnedMessage, origin: &Origin) -> anyhow::Result<()> {
        let headers: BTreeMap<String, String> = message
            .headers()
            .map(|headers| headers.iter().filter_map(|h| Some((h.key.to_string(), String::from_utf8_lossy(h.value?).into_owned()))).collect())
            .unwrap_or_default();
        if self.ingestor.hot_rows() >= self.config.persist.hot_rows_max {
            self.persist_and_commit().await?;
        }
        let payload = message.payload().unwrap_or_default();
        self.ingestor.apply_dead_letter(&headers, payload, origin, now_ns()).await?;
        Ok(())
    }

    /// Whether a message is below the partition's watermark in the catalog: persisted before,
    /// by this worker in an earlier life or by another (offsets lost, replay from earliest), and
    /// not to be stored twice. A partition's watermark is loaded when it is first seen.
    async fn already_persisted(&mut self, origin: &Origin) -> anyhow::Result<bool> {
        let key = (origin.topic.clone(), origin.partition);
        if !self.seen_partitions.contains(&key) {
            self.ingestor.refresh().await.context("loading the catalog")?;
            self.seen_partitions.insert(key);
            let through = self.ingestor.persisted_through(&watermark_key(&origin.topic, origin.partition));
            tracing::info!(topic = %origin.topic, partition = origin.partition, offset = origin.offset, watermark = ?through, "reading a partition");
        }
        let through = self.ingestor.persisted_through(&watermark_key(&origin.topic, origin.partition));
        Ok(through.is_some_and(|next| (origin.offset as u64) < next))
    }

    /// Queues a dead letter; [`persist_and_commit`](Self::persist_and_commit) waits for its
    /// delivery before committing. While librdkafka's queue is full this waits for room; a
    /// letter librdkafka refuses outright is counted as discarded, with the reason.
    async fn send_dead_letter(&mut self, letter: DeadLetter, origin: &Origin) {
        tracing::warn!(reason = %letter.reason, device_id = ?letter.device_id, offset = origin.offset, "rejected");
        let headers = OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(letter.reason.as_str()) })
            .insert(Header { key: "detail", value: Some(letter.detail.as_str()) })
            .insert(Header { key: "device_id", value: letter.device_id.as_deref() })
            .insert(Header { key: "source", value: Some("ingest") });
        let key = letter.device_id.clone().unwrap_or_default();
        let mut record = FutureRecord::to(&self.config.kafka.dead_letter_topic).key(&key).payload(&letter.payload).headers(headers);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return self.pending_letters.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((error, _)) => {
                    tracing::error!(%error, reason = %letter.reason, offset = origin.offset, "cannot queue a dead letter; it is discarded");
                    return self.counters.discard("dead_letter_refused_by_kafka");
                }
            }
        }
    }

    /// Persists the hot tier, waits for every dead letter, then commits the offsets of every
    /// message applied so far. Exits the process on a store error: Kafka replays from the last
    /// committed offset, so nothing acknowledged is lost.
    async fn persist_and_commit(&mut self) -> anyhow::Result<()> {
        self.take_rebalances();
        if self.next_offsets.is_empty() {
            return Ok(());
        }
        let watermarks: BTreeMap<String, u64> =
            self.next_offsets.iter().map(|((topic, partition), offset)| (watermark_key(topic, *partition), *offset as u64)).collect();
        let rows = self.ingestor.persist(&watermarks).await.context("persisting the hot tier")?;
        for delivery in join_all(std::mem::take(&mut self.pending_letters)).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => anyhow::bail!("a dead letter was not delivered: {error}"),
                Err(_) => anyhow::bail!("a dead letter delivery was cancelled"),
            }
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in std::mem::take(&mut self.next_offsets) {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        // librdkafka's synchronous commit blocks its thread; keep it off the async workers so that
        // the shutdown bound can still fire while a broker does not answer.
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .context("the offset commit task failed")?
            .context("committing offsets")?;
        tracing::debug!(rows, "persisted and committed");
        Ok(())
    }
}

/// `GET /ready`: 200 once the consumer group has assigned this worker a partition, 503 until
/// then (a new group takes a few seconds to form). `/health` only says the process is up.
fn ready(counters: &Counters) -> (axum::http::StatusCode, &'static str) {
    if counters.is_assigned() {
        (axum::http::StatusCode::OK, "ready")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "waiting for the consumer group to assign a partition")
    }
}

async fn serve_http(listen: &str, counters: Arc<Counters>, memory: Memory) -> anyhow::Result<()> {
    let ready_counters = counters.clone();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(move || async move { ready(&ready_counters) }))
        .route("/metrics", get(move || async move { counters.render() }))
        .route("/v1/memory/{database}/{table}", get(move |path, query| serve_memory(memory.clone(), path, query)));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

#[derive(serde::Deserialize)]
struct MemoryRange {
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    /// A JSON array of the column names to send (all when absent).
    columns: Option<String>,
}

/// `GET /v1/memory/{database}/{table}?from_ns=&to_ns=&columns=["a","b"]`: the table's rows this
/// worker has not persisted yet, as an Arrow IPC stream (empty when it holds none), with only the
/// columns asked for (all without `columns`). Query services union them with the cold tier, so
/// that a write is visible before it is persisted.
async fn serve_memory(
    memory: Memory,
    axum::extract::Path((database, table)): axum::extract::Path<(String, String)>,
    axum::extract::Query(range): axum::extract::Query<MemoryRange>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let table = lodestone_store::TableRef { database, table };
    let columns: Option<Vec<String>> = match range.columns.as_deref().map(serde_json::from_str).transpose() {
        Ok(columns) => columns,
        Err(error) => return (axum::http::StatusCode::BAD_REQUEST, format!("columns must be a JSON array of names: {error}")).into_response(),
    };
    let encoded = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let (from_ns, to_ns) = (range.from_ns.unwrap_or(i64::MIN), range.to_ns.unwrap_or(i64::MAX));
        let batches = memory.table_batches(&table, from_ns, to_ns, columns.as_deref()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        if !batches.is_empty() {
            // One schema per stream: the union of the batches' columns (the persisting batch and
            // the hot tier may have learned different ones).
            let schemas = batches.iter().map(|b| b.schema().as_ref().clone());
            let schema = Arc::new(arrow::datatypes::Schema::try_merge(schemas).map_err(|e| e.to_string())?);
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).map_err(|e| e.to_string())?;
            for batch in &batches {
                let columns = schema
                    .fields()
                    .iter()
                    .map(|f| batch.column_by_name(f.name()).cloned().unwrap_or_else(|| arrow::array::new_null_array(f.data_type(), batch.num_rows())))
                    .collect();
                let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
                writer.write(&batch).map_err(|e| e.to_string())?;
            }
            writer.finish().map_err(|e| e.to_string())?;
        }
        Ok(out)
    })
    .await;
    match encoded {
        Ok(Ok(bytes)) => ([(axum::http::header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")], bytes).into_response(),
        Ok(Err(error)) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
        Err(error) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Compaction and retention, one round every `interval_ms`. A failed round is logged and retried
/// on the next one: every step commits atomically, so an interrupted round leaves no damage.
async fn maintain(store: Store, config: ingest_service::config::MaintenanceConfig, counters: Arc<Counters>) {
    let policy = CompactionPolicy {
        files_min: config.compact_files_min.max(2),
        input_bytes_max: config.compact_input_bytes_max,
        garbage_grace_ns: config.garbage_grace_ms as i64 * 1_000_000,
        fresh_age_max_ns: config.compact_fresh_age_ms as i64 * 1_000_000,
        ..CompactionPolicy::default()
    };
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.compact(&policy, now_ns()).await {
            Ok(report) if report.partitions_compacted > 0 => {
                // Cross-tier conflicts: refused by compaction, recorded in rejected_records.
                (0..report.conflicts_rejected).for_each(|_| counters.reject(lodestone_model::RejectReason::VersionConflict));
                tracing::info!(?report, "compacted")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "compaction round failed"),
        }
        match store.apply_retention(&policy, now_ns()).await {
            Ok(report) if report.partitions_expired + report.files_deleted > 0 => tracing::info!(?report, "retention"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retention round failed"),
        }
    }
}

/// The catalog watermark of a Kafka partition: the offset after the last persisted message.
fn watermark_key(topic: &str, partition: i32) -> String {
    format!("kafka/{topic}/{partition}")
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
