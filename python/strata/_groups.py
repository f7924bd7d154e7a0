"""Parameter groups (Note [parameter groups] in include/strata/engine/engine_options.h).

torch.optim's param_groups as the engine takes them: each group may have its own "lr"
and "weight_decay" (what LLM recipes vary: no decay on biases and norms); the other
hyperparameters are the optimizer's, one for all groups. In the engine a group's lr is a
multiple of the optimizer's, so a schedule moves all of them together; the optimizers
strata returns keep one torch group per engine group, whose "lr" a torch scheduler can
set group by group (sync_lrs() hands them over before each step).
"""
from __future__ import annotations

import math

from .errors import ConfigError, NotImplementedByStrata

PER_GROUP = ("lr", "weight_decay")


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def normalize(groups) -> list[dict]:
    """A list of parameters or of group dicts (torch's forms) as a list of group dicts,
    each with its own list of parameters."""
    groups = list(groups)
    if not groups:
        raise ConfigError("invalid_argument: the optimizer got an empty parameter list")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or "params" not in g:
            raise ConfigError(f"invalid_argument: parameter group {i} must be a dict with \"params\"")
        params = g["params"]
        params = [params] if hasattr(params, "requires_grad") else list(params)
        out.append({**g, "params": params})
    return out


def check_shared(groups: list[dict], shared: dict, against: str = "the optimizer's") -> None:
    """Refuses a group that sets a hyperparameter other than lr and weight_decay to a value
    other than the optimizer's (shared: the optimizer's, by torch key; against: what to
    call them in the error)."""
    for i, g in enumerate(groups):
        for key, value in shared.items():
            if key in PER_GROUP or key not in g:
                continue
            if not _same(g[key], value):
                raise NotImplementedByStrata(
                    f"unimplemented: parameter group {i} sets {key}={g[key]!r}, {against} is {value!r}; strata's "
                    f"groups may differ only in {' and '.join(PER_GROUP)}. Use strata.ShardedOptimizer for "
                    "other per-group settings")
        if g.get("maximize", False):
            raise NotImplementedByStrata("unimplemented: maximize=True (strata's optimizers minimize)")


def engine_groups(groups: list[dict]) -> list:
    """The engine's param_groups argument: (parameters, lr or None, weight decay or None)
    per group; [] for one group that sets nothing of its own (the engine's default)."""
    out = []
    for i, g in enumerate(groups):
        for key in PER_GROUP:
            v = g.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise ConfigError(f"invalid_argument: parameter group {i}: {key} must be a number >= 0, got {v!r}")
        out.append((g["params"], g.get("lr"), g.get("weight_decay")))
    if len(out) == 1 and out[0][1] is None and out[0][2] is None:
        return []
    return out


def sync_lrs(eng, torch_groups: list[dict]) -> None:
    """Hands the torch groups' lrs to the engine when they are not what it has (a torch
    scheduler, or the user, set them). Engine.set_group_lrs owns the rule: the largest is
    the engine's lr, the others scales of it."""
    lrs = [g["lr"] for g in torch_groups]
    if lrs != eng.group_lrs:
        eng.group_lrs = lrs


def publish_lrs(eng, torch_groups: list[dict]) -> None:
    """Writes the engine's lr (its schedule's, or a loaded checkpoint's) into the torch
    groups."""
    for g, lr in zip(torch_groups, eng.group_lrs):
        g["lr"] = lr
