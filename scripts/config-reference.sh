#!/usr/bin/env bash
# Regenerates README.md's config reference, the lines between the markers
#   <!-- config-reference:begin ... -->  and  <!-- config-reference:end -->
# from `BUILD/zinc-train --list-keys` (the table the parser validates with,
# engine/config.c), so that the README cannot drift from the program.
#
#   scripts/config-reference.sh [--check] [BUILD]      BUILD: build by default
#
# --check changes nothing: it prints the diff and exits 1 when the README
# differs from the program's output (tests/config/test_list_keys.sh).
# README=FILE (environment) rewrites or checks another file.
# Exit status: 0 up to date / rewritten, 1 differs (--check), 2 cannot run.
set -u
check=0
if [ "${1:-}" = --check ]; then check=1; shift; fi
BUILD=${1:-${BUILD:-build}}
cd "$(dirname "$0")/.."
README=${README:-README.md}
me=scripts/config-reference.sh
tmp=$(mktemp "${TMPDIR:-/tmp}/config-reference.XXXXXX")
trap 'rm -f "$tmp" "$tmp.keys"' EXIT

if ! "$BUILD/zinc-train" --list-keys > "$tmp.keys"; then
    echo "$me: $BUILD/zinc-train --list-keys failed (build it: make BUILD=$BUILD $BUILD/zinc-train)" >&2
    exit 2
fi
b=$(grep -n '^<!-- config-reference:begin' "$README" | cut -d: -f1)
e=$(grep -n '^<!-- config-reference:end' "$README" | cut -d: -f1)
if [ "$(echo "$b" | wc -w)" != 1 ] || [ "$(echo "$e" | wc -w)" != 1 ] || [ "$b" -ge "$e" ]; then
    echo "$me: $README needs one '<!-- config-reference:begin -->' line before one '<!-- config-reference:end -->' line" >&2
    exit 2
fi
# the begin marker, a blank line, the table, a blank line, the end marker
awk -v keys="$tmp.keys" '
    /^<!-- config-reference:begin/ { print; print ""; while ((getline l < keys) > 0) print l; print ""; skip = 1; next }
    /^<!-- config-reference:end/ { skip = 0 }
    !skip { print }' "$README" > "$tmp"

if cmp -s "$README" "$tmp"; then
    [ $check = 1 ] || echo "$README: config reference up to date"
    exit 0
fi
if [ $check = 1 ]; then
    diff -u --label "$README" --label "$BUILD/zinc-train --list-keys" "$README" "$tmp"
    echo "$README's config reference differs from $BUILD/zinc-train --list-keys; regenerate it with:" >&2
    echo "    $me $BUILD" >&2
    exit 1
fi
cat "$tmp" > "$README"
echo "$README: config reference regenerated from $BUILD/zinc-train --list-keys"
