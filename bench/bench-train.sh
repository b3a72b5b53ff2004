#!/usr/bin/env bash
# Training throughput of the reference CPU benchmark model, as a fraction of
# this machine's sgemm peak measured in the same run.
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
sg_before=$(OPENBLAS_NUM_THREADS=$threads "$BUILD/bench/bench_sgemm" 2048 "$threads" | sed 's/.*median_gflops=//')
OMP_NUM_THREADS=$threads "$BUILD/zinc-run" -n 1 "$BUILD/zinc-train" "$tmp/bench.json" > "$tmp/train.log" 2>&1 \
    || { cat "$tmp/train.log"; exit 1; }
sg_after=$(OPENBLAS_NUM_THREADS=$threads "$BUILD/bench/bench_sgemm" 2048 "$threads" | sed 's/.*median_gflops=//')
# median tokens/s over steps after the first 5 (warm-up)
tok=$(sed -n 's/.*"tokens_per_s": \([^,]*\),.*/\1/p' "$tmp/m.jsonl" | tail -n +6 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
ms=$(sed -n 's/.*"step_ms": \([^,]*\),.*/\1/p' "$tmp/m.jsonl" | tail -n +6 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
awk -v tok="$tok" -v ms="$ms" -v s1="$sg_before" -v s2="$sg_after" -v th="$threads" 'BEGIN {
    L = 6; C = 384; V = 50304; T = 64
    fpt = 6 * (L * 12 * C * C + V * C) + 12 * L * T * C     # training FLOPs per token
    peak = (s1 + s2) / 2
    gf = tok * fpt / 1e9
    printf "model GPT-2 L=6 C=384 H=6 V=50304 B=4 T=64 fp32, 1 rank x %d threads\n", th
    printf "sgemm 2048^3 peak: %.1f GFLOP/s (before %.1f, after %.1f)\n", peak, s1, s2
    printf "training: %.0f tokens/s, %.1f ms/step (median), %.1f MFLOP/token\n", tok, ms, fpt / 1e6
    printf "model FLOPs: %.1f GFLOP/s = %.1f%% of sgemm peak\n", gf, 100 * gf / peak
}'
