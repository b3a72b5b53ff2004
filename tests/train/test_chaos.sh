#!/usr/bin/env bash
# Chaos: 20 trials, each SIGKILLs a random rank at a random moment (saves
# included) of a 2- or 3-rank ZeRO-2/ZeRO-3 run that checkpoints every 40
# steps, under zinc-run --max-restarts 3. Every trial must complete within the
# bound, restart at least once, leave a `latest` that verifies, and end with a
# loss curve (the metrics file, one line per step) equal bit for bit to the
# uninterrupted run's at the same layout. First, the kill just after a save,
# on purpose.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
shard=$(make_shard)
cfg=$(tiny_config "$shard")
RUN=$BUILD/zinc-run
STEPS=800
TRIALS=${ZINC_CHAOS_TRIALS:-20}
TIMEOUT=30
export OMP_NUM_THREADS=1
unset ZINC_RESTART
C="--set train.max_steps=$STEPS --set comm_timeout_s=$TIMEOUT"
S3="--set zero_optimization.stage3_param_persistence_threshold=0"

for n in 2 3; do
    for z in 2 3; do
        run "ref_${n}_$z" $n $C --set zero_optimization.stage=$z $S3
        [ "$(losses "$TMP/ref_${n}_$z.jsonl" | wc -l)" -eq $STEPS ] || fail "reference $n ranks stage $z: not $STEPS steps"
    done
done

# the moment a random kill rarely hits: a rank lost just after a checkpoint is
# committed (the resumed run starts after that step, whose metrics line must
# already be in the file)
for victim in 0 1; do
    t=$TMP/saved$victim; mkdir -p "$t"
    ZINC_FAULT_KILL_SAVED=$victim:80 "$RUN" -n 2 --max-restarts 1 "$BUILD/zinc-train" "$cfg" $C \
        --set zero_optimization.stage=3 $S3 --set train.save_dir="$t/ck" --set train.save_every=40 \
        --set train.metrics_file="$t/m.jsonl" > "$t/log" 2>&1 || { tail -20 "$t/log"; fail "kill after save (rank $victim): exit $?"; }
    grep -q "restart 1 of 1" "$t/log" || fail "kill after save (rank $victim): no restart"
    grep -q "loaded checkpoint .*(step 80," "$t/log" || fail "kill after save (rank $victim): did not resume at step 80"
    cmp -s <(losses "$TMP/ref_2_3.jsonl") <(losses "$t/m.jsonl") \
        || fail "kill after save (rank $victim): losses differ from the uninterrupted run"
    echo "rank $victim killed just after checkpoint 80: resumed there, $STEPS losses bit-identical"
done

RANDOM=12345 # the trials' choices are the same on every run
done_trials=0; attempts=0
while [ $done_trials -lt "$TRIALS" ]; do
    attempts=$((attempts + 1))
    [ $attempts -le $((TRIALS * 2)) ] || fail "too many trials ended before their kill"
    n=$((2 + RANDOM % 2)); z=$((2 + RANDOM % 2))
    delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.8 + 2.2 * r / 32767 }')
    t=$TMP/t$attempts; mkdir -p "$t"
    t0=$(date +%s)
    "$RUN" -n $n --max-restarts 3 "$BUILD/zinc-train" "$cfg" $C --set zero_optimization.stage=$z $S3 \
        --set train.save_dir="$t/ck" --set train.save_every=40 --set train.metrics_file="$t/m.jsonl" \
        > "$t/log" 2>&1 &
    job=$!
    sleep "$delay"
    pids=($(pgrep -f "^$BUILD/zinc-train $cfg" || true))
    if [ ${#pids[@]} -eq 0 ]; then wait $job; continue; fi
    victim=${pids[$((RANDOM % ${#pids[@]}))]}
    kill -KILL "$victim" 2>/dev/null
    wait $job; rc=$?
    secs=$(( $(date +%s) - t0 ))
    grep -q "restart 1 of 3" "$t/log" || { [ $rc -eq 0 ] && continue; cat "$t/log"; fail "trial $attempts: exit $rc without a restart"; }
    [ $rc -eq 0 ] || { tail -30 "$t/log"; fail "trial $attempts ($n ranks, stage $z, kill at ${delay}s): exit $rc"; }
    [ $secs -le $((TIMEOUT + 60)) ] || fail "trial $attempts took $secs s"
    l=$(cat "$t/ck/latest") && "$BUILD/zinc-ckpt" verify "$t/ck/$l" > /dev/null \
        || fail "trial $attempts: latest ($l) does not verify"
    if ! cmp -s <(losses "$TMP/ref_${n}_$z.jsonl") <(losses "$t/m.jsonl"); then
        diff <(losses "$TMP/ref_${n}_$z.jsonl" | nl) <(losses "$t/m.jsonl" | nl) | head -8
        grep -v '"step"' "$t/log" | tail -40
        fail "trial $attempts ($n ranks, stage $z, kill at ${delay}s): losses differ from the uninterrupted run"
    fi
    resumed=$(sed -n "s/.*loaded checkpoint .*(step \([0-9]*\),.*/\1/p" "$t/log" | head -1)
    echo "trial $((done_trials + 1)): $n ranks, ZeRO-$z, rank pid $victim killed at ${delay}s, restarted (from step ${resumed:-0}), $secs s, $STEPS losses bit-identical"
    done_trials=$((done_trials + 1))
    rm -rf "$t"
done
[ -z "$(pgrep -f "^$BUILD/zinc-train $cfg")" ] || fail "ranks left running"
echo "PASS: $done_trials chaos trials"
