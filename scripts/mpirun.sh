#!/usr/bin/env bash
# mpirun with the flags zinc's tests need on a small shared machine:
# oversubscription (more ranks than cores), root allowed (CI runs as root),
# and no single-copy shared-memory mechanism (blocked in many containers).
# Usage: scripts/mpirun.sh N PROGRAM ARGS...
set -eu
n=$1; shift
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
exec mpirun --oversubscribe --bind-to none -n "$n" "$@"
