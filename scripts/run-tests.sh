#!/usr/bin/env bash
# Runs every test program under $BUILD/tests. A test folder may hold a file
# `mpi_ranks` listing rank counts ("1 2 4"): its programs then also run under
# mpirun with each count. Shell tests tests/*/test_*.sh run with BUILD set.
# Prints one line per run and a summary; exits non-zero if any failed. A
# test that exits 77 could not run here (it prints "SKIP: why"): counted as
# skipped, never as passed.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
# Sanitized builds: leak checking stays on for the suites that do not start
# MPI; Open MPI unloads components whose allocations it never frees, which
# LeakSanitizer reports from unknown modules, so MPI programs run without it.
NOLEAK=(env "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0")
pass=0; fail=0; skipped=0; failed=()
logdir=$BUILD/test-logs; mkdir -p "$logdir"

run_one() { # name cmd...
    local name=$1; shift
    local log="$logdir/$(echo "$name" | tr ' /' '__').log"
    local t0=$(date +%s.%N)
    timeout 600 "$@" >"$log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        pass=$((pass+1)); printf 'PASS  %-50s %6.1fs\n' "$name" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')"
    elif [ $rc -eq 77 ]; then # the test cannot run here and says why
        skipped=$((skipped+1)); printf 'SKIP  %-50s %s\n' "$name" "$(grep '^SKIP' "$log" | tail -1)"
    else
        fail=$((fail+1)); failed+=("$name")
        printf 'FAIL  %-50s (log: %s)\n' "$name" "$log"; tail -20 "$log" | sed 's/^/      /'
    fi
}

# tests/gpu/ belongs to the GPU checks (make test-gpu, scripts/test-gpu.sh)
for t in $(ls "$BUILD"/tests/*/test_* 2>/dev/null | grep -v '\.[od]$' | grep -v '/tests/gpu/' | sort); do
    mod=$(basename "$(dirname "$t")")
    if [ -f "tests/$mod/mpi_ranks" ]; then
        for n in $(cat "tests/$mod/mpi_ranks"); do
            run_one "$mod x$n" "${NOLEAK[@]}" ./scripts/mpirun.sh "$n" "$t"
        done
    else
        run_one "$mod" "$t"
    fi
done
for s in $(ls tests/*/test_*.sh 2>/dev/null | grep -v '^tests/gpu/' | sort); do
    run_one "$(basename "$(dirname "$s")")/$(basename "$s" .sh)" "${NOLEAK[@]}" BUILD="$BUILD" bash "$s"
done

if nvidia-smi -L >/dev/null 2>&1; then
    echo "NOTE  a GPU is visible: run \`make test-gpu\` for the GPU checks (not part of make test)"
else
    echo "SKIP  gpu checks (tests/gpu): no GPU visible here; they run with \`make test-gpu\` on a GPU machine"
fi
echo "== $pass passed, $fail failed, $skipped skipped =="
[ $fail -eq 0 ] || { printf '   failed: %s\n' "${failed[@]}"; exit 1; }
