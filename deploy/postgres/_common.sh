# shellcheck shell=bash disable=SC2034  # sourced; the variables are used by the callers
# Sourced by start.sh and stop.sh.
# Env:
#   PG_PORT     TCP port on 127.0.0.1, default 55432
#   PG_RUN_DIR  run dir (data/, postgres.log, unix socket), default <repo>/.run/postgres
# runuser lives in /usr/sbin, which a minimal PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
pg_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pg_repo="$(cd "$pg_here/../.." && pwd)"

PG_PORT="${PG_PORT:-55432}"
PG_RUN_DIR="${PG_RUN_DIR:-$pg_repo/.run/postgres}"
mkdir -p "$PG_RUN_DIR"
PG_RUN_DIR="$(cd "$PG_RUN_DIR" && pwd)"
pg_data="$PG_RUN_DIR/data"
pg_log="$PG_RUN_DIR/postgres.log"
PG_SUPERUSER=postgres

# Newest installed server binaries, e.g. /usr/lib/postgresql/15/bin.
pg_find_bin() {
  local d
  d="$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  [[ -n "$d" && -x "$d/initdb" ]] || return 1
  echo "$d"
}

# initdb refuses root: as root, run the server tools as the OS user postgres.
if [[ "$(id -u)" == 0 ]]; then
  pg_as() { (cd / && runuser -u postgres -- "$@"); }
else
  pg_as() { "$@"; }
fi
