#!/usr/bin/env bash
# Fetch the jars that run a Kafka broker (see pom.xml) into a cache folder and
# print that folder as the last line of stdout. A second run with a complete
# cache does nothing (no Maven, no network).
#
# Env:
#   KAFKA_VERSION  Kafka version (default: the kafka.version property in pom.xml)
#   FUGOU_CACHE    cache root (default: $HOME/.cache/fugou)
#   KAFKA_JARS     jars folder (default: $FUGOU_CACHE/kafka-$KAFKA_VERSION/libs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/pom.xml"

default_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1)"
version="${KAFKA_VERSION:-$default_version}"
cache="${FUGOU_CACHE:-${HOME:-/tmp}/.cache/fugou}"
jars="${KAFKA_JARS:-$cache/kafka-$version/libs}"

# The stamp ties the folder to this version and this pom: editing the pom
# (e.g. the log4j version) refreshes the cache.
stamp_want="$version $(sha256sum "$pom" | cut -d' ' -f1)"
stamp="$jars/.fugou-complete"

complete() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$stamp_want" ]] &&
    compgen -G "$jars/kafka_2.13-$version.jar" >/dev/null
}

if complete; then
  echo "$jars"
  exit 0
fi

mkdir -p "$(dirname "$jars")"
# Serialize concurrent fetches of the same folder.
exec 9>"$jars.lock"
flock 9
if complete; then
  echo "$jars"
  exit 0
fi

command -v mvn >/dev/null || { echo "fetch.sh: mvn not found (apt-get install -y maven)" >&2; exit 1; }

tmp="$(mktemp -d "$(dirname "$jars")/.libs.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

mvn_copy() {
  # All Maven output goes to stderr (stdout carries only the folder), without
  # the colour codes Maven 3.8 prints even with -B -q.
  mvn -B -q "$@" -f "$pom" \
    -Dkafka.version="$version" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 |
    sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2
}

echo "fetch.sh: fetching Kafka $version jars into $jars" >&2
if ! mvn_copy -o 2>/dev/null; then
  rm -rf "${tmp:?}"/*
  mvn_copy
fi

[[ -f "$tmp/kafka_2.13-$version.jar" ]] || { echo "fetch.sh: kafka_2.13-$version.jar missing after Maven ran" >&2; exit 1; }
echo "$stamp_want" >"$tmp/.fugou-complete"
rm -rf "$jars"
mv "$tmp" "$jars"
trap - EXIT
chmod 755 "$jars"
echo "$jars"
