#!/bin/sh
# The README's run command: installs what is missing (apt), builds, starts the private PostgreSQL cluster under
# var/ unless CRMD_DATABASE_URL is set, and runs crmd in the foreground (it applies migrations at start-up).
# Ctrl-C stops crmd gracefully, then the private cluster; the data stays in var/ for next time.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

test/tools/deps.sh build
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build app/crmd >/dev/null

private=
if [ -z "${CRMD_DATABASE_URL:-}" ]; then
    private=1
    test/tools/pg.sh init var/pg
    test/tools/pg.sh start var/pg >/dev/null
    if ! test/tools/pg.sh psql var/pg -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'crmd'" | grep -q 1; then
        test/tools/pg.sh psql var/pg -d postgres -c "CREATE DATABASE crmd" >/dev/null
    fi
    su=postgres
    [ "$(id -u)" = 0 ] || su=$(id -un)
    # The serving role (crmd_app, created by the first migration) and the migration role (the cluster's
    # superuser) reach the private cluster only through its socket directory.
    export CRMD_DATABASE_URL="postgresql:///crmd?host=$root/var/pg/run&user=crmd_app"
    export CRMD_MIGRATE_DATABASE_URL="postgresql:///crmd?host=$root/var/pg/run&user=$su"
    echo "PostgreSQL: private cluster in $root/var/pg (socket directory $root/var/pg/run)"
fi

# crmd and this script share the terminal's process group: Ctrl-C reaches crmd directly, and this script waits
# for its graceful shutdown before stopping the cluster.
trap '' INT TERM
status=0
build/app/crmd serve || status=$?
if [ -n "$private" ]; then
    test/tools/pg.sh stop var/pg
    echo "PostgreSQL stopped; data kept in $root/var/pg"
fi
exit $status
