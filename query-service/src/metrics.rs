//! What the query service answered, for `GET /metrics`: queries answered and refused (by error
//! code), rows and bytes, workers whose memory could not be read, queries running now, and
//! Timestream API calls by operation.

use std::sync::atomic::{AtomicU64, Ordering};

use lodestone_kit::metrics::{CountsBy, Exposition, Kind};

use crate::engine::Page;

#[derive(Debug, Default)]
pub struct Metrics {
    pages: AtomicU64,
    rows: AtomicU64,
    bytes_scanned: AtomicU64,
    memory_workers_unreachable: AtomicU64,
    failed: CountsBy<&'static str>,
    timestream_requests: CountsBy<&'static str>,
    timestream_errors: CountsBy<&'static str>,
    timestream_throttled: AtomicU64,
}

impl Metrics {
    /// A page of an answer was sent.
    pub fn answered(&self, page: &Page) {
        self.pages.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(page.batch.num_rows() as u64, Ordering::Relaxed);
        self.bytes_scanned.fetch_add(page.bytes_scanned, Ordering::Relaxed);
        self.memory_workers_unreachable.fetch_add(page.memory_workers_unreachable as u64, Ordering::Relaxed);
    }

    /// A query (or a page request) was refused with error `code`.
    pub fn failed(&self, code: &'static str) {
        self.failed.add(code, 1);
    }

    /// A Timestream API call of `operation` was answered, refused with `error` if any.
    pub fn timestream_request(&self, operation: &'static str, error: Option<&'static str>) {
        self.timestream_requests.add(operation, 1);
        if let Some(code) = error {
            self.timestream_errors.add(code, 1);
        }
    }

    /// A `WriteRecords` call was answered 429 `ThrottlingException`.
    pub fn timestream_throttled(&self) {
        self.timestream_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text, with `running` queries in flight now.
    pub fn render(&self, running: usize) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = Exposition::new();
        out.counter("lodestone_query_pages_total", "Pages of query answers sent (a query's first page included).", load(&self.pages))
            .counter("lodestone_query_rows_total", "Rows sent in answers.", load(&self.rows))
            .counter("lodestone_query_bytes_scanned_total", "Bytes of files and workers' memory read by queries.", load(&self.bytes_scanned))
            .counter(
                "lodestone_query_memory_workers_unreachable_total",
                "Times a query left out an ingest worker's unpersisted rows because it did not answer.",
                load(&self.memory_workers_unreachable),
            )
            .family("lodestone_query_failed_total", Kind::Counter, "Queries and page requests refused, by error code.", "code", self.failed.snapshot())
            .gauge("lodestone_query_running", "Queries running now.", running)
            .family("lodestone_timestream_requests_total", Kind::Counter, "Timestream API calls, by operation.", "operation", self.timestream_requests.snapshot())
            .family("lodestone_timestream_errors_total", Kind::Counter, "Timestream API calls refused, by AWS error code.", "code", self.timestream_errors.snapshot())
            .counter("lodestone_timestream_throttled_total", "WriteRecords calls answered 429 ThrottlingException.", load(&self.timestream_throttled));
        out.service_families();
        out.finish()
    }
}
