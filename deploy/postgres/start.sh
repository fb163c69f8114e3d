#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for development and tests: 127.0.0.1:$PG_PORT
# only, trust auth, superuser "postgres", unix socket in $PG_RUN_DIR, durability
# off (fsync, synchronous_commit, full_page_writes) for speed.
# Last line of stdout: the superuser name to connect as (postgres).
#
# Env: PG_PORT (55432), PG_RUN_DIR (<repo>/.run/postgres), PG_START_TIMEOUT (60).
# Installs Debian's postgresql package when no server binaries are found (needs root).
# The data dir is initialised once and kept; delete the run dir (server stopped) to reset.
set -euo pipefail
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if ! bin="$(pg_find_bin)"; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "start.sh: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; install the postgresql package" >&2
    exit 1
  fi
  echo "start.sh: installing PostgreSQL (apt-get install postgresql)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q postgresql >&2
  bin="$(pg_find_bin)" || { echo "start.sh: initdb still not found after install" >&2; exit 1; }
fi

if [[ -f "$pg_data/PG_VERSION" ]] && pg_as "$bin/pg_ctl" status -D "$pg_data" >/dev/null 2>&1; then
  echo "start.sh: PostgreSQL already running, run dir $PG_RUN_DIR" >&2
  echo "$PG_SUPERUSER"
  exit 0
fi

if [[ "$(id -u)" == 0 ]]; then
  # The postgres user must reach the run dir: make each ancestor traversable
  # (e.g. /root is 0700) and hand it the run dir.
  # Top-down, so only the folders that block the way are changed.
  d=""
  IFS=/ read -ra parts <<<"${PG_RUN_DIR#/}"
  for part in "${parts[@]:0:${#parts[@]}-1}"; do
    d="$d/$part"
    if ! runuser -u postgres -- test -x "$d"; then
      echo "start.sh: chmod o+x $d so the postgres user can reach $PG_RUN_DIR" >&2
      chmod o+x "$d"
    fi
  done
  chown postgres: "$PG_RUN_DIR"
  chmod 755 "$PG_RUN_DIR"
fi

# A unix socket path is limited to 107 bytes.
if (( ${#PG_RUN_DIR} + 20 > 107 )); then
  echo "start.sh: PG_RUN_DIR is too long for a unix socket path (${#PG_RUN_DIR} chars): $PG_RUN_DIR" >&2
  exit 1
fi

if [[ ! -f "$pg_data/PG_VERSION" ]]; then
  echo "start.sh: initdb $pg_data" >&2
  rm -rf "$pg_data"
  pg_as "$bin/initdb" -D "$pg_data" -U "$PG_SUPERUSER" -A trust \
    --encoding=UTF8 --locale=C --no-sync --no-instructions >&2
  echo "include_if_exists = 'fugou.conf'" | pg_as tee -a "$pg_data/postgresql.conf" >/dev/null
fi

# Rewritten on every start, so PG_PORT / PG_RUN_DIR changes take effect.
pg_as tee "$pg_data/fugou.conf" >/dev/null <<CONF
# Written by deploy/postgres/start.sh on each start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_RUN_DIR'
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
CONF

# Fail clearly when the port is taken.
if (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; then
  echo "start.sh: port $PG_PORT on 127.0.0.1 is already in use; set PG_PORT" >&2
  exit 1
fi

[[ "$(id -u)" == 0 ]] && { touch "$pg_log"; chown postgres: "$pg_log"; }
timeout="${PG_START_TIMEOUT:-60}"
if ! pg_as "$bin/pg_ctl" start -D "$pg_data" -l "$pg_log" -w -t "$timeout" >&2; then
  echo "start.sh: PostgreSQL did not start. Tail of $pg_log:" >&2
  tail -n 30 "$pg_log" >&2
  exit 1
fi

deadline=$(( SECONDS + timeout ))
until "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER"; do
  if (( SECONDS >= deadline )); then
    echo "start.sh: pg_isready failed after ${timeout}s. Tail of $pg_log:" >&2
    tail -n 30 "$pg_log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "start.sh: PostgreSQL ready at 127.0.0.1:$PG_PORT (user $PG_SUPERUSER, socket dir $PG_RUN_DIR) in ${SECONDS}s" >&2
echo "$PG_SUPERUSER"
