#!/usr/bin/env bash
# `make bench-e2e`: starts the whole stack from a release build (scripts/up.sh, no simulated
# fleet, data in a fresh .stack-bench-e2e/), runs configs/scenarios/steady.toml against it with
# `lodestone-sim load`, prints the report's table and `figure` lines, and stops the stack.
# It does so twice in one run: secured (TLS everywhere, device certificates, tokens: how the stack
# runs) and in plain text without tokens (`figure …_plaintext`), so that what security costs is a
# measured ratio. A third run, `traced` (`figure …_traced`), is the secured one with tracing on:
# every envelope carries a traceparent, 1% of them sampled, and every service exports spans and
# metrics over OTLP to a sink here; beside `tls` it gives what tracing costs.
# BENCH_MODES="tls" runs the secured one only.
# Uses the local stack's fixed ports (9092, 1883, 8080, 8181, 9181, 9281): stop `make up` first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out="${LODESTONE_CACHE:-/var/cache/lodestone}/bench-e2e"
mkdir -p "$out"
# Inside the clone: tansu resolves its sqlite:// path relative to its working folder.
stack_dir=.stack-bench-e2e

# An OTLP/HTTP sink for the traced run: answers every export with 200 and counts them.
otlp_port=14318
otlp_sink() {
  python3 - "$otlp_port" "$out/otlp-exports.txt" <<'PY' &
import http.server, sys
port, log = int(sys.argv[1]), sys.argv[2]
class Sink(http.server.BaseHTTPRequestHandler):
    count = 0
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-type", "application/json"); self.end_headers(); self.wfile.write(b"{}")
        Sink.count += 1
        open(log, "w").write(f"{Sink.count} exports\n")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
PY
  sink=$!
}

run_mode() { # tls | plain | traced
  local mode=$1 scheme=https plaintext=0 suffix="" tracing=()
  [[ $mode == plain ]] && { scheme=http; plaintext=1; suffix=_plaintext; }
  if [[ $mode == traced ]]; then
    suffix=_traced
    otlp_sink
    tracing=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" OTEL_TRACES_SAMPLER_ARG=0.01)
  fi
  rm -rf "$stack_dir"
  env "${tracing[@]}" LODESTONE_PLAINTEXT=$plaintext LODESTONE_BIN_DIR="$bin" LODESTONE_STACK_DIR="$stack_dir" LODESTONE_FLEET=0 \
    scripts/up.sh >"$out/up-$mode.log" 2>&1 &
  up=$!
  finish() {
    [[ -n "${sink:-}" ]] && { kill "$sink" 2>/dev/null || true; sink=""; }
    kill -TERM "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    mkdir -p "$out/logs-$mode"
    cp "$stack_dir"/logs/*.log "$out/logs-$mode/" 2>/dev/null || true
    rm -rf "$stack_dir"
  }
  trap finish EXIT
  for _ in $(seq 1 600); do
    curl -fsS --cacert "$stack_dir/certs/ca.pem" "$scheme://127.0.0.1:8181/health" >/dev/null 2>&1 && break # the edge agent starts last
    kill -0 "$up" 2>/dev/null || { cat "$out/up-$mode.log"; exit 1; }
    sleep 0.5
  done
  local access=(LODESTONE_CA="$stack_dir/certs/ca.pem" LODESTONE_TOKEN_FILE="$stack_dir/certs/admin.token" LODESTONE_DEVICE_CA_DIR="$stack_dir/certs")
  [[ $mode == plain ]] && access=()
  echo "== $mode"
  local traceparents=()
  [[ $mode == traced ]] && traceparents=(--traceparent-ratio 0.01)
  env "${access[@]}" "$bin/lodestone-sim" "${traceparents[@]}" load --scenario "${SCENARIO:-configs/scenarios/steady.toml}" --query-url "$scheme://127.0.0.1:8080" \
    --report "$out/report-$mode.json" --chart "$out/chart-$mode.svg" | sed "s/^figure \([a-z0-9_]*\)/figure \1$suffix/"
  finish
  trap - EXIT
}

for mode in ${BENCH_MODES:-tls traced plain}; do
  run_mode "$mode"
done
