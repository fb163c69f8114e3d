#!/usr/bin/env bash
# Start a single-node KRaft Kafka broker in the background and wait until it is
# ready. Last line of stdout: the bootstrap server (127.0.0.1:$KAFKA_PORT).
#
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093),
#      KAFKA_RUN_DIR (<repo>/.run/kafka), KAFKA_VERSION, FUGOU_CACHE (see fetch.sh),
#      KAFKA_START_TIMEOUT seconds (90), KAFKA_HEAP_OPTS ("-Xms512m -Xmx1g"),
#      KAFKA_JVM_OPTS (extra JVM options).
# The log dir ($KAFKA_RUN_DIR/data) is formatted once and kept across restarts;
# delete the run dir (broker stopped) for a fresh cluster.
set -euo pipefail
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if pid="$(kafka_running_pid)"; then
  echo "start.sh: Kafka already running (pid $pid) at $kafka_bootstrap, run dir $KAFKA_RUN_DIR" >&2
  echo "$kafka_bootstrap"
  exit 0
fi
rm -f "$kafka_pid_file"

command -v java >/dev/null || { echo "start.sh: java not found (apt-get install -y openjdk-17-jre-headless)" >&2; exit 1; }

# Fail clearly when a port is taken (the broker would die with a BindException).
for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "start.sh: port $port on 127.0.0.1 is already in use; set KAFKA_PORT / KAFKA_CONTROLLER_PORT" >&2
    exit 1
  fi
done

jars="$("$kafka_here/fetch.sh" | tail -n1)"

log_dir="$KAFKA_RUN_DIR/data"
props="$KAFKA_RUN_DIR/server.properties"
server_log="$KAFKA_RUN_DIR/server.log"
console_log="$KAFKA_RUN_DIR/console.log"
mkdir -p "$log_dir"

sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@LOG_DIR@|$log_dir|g" \
    "$kafka_here/server.properties" >"$props"

tools_log4j="-Dlog4j2.configurationFile=$kafka_here/tools-log4j2.properties"

if [[ ! -f "$log_dir/meta.properties" ]]; then
  cluster_id="$(java "$tools_log4j" -cp "$jars/*" kafka.tools.StorageTool random-uuid)"
  echo "start.sh: formatting $log_dir (cluster id $cluster_id)" >&2
  java "$tools_log4j" -cp "$jars/*" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$props" >&2
fi

# Only log lines written by this start count.
touch "$server_log"
offset=$(( $(stat -c %s "$server_log") + 1 ))

# shellcheck disable=SC2086 # word splitting of the option strings is intended
nohup java ${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g} \
  -XX:+UseG1GC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$kafka_here/log4j2.properties" \
  -Dkafka.logs.dir="$KAFKA_RUN_DIR" \
  ${KAFKA_JVM_OPTS:-} \
  -cp "$jars/*" kafka.Kafka "$props" \
  </dev/null >>"$console_log" 2>&1 &
pid=$!
echo "$pid" >"$kafka_pid_file"

timeout="${KAFKA_START_TIMEOUT:-90}"
deadline=$(( SECONDS + timeout ))
while :; do
  if tail -c +"$offset" "$server_log" | grep -q 'Kafka Server started'; then
    echo "start.sh: Kafka started (pid $pid) at $kafka_bootstrap in ${SECONDS}s, run dir $KAFKA_RUN_DIR" >&2
    echo "$kafka_bootstrap"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    why="exited"
    break
  fi
  if (( SECONDS >= deadline )); then
    why="not ready after ${timeout}s"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    break
  fi
  sleep 0.2
done

rm -f "$kafka_pid_file"
{
  echo "start.sh: Kafka $why. First errors in $server_log:"
  tail -c +"$offset" "$server_log" | grep -m 5 -E '^\[[^]]*\] (ERROR|FATAL)|Caused by' || true
  echo "--- tail of $server_log:"
  tail -c +"$offset" "$server_log" | tail -n 40
  echo "--- tail of $console_log:"
  tail -n 20 "$console_log"
} >&2
exit 1
