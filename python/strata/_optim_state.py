"""torch.optim's state_dict() and load_state_dict() for the optimizers whose state lives in
the engine (strata.optim's and strata.initialize's): Note [optimizer state dicts] in
src/python/optimizer_state.h.

The state dict is the one plain torch.optim gives for the unsharded model: parameters
numbered over the optimizer's groups in order, each with its state under torch's names
("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "sum") in fp32
and the parameter's shape, and each group's settings. So the checkpoint code users write
for plain PyTorch (torch.save of optimizer.state_dict(); load_state_dict on resume) keeps
Adam's moments, and a plain PyTorch optimizer's state dict loads into strata and back.
Both calls are collective (every rank calls them) and hold the whole state on every rank;
a model whose state would not fit is refused, pointing at the sharded checkpoints.
"""
from __future__ import annotations

import os

import torch

from .errors import CannotFitError, ConfigError, NotImplementedByStrata

_SHARDED = ("Save a sharded checkpoint instead: engine.save_checkpoint(dir) (strata.optim: "
            "optimizer.engine.save_checkpoint(dir)); it loads at any world size")
# torch.optim's implementation switches: in its groups, none of strata's business.
_TORCH_SWITCHES = {"foreach", "capturable", "differentiable", "fused"}


def _trainable(eng, groups: list[dict]) -> list[list[tuple[int, int, torch.Tensor, str]]]:
    """Per group, its trainable parameters as (engine index, index in the group,
    parameter, name) in the engine's params() order, the order of optimizer_state()'s
    lists (each group's trainable parameters in params() order, as the engine's
    consolidate_state_dict lists them)."""
    index = {id(p): i for i, p in enumerate(eng.params)}
    names = eng.param_names
    out = []
    for g in groups:
        trainable = sorted((index[id(p)], k) for k, p in enumerate(g["params"]) if p.requires_grad)
        out.append([(i, k, g["params"][k], names[i]) for i, k in trainable])
    return out


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _check_fits(eng, groups: list[dict], what: str, bytes_per_param: int) -> None:
    """Refuses before an out-of-memory kill: each rank on this machine (LOCAL_WORLD_SIZE,
    set by strata launch and torchrun) holds the whole state at once. Every rank refuses
    when one does (a rank left alone in the gathers would wait for the others)."""
    numel = sum(p.numel() for g in groups for p in g["params"] if p.requires_grad)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    need, have = bytes_per_param * numel * local, _available_bytes()
    if not eng.any_rank(need > have):
        return
    if need <= have:
        raise CannotFitError(f"resource_exhausted: {what}: another rank's machine has not the memory for the whole "
                             f"optimizer state (its error says how much). {_SHARDED}")
    raise CannotFitError(f"resource_exhausted: {what} holds the whole optimizer state ({numel / 1e6:.1f}M parameters) "
                         f"on every rank: about {need / 2**30:.1f} GiB for the {local} rank(s) on this machine, which "
                         f"has {have / 2**30:.1f} GiB available. {_SHARDED}")


def state_dict(eng, groups: list[dict]) -> dict:
    """torch.optim's state_dict() for the engine's optimizer with these param_groups."""
    # The consolidated optimizer holds each trainable parameter's fp32 master and states
    # (Adam: 2) on every rank; the dict keeps the states (3.36 GB for 268M parameters).
    _check_fits(eng, groups, "state_dict()", 12)
    per_group = eng.optimizer_state()
    state, saved, start = {}, [], 0
    for g, trainable, states in zip(groups, _trainable(eng, groups), per_group):
        for (_, k, p, _), st in zip(trainable, states):
            if st is not None:
                state[start + k] = {key: torch.tensor(float(v)) if key == "step" else
                                    (v.view(p.shape) if v is not None else None) for key, v in st.items()}
        saved.append({**{key: v for key, v in g.items() if key != "params"},
                      "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    return {"state": state, "param_groups": saved}


def load_state_dict(eng, groups: list[dict], sync, sd: dict) -> None:
    """torch.optim's load_state_dict(): the state of every trainable parameter and the
    groups' settings; a fixed setting (eps, amsgrad, ...) that differs is refused."""
    saved = sd["param_groups"]
    if len(saved) != len(groups):
        raise ConfigError(f"invalid_argument: load_state_dict: the state dict has {len(saved)} parameter group(s), "
                          f"the optimizer {len(groups)}")
    for i, (g, s) in enumerate(zip(groups, saved)):
        if len(s["params"]) != len(g["params"]):
            raise ConfigError(f"invalid_argument: load_state_dict: group {i} has {len(s['params'])} parameters in the "
                              f"state dict, {len(g['params'])} in the optimizer")
        if s.get("maximize", False):
            raise NotImplementedByStrata(f"unimplemented: load_state_dict: group {i} has maximize=True (strata's "
                                         "optimizers minimize)")
    sync.check_fixed(saved)
    # Every parameter's fp32 master, and one chunk's master and states at a time, besides
    # the caller's dict.
    _check_fits(eng, groups, "load_state_dict()", 6)
    states, names = [], []
    for s, trainable in zip(saved, _trainable(eng, groups)):
        states.append([(i, _entry(sd["state"].get(s["params"][k]), p, name)) for i, k, p, name in trainable])
        names.append([name for *_, name in trainable])
    eng.load_optimizer_state(states, names)
    for g, s in zip(groups, saved):  # as torch's: the saved settings (lr, a scheduler's initial_lr, ...)
        g.update({k: v for k, v in s.items() if k != "params" and k not in _TORCH_SWITCHES and k != "maximize"})
    sync.pull()


def _entry(st: dict | None, p: torch.Tensor, name: str) -> dict | None:
    """A saved parameter state as optimizer_state() gives it: "step" an int, the tensors
    fp32 of the parameter's shape."""
    if st is None:
        return None
    out = {}
    for key, v in st.items():
        if key == "step":
            out[key] = int(v.item() if isinstance(v, torch.Tensor) else v)
        elif v is not None:
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(p.shape):
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ConfigError(f"invalid_argument: load_state_dict: {name}'s {key} is {shape} in the state dict; "
                                  f"the parameter's shape is {tuple(p.shape)}")
            out[key] = v.detach().float()
    return out
