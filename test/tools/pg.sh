#!/bin/sh
# Private PostgreSQL clusters for development and tests (DESIGN.md §7: PostgreSQL is real everywhere).
#
#   pg.sh init  DIR        create a cluster in DIR (if absent), unix socket in DIR/run, no TCP listener
#   pg.sh start DIR        start it (waits until it accepts connections); prints the socket directory
#   pg.sh stop  DIR [MODE] stop it (MODE: fast (default) | immediate)
#   pg.sh status DIR       exit 0 if running
#   pg.sh psql  DIR [ARGS] psql as the superuser on the cluster's socket
#
# As root the server cannot run as root, so every server-side command runs as the `postgres` user through
# runuser, and DIR is handed to that user. The cluster trusts local socket connections only: the socket
# directory is private to the cluster owner and root, so nobody else on the machine can connect.
#
# Environment at init: PGPORT (5432; also names the socket), PG_FSYNC and PG_SYNCHRONOUS_COMMIT (on),
# PG_LISTEN_ADDRESSES ('' = no TCP) and PG_AUTH_HOST (reject) — tests that need TCP use 127.0.0.1 and trust.
set -eu

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$PGBIN/initdb" ] || { echo "pg.sh: PostgreSQL server binaries not found (install postgresql)" >&2; exit 1; }
PGPORT=${PGPORT:-5432}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

superuser() {
    if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi
}

cmd=${1:?usage: pg.sh init|start|stop|status|psql DIR}
dir=${2:?usage: pg.sh $cmd DIR}
case "$dir" in /*) ;; *) dir=$(pwd)/$dir ;; esac
data=$dir/data
run=$dir/run

case "$cmd" in
init)
    if [ -f "$data/PG_VERSION" ]; then exit 0; fi
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
        chmod 700 "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            echo "pg.sh: the postgres user cannot write $dir (a parent directory is not searchable by it);" >&2
            echo "pg.sh: clone the repository somewhere every user can traverse, e.g. /srv or /opt" >&2
            exit 1
        fi
    fi
    as_owner mkdir -p "$run"
    as_owner "$PGBIN/initdb" -D "$data" -U "$(superuser)" --auth-local=trust --auth-host="${PG_AUTH_HOST:-reject}" \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '${PG_LISTEN_ADDRESSES:-}'
unix_socket_directories = '$run'
unix_socket_permissions = 0770
port = $PGPORT
max_connections = 200
shared_buffers = 128MB
fsync = ${PG_FSYNC:-on}
synchronous_commit = ${PG_SYNCHRONOUS_COMMIT:-on}
logging_collector = off
log_min_messages = warning
CONF
    ;;
start)
    if as_owner "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then echo "$run"; exit 0; fi
    as_owner "$PGBIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null || {
        tail -n 30 "$dir/server.log" >&2; exit 1; }
    echo "$run"
    ;;
stop)
    as_owner "$PGBIN/pg_ctl" -D "$data" -m "${3:-fast}" -w -t 60 stop >/dev/null 2>&1 || true
    ;;
status)
    as_owner "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1
    ;;
psql)
    shift 2
    exec "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$run" -p "$PGPORT" -U "$(superuser)" "$@"
    ;;
*)
    echo "pg.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
