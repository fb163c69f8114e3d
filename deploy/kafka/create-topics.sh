#!/usr/bin/env bash
# Create topics on the running broker, skipping ones that exist:
#   create-topics.sh TOPIC[:PARTITIONS] ...     (PARTITIONS defaults to 1, RF is 1)
# Env: KAFKA_PORT (9092), KAFKA_VERSION, FUGOU_CACHE (see fetch.sh).
# One JVM per topic (~1-2 s each); Python code can use aiokafka's admin client instead.
set -euo pipefail
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if (( $# == 0 )); then
  echo "usage: $0 TOPIC[:PARTITIONS] ..." >&2
  exit 2
fi

jars="$("$kafka_here/fetch.sh" | tail -n1)"
for spec in "$@"; do
  topic="${spec%%:*}"
  partitions=1
  [[ "$spec" == *:* ]] && partitions="${spec#*:}"
  [[ -n "$topic" && "$partitions" =~ ^[0-9]+$ ]] || { echo "create-topics.sh: bad spec '$spec' (want TOPIC[:PARTITIONS])" >&2; exit 2; }
  java -Dlog4j2.configurationFile="$kafka_here/tools-log4j2.properties" \
    -cp "$jars/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$kafka_bootstrap" --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor 1 >&2
done
