#!/bin/sh
# Formats (or, with --check, verifies the formatting of) every C source tracked by git, with the repository's
# .clang-format. Used by `meson compile format` and `meson compile format-check`.
set -eu
root=$1
mode=${2:-}
cd "$root"
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find lib app protocols test bench -name '*.[ch]')
[ -n "$files" ] || exit 0
if [ "$mode" = "--check" ]; then
    # shellcheck disable=SC2086
    exec clang-format --dry-run --Werror --style=file $files
fi
# shellcheck disable=SC2086
exec clang-format -i --style=file $files
