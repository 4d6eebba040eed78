#!/bin/sh
# Installs, with apt, whatever crmd needs that this Debian 12 machine lacks. Idempotent: when everything is
# present it does nothing and touches no network.
#
#   deps.sh build   compiler, meson/ninja, the libraries (DESIGN.md §2) and PostgreSQL 15
#   deps.sh test    build + cmocka, python3, curl, openssl, clang-format (the format check)
#   deps.sh bench   test + wrk, the stock h2o server and h2load
set -eu

what=${1:-build}
pkgs="gcc libc6-dev pkg-config meson ninja-build python3 ca-certificates
      libuv1-dev libh2o-dev libpq-dev libcurl4-openssl-dev libssl-dev libjansson-dev libargon2-dev libpsl-dev libidn2-dev
      libcmocka-dev postgresql-15 postgresql-client-15 util-linux"
case "$what" in
build) ;;
test) pkgs="$pkgs python3-yaml curl openssl clang-format procps" ;;
bench) pkgs="$pkgs python3-yaml curl openssl clang-format procps wrk h2o nghttp2-client" ;;
*) echo "usage: deps.sh build|test|bench" >&2; exit 2 ;;
esac

missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "deps.sh: installing:$missing" >&2
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "deps.sh: not root and no sudo; install as root: apt-get install -y$missing" >&2
        exit 1
    fi
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be absent or stale on a fresh machine; refresh once, then install.
$SUDO apt-get update -q >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
