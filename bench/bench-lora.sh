#!/usr/bin/env bash
# LoRA's training throughput against full fine-tuning of the same model, measured in the same
# run (alternating, median of each): how much of a step the frozen base saves (no weight-gradient
# products, no optimizer over it) and what the adapters cost. Also the model-state bytes per rank
# from the step line.
#   model: GPT-2 L=6, C=384, 6 heads, vocab 50304, T=64, B=4, fp32, 1 rank, 2 threads;
#   LoRA r=8 on c_attn (PEFT's default for GPT-2) and on every linear
# Usage: bench/bench-lora.sh [steps=20] [runs=3]   (BUILD=build by default)
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
steps=${1:-20}
runs=${2:-3}
threads=${BENCH_THREADS:-2}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$BUILD/zinc-data" --ext .c,.h,.md -o "$tmp/corpus.bin" core kernels engine models include tools >/dev/null
cat > "$tmp/bench.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 4,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.0}},
  "steps_per_print": 1000,
  "model": {"type": "gpt2", "n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": 50304, "block_size": 64},
  "data": {"train": ["$tmp/corpus.bin"]},
  "train": {"max_steps": $steps, "threads": $threads},
  "device": "cpu"
}
JSON
one() { # NAME SETS...: mean tok/s of the run, and its state line
    local name=$1; shift
    OMP_NUM_THREADS=$threads "$BUILD/zinc-train" "$tmp/bench.json" "$@" > "$tmp/$name.log" 2>&1 || { cat "$tmp/$name.log"; exit 1; }
    sed -n 's/.*mean \([0-9.]*\) tok\/s.*/\1/p' "$tmp/$name.log"
}
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
QV=(--set 'model.lora={"r":8,"alpha":16}')
ALL=(--set 'model.lora={"r":8,"alpha":16,"target_modules":["c_attn","c_proj","c_fc"]}')
: > "$tmp/full"; : > "$tmp/qv"; : > "$tmp/all"
for i in $(seq "$runs"); do
    one full >> "$tmp/full"
    one qv "${QV[@]}" >> "$tmp/qv"
    one all "${ALL[@]}" >> "$tmp/all"
done
f=$(median < "$tmp/full"); q=$(median < "$tmp/qv"); a=$(median < "$tmp/all")
state() { grep -m1 -o 'state [0-9.]* MiB/rank[^|]*' "$tmp/$1.log" || echo "state ?"; }
echo "full fine-tuning: $f tok/s (runs: $(paste -sd' ' "$tmp/full")), $(state full)"
echo "LoRA r=8 c_attn:  $q tok/s (runs: $(paste -sd' ' "$tmp/qv")), $(state qv)"
echo "LoRA r=8 all:     $a tok/s (runs: $(paste -sd' ' "$tmp/all")), $(state all)"
awk -v f="$f" -v q="$q" -v a="$a" 'BEGIN { printf "ratio to full fine-tuning: c_attn %.2fx, all linears %.2fx\n", q / f, a / f }'
