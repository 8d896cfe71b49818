#!/usr/bin/env bash
# Installs the stock AWS clients that tests/python drives against the Timestream-compatible API
# (boto3/botocore, awswrangler) and pytest into a virtual environment cached outside the clone.
# Prints the environment's python. Every package is pinned, the transitive ones too; the pins
# (and the interpreter's version) are kept in a stamp file, so re-running is a no-op while they
# match and a fresh install when they change.
set -euo pipefail
cache="${LODESTONE_CACHE:-/var/cache/lodestone}"
venv="$cache/py-venv"
stamp="$venv/lodestone-requirements.txt"
requirements="# $(python3 -c 'import sys; print("python %d.%d" % sys.version_info[:2])')
awswrangler==3.17.1
boto3==1.44.18
botocore==1.44.18
certifi==2026.10.19.post1
charset-normalizer==3.5.3
idna==3.21
iniconfig==2.3.1
jmespath==1.1.0
numpy==2.4.6
packaging==26.4
pandas==3.1.2
pluggy==1.7.0
pyarrow==25.0.1
Pygments==2.21.0
pytest==9.2.0
python-dateutil==2.9.0.post0
requests==2.34.2
s3transfer==0.19.3
setuptools==84.2.1; python_version >= '3.12'
six==1.17.0
typing_extensions==4.16.0
urllib3==2.8.0"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
  echo "installing boto3, awswrangler and pytest into $venv (about a minute)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  printf '%s\n' "$requirements" > "$venv/requirements.txt"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$venv/requirements.txt" >&2
  "$venv/bin/pip" check >&2
  # Written last: an interrupted install is redone on the next run.
  mv "$venv/requirements.txt" "$stamp"
fi
echo "$venv/bin/python"
