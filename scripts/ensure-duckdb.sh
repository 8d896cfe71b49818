#!/usr/bin/env bash
# Installs DuckDB's Python wheel into a virtual environment cached outside the clone, for
# `make bench-query`. Prints the environment's python.
set -euo pipefail
cache="${LODESTONE_CACHE:-/var/cache/lodestone}"
venv="$cache/duckdb-venv"
if ! "$venv/bin/python" -c "import duckdb" 2>/dev/null; then
  echo "installing DuckDB's Python wheel into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'duckdb==1.1.3'
fi
echo "$venv/bin/python"
