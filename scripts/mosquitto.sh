#!/usr/bin/env bash
# Run our own MQTT broker (Debian's mosquitto) on 127.0.0.1:18830 with its own config, apart
# from any system mosquitto service (which would use 1883; we never touch it).
#
#   scripts/mosquitto.sh start    start (installs mosquitto with apt-get if missing), wait until
#                                 the port accepts connections, print 127.0.0.1:18830 last
#   scripts/mosquitto.sh stop     stop exactly the pid we saved (TERM, then KILL after 10 s)
#   scripts/mosquitto.sh status   exit 0 if running, 3 if not
#
# Environment:
#   FLOODCMD_MQTT_PORT     port (default 18830)
#   FLOODCMD_MQTT_RUN      run dir: config, pid, log (default <repo>/.cache/mosquitto-run)
#   FLOODCMD_MQTT_TIMEOUT  seconds to wait for the port (default 20)
#   FLOODCMD_MQTT_REUSE=1  `start` while running prints the address and exits 0 (default: refuse, exit 1)
#   FLOODCMD_MQTT_PERSIST  a directory: keep sessions, subscriptions and queued QoS 1 messages
#                          there (`persistence true`), saved at stop and loaded at start, so a
#                          restarted broker still has them (default: no persistence). It is
#                          kept across starts, unlike the run dir.
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPTS_DIR/.." && pwd)
HOST=127.0.0.1
PORT=${FLOODCMD_MQTT_PORT:-18830}
RUN_DIR=${FLOODCMD_MQTT_RUN:-$REPO/.cache/mosquitto-run}
TIMEOUT=${FLOODCMD_MQTT_TIMEOUT:-20}
PERSIST=${FLOODCMD_MQTT_PERSIST:-}
PID_FILE=$RUN_DIR/mosquitto.pid
CONF=$RUN_DIR/mosquitto.conf
LOG=$RUN_DIR/mosquitto.log

log() { printf 'mosquitto.sh: %s\n' "$*" >&2; }
die() { printf 'mosquitto.sh: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# our pid if the saved pid is a live mosquitto started with our config
our_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-c $CONF" || return 1
  echo "$pid"
}

find_mosquitto() {
  local m
  m=$(command -v mosquitto || true)
  [[ -z $m && -x /usr/sbin/mosquitto ]] && m=/usr/sbin/mosquitto
  echo "$m"
}

ensure_installed() {
  [[ -n $(find_mosquitto) ]] && return 0
  command -v apt-get >/dev/null || die "mosquitto not found and no apt-get"
  [[ $(id -u) == 0 ]] || die "mosquitto not found; install it: sudo apt-get install -y mosquitto"
  log "installing mosquitto with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q mosquitto >&2; then
    apt-get update -q >&2
    apt-get install -y -q mosquitto >&2
  fi
  [[ -n $(find_mosquitto) ]] || die "mosquitto still not found after apt-get install"
}

cmd_start() {
  local pid
  if pid=$(our_pid); then
    if [[ ${FLOODCMD_MQTT_REUSE:-0} == 1 ]]; then
      log "already running (pid $pid); reusing it"
      echo "$HOST:$PORT"
      return 0
    fi
    die "already running (pid $pid, $HOST:$PORT); run 'scripts/mosquitto.sh stop' first"
  fi
  port_open && die "port $HOST:$PORT is already in use by another process (not ours)"
  ensure_installed
  local bin
  bin=$(find_mosquitto)
  local d
  d=$(realpath -m "$RUN_DIR")
  case $d in /|"$HOME"|"$REPO"|"$REPO/.cache"|/tmp|/root|/work) die "refusing to use '$d' as run dir" ;; esac
  [[ -d $d && -n $(ls -A "$d") && ! -f $d/mosquitto.conf ]] && die "run dir $d is not empty and has no mosquitto.conf: not wiping it"
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR"
  local persistence="persistence false"
  if [[ -n $PERSIST ]]; then
    mkdir -p "$PERSIST"
    # Started as root, mosquitto drops to its own user, which must be able to write there.
    if [[ $(id -u) == 0 ]] && id mosquitto >/dev/null 2>&1; then chown mosquitto: "$PERSIST"; fi
    persistence="persistence true
persistence_location $(realpath "$PERSIST")"
  fi
  cat >"$CONF" <<EOF
# written by scripts/mosquitto.sh
per_listener_settings false
listener $PORT $HOST
allow_anonymous true
$persistence
# logs go to stderr, which the script sends to $LOG
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
EOF
  # setsid: not tied to the caller's terminal; the inner bash writes its own pid, then execs.
  nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "$bin" -c "$CONF" \
    >>"$LOG" 2>&1 </dev/null &
  local i t0=$SECONDS
  for ((i = 0; i < 50; i++)); do [[ -s $PID_FILE ]] && break; sleep 0.1; done
  pid=$(<"$PID_FILE")
  log "started $bin, pid $pid, config $CONF"
  while ! port_open; do
    if ! our_pid >/dev/null; then
      tail -n 20 "$LOG" >&2 || true
      rm -f "$PID_FILE"
      die "mosquitto exited during startup (log above)"
    fi
    if ((SECONDS - t0 >= TIMEOUT)); then
      tail -n 20 "$LOG" >&2 || true
      die "port $HOST:$PORT not accepting connections after $TIMEOUT s; run 'scripts/mosquitto.sh stop'"
    fi
    sleep 0.1
  done
  log "ready ($((SECONDS - t0)) s)"
  echo "$HOST:$PORT"
}

cmd_stop() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$PID_FILE"
    log "nothing running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after 10 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  log "stopped (pid $pid)"
}

cmd_status() {
  local pid
  if pid=$(our_pid); then
    echo "running, pid $pid, $HOST:$PORT"
  else
    echo "stopped"
    return 3
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
