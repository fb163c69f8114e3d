#!/usr/bin/env bash
# Distributed mode on this machine (`make up`): a single-node Kafka, a PostgreSQL cluster with
# one database per service, and one process per service on ports 8000-8004 (services.sh); the
# gateway on 8000 is the front door: the console at /console and every service's API.
#
# Env: RUN_DIR (<repo>/.run), PY (python with the project installed), KAFKA_PORT (9092),
#      PG_PORT (55432), FUGOU_BOOTSTRAP_API_KEY (generated and kept in $RUN_DIR/demo-api-key),
#      FUGOU_INTERNAL_TOKEN (services calling each other's admin APIs; generated and kept in
#      $RUN_DIR/internal-token, so processes started by an earlier run keep agreeing with new ones).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
RUN_DIR="${RUN_DIR:-$repo/.run}"
PY="${PY:-$repo/.venv/bin/python}"
export KAFKA_PORT="${KAFKA_PORT:-9092}" KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
export KAFKA_RUN_DIR="$RUN_DIR/kafka" PG_PORT="${PG_PORT:-55432}" PG_RUN_DIR="$RUN_DIR/postgres"
# shellcheck source=services.sh
source "$here/services.sh"  # services, port[svc], url[svc], service_urls
cd "$repo"
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/pids"

bootstrap="$("$repo/deploy/kafka/start.sh" | tail -n1)"
pg_user="$("$repo/deploy/postgres/start.sh" | tail -n1)"

key_file="$RUN_DIR/demo-api-key"
if [[ -z "${FUGOU_BOOTSTRAP_API_KEY:-}" ]]; then
  [[ -s "$key_file" ]] || "$PY" -c 'import secrets; print("fg_" + secrets.token_urlsafe(32))' >"$key_file"
  FUGOU_BOOTSTRAP_API_KEY="$(cat "$key_file")"
fi
chmod 600 "$key_file" 2>/dev/null || true

token_file="$RUN_DIR/internal-token"
if [[ -z "${FUGOU_INTERNAL_TOKEN:-}" ]]; then
  [[ -s "$token_file" ]] || (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$token_file")
  FUGOU_INTERNAL_TOKEN="$(cat "$token_file")"
fi

export FUGOU_BUS=kafka FUGOU_KAFKA_BOOTSTRAP="$bootstrap" FUGOU_BOOTSTRAP_API_KEY FUGOU_INTERNAL_TOKEN
for svc in "${services[@]}"; do
  db="fugou_$svc"
  if [[ -z "$(psql -h 127.0.0.1 -p "$PG_PORT" -U "$pg_user" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
    psql -h 127.0.0.1 -p "$PG_PORT" -U "$pg_user" -d postgres -qc "CREATE DATABASE $db" >/dev/null
  fi
  export "FUGOU_${svc^^}_DATABASE_URL=postgresql+asyncpg://$pg_user@127.0.0.1:$PG_PORT/$db"
done

for svc in "${services[@]}"; do
  pid_file="$RUN_DIR/pids/$svc.pid"
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "up.sh: $svc already running (pid $(cat "$pid_file"))" >&2
  else
    service_urls "$svc"  # the gateway gets every other service's URL (it forwards their routes)
    "$PY" -m "services.$svc" migrate
    # No subshell: $! must be the service's own pid, and nothing may hold our stdout open.
    nohup "$PY" -m "services.$svc" run --port "${port[$svc]}" >>"$RUN_DIR/logs/$svc.log" 2>&1 </dev/null &
    echo $! >"$pid_file"
  fi
done

for svc in "${services[@]}"; do
  for _ in $(seq 1 120); do
    if curl -fsS "${url[$svc]}/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  curl -fsS "${url[$svc]}/readyz" >/dev/null || { echo "up.sh: $svc not ready; see $RUN_DIR/logs/$svc.log" >&2; exit 1; }
  printf '  %-14s %s  (log %s)\n' "$svc" "${url[$svc]}" "$RUN_DIR/logs/$svc.log"
done
echo "  kafka          $bootstrap"
echo "  postgresql     postgresql://$pg_user@127.0.0.1:$PG_PORT/fugou_<service>"
echo "  merchant 'demo' API key in $key_file; events go to the gateway: POST ${url[gateway]}/v1/events"
echo "  console        ${url[gateway]}/console  (the gateway answers every service's API on its port)"
