#!/usr/bin/env bash
# zinc's tokenizer against the `tokenizers` library (the independent reference, in a
# test-only virtual environment from scripts/pyref.sh): on a corpus of more than 1 MB
# (this repository's sources and docs, and generated prose in a dozen scripts, emoji,
# digits, whitespace runs and special tokens), five BPE tokenizers trained by the
# reference -- byte-level: GPT-2 style, Llama-3 style (a Split regex with Unicode classes,
# ignore_merges), ByteLevel with add_prefix_space; SentencePiece style: Llama-2's
# (Prepend / Replace normalizers, byte_fallback, fused unk) and Mistral's (Metaspace) --
# encode to exactly the reference's ids (add_special_tokens=False); decoding gives what
# the reference's decode gives (byte-level: the text itself). zinc-data --tokenizer and
# data.tokenizer write those ids into shards and train on them. Bad tokenizer files are
# one line and exit 2. Prints both sides' single-thread throughput.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zinc-tok.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# the reference needs the package index once (pip); without it the test cannot run here and
# says so (exit 77, counted as skipped), it never passes without comparing
PY=$(./scripts/pyref.sh "$BUILD/pyref") || { echo "SKIP: the tokenizers reference could not be installed (scripts/pyref.sh: no python3 venv or package index)"; exit 77; }
P="$BUILD/tests/tokenizer/prog_tok"
"$PY" tests/tokenizer/ref.py "$TMP" $(ls core/*.c engine/*.c data/*.c README.md) > "$TMP/ref.txt" || fail "ref.py"
cat "$TMP/ref.txt"
for name in gpt2 llama3 prefix llama2 mistral; do
    extra=""; case $name in prefix|llama2|mistral) extra=--no-roundtrip ;; esac
    "$P" "$TMP/$name.json" "$TMP/docs.bin" "$TMP/$name.zinc" $extra > "$TMP/$name.out" \
        || { cat "$TMP/$name.out"; fail "$name: zinc's encoding failed or did not round-trip"; }
    cmp -s "$TMP/$name.ids" "$TMP/$name.zinc" || fail "$name: zinc's ids differ from tokenizers' ($(cmp "$TMP/$name.ids" "$TMP/$name.zinc" | head -1))"
    "$PY" - "$TMP/$name.json" "$TMP/$name.ids" "$TMP/$name.zinc.dec" <<'PY' || fail "$name: zinc's decoding differs from tokenizers'"
import struct, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
ids, dec = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
p = q = k = 0
while p < len(ids):
    c = struct.unpack_from("<I", ids, p)[0]; v = list(struct.unpack_from("<%di" % c, ids, p + 4)); p += 4 + 4 * c
    l = struct.unpack_from("<I", dec, q)[0]; got = dec[q + 4:q + 4 + l]; q += 4 + l
    want = tok.decode(v, skip_special_tokens=False).encode("utf-8")
    assert got == want, "document %d: %r vs %r" % (k, got[:80], want[:80])
    k += 1
PY
    echo "$name: zinc $(cat "$TMP/$name.out") (ids identical to tokenizers', decoding too)"
done
"$P" "$TMP/llama3.json" "$TMP/docs.bin" "$TMP/llama3.szinc" --special > /dev/null || fail "llama3: encoding with special tokens"
cmp -s "$TMP/llama3.sids" "$TMP/llama3.szinc" || fail "llama3: ids with the post-processor's special tokens differ from tokenizers'"
echo "llama3 with special tokens (TemplateProcessing): ids identical to tokenizers' add_special_tokens=True"
bytes=$(stat -c %s "$TMP/docs.bin")
[ "$bytes" -ge 1000000 ] || fail "the corpus is $bytes bytes, less than 1 MB"

# zinc-data --tokenizer: each file encoded whole into the shard, as tokenizer(text) encodes it
# (files on 2 threads at once give the 1-thread shard)
mkdir -p "$TMP/txt"
cp README.md "$TMP/txt/a.md"; cp data/tokenizer.c "$TMP/txt/b.c"
OMP_NUM_THREADS=2 "$BUILD/zinc-data" --tokenizer "$TMP/llama3.json" -o "$TMP/s.bin" "$TMP/txt" > "$TMP/zd.out" || fail "zinc-data --tokenizer"
OMP_NUM_THREADS=1 "$BUILD/zinc-data" --tokenizer "$TMP/llama3.json" -o "$TMP/s1.bin" "$TMP/txt" > /dev/null || fail "zinc-data --tokenizer"
cmp -s "$TMP/s.bin" "$TMP/s1.bin" || fail "zinc-data --tokenizer on 2 threads wrote another shard than on 1"
"$PY" - "$TMP/llama3.json" "$TMP/s.bin" "$TMP/txt/a.md" "$TMP/txt/b.c" <<'PY' || fail "the shard's tokens differ from tokenizers'"
import struct, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
want = []
for f in sys.argv[3:]:
    want += tok.encode(open(f, encoding="utf-8").read()).ids  # tokenizer(text): with special tokens
data = open(sys.argv[2], "rb").read()
hdr = struct.unpack("<256i", data[:1024])
got = list(struct.unpack("<%dH" % hdr[2], data[1024:1024 + 2 * hdr[2]]))
assert hdr[0] == 20240520 and got == want, (hdr[:3], len(got), len(want))
PY
echo "zinc-data --tokenizer: $(cat "$TMP/zd.out"), the ids tokenizers gives"
mkdir -p "$TMP/badtxt"; cp README.md "$TMP/badtxt/a.md"; printf 'ok \xff\xfe no' > "$TMP/badtxt/b.txt"
out=$("$BUILD/zinc-data" --tokenizer "$TMP/llama3.json" -o "$TMP/bad.bin" "$TMP/badtxt" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "b.txt: tokenizer: the text is not valid UTF-8 at byte 3" \
    || fail "a file that is not UTF-8: exit $rc: $out"
[ ! -e "$TMP/bad.bin" ] || fail "a failed zinc-data left $TMP/bad.bin"
echo "refused: $out"
# a training run on text through the tokenizer (data.text + data.tokenizer)
cat > "$TMP/train.json" <<JSON
{"train_batch_size": 4, "model": {"type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 3008,
 "block_size": 32}, "data": {"text": ["$TMP/txt"], "tokenizer": "$TMP/llama3.json"}, "train": {"max_steps": 3},
 "device": "cpu"}
JSON
./scripts/mpirun.sh 1 "$BUILD/zinc-train" "$TMP/train.json" > "$TMP/train.log" 2>&1 || { cat "$TMP/train.log"; fail "training on tokenized text"; }
grep -q "tokenized the text into" "$TMP/train.log" || fail "the trainer did not say it tokenized the text"
out=$(./scripts/mpirun.sh 1 "$BUILD/zinc-train" "$TMP/train.json" --set model.vocab_size=2048 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q "more than model.vocab_size 2048" || fail "a tokenizer larger than the model: exit $rc: $out"
echo "zinc-train: data.text through data.tokenizer trains; a tokenizer larger than model.vocab_size is refused"

# bad input: one line naming the file and the thing at fault, exit 2
bad() { # text file
    local out rc
    out=$("$P" "$2" 2>&1); rc=$?
    [ $rc -eq 2 ] || fail "$2: exit $rc, not 2 ($out)"
    [ "$(echo "$out" | wc -l)" -eq 1 ] || fail "$2: more than one line: $out"
    echo "$out" | grep -q "$1" || fail "$2: '$out' does not say '$1'"
    echo "refused: $out"
}
bad "cannot read the tokenizer" "$TMP/missing.json"
mkdir -p "$TMP/folder" && cp "$TMP/gpt2.json" "$TMP/folder/tokenizer.json"
"$P" "$TMP/folder" > /dev/null || fail "a folder holding tokenizer.json does not load"
printf '{"model": ' > "$TMP/trunc.json"; bad "not a tokenizer.json" "$TMP/trunc.json"
edit() { "$PY" - "$TMP/gpt2.json" "$TMP/$1.json" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); exec(sys.argv[3]); json.dump(j, open(sys.argv[2], "w"))
PY
}
edit norm 'j["normalizer"] = {"type": "NFKC"}'; bad "normalizer NFKC: not supported yet" "$TMP/norm.json"
edit unk 'j["model"]["unk_token"] = "<nope>"'; bad 'model.unk_token "<nope>" is not in the vocabulary' "$TMP/unk.json"
edit wp 'j["model"]["type"] = "WordPiece"'; bad 'model.type "WordPiece": zinc encodes BPE models only' "$TMP/wp.json"
edit bpe 'j["model"]["end_of_word_suffix"] = "</w>"'; bad "model.end_of_word_suffix is set" "$TMP/bpe.json"
edit meta 'j["pre_tokenizer"] = {"type": "Digits"}'; bad 'type "Digits"' "$TMP/meta.json"
edit merge 'j["model"]["merges"][5] = ["zzqq", "x"]'; bad 'model.merges\[5\]: "zzqq" + "x" names a token' "$TMP/merge.json"
edit byte 'del j["model"]["vocab"]["\u0100"]'; bad "has no token for byte 0x00" "$TMP/byte.json"
edit rx 'j["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated", "invert": False}'
bad "the regex does not compile" "$TMP/rx.json"
edit strip 'j["added_tokens"][0]["lstrip"] = True'; bad "lstrip true is not supported yet" "$TMP/strip.json"
echo "OK"
