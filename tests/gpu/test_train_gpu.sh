#!/usr/bin/env bash
# GPU training checks (run by scripts/test-gpu.sh on a machine with a GPU,
# with BUILD=build-cuda): the same 20-step GPT run on the GPU and on the CPU
# agree (fp32 within 1e-4 relative; bf16 and fp16 within 2e-2, where the GPU's
# bf16 matmuls take bf16 operands); ranks sharing one GPU through the mpi backend
# (DP 2 and 4, ZeRO 0 and 3; TP 2 with and without SP, TP 2 x DP 2 at ZeRO-3, bf16 TP,
# a TP 2 checkpoint resumed at TP 4; PP 2 under 1f1b and interleaved, PP 2 x DP 2 at
# ZeRO-3, PP 2 x TP 2, bf16 PP) match one GPU rank; the nccl backend with one
# rank matches mpi; a checkpoint saved on the GPU resumes exactly; a CUDA
# device request without a GPU is refused. Prints SKIP and exits 77 with no GPU.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
if ! nvidia-smi -L >/dev/null 2>&1; then echo "SKIP: no GPU visible (nvidia-smi -L failed)"; exit 77; fi
shard=$(make_shard)
cat > "$TMP/gpu.json" <<JSON
{
  "train_batch_size": 16,
  "gradient_clipping": 1.0,
  "steps_per_print": 1000,
  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}},
  "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 5, "warmup_max_lr": 1e-3, "warmup_type": "linear"}},
  "model": {"type": "gpt2", "n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 256, "block_size": 64},
  "data": {"train": ["$shard"]},
  "train": {"max_steps": 20},
  "device": "cpu",
  "comm_backend": "mpi"
}
JSON
cfg=$TMP/gpu.json
check() { # name a b tol
    local d; d=$(max_rel_diff "$TMP/$2.jsonl" "$TMP/$3.jsonl")
    [ "$(losses "$TMP/$3.jsonl" | wc -l)" -eq 20 ] || fail "$1: expected 20 loss lines in $3"
    echo "$1: max rel loss diff $d (tolerance $4)"
    awk -v d="$d" -v t="$4" 'BEGIN { exit !(d != "nan" && d <= t) }' || fail "$1: $d > $4"
}

run cpu32 1
run gpu32 1 --set device=cuda
grep -q "on cuda" "$TMP/gpu32.log" || fail "gpu32 did not run on cuda: $(head -3 "$TMP/gpu32.log")"
check "fp32 gpu vs cpu" cpu32 gpu32 1e-4
run cpubf 1 --set bf16.enabled=true
run gpubf 1 --set device=cuda --set bf16.enabled=true
check "bf16 gpu vs cpu" cpubf gpubf 2e-2
first=$(losses "$TMP/gpubf.jsonl" | head -1); last=$(losses "$TMP/gpubf.jsonl" | tail -1)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.5) }' || fail "gpu bf16 loss did not fall: $first -> $last"
run gpubfrc 1 --set device=cuda --set bf16.enabled=true --set model.recompute=true
check "bf16 gpu model.recompute vs keeping activations" gpubf gpubfrc 2e-3
run cpu16 1 --set fp16.enabled=true --set fp16.initial_scale_power=12
run gpu16 1 --set device=cuda --set fp16.enabled=true --set fp16.initial_scale_power=12
check "fp16 (dynamic loss scale) gpu vs cpu" cpu16 gpu16 2e-2
run gpu32b 1 --set device=cuda
cmp -s <(losses "$TMP/gpu32.jsonl") <(losses "$TMP/gpu32b.jsonl") || fail "two identical GPU runs differ"
echo "two identical GPU runs: bitwise equal losses"

for st in 0 3; do
    for n in 2 4; do
        run "dp${n}s${st}" "$n" --set device=cuda --set zero_optimization.stage=$st
        check "dp=$n stage=$st on one GPU (mpi) vs 1 GPU rank" gpu32 "dp${n}s${st}" 1e-5
    done
done
run bfdp2s2 2 --set device=cuda --set bf16.enabled=true --set zero_optimization.stage=2 \
    --set zero_optimization.overlap_comm=true
check "bf16 dp=2 stage=2 overlap_comm on one GPU vs 1 GPU rank" gpubf bfdp2s2 2e-3
run bfdp4 4 --set device=cuda --set bf16.enabled=true --set zero_optimization.stage=3
check "bf16 dp=4 stage=3 on one GPU vs 1 GPU rank" gpubf bfdp4 2e-3

# tensor parallelism on one GPU through the mpi backend (ranks share the GPU): the
# vocab-parallel head and cross-entropy, column/row linears, SP mappings on cuda
TPS() { echo "--set tensor_parallel.autotp_size=$1 --set tensor_parallel.sequence_parallel=$2"; }
run tp2 2 --set device=cuda $(TPS 2 false)
check "tp=2 on one GPU (mpi) vs 1 GPU rank" gpu32 tp2 1e-5
run tp2sp 2 --set device=cuda $(TPS 2 true)
check "tp=2 + sequence parallel on one GPU vs 1 GPU rank" gpu32 tp2sp 1e-5
run tp2dp2 4 --set device=cuda $(TPS 2 true) --set zero_optimization.stage=3
check "tp=2 x dp=2 stage=3 on one GPU vs 1 GPU rank" gpu32 tp2dp2 1e-5
run bftp2 2 --set device=cuda --set bf16.enabled=true $(TPS 2 true)
check "bf16 tp=2 + SP on one GPU vs 1 GPU rank" gpubf bftp2 2e-2
run tpck 4 --set device=cuda $(TPS 2 false) --set zero_optimization.stage=3 \
    --set train.save_dir="$TMP/cktp" --set train.save_every=10 --set train.max_steps=10
run tpres 4 --set device=cuda $(TPS 4 false) --set train.save_dir="$TMP/cktp" --set train.resume=auto
cat "$TMP/tpck.jsonl" "$TMP/tpres.jsonl" > "$TMP/tpCK.jsonl"
check "GPU checkpoint at tp=2 x dp=2 resumed at tp=4 vs 1 GPU rank" gpu32 tpCK 1e-5

# pipeline parallelism on one GPU through the mpi backend: the activations and gradients
# crossing stages live in device memory and go through pinned host staging
PPS() { echo "--set pipeline.stages=$1 --set pipeline.schedule=$2 --set pipeline.virtual_stages=$3 --set gradient_accumulation_steps=4"; }
run pp2 2 --set device=cuda $(PPS 2 1f1b 1)
check "pp=2 1f1b on one GPU (mpi) vs 1 GPU rank" gpu32 pp2 1e-5
run pp2il 2 --set device=cuda $(PPS 2 interleaved 2)
check "pp=2 interleaved x 2 chunks on one GPU vs 1 GPU rank" gpu32 pp2il 1e-5
run pp2dp2 4 --set device=cuda $(PPS 2 1f1b 1) --set zero_optimization.stage=3
check "pp=2 x dp=2 stage=3 on one GPU vs 1 GPU rank" gpu32 pp2dp2 1e-5
run pp2tp2 4 --set device=cuda $(PPS 2 1f1b 1) $(TPS 2 true)
check "pp=2 x tp=2 + SP on one GPU vs 1 GPU rank" gpu32 pp2tp2 1e-5
run bfpp2 2 --set device=cuda --set bf16.enabled=true $(PPS 2 1f1b 1) --set zero_optimization.stage=2
check "bf16 pp=2 stage=2 on one GPU vs 1 GPU rank" gpubf bfpp2 2e-3

# ZeRO-Offload: optimizer state in pinned host memory, AdamW on the CPU
OFF="--set zero_optimization.offload_optimizer.device=cpu"
run bfoff 1 --set device=cuda --set bf16.enabled=true --set zero_optimization.stage=1 $OFF
check "bf16 offload_optimizer cpu on the GPU vs on the device" gpubf bfoff 1e-6
mkdir -p "$TMP/nvme"
run bfnvme 2 --set device=cuda --set bf16.enabled=true --set zero_optimization.stage=2 \
    --set zero_optimization.offload_optimizer.device=nvme \
    --set zero_optimization.offload_optimizer.nvme_path="$TMP/nvme"
check "bf16 dp=2 stage=2 offload_optimizer nvme vs 1 GPU rank" gpubf bfnvme 2e-3
run bfoff2 2 --set device=cuda --set bf16.enabled=true --set zero_optimization.stage=2 $OFF
check "bf16 dp=2 stage=2 offload_optimizer cpu vs 1 GPU rank" gpubf bfoff2 2e-3
run ckC 1 --set device=cuda --set bf16.enabled=true --set zero_optimization.stage=1 $OFF \
    --set train.save_dir="$TMP/ckoff" --set train.save_every=10 --set train.max_steps=10
run ckD 2 --set device=cuda --set bf16.enabled=true --set zero_optimization.stage=2 $OFF \
    --set train.save_dir="$TMP/ckoff" --set train.resume=auto
cat "$TMP/ckC.jsonl" "$TMP/ckD.jsonl" > "$TMP/ckCD.jsonl"
check "offload resume at step 10 on 2 ranks vs uninterrupted 1 rank" bfoff ckCD 2e-3
$MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set device=cuda --set zero_optimization.stage=3 \
    --set zero_optimization.offload_param.device=nvme --set zero_optimization.offload_param.nvme_path="$TMP" \
    > "$TMP/pnvme.log" 2>&1 && fail "offload_param nvme on cuda was accepted"
grep -q "not supported with device cuda" "$TMP/pnvme.log" || fail "unclear refusal: $(tail -2 "$TMP/pnvme.log")"
echo "offload_param nvme on cuda: refused in one line"

run nccl1 1 --set device=cuda --set comm_backend=nccl
check "nccl 1 rank vs mpi 1 rank" gpu32 nccl1 0

run ckA 1 --set device=cuda --set bf16.enabled=true --set train.save_dir="$TMP/ck" --set train.save_every=10 --set train.max_steps=10
run ckB 1 --set device=cuda --set bf16.enabled=true --set train.save_dir="$TMP/ck" --set train.resume=auto
cat "$TMP/ckA.jsonl" "$TMP/ckB.jsonl" > "$TMP/ckAB.jsonl"
check "bf16 GPU resume at step 10 vs uninterrupted" gpubf ckAB 0
"$BUILD/zinc-ckpt" verify "$TMP/ck/global_step20" >/dev/null || fail "GPU checkpoint does not verify"
echo "GPU checkpoint verifies"

CUDA_VISIBLE_DEVICES= $MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set device=cuda > "$TMP/nogpu.log" 2>&1 && fail "device cuda without a visible GPU was accepted"
grep -q "no GPU is visible" "$TMP/nogpu.log" || fail "unclear error without a GPU: $(tail -2 "$TMP/nogpu.log")"
echo "device cuda without a GPU: $(grep -m1 'no GPU' "$TMP/nogpu.log")"
echo "== GPU training checks passed =="
