#!/bin/sh
# The README's test command (and what .ci/run calls): installs what is missing (apt), builds a normal and an
# ASan+UBSan build with warnings as errors, checks formatting, starts a throwaway PostgreSQL, runs every suite
# (unit and integration) against both builds, stops PostgreSQL, and exits non-zero on any failure.
set -eu
cd "$(dirname "$0")/.."

test/tools/deps.sh test

configure() {
    dir=$1
    shift
    if [ -f "$dir/build.ninja" ]; then
        meson configure "$dir" "$@" >/dev/null
    else
        meson setup "$dir" "$@" >/dev/null
    fi
}
configure build -Dwerror=true
configure build-asan -Dwerror=true --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build
ninja -C build-asan
ninja -C build format-check

pgdir=$(mktemp -d /tmp/crmd-test-pg.XXXXXX)
cleanup() {
    test/tools/pg.sh stop "$pgdir" immediate
    rm -rf "$pgdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Durability is not under test here; fsync off makes the throwaway cluster fast on shared machines.
PG_FSYNC=off PG_SYNCHRONOUS_COMMIT=off test/tools/pg.sh init "$pgdir"
test/tools/pg.sh start "$pgdir" >/dev/null
export CRMD_TEST_PG_DIR="$pgdir"

# Sanitizers: any report fails the test that produced it.
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="suppressions=$(pwd)/test/tools/lsan.supp:print_suppressions=0"

status=0
for b in build build-asan; do
    echo "== tests: $b"
    meson test -C "$b" --print-errorlogs --num-processes 2 || status=1
done
exit $status
