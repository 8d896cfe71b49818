#!/usr/bin/env bash
# Installs what building and testing Lodestone needs on a fresh Debian machine: a few Debian
# packages (C toolchain pieces for the bundled librdkafka and its OpenSSL, mosquitto-clients, openssl, the AWS CLI and Chromium for the tests), the
# tansu broker, moto's S3-compatible server and the Python clients of the Timestream suite (boto3,
# awswrangler; all cached outside the clone). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential pkg-config zlib1g-dev libssl-dev mosquitto-clients curl python3-venv openssl awscli chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
scripts/ensure-tansu.sh >/dev/null
scripts/ensure-moto.sh >/dev/null
scripts/ensure-pyenv.sh >/dev/null
