#!/usr/bin/env bash
# Brings up the whole Lodestone pipeline on this machine: tansu, broker-bridge, ingest-service,
# query-service, an edge agent with simulated sensors and a simulated fleet of MQTT devices.
# Every HTTP service serves HTTPS and checks tokens: a local CA, a server certificate and an
# admin token are made once in $stack/certs (lodestone-admin local init). Prints where to query
# and how. Ctrl-C (or SIGTERM) stops every process cleanly.
# LODESTONE_PLAINTEXT=1 runs everything in plain text and without tokens instead: only for
# measuring what security costs (`make bench-e2e` does, beside the secured run).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${LODESTONE_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}"
# LODESTONE_STACK_DIR: where data and logs go; LODESTONE_FLEET=0: no simulated fleet or sensors
# (`make bench-e2e` drives the stack with its own load).
stack="${LODESTONE_STACK_DIR:-.stack}"
fleet="${LODESTONE_FLEET:-1}"
tansu="${TANSU_BIN:-$(scripts/ensure-tansu.sh)}"
devices="${FLEET_DEVICES:-50}"
rate="${FLEET_RATE:-500}"
mkdir -p "$stack/logs"
pids=()
certs="$stack/certs"
"$bin/lodestone-admin" local init --dir "$certs" >/dev/null
# The [tls] and [auth] of every service: environment overrides for the service whose variables
# start with $1.
secured() {
  echo "${1}__TLS__CERT_PATH=$certs/server.pem"
  echo "${1}__TLS__KEY_PATH=$certs/server.key"
  echo "${1}__TLS__CA_PATH=$certs/ca.pem"
  echo "${1}__AUTH__TOKENS_PATH=$certs/tokens.toml"
}
mapfile -t ingest_env < <(secured LODESTONE_INGEST)
mapfile -t query_env < <(secured LODESTONE_QUERY)
mapfile -t bridge_env < <(secured LODESTONE_BRIDGE)
mapfile -t agent_env < <(secured LODESTONE_AGENT)
# MQTT: devices connect over TLS with a certificate from the same CA; these databases are theirs.
bridge_env+=("LODESTONE_BRIDGE__MQTT__DEVICE_CA_PATH=$certs/ca.pem" "LODESTONE_BRIDGE__MQTT__CRL_PATH=$certs/crl.pem")
bridge_env+=('LODESTONE_BRIDGE__MQTT__POLICIES=[{devices = ["*"], write = ["fleet/*", "iot/*", "plant/*", "sim/*", "loadtest/*"]}]')
"$bin/lodestone-admin" tls device --dir "$certs" --id edge-agent-1 >/dev/null
agent_env+=("LODESTONE_AGENT__MQTT__CA_PATH=$certs/ca.pem" "LODESTONE_AGENT__MQTT__CERT_PATH=$certs/device-edge-agent-1.pem"
  "LODESTONE_AGENT__MQTT__KEY_PATH=$certs/device-edge-agent-1.key")
# lodestone-sim: each simulated device gets its own certificate from the CA.
export LODESTONE_DEVICE_CA_DIR="$certs"
scheme=https
if [[ ${LODESTONE_PLAINTEXT:-0} == 1 ]]; then
  scheme=http
  unset LODESTONE_DEVICE_CA_DIR
  for prefix in INGEST QUERY BRIDGE AGENT; do
    declare -n service_env="${prefix,,}_env"
    service_env+=("LODESTONE_${prefix}__TLS__PLAINTEXT=true" "LODESTONE_${prefix}__AUTH__ANONYMOUS=true")
    unset -n service_env
  done
  bridge_env+=("LODESTONE_BRIDGE__MQTT__PLAINTEXT=true")
  agent_env+=("LODESTONE_AGENT__MQTT__PLAINTEXT=true")
  query_env+=('LODESTONE_QUERY__MEMORY__WORKERS=["http://127.0.0.1:9281"]')
fi

stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping…"
  # Stop in reverse start order, each before the next, so every stage drains into the next one
  # while that one still runs (the ingest workers persist and commit before tansu stops).
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill -TERM "${pids[$i]}" 2>/dev/null || continue
    for _ in $(seq 1 150); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[$i]}" 2>/dev/null && echo "process ${pids[$i]} did not stop within 15 s; killed" || true
  done
  echo "stopped; data is kept in $stack/ (delete it to start afresh)"
}
trap stop INT TERM EXIT

start() { # name, command…
  local name=$1; shift
  # In its own session, so that Ctrl-C reaches only this script, which stops them in order.
  setsid "$@" >"$stack/logs/$name.log" 2>&1 &
  pids+=($!)
}

wait_for() { # name, url or host:port
  local name=$1 target=$2
  for _ in $(seq 1 300); do
    if [[ $target == http* ]]; then curl -fsS --cacert "$certs/ca.pem" "$target" >/dev/null 2>&1 && return 0
    else (exec 3<>"/dev/tcp/${target%:*}/${target#*:}") 2>/dev/null && return 0; fi
    sleep 0.2
  done
  echo "$name did not come up; see $stack/logs/$name.log" >&2
  exit 1
}

start tansu "$tansu" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
  --storage-engine "sqlite://$stack/tansu.db"
wait_for tansu 127.0.0.1:9092
for topic in lodestone.ingest:4 lodestone.dead-letter:1; do
  "$tansu" topic create "${topic%:*}" --partitions "${topic#*:}" --broker tcp://127.0.0.1:9092 >/dev/null 2>&1 || true
done

start ingest-service env "${ingest_env[@]}" LODESTONE_INGEST__STORE__PATH="$stack/store" "$bin/ingest-service" --config configs/local-stack/ingest-service.toml
start query-service env "${query_env[@]}" LODESTONE_QUERY__STORE__PATH="$stack/store" LODESTONE_QUERY__MEMORY__TOKEN_PATH="$certs/service.token" \
  "$bin/query-service" --config configs/local-stack/query-service.toml
start broker-bridge env "${bridge_env[@]}" "$bin/broker-bridge" --config configs/broker-bridge.example.toml
wait_for query-service $scheme://127.0.0.1:8080/health
wait_for broker-bridge $scheme://127.0.0.1:9181/health
# Ready once the consumer group assigned it its partitions (a new group takes a few seconds).
wait_for ingest-service $scheme://127.0.0.1:9281/ready
simulated=true; [[ $fleet == 0 ]] && simulated=false
start edge-agent env "${agent_env[@]}" LODESTONE_AGENT__OUTBOX__PATH="$stack/edge-agent/outbox" LODESTONE_AGENT__SIMULATED__ENABLED=$simulated \
  "$bin/edge-agent" --config configs/local-stack/edge-agent.toml
wait_for edge-agent $scheme://127.0.0.1:8181/health
if [[ $fleet != 0 ]]; then
  # The fleet runs in rounds of about ten minutes, each starting at the current time, so that the
  # readings' times follow the clock (a round may not reach more than 15 minutes into the future).
  interval_ms=$(( 1000 * devices / rate ))
  per_round=$(( 600000 / interval_ms ))
  start fleet bash -c '
    trap "kill \$round 2>/dev/null; exit 0" INT TERM
    while true; do
      "$0" mqtt --host 127.0.0.1 --port 1883 --devices "$1" --readings-per-device "$2" --rate "$3" \
        --interval-ms "$4" --start-ns "$(date +%s%N)" --database fleet --table trucks --timeout-s 900 &
      round=$!
      wait $round
    done' "$bin/lodestone-sim" "$devices" "$per_round" "$rate" "$interval_ms"
fi

cat <<TXT

Lodestone is up (logs in $stack/logs/):
  query service  https://127.0.0.1:8080  (REST: POST /v1/query, GET /v1/databases; and Timestream's API for boto3, the AWS CLI, Grafana)
  edge agent     https://127.0.0.1:8181  (POST /v1/write — JSON or line protocol)
  MQTT broker    127.0.0.1:1883          (TLS with a device certificate; topics lodestone/v1/{database}/{table}/{device_id})
  Kafka (tansu)  127.0.0.1:9092          (topic lodestone.ingest)
  $devices simulated devices publish $rate readings/s into fleet.trucks; the edge agent's sensors into iot.readings.

Every HTTP service speaks HTTPS with a certificate from the local CA and wants a token:
  CA certificate  $certs/ca.pem
  admin token     $(cat "$certs/admin.token")   (also in $certs/admin.token)
  more tokens     $bin/lodestone-admin token create --file $certs/tokens.toml --scope fleet:read
  a device        $bin/lodestone-admin tls device --dir $certs --id truck-1   (then mosquitto_pub -i truck-1
                  --cafile $certs/ca.pem --cert $certs/device-truck-1.pem --key $certs/device-truck-1.key …)

Timestream's API (the admin token as AWS keys):
  export AWS_ACCESS_KEY_ID=$(cut -d. -f1 "$certs/admin.token") AWS_SECRET_ACCESS_KEY=$(cut -d. -f2 "$certs/admin.token") AWS_DEFAULT_REGION=us-east-1
  aws timestream-query query --endpoint-url https://127.0.0.1:8080 --ca-bundle $certs/ca.pem \
    --query-string 'SELECT device_id, count(*) FROM fleet.trucks GROUP BY device_id LIMIT 5'

Try (data appears within a few seconds):
  curl -s --cacert $certs/ca.pem https://127.0.0.1:8080/v1/query \\
    -H "authorization: Bearer \$(cat $certs/admin.token)" -H 'content-type: application/json' \\
    -d '{"sql": "SELECT device_id, count(*) AS readings, avg(measure_value::double) AS mean FROM fleet.trucks GROUP BY device_id ORDER BY device_id LIMIT 5"}'

Ctrl-C stops everything.
TXT
wait "${pids[0]}"
