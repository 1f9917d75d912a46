#!/usr/bin/env bash
# Throwaway PostgreSQL 15 and Redis for local runs of Gavel's tests/benchmarks.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/services.sh up|down|status

  up      start PostgreSQL 15 (database `gavel`, trust auth, loopback only) and
          Redis (no persistence) in $GAVEL_SERVICES_DIR, print the URLs to export
  down    stop both and remove $GAVEL_SERVICES_DIR
  status  say what is running

Environment:
  GAVEL_SERVICES_DIR  working directory   (default /tmp/gavel-services)
  PG_PORT             PostgreSQL port     (default 55432)
  REDIS_PORT          Redis port          (default 56379)

As root, initdb/postgres run as the `postgres` user through runuser (PostgreSQL
refuses to run as root), like gavel_testkit::pg does.
Needs: /usr/lib/postgresql/15/bin (apt-get install -y postgresql-15),
       redis-server and redis-cli (apt-get install -y redis-server).
USAGE
}

DIR=${GAVEL_SERVICES_DIR:-/tmp/gavel-services}
PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
PGBIN=/usr/lib/postgresql/15/bin
PGDATA=$DIR/pg/data
PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/gavel"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }
redis_running() { redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "$what not ready after ${secs}s" >&2; return 1; fi
    sleep 0.1
  done
}

up() {
  if [ ! -x "$PGBIN/postgres" ]; then
    echo "PostgreSQL 15 server binaries not found in $PGBIN: install them with \`apt-get install -y postgresql-15\`" >&2
    exit 1
  fi
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || {
    echo "redis-server/redis-cli not found: install them with \`apt-get install -y redis-server\`" >&2
    exit 1
  }
  mkdir -p "$DIR/pg" "$DIR/redis"
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$DIR/pg"; fi

  if pg_running; then
    echo "PostgreSQL already answering on 127.0.0.1:$PG_PORT"
  else
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
      as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 >"$DIR/pg/initdb.log" 2>&1 ||
        { cat "$DIR/pg/initdb.log" >&2; exit 1; }
    fi
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$DIR/pg/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k '$DIR/pg' -c listen_addresses=127.0.0.1" start >/dev/null ||
      { cat "$DIR/pg/postgres.log" >&2; exit 1; }
    wait_for PostgreSQL 60 pg_running
    if [ "$("$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAtc \
      "SELECT 1 FROM pg_database WHERE datname = 'gavel'")" != 1 ]; then
      "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE gavel"
    fi
  fi

  if redis_running; then
    echo "Redis already answering on 127.0.0.1:$REDIS_PORT"
  else
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$DIR/redis" --daemonize yes --pidfile "$DIR/redis/redis.pid" \
      --logfile "$DIR/redis/redis.log"
    wait_for Redis 30 redis_running
  fi

  echo "# services up in $DIR; export these:"
  echo "export GAVEL_TEST_PG_URL=$PG_URL"
  echo "export GAVEL_REDIS_URL=$REDIS_URL"
}

down() {
  if [ -f "$PGDATA/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null || true
  fi
  if [ -f "$DIR/redis/redis.pid" ]; then
    local pid
    pid=$(cat "$DIR/redis/redis.pid")
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  fi
  rm -rf "$DIR"
  echo "services down; removed $DIR"
}

status() {
  local rc=0
  if pg_running; then echo "PostgreSQL: up   $PG_URL"; else echo "PostgreSQL: down (port $PG_PORT)"; rc=1; fi
  if redis_running; then echo "Redis:      up   $REDIS_URL"; else echo "Redis:      down (port $REDIS_PORT)"; rc=1; fi
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
