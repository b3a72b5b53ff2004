#!/usr/bin/env bash
# Training throughput of the reference CPU benchmark model, as a fraction of
# two ceilings measured in the same run: OpenBLAS's sgemm (on the kernels
# zinc selects for this processor, zinc/blas.h) and the processor's
# theoretical fp32 FMA peak (bench_peak: threads x measured clock x lanes x 2
# x FMA pipes). A ratio above 1 against either means a measurement is wrong:
# the bench then fails instead of printing it. bf16 runs are held against
# the bf16 dot-product peak (twice the fp32 FMA peak where the processor has
# AVX512_BF16) and also given as a multiple of the fp32 sgemm rate.
#   model: GPT-2 L=6, C=384, 6 heads, vocab 50304, T=64, B=4, fp32, 1 rank, 2 threads
# Usage: bench/bench-train.sh [steps=40]   (BUILD=build by default;
#        BENCH_PREC=bf16 for bf16 storage, activations in bf16)
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
steps=${1:-40}
threads=${BENCH_THREADS:-2}
bf=false; [ "${BENCH_PREC:-fp32}" = bf16 ] && bf=true
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$BUILD/zinc-data" --ext .c,.h,.md -o "$tmp/corpus.bin" core kernels engine models include tools >/dev/null
cat > "$tmp/bench.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 4,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.0}},
  "steps_per_print": 10,
  "bf16": {"enabled": $bf},
  "model": {"type": "gpt2", "n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": 50304, "block_size": 64},
  "data": {"train": ["$tmp/corpus.bin"]},
  "train": {"max_steps": $steps, "metrics_file": "$tmp/m.jsonl", "threads": $threads},
  "device": "cpu"
}
JSON
sgemm() { OPENBLAS_NUM_THREADS=$threads "$BUILD/bench/bench_sgemm" 2048 "$threads"; }
sg_out=$(sgemm)
blas=$(sed -n 's/^blas: //p' <<<"$sg_out")
sg_before=$(sed -n 's/.*median_gflops=//p' <<<"$sg_out")
peak_line=$("$BUILD/bench/bench_peak" "$threads")
OMP_NUM_THREADS=$threads "$BUILD/zinc-run" -n 1 "$BUILD/zinc-train" "$tmp/bench.json" > "$tmp/train.log" 2>&1 \
    || { cat "$tmp/train.log"; exit 1; }
sg_after=$(sgemm | sed -n 's/.*median_gflops=//p')
# median tokens/s over steps after the first 5 (warm-up)
tok=$(sed -n 's/.*"tokens_per_s": \([^,]*\),.*/\1/p' "$tmp/m.jsonl" | tail -n +6 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
ms=$(sed -n 's/.*"step_ms": \([^,]*\),.*/\1/p' "$tmp/m.jsonl" | tail -n +6 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
field() { sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p" <<<"$peak_line"; }
awk -v tok="$tok" -v ms="$ms" -v s1="$sg_before" -v s2="$sg_after" -v th="$threads" -v bf="$bf" \
    -v theory="$(field theory_gflops)" -v ghz="$(field clock_ghz)" -v isa="$(field isa)" \
    -v lanes="$(field lanes)" -v pipes="$(field fma_pipes)" -v blas="$blas" 'BEGIN {
    L = 6; C = 384; V = 50304; T = 64
    fpt = 6 * (L * 12 * C * C + V * C) + 12 * L * T * C     # training FLOPs per token
    sg = (s1 + s2) / 2
    gf = tok * fpt / 1e9
    printf "model GPT-2 L=6 C=384 H=6 V=50304 B=4 T=64 %s, 1 rank x %d threads\n", bf == "true" ? "bf16" : "fp32", th
    printf "blas: %s\n", blas
    printf "fp32 FMA peak: %.1f GFLOP/s (%s, %d threads x %.2f GHz x %d lanes x 2 x %d pipes)\n", theory, isa, th, ghz, lanes, pipes
    printf "sgemm 2048^3: %.1f GFLOP/s (before %.1f, after %.1f) = %.1f%% of the FMA peak\n", sg, s1, s2, 100 * sg / theory
    printf "training: %.0f tokens/s, %.1f ms/step (median), %.1f MFLOP/token = %.1f GFLOP/s\n", tok, ms, fpt / 1e6, gf
    bad = ""
    if (sg > theory) bad = sprintf("sgemm (%.1f GFLOP/s) above the FMA peak (%.1f): a measurement is wrong", sg, theory)
    if (bf != "true") {
        if (gf > sg) bad = sprintf("training (%.1f GFLOP/s) above the sgemm rate (%.1f): the sgemm reference is wrong", gf, sg)
        if (gf > theory) bad = sprintf("training (%.1f GFLOP/s) above the FMA peak (%.1f): a measurement is wrong", gf, theory)
        if (bad == "") printf "model FLOPs: %.1f%% of sgemm, %.1f%% of the fp32 FMA peak\n", 100 * gf / sg, 100 * gf / theory
    } else {
        bpeak = theory * (isa == "avx512-bf16" ? 2 : 1)
        if (gf > bpeak) bad = sprintf("bf16 training (%.1f GFLOP/s) above the bf16 peak (%.1f): a measurement is wrong", gf, bpeak)
        if (bad == "") printf "model FLOPs: %.1f%% of the bf16 peak (%.1f GFLOP/s), %.2fx the fp32 sgemm rate\n", 100 * gf / bpeak, bpeak, gf / sg
    }
    if (bad != "") { printf "bench-train: FAILED: %s\n", bad; exit 1 }
}'
