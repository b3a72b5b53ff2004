# helpers.sh - what the zinc-run tests share (sourced, not run): the build
# to test, a private scratch directory as cwd and HOME (no ~/.zinc_env of
# the user leaks in), and the checks, which count into $checks and $fails.
#   run WANT_RC CMD...   runs CMD, keeping stdout/stderr in $OUT/$ERR
#   has FILE TEXT / lacks FILE TEXT / hasre FILE REGEX   on the last run
# A script ends with `finish`, which prints the summary and sets the status.
set -u
BUILD=${BUILD:-build}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
RUN=$BUILD/zinc-run
[ -x "$RUN" ] || { echo "FAIL: $RUN not built"; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/zinc-test-launcher.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
export HOME=$TMP/home
mkdir -p "$HOME"
unset OMP_NUM_THREADS ZINC_THREADS ZINC_DEFAULT_HOSTFILE MASTER_ADDR MASTER_PORT

fails=0
checks=0
OUT=$TMP/out
ERR=$TMP/err

run() {
    local want=$1; shift
    checks=$((checks + 1))
    "$@" >"$OUT" 2>"$ERR"
    local rc=$?
    if [ "$rc" != "$want" ]; then
        fails=$((fails + 1))
        echo "FAIL: exit $rc, expected $want: $*"
        sed 's/^/    out: /' "$OUT" | head -5
        sed 's/^/    err: /' "$ERR" | head -5
    fi
}
has() {
    checks=$((checks + 1))
    if ! grep -qF -- "$2" "$1"; then
        fails=$((fails + 1))
        echo "FAIL: '$2' not in $(basename "$1"):"
        sed 's/^/    /' "$1" | head -5
    fi
}
hasre() { # FILE REGEX (grep's basic regular expression)
    checks=$((checks + 1))
    if ! grep -q -- "$2" "$1"; then
        fails=$((fails + 1))
        echo "FAIL: /$2/ not in $(basename "$1"):"
        sed 's/^/    /' "$1" | head -5
    fi
}
lacks() {
    checks=$((checks + 1))
    if grep -qF -- "$2" "$1"; then
        fails=$((fails + 1))
        echo "FAIL: '$2' unexpectedly in $(basename "$1"):"
        sed 's/^/    /' "$1" | head -5
    fi
}
finish() {
    echo "$checks checks, $fails failed"
    [ "$fails" -eq 0 ]
}
