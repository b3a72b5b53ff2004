#!/usr/bin/env bash
# The fine-tuning example (configs/finetune_llama.json), end to end with nothing downloaded:
# a tokenizer trained on this repository's docs (tests/data/sft_docs.py, with ChatML's
# special tokens), a small Llama pre-trained by zinc on the same docs and exported as a
# Hugging Face folder, then the example config fine-tunes it on conversations made from
# the docs (data.train names the .jsonl; chat template chatml) at 2 ranks, ZeRO-2:
# the validation loss on held-out conversations falls, the run checkpoints, and the
# fine-tuned model exports as a folder that model.from_pretrained reads back.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
PY=$(./scripts/pyref.sh "$BUILD/pyref") || { echo "SKIP: the reference could not be installed (scripts/pyref.sh: no python3 venv or package index)"; exit 77; }
export OMP_NUM_THREADS=1
S=$TMP/sft
"$PY" tests/data/sft_docs.py "$S" README.md bench/RESULTS.md || fail "sft_docs.py"
# the base model: a small Llama pre-trained on the docs' text, exported with its tokenizer
cat > "$S/pre.json" <<JSON
{"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "steps_per_print": 1000,
 "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
 "model": {"type": "llama", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "intermediate_size": 128,
           "vocab_size": 1024, "block_size": 256, "tie_word_embeddings": false},
 "data": {"text": ["README.md", "bench/RESULTS.md"], "tokenizer": "$S/tok"},
 "train": {"max_steps": 30, "save_dir": "$S/pre_ck"}, "device": "cpu"}
JSON
$MPIRUN 1 "$BUILD/zinc-train" "$S/pre.json" > "$S/pre.log" 2>&1 || { cat "$S/pre.log"; fail "pre-training the base model"; }
"$BUILD/zinc-ckpt" export "$S/pre_ck/global_step30" --format hf "$S/model" > "$S/export.log" 2>&1 \
    || { cat "$S/export.log"; fail "export of the base model"; }
[ -f "$S/model/tokenizer.json" ] && [ -f "$S/model/tokenizer_config.json" ] || fail "the base model folder lacks its tokenizer"
# the example config as shipped, its paths moved under this test's directory
cfg=configs/finetune_llama.json
P=(--set "model.from_pretrained=\"$S/model\"" --set "data.train=[\"$S/train.jsonl\"]" --set "data.valid=[\"$S/valid.jsonl\"]"
   --set "data.tokenizer=\"$S/model\"" --set "train.save_dir=\"$S/ckpt\"")
run ft 2 "${P[@]}"
grep -q "initialized .* parameters from $S/model" "$TMP/ft.log" || { cat "$TMP/ft.log"; fail "the fine-tune did not start from the base model"; }
grep -q "train.jsonl -> .* samples, .* targets" "$TMP/ft.log" || { cat "$TMP/ft.log"; fail "no tokenization summary"; }
ev=$(sed -n 's/.*"eval_loss": \([0-9.e+-]*\).*/\1/p' "$TMP/ft.jsonl")
first=$(echo "$ev" | head -1); last=$(echo "$ev" | tail -1)
[ "$(echo "$ev" | wc -l)" -ge 3 ] || fail "expected validation losses at steps 20, 40, 60: $ev"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' || fail "the validation loss did not fall: $first -> $last"
echo "fine-tuned on $(wc -l < "$S/train.jsonl") conversations: validation loss $first -> $last"
"$BUILD/zinc-ckpt" verify "$S/ckpt/global_step60" > /dev/null || fail "the fine-tune's checkpoint does not verify"
"$BUILD/zinc-ckpt" export "$S/ckpt/global_step60" --format hf "$S/tuned" > /dev/null 2>&1 || fail "export of the fine-tuned model"
$MPIRUN 1 "$BUILD/zinc-train" "$cfg" "${P[@]}" --set "model.from_pretrained=\"$S/tuned\"" --set train.max_steps=1 \
    --set train.eval_every=1 --set "train.save_dir=\"\"" --set "train.metrics_file=\"$S/re.jsonl\"" > "$S/re.log" 2>&1 \
    || { cat "$S/re.log"; fail "from_pretrained of the fine-tuned folder"; }
re=$(sed -n 's/.*"eval_loss": \([0-9.e+-]*\).*/\1/p' "$S/re.jsonl" | head -1)
awk -v a="$re" -v b="$last" 'BEGIN { exit !(a < b * 1.05) }' || fail "the exported fine-tuned model evaluates at $re, not near $last"
echo "the exported fine-tuned folder reloads: validation loss $re after one step at warm-up lr (the fine-tune ended at $last)"
echo OK
