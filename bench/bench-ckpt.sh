#!/usr/bin/env bash
# Checkpoint save/load throughput per rank against the raw sequential write/read bandwidth
# of the same file system through the same I/O path (zinc_aio), with 1 and 2 ranks
# (bench/bench_ckpt.c says what each number measures). Target: save/raw_write and
# load/raw_read >= 0.8. Medians of RUNS runs; GB/s = 1e9 B/s per rank.
# Usage: bench/bench-ckpt.sh [-s SIZE=1G per rank] [-r RUNS=3] [-k "RANKS"="1 2"]
#                            [-x "bench_ckpt options", e.g. -x -U: unaligned memory, staged path]
#                            [DIR=a mktemp dir under /tmp]
# BUILD=build by default. A DIR given must exist; what the bench writes there is removed.
set -euo pipefail
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
size=1G runs=3 ranks="1 2" extra=""
while getopts "s:r:k:x:" opt; do
    case $opt in
    s) size=$OPTARG ;; r) runs=$OPTARG ;; k) ranks=$OPTARG ;; x) extra=$OPTARG ;;
    *) sed -n "2,9p" "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
bin=$BUILD/bench/bench_ckpt
[ -x "$bin" ] || { echo "bench-ckpt: $bin missing (run make)" >&2; exit 1; }
if [ $# -ge 1 ]; then
    dir=$(mktemp -d "$1/zinc-bench-ckpt.XXXXXX")
else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/zinc-bench-ckpt.XXXXXX")
fi
trap 'rm -rf "$dir"' EXIT
fs=$(df -T "$dir" | awk 'NR==2 {print $2 " on " $1}')
echo "dir $dir ($fs), $size per rank, median of $runs runs, GB/s per rank (1e9 B/s)"
results=()
for n in $ranks; do
    # shellcheck disable=SC2086
    out=$(scripts/mpirun.sh "$n" "$bin" -s "$size" -n "$runs" $extra "$dir")
    echo "$out" | sed 's/^/  /'
    results+=("$(echo "$out" | grep '^ranks=')")
done
echo
printf "%-6s %10s %10s %10s %10s %12s %12s\n" ranks raw_write save raw_read load save/raw_wr load/raw_rd
for r in "${results[@]}"; do
    echo "$r" | tr ' ' '\n' | awk -F= '{v[$1]=$2} END {
        printf "%-6s %10s %10s %10s %10s %12s %12s\n", v["ranks"], v["raw_write"], v["save"], v["raw_read"],
               v["load"], v["save/raw_write"], v["load/raw_read"] }'
done
