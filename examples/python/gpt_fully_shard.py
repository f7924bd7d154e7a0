"""A small GPT written in plain PyTorch, sharded FSDP2-style with strata.fully_shard:
one unit per block, then the root; strata.optim.AdamW; the usual loss.backward() and
optimizer.step().

    PYTHONPATH=build/release/python strata launch -n 2 -- /usr/bin/python3 \\
        examples/python/gpt_fully_shard.py --steps 50

Against a plain PyTorch script, the fully_shard calls are added and torch.optim.AdamW
becomes strata.optim.AdamW.

--meta builds it FSDP2's way, for a model larger than memory: on the meta device (torch
2's `with torch.device("meta")`; here the modules' device="meta" argument, which torch
1.13 has too), then fully_shard, model.to_empty(device="cpu") and init_weights(). The
parameters get no bytes until the optimizer builds the engine, which makes their values
chunk by chunk from the recorded initialization.
"""
import argparse
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import strata

VOCAB, SEQ = 256, 64


class Block(nn.Module):
    def __init__(self, dim, heads, device=None):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim, device=device), nn.LayerNorm(dim, device=device)
        self.qkv = nn.Linear(dim, 3 * dim, device=device)
        self.proj = nn.Linear(dim, dim, device=device)
        self.fc, self.out = nn.Linear(dim, 4 * dim, device=device), nn.Linear(4 * dim, dim, device=device)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(d, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, dim=128, layers=4, heads=4, device=None):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, dim, device=device), nn.Embedding(SEQ, dim, device=device)
        self.blocks = nn.ModuleList(Block(dim, heads, device) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, device=device)
        self.head = nn.Linear(dim, VOCAB, bias=False, device=device)
        self.head.weight = self.wte.weight  # tied
        self.init_embeddings()

    def init_embeddings(self):
        for emb in (self.wte, self.wpe):
            nn.init.normal_(emb.weight, std=0.02)  # as GPT-2: N(0, 1) would make the tied head's logits huge

    def init_weights(self):
        """Every parameter's values, for a model whose values were never made (--meta)."""
        for m in self.modules():
            if m is not self.head and hasattr(m, "reset_parameters"):  # (the head is the tied embedding)
                m.reset_parameters()
        self.init_embeddings()

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8, help="sequences per rank")
    ap.add_argument("--meta", action="store_true", help="build on the meta device; values after fully_shard")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = GPT(device="meta" if args.meta else None)
    policy = dict(mp_policy=strata.MixedPrecisionPolicy(param_dtype=torch.bfloat16),
                  offload=strata.OffloadPolicy(optimizer="cpu", params="cpu"))
    for block in model.blocks:
        strata.fully_shard(block, **policy)
    strata.fully_shard(model, **policy)
    if args.meta:  # recorded, not run: the optimizer's engine makes the values chunk by chunk
        model.to_empty(device="cpu")
        model.init_weights()
    # As LLM recipes do: weight decay on the matrices, none on biases and norms.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = strata.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                   lr=1e-3, weight_decay=0.1)

    rank = int(os.environ.get("RANK", 0))
    g = torch.Generator().manual_seed(100 + rank)
    # A learnable stream: each sequence counts up from a random start.
    for step in range(args.steps):
        start = torch.randint(0, VOCAB, (args.batch, 1), generator=g)
        tokens = (start + torch.arange(SEQ + 1)) % VOCAB
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
