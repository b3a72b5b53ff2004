#!/usr/bin/env bash
# OpenBLAS core selection end to end (zinc/blas.h): programs start on the
# kernels this processor can run, a user's OPENBLAS_CORETYPE wins, and a
# misdetection is corrected by the program re-executing itself, also as an
# MPI rank. A misdetection is made real with the test hook
# ZINC_BLAS_SIMULATE_DETECT=Prescott: the program first loads OpenBLAS's
# Prescott kernels (as Debian 12's OpenBLAS does on processors it does not
# know), then must end up on the processor's own.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
source tests/train/lib.sh
unset OPENBLAS_CORETYPE ZINC_BLAS_AUTO ZINC_BLAS_AUTO_CORE ZINC_BLAS_AUTO_HOST ZINC_BLAS_DETECTED
SG="$BUILD/bench/bench_sgemm"

# The core the processor's flags call for, read from the kernel (not cpuid).
flags=$(grep -m1 '^flags' /proc/cpuinfo) || fail "no flags in /proc/cpuinfo"
has() { [[ " ${flags#*:} " == *" $1 "* ]]; }
want=""
if has avx512f && has avx512bw && has avx512vl && has avx512dq && has avx512cd; then
    if has avx512_bf16; then want="Cooperlake|SapphireRapids"; else want="SkylakeX|Cooperlake|SapphireRapids"; fi
elif has avx2 && has fma; then want="Haswell|Zen|SkylakeX|Cooperlake|SapphireRapids"
fi
echo "processor calls for: ${want:-any core}"

core_of() { sed -n 's/^blas: .*, core \([A-Za-z0-9]*\) (.*/\1/p' <<<"$1"; }
gflops_of() { sed -n 's/.*median_gflops=//p' <<<"$1"; }

# 1. No variable: the running core fits the processor.
out=$("$SG" 256 1 1) || fail "bench_sgemm failed: $out"
echo "default:    $(head -1 <<<"$out")"
core=$(core_of "$out")
[ -n "$core" ] || fail "no blas line in: $out"
[ -z "$want" ] || [[ "$core" =~ ^($want)$ ]] || fail "core $core on a processor that calls for $want"

# 2. A user's setting wins, and says so.
out=$(OPENBLAS_CORETYPE=Haswell "$SG" 256 1 1) || fail "bench_sgemm failed: $out"
echo "user:       $(head -1 <<<"$out")"
[ "$(core_of "$out")" = Haswell ] || fail "OPENBLAS_CORETYPE=Haswell not kept: $out"
grep -q "set by the user" <<<"$out" || fail "user setting not named: $out"

# 3. A misdetection is corrected: the program re-executes on the right core.
out=$(ZINC_BLAS_SIMULATE_DETECT=Prescott "$SG" 256 1 1) || fail "bench_sgemm failed: $out"
echo "misdetect:  $(head -1 <<<"$out")"
core=$(core_of "$out")
if [ -n "$want" ]; then
    [[ "$core" =~ ^($want)$ ]] || fail "misdetection not corrected: core $core, want $want"
    grep -q "selected by zinc: OpenBLAS detected Prescott" <<<"$out" || fail "correction not named: $out"
else
    [ "$core" = Prescott ] || fail "SSE-only processor moved off Prescott: $out"
fi

# 4. ZINC_BLAS_AUTO=0 turns the correction off.
out=$(ZINC_BLAS_AUTO=0 ZINC_BLAS_SIMULATE_DETECT=Prescott "$SG" 256 1 1) || fail "bench_sgemm failed: $out"
grep -q "ZINC_BLAS_AUTO=0" <<<"$out" || fail "ZINC_BLAS_AUTO=0 not named: $out"

# 5. A choice inherited from another host is re-made on this one.
out=$(OPENBLAS_CORETYPE=Sandybridge ZINC_BLAS_AUTO_CORE=Sandybridge ZINC_BLAS_AUTO_HOST=elsewhere.invalid \
      "$SG" 256 1 1) || fail "bench_sgemm failed: $out"
echo "inherited:  $(head -1 <<<"$out")"
[ -z "$want" ] || [[ "$(core_of "$out")" =~ ^($want)$ ]] || fail "inherited core not re-made: $out"

# 6. The corrected kernels are the fast ones (sgemm 512^3, 1 thread; the SSE3
#    kernels run at a quarter of the AVX-512 ones). Best of 3 interleaved
#    medians each, so that other load on a shared machine cannot fake a result.
if [ -n "$want" ]; then
    slow=0; fast=0
    for _ in 1 2 3; do
        s=$(gflops_of "$(OPENBLAS_CORETYPE=Prescott "$SG" 512 1 9)")
        f=$(gflops_of "$(ZINC_BLAS_SIMULATE_DETECT=Prescott "$SG" 512 1 9)")
        slow=$(awk -v a="$slow" -v b="$s" 'BEGIN { print (b > a ? b : a) }')
        fast=$(awk -v a="$fast" -v b="$f" 'BEGIN { print (b > a ? b : a) }')
    done
    echo "sgemm 512^3: Prescott $slow GFLOP/s, corrected $fast GFLOP/s"
    awk -v s="$slow" -v f="$fast" 'BEGIN { exit !(f > 1.5 * s) }' \
        || fail "corrected sgemm ($fast GFLOP/s) not faster than Prescott's ($slow)"
fi

# 7. As MPI ranks under zinc-run: every rank corrects itself before MPI starts,
#    and zinc-train's banner names the core.
shard=$(make_shard)
cfg=$(tiny_config "$shard")
out=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none \
      ZINC_BLAS_SIMULATE_DETECT=Prescott "$BUILD/zinc-run" -n 2 "$BUILD/zinc-train" "$cfg" \
      --set train.max_steps=2 2>&1) || fail "zinc-train under zinc-run failed: $out"
line=$(grep 'info: blas: ' <<<"$out") || fail "no blas line in zinc-train's banner: $out"
echo "zinc-train: $line"
if [ -n "$want" ]; then
    [[ "$(sed -n 's/.*, core \([A-Za-z0-9]*\) (.*/\1/p' <<<"$line")" =~ ^($want)$ ]] \
        || fail "rank 0 not corrected: $line"
fi
grep -q '^done: 2 steps' <<<"$out" || fail "training did not finish: $out"
echo "ok"
