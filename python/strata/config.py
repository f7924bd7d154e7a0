"""Configs as strata.initialize takes them: a path to a JSON file, or a dict, in the
DeepSpeed vocabulary that `strata config check` accepts."""
from __future__ import annotations

import json
import os

import torch

from .errors import ConfigError, NotImplementedByStrata


def load(config) -> dict:
    if isinstance(config, (str, os.PathLike)):
        try:
            with open(config, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"invalid_argument: cannot read the config {os.fspath(config)!r}: {e.strerror}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid_argument: {os.fspath(config)}:{e.lineno}:{e.colno}: {e.msg}") from None
    if isinstance(config, dict):
        return json.loads(json.dumps(config))  # a deep copy, and only JSON values
    raise ConfigError(f"invalid_argument: config must be a path or a dict, got {type(config).__name__}")


# torch.optim classes strata's fused kernels implement, by the config's optimizer type.
_TORCH_OPTIMIZERS = {
    torch.optim.AdamW: "AdamW",
    torch.optim.Adam: "Adam",
    torch.optim.SGD: "SGD",
    torch.optim.Adagrad: "Adagrad",
}
_HYPER = {  # torch.optim group key -> config params key
    "AdamW": {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay", "amsgrad": "amsgrad"},
    "SGD": {"lr": "lr", "momentum": "momentum", "dampening": "dampening", "weight_decay": "weight_decay",
            "nesterov": "nesterov"},
    "Adagrad": {"lr": "lr", "lr_decay": "lr_decay", "weight_decay": "weight_decay", "eps": "eps",
                "initial_accumulator_value": "initial_accumulator_value"},
}
_HYPER["Adam"] = _HYPER["AdamW"]


def optimizer_block(optimizer: torch.optim.Optimizer) -> dict:
    """The config's "optimizer" block for a torch.optim optimizer the caller built: the
    engine steps with its fused kernel for that type, with the same hyperparameters."""
    kind = _TORCH_OPTIMIZERS.get(type(optimizer))
    if kind is None:
        raise NotImplementedByStrata(
            f"unimplemented: strata.initialize steps with its own fused optimizers (AdamW, Adam, SGD, Adagrad); "
            f"{type(optimizer).__name__} is not one. Give the optimizer in the config's \"optimizer\" block, or "
            "wrap any torch.optim optimizer with strata.ShardedOptimizer (ZeRO-1/2)")
    groups = optimizer.param_groups
    keys = _HYPER[kind]
    first = {k: groups[0][k] for k in keys if k in groups[0]}
    for g in groups[1:]:
        if any(g.get(k) != v for k, v in first.items()):
            raise NotImplementedByStrata(
                "unimplemented: the optimizer has parameter groups with different hyperparameters; strata's engine "
                "has one group. Use strata.ShardedOptimizer for per-group settings")
    params = {keys[k]: (list(v) if isinstance(v, tuple) else v) for k, v in first.items()}
    if kind == "Adam":
        params["adam_w_mode"] = False  # torch.optim.Adam: L2 weight decay, not decoupled
        kind = "Adam"
    return {"type": kind, "params": params}
