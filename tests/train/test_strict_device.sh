#!/usr/bin/env bash
# The engine's device paths on a CPU: the strict test device
# (ZINC_STRICT_DEVICE=1) holds every engine buffer in memory the host can
# touch only through the device's copy and ops, as a GPU does, so staged
# collectives, checkpoint pieces through the io callback and the optimizer
# offloaded to host memory all run, and a host read of device memory faults.
# Its ops are the CPU's: every run must give the cpu device's losses bit for
# bit (ZeRO 0-3, DP 1-2, fp32/bf16/fp16, offload_optimizer cpu and nvme,
# resume, offload_param nvme with the optimizer offloaded, refused in one line without it).
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")

same() { # name extra...: the run on the cpu device and on the strict device agree bitwise
    local name=$1 n=$2; shift 2
    run "${name}_cpu" "$n" "$@"
    ZINC_STRICT_DEVICE=1 run "${name}_strict" "$n" "$@"
    grep -q "on strict" "$TMP/${name}_strict.log" || fail "$name: did not run on the strict device"
    [ "$(losses "$TMP/${name}_strict.jsonl" | wc -l)" -eq 10 ] || fail "$name: expected 10 steps"
    cmp -s <(losses "$TMP/${name}_cpu.jsonl") <(losses "$TMP/${name}_strict.jsonl") \
        || fail "$name: strict device differs from cpu: $(paste <(losses "$TMP/${name}_cpu.jsonl") <(losses "$TMP/${name}_strict.jsonl") | head -3)"
    echo "$name: strict device = cpu device (bitwise)"
}

same fp32_s0 1
same bf16_s1 2 --set bf16.enabled=true --set zero_optimization.stage=1
same bf16_s3 2 --set bf16.enabled=true --set zero_optimization.stage=3
same fp16_s2 2 --set fp16.enabled=true --set zero_optimization.stage=2 --set zero_optimization.overlap_comm=true
same off_s2 2 --set bf16.enabled=true --set zero_optimization.stage=2 \
    --set zero_optimization.offload_optimizer.device=cpu
mkdir -p "$TMP/nvme"
same nvme_s1 2 --set bf16.enabled=true --set zero_optimization.stage=1 \
    --set zero_optimization.offload_optimizer.device=nvme \
    --set zero_optimization.offload_optimizer.nvme_path="$TMP/nvme" \
    --set zero_optimization.sub_group_size=20000 --set zero_optimization.offload_optimizer.pipeline_read=true
same nvme_s3 2 --set zero_optimization.stage=3 --set zero_optimization.offload_optimizer.device=nvme \
    --set zero_optimization.offload_optimizer.nvme_path="$TMP/nvme"
# parameter offload on the device path (tests/train/test_offload.sh compares its losses)
same pnvme_s3 2 --set zero_optimization.stage=3 --set zero_optimization.offload_optimizer.device=cpu \
    --set zero_optimization.offload_param.device=nvme --set zero_optimization.offload_param.nvme_path="$TMP/nvme"
# without the optimizer offloaded: one line naming the keys
ZINC_STRICT_DEVICE=1 $MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set zero_optimization.stage=3 \
    --set zero_optimization.offload_param.device=nvme \
    --set zero_optimization.offload_param.nvme_path="$TMP/nvme" > "$TMP/pnvme.log" 2>&1 \
    && fail "offload_param nvme without offload_optimizer on the strict device was accepted"
grep -q 'offload_param.device "nvme" on strict needs zero_optimization.offload_optimizer.device' "$TMP/pnvme.log" \
    || fail "unclear refusal: $(tail -2 "$TMP/pnvme.log")"
echo "offload_param without offload_optimizer on a non-host device: refused in one line"

# checkpoint on the strict device, resumed there on another rank count
export ZINC_STRICT_DEVICE=1
run ckA 2 --set bf16.enabled=true --set zero_optimization.stage=3 \
    --set zero_optimization.offload_optimizer.device=cpu --set train.save_dir="$TMP/ck" \
    --set train.save_every=5 --set train.max_steps=5
run ckB 1 --set bf16.enabled=true --set zero_optimization.stage=1 \
    --set zero_optimization.offload_optimizer.device=cpu --set train.save_dir="$TMP/ck" \
    --set train.resume=auto
unset ZINC_STRICT_DEVICE
run ckref 1 --set bf16.enabled=true --set zero_optimization.stage=1
cat "$TMP/ckA.jsonl" "$TMP/ckB.jsonl" > "$TMP/ckAB.jsonl"
d=$(max_rel_diff "$TMP/ckref.jsonl" "$TMP/ckAB.jsonl")
echo "strict device: save at step 5 on 2 ranks, resume on 1 vs uninterrupted: max rel diff $d"
awk -v d="$d" 'BEGIN { exit !(d != "nan" && d <= 1e-3) }' || fail "resume on the strict device differs: $d"
"$BUILD/zinc-ckpt" verify "$TMP/ck/global_step10" > /dev/null || fail "checkpoint does not verify"
# the same with the optimizer state on NVMe (read back from the swap files at save)
NVO="--set zero_optimization.offload_optimizer.device=nvme --set zero_optimization.offload_optimizer.nvme_path=$TMP/nvme"
ZINC_STRICT_DEVICE=1 run ckC 2 --set bf16.enabled=true --set zero_optimization.stage=1 $NVO \
    --set train.save_dir="$TMP/ck2" --set train.save_every=5 --set train.max_steps=5
ZINC_STRICT_DEVICE=1 run ckD 1 --set bf16.enabled=true --set zero_optimization.stage=1 $NVO \
    --set train.save_dir="$TMP/ck2" --set train.resume=auto
cat "$TMP/ckC.jsonl" "$TMP/ckD.jsonl" > "$TMP/ckCD.jsonl"
d=$(max_rel_diff "$TMP/ckref.jsonl" "$TMP/ckCD.jsonl")
echo "strict device, optimizer on NVMe: save on 2 ranks, resume on 1 vs uninterrupted: max rel diff $d"
awk -v d="$d" 'BEGIN { exit !(d != "nan" && d <= 1e-3) }' || fail "NVMe resume on the strict device differs: $d"
echo "strict device: all paths agree"
