"""Parameter groups (Note [parameter groups] in include/strata/engine/engine_options.h).

torch.optim's param_groups as the engine takes them: each group may have its own "lr"
and "weight_decay" (what LLM recipes vary: no decay on biases and norms); the other
hyperparameters are the optimizer's, one for all groups. In the engine a group's lr is a
multiple of the optimizer's, so a schedule moves all of them together; the optimizers
strata returns keep one torch group per engine group, whose "lr" a torch scheduler can
set group by group (GroupSync hands them over before each step, with a weight-decay
schedule's decays and a OneCycleLR's betas or momentum).
"""
from __future__ import annotations

import copy
import math

from .errors import ConfigError, NotImplementedByStrata

PER_GROUP = ("lr", "weight_decay")
# What GroupSync also hands to the engine between steps, one value for all groups, where
# the optimizer has it: Adam's betas, SGD's momentum.
SHARED = ("betas", "momentum")


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


class FixedGroups:
    """For a torch.optim.Optimizer subclass whose groups the engine took when it was built:
    add_param_group after that is refused (the engine would never step the new group's
    parameters; before, the next step failed on a count of lrs). The subclass sets
    self._sync (a GroupSync) once built; torch's __init__ adds the given groups before."""

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_sync", None) is not None:
            raise NotImplementedByStrata("unimplemented: add_param_group on a strata optimizer after it was built: "
                                         "the engine shards the parameters it is built with. Pass every parameter "
                                         "group to the optimizer (or to strata.initialize) when building it")
        super().add_param_group(param_group)


class GroupSync:
    """Keeps a torch optimizer's param_groups and the engine's settings the same. pull()
    (before a step) hands the engine what a torch scheduler or the user set in the groups:
    each group's lr and weight_decay, and Adam's betas or SGD's momentum (one value for all
    groups: torch's OneCycleLR cycles them). publish() writes the engine's back (its config
    schedule's, a loaded checkpoint's). Every other setting is fixed when the optimizer is
    built: a change to one is refused at the next step, not ignored."""

    def __init__(self, eng, groups: list[dict]):
        self._eng = eng
        self._groups = groups
        self._shared = [k for k in SHARED if getattr(eng, k) is not None]  # what this optimizer has
        self.publish()
        taken = {"params", *PER_GROUP, *self._shared}
        self._fixed = [{k: copy.deepcopy(v) for k, v in g.items() if k not in taken} for g in groups]

    def publish(self) -> None:
        for g, lr, decay in zip(self._groups, self._eng.group_lrs, self._eng.group_weight_decays):
            g["lr"] = lr
            if "weight_decay" in g:
                g["weight_decay"] = decay
        for key in self._shared:
            value = getattr(self._eng, key)
            for g in self._groups:
                if key in g:
                    g[key] = value

    def check_fixed(self, saved: list[dict]) -> None:
        """Refuses a loaded state dict's groups (load_state_dict) where they set one of the
        settings fixed when the optimizer was built to another value."""
        for i, (fixed, s) in enumerate(zip(self._fixed, saved)):
            for key, was in fixed.items():
                if key in s and not _same(s[key], was):
                    raise NotImplementedByStrata(
                        f"unimplemented: load_state_dict: parameter group {i} has {key}={s[key]!r} in the state dict, "
                        f"the optimizer was built with {was!r}; strata takes {', '.join((*PER_GROUP, *self._shared))} "
                        "from a state dict, the other settings are fixed when the optimizer is built")

    def pull(self) -> None:
        groups, eng = self._groups, self._eng
        for i, (g, fixed) in enumerate(zip(groups, self._fixed)):
            for key, was in fixed.items():
                if not _same(g.get(key), was):
                    raise NotImplementedByStrata(
                        f"unimplemented: parameter group {i}'s {key} changed from {was!r} to {g.get(key)!r} after the "
                        f"optimizer was built; strata takes changes to {', '.join((*PER_GROUP, *self._shared))} "
                        "between steps, the other settings are fixed")
        lrs = [g["lr"] for g in groups]
        if lrs != eng.group_lrs:
            eng.group_lrs = lrs
        if all("weight_decay" in g for g in groups):
            decays = [g["weight_decay"] for g in groups]
            if decays != eng.group_weight_decays:
                eng.group_weight_decays = decays
        for key in self._shared:
            given = [tuple(g[key]) if isinstance(g[key], (list, tuple)) else g[key] for g in groups if key in g]
            if not given:
                continue
            if any(v != given[0] for v in given):
                raise NotImplementedByStrata(f"unimplemented: the parameter groups' {key} differ ({given}); strata's "
                                             f"groups share one {key}")
            if given[0] != getattr(eng, key):
                setattr(eng, key, given[0])

    def around_step(self, step):
        """pull(), the engine's step, and publish() where the engine's own schedule moved
        the lr or the betas."""
        self.pull()
        before = (self._eng.lr, self._eng.betas)
        result = step()
        if (self._eng.lr, self._eng.betas) != before:
            self.publish()
        return result
