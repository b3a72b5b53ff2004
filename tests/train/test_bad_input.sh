#!/usr/bin/env bash
# The defects a hostile probe found in zinc-train, zinc-data and the data
# path, as reproductions: each must now end with one clear line naming the
# thing at fault (exit 2 for a config value), never a crash, a hang, a
# silent wrong run or a file left behind.
#   - 64-bit config values that narrowed to int (a heap overflow, 2 layers
#     trained for n_layer 2^32+2, keep_last 2^32+1 keeping 1)
#   - n_embd 2^33 with an "auto" bucket (resolved to 0)
#   - named pipes and device files as data (hung, or streamed /dev/zero)
#   - a text tokenization killed mid-write (left OUT.tmp behind)
#   - train.save_dir that is a file (failed only at the first save)
#   - out of memory (message without the bytes asked and held)
#   - an error caused by --set blamed on the config file
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
T="$BUILD/zinc-train"
D="$BUILD/zinc-data"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1:max_allocation_size_mb=8000"

expect() { # want_status pattern cmd...  (20 s limit: nothing here may wait)
    local want=$1 pat=$2; shift 2
    local out st
    out=$(timeout 20 "$@" 2>&1); st=$?
    [ "$st" -ne 124 ] || fail "hung: $*"
    [ "$st" -eq "$want" ] || { echo "$out" >&2; fail "expected status $want, got $st: $*"; }
    echo "$out" | grep -q -- "$pat" || { echo "$out" >&2; fail "output lacks '$pat': $*"; }
    ! echo "$out" | grep -q "^step " || { echo "$out" >&2; fail "trained although it should not: $*"; }
    echo "ok: $pat"
}

# 1. integers the consumer cannot hold: refused in the config, exit 2
expect 2 "model.n_layer: expected an integer in 1..16384, found 4294967294" \
    "$T" configs/demo.json --set model.n_layer=4294967294 --estimate-memory -n 2
expect 2 "model.n_layer: expected an integer in 1..16384" "$T" "$cfg" --set model.n_layer=4294967298
expect 2 "model.block_size: expected an integer in 1..16777216" "$T" "$cfg" --set model.block_size=4294967360
expect 2 "train.keep_last: expected an integer in 0..1000000" "$T" "$cfg" --set train.keep_last=4294967297
expect 2 "train_micro_batch_size_per_gpu: expected an integer in 1..1048576" \
    "$T" "$cfg" --set train_batch_size='"auto"' --set train_micro_batch_size_per_gpu=1099511627776
expect 2 "aio.queue_depth: expected an integer in 1..4096" "$T" "$cfg" --set aio.queue_depth=2147483648
expect 2 "aio.intra_op_parallelism: expected an integer in 1..256" \
    "$T" "$cfg" --set aio.intra_op_parallelism=100000 --check
# 2. derived values: n_embd 2^33 is out of range rather than an "auto" bucket of 0
expect 2 "model.n_embd: expected an integer in 1..1048576" "$T" "$cfg" --set model.n_embd=8589934592 \
    --set zero_optimization.reduce_bucket_size='"auto"'
expect 2 "tokens per micro-batch" "$T" "$cfg" --set train_batch_size=1048576 --set model.block_size=4096
expect 2 "parameters; zinc handles at most" "$T" "$cfg" --set model.n_layer=16384 --set model.n_embd=1048576 \
    --set model.n_head=8192 --estimate-memory -n 1

# 4. named pipes and device files: refused before a byte is read
mkfifo "$TMP/pipe.bin" "$TMP/pipe.txt"
expect 2 "pipe.bin: token shard is a named pipe, not a regular file" "$T" "$cfg" --set 'data.train=["'"$TMP"'/pipe.bin"]'
text_cfg() { # the tiny config reading data.text = [$1]
    sed 's|"data": {"train": \[[^]]*\]}|"data": {"text": ["'"$1"'"]}|' "$cfg" > "$TMP/text.json"
    grep -q '"text"' "$TMP/text.json" || fail "text config"
    echo "$TMP/text.json"
}
expect 2 "/dev/zero: text input is a character device" "$T" "$(text_cfg /dev/zero)"
expect 2 "pipe.txt: text input is a named pipe" "$T" "$(text_cfg "$TMP/pipe.txt")"
expect 1 "token shard is a named pipe" "$D" info "$TMP/pipe.bin"
expect 1 "text input is a character device" "$D" -o "$TMP/zero.bin" /dev/zero

# a tokenization killed mid-write (SIGKILL: nothing can clean up) leaves no file
mkdir -p "$TMP/big"
truncate -s 1500M "$TMP/big/a.txt"
"$D" --ext .txt -o "$TMP/out/big.bin" "$TMP/big" >/dev/null 2>&1 & # no such dir: fails at once
wait $! && fail "zinc-data wrote into a missing directory"
mkdir -p "$TMP/out"
"$D" --ext .txt -o "$TMP/out/big.bin" "$TMP/big" >/dev/null 2>&1 &
pid=$!
sleep 0.5
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
left=$(ls -A "$TMP/out")
[ -z "$left" ] || fail "a killed tokenization left files behind: $left"
rm -f "$TMP/big/a.txt"
echo "ok: a killed tokenization leaves nothing behind"

# 8. train.save_dir must be a writable directory before the first step
touch "$TMP/afile"
expect 2 "train.save_dir: .*afile is a regular file, not a directory" "$T" "$cfg" --set train.save_dir="$TMP/afile"
expect 2 "train.save_dir: .*afile/ckpt: cannot create directory: Not a directory" "$T" "$cfg" --set train.save_dir="$TMP/afile/ckpt"
timeout 60 "$T" "$cfg" --set train.save_dir="$TMP/new/deep/ckpt" --set train.max_steps=1 >/dev/null 2>&1 \
    || fail "a missing save_dir was not created"
[ -d "$TMP/new/deep/ckpt" ] || fail "save_dir not created"
echo "ok: a missing save_dir is created with its parents"

# 9. a plan beyond the node's memory is refused before allocation, naming the tier and the
# shortfall (exit 2); past that check (train.check_memory false), running out of memory
# says so, with the bytes asked and held, on one line
out=$("$T" "$cfg" --set train_batch_size=1048576 --set model.block_size=2000 --set train.max_steps=1 2>&1); st=$?
[ "$st" -eq 2 ] && echo "$out" | grep -q "^zinc-train: host memory: this node's 1 rank needs .* GiB (.* activations .*) and .* GiB is available: .* GiB short" \
    || { echo "$out" >&2; fail "plan beyond host memory: status $st"; }
echo "ok: $(echo "$out" | cut -c1-120)..."
lim=()
case "$BUILD" in *asan*) ;; *) lim=(bash -c 'ulimit -v 8000000 && exec "$@"' sh) ;; esac
out=$(timeout 60 "${lim[@]}" "$T" "$cfg" --set train_batch_size=1048576 --set model.block_size=2000 \
      --set train.max_steps=1 --set train.check_memory=false 2>&1); st=$?
[ "$st" -ne 0 ] && [ "$st" -ne 124 ] || { echo "$out" >&2; fail "out of memory: status $st"; }
echo "$out" | grep -q "^zinc-train: activations of micro-batch 1048576 x 2000 tokens on cpu: .* bytes .*out of memory: asked for [0-9]* bytes of host memory with [0-9.]* GiB allocated by zinc$" \
    || { echo "$out" >&2; fail "out-of-memory message"; }
echo "ok: out of memory names the bytes asked and held"

# 10. an error caused by --set names the override, not the file
expect 2 "zinc-train: --set model.n_head=5: model.n_embd: 32 is not divisible by model.n_head 5" \
    "$T" "$cfg" --set model.n_head=5
expect 2 "zinc-train: --set train_batch_size=25: train_batch_size 25 is not divisible by data-parallel size 2" \
    $MPIRUN 2 "$T" "$cfg" --set train_batch_size=25
echo "all bad-input cases ended cleanly"
