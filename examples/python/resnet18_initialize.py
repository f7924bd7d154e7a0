"""ResNet-18 (torchvision, unmodified) trained on random data with strata.initialize:
ZeRO stage 3, the optimizer state in NVMe files, bf16 compute with fp32 master weights.

    PYTHONPATH=build/release/python strata launch -n 2 -- /usr/bin/python3 \\
        examples/python/resnet18_initialize.py --steps 20 --nvme-path /tmp/strata-nvme

Against a plain PyTorch script, two lines change: the strata.initialize call, and
engine.backward / engine.step in place of loss.backward / optimizer.step.
"""
import argparse
import os

import torch
import torch.nn.functional as F
import torchvision

import strata


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="rows per rank")
    ap.add_argument("--nvme-path", default="/tmp/strata-nvme")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    config = {
        "train_micro_batch_size_per_gpu": args.batch,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": args.nvme_path}},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}},
    }
    engine, _, _, _ = strata.initialize(model=model, config=config)
    rank = int(os.environ.get("RANK", 0))
    g = torch.Generator().manual_seed(100 + rank)
    for step in range(args.steps):
        # As with DeepSpeed, inputs come in the compute dtype (bf16 here).
        x = torch.randn(args.batch, 3, 64, 64, generator=g).to(torch.bfloat16)
        y = torch.randint(0, 10, (args.batch,), generator=g)
        loss = F.cross_entropy(engine(x).float(), y)
        engine.backward(loss)
        engine.step()
        if rank == 0 and (step % 5 == 0 or step == args.steps - 1):
            mem = engine.memory_by_tier()
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} "
                  f"optimizer state on nvme {mem['nvme']['optimizer'] / 2**20:.1f} MiB", flush=True)
    engine.close()


if __name__ == "__main__":
    main()
