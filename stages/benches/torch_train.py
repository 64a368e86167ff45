"""The `tiny` and `nanogpt-10m` models of gradline in PyTorch, for the training-step
throughput comparison: same shapes, tied head, pre-LayerNorm, exact GELU, AdamW, clipping.

    python stages/benches/torch_train.py [tiny|nanogpt-10m] [--threads N]
"""

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "tiny": dict(vocab=257, context=64, layers=2, heads=4, dim=64, batch=8, steps=20),
    "nanogpt-10m": dict(vocab=100_277, context=256, layers=6, heads=6, dim=384, batch=4, steps=3),
}


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.c_fc, self.mlp_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + self.c_proj((att @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, context, layers, heads, dim, **_):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.h = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)

    def loss(self, tokens):
        x, y = tokens[:, :-1], tokens[:, 1:]
        h = self.wte(x) + self.wpe(torch.arange(x.shape[1]))
        for block in self.h:
            h = block(h)
        logits = self.ln_f(h) @ self.wte.weight.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("preset", nargs="*", default=list(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.preset:
        p = PRESETS[name]
        model = Gpt(**p)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        tokens = (torch.arange(p["batch"] * (p["context"] + 1)) * 7919 % p["vocab"]).view(p["batch"], -1)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = model.loss(tokens)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        for _ in range(2):
            step()
        start = time.perf_counter()
        for _ in range(p["steps"]):
            step()
        seconds = time.perf_counter() - start
        n = sum(x.numel() for x in model.parameters())
        tokens_per_step = p["batch"] * p["context"]
        print(f"{name}: {n} parameters, batch {p['batch']} × {p['context']} tokens, {p['steps']} steps: "
              f"{seconds * 1000 / p['steps']:.1f} ms/step, {tokens_per_step * p['steps'] / seconds:.0f} tokens/s "
              f"(torch {torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
