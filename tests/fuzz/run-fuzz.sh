#!/usr/bin/env bash
# Runs the libFuzzer targets that `make fuzz` built into build-fuzz/, one after the
# other, each for FUZZ_TIME seconds (default 10: a smoke run) or FUZZ_RUNS executions.
#
#   tests/fuzz/run-fuzz.sh [TARGET...]       (default: all six)
#   FUZZ_TIME=3600 tests/fuzz/run-fuzz.sh data
#   FUZZ_RUNS=10000000 tests/fuzz/run-fuzz.sh config
#
# Each target reads the committed seeds tests/fuzz/corpus/<target>/ and grows a working
# corpus build-fuzz/corpus/<target>/ (never committed; merge a minimized set back with
# `build-fuzz/fuzz_<t> -merge=1 tests/fuzz/corpus/<t> build-fuzz/corpus/<t>` when it stays
# small). A finding is written to build-fuzz/findings/<target>/crash-* (or leak-*,
# timeout-*, oom-*) and stops the run: minimize it (-minimize_crash=1 -runs=100000), save
# it as tests/fuzz/corpus/<target>/crash-<what>, fix the code, and `make test` replays it
# from then on. A target's own property checks abort with a message on stderr, which
# the run closes (-close_fd_mask=2): `build-fuzz/fuzz_<t> ARTIFACT` shows it. Exits
# non-zero when a target has a finding.
set -u
cd "$(dirname "$0")/../.."
B=build-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config manifest safetensors data hostfile tokenizer)
max_len() {
    case $1 in
        config|hostfile) echo 16384 ;;  # configs and hostfiles are a few KiB
        *) echo 65536 ;;                # a manifest of a real model, shards, safetensors
    esac
}
status=0
for t in "${targets[@]}"; do
    bin=$B/fuzz_$t
    [ -x "$bin" ] || { echo "run-fuzz: $bin is not built (make fuzz builds it)" >&2; exit 2; }
    mkdir -p "$B/corpus/$t" "$B/findings/$t"
    limit=(-max_total_time="${FUZZ_TIME:-10}")
    [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
    dict=(); [ -f "tests/fuzz/dict/$t.dict" ] && dict=(-dict="tests/fuzz/dict/$t.dict")
    echo "== fuzz_$t (${limit[*]})"
    # -close_fd_mask=2: the targets' own stderr (zinc-run's error lines) is dropped;
    # libFuzzer's and the sanitizers' reports still come through.
    log=$B/findings/$t/last-run.log
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1" \
    nice -n 10 "$bin" "${limit[@]}" "${dict[@]}" -max_len="$(max_len "$t")" \
        -rss_limit_mb=2048 -timeout=10 -close_fd_mask=2 -print_final_stats=1 \
        -artifact_prefix="$B/findings/$t/" "$B/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|==[0-9]+==|SUMMARY|artifact_prefix|fuzz|.*deadly signal)' "$log"
    if [ $rc -ne 0 ]; then
        echo "run-fuzz: fuzz_$t stopped with status $rc: a finding in $B/findings/$t/ (log: $log)" >&2
        status=1
    fi
done
[ $status -eq 0 ] && echo "run-fuzz: no findings. A campaign: make fuzz FUZZ_TIME=3600 (per target), or FUZZ_RUNS=10000000."
exit $status
