#!/usr/bin/env bash
# GPT-2 124M training throughput on one GPU, against the card's bf16 matmul
# rate measured in the same run (bench/bench_gpu_peak.cu).
#   model: 12 layers, C=768, 12 heads, vocab 50304, T=1024, B=16, bf16 params
#   with fp32 master and Adam state, ZeRO 0, one rank
# Prints tokens/s, ms/step, MFU, peak device memory and the card.
# Usage: bench/bench-gpu.sh [steps=30]   (BUILD=build-cuda by default; needs a GPU)
set -eu
BUILD=${BUILD:-build-cuda}
cd "$(dirname "$0")/.."
steps=${1:-30}
prec=${BENCH_PREC:-bf16}
recompute=${BENCH_RECOMPUTE:-false} # model.recompute: less activation memory, more compute
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
"$BUILD/bench/bench_gpu_peak" > "$tmp/peak.log" 2>&1 || { cat "$tmp/peak.log"; exit 1; }
peak=$(sed -n 's/^PEAK bf16_tflops=\([^ ]*\).*/\1/p' "$tmp/peak.log")
"$BUILD/zinc-data" --ext .c,.h,.md,.cu,.sh -o "$tmp/corpus.bin" core kernels engine models include \
    tools comm checkpoint io data tests bench >/dev/null
bf=false; [ "$prec" = bf16 ] && bf=true
cat > "$tmp/gpt2.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 16,
  "gradient_clipping": 1.0,
  "optimizer": {"type": "AdamW", "params": {"lr": 6e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}},
  "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10, "warmup_max_lr": 6e-4, "warmup_type": "linear"}},
  "steps_per_print": 5,
  "bf16": {"enabled": $bf},
  "model": {"type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50304, "block_size": 1024, "recompute": $recompute},
  "data": {"train": ["$tmp/corpus.bin"]},
  "train": {"max_steps": $steps, "metrics_file": "$tmp/m.jsonl"},
  "device": "cuda",
  "comm_backend": "mpi"
}
JSON
./scripts/mpirun.sh 1 "$BUILD/zinc-train" "$tmp/gpt2.json" > "$tmp/train.log" 2>&1 \
    || { cat "$tmp/train.log"; exit 1; }
tag=${BENCH_TAG:-$prec}
[ -n "${OUT:-}" ] && cp "$tmp/train.log" "$OUT/bench-gpu-train-$tag.log" && cp "$tmp/peak.log" "$OUT/bench-gpu-peak.log"
med() { sed -n "s/.*\"$1\": \\([^,}]*\\)[,}].*/\\1/p" "$tmp/m.jsonl" | tail -n +6 | sort -g |
        awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
tok=$(med tokens_per_s); ms=$(med step_ms); tf=$(med model_tflops)
mem=$(sed -n 's/.*"device_mem_peak": \([0-9]*\).*/\1/p' "$tmp/m.jsonl" | sort -n | tail -1)
first=$(sed -n 's/.*"loss": \([^,]*\),.*/\1/p' "$tmp/m.jsonl" | head -1)
last=$(sed -n 's/.*"loss": \([^,]*\),.*/\1/p' "$tmp/m.jsonl" | tail -1)
grep -E '^(bf16|fp32|d2d)' "$tmp/peak.log"
awk -v card="$card" -v tok="$tok" -v ms="$ms" -v tf="$tf" -v peak="$peak" -v mem="$mem" \
    -v a="$first" -v b="$last" -v prec="$prec" -v n="$steps" 'BEGIN {
    printf "gpt2-124m %s on %s: %.0f tokens/s | %.1f ms/step | %.1f model TFLOP/s = MFU %.1f%% of measured bf16 matmul %.1f TFLOP/s | peak device memory %.2f GiB | loss %s -> %s over %d steps (median of steps 6-%d)\n",
        prec, card, tok, ms, tf, 100 * tf / peak, peak, mem / 1073741824, a, b, n, n }'
