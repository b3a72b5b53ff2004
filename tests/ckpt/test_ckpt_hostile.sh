#!/usr/bin/env bash
# The defects a hostile probe found in checkpoints and safetensors, as reproductions: each
# must end with one clear line naming the file (and the tensor or meta field), never a hang,
# a silent wrong run, or a user's directory deleted.
#   1. shape products that overflow ([2^32, 2^32] with no data verified "ok" and exported)
#   2. named pipes as latest, manifest.json, a rank file, model.init_from (open() hung)
#   3. a save emptied every *.partial / *.deleting directory of save_dir, zinc's or not
#   4. resume trusted the meta: negative or huge steps, wrong types, optimizer step after
#      the training step, negative format versions
#   5. init_from took embeddings of 0 or 1 rows, integer dtypes, NaN/Inf values
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
Z=$BUILD/zinc-ckpt
T=$BUILD/zinc-train
SAVER=$BUILD/tests/ckpt/prog_saver
command -v python3 >/dev/null || { echo "skip: python3 is needed to write the hostile files"; exit 77; }

expect() { # want_status pattern cmd...  (20 s limit: nothing here may wait)
    local want=$1 pat=$2; shift 2
    local st
    out=$(timeout 20 "$@" 2>&1); st=$?
    [ "$st" -ne 124 ] || fail "hung: $*"
    [ "$st" -eq "$want" ] || { echo "$out" >&2; fail "expected status $want, got $st: $*"; }
    echo "$out" | grep -qF -- "$pat" || { echo "$out" >&2; fail "output lacks '$pat': $*"; }
    ! echo "$out" | grep -q "^step " || { echo "$out" >&2; fail "trained although it should not: $*"; }
    echo "ok: $(echo "$out" | grep -m1 -F -- "$pat")"
}

# py SCRIPT ARGS...: python3 with only the standard library
py() { python3 - "$@"; }

# ---- 1. shapes whose element count overflows --------------------------------------------
D=$TMP/save
./scripts/mpirun.sh 2 "$SAVER" "$D" --steps 1 --mib 1 >/dev/null 2>&1 || fail "prog_saver could not save"
cp -r "$D/step-1" "$TMP/ovf"
py "$TMP/ovf/manifest.json" <<'PY'
import json, sys
p = sys.argv[1]
m = json.load(open(p))
m["tensors"].append({"name": "huge.weight", "kind": "param", "dtype": "f32",
                     "shape": [4294967296, 4294967296], "tp_dim": -1, "chunks": []})
json.dump(m, open(p, "w"), indent=1)
PY
expect 1 "$TMP/ovf/manifest.json: tensor huge.weight" "$Z" verify "$TMP/ovf"
expect 1 "overflow" "$Z" export "$TMP/ovf" "$TMP/ovf.safetensors" --kind param
[ ! -e "$TMP/ovf.safetensors" ] || fail "an overflowing checkpoint was exported"
cp -r "$D/step-1" "$TMP/negdim"
py "$TMP/negdim/manifest.json" <<'PY'
import json, sys
p = sys.argv[1]
m = json.load(open(p))
m["tensors"].append({"name": "neg.weight", "kind": "param", "dtype": "f32",
                     "shape": [-4, -4], "tp_dim": -1, "chunks": []})
json.dump(m, open(p, "w"), indent=1)
PY
expect 1 "tensor neg.weight" "$Z" info "$TMP/negdim"

# a safetensors file of one [2^32, 2^32] tensor with no data
st_write() { # OUT HEADER-JSON DATA-BYTES (zero bytes)
    py "$@" <<'PY'
import struct, sys
out, hdr, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
hdr += b" " * (-len(hdr) % 8)
open(out, "wb").write(struct.pack("<Q", len(hdr)) + hdr + b"\0" * n)
PY
}
shard=$(make_shard)
cfg=$(tiny_config "$shard")
st_write "$TMP/huge.safetensors" '{"wte.weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}' 0
expect 2 "huge.safetensors: tensor wte.weight" "$T" "$cfg" --set model.init_from="$TMP/huge.safetensors" --eval-loss
echo "ok: overflowing shapes refused (an unused one in a safetensors file: part 5)"

# ---- 2. named pipes in place of the files a checkpoint names ----------------------------
P=$TMP/pipes
cp -r "$D" "$P"
rm "$P/latest" && mkfifo "$P/latest"
expect 1 "$P/latest: checkpoint latest is a named pipe" "$Z" info "$P"
cp -r "$D" "$TMP/pm"
rm "$TMP/pm/step-1/manifest.json" && mkfifo "$TMP/pm/step-1/manifest.json"
expect 1 "manifest.json: checkpoint manifest is a named pipe" "$Z" info "$TMP/pm/step-1"
expect 1 "manifest.json: checkpoint manifest is a named pipe" "$Z" verify "$TMP/pm"
cp -r "$D" "$TMP/pr"
rm "$TMP/pr/step-1/rank-00001.bin" && mkfifo "$TMP/pr/step-1/rank-00001.bin"
expect 1 "rank-00001.bin: checkpoint rank file is a named pipe" "$Z" verify "$TMP/pr"
mkfifo "$TMP/init.safetensors"
expect 2 "model.init_from: $TMP/init.safetensors: safetensors file is a named pipe" \
    "$T" "$cfg" --set model.init_from="$TMP/init.safetensors" --eval-loss
# the trainer's resume path reads latest too
mkdir "$TMP/tp" && mkfifo "$TMP/tp/latest"
expect 2 "latest is a named pipe" "$T" "$cfg" --set train.save_dir="$TMP/tp" --set train.resume=auto
echo "ok: named pipes refused"

# ---- 3. a save leaves directories it did not create alone -------------------------------
F=$TMP/foreign
mkdir -p "$F/thesis.partial" "$F/photos.deleting" "$F/begun.partial" # begun: a save killed before its marker
echo "chapter 1" > "$F/thesis.partial/ch1.tex"
echo "img" > "$F/photos.deleting/a.jpg"
./scripts/mpirun.sh 2 "$SAVER" "$F" --steps 2 --mib 1 > "$TMP/foreign.log" 2>&1 || { cat "$TMP/foreign.log"; fail "save next to foreign directories failed"; }
[ -f "$F/thesis.partial/ch1.tex" ] || fail "a save removed the user's thesis.partial/"
[ -f "$F/photos.deleting/a.jpg" ] || fail "a save removed the user's photos.deleting/"
grep -q "thesis.partial" "$TMP/foreign.log" || { cat "$TMP/foreign.log"; fail "the foreign directory is not mentioned"; }
[ "$(grep -c "thesis.partial" "$TMP/foreign.log")" -eq 1 ] || { cat "$TMP/foreign.log"; fail "foreign directory reported more than once"; }
"$Z" verify "$F" >/dev/null || fail "checkpoint next to foreign directories does not verify"
[ ! -e "$F/begun.partial" ] || fail "the empty begun.partial/ (a save killed between mkdir and marker) was left"
echo "ok: foreign *.partial and *.deleting directories kept, an empty unmarked *.partial removed"

# ---- 4. resume validates the meta -------------------------------------------------------
R=$TMP/res
$T "$cfg" --set train.max_steps=2 --set train.save_dir="$R" > "$TMP/res.log" 2>&1 || { cat "$TMP/res.log"; fail "could not train a checkpoint"; }
M=$R/global_step2/manifest.json
cp "$M" "$TMP/manifest.good"
edit() { # python statements on m (the manifest) and meta (its meta)
    py "$TMP/manifest.good" "$M" "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
meta = m["meta"]
exec(sys.argv[3])
json.dump(m, open(sys.argv[2], "w"), indent=1)
PY
}
resume() { expect 2 "$1" "$T" "$cfg" --set train.max_steps=5 --set train.save_dir="$R" --set train.resume=auto; }
edit 'meta["step"] = -75'; resume "$M: meta.step"
edit 'meta["step"] = 2**62'; resume "$M: meta.step"
edit 'meta["step"] = "2"'; resume "$M: meta.step"
edit 'del meta["step"]'; resume "$M: meta.step"
edit 'meta["optimizer_step"] = 3'; resume "$M: meta.optimizer_step"
edit 'meta["optimizer_step"] = 2.5'; resume "$M: meta.optimizer_step"
edit 'meta["samples"] = -1'; resume "$M: meta.samples"
edit 'meta["samples"] = 1'; resume "$M: meta.samples"
edit 'meta["precision"] = "int4"'; resume "$M: meta.precision"
edit 'meta["topology"]["dp"] = 0'; resume "$M: meta.topology.dp"
edit 'meta["topology"]["dp"] = 3'; resume "$M: meta.topology.dp"
edit 'meta["topology"]["zero_stage"] = 7'; resume "$M: meta.topology.zero_stage"
edit 'meta["topology"] = [1]'; resume "$M: meta.topology"
edit 'meta["loss_scaler"]["scale"] = -1.0'; resume "$M: meta.loss_scaler.scale"
edit 'meta["loss_scaler"]["cur_iter"] = 99'; resume "$M: meta.loss_scaler.cur_iter"
edit 'meta["loss_scaler"]["last_overflow_iter"] = -5'; resume "$M: meta.loss_scaler.last_overflow_iter"
edit 'meta["lr_scheduler"]["last_batch_iteration"] = 7'; resume "$M: meta.lr_scheduler.last_batch_iteration"
edit 'meta["data"]["sample_index"] = 5'; resume "$M: meta.data.sample_index"
edit 'meta["data"]["seed"] = "x"'; resume "$M: meta.data.seed"
edit 'm["meta"] = [1, 2]'; resume "$M: meta is not an object"
edit 'm["version"] = -1'; expect 1 "format version -1" "$Z" info "$R"
edit 'm["version"] = 0'; resume "format version 0"
edit 'm["version"] = 3'; resume "format version 3 is newer"
edit 'pass'
$T "$cfg" --set train.max_steps=3 --set train.save_dir="$R" --set train.resume=auto > "$TMP/res3.log" 2>&1 \
    || { cat "$TMP/res3.log"; fail "the untouched checkpoint does not resume"; }
grep -q "^step     3/3" "$TMP/res3.log" || { cat "$TMP/res3.log"; fail "resume did not train step 3"; }
echo "ok: meta validated"

# ---- 5. init_from refuses weights the model cannot use ----------------------------------
"$Z" export "$R/global_step2" "$TMP/good.safetensors" >/dev/null || fail "export failed"
expect 0 "eval loss" "$T" "$cfg" --set model.init_from="$TMP/good.safetensors" --eval-loss
st_edit() { # OUT python-statements on (h: header dict, data: bytearray)
    py "$TMP/good.safetensors" "$@" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
data = bytearray(raw[8 + n:])
def retensor(name, dtype, shape, blob):
    """replace tensor name by blob (bytes), keeping every other tensor's bytes"""
    global data
    parts = []
    for k, v in sorted(((k, v) for k, v in h.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = v["data_offsets"]
        parts.append((k, blob if k == name else bytes(data[b:e])))
    data, off = bytearray(), 0
    for k, b in parts:
        h[k]["data_offsets"] = [off, off + len(b)]
        data += b
        off += len(b)
    h[name]["dtype"], h[name]["shape"] = dtype, shape
exec(sys.argv[3])
hdr = json.dumps(h).encode()
hdr += b" " * (-len(hdr) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hdr)) + hdr + bytes(data))
PY
}
# a tensor the model does not use, whose shape wraps to 0 bytes: the file is invalid
st_edit "$TMP/extra.safetensors" 'h["extra.weight"] = {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [len(data), len(data)]}'
expect 2 "extra.safetensors: tensor extra.weight" "$T" "$cfg" --set model.init_from="$TMP/extra.safetensors" --eval-loss
st_edit "$TMP/rows0.safetensors" 'retensor("wte.weight", "F32", [0, 32], b"")'
expect 2 "rows0.safetensors: tensor wte.weight" "$T" "$cfg" --set model.init_from="$TMP/rows0.safetensors" --eval-loss
st_edit "$TMP/rows1.safetensors" 'retensor("wte.weight", "F32", [1, 32], b"\0" * 128)'
expect 2 "rows1.safetensors: tensor wte.weight" "$T" "$cfg" --set model.init_from="$TMP/rows1.safetensors" --eval-loss
st_edit "$TMP/int.safetensors" 'retensor("h.0.ln_1.bias", "I32", [32], b"\1\0\0\0" * 32)'
expect 2 "int.safetensors: tensor h.0.ln_1.bias" "$T" "$cfg" --set model.init_from="$TMP/int.safetensors" --eval-loss
st_edit "$TMP/nan.safetensors" 'b = h["h.1.mlp.c_fc.weight"]["data_offsets"][0]; data[b + 40:b + 44] = struct.pack("<f", float("nan"))'
expect 2 "nan.safetensors: tensor h.1.mlp.c_fc.weight" "$T" "$cfg" --set model.init_from="$TMP/nan.safetensors" --eval-loss
st_edit "$TMP/inf.safetensors" 'b = h["lm_head.weight" if "lm_head.weight" in h else "ln_f.weight"]["data_offsets"][0]; data[b:b + 4] = struct.pack("<f", float("-inf"))'
expect 2 "inf.safetensors: tensor" "$T" "$cfg" --set model.init_from="$TMP/inf.safetensors" --eval-loss
st_edit "$TMP/shape.safetensors" 'retensor("h.0.attn.c_attn.weight", "F32", [96, 32], bytes(data[h["h.0.attn.c_attn.weight"]["data_offsets"][0]:h["h.0.attn.c_attn.weight"]["data_offsets"][1]]))'
expect 2 "shape.safetensors: tensor h.0.attn.c_attn.weight has shape" "$T" "$cfg" --set model.init_from="$TMP/shape.safetensors" --eval-loss
echo "ok: init_from refuses unusable weights"
echo "hostile checkpoint tests passed"
