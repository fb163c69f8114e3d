# shellcheck shell=bash disable=SC2034  # sourced; the variables are used by the callers
# Sourced by start.sh, stop.sh and create-topics.sh: paths and settings.
# Env:
#   KAFKA_PORT             client (PLAINTEXT) port, default 9092
#   KAFKA_CONTROLLER_PORT  KRaft controller port, default 9093
#   KAFKA_RUN_DIR          run dir (properties, data/, server.log, kafka.pid),
#                          default <repo>/.run/kafka
kafka_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kafka_repo="$(cd "$kafka_here/../.." && pwd)"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_RUN_DIR="${KAFKA_RUN_DIR:-$kafka_repo/.run/kafka}"
mkdir -p "$KAFKA_RUN_DIR"
KAFKA_RUN_DIR="$(cd "$KAFKA_RUN_DIR" && pwd)"

kafka_pid_file="$KAFKA_RUN_DIR/kafka.pid"
kafka_bootstrap="127.0.0.1:$KAFKA_PORT"

# Prints the broker's pid if the pid file names a live kafka.Kafka process.
kafka_running_pid() {
  local pid
  [[ -f "$kafka_pid_file" ]] || return 1
  pid="$(cat "$kafka_pid_file" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka ' || return 1
  echo "$pid"
}
