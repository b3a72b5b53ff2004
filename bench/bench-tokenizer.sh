#!/usr/bin/env bash
# Single-thread encoding throughput of zinc's tokenizer against the `tokenizers`
# library, on the same corpus and tokenizers in the same run: tests/tokenizer/ref.py
# builds a 1.3 MB mixed corpus (this repository's sources and docs plus generated
# prose in a dozen scripts, emoji, digits, whitespace runs), trains five BPE tokenizers
# (byte-level: GPT-2 style, Llama-3 style, ByteLevel with a prefix space; SentencePiece
# style: Llama-2's and Mistral's), times
# tokenizers' encode() document by document on one thread, and zinc's prog_tok times
# zinc_tokenizer_encode on the same documents. Prints MB/s of both and the ratio, for
# `runs` runs. The ids are checked identical by tests/tokenizer/test_tokenizer.sh.
# Usage: bench/bench-tokenizer.sh [runs=3]   (BUILD=build by default)
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
runs=${1:-3}
PY=$(./scripts/pyref.sh "$BUILD/pyref")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$runs"); do
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$PY" tests/tokenizer/ref.py "$tmp" \
        $(ls core/*.c engine/*.c data/*.c README.md) > "$tmp/ref.txt"
    for name in gpt2 llama3 prefix llama2 mistral; do
        ref=$(sed -n "s/^$name: .*single-thread \([0-9.]*\) MB\/s/\1/p" "$tmp/ref.txt")
        got=$(OMP_NUM_THREADS=1 "$BUILD/tests/tokenizer/prog_tok" "$tmp/$name.json" "$tmp/docs.bin" "$tmp/$name.zinc" \
              --no-roundtrip | sed -n 's/.*MB_per_s \([0-9.]*\).*/\1/p')
        cmp -s "$tmp/$name.ids" "$tmp/$name.zinc" || { echo "run $r $name: ids differ" >&2; exit 1; }
        awk -v r="$r" -v n="$name" -v a="$got" -v b="$ref" 'BEGIN { printf "run %d %-7s zinc %6.2f MB/s  tokenizers %6.2f MB/s  ratio %.2f\n", r, n, a, b, a / b }'
    done
done
