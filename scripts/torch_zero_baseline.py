#!/usr/bin/python3
"""PyTorch baselines for strata's training throughput (ZeRO-1 or plain AdamW with DDP),
and the same GPT trained through strata's Python API (--api fully_shard / initialize).

Trains the same GPT as strata's C++ nn::GPT (token + position embeddings, pre-LayerNorm
blocks with causal self-attention and a tanh-GELU MLP, final LayerNorm, LM head tied to
the token embedding) on random byte tokens (vocab 256), and measures the wall time of
one training step: forward + loss + backward + optimizer.step() + zero_grad. After
--warmup untimed steps it times --steps steps, takes each rank's median, and reports the
slowest rank's median: tokens_per_s = batch * seq * world / step_s.

--optimizer zero: DDP + torch.distributed.optim.ZeroRedundancyOptimizer(AdamW)
--optimizer adamw: DDP + torch.optim.AdamW
--optimizer fsdp2: FSDP2 (torch >= 2.6: fully_shard per block and the root) with
    CPUOffloadPolicy (parameters, gradients and AdamW's state in host memory) and bf16
    compute through MixedPrecisionPolicy; the baseline of `strata bench zero3 --device
    cuda` (docs/gpu.md)
--device cuda: the model, the batches and the step on GPU LOCAL_RANK; NCCL between ranks
--api fully_shard: strata.fully_shard per block and the root, strata.optim.AdamW
--api initialize: strata.initialize at stage 3 (every module with parameters a unit)

Launch one process per rank with the environment set (no torchrun needed), e.g.

  RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 \
      /usr/bin/python3 scripts/torch_zero_baseline.py --model tiny --out result.json
  RANK=1 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 \
      /usr/bin/python3 scripts/torch_zero_baseline.py --model tiny

Without WORLD_SIZE it runs as a single process (no DDP, plain AdamW, reported as
"adamw"). Rank 0 prints one JSON object on stdout (and writes it to --out); logs go to
stderr. On the CPU it needs Debian's /usr/bin/python3 with python3-torch (1.13) and uses
gloo; --device cuda needs a CUDA torch and uses NCCL. With --device cuda the result
also has the peak GPU memory allocated (peak_device_bytes).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

VOCAB = 256
SIZES = {  # name: (layers, hidden, heads), as in strata's gpt_config()
    "tiny": (8, 128, 4),
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
}


def parse_model(name: str) -> tuple[int, int, int]:
    if name in SIZES:
        return SIZES[name]
    if name.startswith("custom:"):
        dims = name.removeprefix("custom:").split("x")
        if len(dims) == 3 and all(d.isdigit() and int(d) > 0 for d in dims):
            return tuple(int(d) for d in dims)
    raise argparse.ArgumentTypeError(
        f"unknown model '{name}'; use {', '.join(SIZES)} or custom:<layers>x<hidden>x<heads>"
    )


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(hidden)
        self.c_attn = nn.Linear(hidden, 3 * hidden)
        self.attn_proj = nn.Linear(hidden, hidden)
        self.ln_2 = nn.LayerNorm(hidden)
        self.c_fc = nn.Linear(hidden, 4 * hidden)
        self.mlp_proj = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.heads
        q, k, v = (
            y.view(b, t, self.heads, d).transpose(1, 2) for y in self.c_attn(self.ln_1(x)).split(h, 2)
        )
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).contiguous().view(b, t, h)
        r = x + self.attn_proj(y)
        return r + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(r)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, vocab: int, context: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(context, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)
        proj_std = 0.02 / math.sqrt(2 * layers)
        with torch.no_grad():  # GPT-2's init, as strata's GPTImpl::init_weights
            for name, p in self.named_parameters():
                if "ln_" in name:
                    p.fill_(0.0 if name.endswith("bias") else 1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, proj_std if "_proj.weight" in name else 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.size(1), device=tokens.device)
        x = self.wte(tokens) + self.wpe(pos).unsqueeze(0)
        for block in self.blocks:
            x = block(x)
        return torch.matmul(self.ln_f(x), self.wte.weight.t())  # tied LM head


def strata_parameter_count(layers: int, h: int, vocab: int, context: int) -> int:
    """GPTConfig::parameter_count() in src/nn/models/gpt.cpp."""
    return vocab * h + context * h + layers * (12 * h * h + 13 * h) + 2 * h


def strata_model(model: GPT, args):
    """The model sharded at stage 3 through strata's Python API, with everything in
    compute memory and every parameter sharded: the settings `strata bench python` gives
    the C++ API's run (strata train) of the same GPT. Returns (model, optimizer, name)."""
    import strata  # build/release/python on PYTHONPATH

    group = dist.group.WORLD if dist.is_initialized() else None
    if args.api == "fully_shard":  # FSDP2-style: one unit per block, then the root
        mp = strata.MixedPrecisionPolicy(param_dtype=torch.bfloat16 if args.precision == "bf16" else None)
        for block in model.blocks:
            strata.fully_shard(block, mp_policy=mp, offload=None, process_group=group)
        strata.fully_shard(model, mp_policy=mp, offload=None, process_group=group)
        return model, strata.optim.AdamW(model.parameters(), lr=1e-4), "strata.optim.AdamW"
    # DeepSpeed-style: every module that owns parameters is a unit. The root's forward
    # uses the token embedding's weight (the tied head): declare it, as with DeepSpeed.
    strata.register_external_parameter(model, model.wte.weight)
    config = {"train_micro_batch_size_per_gpu": args.batch,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
              "bf16": {"enabled": args.precision == "bf16"}}
    engine, opt, _, _ = strata.initialize(model=model, config=config, process_group=group)
    return engine, opt, "strata.initialize AdamW"


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def fsdp2_model(model: GPT, args):
    """FSDP2 with CPUOffloadPolicy, as its documentation shows it: each block, then the root.
    Returns (model, optimizer, name)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if args.precision == "bf16" else None,
                              reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=mp, offload_policy=CPUOffloadPolicy())
    fully_shard(model, mp_policy=mp, offload_policy=CPUOffloadPolicy())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4), "fsdp2 CPUOffloadPolicy AdamW"


def time_steps(train_step, args, rank: int, world: int) -> float:
    """Runs train_step(inputs, targets) -> loss on random byte tokens for --warmup untimed
    and --steps timed steps; returns the slowest rank's median step time in seconds."""
    gen = torch.Generator()
    times = []
    for step in range(args.warmup + args.steps):
        gen.manual_seed(step * 1_000_003 + rank)
        data = torch.randint(0, VOCAB, (args.batch, args.seq + 1), generator=gen).to(args.device)
        inputs, targets = data[:, :-1], data[:, 1:]
        start = time.perf_counter()
        loss = train_step(inputs, targets)
        if args.device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels, not only their launches
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            times.append(elapsed)
        if rank == 0:
            log(f"step {step}{' (warmup)' if step < args.warmup else ''}: "
                f"loss {loss.item():.4f}, {elapsed:.3f} s")
    step_s = torch.tensor([statistics.median(times)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(step_s, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    return step_s.item()


def report(result: dict, args, rank: int) -> None:
    """Rank 0 prints the result as one JSON object on stdout and writes it to --out."""
    if rank == 0:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f)
                f.write("\n")
        print(json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="custom:16x512x8")
    ap.add_argument("--seq", type=int, default=128, help="sequence length, also the context")
    ap.add_argument("--batch", type=int, default=4, help="sequences per rank")
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--optimizer", choices=["zero", "adamw", "fsdp2"], default="zero")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--api", choices=["torch", "fully_shard", "initialize"], default="torch",
                    help="torch: DDP (--optimizer); fully_shard, initialize: strata's Python API at stage 3")
    ap.add_argument("--out", help="JSON result file (rank 0)")
    ap.add_argument("--threads", type=int, help="default: cpu_count / LOCAL_WORLD_SIZE")
    args = ap.parse_args()
    try:
        layers, hidden, heads = parse_model(args.model)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if hidden % heads:
        ap.error(f"model '{args.model}': hidden size {hidden} is not divisible by {heads} heads")
    if args.steps < 1 or args.seq < 1 or args.batch < 1 or args.warmup < 0:
        ap.error("--steps, --seq and --batch must be positive, --warmup non-negative")

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: torch {torch.__version__} sees no GPU")
    if args.optimizer == "fsdp2" and args.api != "torch":
        ap.error("--optimizer fsdp2 is a torch baseline (--api torch)")
    if args.optimizer == "fsdp2" and tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 6):
        raise SystemExit(f"--optimizer fsdp2 needs torch >= 2.6 (fully_shard with CPUOffloadPolicy); "
                         f"this is {torch.__version__}")
    args.device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", "0"))) if args.device == "cuda" \
        else torch.device("cpu")
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    distributed = "WORLD_SIZE" in os.environ
    if args.optimizer == "fsdp2" and not distributed:
        # FSDP2 needs a process group, even of one rank.
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29541"))
        distributed = True
    if distributed:
        # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from env
        dist.init_process_group("nccl" if args.device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = args.threads or max(1, (os.cpu_count() or 1) // local_world)
    torch.set_num_threads(threads)

    torch.manual_seed(42)
    model = GPT(layers, hidden, heads, VOCAB, context=args.seq)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields the tied wte once
    expected = strata_parameter_count(layers, hidden, VOCAB, args.seq)
    if params != expected:
        raise SystemExit(f"parameter count {params} != strata's {expected}")

    if args.api != "torch":
        model, opt, optimizer = strata_model(model, args)
    elif args.optimizer == "fsdp2":
        model.to(args.device)  # fully_shard moves the shards to host under CPUOffloadPolicy
        model, opt, optimizer = fsdp2_model(model, args)
    else:
        model.to(args.device)
        if distributed:
            model = nn.parallel.DistributedDataParallel(model)
        if args.optimizer == "zero" and distributed:
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-4)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        optimizer = args.optimizer if distributed else "adamw"  # one process: no sharding

    if rank == 0:
        log(f"torch_zero_baseline: {args.model} ({params:,} params), world {world}, "
            f"{threads} threads/rank, {args.precision}, {optimizer}, batch {args.batch}x{args.seq}")

    # strata computes in the parameters' dtype (bf16 gathered copies); torch under autocast
    # (FSDP2 casts through its MixedPrecisionPolicy).
    autocast = args.api == "torch" and args.precision == "bf16" and args.optimizer != "fsdp2"

    def train_step(inputs, targets):
        with torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step_s = time_steps(train_step, args, rank, world if distributed else 1)
    result = {"tokens_per_s": args.batch * args.seq * world / step_s, "step_s": step_s, "params": params,
              "world": world, "model": args.model, "precision": args.precision, "optimizer": optimizer,
              "threads": threads, "api": args.api, "torch": torch.__version__, "device": str(args.device)}
    if args.device.type == "cuda":
        result["peak_device_bytes"] = torch.cuda.max_memory_allocated(args.device)
    report(result, args, rank)
    if distributed:
        dist.barrier()
    # Skip the interpreter's teardown: in torch 1.13 destroying DDP's reducer can deadlock
    # (~ProcessGroupGloo waits for a worker thread that waits for the GIL held by this
    # one); it hung a `strata bench python` run here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
