#!/usr/bin/env bash
# GPT-2 under pipeline parallelism, through the trainer (CPU ranks, oversubscribed):
#  - equivalence: PP 2 and PP 4 alone, PP 2 x DP 2 (ZeRO stages 0-3), PP 2 x TP 2 and
#    PP 2 x DP 2 x TP 2 (8 ranks), with 1, 4 and 8 micro-batches per step and every
#    schedule (gpipe, 1f1b, interleaved with 2 chunks per stage, zero-bubble): the losses of
#    20 steps equal the single-rank run of the same global batch within 1e-5 (fp32); bf16
#    and fp16 within their tolerance of the single-rank run
#  - offload under PP: optimizer (and at ZeRO-3 parameters) on nvme at PP 2 x DP 2, bitwise
#    the losses without offload
#  - resharding: saved at PP 2 x DP 2 / ZeRO-2, resumed at PP 1 x DP 4 / ZeRO-3, PP 4 x DP 1
#    and PP 2 x TP 2: the continuations equal the uninterrupted run within 1e-5; the
#    manifest records the stages and the layer-to-stage map
#  - the step line and metrics show the measured bubble beside the schedule's theory
#  - bad layouts are one line and exit 2 before anything is allocated; a stage that dies or
#    hangs mid-run ends the whole job, the hang within the comm timeout naming the rank
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard") # 2 blocks: 4 layers (embedding, 2 blocks, head + loss)
S3="--set zero_optimization.stage3_param_persistence_threshold=0 --set zero_optimization.stage3_max_reuse_distance=0"
pp() { echo "--set pipeline.stages=$1 --set pipeline.schedule=$2 --set pipeline.virtual_stages=$3"; }

# schedules for a pipeline of p stages with m micro-batches: name:kind:virtual
schedules() { # p m
    echo "gpipe:gpipe:1 1f1b:1f1b:1 zb:zero-bubble:1"
    [ $(( $2 % $1 )) -eq 0 ] && echo "il:interleaved:2"
}

# --- equivalence (fp32): one reference per global batch of micro-batches ---
# the global batch is 24 sequences; at DP d a step takes m micro-batches of 24 / (d m)
for m in 1 4 8; do
    micro=$((24 / m))
    [ $((24 % m)) -eq 0 ] || continue
    run "ref_m$m" 1 --set train.max_steps=20 --set train_micro_batch_size_per_gpu=$micro
done
run ref6 1 --set train.max_steps=20 --set model.n_layer=6 # PP 4 x 2 chunks needs 8 layers
# PP 2 and PP 4 alone: every schedule, m 1, 4, 8
for p in 2 4; do
    for m in 1 4 8; do
        for sch in $(schedules "$p" "$m"); do
            IFS=: read -r sname kind v <<< "$sch"
            ref="ref_m$m"; extra=""
            if [ "$p" = 4 ] && [ "$v" = 2 ]; then ref=ref6; extra="--set model.n_layer=6"; fi
            name="pp${p}_m${m}_$sname"
            run "$name" "$p" --set train.max_steps=20 --set gradient_accumulation_steps=$m $(pp "$p" "$kind" "$v") $extra
            check_close "$name" "$ref" 1e-5
        done
    done
done
# PP 2 x DP 2: ZeRO stages 0-3 with 1f1b and 4 micro-batches, every schedule at stage 3 with 8
for stage in 0 1 2 3; do
    extra=""; [ "$stage" = 3 ] && extra=$S3
    name="pp2dp2_s${stage}"
    run "$name" 4 --set train.max_steps=20 --set gradient_accumulation_steps=4 $(pp 2 1f1b 1) \
        --set zero_optimization.stage=$stage $extra
    check_close "$name" ref_m8 1e-5
done
for sch in $(schedules 2 4); do
    IFS=: read -r sname kind v <<< "$sch"
    name="pp2dp2_s3_m4_$sname"
    run "$name" 4 --set train.max_steps=20 --set gradient_accumulation_steps=4 $(pp 2 "$kind" "$v") \
        --set zero_optimization.stage=3 $S3
    check_close "$name" ref_m8 1e-5
done
# PP 2 x TP 2 (sequence parallel) and PP 2 x DP 2 x TP 2 on 8 ranks
for sched in "1f1b 1f1b 1" "il interleaved 2"; do
    set -- $sched
    run "pp2tp2_$1" 4 --set train.max_steps=20 --set gradient_accumulation_steps=4 $(pp 2 "$2" "$3") \
        --set tensor_parallel.autotp_size=2 --set tensor_parallel.sequence_parallel=true
    check_close "pp2tp2_$1" ref_m4 1e-5
done
for stage in 1 3; do
    extra=""; [ "$stage" = 3 ] && extra=$S3
    run "pp2dp2tp2_s$stage" 8 --set train.max_steps=20 --set gradient_accumulation_steps=4 $(pp 2 1f1b 1) \
        --set tensor_parallel.autotp_size=2 --set zero_optimization.stage=$stage $extra
    check_close "pp2dp2tp2_s$stage" ref_m8 1e-5
done

# --- bf16 (the bf16 tolerance of the DP tests: a rounding of 2^-8 per op, 2% of the loss) ---
run bf_ref 1 --set train.max_steps=20 --set bf16.enabled=true --set train_micro_batch_size_per_gpu=6
run bf_pp2dp2 4 --set train.max_steps=20 --set bf16.enabled=true --set gradient_accumulation_steps=2 \
    $(pp 2 1f1b 1) --set zero_optimization.stage=2
check_close bf_pp2dp2 bf_ref 2e-2
# fp16: the loss scale and its overflow check see the whole mesh's gradients
run fp16_ref 1 --set train.max_steps=20 --set fp16.enabled=true --set train_micro_batch_size_per_gpu=6
run fp16_pp2dp2 4 --set train.max_steps=20 --set fp16.enabled=true --set gradient_accumulation_steps=2 \
    $(pp 2 1f1b 1) --set zero_optimization.stage=1
check_close fp16_pp2dp2 fp16_ref 2e-2

# --- offload under PP: bitwise the same layout without offload ---
NV="$TMP/nvme"; mkdir -p "$NV"
off() { echo "--set zero_optimization.offload_$1.device=$2 --set zero_optimization.offload_$1.nvme_path=$NV"; }
run off_nvme2 4 --set train.max_steps=20 --set gradient_accumulation_steps=4 $(pp 2 1f1b 1) \
    --set zero_optimization.stage=2 $(off optimizer nvme) --set zero_optimization.sub_group_size=2048
same pp2dp2_s2 off_nvme2
run off_nvme3 4 --set train.max_steps=20 --set gradient_accumulation_steps=4 $(pp 2 1f1b 1) \
    --set zero_optimization.stage=3 $S3 $(off optimizer nvme) $(off param nvme) --set zero_optimization.sub_group_size=2048
same pp2dp2_s3 off_nvme3

# --- the measured bubble beside the theory: (p-1)/(m+p-1) = 1/5 for 1f1b at p 2, m 4 ---
theory=$(field pp2dp2_s1 pp_bubble_theory)
awk -v t="$theory" 'BEGIN { exit !(t > 0.1999 && t < 0.2001) }' || fail "pp_bubble_theory $theory, not 0.2"
b=$(field pp2dp2_s1 pp_bubble)
awk -v b="$b" 'BEGIN { exit !(b >= 0 && b < 1) }' || fail "pp_bubble $b"
grep -q "bubble" "$TMP/pp2dp2_s1.log" || fail "the step line shows no bubble"
echo "bubble: measured $b, theory $theory"

# --- activation memory per stage: 1f1b holds p - s micro-batches on stage s (at most the
# stages' count), as --estimate-memory predicts within 10% of what each stage measured ---
M="--set model.n_layer=6 --set model.n_embd=64 --set model.block_size=64 --set train_batch_size=32
   --set train_micro_batch_size_per_gpu=4 --set gradient_accumulation_steps=8"
for p in 2 4; do
    "$BUILD/zinc-train" "$cfg" $M $(pp "$p" 1f1b 1) --estimate-memory -n "$p" > "$TMP/est$p.txt" \
        || fail "--estimate-memory at pp $p"
    run "mem$p" "$p" --set train.max_steps=2 $M $(pp "$p" 1f1b 1)
    meas=$(sed -n 's/.*"act_peak_stage": \[\([0-9, ]*\)\].*/\1/p' "$TMP/mem$p.jsonl" | tail -1 | tr -d ' ')
    for s in $(seq 0 $((p - 1))); do
        est=$(awk -v s="$s" 'f && $1 == s { print $4 * 1048576, $5; exit } /^pp stage/ { f = 1 }' "$TMP/est$p.txt")
        [ -n "$est" ] || { cat "$TMP/est$p.txt"; fail "--estimate-memory at pp $p has no row for stage $s"; }
        set -- $est
        got=$(echo "$meas" | cut -d, -f$((s + 1)))
        [ "$2" -eq $((p - s)) ] || fail "pp $p stage $s: 1f1b holds $2 micro-batches, not $((p - s))"
        awk -v a="$got" -v b="$1" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(b > 0 && d <= 0.10) }' \
            || fail "pp $p stage $s: activations measured $got bytes, estimated $1"
        echo "pp $p stage $s: activations $got bytes measured, $1 estimated ($2 micro-batches in flight)"
    done
done

# --- resharding across PP, DP, TP and ZeRO stage ---
run rs_ref 4 --set train.max_steps=20 --set gradient_accumulation_steps=4 $(pp 2 1f1b 1) --set zero_optimization.stage=2
run rs_save 4 --set train.max_steps=10 --set gradient_accumulation_steps=4 $(pp 2 1f1b 1) --set zero_optimization.stage=2 \
    --set train.save_dir="$TMP/rs" --set train.save_every=10
losses "$TMP/rs_ref.jsonl" | tail -10 > "$TMP/rs_ref.tail10"
for layout in "1 1 4 3" "4 1 4 0" "2 2 4 1"; do
    set -- $layout; p=$1; t=$2; n=$3; stage=$4; extra=""
    [ "$stage" = 3 ] && extra=$S3
    name="rs_pp${p}_tp$t"
    run "$name" "$n" --set train.max_steps=20 --set train_micro_batch_size_per_gpu=3 $(pp "$p" 1f1b 1) \
        --set tensor_parallel.autotp_size=$t --set zero_optimization.stage=$stage $extra \
        --set train.resume="$TMP/rs/global_step10"
    losses "$TMP/$name.jsonl" > "$TMP/$name.l"
    [ "$(wc -l < "$TMP/$name.l")" -eq 10 ] || fail "resume at pp $p tp $t did not run steps 11-20"
    close_tail "$TMP/rs_ref.tail10" "$TMP/$name.l" "PP 2 x DP 2 stage 2 -> PP $p x TP $t x DP $((n / p / t)) stage $stage"
done
man="$TMP/rs/global_step10/manifest.json"
grep -q '"pp": *2' "$man" || fail "manifest does not record pp 2"
grep -q '"chunk_layers":\[0,2,4\]' "$man" || fail "manifest does not record the layer-to-stage map [0, 2, 4]"
echo "manifest: pp 2, chunk_layers [0, 2, 4]"
# export of the PP checkpoint and model.init_from at any PP size: the forward-only loss
# (--eval-loss, through every stage) is the same at PP 1, 2 and 4
"$BUILD/zinc-ckpt" export "$TMP/rs/global_step10" "$TMP/pp.safetensors" > /dev/null || fail "export of the PP checkpoint"
for p in 1 2 4; do
    $MPIRUN "$p" "$BUILD/zinc-train" "$cfg" $(pp "$p" 1f1b 1) --set gradient_accumulation_steps=4 \
        --set model.init_from="$TMP/pp.safetensors" --eval-loss > "$TMP/ev$p.log" 2>&1 || { cat "$TMP/ev$p.log"; fail "eval at pp $p"; }
    sed -n 's/^eval loss //p' "$TMP/ev$p.log" > "$TMP/ev$p"
    [ -s "$TMP/ev$p" ] || fail "no eval loss at pp $p"
done
for p in 2 4; do
    awk -v a="$(cat "$TMP/ev1")" -v b="$(cat "$TMP/ev$p")" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(d <= 1e-6) }' \
        || fail "eval loss at pp $p $(cat "$TMP/ev$p") differs from pp 1 $(cat "$TMP/ev1")"
done
echo "export + init_from: eval loss $(cat "$TMP/ev1") at pp 1, $(cat "$TMP/ev2") at pp 2, $(cat "$TMP/ev4") at pp 4"

# --- bad layouts: one line naming the key and the numbers, exit 2 ---
bad "pipeline.stages 2 x tensor_parallel.autotp_size 1 = 2 does not divide the world size 3" 3 --set pipeline.stages=2
bad "pipeline.stages 4 x pipeline.virtual_stages 2 = 8 model chunks: more than the model's 4 layers" 4 \
    $(pp 4 interleaved 2) --set gradient_accumulation_steps=4
bad "gradient_accumulation_steps 3 (the micro-batches of a step) is not a multiple of pipeline.stages 2" 2 \
    $(pp 2 interleaved 2) --set gradient_accumulation_steps=3
bad "pipeline.virtual_stages 2 needs pipeline.schedule \"interleaved\" (found \"1f1b\")" 2 $(pp 2 1f1b 2)

# --- a stage that dies or hangs mid-run ends the job ---
expect_fail() { # text cmd...
    local want=$1; shift
    local out rc
    out=$(timeout 120 "$@" 2>&1); rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || { echo "$out"; fail "$*: exit $rc"; }
    echo "$out" | grep -q "$want" || { echo "$out"; fail "$*: no line saying '$want'"; }
    echo "ended ($*): $(echo "$out" | grep -m1 "$want")"
}
expect_fail "rank 1" env ZINC_FAULT_KILL=1:3 $MPIRUN 2 "$BUILD/zinc-train" "$cfg" --set train.max_steps=50 $(pp 2 1f1b 1) \
    --set gradient_accumulation_steps=4
expect_fail "rank 1 (world rank 1) on group pp (2 ranks) did not complete within 3 s" env ZINC_FAULT_HANG=1:3 $MPIRUN 2 "$BUILD/zinc-train" "$cfg" \
    --set train.max_steps=50 $(pp 2 1f1b 1) --set gradient_accumulation_steps=4 --set comm_timeout_s=3
echo "OK"
