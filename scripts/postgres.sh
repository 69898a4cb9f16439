#!/usr/bin/env bash
# A PostgreSQL server on loopback for the job service's tests (Debian's postgresql packages).
#
#   bash scripts/postgres.sh start    install postgresql if missing, init, start, create user + db
#   bash scripts/postgres.sh stop     stop the server this script started
#   bash scripts/postgres.sh status   exit 0 when the server accepts connections
#   bash scripts/postgres.sh url      print the SQLAlchemy URL of the database
#
# The cluster lives in $ESAP_PG_DIR (default /var/lib/esap-postgres), listens on 127.0.0.1 only,
# port $ESAP_PG_PORT (default 55432), and holds database/user/password "esap" (override with
# ESAP_PG_DB, ESAP_PG_USER, ESAP_PG_PASSWORD). `start` is idempotent: a running server is
# left alone; the role and database are created only when missing.
set -euo pipefail

DIR=${ESAP_PG_DIR:-/var/lib/esap-postgres}
PORT=${ESAP_PG_PORT:-55432}
DB=${ESAP_PG_DB:-esap}
USER_NAME=${ESAP_PG_USER:-esap}
PASSWORD=${ESAP_PG_PASSWORD:-esap}
DATA=$DIR/data
SOCK=$DIR/run

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

install_packages() {
    if [ -n "$(bindir || true)" ]; then
        return
    fi
    log "installing postgresql (Debian packages)"
    if [ "$(id -u)" -ne 0 ]; then
        log "not root: run 'sudo apt-get install -y postgresql' first"
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2
}

# Run a command as the server's owner: "postgres" when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ready() {
    local bin
    bin=$(bindir) || return 1
    as_owner "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT"
}

start() {
    install_packages
    local bin
    bin=$(bindir)
    mkdir -p "$DIR" "$SOCK"
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$DIR"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initialising a cluster in $DATA"
        as_owner "$bin/initdb" -D "$DATA" -U postgres -A trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >&2
    fi
    if ! ready; then
        log "starting on 127.0.0.1:$PORT"
        as_owner "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$SOCK -c max_connections=200" >&2
    fi
    local psql=("$bin/psql" -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq)
    if [ "$(as_owner "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='$USER_NAME'")" != 1 ]; then
        as_owner "${psql[@]}" -c "CREATE ROLE \"$USER_NAME\" LOGIN PASSWORD '$PASSWORD'"
    fi
    if [ "$(as_owner "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
        as_owner "${psql[@]}" -c "CREATE DATABASE \"$DB\" OWNER \"$USER_NAME\""
    fi
    log "ready: $(url)"
}

stop() {
    local bin
    bin=$(bindir) || { log "postgresql is not installed"; return 0; }
    if [ -f "$DATA/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
    fi
    log "stopped"
}

url() {
    echo "postgresql+psycopg://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/$DB"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if ready; then log "up: $(url)"; else log "down"; exit 1; fi ;;
    url) url ;;
    *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
