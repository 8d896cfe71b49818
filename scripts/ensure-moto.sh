#!/usr/bin/env bash
# Installs moto's S3-compatible server (Python, from PyPI) into a virtual environment cached
# outside the clone, for the store's S3 test. Prints the server's path.
set -euo pipefail
cache="${LODESTONE_CACHE:-/var/cache/lodestone}"
venv="$cache/moto-venv"
server="$venv/bin/moto_server"
if [ ! -x "$server" ]; then
  echo "installing moto's S3 server into $venv (about 30 s)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]==5.2.5'
fi
echo "$server"
