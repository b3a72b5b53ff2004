#!/usr/bin/env bash
# The validation loss (data.valid, train.eval_every, train.eval_batches): shown in the
# step line and the metrics (eval_loss, eval_ppl) every eval_every steps and at the end;
# the same at DP 1, DP 2 and PP 2; equal to the forward-only loss of the same weights on
# the same batch computed another way (the checkpoint of that step, --eval-loss on the
# held-out shard as training data); bad setups are one line and exit 2.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
"$BUILD/zinc-data" -o "$TMP/valid.bin" README.md > /dev/null || fail "zinc-data"
V="--set data.valid=$TMP/valid.bin --set train.eval_every=3 --set train.max_steps=7"
run e1 1 $V
run e2 2 $V
run ep 2 $V --set pipeline.stages=2
ev() { sed -n 's/.*"step": \([0-9]*\),.*"eval_loss": \([^,]*\),.*/\1 \2/p' "$TMP/$1.jsonl"; }
[ "$(ev e1 | cut -d' ' -f1 | tr '\n' ' ')" = "3 6 7 " ] || fail "evaluated at steps $(ev e1 | cut -d' ' -f1 | tr '\n' ' '), not 3 6 7"
for r in e2 ep; do
    paste <(ev e1) <(ev "$r") | awk '{ d = $2 - $4; if (d < 0) d = -d; if (d > 1e-6 * $2) exit 1 }' \
        || fail "$r's validation losses differ from one rank's: $(ev "$r" | tr '\n' ' ')"
done
grep -q "| eval [0-9.]* (ppl [0-9.]*)" "$TMP/e1.log" || fail "the step line shows no eval loss"
echo "validation loss at steps 3, 6, 7: $(ev e1 | cut -d' ' -f2 | tr '\n' ' ')(DP 2 and PP 2 the same)"
# the same number another way: step 3's checkpoint, forward-only on the held-out shard's first batch
run c1 1 --set data.valid="$TMP/valid.bin" --set train.eval_every=3 --set train.eval_batches=1 --set train.max_steps=3 \
    --set train.save_dir="$TMP/ck" --set train.save_every=3
want=$(ev c1 | awk '$1 == 3 { print $2 }')
got=$($MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set data.train="$TMP/valid.bin" --set train.resume="$TMP/ck/global_step3" \
      --eval-loss 2>/dev/null | sed -n 's/^eval loss //p')
awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 1e-6 * a) }' \
    || fail "eval_loss at step 3 is $want, --eval-loss on its checkpoint gives $got"
echo "step 3's eval_loss $want = --eval-loss of its checkpoint on the held-out data $got"
out=$($MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set train.eval_every=3 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q "train.eval_every: 3 needs data.valid" || fail "eval_every without data.valid: exit $rc: $out"
head -c 1500 "$TMP/valid.bin" > "$TMP/tiny.bin"
out=$($MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set data.valid="$TMP/tiny.bin" 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q "data.valid" || fail "a too small or bad data.valid: exit $rc: $out"
echo "refused: $(echo "$out" | grep -m1 "data.valid")"
echo "OK"
