#!/usr/bin/env bash
# `make bench-write`: Timestream's WriteRecords against the whole stack from a release build
# (scripts/up.sh, secured as always, no simulated fleet, data in a fresh .stack-bench-write/),
# beside the same TSBS-iot data produced straight to Kafka in the same run. WriteRecords is timed
# to its answer, which comes once the records are applied by an ingest worker (queryable); the
# Kafka producer to Kafka's acknowledgement. Prints `figure` lines: records and points per second
# of each, WriteRecords' p50 and p99 latency, and the ratio of the two rates.
# BENCH_TRUCKS (1000), BENCH_READINGS per truck (200), BENCH_CLIENTS concurrent WriteRecords calls
# (16). Uses the local stack's fixed ports (9092, 1883, 8080, 8181, 9181, 9281): stop `make up` first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out="${LODESTONE_CACHE:-/var/cache/lodestone}/bench-write"
mkdir -p "$out"
stack_dir=.stack-bench-write
trucks=${BENCH_TRUCKS:-1000}
readings=${BENCH_READINGS:-200}
clients=${BENCH_CLIENTS:-16}

rm -rf "$stack_dir"
LODESTONE_BIN_DIR="$bin" LODESTONE_STACK_DIR="$stack_dir" LODESTONE_FLEET=0 scripts/up.sh >"$out/up.log" 2>&1 &
up=$!
finish() {
  kill -TERM "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  mkdir -p "$out/logs"
  cp "$stack_dir"/logs/*.log "$out/logs/" 2>/dev/null || true
  rm -rf "$stack_dir"
}
trap finish EXIT
certs="$stack_dir/certs"
for _ in $(seq 1 600); do
  curl -fsS --cacert "$certs/ca.pem" https://127.0.0.1:8181/health >/dev/null 2>&1 && break # the edge agent starts last
  kill -0 "$up" 2>/dev/null || { cat "$out/up.log"; exit 1; }
  sleep 0.5
done

rest() { # METHOD PATH [JSON]
  curl -fsS --cacert "$certs/ca.pem" -H "authorization: Bearer $(cat "$certs/admin.token")" -H 'content-type: application/json' \
    -X "$1" "https://127.0.0.1:8080$2" ${3:+-d "$3"} >/dev/null
}
rest POST /v1/databases '{"name": "tsbs"}'
rest POST /v1/databases/tsbs/tables '{"name": "write_records"}'
rest POST /v1/databases/tsbs/tables '{"name": "kafka"}'

data=(--profile truck --batch 100 --interval-ms 10000 --database tsbs --timeout-s 1800)
echo "== WriteRecords: $trucks trucks x $readings records, batches of 100, $clients clients"
LODESTONE_CA="$certs/ca.pem" LODESTONE_TOKEN_FILE="$certs/admin.token" "$bin/lodestone-sim" timestream --url https://127.0.0.1:8080 \
  --sensors "$trucks" --readings-per-sensor "$readings" --clients "$clients" --table write_records "${data[@]}" >"$out/write-records.json"
echo "== Kafka producer: the same data"
"$bin/lodestone-sim" kafka --bootstrap 127.0.0.1:9092 --devices "$trucks" --readings-per-device "$readings" --table kafka "${data[@]}" >"$out/kafka.json"

python3 - "$out/write-records.json" "$out/kafka.json" <<'PY'
import json, sys
write, kafka = (json.load(open(path)) for path in sys.argv[1:3])
# TSBS trucks alternate `readings` (7 measures) and `diagnostics` (3): 5 points a record.
POINTS_PER_RECORD = 5
def figure(name, value, unit):
    print(f"figure {name} {value:.1f} {unit}")
for name, run in (("write_records", write), ("kafka", kafka)):
    assert run["unacked"] == 0, f"{name}: {run['unacked']} records not acknowledged"
    figure(f"{name}_records_per_sec", run["readings_per_sec"], "records/s")
    figure(f"{name}_points_per_sec", run["readings_per_sec"] * POINTS_PER_RECORD, "points/s")
figure("write_records_p50_ms", write["latency_ms"]["p50"], "ms")
figure("write_records_p99_ms", write["latency_ms"]["p99"], "ms")
figure("write_records_vs_kafka", write["readings_per_sec"] / kafka["readings_per_sec"], "x")
PY
