#!/usr/bin/env bash
# The pipeline executor's measured bubble against each schedule's theory on 4 ranks
# (bench_pp_bubble: compute is a sleep of F ms per forward, 2F per backward, so the
# figure is the schedule's and the executor's own cost, not the machine's cores).
# Runs two message sizes (2 KiB: eager; 64 KiB: rendezvous) with Open MPI's shared-memory
# single copy off (as scripts/mpirun.sh runs the tests) and, for 64 KiB, with CMA on.
# Usage: [BUILD=build] bench/bench-pp.sh [micro=8] [F_ms=10] [steps=7]
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
m=${1:-8}; f=${2:-10}; steps=${3:-7}
echo "== single copy off, 2 KiB"
./scripts/mpirun.sh 4 "$BUILD/bench/bench_pp_bubble" "$m" "$f" "$steps" 2
echo "== single copy off, 64 KiB"
./scripts/mpirun.sh 4 "$BUILD/bench/bench_pp_bubble" "$m" "$f" "$steps" 64
echo "== single copy cma, 64 KiB"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
    mpirun --oversubscribe --bind-to none -n 4 --mca btl_vader_single_copy_mechanism cma \
    "$BUILD/bench/bench_pp_bubble" "$m" "$f" "$steps" 64
