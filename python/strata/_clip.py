"""Note [torch's gradient clipping]: torch.nn.utils.clip_grad_norm_ over an engine's parameters.

Plain PyTorch loops clip with torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
between backward and the optimizer's step. Under a strata engine the parameters' .grad
do not hold what the step reads: at stages 2-3 the gradients live in this rank's
gradient shards and .grad is None after backward (as under DeepSpeed's ZeRO-2/3), so
torch's function found no gradient, clipped nothing and returned 0 without a word; and
where the step reads a copy of the gradient (stages 0-1 on a GPU) an in-place change to
.grad misses it. Importing strata points torch's names at clip_grad_norm_ below: over
an engine's trained parameters it asks the engine for the global norm, equal to torch's
over the unsharded model, and the engine's next step scales the gradients by
max_norm / norm when that is below 1 (Engine::clip_grad_norm); over any other tensors it
is torch's own function. clip_grad_value_ over an engine's parameters is refused: the
engine clips by norm only.

A name bound before strata was imported (`from torch.nn.utils import clip_grad_norm_`
above `import strata`) is torch's own function; engine.clip_grad_norm(max_norm) or the
config's gradient_clipping clip as well.
"""
from __future__ import annotations

import math

import torch
import torch.nn.utils
import torch.nn.utils.clip_grad

from ._owners import split
from .errors import NotImplementedByStrata


_TORCH_CLIP_NORM = torch.nn.utils.clip_grad.clip_grad_norm_
_TORCH_CLIP_VALUE = torch.nn.utils.clip_grad.clip_grad_value_


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, **kwargs):
    params, owners, others = split(parameters)
    if not owners:
        return _TORCH_CLIP_NORM(params, max_norm, norm_type, error_if_nonfinite, **kwargs)
    if len(owners) > 1 or any(p.grad is not None for p in others):
        raise NotImplementedByStrata(
            "unimplemented: torch.nn.utils.clip_grad_norm_ over the parameters of more than one strata engine, or "
            "of an engine and tensors of its own: each engine clips its gradients by its own global norm; clip "
            "each engine's parameters in a call of their own")
    owner = next(iter(owners.values()))
    given = {id(p) for p in params}
    if not owner.trained <= given:
        raise NotImplementedByStrata(
            f"unimplemented: torch.nn.utils.clip_grad_norm_ over {len(owner.trained & given)} of the "
            f"{len(owner.trained)} parameters the strata engine trains: the engine clips all of its gradients by one "
            "global norm; pass all of them (model.parameters()), or set the config's gradient_clipping")
    norm = owner.engine.clip_grad_norm(float(max_norm), float(norm_type))
    if error_if_nonfinite and not math.isfinite(norm):
        raise RuntimeError(f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
                           "non-finite, so it cannot be clipped. To disable this error and scale the gradients by "
                           "the non-finite norm anyway, set `error_if_nonfinite=False`")
    return torch.tensor(norm)


def clip_grad_value_(parameters, clip_value, **kwargs):
    params, owners, _ = split(parameters)
    if owners:
        raise NotImplementedByStrata(
            "unimplemented: torch.nn.utils.clip_grad_value_ over a strata engine's parameters: their gradients "
            "live in the engine's shards, which clip by norm only; use torch.nn.utils.clip_grad_norm_ (or the "
            "config's gradient_clipping)")
    return _TORCH_CLIP_VALUE(params, clip_value, **kwargs)


for _module in (torch.nn.utils, torch.nn.utils.clip_grad):
    _module.clip_grad_norm_ = clip_grad_norm_
    _module.clip_grad_value_ = clip_grad_value_
