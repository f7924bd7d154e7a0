"""FSDP2's spelling on strata.fully_shard: its arguments, its per-module casts and its
FSDPModule methods.

Note [FSDP2 arguments]: FSDP2's own arguments are taken so that its scripts run:
- mesh: a 1-D DeviceMesh, read as its process group;
- offload_policy: CPUOffloadPolicy puts the optimizer state and parameter shards on host;
- mp_policy's cast_forward_inputs and output_dtype: applied as FSDP2 does, per module;
- reshard_after_forward True or False: accepted; strata's schedule, not the flag,
  decides which gathered chunks stay between forward and backward.
What strata does not do is refused (ignored_params, a 2-D mesh, an int
reshard_after_forward, a list of modules) or, where the numbers do not change, warned
about (shard_placement_fn: strata's shards are slices of flat chunks; a reduce_dtype
other than param_dtype: the gradient buffers are in param_dtype).
The FSDPModule methods FSDP2 loops call are there too, on each sharded module whose
class has none of that name, and change nothing, because the recorded trace drives
gathering, prefetching and releasing: unshard and reshard, set_requires_gradient_sync
(strata reduces every micro-step's gradients into the shards; the sum is the same),
set_reshard_after_forward / _backward, set_is_last_backward,
set_modules_to_forward_prefetch / _backward_prefetch.
"""
from __future__ import annotations

import inspect
import types
import warnings

import torch
from torch.utils._pytree import tree_map

from . import _units
from .errors import ConfigError, NotImplementedByStrata


class _Done:
    """unshard(async_op=True)'s handle: there is nothing to wait for."""

    def wait(self) -> None:
        return None


def _no_effect(self, *args, **kwargs) -> None:
    return None


def _unshard(self, async_op: bool = False):
    return _Done() if async_op else None


# What FSDP2's FSDPModule methods ask for, strata's schedule does (Note [FSDP2 arguments]).
_METHODS = {
    "set_requires_gradient_sync": _no_effect,
    "set_reshard_after_forward": _no_effect,
    "set_reshard_after_backward": _no_effect,
    "set_is_last_backward": _no_effect,
    "set_modules_to_forward_prefetch": _no_effect,
    "set_modules_to_backward_prefetch": _no_effect,
    "reshard": _no_effect,
    "unshard": _unshard,
}


def arguments(offload, offload_policy, process_group, mesh, reshard_after_forward, ignored_params,
              shard_placement_fn, mp_policy):
    """FSDP2's arguments as strata's: (offload, process_group)."""
    if offload_policy is not None:
        if offload is not None:
            raise ConfigError("invalid_argument: fully_shard takes offload or FSDP2's offload_policy, not both")
        offload = offload_policy
    if mesh is not None:
        if process_group is not None:
            raise ConfigError("invalid_argument: fully_shard takes process_group or FSDP2's mesh, not both")
        if getattr(mesh, "ndim", 1) != 1:
            raise NotImplementedByStrata(f"unimplemented: fully_shard over a {mesh.ndim}-D DeviceMesh (HSDP): strata "
                                         "shards over one process group; pass a 1-D mesh")
        process_group = mesh.get_group()
    if reshard_after_forward is not None and not isinstance(reshard_after_forward, bool):
        raise NotImplementedByStrata(f"unimplemented: reshard_after_forward={reshard_after_forward!r}: strata "
                                     "reshards to its shards or keeps the gathered chunk (True or False)")
    if ignored_params:
        raise NotImplementedByStrata("unimplemented: fully_shard ignored_params: strata manages every floating-point "
                                     "parameter under the module; freeze them (requires_grad_(False)) or keep them "
                                     "in a module outside the sharded model")
    if shard_placement_fn is not None:
        warnings.warn("strata.fully_shard: shard_placement_fn has no effect (strata's shards are slices of flat "
                      "chunks); the values and the training are the same", stacklevel=3)
    reduce_dtype = getattr(mp_policy, "reduce_dtype", None)
    if reduce_dtype is not None and reduce_dtype != getattr(mp_policy, "param_dtype", None):
        warnings.warn(f"strata.fully_shard: mp_policy.reduce_dtype {reduce_dtype} is not applied: the gradients are "
                      f"in param_dtype ({getattr(mp_policy, 'param_dtype', None)}) until they are added to fp32 "
                      "shards; the sum across ranks runs in fp32 on Gloo, in param_dtype on NCCL", stacklevel=3)
    return offload, process_group


# register_forward_pre_hook(with_kwargs=True) is torch 2's: 1.13's hooks see positional
# inputs only, so there keyword inputs are not cast.
_PRE_HOOK_KWARGS = "with_kwargs" in inspect.signature(torch.nn.Module.register_forward_pre_hook).parameters


def cast_hooks(unit: _units.Unit, mp_policy) -> None:
    """FSDP2's casts around this module's forward: floating-point inputs to param_dtype
    (cast_forward_inputs), floating-point outputs to output_dtype."""
    param_dtype = getattr(mp_policy, "param_dtype", None)
    output_dtype = getattr(mp_policy, "output_dtype", None)

    def to(dtype):
        return lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
    if param_dtype is not None and getattr(mp_policy, "cast_forward_inputs", True):
        if _PRE_HOOK_KWARGS:
            h = unit.module.register_forward_pre_hook(lambda m, args, kwargs: tree_map(to(param_dtype), (args, kwargs)),
                                                      with_kwargs=True)
        else:
            h = unit.module.register_forward_pre_hook(lambda m, args: tree_map(to(param_dtype), args))
        unit.module._forward_pre_hooks.move_to_end(h.id, last=False)  # before the model's own (as FSDP2's)
        unit.handles.append(h)
    if output_dtype is not None:
        unit.handles.append(unit.module.register_forward_hook(lambda m, args, out: tree_map(to(output_dtype), out)))


def add_methods(module: torch.nn.Module) -> None:
    """Gives a sharded module the FSDPModule methods its class has none of."""
    for name, method in _METHODS.items():
        if not hasattr(type(module), name):
            object.__setattr__(module, name, types.MethodType(method, module))
