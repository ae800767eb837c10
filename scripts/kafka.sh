#!/usr/bin/env bash
# Run a local Apache Kafka 4.x cluster (KRaft, combined broker+controller nodes) from jars
# fetched from Maven Central. No Docker, no tarball. See scripts/README.md.
#
#   scripts/kafka.sh start [1|3]     fresh cluster (wipes and reformats); prints the bootstrap
#                                    list as the last line of stdout once every broker is up
#   scripts/kafka.sh stop            stops exactly the brokers it started (saved pids)
#   scripts/kafka.sh status          per-node state; exit 0 if all nodes run, 3 otherwise
#   scripts/kafka.sh bootstrap       prints the bootstrap list of the current cluster
#   scripts/kafka.sh topics [ARGS]   TopicCommand against the cluster (default: --list)
#   scripts/kafka.sh kill NODE       kill -9 one node (failure tests)
#   scripts/kafka.sh start-node NODE restart one node of the existing cluster, no reformat
#   scripts/kafka.sh logs [NODE]     tail the log(s) of the node(s)
#   scripts/kafka.sh fetch           only fetch the jars into the cache
#   scripts/kafka.sh cli CLASS ARGS  run a Kafka tool class (or alias) with the cached jars
#
# Environment:
#   KAFKA_VERSION              Kafka version from Maven Central (default 4.1.2)
#   FLOODCMD_KAFKA_HOME        jar cache (default <repo>/.cache/kafka; jars in libs/)
#   FLOODCMD_KAFKA_RUN         run dir: configs, data, logs, pids (default <repo>/.cache/kafka-run)
#   FLOODCMD_KAFKA_TIMEOUT     seconds to wait for readiness (default 90)
#   FLOODCMD_KAFKA_REUSE=1     `start` on a running cluster with the same node count prints
#                              its bootstrap and exits 0 instead of refusing (exit 1)
#   FLOODCMD_KAFKA_AUTO_CREATE auto.create.topics.enable (default false)
#   FLOODCMD_KAFKA_EXTRA_PROPS extra broker properties, one key=value per line
#   FLOODCMD_KAFKA_LOG_LEVEL   broker log level (default WARN)
#   FLOODCMD_KAFKA_HEAP        broker heap options (default "-Xms256m -Xmx512m")
#   FLOODCMD_KAFKA_PORT_OFFSET added to every port (default 0: 19092/19093, 29092/...)
set -euo pipefail

SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPTS_DIR/.." && pwd)
KAFKA_VERSION=${KAFKA_VERSION:-4.1.2}
KAFKA_HOME_DIR=${FLOODCMD_KAFKA_HOME:-$REPO/.cache/kafka}
LIBS=$KAFKA_HOME_DIR/libs
RUN_DIR=${FLOODCMD_KAFKA_RUN:-$REPO/.cache/kafka-run}
TIMEOUT=${FLOODCMD_KAFKA_TIMEOUT:-90}
LOG4J_SERVER=$SCRIPTS_DIR/kafka/log4j2.properties
LOG4J_TOOLS=$SCRIPTS_DIR/kafka/tools-log4j2.properties
HOST=127.0.0.1

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

# FLOODCMD_KAFKA_PORT_OFFSET shifts every port, so two checkouts can run clusters side by side.
PORT_OFFSET=${FLOODCMD_KAFKA_PORT_OFFSET:-0}
plain_port() { echo $(( $1 * 10000 + 9092 + PORT_OFFSET )); }
ctrl_port() { echo $(( $1 * 10000 + 9093 + PORT_OFFSET )); }
node_dir() { echo "$RUN_DIR/node-$1"; }
pid_file() { echo "$RUN_DIR/node-$1/kafka.pid"; }

# ---------------------------------------------------------------- jars

have_libs() {
  [[ -f $LIBS/.kafka-version && $(cat "$LIBS/.kafka-version") == "$KAFKA_VERSION" ]] \
    && compgen -G "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null
}

fetch_libs() {
  have_libs && return 0
  command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
  command -v java >/dev/null || die "java not found (Kafka 4 needs Java 17+: apt-get install -y openjdk-17-jre-headless)"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  mkdir -p "$KAFKA_HOME_DIR"
  local tmp="$KAFKA_HOME_DIR/libs.tmp.$$" t0=$SECONDS
  rm -rf "$tmp"
  # output to a log (Debian's mvn 3.8 prints stray ANSI resets even with -q); shown on failure
  if ! mvn -B -q -f "$SCRIPTS_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >"$KAFKA_HOME_DIR/mvn.log" 2>&1; then
    sed 's/\x1b\[[0-9;]*m//g' "$KAFKA_HOME_DIR/mvn.log" | tail -n 40 >&2
    rm -rf "$tmp"
    die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (log: $KAFKA_HOME_DIR/mvn.log)"
  fi
  echo "$KAFKA_VERSION" >"$tmp/.kafka-version"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  log "fetched $(ls "$LIBS" | wc -l) jars in $((SECONDS - t0)) s"
}

# Run a Kafka tool class with the cached jars (small heap, fast startup, logs to stderr).
run_tool() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Djava.net.preferIPv4Stack=true \
    -Dlog4j2.configurationFile="file:$LOG4J_TOOLS" \
    -cp "$LIBS/*" "$@"
}

resolve_class() {
  case $1 in
    topics) echo org.apache.kafka.tools.TopicCommand ;;
    quorum|metadata-quorum) echo org.apache.kafka.tools.MetadataQuorumCommand ;;
    api-versions|broker-api-versions) echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    storage) echo kafka.tools.StorageTool ;;
    configs) echo kafka.admin.ConfigCommand ;;
    console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
    console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    groups) echo org.apache.kafka.tools.GroupsCommand ;;
    features) echo org.apache.kafka.tools.FeatureCommand ;;
    leader-election) echo org.apache.kafka.tools.LeaderElectionCommand ;;
    log-dirs) echo org.apache.kafka.tools.LogDirsCommand ;;
    delete-records) echo org.apache.kafka.tools.DeleteRecordsCommand ;;
    dump-log) echo kafka.tools.DumpLogSegments ;;
    *) echo "$1" ;;
  esac
}

# ---------------------------------------------------------------- process state

# pid of node N if its saved pid is a live kafka.Kafka process, else nothing (exit 1).
node_pid() {
  local f pid
  f=$(pid_file "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  # guard against pid reuse: it must be our broker, started with our run dir
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $(node_dir "$1")/server.properties" || return 1
  echo "$pid"
}

cluster_nodes() {
  [[ -f $RUN_DIR/cluster.env ]] || return 1
  (source "$RUN_DIR/cluster.env" && echo "$NODES")
}

bootstrap_for() {
  local n=$1 i out=""
  for ((i = 1; i <= n; i++)); do out+="${out:+,}$HOST:$(plain_port "$i")"; done
  echo "$out"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

running_nodes() {
  local n i out=""
  n=$(cluster_nodes) || return 0
  for ((i = 1; i <= n; i++)); do node_pid "$i" >/dev/null && out+="$i "; done
  echo "$out"
}

# ---------------------------------------------------------------- config

write_props() { # node nodes
  local id=$1 nodes=$2 rf minisr voters="" i
  if ((nodes >= 3)); then rf=3; minisr=2; else rf=1; minisr=1; fi
  for ((i = 1; i <= nodes; i++)); do voters+="${voters:+,}$i@$HOST:$(ctrl_port "$i")"; done
  mkdir -p "$(node_dir "$id")/data"
  {
    echo "# written by scripts/kafka.sh; node $id of $nodes"
    echo "process.roles=broker,controller"
    echo "node.id=$id"
    echo "controller.quorum.voters=$voters"
    echo "listeners=PLAINTEXT://$HOST:$(plain_port "$id"),CONTROLLER://$HOST:$(ctrl_port "$id")"
    echo "advertised.listeners=PLAINTEXT://$HOST:$(plain_port "$id")"
    echo "controller.listener.names=CONTROLLER"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    echo "log.dirs=$(node_dir "$id")/data"
    echo "num.partitions=1"
    echo "default.replication.factor=$rf"
    echo "min.insync.replicas=$minisr"
    echo "offsets.topic.replication.factor=$rf"
    echo "transaction.state.log.replication.factor=$rf"
    echo "transaction.state.log.min.isr=$minisr"
    echo "share.coordinator.state.topic.replication.factor=$rf"
    echo "share.coordinator.state.topic.min.isr=$minisr"
    echo "group.initial.rebalance.delay.ms=0"
    echo "auto.create.topics.enable=${FLOODCMD_KAFKA_AUTO_CREATE:-false}"
    if [[ -n ${FLOODCMD_KAFKA_EXTRA_PROPS:-} ]]; then
      echo "# FLOODCMD_KAFKA_EXTRA_PROPS"
      printf '%s\n' "$FLOODCMD_KAFKA_EXTRA_PROPS"
    fi
  } >"$(node_dir "$id")/server.properties"
}

# ---------------------------------------------------------------- start / wait

launch_node() { # node
  local id=$1 dir
  dir=$(node_dir "$id")
  local heap=${FLOODCMD_KAFKA_HEAP:--Xms256m -Xmx512m}
  # setsid: the broker does not belong to the caller's terminal or process group;
  # the inner bash writes its own pid and then execs java, so the pid file is exact.
  # shellcheck disable=SC2086
  nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$(pid_file "$id")" \
    java $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
    -Dlog4j2.configurationFile="file:$LOG4J_SERVER" \
    -Dkafka.logs.dir="$dir" -Dkafka.log.level="${FLOODCMD_KAFKA_LOG_LEVEL:-WARN}" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/stdout.log" 2>&1 </dev/null 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do [[ -s $(pid_file "$id") ]] && break; sleep 0.1; done
  [[ -s $(pid_file "$id") ]] || die "node $id: no pid file after launch"
  LAUNCHED+=("$id")
  log "node $id started, pid $(<"$(pid_file "$id")"), PLAINTEXT $HOST:$(plain_port "$id"), CONTROLLER $HOST:$(ctrl_port "$id")"
}

show_logs() { # nodes...
  local i d
  for i in "$@"; do
    d=$(node_dir "$i")
    echo "----- node $i: $d/server.log (last 30 lines)" >&2
    tail -n 30 "$d/server.log" >&2 2>/dev/null || true
    echo "----- node $i: $d/stdout.log (last 15 lines)" >&2
    tail -n 15 "$d/stdout.log" >&2 2>/dev/null || true
  done
}

# Unfenced broker ids the cluster reports (a metadata request lists only unfenced brokers).
registered_ids() { # bootstrap
  run_tool org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$1" 2>/dev/null \
    | sed -n 's/^[0-9.]*:[0-9]* (id: \([0-9]*\) .*/\1/p' | sort -n | tr '\n' ' '
}

# Wait until the given nodes listen and are registered (unfenced) brokers.
wait_ready() { # nodes-to-wait-for...
  local want=("$@") deadline=$((SECONDS + TIMEOUT)) i ids missing bs
  bs=$(bootstrap_for "$(cluster_nodes)")
  while :; do
    for i in "${want[@]}"; do
      if ! node_pid "$i" >/dev/null; then
        show_logs "$i"
        die "node $i exited during startup (logs above)"
      fi
    done
    missing=""
    for i in "${want[@]}"; do port_open "$(plain_port "$i")" || missing+="$i "; done
    if [[ -z $missing ]]; then
      ids=" $(registered_ids "$bs")"
      missing=""
      for i in "${want[@]}"; do [[ $ids == *" $i "* ]] || missing+="$i "; done
      [[ -z $missing ]] && { log "ready after $((SECONDS - START_T0)) s: brokers${ids% }"; return 0; }
      log "waiting: brokers registered:${ids% } (want ${want[*]}) ($((SECONDS - START_T0)) s)"
    else
      log "waiting: not listening yet: node(s) ${missing% } ($((SECONDS - START_T0)) s)"
    fi
    if ((SECONDS >= deadline)); then
      show_logs "${want[@]}"
      die "cluster not ready after ${TIMEOUT} s (logs above)"
    fi
    sleep 1
  done
}

check_ports_free() { # nodes
  local i p
  for ((i = 1; i <= $1; i++)); do
    for p in "$(plain_port "$i")" "$(ctrl_port "$i")"; do
      port_open "$p" && die "port $HOST:$p is already in use by another process (not one of ours)"
    done
  done
  return 0
}

# Refuse to wipe a directory that is obviously not our run dir (FLOODCMD_KAFKA_RUN typo).
safe_to_wipe() {
  local d
  d=$(realpath -m "$1")
  case $d in /|"$HOME"|"$REPO"|"$REPO/.cache"|/tmp|/root|/work) die "refusing to use '$d' as run dir" ;; esac
  if [[ -d $d && -n $(ls -A "$d") && ! -f $d/cluster.env ]]; then
    die "run dir $d exists, is not empty and has no cluster.env: not wiping it"
  fi
}

cmd_start() {
  local nodes=${1:-1} i running
  [[ $nodes == 1 || $nodes == 3 ]] || die "NODES must be 1 or 3 (got '$nodes')"
  START_T0=$SECONDS
  running=$(running_nodes)
  if [[ -n $running ]]; then
    local cur
    cur=$(cluster_nodes)
    if [[ ${FLOODCMD_KAFKA_REUSE:-0} == 1 && $cur == "$nodes" && ${running% } == "$(seq -s ' ' 1 "$cur")" ]]; then
      log "already running ($cur node(s)); reusing it (FLOODCMD_KAFKA_REUSE=1)"
      bootstrap_for "$cur"
      return 0
    fi
    die "a cluster is already running (node(s) ${running% } of $cur, bootstrap $(bootstrap_for "$cur")); run 'scripts/kafka.sh stop' first"
  fi
  command -v java >/dev/null || die "java not found (Kafka 4 needs Java 17+)"
  check_ports_free "$nodes"
  fetch_libs

  # fresh run dir every start: tests start from an empty cluster
  safe_to_wipe "$RUN_DIR"
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR"
  local cid
  cid=$(run_tool kafka.tools.StorageTool random-uuid | tail -n 1)
  [[ $cid =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid gave '$cid'"
  {
    echo "NODES=$nodes"
    echo "CLUSTER_ID=$cid"
    echo "KAFKA_VERSION=$KAFKA_VERSION"
    echo "BOOTSTRAP=$(bootstrap_for "$nodes")"
  } >"$RUN_DIR/cluster.env"
  log "cluster id $cid, $nodes node(s), Kafka $KAFKA_VERSION, run dir $RUN_DIR"

  local pids=()
  for ((i = 1; i <= nodes; i++)); do
    write_props "$i" "$nodes"
    # static quorum (controller.quorum.voters): no --standalone / --initial-controllers
    run_tool kafka.tools.StorageTool format -t "$cid" -c "$(node_dir "$i")/server.properties" \
      >"$(node_dir "$i")/format.log" 2>&1 &
    pids+=($!)
  done
  for ((i = 1; i <= nodes; i++)); do
    wait "${pids[i - 1]}" || { cat "$(node_dir "$i")/format.log" >&2; die "formatting node $i failed"; }
  done
  log "formatted storage ($((SECONDS - START_T0)) s)"

  trap cleanup_on_failure EXIT
  trap 'exit 130' INT TERM
  for ((i = 1; i <= nodes; i++)); do launch_node "$i"; done
  wait_ready $(seq 1 "$nodes")
  bootstrap_for "$nodes"
}

cmd_start_node() {
  local id=${1:-} nodes p
  [[ $id =~ ^[0-9]+$ ]] || die "usage: kafka.sh start-node NODE"
  nodes=$(cluster_nodes) || die "no cluster in $RUN_DIR; use 'kafka.sh start' first"
  ((id >= 1 && id <= nodes)) || die "node $id is not in this $nodes-node cluster"
  [[ -f $(node_dir "$id")/server.properties ]] || die "node $id has no server.properties"
  if node_pid "$id" >/dev/null; then
    die "node $id is already running (pid $(node_pid "$id"))"
  fi
  for p in "$(plain_port "$id")" "$(ctrl_port "$id")"; do
    port_open "$p" && die "port $HOST:$p is in use by another process"
  done
  have_libs || die "jars missing in $LIBS"
  START_T0=$SECONDS
  rm -f "$(pid_file "$id")"
  trap cleanup_on_failure EXIT
  trap 'exit 130' INT TERM
  launch_node "$id"
  wait_ready "$id"
  bootstrap_for "$nodes"
}

# ---------------------------------------------------------------- stop / kill / status

# alive and not a zombie (a broker this shell launched stays a zombie until reaped)
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]]
}

# TERM the given nodes (by saved pid), wait up to 20 s, KILL what is left, remove pid files.
stop_nodes() { # ids...
  local i pid pids=() ids=()
  for i in "$@"; do
    if pid=$(node_pid "$i"); then
      pids+=("$pid"); ids+=("$i")
    fi
  done
  if ((${#pids[@]} == 0)); then
    log "nothing running"
    for i in "$@"; do rm -f "$(pid_file "$i")"; done
    return 0
  fi
  log "stopping node(s) ${ids[*]} (pids ${pids[*]})"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 20)) left
  while :; do
    left=()
    for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
    ((${#left[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
      log "still running after 20 s, sending KILL to ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.25
  done
  for i in "$@"; do rm -f "$(pid_file "$i")"; done
  log "stopped"
}

# While starting: if the script fails or is interrupted, stop the nodes it launched.
LAUNCHED=()
cleanup_on_failure() {
  local rc=$?
  if ((rc != 0 && ${#LAUNCHED[@]} > 0)); then
    log "start failed (exit $rc): stopping node(s) it launched: ${LAUNCHED[*]} (logs stay in $RUN_DIR)"
    stop_nodes "${LAUNCHED[@]}" || true
  fi
  exit "$rc"
}

cmd_stop() {
  local n
  if ! n=$(cluster_nodes); then
    log "nothing to stop (no cluster in $RUN_DIR)"
    return 0
  fi
  stop_nodes $(seq 1 "$n")
}

cmd_kill() {
  local id=${1:-} pid
  [[ $id =~ ^[0-9]+$ ]] || die "usage: kafka.sh kill NODE"
  pid=$(node_pid "$id") || die "node $id is not running"
  kill -KILL "$pid"
  local i
  for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
  rm -f "$(pid_file "$id")"
  log "node $id (pid $pid) killed"
}

cmd_status() {
  local n i pid up=0
  if ! n=$(cluster_nodes); then
    echo "no cluster (run dir $RUN_DIR)"
    return 3
  fi
  for ((i = 1; i <= n; i++)); do
    if pid=$(node_pid "$i"); then
      echo "node $i: running, pid $pid, $HOST:$(plain_port "$i") (controller $HOST:$(ctrl_port "$i"))"
      up=$((up + 1))
    else
      echo "node $i: stopped"
    fi
  done
  echo "bootstrap: $(bootstrap_for "$n")"
  ((up == n)) || return 3
}

cmd_bootstrap() {
  local n
  n=$(cluster_nodes) || die "no cluster (run dir $RUN_DIR)"
  [[ -n $(running_nodes) ]] || die "cluster is not running"
  bootstrap_for "$n"
}

cmd_topics() {
  local bs
  bs=$(cmd_bootstrap)
  if (($# == 0)); then set -- --list; fi
  run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" "$@"
}

cmd_logs() {
  local n
  n=$(cluster_nodes) || die "no cluster (run dir $RUN_DIR)"
  if (($# > 0)); then show_logs "$@"; else show_logs $(seq 1 "$n"); fi
}

cmd_cli() {
  (($# >= 1)) || die "usage: kafka.sh cli CLASS|ALIAS [ARGS...] (aliases: topics quorum api-versions storage configs console-producer console-consumer consumer-groups groups features leader-election log-dirs delete-records dump-log)"
  fetch_libs
  local cls
  cls=$(resolve_class "$1")
  shift
  run_tool "$cls" "$@"
}

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# One cluster-changing command at a time (parallel test setups, a stop during a start).
take_lock() {
  mkdir -p "$(dirname "$RUN_DIR")"
  exec 9>"$RUN_DIR.lock"
  if ! flock -n 9; then
    log "waiting for another kafka.sh (lock $RUN_DIR.lock)"
    flock -w 300 9 || die "another kafka.sh holds $RUN_DIR.lock"
  fi
}

cmd=${1:-}
(($# > 0)) && shift
case $cmd in start | stop | kill | start-node) take_lock ;; esac
case $cmd in
  start) cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  bootstrap) cmd_bootstrap ;;
  topics) cmd_topics "$@" ;;
  kill) cmd_kill "$@" ;;
  start-node) cmd_start_node "$@" ;;
  logs) cmd_logs "$@" ;;
  fetch) fetch_libs; log "jars in $LIBS (Kafka $KAFKA_VERSION)" ;;
  cli) cmd_cli "$@" ;;
  -h|--help|help|"") usage ;;
  *) log "unknown command '$cmd'"; usage ;;
esac
