#!/usr/bin/env bash
# Sequential write and read throughput of the aio engine against fio
# (ioengine=io_uring, direct=1, one job) on the same file, block size, queue
# depth and size, runs interleaved (aio write, fio write, aio read, fio read),
# medians of R runs, and the ratio aio/fio. Target: >= 0.95 for both.
# Usage: bench/bench-aio.sh [-b BLOCK=1M] [-q "QDS"="8 32"] [-s SIZE=1G] [-t THREADS=1]
#                           [-r RUNS=3] [-p FILE=${TMPDIR:-/tmp}/zinc-bench-aio.bin]
# BUILD=build by default; BENCH_AIO overrides the bench_aio binary. Installs
# fio with apt-get when it is missing. The file is removed at the end.
set -euo pipefail
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
bs=1M qds="8 32" size=1G threads=1 runs=3 file="${TMPDIR:-/tmp}/zinc-bench-aio.bin"
while getopts "b:q:s:t:r:p:" opt; do
    case $opt in
    b) bs=$OPTARG ;; q) qds=$OPTARG ;; s) size=$OPTARG ;; t) threads=$OPTARG ;;
    r) runs=$OPTARG ;; p) file=$OPTARG ;; *) sed -n '2,9p' "$0"; exit 2 ;;
    esac
done
bin=${BENCH_AIO:-$BUILD/bench/bench_aio}
[ -x "$bin" ] || { echo "bench-aio: $bin missing (make, or set BENCH_AIO)" >&2; exit 1; }
if ! command -v fio >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "bench-aio: installing fio" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fio >&2 \
        || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fio >&2; }
fi

bytes() { # 1M -> 1048576 (binary suffixes, as bench_aio and fio use them)
    local v=${1%%[KkMmGg]*} u=${1#"${1%%[KkMmGg]*}"}
    case ${u:0:1} in K|k) echo $((v << 10)) ;; M|m) echo $((v << 20)) ;; G|g) echo $((v << 30)) ;; *) echo "$v" ;; esac
}
bs_b=$(bytes "$bs"); size_b=$(bytes "$size")
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

fio_gbps() { # rw qd [extra fio options] -> GB/s (1e9 B/s)
    local rw=$1 qd=$2 out; shift 2
    out=$(fio --name=zinc-aio --filename="$file" --ioengine=io_uring --direct=1 --rw="$rw" --bs="$bs_b" \
              --iodepth="$qd" --size="$size_b" --numjobs=1 "$@" --output-format=json 2>/dev/null)
    if command -v jq >/dev/null; then
        echo "$out" | jq -r ".jobs[0].$rw.bw_bytes" | awk '{printf "%.3f", $1 / 1e9}'
    else
        echo "$out" | python3 -c "import json,sys; print('%.3f' % (json.load(sys.stdin)['jobs'][0]['$rw']['bw_bytes'] / 1e9))"
    fi
}
aio_gbps() { # write|read qd [extra bench_aio options] -> GB/s
    local rw=$1 qd=$2; shift 2
    "$bin" -m "$rw" -b "$bs_b" -q "$qd" -s "$size_b" -t "$threads" -n 1 "$@" "$file" |
        sed 's/.*median_GBps=\([^ ]*\).*/\1/'
}

trap 'rm -f "$file"' EXIT
fs=$(df -T "$(dirname "$file")" | awk 'NR==2 {print $2 " on " $1}')
echo "file $file ($fs), block $bs_b B, size $size_b B, aio threads $threads, median of $runs runs, GB/s = 1e9 B/s"
echo "  aio      : bench_aio, one transfer of the whole size from one buffer (the checkpoint/offload pattern)"
echo "  fio      : ioengine=io_uring direct=1 numjobs=1, same bs/iodepth/size/file"
echo "  aio-ring : bench_aio -B bs*qd: two async transfers cycling through a bs*qd buffer, fio's memory pattern"
echo "  fio-fixed: fio --fixedbufs (buffers registered once; reference only)"
for qd in $qds; do
    "$bin" -m write -b "$bs_b" -q "$qd" -s "$size_b" -t "$threads" -n 1 "$file" >/dev/null # lay out the file
    ring=$((bs_b * qd)); [ $ring -lt $((2 * bs_b)) ] && ring=$((2 * bs_b))
    declare -A v=()
    for _ in $(seq "$runs"); do
        for rw in write read; do
            v[aio,$rw]+=" $(aio_gbps $rw "$qd")"
            v[fio,$rw]+=" $(fio_gbps $rw "$qd")"
            v[aioring,$rw]+=" $(aio_gbps $rw "$qd" -B $ring)"
            v[fiofixed,$rw]+=" $(fio_gbps $rw "$qd" --fixedbufs)"
        done
    done
    for rw in write read; do
        am=$(echo "${v[aio,$rw]}" | median); fm=$(echo "${v[fio,$rw]}" | median)
        rm_=$(echo "${v[aioring,$rw]}" | median); xm=$(echo "${v[fiofixed,$rw]}" | median)
        awk -v rw=$rw -v qd="$qd" -v am="$am" -v fm="$fm" -v rm="$rm_" -v xm="$xm" 'BEGIN {
            printf "qd %-3s %-5s aio %6.3f  fio %6.3f  aio/fio %.3f | aio-ring %6.3f  aio-ring/fio %.3f | fio-fixed %6.3f\n",
                   qd, rw, am, fm, am / fm, rm, rm / fm, xm }'
        echo "          runs: aio${v[aio,$rw]} | fio${v[fio,$rw]} | aio-ring${v[aioring,$rw]} | fio-fixed${v[fiofixed,$rw]}"
    done
    unset v
done
