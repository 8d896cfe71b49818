#!/usr/bin/env bash
# Installs the tansu Kafka-compatible broker (used by tests and the local stack) once, into a
# cache outside the clone, and prints the path of the binary. Later runs reuse the cached binary.
set -euo pipefail
cache="${LODESTONE_CACHE:-/var/cache/lodestone}"
version=0.6.0
bin="$cache/tansu-$version/bin/tansu"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "installing tansu $version into $cache (about 10 minutes the first time)" >&2
  cargo install tansu --version "$version" --locked --features dynostore,libsql \
    --root "$cache/tansu-$version" >&2
fi
echo "$bin"
