#!/usr/bin/env bash
# Stop the broker started by start.sh: SIGTERM (clean shutdown), wait up to
# KAFKA_STOP_TIMEOUT seconds (60), then SIGKILL. Same env as start.sh.
set -euo pipefail
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if ! pid="$(kafka_running_pid)"; then
  rm -f "$kafka_pid_file"
  echo "stop.sh: Kafka not running (run dir $KAFKA_RUN_DIR)" >&2
  exit 0
fi

kill -TERM "$pid" 2>/dev/null || true
timeout="${KAFKA_STOP_TIMEOUT:-60}"
deadline=$(( SECONDS + timeout ))
while kill -0 "$pid" 2>/dev/null; do
  if (( SECONDS >= deadline )); then
    echo "stop.sh: Kafka (pid $pid) still running after ${timeout}s, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    break
  fi
  sleep 0.1
done
rm -f "$kafka_pid_file"
echo "stop.sh: Kafka stopped (pid $pid) in ${SECONDS}s" >&2
