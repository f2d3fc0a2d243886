#!/usr/bin/env bash
# Install (if needed) and start a private PostgreSQL server for the tests, on 127.0.0.1.
# Prints the SQLAlchemy URL on stdout. Usage: scripts/postgres.sh [start|stop]
set -euo pipefail
# below the kernel's ephemeral range (32768-60999), so no outgoing or port-0 socket can hold it
PGPORT="${TINYMLOPS_PG_PORT:-25432}"
PGDATA="${TINYMLOPS_PG_DATA:-/tmp/tinymlops-pg-$PGPORT}"
action="${1:-start}"

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

if ! BIN=$(find_bin); then
  echo "installing PostgreSQL from Debian's packages ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BIN=$(find_bin)
fi

run_as_pg() {
  if [ "$(id -u)" = "0" ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    su postgres -s /bin/bash -c "$*"
  else
    bash -c "$*"
  fi
}

if [ "$action" = "stop" ]; then
  run_as_pg "'$BIN/pg_ctl' -D '$PGDATA' -m fast stop" >&2 || true
  exit 0
fi

if [ ! -f "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  [ "$(id -u)" = "0" ] && chown postgres "$PGDATA"
  run_as_pg "'$BIN/initdb' -D '$PGDATA' -U postgres --auth=trust -E UTF8 >/dev/null"
fi
if ! run_as_pg "'$BIN/pg_ctl' -D '$PGDATA' status" >/dev/null 2>&1; then
  run_as_pg "'$BIN/pg_ctl' -D '$PGDATA' -l '$PGDATA/server.log' -w -o \"-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off\" start" >&2
fi
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='tinymlops_test'" | grep -q 1 \
  || psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE tinymlops_test" >&2
echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/tinymlops_test"
