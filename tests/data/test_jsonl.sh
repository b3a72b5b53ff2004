#!/usr/bin/env bash
# Instruction data end to end:
#  - zinc-data on JSONL (conversations through the chatml, qwen2, llama3 and llama2 chat
#    templates, prompt/completion with and without a template, text, pre-tokenized
#    input_ids/labels, packed and unpacked) writes byte for byte the version-3 shard of an
#    independent reference (tests/data/jsonl_ref.py: the templates' own Jinja source run
#    by jinja2, the `tokenizers` library's ids and character offsets for the loss masks);
#  - zinc-train on such a shard: GPT-2 and Llama, the parallel layouts (DP 2 x ZeRO-3, TP 2
#    with sequence parallelism, 2 pipeline stages) give the single-rank losses within 1e-5,
#    and the validation loss is taken with the same masks;
#  - bad records and options are one line naming the file:line and the thing at fault,
#    exit 1 (2 for bad arguments), and leave no shard behind.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
PY=$(./scripts/pyref.sh "$BUILD/pyref") || { echo "SKIP: the reference could not be installed (scripts/pyref.sh: no python3 venv or package index)"; exit 77; }
D="$BUILD/zinc-data"

"$PY" tests/data/jsonl_ref.py "$TMP" > "$TMP/ref.txt" || { cat "$TMP/ref.txt"; fail "jsonl_ref.py"; }
while read -r name tok tmpl block input expected; do
    t=(); [ "$tmpl" = - ] || t=(--chat-template "$tmpl")
    "$D" --tokenizer "$tok" "${t[@]}" --block-size "$block" -o "$TMP/$name.bin" "$input" > "$TMP/$name.out" 2>&1 \
        || { cat "$TMP/$name.out"; fail "$name: zinc-data failed"; }
    cmp -s "$TMP/$name.bin" "$expected" || fail "$name: zinc's shard differs from the reference's ($(cmp "$TMP/$name.bin" "$expected" | head -1))"
    echo "$name: equal to the reference: $(grep "^$name:" "$TMP/ref.txt" | cut -d: -f2-) | $(cut -d: -f2- "$TMP/$name.out")"
done < "$TMP/cases.txt"
[ "$(wc -l < "$TMP/cases.txt")" -ge 8 ] || fail "the reference wrote too few cases"
"$D" info "$TMP/chatml.bin" | grep -q "documents, .* targets (.*% of tokens masked), packed for block 128" || fail "info on a document shard"

# --- training on packed conversations ---
"$D" --tokenizer "$TMP/bpe" --chat-template chatml --block-size 32 -o "$TMP/train.bin" "$TMP/chatml.jsonl" > /dev/null \
    || fail "zinc-data for training"
cfg="$TMP/train.json"
cat > "$cfg" <<JSON
{
  "train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "steps_per_print": 1000,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.1}},
  "model": {"type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 512, "block_size": 32},
  "data": {"train": ["$TMP/train.bin"], "valid": ["$TMP/train.bin"], "tokenizer": "$TMP/bpe"},
  "train": {"max_steps": 8, "eval_every": 4, "eval_batches": 2},
  "device": "cpu"
}
JSON
export OMP_NUM_THREADS=1
L=(--set model.type=llama --set model.n_kv_head=2 --set model.intermediate_size=64 --set model.tie_word_embeddings=false)
run g1 1
run g_dp2z3 2 --set zero_optimization.stage=3
run g_tp2 2 --set tensor_parallel.autotp_size=2 --set tensor_parallel.sequence_parallel=true
run g_pp2 2 --set pipeline.stages=2
run l1 1 "${L[@]}"
run l_dp2z2 2 "${L[@]}" --set zero_optimization.stage=2
run l_tp2 2 "${L[@]}" --set tensor_parallel.autotp_size=2
for r in g_dp2z3 g_tp2 g_pp2; do check_close $r g1 1e-5; done
for r in l_dp2z2 l_tp2; do check_close $r l1 1e-5; done
v=$(field g1 eval_loss); vd=$(field g_dp2z3 eval_loss)
awk -v a="$v" -v b="$vd" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && a < 20 && d <= 1e-5 * a) }' \
    || fail "validation loss on documents: $v at 1 rank, $vd at DP 2"
echo "validation loss on the masked documents: $v (DP 2: $vd)"
# data.train naming the .jsonl itself: tokenized once into a cached shard (the same one
# zinc-data makes), reused by the next run
J=(--set "data.train=[\"$TMP/chatml.jsonl\"]" --set "data.valid=[\"$TMP/chatml.jsonl\"]"
   --set "data.tokenizer=\"$TMP/bpe\"" --set data.chat_template=chatml --set "data.cache_dir=\"$TMP/cache\"")
run j1 1 "${J[@]}"
cmp -s "$TMP"/cache/chatml.*.bin "$TMP/train.bin" || { ls -la "$TMP"/cache "$TMP/train.bin"; grep data: "$TMP/j1.log"; fail "the cached shard differs from zinc-data's"; }
same g1 j1
grep -q "data: .*chatml.jsonl -> .*/cache/chatml\.[0-9a-f]*\.bin in .* samples, .* targets" "$TMP/j1.log" || { cat "$TMP/j1.log"; fail "no tokenization summary"; }
cmp -s "$TMP"/cache/chatml.*.bin "$TMP/train.bin" || fail "the cached shard differs from zinc-data's"
run j2 2 "${J[@]}" --set zero_optimization.stage=3
grep -q "the cached shard" "$TMP/j2.log" || fail "the second run did not reuse the cached shard"
check_close j2 g1 1e-5
bad "data.chat_template" 1 "${J[@]}" --set data.chat_template=vicuna
printf '{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n' > "$TMP/robot.jsonl"
bad 'robot.jsonl:1: message 2: unknown role "robot"' 2 "${J[@]}" --set "data.train=[\"$TMP/robot.jsonl\"]"
[ -z "$(ls "$TMP"/cache/robot.* 2>/dev/null)" ] || fail "a failed tokenization left a cached shard"

# --- bad input: one line, nothing left behind ---
bad_data() { # WANT ARGS...: zinc-data exits non-zero with a line containing WANT, no OUT written
    local want=$1; shift
    local out rc
    rm -f "$TMP/bad.bin"
    out=$("$D" -o "$TMP/bad.bin" "$@" 2>&1); rc=$?
    [ $rc -ne 0 ] || fail "zinc-data $*: exit 0"
    echo "$out" | grep -qF -- "$want" || { echo "$out"; fail "zinc-data $*: no line saying '$want'"; }
    [ "$(echo "$out" | wc -l)" -eq 1 ] || [ $rc -eq 2 ] || { echo "$out"; fail "zinc-data $*: more than one line"; }
    [ ! -e "$TMP/bad.bin" ] || fail "zinc-data $*: left a shard behind"
    echo "refused (exit $rc): $(echo "$out" | head -1)"
}
j() { printf '%s\n' "$@" > "$TMP/b.jsonl"; echo "$TMP/b.jsonl"; }
T=(--tokenizer "$TMP/bpe" --chat-template chatml)
bad_data "b.jsonl:2: not valid JSON" "${T[@]}" "$(j '{"text": "fine"}' '{"text": "no end"')"
bad_data 'b.jsonl:1: message 2: unknown role "tool"' "${T[@]}" \
    "$(j '{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}')"
bad_data "b.jsonl:1: chat messages need a chat template" --tokenizer "$TMP/bpe" \
    "$(j '{"messages": [{"role": "user", "content": "hi"}]}')"
bad_data 'b.jsonl:3: a record needs "text", "prompt" and "completion", "messages" or "input_ids" (it has: question)' "${T[@]}" \
    "$(j '{"text": "a"}' '' '{"question": "b"}')"
bad_data "b.jsonl:1: labels[1] is neither -100 nor input_ids[1]" --tokenizer "$TMP/bpe" \
    "$(j '{"input_ids": [5, 6, 7], "labels": [-100, 9, 7]}')"
bad_data "b.jsonl:1: message 1 needs string \"role\" and \"content\"" "${T[@]}" "$(j '{"messages": [{"role": "user"}]}')"
bad_data "llama2 needs the roles to alternate" --tokenizer "$TMP/sp" --chat-template llama2 \
    "$(j '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}')"
bad_data "chat template chatml needs a tokenizer" --chat-template chatml "$(j '{"text": "a"}')"
bad_data "zinc knows chatml, qwen2, llama3 and llama2" --tokenizer "$TMP/bpe" --chat-template vicuna "$(j '{"text": "a"}')"
bad_data "nope.jsonl" --tokenizer "$TMP/bpe" "$TMP/nope.jsonl"
bad_data "end-of-sequence token <|nope|> is not in the tokenizer" --tokenizer "$TMP/bpe" --eos '<|nope|>' "$(j '{"text": "a"}')"
bad_data "give JSONL inputs or text inputs, not both" --tokenizer "$TMP/bpe" "$(j '{"text": "a"}')" README.md
echo OK
