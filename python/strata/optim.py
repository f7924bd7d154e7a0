"""strata.optim: optimizers for modules sharded with strata.fully_shard.

    for block in model.blocks:
        strata.fully_shard(block)
    strata.fully_shard(model)
    opt = strata.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    loss_fn(model(x), y).backward()
    opt.step()

Building the optimizer builds the engine over the sharded modules' units (the engine
steps with its fused kernels, where the state lives). Parameter groups may differ in lr
and weight_decay (_groups.py); their "lr" is the engine's learning rate:
torch.optim.lr_scheduler schedulers drive it (and a weight-decay schedule, and
OneCycleLR's betas or momentum: _groups.GroupSync).
"""
from __future__ import annotations

import torch

from . import _groups, _optim_state, fsdp
from .errors import ConfigError, UsageError


class _EngineOptimizer(_groups.FixedGroups, torch.optim.Optimizer):
    _TYPE = ""
    _KEYS: tuple[str, ...] = ()

    def __init__(self, params, **hyper):
        if any(v is None for v in hyper.values()):
            raise ConfigError("invalid_argument: hyperparameters must be numbers, got None")
        super().__init__(_groups.normalize(params), hyper)
        _groups.check_shared(self.param_groups, hyper)  # groups may differ in lr and weight_decay only
        block = {"type": self._TYPE, "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items()}}
        block["params"]["lr"] = max(g["lr"] for g in self.param_groups)
        if self._TYPE == "Adam":
            block["params"]["adam_w_mode"] = False
        self.engine = fsdp.build_engine(self.param_groups, block)
        self._sync = _groups.GroupSync(self.engine, self.param_groups)

    def step(self, closure=None):
        if closure is not None:
            raise UsageError("failed_precondition: strata's optimizers take no closure")
        return self._sync.around_step(self.engine.step)  # a scheduler (or the user) may have set them

    def zero_grad(self, set_to_none: bool = True):
        """Discards the gradients of backwards no step() counted; otherwise nothing: the
        engine clears them at each step (Note [zero_grad], engine.cpp)."""
        self.engine.zero_grad()

    def state_dict(self) -> dict:
        """torch.optim's state_dict() of the whole model, on every rank (every rank calls
        it): Note [optimizer state dicts] (_optim_state.py)."""
        return _optim_state.state_dict(self.engine, self.param_groups)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch.optim's load_state_dict(), on every rank with the same state dict (one
        of plain torch.optim's for the same parameters loads too)."""
        _optim_state.load_state_dict(self.engine, self.param_groups, self._sync, state_dict)


class AdamW(_EngineOptimizer):
    _TYPE = "AdamW"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class Adam(_EngineOptimizer):
    _TYPE = "Adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class SGD(_EngineOptimizer):
    _TYPE = "SGD"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)


class Adagrad(_EngineOptimizer):
    _TYPE = "Adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)


class Lion(_EngineOptimizer):
    """Lion (Chen et al. 2023): p -= lr * sign(beta1*m + (1-beta1)*g), then
    m = beta2*m + (1-beta2)*g, with decoupled weight decay (p *= 1 - lr*weight_decay
    first). torch has no Lion; these defaults are the paper's (an lr 3-10x below AdamW's).
    Its state dict holds "step" and "exp_avg" per parameter."""
    _TYPE = "Lion"

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay)


class Lamb(_EngineOptimizer):
    """Lamb (You et al. 2020) as DeepSpeed's FusedLamb steps it: Adam's moments, an update
    u = m / (sqrt(v) + eps) + weight_decay * p, and a trust ratio ||p|| / ||u|| per
    parameter, clamped to [min_coeff, max_coeff] (1 when either norm is 0), so
    p -= step_size * ratio * u with step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    (lr without bias_correction). The norms are the whole parameter's, across shards and
    ranks. torch has no Lamb; its state dict holds "step", "exp_avg" and "exp_avg_sq"
    per parameter."""
    _TYPE = "Lamb"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_coeff=10.0,
                 min_coeff=0.01, bias_correction=True):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_coeff=max_coeff,
                         min_coeff=min_coeff, bias_correction=bias_correction)
