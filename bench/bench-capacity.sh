#!/usr/bin/env bash
# Capacity: a GPT whose full model states (16 bytes/param) exceed this
# machine's RAM trains with 2 ranks, ZeRO-3, parameters and optimizer state
# on NVMe (through the aio engine), bf16 storage.
#   model (CAP_LAYERS, CAP_EMBD, CAP_HEADS): by default L=32, C=3200, 25 heads, vocab
#   50304, T=64, micro-batch 1 -> 4.09 B params (L=24, C=2560, 20 heads: 2.02 B)
# Usage: bench/bench-capacity.sh [NVME_DIR] [steps=2]    (BUILD=build by default)
# Needs about 14.5 bytes a parameter free in NVME_DIR (60 GB by default). Measures the
# disk's sequential read and write bandwidth in NVME_DIR first (bench_aio, O_DIRECT,
# the trainer's block size and queue depth), then prints the trainer's summary (step
# times, peak RSS per rank, storage I/O) and, per step, the I/O bound (the bytes the
# ranks read / the read bandwidth + the bytes they wrote / the write bandwidth; rank 0's
# per-step storage bytes from the metrics, times 2) beside the step time.
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/zinc-capacity.XXXXXX")}
steps=${2:-2}
L=${CAP_LAYERS:-32} C=${CAP_EMBD:-3200} H=${CAP_HEADS:-25}
mkdir -p "$dir"
trap 'rm -rf "$dir/rank0" "$dir/rank1" "$dir/cap.json" "$dir/m.jsonl" "$dir/disk.bin"' EXIT
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
  "model": {"type": "gpt2", "n_layer": $L, "n_embd": $C, "n_head": $H, "vocab_size": 50304, "block_size": 64, "recompute": true},
  "data": {"text": ["include", "core"], "tokenizer": "bytes"},
  "train": {"max_steps": $steps, "metrics_file": "$dir/m.jsonl"},
  "device": "cpu"
}
JSON
"$BUILD/zinc-train" "$dir/cap.json" --estimate-memory -n 2
# the disk's bandwidth in the same directory, as the trainer drives it (4 GiB, median of 3)
"$BUILD/bench/bench_aio" -m both -b 1M -q 32 -s 4G -n 3 "$dir/disk.bin" | tee "$dir/disk.txt"
rm -f "$dir/disk.bin"
wbw=$(sed -n 's/^aio write .*median_GBps=\([0-9.]*\).*/\1/p' "$dir/disk.txt")
rbw=$(sed -n 's/^aio read .*median_GBps=\([0-9.]*\).*/\1/p' "$dir/disk.txt")
t0=$(date +%s.%N)
"$BUILD/zinc-run" -n 2 "$BUILD/zinc-train" "$dir/cap.json" 2>&1 | tee "$dir/cap.log"
t1=$(date +%s.%N)
awk -v t0="$t0" -v t1="$t1" '
    /^done:/ { for (i = 1; i <= NF; i++) { if ($i == "read,") r = $(i-2); if ($i == "written") w = $(i-2) } }
    END { printf "wall %.1f s for the whole job; storage I/O %.1f GiB read + %.1f GiB written = %.2f GB/s over the job\n",
                 t1 - t0, r, w, (r + w) * 1.073741824 / (t1 - t0) }' "$dir/cap.log"
sed -n 's/.*"step": \([0-9]*\),.*"step_ms": \([0-9.]*\),.*"storage_read_bytes": \([0-9]*\), "storage_write_bytes": \([0-9]*\).*/\1 \2 \3 \4/p' \
    "$dir/m.jsonl" | awk -v rb="$rbw" -v wb="$wbw" '{
        $3 *= 2; $4 *= 2   # rank 0 writes the metrics: its bytes, times the 2 ranks (ZeRO-3 shards are equal)
        bound = $3 / (rb * 1e9) + $4 / (wb * 1e9)
        printf "step %d: %.1f s; storage %.1f GB read, %.1f GB written; I/O bound at %.2f / %.2f GB/s (read / write): %.1f s; step / bound %.2f\n",
               $1, $2 / 1e3, $3 / 1e9, $4 / 1e9, rb, wb, bound, ($2 / 1e3) / bound }'
