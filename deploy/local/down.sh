#!/usr/bin/env bash
# Stop what `make up` started: the service processes, then Kafka and PostgreSQL.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
RUN_DIR="${RUN_DIR:-$repo/.run}"
export KAFKA_PORT="${KAFKA_PORT:-9092}" KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
export KAFKA_RUN_DIR="$RUN_DIR/kafka" PG_PORT="${PG_PORT:-55432}" PG_RUN_DIR="$RUN_DIR/postgres"
for pid_file in "$RUN_DIR"/pids/*.pid; do
  [[ -f "$pid_file" ]] || continue
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pid_file"
done
"$repo/deploy/kafka/stop.sh" || true
"$repo/deploy/postgres/stop.sh" || true
