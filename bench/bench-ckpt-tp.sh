#!/usr/bin/env bash
# Checkpoints of a TP run: GPT-2 124M (L=12, C=768, vocab 50304, fp32, ZeRO-1) at TP 2
# on 2 ranks x 1 thread, one step, then a save. For this build, and, with OLD_BUILD
# set to the build of another zinc (one before boxes, say), for that one in the same
# run: manifest bytes and chunks, save seconds (zinc-train's own line), and the
# seconds and peak RSS of `zinc-ckpt verify` and `zinc-ckpt export` (median of 3).
# The two exports must be byte-identical.
# Usage: [BUILD=build] [OLD_BUILD=dir] bench/bench-ckpt-tp.sh
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
tmp=$(mktemp -d "${TMPDIR:-/tmp}/zinc-bench.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
"$BUILD/zinc-data" --ext .c,.h -o "$tmp/corpus.bin" core kernels engine models include >/dev/null
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
one() { # label build
    local b=$2 d="$tmp/$1"
    cat > "$tmp/$1.json" <<JSON
{"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
 "model": {"type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50304, "block_size": 64},
 "data": {"train": ["$tmp/corpus.bin"]}, "train": {"max_steps": 1, "save_dir": "$d", "save_every": 1, "threads": 1},
 "device": "cpu", "tensor_parallel": {"autotp_size": 2}, "zero_optimization": {"stage": 1}}
JSON
    OMP_NUM_THREADS=1 ./scripts/mpirun.sh 2 "$b/zinc-train" "$tmp/$1.json" > "$tmp/$1.log" 2>&1 \
        || { tail -5 "$tmp/$1.log"; echo "bench-ckpt-tp: $1 run failed" >&2; exit 1; }
    local save; save=$(sed -n 's/.*saved checkpoint .* in \([0-9.]*\) s.*/\1/p' "$tmp/$1.log" | tail -1)
    local m="$d/global_step1/manifest.json"
    local chunks; chunks=$(grep -c '{"file"' "$m")
    local vs=() vk=() es=() ek=()
    for i in 1 2 3; do
        /usr/bin/time -f "%e %M" -o "$tmp/t" "$b/zinc-ckpt" verify "$d/global_step1" > /dev/null
        read -r s k < "$tmp/t"; vs+=("$s"); vk+=("$k")
        /usr/bin/time -f "%e %M" -o "$tmp/t" "$b/zinc-ckpt" export "$d/global_step1" "$tmp/$1.safetensors" > /dev/null
        read -r s k < "$tmp/t"; es+=("$s"); ek+=("$k")
    done
    printf '%-6s manifest %9d B %7d chunks | save %5.2f s | verify %5.2f s %7d KiB | export %5.2f s %7d KiB\n' \
        "$1" "$(stat -c %s "$m")" "$chunks" "$save" \
        "$(printf '%s\n' "${vs[@]}" | median)" "$(printf '%s\n' "${vk[@]}" | median)" \
        "$(printf '%s\n' "${es[@]}" | median)" "$(printf '%s\n' "${ek[@]}" | median)"
}
one this "$BUILD"
if [ -n "${OLD_BUILD:-}" ]; then
    one old "$OLD_BUILD"
    cmp -s "$tmp/this.safetensors" "$tmp/old.safetensors" || { echo "bench-ckpt-tp: the exports differ" >&2; exit 1; }
    echo "exports: byte-identical"
fi
