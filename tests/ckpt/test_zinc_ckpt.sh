#!/usr/bin/env bash
# zinc-ckpt info / verify / export: outputs, exit codes, and the exported safetensors file
# read back by an independent reader (prog_st_reader: its own JSON scanning, no zinc code)
# that checks names, dtypes, shapes, offsets and values against the saver's pattern.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
SAVER=$BUILD/tests/ckpt/prog_saver
STR=$BUILD/tests/ckpt/prog_st_reader
Z=$BUILD/zinc-ckpt
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zinc-ckpt-tool.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# run want_status cmd...: runs cmd, checks its status, leaves stdout+stderr in $out
run() {
    local want=$1; shift
    out=$("$@" 2>&1); local st=$?
    [ "$st" -eq "$want" ] || { echo "$out" >&2; fail "expected status $want, got $st: $*"; }
}
has() { echo "$out" | grep -qF -- "$1" || { echo "$out" >&2; fail "output lacks '$1'"; }; }

# element i of tensor t at step s (prog_saver's pattern)
val() { awk -v t="$1" -v i="$2" -v s="$3" 'BEGIN { printf "%.9g\n", (((i * 7 + t * 13 + s * 31) % 251) - 125) / 8 }'; }

D=$TMP/save
./scripts/mpirun.sh 2 "$SAVER" "$D" --steps 2 --mib 2 >/dev/null 2>&1 || fail "prog_saver could not save"
N0=$(awk 'BEGIN { n = int(2 * 1048576 * 0.6 / 4); if (n % 2 == 0) n++; print n }')   # wte.weight elements
N2=$(awk 'BEGIN { n = int(2 * 1048576 * 0.1); if (n % 2 == 0) n++; print n }')       # bias elements

# info: on the save dir (follows latest) and on the checkpoint itself
run 0 "$Z" info "$D"
has "tag         step-2"; has "step        2"; has "dp=2"; has "zero_stage=0"
has "2 rank files, 6 chunks"
echo "$out" | grep -Eq "master +f32 +\($N0,\) +$((N0 * 4)) +wte.weight" || { echo "$out"; fail "info: master row"; }
echo "$out" | grep -Eq "param +bf16 +\($N0,\) +$((N0 * 2)) +wte.weight" || { echo "$out"; fail "info: param row"; }
echo "$out" | grep -Eq "param +f16 +\($N2,\) +$((N2 * 2)) +h.0.mlp.c_fc.bias" || { echo "$out"; fail "info: bias row"; }
has "total       3 tensors, $((2 * N0 + N2)) elements"
run 0 "$Z" info "$D/step-1"
has "tag         step-1"
echo "ok: info"

# verify
run 0 "$Z" verify "$D"
has "ok: $D/step-2, 6 chunks in 2 files"
echo "ok: verify"

# export: by default the weights, each tensor's master (f32) where it has one, else its
# param as stored (the bias has no master here, as a frozen parameter has none)
run 0 "$Z" export "$D" --format safetensors "$TMP/w.safetensors"
has "2 tensors of kind weights"
run 0 "$STR" "$TMP/w.safetensors"
has "meta zinc_kind weights"; has "tensor wte.weight F32 [$N0] 0 $((N0 * 4))"
has "tensor h.0.mlp.c_fc.bias F16 [$N2] $((N0 * 4)) $((N0 * 4 + N2 * 2))"
run 0 "$Z" export "$D" --format safetensors "$TMP/m.safetensors" --kind master
has "1 tensors of kind master"
run 0 "$STR" "$TMP/m.safetensors"
has "meta format pt"; has "meta zinc_tag step-2"; has "meta zinc_kind master"
has "tensor wte.weight F32 [$N0] 0 $((N0 * 4))"
for i in 0 1 $((N0 / 2)) $((N0 - 1)); do
    run 0 "$STR" "$TMP/m.safetensors" wte.weight "$i"
    has "wte.weight[$i] = $(val 0 "$i" 2)"
done
# --kind param keeps the stored dtypes; --dtype f32 converts them; tensors in manifest order
run 0 "$Z" export "$D" "$TMP/p.safetensors" --kind param
run 0 "$STR" "$TMP/p.safetensors"
has "tensor wte.weight BF16 [$N0] 0 $((N0 * 2))"
has "tensor h.0.mlp.c_fc.bias F16 [$N2] $((N0 * 2)) $((N0 * 2 + N2 * 2))"
run 0 "$Z" export "$D" "$TMP/p32.safetensors" --kind param --dtype f32
run 0 "$STR" "$TMP/p32.safetensors"
has "tensor wte.weight F32 [$N0] 0 $((N0 * 4))"
has "tensor h.0.mlp.c_fc.bias F32 [$N2] $((N0 * 4)) $((N0 * 4 + N2 * 4))"
for f in p p32; do
    for i in 0 7 $((N2 - 1)); do
        run 0 "$STR" "$TMP/$f.safetensors" h.0.mlp.c_fc.bias "$i"
        has "h.0.mlp.c_fc.bias[$i] = $(val 2 "$i" 2)"
        run 0 "$STR" "$TMP/$f.safetensors" wte.weight "$i"
        has "wte.weight[$i] = $(val 1 "$i" 2)"
    done
done
run 1 "$Z" export "$D" "$TMP/x.safetensors" --kind exp_avg
has "zinc-ckpt: "; has "no tensors of kind exp_avg"
[ ! -e "$TMP/x.safetensors" ] || fail "export of nothing left a file"
echo "ok: export"

# corruption: one byte of rank 1's file -> verify names file, tensor and offset, exit 1
cp -r "$D/step-2" "$TMP/bad"
printf '\xff' | dd of="$TMP/bad/rank-00001.bin" bs=1 seek=100 count=1 conv=notrunc status=none
run 1 "$Z" verify "$TMP/bad"
[ "$(echo "$out" | wc -l)" -eq 1 ] || { echo "$out"; fail "verify error is not one line"; }
has "zinc-ckpt: $TMP/bad/rank-00001.bin: crc32c mismatch in tensor wte.weight (master) at byte offset 0"
run 1 "$Z" export "$TMP/bad" "$TMP/bad.safetensors"
has "crc32c mismatch"
[ ! -e "$TMP/bad.safetensors" ] || fail "failed export left a file"
truncate -s 4096 "$TMP/bad/rank-00000.bin"
run 1 "$Z" verify "$TMP/bad"
has "rank-00000.bin is truncated: 4096 of"
rm "$TMP/bad/rank-00000.bin"
run 1 "$Z" verify "$TMP/bad"
has "rank-00000.bin is missing"
echo '{"format": "zinc-ckpt", "version": 1, "files": [' > "$TMP/bad/manifest.json"
run 1 "$Z" info "$TMP/bad"
has "zinc-ckpt: $TMP/bad/manifest.json: line 2"
run 1 "$Z" info "$TMP/nowhere"
has "zinc-ckpt: $TMP/nowhere"
echo "ok: errors"

# usage errors exit 2
run 2 "$Z"
run 2 "$Z" frobnicate "$D"; has "unknown command"
run 2 "$Z" export "$D"; has "usage"
run 2 "$Z" export "$D" "$TMP/y" --dtype f8
run 2 "$Z" export "$D" "$TMP/y" --format gguf
run 2 "$Z" verify "$D" "$D"
run 2 "$Z" info --bogus "$D"
echo "ok: usage"
echo "zinc-ckpt tool tests passed"
