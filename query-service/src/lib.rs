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
//! - [`api`]: the REST routes (`/v1/query`, `/v1/databases…`, `/metrics`) and their JSON errors;
//!   [`metrics::Metrics`]: what the service answered, for `/metrics`.
//!
//! Requests enter through [`api::router`]; data enters from the store's object store and the
//! ingest workers' memory (Arrow IPC over HTTP) and leaves as JSON. The service holds no state between requests: any number of them can run.
//!
//! **Invariant:** the query service never writes data; it changes only the catalog's databases
//! and tables.

pub mod api;
pub mod config;
pub mod engine;
pub mod gapfill;
pub mod measure_value;
pub mod show;
pub mod memory;
pub mod metrics;
pub mod table;
pub mod timeseries;
pub mod timestream;

pub use config::QueryConfig;
