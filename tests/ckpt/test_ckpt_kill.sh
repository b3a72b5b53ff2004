#!/usr/bin/env bash
# A save killed at any point (SIGKILL to every rank and to mpirun, at random moments)
# never damages the checkpoint that latest names: after each kill `zinc-ckpt verify` on
# the save dir succeeds and the latest loads with the right content (prog_saver --check,
# at another rank count). The saver resumes after latest each trial, so later trials also
# exercise stale .partial cleanup and keep_last pruning under kills.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
SAVER=$BUILD/tests/ckpt/prog_saver
CKPT=$BUILD/zinc-ckpt
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zinc-ckpt-kill.XXXXXX")
job=
cleanup() {
    [ -n "$job" ] && kill_job "$job"
    rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# SIGKILL the ranks (children of mpirun; Open MPI gives each its own process group) and mpirun.
kill_job() {
    local pid=$1 kids
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null)
    kill -KILL $kids "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

D=$TMP/save
TRIALS=${TRIALS:-10}
seen=0
for trial in $(seq 1 "$TRIALS"); do
    ./scripts/mpirun.sh 2 "$SAVER" "$D" --mib 3 --keep 2 >"$TMP/saver.log" 2>&1 &
    job=$!
    # mpirun takes ~0.3 s to start the ranks; the first trial may die before any save
    delay=$(awk -v s="$RANDOM" -v t="$trial" 'BEGIN { srand(s); print (t == 1 ? 0.2 : 0.4) + rand() * 0.8 }')
    sleep "$delay"
    kill -0 "$job" 2>/dev/null || { cat "$TMP/saver.log" >&2; fail "trial $trial: saver ended by itself"; }
    kill_job "$job"
    job=
    if [ ! -e "$D/latest" ]; then
        [ "$seen" = 0 ] || fail "trial $trial: latest vanished"
        echo "trial $trial: killed after ${delay}s, no checkpoint committed yet"
        continue
    fi
    seen=1
    out=$("$CKPT" verify "$D" 2>&1) || fail "trial $trial: verify failed after a kill at ${delay}s: $out"
    chk=$(./scripts/mpirun.sh 3 "$SAVER" "$D" --mib 3 --check 2>&1) || fail "trial $trial: latest does not load: $chk"
    echo "trial $trial: killed after ${delay}s; latest $(cat "$D/latest") verifies and loads ($(ls "$D" | tr '\n' ' '))"
done
[ "$seen" = 1 ] || fail "no checkpoint was ever committed"
echo "all $TRIALS kills left a loadable latest"
