#!/usr/bin/env bash
# GPT-2 under tensor parallelism, through the trainer (CPU ranks, oversubscribed):
#  - equivalence: TP 2 x DP 1, TP 4 x DP 1, TP 2 x DP 2 x ZeRO stages 0-3 x sequence
#    parallelism off/on x gradient accumulation 1, 2: the losses of 20 steps equal the
#    single-rank run within 1e-5 (fp32); model.recompute under TP + SP too; bf16 within
#    the bf16 tolerance of the single-rank bf16 run
#  - TP bytes per step equal the analytic count (all-reduces of B*T*C per block, the
#    SP all-gather / reduce-scatter volume, the vocab-parallel and LayerNorm reductions)
#    within 2%; DP bytes stay in comm_bytes
#  - offload (optimizer cpu / nvme, parameters nvme at ZeRO-3) under TP: bitwise the
#    losses without offload; fp16 under TP within the fp16 tolerance
#  - resharding: saved at TP 2 x DP 2 / ZeRO-3, resumed at TP 1 x DP 4 / ZeRO-1 and at
#    TP 4 x DP 1 / ZeRO-0, and from the TP 4 run's checkpoint back to TP 2 x DP 2 /
#    ZeRO-3: the continuations equal the uninterrupted run within 1e-5; the same through
#    the offload swap files (saved with optimizer + parameters on nvme, resumed with nvme,
#    cpu and no offload at other layouts, saved again from nvme at TP 4)
#  - bad TP layouts are one line and exit 2 before anything is allocated
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
S3="--set zero_optimization.stage3_param_persistence_threshold=0 --set zero_optimization.stage3_max_reuse_distance=0"
tp() { echo "--set tensor_parallel.autotp_size=$1 --set tensor_parallel.sequence_parallel=$2"; }

# --- equivalence matrix (fp32) ---
run ref 1 --set train.max_steps=20
for layout in "2 2" "4 4" "4 2"; do
    set -- $layout; n=$1; t=$2
    for stage in 0 1 2 3; do
        extra=""; [ "$stage" = 3 ] && extra=$S3
        for sp in false true; do
            for ga in 1 2; do
                name="n${n}_tp${t}_s${stage}_sp${sp}_ga${ga}"
                run "$name" "$n" --set train.max_steps=20 $(tp "$t" "$sp") \
                    --set zero_optimization.stage=$stage --set gradient_accumulation_steps=$ga $extra
                check_close "$name" ref 1e-5
            done
        done
    done
done
run rc_ref 1 --set train.max_steps=20 --set model.recompute=true
run rc_tp 4 --set train.max_steps=20 $(tp 2 true) --set model.recompute=true --set zero_optimization.stage=2
check_close rc_tp rc_ref 1e-5

# --- bf16 (the bf16 tolerance of the DP tests: a rounding of 2^-8 per op, 2% of the loss) ---
run bf_ref 1 --set train.max_steps=20 --set bf16.enabled=true
for sp in false true; do
    run "bf_tp2_sp$sp" 4 --set train.max_steps=20 --set bf16.enabled=true $(tp 2 "$sp") --set zero_optimization.stage=1
    check_close "bf_tp2_sp$sp" bf_ref 2e-2
done

# --- offload and fp16 act on the DP group, unchanged under TP ---
# bitwise the losses of the same TP layout without offload; fp16 within its tolerance
NV="$TMP/nvme"; mkdir -p "$NV"
off() { echo "--set zero_optimization.offload_$1.device=$2 --set zero_optimization.offload_$1.nvme_path=$NV"; }
run off_ref2 4 --set train.max_steps=20 $(tp 2 true) --set zero_optimization.stage=2
run off_cpu2 4 --set train.max_steps=20 $(tp 2 true) --set zero_optimization.stage=2 $(off optimizer cpu)
same off_ref2 off_cpu2
run off_nvme2 4 --set train.max_steps=20 $(tp 2 true) --set zero_optimization.stage=2 $(off optimizer nvme) \
    --set zero_optimization.sub_group_size=2048
same off_ref2 off_nvme2
run off_ref3 4 --set train.max_steps=20 $(tp 2 false) --set zero_optimization.stage=3 $S3
run off_nvme3 4 --set train.max_steps=20 $(tp 2 false) --set zero_optimization.stage=3 $S3 \
    $(off optimizer nvme) $(off param nvme) --set zero_optimization.sub_group_size=2048
same off_ref3 off_nvme3
run fp16_ref 1 --set train.max_steps=20 --set fp16.enabled=true
run fp16_tp 4 --set train.max_steps=20 --set fp16.enabled=true $(tp 2 true) --set zero_optimization.stage=1
check_close fp16_tp fp16_ref 2e-2

# --- TP bytes against the analytic count ---
# tiny model: L 2, C 32, V 256, T 16, batch 24; per micro-batch of N = B*T rows, ring bytes
# per rank for P ranks: all-reduce 2 (P-1)/P x bytes, all-gather / reduce-scatter (P-1)/P x
# the whole (N, C). Without SP: (2 + 4L) all-reduces of N*C (embedding and head 1 each, every
# block 2 forward + 2 backward); with SP: (2 + 4L) reduce-scatters and (2 + 6L) all-gathers
# (backward gathers the incoming gradient and the LayerNorm outputs again). Both: the
# vocab-parallel cross-entropy's MAX (N) and SUM (2N) fp32 all-reduces, with SP the
# LayerNorm gradients (4C per block + 2C, fp32), and the grad norm's one double per step.
analytic() { # P SP GA micro
    awk -v P="$1" -v sp="$2" -v ga="$3" -v B="$4" 'BEGIN {
        L = 2; C = 32; T = 16; N = B * T; f = (P - 1) / P; nc = N * C * 4
        if (sp == "true") x = ((2 + 4 * L) + (2 + 6 * L)) * f * nc + 2 * f * (4 * C * L + 2 * C) * 4
        else x = (2 + 4 * L) * 2 * f * nc
        x += 2 * f * 3 * N * 4
        printf "%.0f\n", ga * x + 2 * f * 8 }'
}
for case in "2 false 1 4" "2 true 1 4" "4 true 2 4" "4 false 1 4"; do
    set -- $case; P=$1; sp=$2; ga=$3; n=$4
    dp=$((n / P)); micro=$((24 / dp / ga))
    name="n${n}_tp${P}_s1_sp${sp}_ga${ga}"
    [ -f "$TMP/$name.jsonl" ] || run "$name" "$n" --set train.max_steps=20 $(tp "$P" "$sp") \
        --set zero_optimization.stage=1 --set gradient_accumulation_steps=$ga
    got=$(field "$name" tp_comm_bytes); want=$(analytic "$P" "$sp" "$ga" "$micro")
    awk -v a="$got" -v b="$want" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(b > 0 && d <= 0.02) }' \
        || fail "$name: TP bytes per step $got, analytic $want"
    [ "$(field "$name" comm_bytes)" -gt 0 ] || [ "$dp" -eq 1 ] || fail "$name: no DP bytes"
    echo "$name: TP bytes per step $got = analytic $want"
done

# --- resharding across TP, DP and ZeRO stage ---
run ref22 4 --set train.max_steps=20 $(tp 2 false) --set zero_optimization.stage=3 $S3
run save22 4 --set train.max_steps=10 $(tp 2 false) --set zero_optimization.stage=3 $S3 \
    --set train.save_dir="$TMP/rs" --set train.save_every=10
losses "$TMP/ref22.jsonl" | tail -10 > "$TMP/ref22.tail10"
losses "$TMP/ref22.jsonl" | tail -5 > "$TMP/ref22.tail5"
for layout in "1 4 1" "4 4 0"; do
    set -- $layout; t=$1; n=$2; stage=$3
    run "rs_tp$t" "$n" --set train.max_steps=20 $(tp "$t" false) --set zero_optimization.stage=$stage \
        --set train.resume="$TMP/rs/global_step10" --set train.save_dir="$TMP/rs_tp$t" --set train.save_every=5
    losses "$TMP/rs_tp$t.jsonl" > "$TMP/rs_tp$t.l"
    [ "$(wc -l < "$TMP/rs_tp$t.l")" -eq 10 ] || fail "resume at tp $t did not run steps 11-20"
    close_tail "$TMP/ref22.tail10" "$TMP/rs_tp$t.l" "TP 2 x DP 2 stage 3 -> TP $t x DP $((n / t)) stage $stage"
done
run back22 4 --set train.max_steps=20 $(tp 2 false) --set zero_optimization.stage=3 $S3 \
    --set train.resume="$TMP/rs_tp4/global_step15"
losses "$TMP/back22.jsonl" > "$TMP/back22.l"
close_tail "$TMP/ref22.tail5" "$TMP/back22.l" "TP 4 x DP 1 stage 0 (step 15) -> TP 2 x DP 2 stage 3"
grep -q '"tp": *2' "$TMP/rs/global_step10/manifest.json" || fail "manifest does not record tp 2"
# a TP slice is one box: no tensor has more chunks than the 4 ranks that saved it (a
# c_attn slice as flat ranges of the logical tensor was one chunk per row per q|k|v block)
most=$(awk '/"chunks": \[/ { n = 0; t = 1; next } t && /^ *\{"file"/ { n++; if (n > m) m = n } END { print m + 0 }' \
    "$TMP/rs/global_step10/manifest.json")
[ "$most" -ge 1 ] && [ "$most" -le 4 ] || fail "a tensor of the TP 2 x DP 2 checkpoint has $most chunks (4 at most)"
grep -q '"box": {"start": \[0, 0, 16\], "count": \[32, 3, 16\]}' "$TMP/rs/global_step10/manifest.json" \
    || fail "TP rank 1's c_attn box (q|k|v blocks, columns 16:32 of each) is not in the manifest"
echo "manifest: at most $most chunks per tensor, c_attn as (C, 3, C) boxes"

# --- checkpoints through the offload swap files: saved at TP 2 x DP 2 / ZeRO-3 with the
# optimizer and parameters on nvme (the writer reads the swap files), resumed with and
# without offload at other layouts (the reader fills the swap files); the TP 4 resume
# saves again from its swap files and TP 2 x DP 2 / ZeRO-1 without offload goes on ---
offd() { mkdir -p "$NV/$1"; echo "$(off optimizer nvme) --set zero_optimization.offload_optimizer.nvme_path=$NV/$1 --set zero_optimization.sub_group_size=2048"; }
offp() { echo "$(off param nvme) --set zero_optimization.offload_param.nvme_path=$NV/$1"; }
run osave 4 --set train.max_steps=10 $(tp 2 false) --set zero_optimization.stage=3 $S3 $(offd s) $(offp s) \
    --set train.save_dir="$TMP/ors" --set train.save_every=10
for layout in "1 4 1 none" "2 4 2 cpu" "4 4 3 nvme"; do
    set -- $layout; t=$1; n=$2; stage=$3; o=$4; extra=""
    case $o in
        nvme) extra="$(offd r$t) $(offp r$t) $S3 --set train.save_dir=$TMP/ors_tp$t --set train.save_every=5" ;;
        cpu) extra="$(off optimizer cpu)" ;;
    esac
    run "or_tp$t" "$n" --set train.max_steps=20 $(tp "$t" false) --set zero_optimization.stage=$stage $extra \
        --set train.resume="$TMP/ors/global_step10"
    losses "$TMP/or_tp$t.jsonl" > "$TMP/or_tp$t.l"
    [ "$(wc -l < "$TMP/or_tp$t.l")" -eq 10 ] || fail "resume at tp $t from the offloaded checkpoint did not run steps 11-20"
    close_tail "$TMP/ref22.tail10" "$TMP/or_tp$t.l" "TP 2 x DP 2 stage 3 nvme -> TP $t x DP $((n / t)) stage $stage offload $o"
done
run oback 4 --set train.max_steps=20 $(tp 2 false) --set zero_optimization.stage=1 \
    --set train.resume="$TMP/ors_tp4/global_step15"
losses "$TMP/oback.jsonl" > "$TMP/oback.l"
close_tail "$TMP/ref22.tail5" "$TMP/oback.l" "TP 4 x DP 1 stage 3 nvme (step 15) -> TP 2 x DP 2 stage 1"

# --- --estimate-memory plans for DP = ranks / TP: at TP 4 a rank holds 1/4 of the state ---
est_total() { # ranks sets... -> stage-0 total MiB
    local n=$1; shift
    "$BUILD/zinc-train" "$cfg" --set model.n_embd=256 --set model.n_layer=4 --set model.vocab_size=4096 \
        "$@" --estimate-memory -n "$n" | awk '$1 == "0" { print $6 }'
}
e1=$(est_total 1); e4=$(est_total 4 $(tp 4 false))
awk -v a="$e1" -v b="$e4" 'BEGIN { r = 4 * b / a; exit !(a > 0 && r >= 0.95 && r <= 1.05) }' \
    || fail "--estimate-memory: TP 4 total $e4 MiB vs TP 1 $e1 MiB (not 1/4)"
"$BUILD/zinc-train" "$cfg" $(tp 4 false) --estimate-memory -n 8 | grep -q "8 ranks (tp 4 x dp 2)" \
    || fail "--estimate-memory does not name the TP x DP layout"
echo "--estimate-memory: $e1 MiB per rank at TP 1, $e4 MiB at TP 4"

# --- bad layouts: one line naming the key and the numbers, exit 2 ---
bad "does not divide the world size 3" 3 $(tp 2 false) --set train_batch_size=24
bad "does not divide model.n_head 2" 4 $(tp 4 false) --set model.n_head=2
bad "model.vocab_size 320 is not a multiple of 64 x tensor_parallel.autotp_size = 128" 2 $(tp 2 false) --set model.vocab_size=320
bad "sequence length 15 is not a multiple of tensor_parallel.autotp_size 2" 2 $(tp 2 true) --set model.block_size=15
echo "OK"
