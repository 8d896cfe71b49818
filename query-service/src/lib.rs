//! The query service: SQL over the store's tables, answered over REST.
//!
//! Key types:
//! - [`QueryConfig`]: the service's configuration (`configs/query-service.example.toml`).
//! - [`engine::Engine`]: plans and runs one SQL query with Apache DataFusion against the latest
//!   catalog snapshot, within the configured limits, and renders the result as JSON.
//! - [`table::StoreTable`]: the DataFusion `TableProvider` of one Lodestone table: the cold tier's
//!   Parquet files listed in the catalog, read through the store's scan API, unioned with the
//!   rows the ingest workers hold in memory ([`memory::MemoryClient`]).
//! - [`measure_value::resolve_typed_columns`]: resolves Timestream's `measure_value::double`
//!   (parsed as a cast) to the typed column, in the syntax tree before planning.
//! - [`timestream`]: Timestream's SQL before planning — interval literals (`5m`) and functions
//!   DataFusion has under other names (`bin`, `ago`, `max_by`, `create_time_series`…);
//!   [`timeseries`]: the functions on timeseries (`interpolate_*`, `derivative_linear`,
//!   `integral_trapezoidal`).
//! - [`timestream_api`]: Timestream's own API (AWS JSON 1.0, SigV4) on the same listener, for
//!   boto3, the AWS CLI, Telegraf, Grafana and awswrangler: management, `Query` on the same
//!   engine, and `WriteRecords`, which produces to the ingest topic and waits for the workers'
//!   receipts ([`timestream_api::write::RecordWriter`]).
//! - [`console`]: the web console at `/console/` (files embedded from `console/`), and what its
//!   pages read: [`pipeline`] (every service's health and figures off their `/metrics`,
//!   `GET /v1/pipeline`) and [`alerts`] (rules in the catalog, evaluated once per interval
//!   across services, their changes in `"_lodestone"."alert_history"` and to a webhook).
//! - [`api`]: the REST routes (`/v1/query`, `/v1/databases…`, `/metrics`) and their JSON errors;
//!   [`metrics::Metrics`]: what the service answered, for `/metrics`.
//!
//! Requests enter through [`api::router`]; data enters from the store's object store and the
//! ingest workers' memory (Arrow IPC over HTTP) and leaves as JSON. A service keeps only what
//! lives for one answer: the queries running now (for cancel) and the unread pages of paged
//! answers (until their token expires), both in its own memory. A `next_token` must therefore come
//! back to the service that issued it; everything else (tables, data) is in the catalog and the
//! object store, so any number of services can run side by side.
//!
//! **Invariant:** the query service never writes data into the store; `WriteRecords` produces to
//! the ingest topic as any Kafka producer does, and the ingest workers write it. The service
//! changes only the catalog's databases and tables (and their tags).

pub mod alerts;
pub mod api;
pub mod complexity;
pub mod config;
pub mod console;
pub mod engine;
pub mod gapfill;
pub mod measure_value;
pub mod show;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod table;
pub mod timeseries;
pub mod timestream;
pub mod timestream_api;

pub use config::QueryConfig;
