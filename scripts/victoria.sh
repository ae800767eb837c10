#!/usr/bin/env bash
# Run our own time-series server (Debian's victoria-metrics, which speaks the InfluxDB v2 write
# API at /api/v2/write) on 127.0.0.1:18428, with its storage under .cache/victoria-run.
#
#   scripts/victoria.sh start     start (installs victoria-metrics with apt-get if missing), wait
#                                 until /health answers, print http://127.0.0.1:18428 last.
#                                 The storage is kept: a start after a stop has the data back
#   scripts/victoria.sh stop      stop exactly the pid we saved: TERM (it flushes what it holds
#                                 in memory), then KILL after 20 s
#   scripts/victoria.sh kill      KILL our pid at once (a crash: it loses what it had not
#                                 flushed to disk yet, up to about a second of acknowledged data)
#   scripts/victoria.sh restart   stop, then start on the same storage
#   scripts/victoria.sh status    exit 0 if running, 3 if not
#   scripts/victoria.sh wipe      delete the storage (refused while running)
#
# Environment:
#   FLOODCMD_VICTORIA_PORT     port (default 18428)
#   FLOODCMD_VICTORIA_RUN      run dir: data/, pid, log (default <repo>/.cache/victoria-run)
#   FLOODCMD_VICTORIA_TIMEOUT  seconds to wait for /health (default 30)
#   FLOODCMD_VICTORIA_REUSE=1  `start` while running prints the URL and exits 0 (default: refuse, exit 1)
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPTS_DIR/.." && pwd)
HOST=127.0.0.1
PORT=${FLOODCMD_VICTORIA_PORT:-18428}
RUN_DIR=${FLOODCMD_VICTORIA_RUN:-$REPO/.cache/victoria-run}
TIMEOUT=${FLOODCMD_VICTORIA_TIMEOUT:-30}
PID_FILE=$RUN_DIR/victoria.pid
DATA=$RUN_DIR/data
LOG=$RUN_DIR/victoria.log
BIN=/usr/bin/victoria-metrics
URL=http://$HOST:$PORT

log() { printf 'victoria.sh: %s\n' "$*" >&2; }
die() { printf 'victoria.sh: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# GET /health without curl: the script needs nothing but bash.
healthy() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/$HOST/$PORT" && printf 'GET /health HTTP/1.0\r\nHost: %s\r\n\r\n' "$HOST" >&3 && timeout 2 cat <&3) 2>/dev/null) || return 1
  [[ $reply == *" 200 "* && $reply == *OK* ]]
}

# our pid if the saved pid is a live victoria-metrics started on our storage
our_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  # A killed process can linger as a zombie until its parent reaps it: that is not running.
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-storageDataPath=$DATA" || return 1
  echo "$pid"
}

ensure_installed() {
  [[ -x $BIN ]] && return 0
  command -v apt-get >/dev/null || die "$BIN not found and no apt-get"
  [[ $(id -u) == 0 ]] || die "$BIN not found; install it: sudo apt-get install -y victoria-metrics"
  log "installing victoria-metrics with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q victoria-metrics >&2; then
    apt-get update -q >&2
    apt-get install -y -q victoria-metrics >&2
  fi
  [[ -x $BIN ]] || die "$BIN still not found after apt-get install"
}

safe_run_dir() {
  local d
  d=$(realpath -m "$RUN_DIR")
  case $d in /|"$HOME"|"$REPO"|"$REPO/.cache"|/tmp|/root|/work) die "refusing to use '$d' as run dir" ;; esac
  [[ -d $d && -n $(ls -A "$d") && ! -d $d/data && ! -f $d/victoria.log ]] && die "run dir $d is not empty and is not ours: not touching it"
  return 0
}

cmd_start() {
  local pid
  if pid=$(our_pid); then
    if [[ ${FLOODCMD_VICTORIA_REUSE:-0} == 1 ]]; then
      log "already running (pid $pid); reusing it"
      echo "$URL"
      return 0
    fi
    die "already running (pid $pid, $URL); run 'scripts/victoria.sh stop' first"
  fi
  port_open && die "port $HOST:$PORT is already in use by another process (not ours)"
  ensure_installed
  safe_run_dir
  mkdir -p "$DATA"
  rm -f "$PID_FILE"
  # -retentionPeriod: the tests and benches write recent and past data; 100 years keeps all.
  # -dedup.minScrapeInterval=1ms: one sample per series and millisecond, as InfluxDB keeps one
  #   point per series and timestamp, so a batch written twice after an outage counts once.
  # -memory.allowedPercent: a test instance shares the machine.
  nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "$BIN" \
    -httpListenAddr="$HOST:$PORT" \
    -storageDataPath="$DATA" \
    -retentionPeriod=100y \
    -dedup.minScrapeInterval=1ms \
    -search.disableCache \
    -memory.allowedPercent=20 \
    >>"$LOG" 2>&1 </dev/null &
  local i t0=$SECONDS
  for ((i = 0; i < 50; i++)); do [[ -s $PID_FILE ]] && break; sleep 0.1; done
  pid=$(<"$PID_FILE")
  log "started $BIN, pid $pid, storage $DATA"
  while ! healthy; do
    if ! our_pid >/dev/null; then
      tail -n 20 "$LOG" >&2 || true
      rm -f "$PID_FILE"
      die "victoria-metrics exited during startup (log above)"
    fi
    if ((SECONDS - t0 >= TIMEOUT)); then
      tail -n 20 "$LOG" >&2 || true
      die "$URL/health not answering after $TIMEOUT s; run 'scripts/victoria.sh stop'"
    fi
    sleep 0.1
  done
  log "ready ($((SECONDS - t0)) s)"
  echo "$URL"
}

stop_pid() {
  local pid=$1 sig=$2 wait_s=$3
  kill "-$sig" "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < wait_s * 10; i++)); do our_pid >/dev/null || break; sleep 0.1; done
  if our_pid >/dev/null; then
    log "still running after $wait_s s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do our_pid >/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PID_FILE"
}

cmd_stop() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$PID_FILE"
    log "nothing running"
    return 0
  fi
  stop_pid "$pid" TERM 20
  log "stopped (pid $pid)"
}

cmd_kill() {
  local pid
  pid=$(our_pid) || die "nothing running"
  stop_pid "$pid" KILL 5
  log "killed (pid $pid)"
}

cmd_status() {
  local pid
  if pid=$(our_pid); then
    echo "running, pid $pid, $URL"
  else
    echo "stopped"
    return 3
  fi
}

cmd_wipe() {
  our_pid >/dev/null && die "running: stop it first"
  safe_run_dir
  rm -rf "$DATA"
  log "storage wiped ($DATA)"
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  wipe) cmd_wipe ;;
  *) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
