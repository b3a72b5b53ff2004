#!/usr/bin/env bash
# model.lora: LoRA adapters trained on a frozen base (GPT-2 and Llama), through the engine
#  - numerics: with r = full rank, A = I and B = delta^T / s, the LoRA model's loss equals
#    the full model's with W + delta (1e-5); adapters missing from init_from start at B = 0,
#    which is the base model's loss bitwise; the ops themselves: tests/kernels/test_lora_ops.c
#  - the base is bit-identical after 20 steps, every adapter moved
#  - DP 2 x ZeRO 0-3, DP 4 x ZeRO-3, a Llama with every linear adapted (and recompute), two
#    pipeline stages, TP 2 (with sequence parallelism, and x DP 2 at ZeRO-3; GPT-2 and
#    Llama): the single-rank losses within 1e-5
#  - resume: bitwise at the same layout (dropout on: the masks are a function of the step),
#    close on one rank from DP 2 / ZeRO-2 and at DP 2 / ZeRO-3 from TP 2
#  - export: --format peft is PEFT's folder (names, shapes, adapter_config.json, read by an
#    independent reader); --merge equals W + (alpha/r) B A (transposed for Conv1D) exactly
#  - memory: a Llama with r = 8 on q_proj, v_proj at ZeRO-3 holds the frozen bf16 bytes plus
#    16 bytes per trainable parameter, 1/DP each (within 2%), >= 5x less than full training
#  - bad input: r, alpha, dropout out of range, an unknown target module, dropout with
#    sequence parallelism: one line, exit 2
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
PY=$(command -v python3) || fail "no python3 for the safetensors reader"
L=(--set 'model.lora={"r":4,"alpha":8,"target_modules":["c_attn","c_proj","c_fc"]}')
S=(--set train.max_steps=20)

# 1. the base frozen, bit for bit; the adapters trained
run one 1 "${L[@]}" "${S[@]}" --set train.save_dir="$TMP/ck1" --set train.save_every=1 --set train.keep_last=100
for s in 1 20; do "$BUILD/zinc-ckpt" export "$TMP/ck1/global_step$s" "$TMP/s$s.safetensors" > /dev/null || fail "export step $s"; done
cat > "$TMP/st.py" <<'PY'
import json, struct
def read(p):
    b = open(p, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        raw = b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
        out[k] = (v["shape"], list(struct.unpack("<%df" % (len(raw) // 4), raw)))
    return out
def write(p, t):
    h, data = {}, b""
    for k, (shape, vals) in t.items():
        raw = struct.pack("<%df" % len(vals), *vals)
        h[k] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    hb = json.dumps(h).encode()
    hb += b" " * (-len(hb) % 8)
    open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + data)
PY
"$PY" - "$TMP" <<'PY' || fail "frozen base"
import sys; sys.path.insert(0, sys.argv[1]); from st import read
a, b = read(sys.argv[1] + "/s1.safetensors"), read(sys.argv[1] + "/s20.safetensors")
assert sorted(a) == sorted(b)
lora = [k for k in a if ".lora_" in k]
assert len(lora) == 2 * 2 * 4, lora  # 2 layers x (c_attn, attn.c_proj, c_fc, mlp.c_proj) x (A, B)
for k in a:
    if k in lora: assert a[k] != b[k], "%s did not train" % k
    else: assert a[k] == b[k], "%s changed" % k
print("base: %d tensors bit-identical after 20 steps, %d adapter tensors moved" % (len(a) - len(lora), len(lora)))
PY
grep -q "trainable + .* frozen)" "$TMP/one.log" || fail "the step line shows no trainable/frozen split"

# 2. layouts against one rank
for z in 0 1 2 3; do run z$z 2 "${L[@]}" "${S[@]}" --set zero_optimization.stage=$z; check_close z$z one 1e-5; done
run z3dp4 4 "${L[@]}" "${S[@]}" --set zero_optimization.stage=3; check_close z3dp4 one 1e-5
run pp2 2 "${L[@]}" "${S[@]}" --set pipeline.stages=2 --set gradient_accumulation_steps=2 --set train_micro_batch_size_per_gpu=12
check_close pp2 one 1e-5
LL=(--set model.type=llama --set 'model.lora={"r":4,"alpha":16,"target_modules":["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]}')
run ll1 1 "${LL[@]}" "${S[@]}" --set train.save_dir="$TMP/ckl" --set train.save_every=20
run ll2 2 "${LL[@]}" "${S[@]}" --set zero_optimization.stage=3 --set model.recompute=true; check_close ll2 ll1 1e-5
# tensor parallelism: adapters split with their linears (and with sequence parallelism, x DP)
T2=(--set tensor_parallel.autotp_size=2)
run tp2 2 "${L[@]}" "${S[@]}" "${T2[@]}"; check_close tp2 one 1e-5
run tp2sp 4 "${L[@]}" "${S[@]}" "${T2[@]}" --set tensor_parallel.sequence_parallel=true --set zero_optimization.stage=3
check_close tp2sp one 1e-5
run lltp 2 "${LL[@]}" "${S[@]}" "${T2[@]}" --set tensor_parallel.sequence_parallel=true; check_close lltp ll1 1e-5
run b1 1 "${L[@]}" "${S[@]}" --set bf16.enabled=true
run b3 2 "${L[@]}" "${S[@]}" --set bf16.enabled=true --set zero_optimization.stage=3; check_close b3 b1 1e-2

# 3. resume: bitwise with dropout at the same layout; close on one rank from DP 2
D=(--set model.lora.dropout=0.1)
run dr 2 "${L[@]}" "${D[@]}" "${S[@]}" --set zero_optimization.stage=1 --set train.save_dir="$TMP/ckd" --set train.save_every=10
cmp -s <(losses "$TMP/dr.jsonl") <(losses "$TMP/z1.jsonl") && fail "dropout 0.1 changes nothing"
run drr 2 "${L[@]}" "${D[@]}" "${S[@]}" --set zero_optimization.stage=1 --set train.save_dir="$TMP/ckd" --set train.resume=global_step10
cmp -s <(losses "$TMP/dr.jsonl" | tail -n 10) <(losses "$TMP/drr.jsonl") || fail "resumed dropout run differs"
echo "resumed at step 10 (dropout 0.1, DP 2, ZeRO-1): bitwise equal"
run ck2 2 "${L[@]}" "${S[@]}" --set zero_optimization.stage=2 --set train.save_dir="$TMP/ck2" --set train.save_every=10
run ck2r 1 "${L[@]}" "${S[@]}" --set train.save_dir="$TMP/ck2" --set train.resume=global_step10
close_tail <(losses "$TMP/ck2.jsonl" | tail -n 10) <(losses "$TMP/ck2r.jsonl") "resumed on one rank from DP 2 / ZeRO-2"
run ckt 2 "${L[@]}" "${S[@]}" --set tensor_parallel.autotp_size=2 --set train.save_dir="$TMP/ckt" --set train.save_every=10
run cktr 2 "${L[@]}" "${S[@]}" --set zero_optimization.stage=3 --set train.save_dir="$TMP/ckt" --set train.resume=global_step10
close_tail <(losses "$TMP/ckt.jsonl" | tail -n 10) <(losses "$TMP/cktr.jsonl") "resumed at DP 2 / ZeRO-3 from TP 2"

# 4. full rank: A = I, B = delta^T / s on c_attn is the full model with W + delta; without
# adapters in init_from, B = 0: the base model's loss, bitwise
"$PY" - "$TMP" <<'PY' || fail "full-rank files"
import random, sys; sys.path.insert(0, sys.argv[1]); from st import read, write
t = {k: v for k, v in read(sys.argv[1] + "/s1.safetensors").items() if ".lora_" not in k}
write(sys.argv[1] + "/base.safetensors", t)
random.seed(7)
C, s = 32, 1.0  # n_embd; alpha 32 / r 32
lo, mg = dict(t), dict(t)
for l in range(2):
    w = "h.%d.attn.c_attn.weight" % l
    shape, W = t[w]
    assert shape == [C, 3 * C], shape
    D = [random.uniform(-0.05, 0.05) for _ in range(C * 3 * C)]  # (in, out), added to W
    mg[w] = (shape, [W[i] + D[i] for i in range(len(W))])
    lo["h.%d.attn.c_attn.lora_A.weight" % l] = ([C, C], [1.0 if i == j else 0.0 for i in range(C) for j in range(C)])
    lo["h.%d.attn.c_attn.lora_B.weight" % l] = ([3 * C, C], [D[c * 3 * C + j] / s for j in range(3 * C) for c in range(C)])
write(sys.argv[1] + "/lora.safetensors", lo)
write(sys.argv[1] + "/merged.safetensors", mg)
PY
ev() { "$BUILD/zinc-train" "$cfg" --eval-loss "$@" | sed -n 's/^eval loss //p'; }
FR=(--set 'model.lora={"r":32,"alpha":32,"target_modules":["c_attn"]}')
lf=$(ev "${FR[@]}" --set model.init_from="$TMP/lora.safetensors")
mf=$(ev --set model.init_from="$TMP/merged.safetensors")
awk -v a="$lf" -v b="$mf" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d / b <= 1e-5) }' ||
    fail "full-rank LoRA loss $lf, merged full model $mf"
echo "full rank: LoRA (A = I, B = delta/s) loss $lf, full model with W + delta $mf"
l0=$(ev "${FR[@]}" --set model.init_from="$TMP/base.safetensors")
b0=$(ev --set model.init_from="$TMP/base.safetensors")
[ -n "$l0" ] && [ "$l0" = "$b0" ] || fail "fresh adapters: loss $l0, base $b0"
echo "fresh adapters (B = 0) on the base: loss $l0, bitwise the base's"

# 5. export: PEFT's folder, and the merged model
"$BUILD/zinc-ckpt" export "$TMP/ck1/global_step20" --format peft "$TMP/peft" || fail "export --format peft"
"$BUILD/zinc-ckpt" export "$TMP/ck1/global_step20" "$TMP/merged20.safetensors" --merge || fail "export --merge"
"$PY" - "$TMP" <<'PY' || fail "PEFT folder / merge"
import json, sys; sys.path.insert(0, sys.argv[1]); from st import read
d = sys.argv[1]
cfg = json.load(open(d + "/peft/adapter_config.json"))
assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["bias"] == "none", cfg
assert sorted(cfg["target_modules"]) == ["c_attn", "c_fc", "c_proj"], cfg["target_modules"]
assert cfg["fan_in_fan_out"] is True and cfg["task_type"] == "CAUSAL_LM", cfg
ad = read(d + "/peft/adapter_model.safetensors")
C, r = 32, 4
want = {}
for l in range(2):
    for m, i, o in (("attn.c_attn", C, 3 * C), ("attn.c_proj", C, C), ("mlp.c_fc", C, 4 * C), ("mlp.c_proj", 4 * C, C)):
        p = "base_model.model.transformer.h.%d.%s." % (l, m)
        want[p + "lora_A.weight"] = [r, i]
        want[p + "lora_B.weight"] = [o, r]
assert {k: v[0] for k, v in ad.items()} == want, sorted(ad)
ck = read(d + "/s20.safetensors")
mg = read(d + "/merged20.safetensors")
assert not [k for k in mg if ".lora_" in k] and sorted(mg) == sorted(k for k in ck if ".lora_" not in k)
s, n = 8 / 4, 0
import struct
f32 = lambda x: struct.unpack("<f", struct.pack("<f", x))[0]
for k, (shape, W) in ck.items():
    if ".lora_" in k: continue
    base = k[:-len(".weight")]
    if base + ".lora_A.weight" not in ck:
        assert mg[k][1] == W, k
        continue
    (rr, i), A = ck[base + ".lora_A.weight"]
    (o, _), B = ck[base + ".lora_B.weight"]
    assert shape == [i, o]  # Conv1D: (in, out)
    M = [f32(W[c * o + j] + s * sum(B[j * rr + q] * A[q * i + c] for q in range(rr))) for c in range(i) for j in range(o)]
    assert mg[k][1] == M, k
    n += 1
print("PEFT folder: %d tensors named and shaped as PEFT's; merge: %d weights = W + (alpha/r) (B A)^T exactly" % (len(ad), n))
PY
[ -n "$(ev --set model.init_from="$TMP/merged20.safetensors")" ] || fail "the merged model does not load"
"$BUILD/zinc-ckpt" export "$TMP/ck1/global_step20" --format hf "$TMP/hfm" --merge > /dev/null || fail "export --format hf --merge"
"$PY" - "$TMP" <<'PY' || fail "merged model folder"
import json, sys; sys.path.insert(0, sys.argv[1]); from st import read
d = sys.argv[1]
a, b = read(d + "/hfm/model.safetensors"), read(d + "/merged20.safetensors")
assert a == b, "the folder's merged weights differ from --merge's file"
assert json.load(open(d + "/hfm/config.json"))["model_type"] == "gpt2"
print("merged model folder: config.json and the merged weights (%d tensors, no adapters)" % len(a))
PY
"$BUILD/zinc-ckpt" export "$TMP/ckl/global_step20" --format peft "$TMP/peftl" > /dev/null || fail "export a Llama's adapters"
"$PY" - "$TMP" <<'PY' || fail "Llama PEFT folder"
import json, sys; sys.path.insert(0, sys.argv[1]); from st import read
d = sys.argv[1]
ad = read(d + "/peftl/adapter_model.safetensors")
cfg = json.load(open(d + "/peftl/adapter_config.json"))
assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
assert cfg["fan_in_fan_out"] is False and cfg["lora_alpha"] == 16, cfg
C, r, F = 32, 4, 256  # n_embd 32: intermediate 8/3 C rounded up to 256
want = {}
for l in range(2):
    for m, i, o in (("self_attn.q_proj", C, C), ("self_attn.k_proj", C, C), ("self_attn.v_proj", C, C),
                    ("self_attn.o_proj", C, C), ("mlp.gate_proj", C, F), ("mlp.up_proj", C, F), ("mlp.down_proj", F, C)):
        want["base_model.model.model.layers.%d.%s.lora_A.weight" % (l, m)] = [r, i]
        want["base_model.model.model.layers.%d.%s.lora_B.weight" % (l, m)] = [o, r]
assert {k: v[0] for k, v in ad.items()} == want, sorted(ad)
print("Llama PEFT folder: %d tensors under base_model.model.model.layers.N, shaped as PEFT's" % len(ad))
PY
G=$("$BUILD/zinc-ckpt" export "$TMP/ck1/global_step20" "$TMP/nolora" --format peft --kind param 2>&1) && fail "--format peft --kind"
echo "$G" | grep -q "no --merge or --kind" || fail "--format peft --kind: $G"

# 6. memory at ZeRO-3 (DP 2, bf16): frozen bf16 bytes + 16 per trainable parameter, halved
est() { "$BUILD/zinc-train" "$cfg" --set model.type=llama --set model.n_embd=512 --set model.n_layer=8 --set model.n_head=8 \
        --set zero_optimization.stage=3 --set bf16.enabled=true --set zero_optimization.stage3_param_persistence_threshold=0 \
        "$@" --estimate-memory -n 2 | awk '$1 == 3 { print $6 }'; }
full=$(est)
lora=$(est --set 'model.lora={"r":8,"target_modules":["q_proj","v_proj"]}')
# parameters: embed 256x512 + lm_head (tied: no) ... counted from the shapes
awk -v f="$full" -v l="$lora" 'BEGIN {
    C = 512; V = 256; L = 8; F = 1536; r = 8
    base = V * C + C + L * (4 * C * C + 3 * C * F + 2 * C)         # tied head: embed_tokens once
    tr = L * 2 * (r * C + C * r)                                  # q_proj, v_proj: A (r,C) and B (C,r)
    want = (2 * base + 16 * tr) / 2 / 1048576
    printf "memory at ZeRO-3, DP 2, bf16: LoRA %.1f MiB/rank (formula %.2f: %.0f frozen + %.0f trainable), full %.1f MiB: %.1fx less\n", l, want, base, tr, f, f / l
    d = l - want; if (d < 0) d = -d
    exit !(d / want <= 0.02 && f / l >= 5) }' || fail "LoRA memory $lora MiB against the formula, full $full MiB"

# 7. bad input
bad "model.lora.r" 1 --set 'model.lora={"r":0}'
bad "model.lora.alpha" 1 --set 'model.lora={"alpha":0}'
bad "model.lora.dropout" 1 --set 'model.lora={"dropout":1}'
bad "is no linear of a gpt2 layer" 1 --set 'model.lora={"target_modules":["q_proj"]}'
bad "is no linear of a llama layer" 1 --set model.type=llama --set 'model.lora={"target_modules":["c_attn"]}'
bad "sequence parallelism" 2 --set 'model.lora={"dropout":0.1}' --set tensor_parallel.autotp_size=2 \
    --set tensor_parallel.sequence_parallel=true
echo "ok"
