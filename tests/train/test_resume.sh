#!/usr/bin/env bash
# Checkpoints through the trainer:
#  - exact resume: 20 steps straight == 10 steps, save, new job, load, 10 steps (bitwise, fp32)
#  - resharding: saved at DP 4 / ZeRO-3, resumed at (DP 2, stage 1), (DP 3, stage 2),
#    (DP 1, stage 0), and back up to DP 4 from the DP 2 run's checkpoint: the next steps
#    match the uninterrupted DP 4 run (rel. diff <= 1e-5)
#  - safetensors round trip: export, then model.init_from gives the same loss (bitwise, fp32)
#  - a corrupted checkpoint is refused with a message naming the file
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
S3="--set zero_optimization.stage3_param_persistence_threshold=0 --set zero_optimization.stage3_max_reuse_distance=0"

close() { # a-file b-file tol label
    local d
    d=$(paste "$1" "$2" | awk '{ n++; d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1; r = d / a; if (r > m) m = r }
                               END { if (n == 0) print "nan"; else printf "%.3g\n", m }')
    awk -v d="$d" -v t="$3" 'BEGIN { exit !(d != "nan" && d <= t) }' || fail "$4: differs ($d)"
    echo "$4: max rel diff $d"
}

# --- exact resume at the same layout ---
run full 2 --set train.max_steps=20 --set zero_optimization.stage=1
run part1 2 --set train.max_steps=10 --set zero_optimization.stage=1 \
    --set train.save_dir="$TMP/ck" --set train.save_every=10
run part2 2 --set train.max_steps=20 --set zero_optimization.stage=1 \
    --set train.save_dir="$TMP/ck" --set train.resume=auto
cmp -s <(losses "$TMP/full.jsonl") <(cat <(losses "$TMP/part1.jsonl") <(losses "$TMP/part2.jsonl")) \
    || fail "resumed run is not bitwise identical to the uninterrupted one"
[ "$(losses "$TMP/part2.jsonl" | wc -l)" -eq 10 ] || fail "resume did not continue at step 11"
echo "exact resume: bitwise identical"

# --- resharding ---
run ref4 4 --set train.max_steps=20 --set zero_optimization.stage=3 $S3
run save4 4 --set train.max_steps=10 --set zero_optimization.stage=3 $S3 \
    --set train.save_dir="$TMP/rs" --set train.save_every=10
losses "$TMP/ref4.jsonl" | tail -10 > "$TMP/ref4.tail10"
losses "$TMP/ref4.jsonl" | tail -5 > "$TMP/ref4.tail5"
for layout in "2 1" "3 2" "1 0"; do
    set -- $layout
    run "rs_$1" "$1" --set train.max_steps=20 --set zero_optimization.stage=$2 \
        --set train.resume="$TMP/rs/global_step10" --set train.save_dir="$TMP/rs_$1" --set train.save_every=5
    losses "$TMP/rs_$1.jsonl" > "$TMP/rs_$1.l"
    [ "$(wc -l < "$TMP/rs_$1.l")" -eq 10 ] || fail "resume at dp $1 did not run steps 11-20"
    close "$TMP/ref4.tail10" "$TMP/rs_$1.l" 1e-5 "DP 4 stage 3 -> DP $1 stage $2"
done
run back4 4 --set train.max_steps=20 --set zero_optimization.stage=3 $S3 \
    --set train.resume="$TMP/rs_2/global_step15"
losses "$TMP/back4.jsonl" > "$TMP/back4.l"
close "$TMP/ref4.tail5" "$TMP/back4.l" 1e-5 "DP 2 stage 1 (step 15) -> DP 4 stage 3"

# --- safetensors round trip ---
ev() { $MPIRUN 1 "$BUILD/zinc-train" "$cfg" --eval-loss "$@" 2>"$TMP/ev.err" | sed -n 's/^eval loss //p'; }
l_ckpt=$(ev --set train.resume="$TMP/ck/global_step10")
"$BUILD/zinc-ckpt" export "$TMP/ck/global_step10" --format safetensors "$TMP/m.safetensors" >/dev/null \
    || fail "export failed"
l_st=$(ev --set model.init_from="$TMP/m.safetensors")
[ -n "$l_ckpt" ] && [ "$l_ckpt" = "$l_st" ] || { cat "$TMP/ev.err"; fail "init_from export: loss $l_st != checkpoint's $l_ckpt"; }
"$BUILD/zinc-ckpt" export "$TMP/ck/global_step10" --format safetensors "$TMP/m16.safetensors" --dtype bf16 >/dev/null \
    || fail "bf16 export failed"
l_16=$(ev --set model.init_from="$TMP/m16.safetensors")
awk -v a="$l_ckpt" -v b="$l_16" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(d < 0.01) }' \
    || fail "bf16 export loss $l_16 too far from $l_ckpt"
echo "safetensors round trip: loss $l_ckpt (fp32 export identical, bf16 $l_16)"

# --- corruption is refused, naming the file ---
f=$(ls "$TMP/ck/global_step10"/rank-*.bin | head -1)
printf '\x5a' | dd of="$f" bs=1 seek=5000 conv=notrunc status=none
out=$($MPIRUN 2 "$BUILD/zinc-train" "$cfg" --set train.max_steps=20 --set zero_optimization.stage=1 \
      --set train.resume="$TMP/ck/global_step10" 2>&1) && fail "a corrupted checkpoint loaded"
echo "$out" | grep -q "rank-0000" || { echo "$out"; fail "corruption message does not name the file"; }
echo "corrupted checkpoint refused: $(echo "$out" | grep -m1 zinc-train)"
