#!/usr/bin/env bash
# model.from_pretrained: a Hugging Face GPT-2 folder (config.json, model.safetensors or
# shards named by model.safetensors.index.json, tokenizer.json) sets the model's shape,
# loads the weights (vocabulary padded past config.json's vocab_size, the padding kept
# out of the softmax) and the tokenizer; the forward-only loss equals the same weights
# loaded into the unpadded model from one file; zinc-ckpt export --format hf writes a folder
# (config.json, shards + index, tokenizer files) that loads back to the checkpoint's loss.
# Bad folders are one line and exit 2.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
PY=$(./scripts/pyref.sh "$BUILD/pyref") || { echo "SKIP: no Python to split the weight shards (scripts/pyref.sh)"; exit 77; }
run w 1 --set model.vocab_size=300 --set train.max_steps=3 --set train.save_dir="$TMP/ck" --set train.save_every=3
"$BUILD/zinc-ckpt" export "$TMP/ck/global_step3" "$TMP/w.safetensors" > /dev/null || fail "export"
mkdir -p "$TMP/hf" "$TMP/hf2"
cat > "$TMP/hf/config.json" <<JSON
{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 32, "n_head": 4,
 "n_positions": 16, "vocab_size": 300, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
 "tie_word_embeddings": true}
JSON
cp "$TMP/w.safetensors" "$TMP/hf/model.safetensors"
cp "$TMP/hf/config.json" "$TMP/hf2/"
# the same weights as two shards with an index, names with transformer. as transformers writes them
"$PY" - "$TMP/w.safetensors" "$TMP/hf2" <<'PY' || fail "splitting the weights"
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
names = sorted(k for k in hdr if k != "__metadata__")
wm = {}
for s, part in enumerate([names[::2], names[1::2]]):
    h, blobs, off = {}, [], 0
    for k in part:
        a, b = hdr[k]["data_offsets"]
        h["transformer." + k] = {"dtype": hdr[k]["dtype"], "shape": hdr[k]["shape"], "data_offsets": [off, off + b - a]}
        blobs.append(data[a:b]); off += b - a
        wm["transformer." + k] = "model-%05d-of-00002.safetensors" % (s + 1)
    j = json.dumps(h).encode(); j += b" " * (-len(j) % 8)
    open("%s/model-%05d-of-00002.safetensors" % (sys.argv[2], s + 1), "wb").write(struct.pack("<Q", len(j)) + j + b"".join(blobs))
json.dump({"metadata": {"total_size": len(data)}, "weight_map": wm}, open(sys.argv[2] + "/model.safetensors.index.json", "w"))
PY
ev() { $MPIRUN "${N:-1}" "$BUILD/zinc-train" "$cfg" "$@" --eval-loss 2>"$TMP/ev.err" | sed -n 's/^eval loss //p'; }
ref=$(ev --set model.vocab_size=300 --set model.init_from="$TMP/w.safetensors")
one=$(ev --set model.from_pretrained="$TMP/hf")
two=$(ev --set model.from_pretrained="$TMP/hf2")
tp2=$(N=2 ev --set model.from_pretrained="$TMP/hf2" --set tensor_parallel.autotp_size=2)
for x in "$one folder" "$two shards" "$tp2 shards-TP-2"; do
    set -- $x
    awk -v a="$ref" -v b="$1" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 1e-6) }' \
        || fail "from_pretrained ($2) gives eval loss '$1', the weights in the unpadded model '$ref'"
done
echo "eval loss: one file at vocab_size 300 $ref; from_pretrained folder $one, sharded $two, sharded at TP 2 $tp2"
# the folder's tokenizer becomes data.tokenizer, the model's shape comes from config.json
cp "$TMP/hf/config.json" "$TMP/hf3.json"
"$PY" - "$TMP/hf/tokenizer.json" <<'PY' || fail "making the folder's tokenizer"
import sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
t = Tokenizer(models.BPE()); t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
t.train_from_iterator(["hello world, a tiny tokenizer for a tiny model"] * 4, trainers.BpeTrainer(
    vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
t.save(sys.argv[1])
PY
"$BUILD/zinc-train" "$cfg" --set model.from_pretrained="$TMP/hf" --check 2>/dev/null > "$TMP/check.json"
grep -q "\"tokenizer\": \"$TMP/hf\"" "$TMP/check.json" || fail "data.tokenizer is not the folder's"
grep -q '"vocab_size": 384' "$TMP/check.json" || fail "vocab_size is not 300 padded to 384"
grep -q '"n_positions"\|"block_size": 16' "$TMP/check.json" || fail "block_size is not config.json's n_positions"
echo "from_pretrained sets vocab_size 384 (300 padded), block_size 16, data.tokenizer the folder"
# zinc-ckpt export --format hf: the folder from_pretrained loads back to the checkpoint's loss
run ft 1 --set model.from_pretrained="$TMP/hf" --set train.max_steps=4 --set train.save_dir="$TMP/ft" --set train.save_every=4
"$BUILD/zinc-ckpt" export "$TMP/ft/global_step4" --format hf "$TMP/out" --max-shard-size 20KB > "$TMP/ex.out" \
    || { cat "$TMP/ex.out"; fail "export --format hf"; }
ls "$TMP/out"/model-0000*-of-0000*.safetensors > /dev/null 2>&1 && [ -f "$TMP/out/model.safetensors.index.json" ] \
    || fail "export --format hf --max-shard-size 20KB wrote no shards with an index: $(ls "$TMP/out")"
[ -f "$TMP/out/tokenizer.json" ] || fail "the tokenizer's files were not copied"
grep -q '"vocab_size": 300' "$TMP/out/config.json" || fail "config.json's vocab_size is not the real 300"
a=$(ev --set model.from_pretrained="$TMP/out")
b=$($MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set model.from_pretrained="$TMP/hf" --set train.resume="$TMP/ft/global_step4" \
    --eval-loss 2>/dev/null | sed -n 's/^eval loss //p')
awk -v a="$a" -v b="$b" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 1e-6) }' \
    || fail "the exported folder gives $a, its checkpoint $b"
"$BUILD/zinc-ckpt" export "$TMP/ft/global_step4" --format hf "$TMP/out1" > /dev/null || fail "export --format hf"
[ -f "$TMP/out1/model.safetensors" ] && [ ! -f "$TMP/out1/model.safetensors.index.json" ] || fail "one shard is not model.safetensors"
echo "export --format hf: $(cat "$TMP/ex.out"); from_pretrained of it $a = the checkpoint's $b"

# bad folders
bad() { # text sets...
    local want=$1; shift
    local out rc
    out=$($MPIRUN "${N:-1}" "$BUILD/zinc-train" "$cfg" "$@" --eval-loss 2>&1); rc=$?
    [ $rc -eq 2 ] || { echo "$out"; fail "$*: exit $rc, not 2"; }
    echo "$out" | grep -q "$want" || { echo "$out"; fail "$*: no line saying '$want'"; }
    echo "refused: $(echo "$out" | grep -m1 "$want")"
}
bad "config.json: No such file or directory" --set model.from_pretrained="$TMP/nope"
mkdir -p "$TMP/l" "$TMP/b" "$TMP/m"
sed 's/"gpt2"/"llama"/' "$TMP/hf/config.json" > "$TMP/l/config.json" # a GPT-2 config.json called llama
bad "config.json: num_hidden_layers: expected an integer >= 1" --set model.from_pretrained="$TMP/l"
sed 's/"gpt2"/"bert"/' "$TMP/hf/config.json" > "$TMP/b/config.json"
bad 'model_type "bert": zinc knows gpt2, llama, mistral and qwen2' --set model.from_pretrained="$TMP/b"
cp "$TMP/hf2/"* "$TMP/m/"; rm "$TMP/m/model-00002-of-00002.safetensors"
bad "model.safetensors.index.json names model-00002-of-00002.safetensors" --set model.from_pretrained="$TMP/m"
mkdir -p "$TMP/x" # weights of two layers, a config.json of one: the second layer is not dropped
sed 's/"n_layer": 2/"n_layer": 1/' "$TMP/hf/config.json" > "$TMP/x/config.json"; cp "$TMP/hf/model.safetensors" "$TMP/x/"
bad "tensors the model does not take (h.1." --set model.from_pretrained="$TMP/x"
N=2 bad "tensors the model does not take (h.1." --set model.from_pretrained="$TMP/x" --set tensor_parallel.autotp_size=2
echo "OK"
