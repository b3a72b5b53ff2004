#!/usr/bin/env bash
# train.on_nan (fp16 off): a NaN put into one rank's gradient (ZINC_FAULT_NAN)
#  - "error" (the default): the job stops naming the step and the parameter
#    whose gradient holds it (ZeRO-2 fp32 and ZeRO-3 bf16, 2 ranks)
#  - "skip": the step is marked skipped, not applied, and training goes on; the
#    steps before it equal the run without the fault
#  - "skip" with gradients that stay non-finite (lr 1e30): the job stops after
#    train.max_skipped steps in a row, saying so
#  - a bad on_nan value is a config error
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
C="--set train.max_steps=8"

# nanrun NAME WANT_RC EXTRA...: like run, but expects exit WANT_RC (0 or non-zero)
nanrun() {
    local name=$1 want=$2; shift 2
    ZINC_FAULT_NAN=${FAULT:-} $MPIRUN 2 "$BUILD/zinc-train" "$cfg" $C --set train.metrics_file="$TMP/$name.jsonl" "$@" \
        > "$TMP/$name.log" 2>&1
    local rc=$?
    if [ "$want" = 0 ] && [ $rc -ne 0 ]; then cat "$TMP/$name.log"; fail "$name: exit $rc"; fi
    if [ "$want" != 0 ] && [ $rc -eq 0 ]; then cat "$TMP/$name.log"; fail "$name: exit 0, expected a failure"; fi
}

for layout in "--set zero_optimization.stage=2" "--set zero_optimization.stage=3 --set bf16.enabled=true"; do
    FAULT=1:5 nanrun err 1 $layout
    p=$(sed -n 's/.*fault: a NaN in the gradient of \([^ ]*\) on rank 1 at step 5.*/\1/p' "$TMP/err.log")
    [ -n "$p" ] || { cat "$TMP/err.log"; fail "the fault was not injected"; }
    grep -q "step 5: the gradient of $p is not finite" "$TMP/err.log" \
        || { cat "$TMP/err.log"; fail "on_nan error ($layout): the message does not name step 5 and $p"; }
    [ "$(losses "$TMP/err.jsonl" | wc -l)" -eq 4 ] || fail "on_nan error: steps after the bad one were logged"
    echo "on_nan error ($layout): stopped at step 5 naming $p"
done

nanrun clean 0 --set zero_optimization.stage=2
FAULT=1:5 nanrun skip 0 --set zero_optimization.stage=2 --set train.on_nan=skip
grep -q 'step 5: the gradient of .* is not finite .*update skipped (train.on_nan "skip", 1 in a row' "$TMP/skip.log" \
    || { cat "$TMP/skip.log"; fail "on_nan skip: no warning for step 5"; }
[ "$(grep -c '"skipped": 1' "$TMP/skip.jsonl")" -eq 1 ] && grep -q '"step": 5,.*"skipped": 1' "$TMP/skip.jsonl" \
    || fail "on_nan skip: step 5 is not the one skipped step"
[ "$(losses "$TMP/skip.jsonl" | wc -l)" -eq 8 ] || fail "on_nan skip: training did not go on"
cmp -s <(losses "$TMP/clean.jsonl" | head -5) <(losses "$TMP/skip.jsonl" | head -5) \
    || fail "on_nan skip: steps 1-5 differ from the run without the fault"
! cmp -s <(losses "$TMP/clean.jsonl" | sed -n 6p) <(losses "$TMP/skip.jsonl" | sed -n 6p) \
    || fail "on_nan skip: step 6 equals the run that applied step 5"
echo "on_nan skip: step 5 skipped, 8 steps done"

FAULT= nanrun many 1 --set zero_optimization.stage=2 --set train.on_nan=skip --set train.max_skipped=3 \
    --set scheduler.params.warmup_max_lr=1e30 --set gradient_clipping=0 --set train.max_steps=30
grep -q "the 3 steps before it were skipped too (train.max_skipped 3); stopping" "$TMP/many.log" \
    || { cat "$TMP/many.log"; fail "max_skipped: no stop message"; }
echo "on_nan skip: stopped after train.max_skipped 3"

"$BUILD/zinc-train" "$cfg" --set train.on_nan=ignore --check > "$TMP/bad.log" 2>&1
[ $? -eq 2 ] && grep -q "train.on_nan" "$TMP/bad.log" || { cat "$TMP/bad.log"; fail "on_nan ignore: not a config error"; }
echo "PASS"
