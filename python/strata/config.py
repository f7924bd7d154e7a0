"""Configs as strata.initialize takes them: a path to a JSON file, or a dict, in the
DeepSpeed vocabulary that `strata config check` accepts."""
from __future__ import annotations

import json
import os

import torch

from . import _groups, _strata
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
    "Lion": {"lr": "lr", "betas": "betas", "weight_decay": "weight_decay"},
    "Lamb": {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay", "max_coeff": "max_coeff",
             "min_coeff": "min_coeff", "bias_correction": "bias_correction"},
}
_HYPER["Adam"] = _HYPER["AdamW"]


def torch_hyper(cfg: dict) -> dict:
    """The config's optimizer (defaults filled in) by torch.optim's group keys."""
    settings = _strata.optimizer_settings(json.dumps(cfg))
    return {k: settings[v] for k, v in _HYPER[settings["type"]].items()}


def optimizer_block(optimizer: torch.optim.Optimizer) -> tuple[dict, list[dict]]:
    """The config's "optimizer" block for a torch.optim optimizer the caller built (the
    engine steps with its fused kernel for that type, with the same hyperparameters), and
    its parameter groups. Groups may differ in lr and weight_decay (_groups.py); the
    block's lr is the largest group's."""
    kind = _TORCH_OPTIMIZERS.get(type(optimizer))
    if kind is None:
        raise NotImplementedByStrata(
            f"unimplemented: strata.initialize steps with its own fused optimizers (torch.optim's AdamW, Adam, "
            f"SGD, Adagrad; and Lion and Lamb, which torch lacks, by the config's \"type\"); "
            f"{type(optimizer).__name__} is not one. Give the optimizer in the config's \"optimizer\" block, or "
            "wrap any torch.optim optimizer with strata.ShardedOptimizer (ZeRO-1/2)")
    groups = optimizer.param_groups
    keys = _HYPER[kind]
    first = {k: groups[0][k] for k in keys if k in groups[0]}
    _groups.check_shared(groups, first, "group 0's")
    params = {keys[k]: (list(v) if isinstance(v, tuple) else v) for k, v in first.items()}
    params["lr"] = max(g["lr"] for g in groups)
    if kind == "Adam":
        params["adam_w_mode"] = False  # torch.optim.Adam: L2 weight decay, not decoupled
    return {"type": kind, "params": params}, groups
