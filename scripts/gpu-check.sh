#!/usr/bin/env bash
# GPU check, for a session that has a GPU machine (see /work/shared/DEVICE.md).
# Prints nvidia-smi, runs `make test-gpu` (every CUDA op against the CPU op),
# writes full logs under $OUT when it is set (else build/gpu-logs/), and
# prints a short table last. Exit status: that of the GPU test (0 pass,
# 1 fail, 77 no GPU visible), or 2 if it could not be built or found.
#
# Prepare here, where nvcc and the CPU build work: `make CUDA=1 -j2`, then
# call the device tool with carry ["build"] and the command
# `bash scripts/gpu-check.sh`. On the GPU machine `make test-gpu` rebuilds
# whatever make thinks stale (it needs nvcc, mpicc and OpenBLAS's cblas.h,
# not jansson, liburing or CUnit); if that build fails, the carried
# build/gpu-tests/test_cuda_ops runs as it is (marked "prebuilt").
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
LOGDIR=${OUT:-$BUILD/gpu-logs}
mkdir -p "$LOGDIR"
[ -d /usr/local/cuda/bin ] && PATH="$PATH:/usr/local/cuda/bin"
[ -d /usr/local/cuda/lib64 ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
rows=()

echo "== nvidia-smi"
nvidia-smi 2>&1 | tee "$LOGDIR/nvidia-smi.log"
smi_rc=${PIPESTATUS[0]}
rows+=("nvidia-smi|$smi_rc|$LOGDIR/nvidia-smi.log")

echo "== make test-gpu"
make --no-print-directory test-gpu 2>&1 | tee "$LOGDIR/test-gpu.log"
rc=${PIPESTATUS[0]}
how="make test-gpu"
if ! grep -q '^test_cuda_ops:' "$LOGDIR/test-gpu.log"; then
    # the test never started: the build failed
    if [ -x "$BUILD/gpu-tests/test_cuda_ops" ]; then
        echo "== build failed; running the carried binary"
        "$BUILD/gpu-tests/test_cuda_ops" 2>&1 | tee "$LOGDIR/test-gpu-prebuilt.log"
        rc=${PIPESTATUS[0]}
        how="test_cuda_ops (prebuilt)"
    else
        rc=2
    fi
else
    # make turns any failing recipe into 2; read the test's own verdict
    if grep -q '^SKIP:' "$LOGDIR/test-gpu.log"; then rc=77
    elif grep -q '^== .* 0 failed ==$' "$LOGDIR/test-gpu.log"; then rc=0
    else rc=1; fi
fi
rows+=("$how|$rc|$LOGDIR/test-gpu.log")

echo
echo "== summary"
printf '%-28s %-6s %s\n' step status log
for r in "${rows[@]}"; do
    IFS='|' read -r name st log <<<"$r"
    printf '%-28s %-6s %s\n' "$name" "$st" "$log"
done
grep -hE '^(FAIL|SKIP|==)' "$LOGDIR"/test-gpu*.log | tail -20
exit "$rc"
