#!/usr/bin/env bash
# Tensor and pipeline parallelism against data parallelism on the same ranks,
# measured in the same run: the CPU bench model (GPT-2 L=6, C=384, 6 heads,
# vocab 50304, T=64, fp32) on 2 ranks x 1 thread, global batch 8 sequences:
#   DP 2            (the reference: micro 4 per rank, ZeRO-1)
#   TP 2            (one TP group: micro 8, the layers split over the ranks)
#   TP 2 + SP       (sequence parallelism)
#   PP 2 m4 / m8    (two stages of 4 layers, 1f1b over 4 micro-batches of 2, or 8 of 1)
#   PP 2 il m8      (interleaved, 2 chunks per stage, 8 micro-batches of 1)
#   PP 2 blk m8     (1f1b, pipeline.partition "type:block": 3 blocks per stage; the default
#                   "parameters" puts the embedding, whose wte is most of the parameters,
#                   alone on stage 0, while the tied head's compute sits on stage 1)
# Prints the median tokens/s after warm-up, the ratio to DP 2, each rank's
# model-state bytes (the largest rank) and the bytes one rank moves per step
# (DP group, TP group, pipeline group), and the pipeline's measured bubble.
# Usage: bench/bench-parallel.sh [steps=30] [vocab=50304]   (BUILD=build by default; a small
# vocabulary, e.g. 4096, makes the head cost about one block, so the stages balance)
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
steps=${1:-30}
vocab=${2:-50304}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$BUILD/zinc-data" --ext .c,.h,.md -o "$tmp/corpus.bin" core kernels engine models include tools >/dev/null
cat > "$tmp/bench.json" <<JSON
{
  "train_batch_size": 8,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.0}},
  "steps_per_print": 10,
  "zero_optimization": {"stage": 1},
  "model": {"type": "gpt2", "n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": $vocab, "block_size": 64},
  "data": {"train": ["$tmp/corpus.bin"]},
  "train": {"max_steps": $steps, "threads": 1},
  "device": "cpu"
}
JSON
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { sed -n "s/.*\"$1\": \([0-9.e+-]*\).*/\1/p" "$2"; }
one() { # name sets...
    local name=$1; shift
    OMP_NUM_THREADS=1 ./scripts/mpirun.sh 2 "$BUILD/zinc-train" "$tmp/bench.json" \
        --set train.metrics_file="$tmp/$name.jsonl" "$@" > "$tmp/$name.log" 2>&1 \
        || { cat "$tmp/$name.log"; exit 1; }
    local tok state dpb tpb ppb bub
    tok=$(col tokens_per_s "$tmp/$name.jsonl" | tail -n +6 | median)
    state=$(col model_state_bytes "$tmp/$name.jsonl" | tail -1)
    dpb=$(col comm_bytes "$tmp/$name.jsonl" | tail -1)
    tpb=$(col tp_comm_bytes "$tmp/$name.jsonl" | tail -1)
    ppb=$(col pp_comm_bytes "$tmp/$name.jsonl" | tail -1)
    bub=$(col pp_bubble "$tmp/$name.jsonl" | tail -n +6 | median)
    echo "$name $tok $state $dpb $tpb $ppb $bub"
}
pp="--set pipeline.stages=2 --set train_micro_batch_size_per_gpu"
{
    one dp2
    one tp2 --set tensor_parallel.autotp_size=2
    one tp2_sp --set tensor_parallel.autotp_size=2 --set tensor_parallel.sequence_parallel=true
    one pp2_m4 $pp=2
    one pp2_m8 $pp=1
    one pp2_il_m8 $pp=1 --set pipeline.schedule=interleaved --set pipeline.virtual_stages=2
    one pp2_blk_m8 $pp=1 --set pipeline.partition=type:block
} > "$tmp/res"
awk -v steps="$steps" -v vocab="$vocab" 'NR == 1 { ref = $2 }
    { r[NR] = $0; tok[NR] = $2 }
    END {
        printf "model GPT-2 L=6 C=384 H=6 V=%d T=64 fp32, global batch 8, 2 ranks x 1 thread, %d steps (median after 5)\n", vocab, steps
        printf "%-10s %10s %8s %14s %12s %12s %12s %7s\n", "layout", "tokens/s", "vs DP 2", "state MiB/rank", "DP MiB/step",
               "TP MiB/step", "PP MiB/step", "bubble"
        for (i = 1; i <= NR; i++) {
            split(r[i], f, " ")
            printf "%-10s %10.0f %8.3f %14.1f %12.2f %12.2f %12.2f %7.3f\n", f[1], f[2], f[2] / ref, f[3] / 1048576,
                   f[4] / 1048576, f[5] / 1048576, f[6] / 1048576, f[7]
        }
    }' "$tmp/res"
