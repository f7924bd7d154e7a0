"""A GPT larger than host memory, written in plain PyTorch and trained from Python:
built under strata.Init (its parameters hold no bytes; each gets its values when the
engine fills its chunk), sharded with strata.initialize at ZeRO stage 3 with the
parameters and the optimizer state in NVMe files, bf16 compute with fp32 master weights.

    PYTHONPATH=build/release/python strata launch -n 2 -- /usr/bin/python3 \\
        examples/python/gpt_larger_than_ram.py --steps 20 --nvme-path /tmp/strata-nvme

    # 5.9B parameters (23.6 GB of fp32 values) on a machine with 24 GiB of RAM:
    PYTHONPATH=build/release/python /usr/bin/python3 examples/python/gpt_larger_than_ram.py \\
        --layers 52 --dim 3072 --heads 24 --steps 2 --batch 1 --seq-len 128 --bf16-state \\
        --nvme-path /mnt/nvme/strata

Against a plain PyTorch script, the model is built inside `with strata.Init():`, and the
strata.initialize call and engine.backward / engine.step replace the optimizer.

--fully-shard trains the same model FSDP2's way: built on the meta device, then
strata.fully_shard per block and the root, model.to_empty(device="cpu"), init_weights()
(recorded, not run: the engine makes each chunk's values when the optimizer builds it),
strata.optim.AdamW with a torch LambdaLR warmup, loss.backward() and optimizer.step().
"""
import argparse
import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import strata

VOCAB = 256


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
    def __init__(self, dim, layers, heads, seq_len, device=None):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, dim, device=device), nn.Embedding(seq_len, dim, device=device)
        self.blocks = nn.ModuleList(Block(dim, heads, device) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, device=device)
        self.head = nn.Linear(dim, VOCAB, bias=False, device=device)
        self.head.weight = self.wte.weight  # tied
        self.init_weights()

    def init_weights(self):
        """GPT-2's initialization, applied after building, as nanoGPT does. On the meta
        device (--fully-shard) it runs again after to_empty: the first made no values."""
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("out.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * len(self.blocks)))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def gib(n):
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="sequences per rank")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate; default: by size, as strata train (3e-3 small, 1.1e-4 at 5.9B)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="linear warmup steps; default: as strata train (10%% of the run, one per 10M parameters)")
    ap.add_argument("--nvme-path", default="/tmp/strata-nvme")
    ap.add_argument("--bf16-state", action="store_true",
                    help="bf16 optimizer state and gradient records (12 bytes a parameter on nvme, not 18)")
    ap.add_argument("--fully-shard", action="store_true",
                    help="FSDP2's way: meta device, strata.fully_shard, to_empty, init_weights, strata.optim.AdamW")
    args = ap.parse_args()
    rank = int(os.environ.get("RANK", 0))

    torch.manual_seed(0)
    t0 = time.perf_counter()
    if args.fully_shard:
        model = GPT(args.dim, args.layers, args.heads, args.seq_len, device="meta")
    else:
        with strata.Init():
            model = GPT(args.dim, args.layers, args.heads, args.seq_len)
    n = sum(p.numel() for p in model.parameters())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if rank == 0:
        print(f"built {n / 1e6:.1f}M parameters ({gib(4 * n)} as fp32; this machine has {gib(ram)} of RAM) "
              f"in {time.perf_counter() - t0:.1f} s, peak RSS {gib(peak_rss())}", flush=True)

    # strata train's defaults (apps/strata/train/train_options.cpp): GPT-3's peak rates
    # follow 6e-4 * sqrt(125M / N), and a warmup that grows with the model keeps a large
    # one's first Adam steps (every weight moved by about the lr) from diverging.
    lr = args.lr if args.lr is not None else min(3e-3, 6e-4 * math.sqrt(125e6 / n))
    warmup = args.warmup if args.warmup is not None else max(args.steps // 10, -(-n // 10_000_000), 1)
    t0 = time.perf_counter()
    if args.fully_shard:
        train = Fsdp2Way(model, args, lr, warmup)
    else:
        train = DeepSpeedWay(model, args, lr, warmup)
    if rank == 0:
        nvme = sum(train.memory_by_tier()["nvme"].values())
        print(f"engine built in {time.perf_counter() - t0:.1f} s: {gib(nvme)} of model state on nvme at this rank, "
              f"peak RSS {gib(peak_rss())}; lr {lr:.3g} after {warmup} warmup steps", flush=True)

    g = torch.Generator().manual_seed(100 + rank)
    for step in range(args.steps):
        t0 = time.perf_counter()
        # A learnable stream: each sequence counts up from a random start.
        start = torch.randint(0, VOCAB, (args.batch, 1), generator=g)
        tokens = (start + torch.arange(args.seq_len + 1)) % VOCAB
        loss = train.step(tokens)
        if rank == 0 and (step % 5 == 0 or step == args.steps - 1):
            m = train.last_metrics()
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} {time.perf_counter() - t0:.1f} s "
                  f"(forward {m['forward_s']:.1f}, backward {m['backward_s']:.1f}, optimizer {m['optimizer_s']:.1f}), "
                  f"peak RSS {gib(peak_rss())}", flush=True)
    train.close()  # its swap files go (they would at exit too)


def lm_loss(logits, tokens):
    return F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


class DeepSpeedWay:
    """DeepSpeed's way: strata.initialize with a config; engine.backward, engine.step."""

    def __init__(self, model, args, lr, warmup):
        config = {
            "train_micro_batch_size_per_gpu": args.batch,
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": 3,
                                  "offload_param": {"device": "nvme", "nvme_path": args.nvme_path},
                                  "offload_optimizer": {"device": "nvme", "nvme_path": args.nvme_path}},
            "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.1}},
            "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                         "warmup_num_steps": warmup, "warmup_type": "linear"}},
        }
        if args.bf16_state:
            config["strata"] = {"optimizer_state_dtype": "bf16", "gradient_shard_dtype": "bf16"}
        self.model, _, _, _ = strata.initialize(model=model, config=config)
        self.memory_by_tier, self.last_metrics, self.close = (self.model.memory_by_tier, self.model.last_metrics,
                                                              self.model.close)

    def step(self, tokens):
        loss = lm_loss(self.model(tokens[:, :-1]), tokens)
        self.model.backward(loss)
        self.model.step()
        return loss


class Fsdp2Way:
    """FSDP2's way, the model on the meta device: fully_shard per block and the root,
    to_empty, the init, strata.optim.AdamW (whose engine makes the values, chunk by chunk,
    from the recorded init), a torch scheduler, loss.backward() and optimizer.step()."""

    def __init__(self, model, args, lr, warmup):
        state = torch.bfloat16 if args.bf16_state else torch.float32
        policy = dict(mp_policy=strata.MixedPrecisionPolicy(param_dtype=torch.bfloat16),
                      offload=strata.OffloadPolicy(optimizer="nvme", params="nvme", nvme_path=args.nvme_path,
                                                   optimizer_state_dtype=state, gradient_shard_dtype=state))
        for block in model.blocks:
            strata.fully_shard(block, **policy)
        strata.fully_shard(model, **policy)
        model.to_empty(device="cpu")
        model.init_weights()
        self.model = model
        self.optimizer = strata.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
        engine = self.optimizer.engine
        self.memory_by_tier, self.last_metrics, self.close = engine.memory_by_kind, engine.last_metrics, engine.close
        # WarmupLR's linear warmup, as the config above: lr 0 at the first step.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, s / warmup))

    def step(self, tokens):
        loss = lm_loss(self.model(tokens[:, :-1]), tokens)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.schedule.step()
        return loss


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    main()
