#!/usr/bin/env bash
# A padded vocabulary takes no part in the softmax: a GPT-2 whose wte has 300 rows (made
# by zinc at vocab_size 300 and exported), loaded with model.init_from at vocab_size 320
# (and 384 under tensor parallelism, where one rank's slice is partly padding), gives the
# same forward-only loss as at vocab_size 300 (before, the zero rows counted in the
# softmax), and trains to the same losses; the padded rows stay zero.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
run v300 1 --set model.vocab_size=300 --set train.max_steps=3 --set train.save_dir="$TMP/ck" --set train.save_every=3
"$BUILD/zinc-ckpt" export "$TMP/ck/global_step3" "$TMP/w300.safetensors" > /dev/null || fail "export"
ev() { # ranks sets... -> the eval loss
    local n=$1; shift
    $MPIRUN "$n" "$BUILD/zinc-train" "$cfg" --set model.init_from="$TMP/w300.safetensors" "$@" --eval-loss 2>"$TMP/ev.err" \
        | sed -n 's/^eval loss //p'
}
ref=$(ev 1 --set model.vocab_size=300)
p320=$(ev 1 --set model.vocab_size=320)
grep -q "300 of model.vocab_size 320 rows are the real vocabulary" "$TMP/ev.err" || fail "no line about the real vocabulary"
p384=$(ev 2 --set model.vocab_size=384 --set tensor_parallel.autotp_size=2)
for x in "$p320 320" "$p384 384"; do
    set -- $x
    awk -v a="$ref" -v b="$1" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 1e-6) }' \
        || fail "eval loss at vocab_size $2 ($1) differs from vocab_size 300 ($ref)"
done
echo "eval loss at vocab_size 300: $ref; padded to 320: $p320; to 384 under TP 2: $p384"
# training from the imported weights: the same losses padded or not
run t300 1 --set model.vocab_size=300 --set model.init_from="$TMP/w300.safetensors" --set train.max_steps=8
run t320 1 --set model.vocab_size=320 --set model.init_from="$TMP/w300.safetensors" --set train.max_steps=8 \
    --set train.save_dir="$TMP/ck320" --set train.save_every=8
check_close t320 t300 1e-5
# the checkpoint records the real vocabulary; its export writes only the real rows, which
# load back at vocab_size 300 to the padded run's loss
grep -q '"vocab":{"real":300,"tensors":\["wte.weight"\]}' "$TMP/ck320/global_step8/manifest.json" \
    || fail "the manifest does not record the real vocabulary"
"$BUILD/zinc-ckpt" export "$TMP/ck320/global_step8" "$TMP/w320.safetensors" > /dev/null || fail "export 320"
head -c 4096 "$TMP/w320.safetensors" | grep -a -q '"wte.weight":{"dtype":"F32","shape":\[300,32\]' \
    || fail "the export of the padded checkpoint does not hold wte as 300 rows"
a=$(ev 1 --set model.vocab_size=300 --set model.init_from="$TMP/w320.safetensors")
b=$($MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set model.vocab_size=320 --set model.init_from="$TMP/w300.safetensors" \
    --set train.resume="$TMP/ck320/global_step8" --eval-loss 2>/dev/null | sed -n 's/^eval loss //p')
awk -v a="$a" -v b="$b" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 1e-6) }' \
    || fail "the exported 300 rows give $a, the padded checkpoint $b"
echo "export: wte as its 300 real rows; loaded at vocab_size 300 it gives the padded run's eval loss ($a)"
echo "OK"
