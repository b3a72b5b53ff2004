#!/usr/bin/env bash
# Activation checkpointing (DeepSpeed's activation_checkpointing section and the pipeline's
# activation_checkpoint_interval): whole-layer recompute changes what is held, never what is
# computed. Every run below gives losses bitwise equal to the same run without it:
#  - one rank: every layer, number_checkpoints 2, groups of 3 layers, cpu_checkpointing on
#    the strict device (device memory the host cannot read: the copies down and up are real),
#    with model.recompute too; the activations held drop (act_peak_bytes)
#  - DP 2 x ZeRO-3 with gradient accumulation and parameters offloaded to NVMe
#  - TP 2 with partition_activations (checkpoints split over the TP group), with cpu_checkpointing
#    on the strict device; TP 2 with sequence parallelism
#  - two pipeline stages (1f1b, 4 micro-batches) and interleaved chunks
#  - bf16, LoRA with dropout (the recompute draws the same masks), a Llama
#  - resume: a checkpointed run resumed at step 5 continues bitwise
#  - bad input: more checkpoints than layers, number_checkpoints with the interval: exit 2;
#    partition_activations without TP: one warning line; the pipeline's interval given as 0
#    turns it off (as in DeepSpeed), with a warning that the section has no effect
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
M=(--set model.n_layer=6)
AC() { echo "activation_checkpointing=$1"; }

# 1. one rank
run base 1 "${M[@]}"
run every 1 "${M[@]}" --set "$(AC '{}')"; same base every
grep -q "activation checkpointing: 6 groups" "$TMP/every.log" || fail "every: no start-up line with 6 groups"
run two 1 "${M[@]}" --set "$(AC '{"number_checkpoints": 2}')"; same base two
grep -q "activation checkpointing: 2 groups" "$TMP/two.log" || fail "two: not 2 groups"
run interval 1 "${M[@]}" --set pipeline.activation_checkpoint_interval=3; same base interval
grep -q "activation checkpointing: 2 groups" "$TMP/interval.log" || fail "interval 3: not 2 groups"
ZINC_STRICT_DEVICE=1 run cpu 1 "${M[@]}" --set "$(AC '{"cpu_checkpointing": true}')"; same base cpu
grep -q "on strict" "$TMP/cpu.log" || fail "cpu: did not run on the strict device"
grep -q "kept in host memory" "$TMP/cpu.log" || fail "cpu: checkpoints not in host memory"
run rbase 1 "${M[@]}" --set model.recompute=true
run rsel 1 "${M[@]}" --set model.recompute=true --set "$(AC '{}')"; same rbase rsel
a=$(field base act_peak_bytes) b=$(field every act_peak_bytes)
# the head's logits (B*T*V) stay whole: the six blocks' activations are what goes
awk -v a="$a" -v b="$b" 'BEGIN { exit !(b < 0.6 * a) }' || fail "activations held: $b with checkpointing, $a without"
echo "activations held: $a bytes without, $b with every layer checkpointed"

# 2. DP 2, ZeRO-3, accumulation, parameters on NVMe
Z=(--set zero_optimization.stage=3 --set gradient_accumulation_steps=2)
mkdir -p "$TMP/nv"
N=(--set zero_optimization.offload_param.device=nvme --set zero_optimization.offload_param.nvme_path="$TMP/nv")
run z3 2 "${M[@]}" "${Z[@]}"
run z3ac 2 "${M[@]}" "${Z[@]}" "${N[@]}" --set "$(AC '{"number_checkpoints": 3}')"; same z3 z3ac

# 3. TP 2: checkpoints partitioned over the TP group; sequence parallelism
T=(--set tensor_parallel.autotp_size=2)
run tp 2 "${M[@]}" "${T[@]}"
run tpp 2 "${M[@]}" "${T[@]}" --set "$(AC '{"partition_activations": true}')"; same tp tpp
grep -q "split over the TP group" "$TMP/tpp.log" || fail "tpp: checkpoints not partitioned"
ZINC_STRICT_DEVICE=1 run tppc 2 "${M[@]}" "${T[@]}" --set "$(AC '{"partition_activations": true, "cpu_checkpointing": true}')"
same tp tppc
run sp 2 "${M[@]}" "${T[@]}" --set tensor_parallel.sequence_parallel=true
run spac 2 "${M[@]}" "${T[@]}" --set tensor_parallel.sequence_parallel=true --set "$(AC '{"partition_activations": true}')"
same sp spac
grep -q "partition_activations.*no effect with tensor_parallel.sequence_parallel" "$TMP/spac.log" \
    || fail "spac: no warning that partitioning adds nothing to sequence parallelism"

# 4. pipeline stages
P=(--set pipeline.stages=2 --set gradient_accumulation_steps=4)
run pp 2 "${M[@]}" "${P[@]}"
run ppac 2 "${M[@]}" "${P[@]}" --set "$(AC '{"cpu_checkpointing": true}')"; same pp ppac
V=(--set pipeline.schedule=interleaved --set pipeline.virtual_stages=2)
run pv 2 "${M[@]}" "${P[@]}" "${V[@]}"
run pvac 2 "${M[@]}" "${P[@]}" "${V[@]}" --set pipeline.activation_checkpoint_interval=1; same pv pvac

# 5. bf16; LoRA with dropout; a Llama
run bf 1 "${M[@]}" --set bf16.enabled=true
run bfac 1 "${M[@]}" --set bf16.enabled=true --set "$(AC '{}')"; same bf bfac
LO=(--set 'model.lora={"r":4,"dropout":0.1,"target_modules":["c_attn","c_fc"]}')
run lo 1 "${M[@]}" "${LO[@]}"
run loac 1 "${M[@]}" "${LO[@]}" --set "$(AC '{}')"; same lo loac
LL=(--set model.type=llama --set model.n_kv_head=2)
run ll 2 "${M[@]}" "${LL[@]}" --set zero_optimization.stage=2
run llac 2 "${M[@]}" "${LL[@]}" --set zero_optimization.stage=2 --set "$(AC '{"number_checkpoints": 4}')"; same ll llac

# 6. resume under checkpointing: the resumed half bitwise equal to the uninterrupted run
R=(--set "$(AC '{"cpu_checkpointing": true}')" --set train.save_dir="$TMP/ck")
run full 2 "${M[@]}" "${Z[@]}" "${R[@]}" --set train.save_every=5
run resumed 2 "${M[@]}" "${Z[@]}" "${R[@]}" --set train.resume=global_step5
cmp -s <(losses "$TMP/full.jsonl" | tail -n 5) <(losses "$TMP/resumed.jsonl") || fail "resumed run differs"
echo "resumed at step 5 (checkpointing, DP 2, ZeRO-3): bitwise equal"

# 7. bad input
bad "number_checkpoints 9: the model has 6 layers to checkpoint" 1 "${M[@]}" --set "$(AC '{"number_checkpoints": 9}')"
bad "both group the checkpointed layers" 1 "${M[@]}" --set "$(AC '{"number_checkpoints": 2}')" \
    --set pipeline.activation_checkpoint_interval=2
run ptp1 1 "${M[@]}" --set "$(AC '{"partition_activations": true}')"; same base ptp1
[ "$(grep -c "partition_activations.*no effect with tensor_parallel.autotp_size 1" "$TMP/ptp1.log")" -eq 1 ] \
    || fail "partition_activations without TP: not one warning line"
run off 1 "${M[@]}" --set "$(AC '{}')" --set pipeline.activation_checkpoint_interval=0; same base off
grep -q "activation checkpointing:" "$TMP/off.log" && fail "interval 0 with the section: still checkpointing"
grep -q "activation_checkpoint_interval 0 turns activation checkpointing off" "$TMP/off.log" || fail "off: no warning"
echo "test_activation_checkpointing: ok"
