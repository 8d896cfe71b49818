#!/usr/bin/env bash
# `make bench-e2e`: starts the whole stack from a release build (scripts/up.sh, no simulated
# fleet, data in a fresh .stack-bench-e2e/), runs configs/scenarios/steady.toml against it with
# `lodestone-sim load`, prints the report's table and `figure` lines, and stops the stack.
# It does so twice in one run: secured (TLS everywhere, device certificates, tokens: how the stack
# runs) and in plain text without tokens (`figure …_plaintext`), so that what security costs is a
# measured ratio. BENCH_MODES="tls" runs the secured one only.
# Uses the local stack's fixed ports (9092, 1883, 8080, 8181, 9181, 9281): stop `make up` first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out="${LODESTONE_CACHE:-/var/cache/lodestone}/bench-e2e"
mkdir -p "$out"
# Inside the clone: tansu resolves its sqlite:// path relative to its working folder.
stack_dir=.stack-bench-e2e

run_mode() { # tls | plain
  local mode=$1 scheme=https plaintext=0 suffix=""
  [[ $mode == plain ]] && { scheme=http; plaintext=1; suffix=_plaintext; }
  rm -rf "$stack_dir"
  LODESTONE_PLAINTEXT=$plaintext LODESTONE_BIN_DIR="$bin" LODESTONE_STACK_DIR="$stack_dir" LODESTONE_FLEET=0 \
    scripts/up.sh >"$out/up-$mode.log" 2>&1 &
  up=$!
  finish() {
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
  env "${access[@]}" "$bin/lodestone-sim" load --scenario "${SCENARIO:-configs/scenarios/steady.toml}" --query-url "$scheme://127.0.0.1:8080" \
    --report "$out/report-$mode.json" --chart "$out/chart-$mode.svg" | sed "s/^figure \([a-z0-9_]*\)/figure \1$suffix/"
  finish
  trap - EXIT
}

for mode in ${BENCH_MODES:-tls plain}; do
  run_mode "$mode"
done
