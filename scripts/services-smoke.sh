#!/usr/bin/env bash
# End-to-end check of scripts/kafka.sh and scripts/mosquitto.sh against the real services:
#   1 node: create a topic, produce/consume with kcat, consumer group; stop
#   3 nodes: RF 3 topic with 3 ISR, kill node 2, acks=all produce still works (min ISR 2),
#            start-node 2, ISR back to 3; stop; no broker of ours left
#   mosquitto: start, publish/subscribe (if mosquitto-clients is installed), stop
# Needs kcat (apt-get install -y kcat; installed here if missing and root).
# Leaves nothing running; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
K=scripts/kafka.sh
M=scripts/mosquitto.sh

step() { printf '\n=== %s\n' "$*" >&2; }
fail() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'smoke: ok: %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  $K stop >/dev/null 2>&1 || true
  $M stop >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT

if ! command -v kcat >/dev/null; then
  [[ $(id -u) == 0 ]] || fail "kcat missing (apt-get install -y kcat)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q kcat >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q kcat >&2; }
fi

# librdkafka logs connection refusals to stderr while a node is down; keep them out of the way
KCAT_LOG=$(mktemp)

step "1 node"
t0=$SECONDS
BS=$($K start 1 | tail -n 1)
[[ $BS == 127.0.0.1:19092 ]] || fail "bootstrap '$BS'"
ok "1-node start in $((SECONDS - t0)) s: $BS"
$K topics --create --topic smoke1 --partitions 3 --replication-factor 1 >&2
$K topics | grep -qx smoke1 || fail "topic smoke1 not listed"
printf 'a\nb\n' | kcat -P -b "$BS" -t smoke1 -p 0 -X acks=all 2>>"$KCAT_LOG"
got=$(timeout 20 kcat -C -b "$BS" -t smoke1 -p 0 -o beginning -e -q -f '%s\n' 2>>"$KCAT_LOG")
[[ $got == $'a\nb' ]] || fail "consumed '$got'"
ok "produce/consume with kcat"
got=$(timeout 30 kcat -b "$BS" -G smoke-group -X auto.offset.reset=earliest -e -q -f '%s\n' smoke1 2>>"$KCAT_LOG" | sort | tr '\n' ' ')
[[ $got == "a b " ]] || fail "group consumer got '$got'"
ok "consumer group"
$K stop

step "3 nodes"
t0=$SECONDS
BS=$($K start 3 | tail -n 1)
[[ $BS == 127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092 ]] || fail "bootstrap '$BS'"
ok "3-node start in $((SECONDS - t0)) s: $BS"
$K topics --create --topic smoke3 --partitions 3 --replication-factor 3 >&2
desc=$($K topics --describe --topic smoke3)
echo "$desc" >&2
[[ $(grep -c $'Isr: [1-3],[1-3],[1-3]\t' <<<"$desc") == 3 ]] || fail "not 3 ISR on 3 partitions"
ok "RF 3 topic with 3 in-sync replicas per partition"

$K kill 2
for p in 0 1 2; do
  echo "p$p-node2-down" | kcat -P -b "$BS" -t smoke3 -p "$p" -X acks=all -X message.timeout.ms=30000 2>>"$KCAT_LOG" \
    || fail "acks=all produce to partition $p with node 2 down"
done
ok "acks=all produce with node 2 down (min.insync.replicas=2)"
t0=$SECONDS
$K start-node 2 >/dev/null
ok "start-node 2 in $((SECONDS - t0)) s"
for ((i = 0; i < 30; i++)); do
  desc=$($K topics --describe --topic smoke3)
  [[ $(grep -c $'Isr: [1-3],[1-3],[1-3]\t' <<<"$desc") == 3 ]] && break
  sleep 1
done
echo "$desc" >&2
[[ $(grep -c $'Isr: [1-3],[1-3],[1-3]\t' <<<"$desc") == 3 ]] || fail "ISR not back to 3 after start-node 2"
ok "node 2 back in every ISR"
got=$(timeout 20 kcat -C -b "$BS" -t smoke3 -o beginning -e -q -f '%s\n' 2>>"$KCAT_LOG" | sort | tr '\n' ' ')
[[ $got == "p0-node2-down p1-node2-down p2-node2-down " ]] || fail "read back '$got'"
ok "messages read back"
RUN=${FLOODCMD_KAFKA_RUN:-.cache/kafka-run}
$K stop
if ps -eo args | grep -F "kafka.Kafka $(realpath -m "$RUN")" | grep -v grep >&2; then
  fail "a broker of ours is still running"
fi
ok "no broker left"

step "mosquitto"
ADDR=$($M start | tail -n 1)
[[ $ADDR == 127.0.0.1:18830 ]] || fail "mosquitto address '$ADDR'"
if command -v mosquitto_sub >/dev/null && command -v mosquitto_pub >/dev/null; then
  out=$(mktemp)
  timeout 10 mosquitto_sub -h 127.0.0.1 -p 18830 -t smoke/t -C 1 >"$out" &
  sub=$!
  sleep 0.5
  mosquitto_pub -h 127.0.0.1 -p 18830 -t smoke/t -m hello -q 1
  wait "$sub" || fail "mosquitto_sub got nothing"
  [[ $(cat "$out") == hello ]] || fail "mqtt got '$(cat "$out")'"
  rm -f "$out"
  ok "mqtt publish/subscribe"
else
  ok "mosquitto port open (install mosquitto-clients for a pub/sub check)"
fi
$M stop
rm -f "$KCAT_LOG"
echo "smoke: all ok"
