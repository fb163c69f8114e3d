#!/usr/bin/env bash
# Stop the PostgreSQL server started by start.sh (pg_ctl stop -m fast). Same env.
set -euo pipefail
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if ! bin="$(pg_find_bin)" || [[ ! -f "$pg_data/PG_VERSION" ]] ||
   ! pg_as "$bin/pg_ctl" status -D "$pg_data" >/dev/null 2>&1; then
  echo "stop.sh: PostgreSQL not running (run dir $PG_RUN_DIR)" >&2
  exit 0
fi
pg_as "$bin/pg_ctl" stop -D "$pg_data" -m fast -w -t "${PG_STOP_TIMEOUT:-60}" >&2
echo "stop.sh: PostgreSQL stopped" >&2
