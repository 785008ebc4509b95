#!/usr/bin/env python3
"""Baseline for `ptrain bench step` on the CPU: times training steps of the same GPT in PyTorch
(GPT-2 blocks with tanh GELU, tied LM head, no dropout; forward, backward, grad clipping 1.0,
AdamW lr 1e-3 wd 0.1) on synthetic tokens, and prints the median ms/step and tokens/s.
Usage: torch_gpt_cpu_step.py [--layers 4 --heads 4 --dim 256 --seq 128 --vocab 256 --batch 8]
[--threads 1] [--precision fp32|bf16] [--steps 10] [--warmup 2]. bf16 is CPU autocast (PyTorch's
oneDNN bf16 matmuls). Exits 3 when PyTorch is missing."""
import argparse
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("torch_gpt_cpu_step: PyTorch is not installed", file=sys.stderr)
    sys.exit(3)


class Block(nn.Module):
    def __init__(self, d, h, seq):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.register_buffer("mask", torch.full((seq, seq), float("-inf")).triu(1))

    def attention(self, q, k, v):
        if hasattr(F, "scaled_dot_product_attention"):  # PyTorch 2
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        T = q.shape[-2]
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])) + self.mask[:T, :T]
        return F.softmax(s.float(), dim=-1).to(v.dtype) @ v

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = self.attention(q, k, v)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, heads, dim, seq, vocab):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.h = nn.ModuleList(Block(dim, heads, seq) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        # GPT-2's initialisation, as ptrain's: N(0, 0.02), residual projections scaled by
        # 1/sqrt(2 * layers), zero biases.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" not in name:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.h:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    for name, default in (("layers", 4), ("heads", 4), ("dim", 256), ("seq", 128), ("vocab", 256),
                          ("batch", 8), ("threads", 1), ("steps", 10), ("warmup", 2)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    model = GPT(a.layers, a.heads, a.dim, a.seq, a.vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, a.vocab, (a.batch, a.seq))
    y = torch.randint(0, a.vocab, (a.batch, a.seq))
    bf16 = a.precision == "bf16"
    times = []
    for i in range(a.steps + a.warmup):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    ms = times[len(times) // 2] * 1e3
    print(f"RESULT torch={torch.__version__} precision={a.precision} threads={a.threads} "
          f"ms_per_step={ms:.2f} tokens_per_s={a.batch * a.seq / ms * 1e3:.0f} loss={loss.item():.4f}")


if __name__ == "__main__":
    main()
