#!/usr/bin/env bash
# The test command (README): starts the real services the tests need (Apache Kafka from
# Maven jars, Mosquitto, victoria-metrics), runs the whole test suite against them, then checks a three-broker
# cluster and loses one of its brokers mid-storm (tests/fault_broker_loss.rs), and stops only what it started.
#   scripts/test.sh               # everything
#   scripts/test.sh -p floodcmd-bus   # extra args go to the first `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

started_kafka=0
started_mqtt=0
started_victoria=0
started_smsc=0
cleanup() {
  if [[ $started_kafka == 1 ]]; then scripts/kafka.sh stop >/dev/null 2>&1 || true; fi
  if [[ $started_mqtt == 1 ]]; then scripts/mosquitto.sh stop >/dev/null 2>&1 || true; fi
  if [[ $started_victoria == 1 ]]; then scripts/victoria.sh stop >/dev/null 2>&1 || true; fi
  if [[ $started_smsc == 1 ]]; then scripts/smsc.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if scripts/kafka.sh status >/dev/null 2>&1; then
  echo "test.sh: reusing the running Kafka" >&2
  FLOODCMD_KAFKA=$(scripts/kafka.sh bootstrap | tail -n1)
else
  FLOODCMD_KAFKA=$(scripts/kafka.sh start 1 | tail -n1)
  started_kafka=1
fi
if scripts/mosquitto.sh status >/dev/null 2>&1; then
  FLOODCMD_MQTT=127.0.0.1:${FLOODCMD_MQTT_PORT:-18830}
else
  FLOODCMD_MQTT=$(scripts/mosquitto.sh start | tail -n1)
  started_mqtt=1
fi
# The time-series server for the influx sink (victoria-metrics speaks the InfluxDB v2 write API).
if scripts/victoria.sh status >/dev/null 2>&1; then
  FLOODCMD_INFLUX=http://127.0.0.1:${FLOODCMD_VICTORIA_PORT:-18428}
else
  FLOODCMD_INFLUX=$(scripts/victoria.sh start | tail -n1)
  started_victoria=1
fi
export FLOODCMD_INFLUX
echo "test.sh: victoria-metrics at $FLOODCMD_INFLUX" >&2
# The SMSC simulator (SMPP 3.4, node `smpp`); its control port is FLOODCMD_SMSC's port + 1.
if scripts/smsc.sh status >/dev/null 2>&1; then
  FLOODCMD_SMSC=127.0.0.1:${FLOODCMD_SMSC_PORT:-12775}
else
  FLOODCMD_SMSC=$(scripts/smsc.sh start | tail -n1)
  started_smsc=1
fi
export FLOODCMD_KAFKA FLOODCMD_MQTT FLOODCMD_SMSC
echo "test.sh: SMSC simulator at $FLOODCMD_SMSC" >&2
echo "test.sh: Kafka at $FLOODCMD_KAFKA, MQTT at $FLOODCMD_MQTT" >&2

# `three_broker_cluster` names the tests that need the three-broker cluster (kafka_cluster.rs,
# fault_broker_loss.rs): they run in the last phase.
cargo test --workspace "$@" -- --skip three_broker_cluster

# The command wall in a real browser: playwright-core drives Debian's Chromium against
# `floodcmd demo`, with live camera test streams from scripts/cameras.sh (the test starts and
# stops its own). Screenshots go to artifacts/wall/.
cargo build --bin floodcmd
if [[ ! -d dashboard-ws/web/node_modules/playwright-core ]]; then
  (cd dashboard-ws/web && npm ci --no-audit --no-fund --loglevel=error)
fi
FLOODCMD_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/floodcmd node --test dashboard-ws/web/tests/

# A three-broker cluster needs the ports of the single one: only when this script owns it.
if [[ $started_kafka == 1 ]]; then
  scripts/kafka.sh stop >/dev/null
  started_kafka=0
  FLOODCMD_KAFKA_CLUSTER=$(scripts/kafka.sh start 3 | tail -n1)
  started_kafka=1
  export FLOODCMD_KAFKA_CLUSTER
  cargo test --workspace --test kafka_cluster --test fault_broker_loss -- three_broker_cluster
  scripts/kafka.sh stop >/dev/null
  started_kafka=0
  # Only this checkout's brokers (another checkout may run its own cluster beside this one).
  if pgrep -f "kafka\.Kafka ${FLOODCMD_KAFKA_RUN:-$PWD/.cache/kafka-run}/node-" >/dev/null; then
    echo "test.sh: a broker survived 'kafka.sh stop'" >&2
    exit 1
  fi
  echo "test.sh: three-broker cluster started, served and stopped cleanly" >&2
else
  echo "test.sh: skipped the three-broker check (a Kafka this script did not start is running)" >&2
fi
