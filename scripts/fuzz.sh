#!/usr/bin/env bash
# `make fuzz`: builds the fuzz targets of fuzz/ (every decoder and parser that reads what a client
# sends) with libFuzzer and coverage instrumentation, and runs each for FUZZ_S seconds (default 60)
# from its committed seed corpus, fuzz/corpus/TARGET. What a run learns stays in the cache
# ($LODESTONE_CACHE/fuzz/corpus), not in the clone. Prints `figure fuzz_TARGET_execs N` per target
# and stops at the first crash, whose input is then in $LODESTONE_CACHE/fuzz/artifacts/TARGET/:
# turn it into a regression test of the crate it crashed, and fix the crate.
#
# Why libFuzzer through libfuzzer-sys, and not cargo-fuzz or cargo-afl: both need a nightly
# toolchain (cargo-fuzz for -Zsanitizer=address, cargo-afl for its LLVM plugins), and only stable
# Rust 1.95 builds Lodestone. The coverage flags cargo-fuzz passes (-Cpasses=sancov-module and
# the sanitizer-coverage options) are stable; only the address sanitizer is not, and safe Rust
# needs it least. Debug assertions and overflow checks are on, so an overflow is a crash.
# FUZZ_TARGETS="envelope sql" runs some of them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_S:-60}
cache=${LODESTONE_CACHE:-/var/cache/lodestone}/fuzz
targets=${FUZZ_TARGETS:-envelope bundle line_protocol topic mqtt_packets config sql}
export CARGO_TARGET_DIR=$cache/target
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# With an explicit --target, RUSTFLAGS reach only what runs in the fuzzer, not build scripts and
# proc macros (which would not link without libFuzzer).
host=$(rustc -vV | sed -n 's/^host: //p')
(cd fuzz && cargo build --release --bins --quiet --target "$host")
bin=$CARGO_TARGET_DIR/$host/release

total=0
for target in $targets; do
  corpus=$cache/corpus/$target
  artifacts=$cache/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  cp -n fuzz/corpus/"$target"/* "$corpus"/ 2>/dev/null || true
  log=$cache/$target.log
  # 8 MiB of stack, as the services' threads have; 4 GiB of memory per run.
  if ! (ulimit -s 8192; "$bin/$target" -max_total_time="$seconds" -rss_limit_mb=4096 \
      -max_len=65536 -timeout=10 -artifact_prefix="$artifacts/" -print_final_stats=1 "$corpus" >"$log" 2>&1); then
    tail -40 "$log"
    echo "fuzz target $target failed; its input is in $artifacts/" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  total=$((total + execs))
  echo "figure fuzz_${target}_execs $execs"
done
echo "figure fuzz_total_execs $total"
