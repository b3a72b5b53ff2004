#!/usr/bin/env bash
# ZeRO stages 1-3 change memory and communication, never the math:
#  - fp32: stages 0-3 x DP 1-4 x grad accumulation 1, 2 match one rank at
#    stage 0 (rel. diff <= 1e-5 over 20 steps); DP 3 pads units unevenly.
#  - ZeRO-3 with whole (persistent) small units matches too.
#  - bf16 and fp16 end within 5% of the fp32 loss (mean of steps 41-50; see below).
#  - a forced fp16 overflow skips the step and lowers the loss scale.
#  - model-state bytes per rank at DP 4 (bf16) within 5% of the ZeRO formula;
#    bytes communicated per step within 5% of the theoretical volume.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
S3="--set zero_optimization.stage3_param_persistence_threshold=0 --set zero_optimization.stage3_max_reuse_distance=0"

check_close() { # name ref tol
    local d; d=$(max_rel_diff "$TMP/$2.jsonl" "$TMP/$1.jsonl")
    awk -v d="$d" -v t="$3" 'BEGIN { exit !(d != "nan" && d <= t) }' || fail "$1 differs from $2: $d"
    echo "$1: max rel diff $d"
}
field() { sed -n "s/.*\"$2\": \([0-9.e+-]*\).*/\1/p" "$TMP/$1.jsonl" | tail -1; }

# --- equivalence matrix (fp32) ---
run ref 1 --set train.max_steps=20
for stage in 0 1 2 3; do
    for n in 1 2 3 4; do
        for ga in 1 2; do
            [ "$stage$n$ga" = "011" ] && continue
            extra=""; [ "$stage" = 3 ] && extra=$S3
            run "s${stage}_dp${n}_ga${ga}" "$n" --set train.max_steps=20 \
                --set zero_optimization.stage=$stage --set gradient_accumulation_steps=$ga $extra
            check_close "s${stage}_dp${n}_ga${ga}" ref 1e-5
        done
    done
done
run s3_persist 4 --set train.max_steps=20 --set zero_optimization.stage=3
check_close s3_persist ref 1e-5

# --- ZeRO-3 prefetch and release policy moves gathers in time, never the math ---
# bitwise the losses of s3_dp2_ga2 (released after every use, default prefetch
# bucket): prefetch off, one unit ahead, limited by max_live_parameters (a
# block does not fit), and units kept between forward and backward; the same
# bytes moved wherever the reuse distance stays 0
same_losses() { cmp -s <(losses "$TMP/$1.jsonl") <(losses "$TMP/$2.jsonl") || fail "$2 differs from $1"; }
P3="--set zero_optimization.stage3_param_persistence_threshold=0"
for k in "stage3_prefetch_bucket_size=0" "stage3_prefetch_bucket_size=1" \
         "stage3_max_live_parameters=12000" "stage3_max_reuse_distance=1000000000"; do
    name="s3_${k%%=*}_${k##*=}"
    reuse="--set zero_optimization.stage3_max_reuse_distance=0"
    [ "${k%%=*}" = stage3_max_reuse_distance ] && reuse=""
    run "$name" 2 --set train.max_steps=20 --set zero_optimization.stage=3 --set gradient_accumulation_steps=2 \
        $P3 $reuse --set "zero_optimization.$k"
    same_losses s3_dp2_ga2 "$name"
    if [ -n "$reuse" ]; then
        [ "$(field "$name" comm_bytes)" = "$(field s3_dp2_ga2 comm_bytes)" ] || fail "$name moved other bytes"
    else
        awk -v a="$(field "$name" comm_bytes)" -v b="$(field s3_dp2_ga2 comm_bytes)" 'BEGIN { exit !(a < b) }' \
            || fail "$name: keeping units did not save gathers"
    fi
    echo "$name: bitwise the losses of s3_dp2_ga2"
done

# --- mixed precision ---
run fp32_50 2 --set train.max_steps=50 --set zero_optimization.stage=2
for p in bf16 fp16; do
    run "${p}_50" 2 --set train.max_steps=50 --set zero_optimization.stage=2 --set $p.enabled=true
    # the mean of the last 10 losses. At step 50 this tiny model's loss still falls fast, so
    # runs that differ only in rounding drift a few steps apart: 0.0-0.3% on most shards, but
    # 3.6% (bf16) and 3.1% (fp16) on one (the shard is this repository's sources, so it changes
    # with every commit; layouts are compared bitwise or to 1e-5 above, not here). 5%: a broken
    # 16-bit path (a lost scale, an unrounded master) ends far above that, or diverges.
    a=$(losses "$TMP/fp32_50.jsonl" | tail -10 | awk '{ s += $1 } END { print s / NR }')
    b=$(losses "$TMP/${p}_50.jsonl" | tail -10 | awk '{ s += $1 } END { print s / NR }')
    awk -v a="$a" -v b="$b" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(d <= 0.05) }' \
        || fail "$p mean loss of steps 41-50 $b is not within 5% of fp32 $a"
    echo "$p: mean loss of steps 41-50 $b vs fp32 $a"
done

# --- forced fp16 overflow: a huge initial scale overflows, the step is skipped, the scale halves ---
run overflow 2 --set train.max_steps=12 --set fp16.enabled=true --set fp16.initial_scale_power=24 \
    --set fp16.hysteresis=1 --set zero_optimization.stage=1
grep -q '"step": 1,.*"grad_norm": null.*"loss_scale": 16777216, "skipped": 1' "$TMP/overflow.jsonl" \
    || { cat "$TMP/overflow.jsonl"; fail "step 1 was not skipped at scale 2^24"; }
grep -q '"step": 2,.*"loss_scale": 8388608,' "$TMP/overflow.jsonl" || fail "scale did not halve after the overflow"
grep -q 'fp16 gradient overflow, skipping the update; loss scale' "$TMP/overflow.log" || fail "overflow not logged"
grep -q '"skipped": 0' "$TMP/overflow.jsonl" || fail "training never recovered from the overflow"
echo "fp16 overflow: skipped, scale halved, logged"

# --- memory and communication at DP 4, bf16 (2 bytes), one micro-batch per step ---
L=2; C=32; V=256; T=16
psi=$(( V*C + T*C + L*(12*C*C + 13*C) + 2*C )); wte=$(( V*C )); N=4
for stage in 0 1 2 3; do
    extra=""; [ "$stage" = 3 ] && extra=$S3
    run "mem$stage" $N --set train.max_steps=2 --set bf16.enabled=true --set zero_optimization.stage=$stage $extra
    got=$(field "mem$stage" model_state_bytes); comm=$(field "mem$stage" comm_bytes)
    awk -v s=$stage -v p=$psi -v n=$N -v w=$wte -v got="$got" -v comm="$comm" 'BEGIN {
        f[0] = 16 * p; f[1] = 4 * p + 12 * p / n; f[2] = 2 * p + 14 * p / n; f[3] = 16 * p / n
        # elements moved per rank: 2 psi (N-1)/N; ZeRO-3 gathers every use of a unit
        # (forward, backward) and reduce-scatters once: 3 psi, plus the tied wte,
        # which two layers use in each direction (2 more gathers)
        c = (s < 3 ? 2 * p : 3 * p + 2 * w) * (n - 1) / n * 2
        dm = (got - f[s]) / f[s]; dc = (comm - c) / c
        printf "stage %d: model state %d B vs formula %d (%+.2f%%); comm %d B vs %d (%+.2f%%)\n", s, got, f[s], 100 * dm, comm, c, 100 * dc
        exit !(dm >= -0.05 && dm <= 0.05 && dc >= -0.05 && dc <= 0.05) }' || fail "stage $stage memory or comm off"
done
echo "ZeRO stages agree"
