#!/usr/bin/env bash
# Everything the GPU machine checks, in one call (see /work/shared/DEVICE.md):
# nvidia-smi, the GPU checks (scripts/test-gpu.sh) and the GPT-2 124M
# benchmark (bench/bench-gpu.sh); full logs under $OUT (else build-cuda/gpu-logs),
# a short table last.
#
# Prepare here: `make CUDA=1 -j2`, and put the shared libraries the GPU machine
# lacks (liburing, CUnit, OpenBLAS's OpenMP build) into .devlibs/lib. Then the
# device call: carry ["build-cuda", ".devlibs"], command `bash scripts/gpu-check.sh`.
# Nothing is rebuilt there (the machine has no jansson/liburing/CUnit headers).
set -u
cd "$(dirname "$0")/.."
export BUILD=build-cuda
export LOGDIR=${OUT:-$BUILD/gpu-logs}
mkdir -p "$LOGDIR"
[ -d .devlibs/lib ] && export LD_LIBRARY_PATH="$PWD/.devlibs/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d /usr/local/cuda/lib64 ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/usr/local/cuda/lib64"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$LOGDIR/nvidia-smi.log"
what=${GPU_CHECK:-tests,bench}
export ZINC_ATT_TIME=${ZINC_ATT_TIME:-1}
rc=0
if [[ $what == *tests* ]]; then
    ./scripts/test-gpu.sh > "$LOGDIR/test-gpu.log" 2>&1; rc=$?
fi
if [[ $what == *bench* ]]; then
    OUT=$LOGDIR timeout 300 ./bench/bench-gpu.sh "${BENCH_STEPS:-30}" > "$LOGDIR/bench-gpu.log" 2>&1 || rc=1
fi
if [[ $what == *tune* ]]; then # cuBLASLt algorithms chosen by timing (opt-in)
    OUT=$LOGDIR ZINC_CUDA_AUTOTUNE=1 BENCH_TAG=autotune timeout 200 ./bench/bench-gpu.sh "${BENCH_STEPS:-30}" > "$LOGDIR/bench-autotune.log" 2>&1 || rc=1
fi
if [[ $what == *recompute* ]]; then # model.recompute: the memory-saving variant
    OUT=$LOGDIR BENCH_RECOMPUTE=true BENCH_TAG=recompute timeout 200 ./bench/bench-gpu.sh "${BENCH_STEPS:-30}" > "$LOGDIR/bench-recompute.log" 2>&1 || rc=1
fi
if [[ $what == *profile* ]]; then # per-op device times
    OUT=$LOGDIR ZINC_PROFILE_OPS=1 BENCH_TAG=profile timeout 120 ./bench/bench-gpu.sh 10 > "$LOGDIR/bench-profile.log" 2>&1 || rc=1
fi
echo "== summary (rc $rc)"
[ -f "$LOGDIR/test-gpu.log" ] && grep -E "^(FAIL|ok |SKIP|==)|PASS|FAIL|max rel" "$LOGDIR"/*.log | grep -v "^.*:ok " | tail -40
[ -f "$LOGDIR/bench-gpu.log" ] && tail -8 "$LOGDIR/bench-gpu.log"
[ -f "$LOGDIR/bench-gpu-train-profile.log" ] && grep -A24 "op profile" "$LOGDIR/bench-gpu-train-profile.log" | cut -c1-110
[ -f "$LOGDIR/bench-autotune.log" ] && echo "autotune: $(tail -1 "$LOGDIR/bench-autotune.log")"
[ -f "$LOGDIR/bench-recompute.log" ] && echo "recompute: $(tail -1 "$LOGDIR/bench-recompute.log")"
grep -h "^time" "$LOGDIR/ops.log" 2>/dev/null | head -6
exit $rc
