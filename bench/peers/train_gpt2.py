"""PyTorch reference trainer for bench/bench-peers.sh: the GPT-2 that zinc's
models/gpt2.c builds, trained the way zinc-train trains it, so the two can be
timed side by side.

Model: GPT-2 (pre-LN blocks, learned position embedding, LayerNorm with bias,
biases on every linear, GELU tanh approximation, causal attention through
F.scaled_dot_product_attention, LM head tied to wte, no dropout), fp32.
Init as zinc's: N(0, 0.02), wpe N(0, 0.01), residual projections (attn.c_proj,
mlp.c_proj) N(0, 0.02/sqrt(2L)), LayerNorm 1/0, biases 0.
Training: AdamW (betas 0.9/0.999, eps 1e-8, weight_decay 0, constant lr),
clip_grad_norm_ 1.0, one micro-batch per step per rank.

Data: a zinc token shard (256 x int32 header: magic 20240520, version 1, token
count; then uint16 tokens). Each rank draws random windows of T+1 tokens
(inputs the first T, targets the last T) from its own generator.

One process (no WORLD_SIZE, or WORLD_SIZE=1) trains alone; with WORLD_SIZE>1
(RANK, MASTER_ADDR, MASTER_PORT set) it joins a gloo process group through
env:// and wraps the model in DistributedDataParallel.

Rank 0 writes one JSON line per step to --metrics: step, loss (mean over
ranks), grad_norm, step_ms, tokens_per_s (global: B x T x world / step time).
The step time covers batch load, forward, backward (with DDP's all-reduce),
clipping and the optimizer, as zinc's step_ms does; the all-reduce of the loss
for the log is outside it.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)          # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT2(nn.Module):
    def __init__(self, n_layer, n_embd, n_head, vocab, block_size):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        # LM head tied to wte: logits = x @ wte^T
        std_proj = 0.02 / math.sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            elif name == "wpe.weight":
                nn.init.normal_(p, 0.0, 0.01)
            elif name.endswith("attn_proj.weight") or name.endswith("mlp_proj.weight"):
                nn.init.normal_(p, 0.0, std_proj)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, targets):  # idx, targets: (B, T) int64
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)          # (B, T, C)
        for blk in self.h:
            x = blk(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def load_shard(path):
    hdr = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if hdr.size != HEADER_INTS or hdr[0] != SHARD_MAGIC or hdr[1] != SHARD_VERSION:
        sys.exit(f"train_gpt2.py: {path} is not a zinc token shard (magic/version)")
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_INTS * 4)
    if tokens.size != hdr[2]:
        sys.exit(f"train_gpt2.py: {path} holds {tokens.size} tokens, header says {hdr[2]}")
    return np.asarray(tokens, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="micro-batch per rank")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--adamw", choices=["foreach", "fused", "for-loop"], default="foreach",
                    help="torch.optim.AdamW implementation")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)

    torch.manual_seed(a.seed)  # the same initial weights on every rank (DDP broadcasts them too)
    model = GPT2(a.n_layer, a.n_embd, a.n_head, a.vocab, a.seq)
    n_params = sum(p.numel() for p in model.parameters())  # tied wte counted once
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    impl = {"foreach": {"foreach": True}, "fused": {"fused": True},
            "for-loop": {"foreach": False}}[a.adamw]
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, **impl)

    tokens = load_shard(a.data)
    if tokens.size < a.seq + 1 or int(tokens.max()) >= a.vocab:
        sys.exit(f"train_gpt2.py: {a.data}: too few tokens or a token >= vocab {a.vocab}")
    rng = np.random.default_rng([a.seed, rank])
    win = np.arange(a.seq + 1)

    if rank == 0:
        print(f"torch {torch.__version__} | {world} process(es) x {torch.get_num_threads()} threads "
              f"(interop {torch.get_num_interop_threads()}) | {n_params} params | "
              f"AdamW {a.adamw} | {tokens.size} tokens", flush=True)
    mf = open(a.metrics, "w") if rank == 0 else None
    tok_per_step = a.batch * a.seq * world
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        starts = rng.integers(0, tokens.size - a.seq - 1, size=a.batch)
        w = torch.from_numpy(tokens[starts[:, None] + win])  # (B, T+1)
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()  # (B, T) each
        opt.zero_grad(set_to_none=True)
        loss = net(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        dt = time.perf_counter() - t0
        lv = loss.detach().clone()
        if world > 1:
            dist.all_reduce(lv)
            lv /= world
        if mf:
            mf.write(json.dumps({"step": step, "loss": float(lv), "grad_norm": float(norm),
                                 "step_ms": dt * 1e3, "tokens_per_s": tok_per_step / dt}) + "\n")
            mf.flush()
    if mf:
        mf.close()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
