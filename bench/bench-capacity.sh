#!/usr/bin/env bash
# Capacity: a GPT whose full model states (16 bytes/param) exceed this
# machine's RAM trains with 2 ranks, ZeRO-3, parameters and optimizer state
# on NVMe (through the aio engine), bf16 storage.
#   model: L=24, C=2560, 20 heads, vocab 50304, T=64, micro-batch 1 -> 2.02 B params
# Usage: bench/bench-capacity.sh [NVME_DIR] [steps=2]    (BUILD=build by default)
# Needs about 28 GB free in NVME_DIR. Prints the trainer's summary (step
# times, peak RSS per rank, storage I/O) and the bandwidth reached.
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/zinc-capacity.XXXXXX")}
steps=${2:-2}
mkdir -p "$dir"
trap 'rm -rf "$dir/rank0" "$dir/rank1" "$dir/cap.json" "$dir/m.jsonl"' EXIT
cat > "$dir/cap.json" <<JSON
{
  "train_micro_batch_size_per_gpu": 1,
  "gradient_clipping": 1.0,
  "steps_per_print": 1,
  "wall_clock_breakdown": true,
  "bf16": {"enabled": true},
  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.1}},
  "zero_optimization": {
    "stage": 3,
    "stage3_max_reuse_distance": 0,
    "stage3_param_persistence_threshold": 100000,
    "sub_group_size": 10000000,
    "offload_optimizer": {"device": "nvme", "nvme_path": "$dir", "buffer_count": 4,
                          "pipeline_read": true, "pipeline_write": true},
    "offload_param": {"device": "nvme", "nvme_path": "$dir"}
  },
  "aio": {"block_size": 1048576, "queue_depth": 32, "intra_op_parallelism": 1},
  "model": {"type": "gpt2", "n_layer": 24, "n_embd": 2560, "n_head": 20, "vocab_size": 50304, "block_size": 64, "recompute": true},
  "data": {"text": ["include", "core"], "tokenizer": "bytes"},
  "train": {"max_steps": $steps, "metrics_file": "$dir/m.jsonl"},
  "device": "cpu"
}
JSON
"$BUILD/zinc-train" "$dir/cap.json" --estimate-memory -n 2
t0=$(date +%s.%N)
"$BUILD/zinc-run" -n 2 "$BUILD/zinc-train" "$dir/cap.json" 2>&1 | tee "$dir/cap.log"
t1=$(date +%s.%N)
awk -v t0="$t0" -v t1="$t1" '
    /^done:/ { for (i = 1; i <= NF; i++) { if ($i == "read,") r = $(i-2); if ($i == "written") w = $(i-2) } }
    END { printf "wall %.1f s for the whole job; storage I/O %.1f GiB read + %.1f GiB written = %.2f GB/s over the job\n",
                 t1 - t0, r, w, (r + w) * 1.073741824 / (t1 - t0) }' "$dir/cap.log"
sed -n 's/.*"step": \([0-9]*\),.*"step_ms": \([0-9.]*\),.*/step \1: \2 ms/p' "$dir/m.jsonl"
