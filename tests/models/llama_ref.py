"""An independent float64 reference of the Llama family (written from Hugging Face's
modeling_llama: RMSNorm, rotate_half RoPE with the llama3 rope_scaling, grouped-query
attention by repeat_kv, SwiGLU, tied or untied lm_head, optional q/k/v biases) for
tests/models/test_llama.sh. It reads what prog_llama_dump wrote (zinc's parameters,
gradients, batch and loss), recomputes the mean token loss and checks zinc's gradients
against central finite differences of the reference loss.

    python llama_ref.py CONFIG.json DUMP.safetensors
    python llama_ref.py --hf FOLDER DUMP.safetensors
The second form reads a Hugging Face model folder instead (config.json with
transformers' keys, model.safetensors or the shards of model.safetensors.index.json, in
F32, BF16 or F16), checks that zinc's parameters in the dump are the folder's tensors
and that zinc's loss is the reference's on the folder's weights. Exit 0 when everything
agrees, 1 with the first disagreements printed.
"""
import json
import math
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8:8 + n])
    meta = head.pop("__metadata__", {})
    dt = {"F32": np.float32, "I32": np.int32, "F16": np.float16, "BF16": np.uint16}
    out = {}
    for name, e in head.items():
        b, end = e["data_offsets"]
        a = np.frombuffer(raw[8 + n + b:8 + n + end], dtype=dt[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16":  # the high half of an fp32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out, meta


def hf_to_zinc(h):
    """transformers' config.json keys as zinc's model section (what the reference reads)."""
    rs = h.get("rope_scaling")
    return {"model": {
        "n_layer": h["num_hidden_layers"], "n_embd": h["hidden_size"], "n_head": h["num_attention_heads"],
        "n_kv_head": h.get("num_key_value_heads", h["num_attention_heads"]), "vocab_size": h["vocab_size"],
        "block_size": h["max_position_embeddings"], "intermediate_size": h["intermediate_size"],
        "tie_word_embeddings": h.get("tie_word_embeddings", False),
        "attention_bias": h["model_type"] == "qwen2", "rms_norm_eps": h.get("rms_norm_eps", 1e-6),
        "rope_theta": h.get("rope_theta", 10000.0),
        "rope_scaling": dict(rs, type=rs.get("rope_type", rs.get("type"))) if rs else None}}


def read_folder(d):
    import os
    ix = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(ix))["weight_map"].values())) if os.path.exists(ix) else ["model.safetensors"]
    out = {}
    for f in files:
        t, _ = read_safetensors(os.path.join(d, f))
        out.update(t)
    return out


def rope_inv_freq(hs, theta, sc):
    inv = 1.0 / theta ** (np.arange(0, hs, 2, dtype=np.float64) / hs)
    if not sc or sc.get("type", sc.get("rope_type", "")) != "llama3":
        return inv
    factor, lo, hi = sc.get("factor", 8.0), sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
    old = sc.get("original_max_position_embeddings", 8192)
    lo_wl, hi_wl = old / lo, old / hi
    wl = 2 * math.pi / inv
    scaled = np.where(wl > lo_wl, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wl < hi_wl) & ~(wl > lo_wl)
    return np.where(medium, smoothed, scaled)


class Llama:
    def __init__(self, cfg):
        m = cfg["model"]
        self.L, self.C, self.NH = m["n_layer"], m["n_embd"], m["n_head"]
        self.NKV = m.get("n_kv_head", 0) or self.NH
        self.HS = self.C // self.NH
        self.V = m["vocab_size"]
        self.tie = m.get("tie_word_embeddings", True)
        self.bias = m.get("attention_bias", False)
        self.eps = m.get("rms_norm_eps", 1e-6)
        T = cfg.get("data", {}).get("seq_len", 0) or m["block_size"]
        inv = rope_inv_freq(self.HS, m.get("rope_theta", 10000.0), m.get("rope_scaling"))
        freqs = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        self.cos, self.sin = np.cos(emb), np.sin(emb)
        self.F = m.get("intermediate_size", 0)

    def shapes(self):
        C, Q, KV, F = self.C, self.NH * self.HS, self.NKV * self.HS, self.F
        s = {"model.embed_tokens.weight": (self.V, C), "model.norm.weight": (C,)}
        for i in range(self.L):
            p = "model.layers.%d." % i
            s.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                      p + "self_attn.q_proj.weight": (Q, C), p + "self_attn.k_proj.weight": (KV, C),
                      p + "self_attn.v_proj.weight": (KV, C), p + "self_attn.o_proj.weight": (C, Q),
                      p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                      p + "mlp.down_proj.weight": (C, F)})
            if self.bias:
                s.update({p + "self_attn.q_proj.bias": (Q,), p + "self_attn.k_proj.bias": (KV,),
                          p + "self_attn.v_proj.bias": (KV,)})
        if not self.tie:
            s["lm_head.weight"] = (self.V, C)
        return s

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rot(self, x, pos):  # x (B, H, T, HS): x * cos + rotate_half(x) * sin at positions pos (B, T)
        h = self.HS // 2
        rh = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
        c, s = self.cos[pos][:, None], self.sin[pos][:, None]  # (B, 1, T, HS)
        return x * c + rh * s

    def loss(self, P, tok, tgt, pos=None):
        """Mean loss over the targets >= 0. pos (B, T): documents packed in each row, as
        position_ids with a block-diagonal causal mask (each document attends to itself)."""
        B, T = tok.shape
        x = P["model.embed_tokens.weight"][tok]
        t = np.arange(T)
        if pos is None:
            pos = np.broadcast_to(t, (B, T))
        start = t[None, :] - pos  # (B, T): the first key of each query's document
        keep = (t[None, None, :] <= t[None, :, None]) & (t[None, None, :] >= start[:, :, None])  # (B, Tq, Tk)
        mask = np.where(keep, 0.0, -np.inf)[:, None]  # (B, 1, T, T)
        g = self.NH // self.NKV
        for i in range(self.L):
            p = "model.layers.%d." % i
            h = self.rms(x, P[p + "input_layernorm.weight"])
            def proj(n):
                y = h @ P[p + "self_attn.%s_proj.weight" % n].T
                if self.bias:
                    y = y + P[p + "self_attn.%s_proj.bias" % n]
                return y
            q = proj("q").reshape(B, T, self.NH, self.HS).transpose(0, 2, 1, 3)
            k = proj("k").reshape(B, T, self.NKV, self.HS).transpose(0, 2, 1, 3)
            v = proj("v").reshape(B, T, self.NKV, self.HS).transpose(0, 2, 1, 3)
            q, k = self.rot(q, pos), self.rot(k, pos)
            k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)  # repeat_kv
            s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(self.HS) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            a = (s / s.sum(-1, keepdims=True)) @ v
            x = x + a.transpose(0, 2, 1, 3).reshape(B, T, -1) @ P[p + "self_attn.o_proj.weight"].T
            h = self.rms(x, P[p + "post_attention_layernorm.weight"])
            gt, up = h @ P[p + "mlp.gate_proj.weight"].T, h @ P[p + "mlp.up_proj.weight"].T
            x = x + (gt / (1 + np.exp(-gt)) * up) @ P[p + "mlp.down_proj.weight"].T
        x = self.rms(x, P["model.norm.weight"])
        W = P["model.embed_tokens.weight"] if self.tie else P["lm_head.weight"]
        z = x @ W.T
        z = z - z.max(-1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        on = tgt >= 0
        return -np.take_along_axis(lp, np.where(on, tgt, 0)[..., None], -1)[..., 0][on].mean()


def check_folder(folder, dump):
    h = json.load(open(folder + "/config.json"))
    m = Llama(hf_to_zinc(h))
    W = read_folder(folder)
    d, meta = read_safetensors(dump)
    P, bad = {}, 0
    for name, shape in m.shapes().items():
        if name not in W:
            print("FAIL: the folder has no %s" % name)
            return 1
        if tuple(W[name].shape) != shape:
            print("FAIL: %s has shape %s, config.json says %s" % (name, W[name].shape, shape))
            return 1
        P[name] = W[name].astype(np.float64)
        z = d["p." + name].reshape(-1)
        # zinc's rows past the real vocabulary are padding (zero); the rest is the folder's
        if not np.array_equal(z[:P[name].size], W[name].astype(np.float32).reshape(-1)):
            print("FAIL: zinc's %s is not the folder's" % name)
            bad += 1
    extra = sorted(set(W) - set(P))
    if extra:
        print("FAIL: the folder holds tensors the model does not use:", extra)
        bad += 1
    tok, tgt = d["tokens"].astype(np.int64), d["targets"].astype(np.int64)
    ref, zl = m.loss(P, tok, tgt), float(meta["loss"])
    rel = abs(zl - ref) / abs(ref)
    print("%s (%s): %d tensors are zinc's parameters; loss: zinc %.9g, reference on the folder %.9g, relative "
          "difference %.2e" % (h["model_type"], h["architectures"][0], len(P), zl, ref, rel))
    return 1 if bad or rel > 1e-5 else 0


def main():
    if sys.argv[1] == "--hf":
        return check_folder(sys.argv[2], sys.argv[3])
    cfg = json.load(open(sys.argv[1]))
    d, meta = read_safetensors(sys.argv[2])
    m = Llama(cfg)
    P, G = {}, {}
    for name, shape in m.shapes().items():
        P[name] = d["p." + name].astype(np.float64).reshape(shape).copy()
        G[name] = d["g." + name].astype(np.float64).reshape(shape)
    extra = sorted(k[2:] for k in d if k.startswith("p.") and k[2:] not in P)
    if extra:
        print("zinc has parameters the reference does not know:", extra)
        return 1
    tok, tgt = d["tokens"].astype(np.int64), d["targets"].astype(np.int64)
    pos = d["pos"].astype(np.int64) if "pos" in d else None
    if pos is not None:
        print("documents: %d in %d rows, %d of %d targets masked" %
              (int((pos == 0).sum()), pos.shape[0], int((tgt < 0).sum()), tgt.size))
    ref = m.loss(P, tok, tgt, pos)
    zl = float(meta["loss"])
    bad = 0
    rel = abs(zl - ref) / abs(ref)
    print("loss: zinc %.9g, float64 reference %.9g, relative difference %.2e" % (zl, ref, rel))
    if rel > 1e-5:
        print("FAIL: the loss differs")
        bad += 1
    rng = np.random.default_rng(7)
    h, worst, n = 1e-5, 0.0, 0
    for name in P:
        p, g = P[name].reshape(-1), G[name].reshape(-1)
        gmax = np.abs(g).max()
        order = np.argsort(-np.abs(g))
        idx = list(order[:2]) + list(rng.choice(p.size, size=min(4, p.size), replace=False))
        for i in idx:
            o = p[i]
            p[i] = o + h
            lp = m.loss(P, tok, tgt, pos)
            p[i] = o - h
            lm = m.loss(P, tok, tgt, pos)
            p[i] = o
            fd = (lp - lm) / (2 * h)
            err = abs(g[i] - fd) / (abs(fd) + 1e-3 * gmax + 1e-9)
            worst, n = max(worst, err), n + 1
            if err > 2e-3:
                print("FAIL: %s[%d]: zinc %.9g, finite differences %.9g" % (name, i, g[i], fd))
                bad += 1
    print("gradients: %d entries of %d tensors against finite differences, worst relative error %.2e" %
          (n, len(P), worst))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
