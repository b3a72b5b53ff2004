#!/usr/bin/env bash
# zinc's Llama family (models/llama.c) against an independent float64 reference
# (tests/models/llama_ref.py, numpy, written from transformers' modeling_llama), and its
# parallel layouts against the single-rank run:
#  - numerics: for grouped-query (NKV < NH), multi-query (NKV 1) and multi-head attention,
#    head sizes 16, 32, 64 and 128, tied and untied heads, Qwen2's q/k/v biases, rope_theta
#    1e4 and 1e6 and Llama-3's rope_scaling: zinc's fp32 loss of a micro-batch equals the
#    reference's within 1e-5 (relative), and its gradients of every tensor equal the
#    reference's central finite differences (6 entries each, the 2 largest among them)
#  - layouts (through zinc-train, on a token shard): DP 2 x ZeRO stages 0-3, TP 2 with and
#    without sequence parallelism, TP 2 x DP 2 at ZeRO-3, 2 pipeline stages (1F1B and
#    interleaved), CPU optimizer offload: the losses of 12 steps equal the single-rank
#    run's within 1e-5 (fp32); bf16 within 2e-2 of the fp32 run
#  - model.recompute: bitwise the same losses (alone, TP 2 + SP, bf16), fewer activation bytes
#  - resume: saved at DP 2 / ZeRO-3, resumed at TP 2 / ZeRO-1: equal to the uninterrupted run
#  - bad shapes are one line, exit 2
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
PY=$(./scripts/pyref.sh "$BUILD/pyref") || { echo "SKIP: the numpy reference could not be installed (scripts/pyref.sh: no python3 venv or package index)"; exit 77; }
DUMP="$BUILD/tests/models/prog_llama_dump"

# --- numerics against the float64 reference ---
case_cfg() { # NAME MODEL-JSON
    cat > "$TMP/$1.json" <<JSON
{"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
 "model": $2, "data": {"text": ["README.md"]}, "device": "cpu"}
JSON
}
case_cfg gqa '{"type": "llama", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "intermediate_size": 96,
               "vocab_size": 256, "block_size": 16, "tie_word_embeddings": false, "rms_norm_eps": 1e-5}'
case_cfg qwen '{"type": "llama", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 1, "intermediate_size": 80,
                "vocab_size": 256, "block_size": 16, "tie_word_embeddings": true, "attention_bias": true,
                "rope_theta": 1000000, "rms_norm_eps": 1e-6}'
case_cfg llama3 '{"type": "llama", "n_layer": 1, "n_embd": 64, "n_head": 2, "n_kv_head": 2, "intermediate_size": 64,
                  "vocab_size": 256, "block_size": 24, "tie_word_embeddings": false, "rope_theta": 500000,
                  "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
                                   "original_max_position_embeddings": 16}}'
case_cfg hs64 '{"type": "llama", "n_layer": 1, "n_embd": 128, "n_head": 2, "n_kv_head": 1, "intermediate_size": 64,
                "vocab_size": 256, "block_size": 12, "tie_word_embeddings": false}'
case_cfg hs128 '{"type": "llama", "n_layer": 1, "n_embd": 128, "n_head": 1, "intermediate_size": 48,
                 "vocab_size": 256, "block_size": 8, "tie_word_embeddings": true, "attention_bias": true}'
for c in gqa qwen llama3 hs64 hs128; do
    OMP_NUM_THREADS=1 $MPIRUN 1 "$DUMP" "$TMP/$c.json" "$TMP/$c.st" > "$TMP/$c.out" 2>&1 \
        || { cat "$TMP/$c.out"; fail "$c: prog_llama_dump failed"; }
    "$PY" tests/models/llama_ref.py "$TMP/$c.json" "$TMP/$c.st" > "$TMP/$c.ref" 2>&1 \
        || { cat "$TMP/$c.ref"; fail "$c: zinc's Llama differs from the float64 reference"; }
    echo "$c: $(tr '\n' ' ' < "$TMP/$c.ref")"
done
# documents packed in the rows (instruction data): positions restart per document,
# attention stays inside it, masked targets take no loss; the reference applies
# position_ids and a block-diagonal causal mask
for c in gqa llama3; do
    OMP_NUM_THREADS=1 $MPIRUN 1 "$DUMP" "$TMP/$c.json" "$TMP/$c.docs.st" docs > "$TMP/$c.out" 2>&1 \
        || { cat "$TMP/$c.out"; fail "$c docs: prog_llama_dump failed"; }
    "$PY" tests/models/llama_ref.py "$TMP/$c.json" "$TMP/$c.docs.st" > "$TMP/$c.ref" 2>&1 \
        || { cat "$TMP/$c.ref"; fail "$c docs: zinc's Llama on packed documents differs from the float64 reference"; }
    echo "$c, packed documents: $(tr '\n' ' ' < "$TMP/$c.ref")"
done

# --- layouts against the single-rank run ---
shard=$(make_shard)
cfg="$TMP/train.json"
cat > "$cfg" <<JSON
{
  "train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "steps_per_print": 1000,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.1}},
  "model": {"type": "llama", "n_layer": 4, "n_embd": 32, "n_head": 4, "n_kv_head": 2, "intermediate_size": 64,
            "vocab_size": 256, "block_size": 16, "tie_word_embeddings": false},
  "data": {"train": ["$shard"]},
  "train": {"max_steps": 12},
  "device": "cpu"
}
JSON
S3="--set zero_optimization.stage3_param_persistence_threshold=0 --set zero_optimization.stage3_max_reuse_distance=0"
run ref 1
for stage in 0 1 2 3; do
    run "dp2_s$stage" 2 --set zero_optimization.stage=$stage $S3
    check_close "dp2_s$stage" ref 1e-5
done
run tp2 2 --set tensor_parallel.autotp_size=2
check_close tp2 ref 1e-5
run tp2_sp 2 --set tensor_parallel.autotp_size=2 --set tensor_parallel.sequence_parallel=true
check_close tp2_sp ref 1e-5
run tp2_dp2_s3 4 --set tensor_parallel.autotp_size=2 --set zero_optimization.stage=3 $S3
check_close tp2_dp2_s3 ref 1e-5
run pp2 2 --set pipeline.stages=2
check_close pp2 ref 1e-5
run pp2_int 2 --set pipeline.stages=2 --set pipeline.schedule=interleaved --set pipeline.virtual_stages=2
check_close pp2_int ref 1e-5
run off 2 --set zero_optimization.stage=2 --set zero_optimization.offload_optimizer.device=cpu
check_close off ref 1e-5
run bf16 1 --set bf16.enabled=true
check_close bf16 ref 2e-2
# tied embeddings with the head on another pipeline stage (their gradients summed)
# model.recompute: the same arithmetic again in backward, so the losses are bitwise those
# without, alone, with TP + SP and in bf16; and the saved activations shrink
run rc 1 --set model.recompute=true
same ref rc
run tp2_sp_rc 2 --set tensor_parallel.autotp_size=2 --set tensor_parallel.sequence_parallel=true --set model.recompute=true
same tp2_sp tp2_sp_rc
run bf16_rc 1 --set bf16.enabled=true --set model.recompute=true
same bf16 bf16_rc
a0=$(field ref act_peak_bytes); a1=$(field rc act_peak_bytes)
awk -v a="$a0" -v b="$a1" 'BEGIN { exit !(b > 0 && b < 0.75 * a) }' || fail "model.recompute kept $a1 of $a0 activation bytes"
echo "model.recompute: activations $a0 -> $a1 bytes"
run tied 1 --set model.tie_word_embeddings=true
run tied_pp2 2 --set model.tie_word_embeddings=true --set pipeline.stages=2
check_close tied_pp2 tied 1e-5

# --- resume at another layout ---
run full 1 --set train.max_steps=12
run first 2 --set train.max_steps=6 --set zero_optimization.stage=3 $S3 --set train.save_dir="$TMP/ck" --set train.save_every=6
run second 2 --set train.max_steps=12 --set tensor_parallel.autotp_size=2 --set zero_optimization.stage=1 \
    --set train.save_dir="$TMP/ck" --set train.resume=auto
losses "$TMP/full.jsonl" | tail -6 > "$TMP/full.tail"
losses "$TMP/second.jsonl" | tail -6 > "$TMP/second.tail"
close_tail "$TMP/full.tail" "$TMP/second.tail" "resumed at TP 2 / ZeRO-1 from DP 2 / ZeRO-3"

# --- Hugging Face folders: zinc-ckpt export --format hf, model.from_pretrained ---
# the exported folder (config.json with transformers' keys, the weights, sharded with an
# index) read by the reference: its tensors are zinc's parameters once loaded back through
# model.from_pretrained, and the reference's loss on them is zinc's
hf_case() { # NAME RUN-SETS...
    local name=$1; shift
    run "hf_$name" 1 --set train.max_steps=3 --set train.save_dir="$TMP/ck_$name" --set train.save_every=3 "$@"
    "$BUILD/zinc-ckpt" export "$TMP/ck_$name/global_step3" --format hf "$TMP/hf_$name" --max-shard-size 40KB \
        > "$TMP/hf_$name.out" 2>&1 || { cat "$TMP/hf_$name.out"; fail "$name: export --format hf"; }
    cat > "$TMP/fp_$name.json" <<JSON
{"train_micro_batch_size_per_gpu": 2, "model": {"from_pretrained": "$TMP/hf_$name"},
 "data": {"text": ["README.md"], "seq_len": 16}, "device": "cpu"}
JSON
    OMP_NUM_THREADS=1 $MPIRUN 1 "$DUMP" "$TMP/fp_$name.json" "$TMP/fp_$name.st" > "$TMP/fp_$name.out" 2>&1 \
        || { cat "$TMP/fp_$name.out"; fail "$name: from_pretrained of the exported folder"; }
    "$PY" tests/models/llama_ref.py --hf "$TMP/hf_$name" "$TMP/fp_$name.st" > "$TMP/fp_$name.ref" 2>&1 \
        || { cat "$TMP/hf_$name.out" "$TMP/fp_$name.ref"; fail "$name: the exported folder"; }
    echo "$name: $(head -1 "$TMP/hf_$name.out" | cut -c1-90)... | $(cat "$TMP/fp_$name.ref")"
}
hf_case llama
hf_case qwen2 --set model.attention_bias=true --set model.tie_word_embeddings=true --set model.n_head=2 --set model.n_kv_head=1
hf_case llama3 --set 'model.rope_scaling={"type": "llama3", "factor": 8, "original_max_position_embeddings": 8}' \
    --set model.rope_theta=500000 --set bf16.enabled=true

# --- bad shapes and folders ---
mkdir -p "$TMP/bad"
sed 's/"qwen2"/"llama"/; s/"use_sliding_window": false/"attention_bias": true/' "$TMP/hf_qwen2/config.json" > "$TMP/bad/config.json"
bad "attention_bias true: zinc's attention biases are Qwen2's (q/k/v only)" 1 --set model.from_pretrained="$TMP/bad"
sed 's/"silu"/"gelu"/' "$TMP/hf_llama/config.json" > "$TMP/bad/config.json"
bad 'hidden_act "gelu": zinc'"'"'s Llama MLP is SwiGLU' 1 --set model.from_pretrained="$TMP/bad"
sed 's/"rope_type": "llama3"/"rope_type": "yarn"/' "$TMP/hf_llama3/config.json" > "$TMP/bad/config.json"
bad 'rope_scaling type "yarn": zinc knows "llama3"' 1 --set model.from_pretrained="$TMP/bad"
sed 's/"model_type": "llama",/"model_type": "mistral", "sliding_window": 8,/' "$TMP/hf_llama/config.json" > "$TMP/bad/config.json"
bad "sliding_window 8 is shorter than the sequence length 16" 1 --set model.from_pretrained="$TMP/bad"
bad "model.n_kv_head: 3 does not divide model.n_head 4" 1 --set model.n_kv_head=3
bad "tensor_parallel.autotp_size 4 does not divide the key/value heads (model.n_kv_head) 2" 4 \
    --set tensor_parallel.autotp_size=4
bad "model.n_embd 40: zinc's Llama needs a multiple of 16" 1 --set model.n_embd=40 --set model.n_head=4
echo "OK"
