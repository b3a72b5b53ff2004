#!/usr/bin/env bash
# Preemption (SIGTERM, SIGINT, SIGUSR1 to zinc-run or to a rank):
#  - SIGTERM to zinc-run mid-run (ZeRO-2, 2 ranks): the job exits 128+SIGUSR1 (the
#    signal zinc-run passes on) naming the signal and the checkpoint; latest verifies;
#    the resumed run's losses equal the uninterrupted run's bit for bit
#  - SIGTERM sent to one rank only (as a scheduler may): all ranks stop and save
#  - two signals: the job ends at once, latest is untouched, no rank survives zinc-run
#  - no train.save_dir: the stop says no checkpoint was saved
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
RUN=$BUILD/zinc-run
STEPS=3000
Z="--set zero_optimization.stage=2 --set train.max_steps=$STEPS"
export OMP_NUM_THREADS=1

# wait_steps FILE N: until FILE has N metrics lines (30 s at most).
wait_steps() {
    for _ in $(seq 300); do
        [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "$1 never reached $2 steps"
}
# start NAME EXTRA...: zinc-run -n 2 zinc-train in the background; pid in $job.
start() {
    local name=$1; shift
    "$RUN" -n 2 "$BUILD/zinc-train" "$cfg" $Z --set train.metrics_file="$TMP/$name.jsonl" "$@" \
        > "$TMP/$name.log" 2>&1 &
    job=$!
}
ranks_of() { pgrep -f "^$BUILD/zinc-train $cfg" || true; }

run full 2 $Z
[ "$(losses "$TMP/full.jsonl" | wc -l)" -eq $STEPS ] || fail "full run: not $STEPS steps"

# --- SIGTERM to zinc-run, then resume ---
start part1 --set train.save_dir="$TMP/ck" --set train.save_every=100000
wait_steps "$TMP/part1.jsonl" 200
kill -TERM $job
wait $job; rc=$?
[ $rc -eq 138 ] || { cat "$TMP/part1.log"; fail "SIGTERM: exit $rc, expected 138 (128+SIGUSR1)"; }
grep -q "zinc-run: stop requested" "$TMP/part1.log" || fail "zinc-run did not say the stop was requested"
line=$(grep "zinc-train: stopped by SIGUSR1 after step" "$TMP/part1.log") \
    || { cat "$TMP/part1.log"; fail "no stop message"; }
echo "$line"
done_step=$(echo "$line" | sed 's/.*after step \([0-9]*\);.*/\1/')
[ "$(cat "$TMP/ck/latest")" = "global_step$done_step" ] || fail "latest is $(cat "$TMP/ck/latest"), not global_step$done_step"
[ "$done_step" -lt $STEPS ] || fail "the job was not stopped before its end"
[ "$(losses "$TMP/part1.jsonl" | wc -l)" -eq "$done_step" ] || fail "metrics lines != stopped step"
"$BUILD/zinc-ckpt" verify "$TMP/ck/global_step$done_step" > /dev/null || fail "the stop's checkpoint does not verify"
[ -z "$(ranks_of)" ] || fail "ranks survive zinc-run: $(ranks_of)"
run part2 2 $Z --set train.save_dir="$TMP/ck" --set train.resume=auto --set train.metrics_file="$TMP/part2.jsonl"
cmp -s <(losses "$TMP/full.jsonl") <(cat <(losses "$TMP/part1.jsonl") <(losses "$TMP/part2.jsonl")) \
    || fail "stopped at $done_step and resumed: losses differ from the uninterrupted run"
echo "SIGTERM to zinc-run at step $done_step, resumed: $STEPS losses bit-identical"

# --- SIGTERM to one rank only ---
start rank --set train.save_dir="$TMP/ck2" --set train.save_every=100000
wait_steps "$TMP/rank.jsonl" 100
r=$(ranks_of | tail -1)
[ -n "$r" ] || fail "no rank found to signal"
kill -TERM "$r"
wait $job; rc=$?
grep -q "zinc-train: stopped by SIGTERM after step" "$TMP/rank.log" || { cat "$TMP/rank.log"; fail "SIGTERM to one rank: no stop message"; }
[ $rc -eq 143 ] || fail "SIGTERM to one rank: exit $rc, expected 143"
s=$(cat "$TMP/ck2/latest") && "$BUILD/zinc-ckpt" verify "$TMP/ck2/$s" > /dev/null || fail "SIGTERM to a rank: latest does not verify"
echo "SIGTERM to rank pid $r: every rank stopped and saved $s"

# --- two signals: out at once, latest untouched ---
start twice --set train.save_dir="$TMP/ck3" --set train.save_every=50
wait_steps "$TMP/twice.jsonl" 120
before=$(cat "$TMP/ck3/latest")
kill -TERM $job; sleep 0.3; kill -TERM $job  # apart: two pending SIGTERMs merge into one
t0=$(date +%s)
wait $job; rc=$?
[ $(( $(date +%s) - t0 )) -le 20 ] || fail "two signals: the job took more than 20 s to end"
[ $rc -ne 0 ] || fail "two signals: exit 0"
grep -q "second stop request" "$TMP/twice.log" || fail "two signals: zinc-run did not say so"
after=$(cat "$TMP/ck3/latest")
"$BUILD/zinc-ckpt" verify "$TMP/ck3/$after" > /dev/null || fail "two signals: latest ($after) does not verify"
[ -z "$(ranks_of)" ] || fail "two signals: ranks survive zinc-run: $(ranks_of)"
echo "two signals: exit $rc, latest $before -> $after verifies, no rank left"

# --- no save_dir ---
start nosave
wait_steps "$TMP/nosave.jsonl" 50
kill -USR1 $job
wait $job; rc=$?
grep -q "stopped by SIGUSR1 after step [0-9]*; no checkpoint saved (train.save_dir is not set)" "$TMP/nosave.log" \
    || { cat "$TMP/nosave.log"; fail "no save_dir: message"; }
[ $rc -eq 138 ] || fail "no save_dir: exit $rc"
echo "PASS"
