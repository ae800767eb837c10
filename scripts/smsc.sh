#!/usr/bin/env bash
# Run the SMSC simulator (scripts/smsc/smsc.js: an SMPP 3.4 server on the npm package `smpp`,
# plus an HTTP control port) on 127.0.0.1:12775 (SMPP) and 127.0.0.1:12776 (control).
#
#   scripts/smsc.sh start    start (runs `npm ci` in scripts/smsc if node_modules is missing), wait
#                            until the control port answers, print 127.0.0.1:12775 last
#   scripts/smsc.sh stop     stop exactly the pid we saved (TERM, then KILL after 10 s)
#   scripts/smsc.sh status   exit 0 if running, 3 if not
#
# Environment:
#   FLOODCMD_SMSC_PORT     SMPP port (default 12775; control is port+1)
#   FLOODCMD_SMSC_RUN      run dir: pid, log, received-message log (default <repo>/.cache/smsc-run)
#   FLOODCMD_SMSC_TIMEOUT  seconds to wait for readiness (default 20)
#   FLOODCMD_SMSC_REUSE=1  `start` while running prints the address and exits 0 (default: refuse, exit 1)
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPTS_DIR/.." && pwd)
APP_DIR=$SCRIPTS_DIR/smsc
HOST=127.0.0.1
PORT=${FLOODCMD_SMSC_PORT:-12775}
CONTROL_PORT=$((PORT + 1))
RUN_DIR=${FLOODCMD_SMSC_RUN:-$REPO/.cache/smsc-run}
TIMEOUT=${FLOODCMD_SMSC_TIMEOUT:-20}
PID_FILE=$RUN_DIR/smsc.pid
LOG=$RUN_DIR/smsc.log
RECEIVED=$RUN_DIR/received.jsonl

log() { printf 'smsc.sh: %s\n' "$*" >&2; }
die() { printf 'smsc.sh: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# The control port answers /health (plain bash: curl may not be installed).
healthy() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/$HOST/$CONTROL_PORT" &&
    printf 'GET /health HTTP/1.0\r\nHost: %s\r\n\r\n' "$HOST" >&3 &&
    timeout 2 cat <&3) 2>/dev/null) || return 1
  [[ $reply == *'"ok":true'* ]]
}

# our pid if the saved pid is a live node running our smsc.js
our_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$APP_DIR/smsc.js" || return 1
  echo "$pid"
}

ensure_installed() {
  command -v node >/dev/null || die "node not found; install it: apt-get install -y nodejs npm"
  [[ -f $APP_DIR/node_modules/smpp/package.json ]] && return 0
  command -v npm >/dev/null || die "npm not found; install it: apt-get install -y npm"
  log "installing the simulator's packages (npm ci in $APP_DIR)"
  (cd "$APP_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed"
}

cmd_start() {
  local pid
  if pid=$(our_pid); then
    if [[ ${FLOODCMD_SMSC_REUSE:-0} == 1 ]]; then
      log "already running (pid $pid); reusing it"
      echo "$HOST:$PORT"
      return 0
    fi
    die "already running (pid $pid, $HOST:$PORT); run 'scripts/smsc.sh stop' first"
  fi
  port_open "$PORT" && die "port $HOST:$PORT is already in use by another process (not ours)"
  port_open "$CONTROL_PORT" && die "port $HOST:$CONTROL_PORT is already in use by another process (not ours)"
  ensure_installed
  mkdir -p "$RUN_DIR"
  # A fresh received-message log per start: crash tests read it from the start of their run.
  rm -f "$RECEIVED" "$PID_FILE"
  # setsid: not tied to the caller's terminal; the inner bash writes its own pid, then execs.
  FLOODCMD_SMSC_HOST=$HOST FLOODCMD_SMSC_PORT=$PORT FLOODCMD_SMSC_CONTROL_PORT=$CONTROL_PORT \
    FLOODCMD_SMSC_LOG=$RECEIVED \
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" node "$APP_DIR/smsc.js" \
    >>"$LOG" 2>&1 </dev/null &
  local i t0=$SECONDS
  for ((i = 0; i < 50; i++)); do [[ -s $PID_FILE ]] && break; sleep 0.1; done
  pid=$(<"$PID_FILE")
  log "started node $APP_DIR/smsc.js, pid $pid, log $LOG"
  while ! { port_open "$PORT" && healthy; }; do
    if ! our_pid >/dev/null; then
      tail -n 20 "$LOG" >&2 || true
      rm -f "$PID_FILE"
      die "the simulator exited during startup (log above)"
    fi
    if ((SECONDS - t0 >= TIMEOUT)); then
      tail -n 20 "$LOG" >&2 || true
      die "not ready after $TIMEOUT s; run 'scripts/smsc.sh stop'"
    fi
    sleep 0.1
  done
  log "ready ($((SECONDS - t0)) s): SMPP $HOST:$PORT, control http://$HOST:$CONTROL_PORT, received-message log $RECEIVED"
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
    echo "running, pid $pid, SMPP $HOST:$PORT, control $HOST:$CONTROL_PORT"
  else
    echo "stopped"
    return 3
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
