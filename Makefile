# Lodestone's entry points. `make up` runs the whole pipeline locally; `make test` runs every test.
# Build outputs and the tansu binary are cached outside the clone, in $(LODESTONE_CACHE).

LODESTONE_CACHE ?= /var/cache/lodestone
export LODESTONE_CACHE
export CARGO_TARGET_DIR ?= $(LODESTONE_CACHE)/target
export TANSU_BIN ?= $(LODESTONE_CACHE)/tansu-0.6.0/bin/tansu
export MOTO_SERVER ?= $(LODESTONE_CACHE)/moto-venv/bin/moto_server
export LODESTONE_PYTHON ?= $(LODESTONE_CACHE)/py-venv/bin/python

.PHONY: up test test-faults setup build bench-store bench-query bench-e2e bench-write fuzz

setup:
	@scripts/setup.sh

build: setup
	cargo build --workspace --all-targets

## Brings up tansu, broker-bridge, ingest-service, query-service, an edge agent and a simulated
## fleet; prints where to query. Ctrl-C stops everything.
up: build
	@scripts/up.sh

## Runs the whole test suite: unit tests of every crate and the end-to-end tests in tests/, then
## a short pass (10 s) of every fuzz target.
test: build
	cargo test --workspace --no-fail-fast -- --test-threads=2
	FUZZ_S=10 scripts/fuzz.sh

## The fault tests alone (also part of `make test`): kill -9, restarts, cut links, bad payloads,
## each checked against the load's ledger. Prints `figure <test>_lost` and `figure <test>_duplicated`.
test-faults: build
	cargo test -p lodestone-tests --test faults -- --nocapture

## Fuzzes every decoder and parser a client reaches (envelopes, bundles, line protocol, topics,
## MQTT packets, config files, the SQL front) for FUZZ_S seconds each (default 60); prints
## `figure fuzz_<target>_execs`, stops at the first crash. See scripts/fuzz.sh.
fuzz:
	@scripts/fuzz.sh

## Store benchmark on TSBS-iot-style data; prints `figure <name> <value> <unit>` lines.
bench-store:
	cargo bench -p lodestone-store --bench store

## TSBS iot queries on 1,000 trucks x 3 days, through the REST API and in DuckDB over the same
## Parquet files; the answers must match. Prints `figure query_<name>_ms` and `figure duckdb_<name>_ms`.
bench-query: setup
	DUCKDB_PYTHON=$$(scripts/ensure-duckdb.sh) cargo bench -p query-service --bench tsbs

## The whole stack from a release build, driven by configs/scenarios/steady.toml (lodestone-sim
## load): prints e2e_readings_per_sec, e2e_p99_latency_ms and devices_connected. SCENARIO=… runs
## another scenario. Uses the local stack's ports.
bench-e2e: setup
	scripts/bench-e2e.sh

## Timestream's WriteRecords (batches of 100, BENCH_CLIENTS concurrent calls, TSBS-iot trucks) against
## the stack from a release build, beside the same data produced straight to Kafka in the same run:
## prints records and points per second, p50/p99 latency and the ratio. Uses the local stack's ports.
bench-write: setup
	scripts/bench-write.sh
