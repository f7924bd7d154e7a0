"""The config's torch_autocast block (DeepSpeed's): every forward through the engine runs
under torch.autocast in bf16, over the fp32 parameters the engine holds, gathers and
reduces; bf16.enabled instead casts the parameters. The C++ engine validates the block
(bf16 only; not beside bf16.enabled or fp16.enabled); `strata train` uses the C++ guard
of strata/engine/autocast.h."""
from __future__ import annotations

import contextlib
import functools

import torch


def enabled(cfg: dict) -> bool:
    block = cfg.get("torch_autocast")
    return isinstance(block, dict) and block.get("enabled") is True


def forward_context(cfg: dict, device_type: str, stage: int):
    """A factory of the context each forward runs in: torch.autocast when the config
    enables it, else a no-op. At stage 3 without autocast's cast cache (Note [autocast
    cache at stage 3] in src/engine/autocast.cpp: it would keep a bf16 copy of every
    parameter until the forward ends, outside the compute budget)."""
    if not enabled(cfg):
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device_type, dtype=torch.bfloat16, cache_enabled=stage != 3)
