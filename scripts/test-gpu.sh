#!/usr/bin/env bash
# The GPU checks (`make test-gpu`; scripts/gpu-check.sh on the GPU machine):
#   1. every CUDA op against the CPU op (build-cuda/gpu-tests/test_cuda_ops)
#   2. comm on device buffers: nccl with 1 rank, mpi staging with 2 and 4
#      ranks sharing the GPU (build-cuda/gpu-tests/test_comm_gpu)
#   3. training: GPU vs CPU, DP on one GPU, nccl, resume (tests/gpu/test_train_gpu.sh)
# Logs go to $LOGDIR (default $OUT when set, else build-cuda/gpu-logs).
# Exit: 0 all passed, 1 a failure, 77 no GPU visible (nothing run).
set -u
cd "$(dirname "$0")/.."
export BUILD=${BUILD:-build-cuda}
LOGDIR=${LOGDIR:-${OUT:-$BUILD/gpu-logs}}
mkdir -p "$LOGDIR"
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: no GPU visible (nvidia-smi -L failed); the GPU checks did not run"
    exit 77
fi
rows=(); rc=0
step() { # name log command...
    local name=$1 log=$2; shift 2
    local t0=$SECONDS
    timeout "${GPU_STEP_TIMEOUT:-240}" "$@" > "$LOGDIR/$log" 2>&1
    local r=$?
    rows+=("$(printf '%-34s %-5s %4ss  %s' "$name" "$([ $r = 0 ] && echo PASS || echo FAIL:$r)" $((SECONDS - t0)) "$log")")
    [ $r = 0 ] || rc=1
    tail -4 "$LOGDIR/$log"
}
step "cuda ops vs cpu" ops.log "$BUILD/gpu-tests/test_cuda_ops"
if [ -x "$BUILD/gpu-tests/test_comm_gpu" ]; then
    step "comm nccl x1" comm-nccl1.log ./scripts/mpirun.sh 1 "$BUILD/gpu-tests/test_comm_gpu" nccl
    step "comm mpi staging x2 (one GPU)" comm-mpi2.log ./scripts/mpirun.sh 2 "$BUILD/gpu-tests/test_comm_gpu" mpi
    step "comm mpi staging x4 (one GPU)" comm-mpi4.log ./scripts/mpirun.sh 4 "$BUILD/gpu-tests/test_comm_gpu" mpi
else
    rows+=("comm tests                         FAIL  build-cuda/gpu-tests/test_comm_gpu missing"); rc=1
fi
step "training gpu vs cpu, dp, resume" train.log ./tests/gpu/test_train_gpu.sh
echo
echo "== GPU checks"
printf '%s\n' "${rows[@]}"
exit $rc
