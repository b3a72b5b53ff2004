#!/usr/bin/env bash
# Replays every saved fuzz input (tests/fuzz/corpus/<target>/: seeds and every input
# that ever crashed, crash-*) through the gcc-built replay programs
# $BUILD/tests/fuzz/replay_<target> (ASan-built under make ASAN=1). Fails when a target
# has no replay program or no inputs, or when any input crashes it; a target's output
# goes to $BUILD/test-logs/fuzz-<target>.log, its tail is shown on failure.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
# No MPI starts here, so LeakSanitizer can stay on (run-tests.sh turns it off for shell tests).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
logdir=$BUILD/test-logs; mkdir -p "$logdir"
status=0
for t in config manifest safetensors data hostfile tokenizer; do
    bin=$BUILD/tests/fuzz/replay_$t dir=tests/fuzz/corpus/$t log=$logdir/fuzz-$t.log
    if [ ! -x "$bin" ]; then echo "FAIL $t: $bin is not built"; status=1; continue; fi
    n=$(find "$dir" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l)
    if [ "$n" -eq 0 ]; then echo "FAIL $t: no inputs in $dir"; status=1; continue; fi
    if timeout 120 "$bin" "$dir" >"$log" 2>&1 && grep -qx "$n inputs replayed" "$log"; then
        echo "ok   $t: $n inputs"
    else
        echo "FAIL $t: replay of $dir failed (log: $log)"; tail -20 "$log" | sed 's/^/      /'
        status=1
    fi
done
exit $status
