"""Note [released parameters]: a parameter used outside its unit's forward at stage 3.

At stage 3 a parameter holds values only while a unit that owns it is between
pre_forward and post_forward (and again in its backward); otherwise its storage is
released (no bytes, a null storage pointer; its shape and its offset in the chunk kept).
Code that reads it anywhere else, typically a tied LM head written as
`x @ self.wte.weight.t()` in the parent's forward, would hand ATen a tensor with no
memory: some ops raise an opaque "setStorage ... out of bounds" error, others (w.sum(),
w * 2) read memory near address 0 and kill the process.

While an engine at stage 3 exists, a torch-function mode looks at the parameters every
torch call receives, before the op runs. The check is a type test per argument;
gathered parameters pass through. A released one used while a forward of its engine is
open (a module that reads a child's weight, a tied head in the root's forward) is
adopted: the unit running takes it and gathers it, now and at its every later access,
as DeepSpeed gathers a parameter touched in a forward (Note [adopted parameters] in
src/engine/access_driver.h; the root is always a unit, so a whole forward is covered).
Anywhere else (between steps, in a backward) the mode raises UsageError naming the
parameter, its owner and the ways to read it there.

register_external_parameter(module, param) adds `param` to `module`'s unit ahead of the
first step, whose on-demand gathers then fetch it with the unit's own (the engine lets
a parameter belong to several units); set_leaf_modules adds a module's whole subtree
(Note [unit ownership], _units.py).
"""
from __future__ import annotations

import weakref

import torch
from torch.overrides import TorchFunctionMode

from . import _owners
from .errors import ConfigError, UsageError


def register_external_parameter(module: torch.nn.Module, parameter: torch.nn.Parameter) -> None:
    """Declares that `module`'s forward uses `parameter`, which another module owns (as
    deepspeed.zero.register_external_parameter). Call it before strata.initialize, or
    before building the strata.optim optimizer of a fully_shard model."""
    if not isinstance(module, torch.nn.Module) or not isinstance(parameter, torch.nn.Parameter):
        raise ConfigError("invalid_argument: register_external_parameter(module, parameter) takes a torch.nn.Module "
                         f"and a torch.nn.Parameter, got {type(module).__name__} and {type(parameter).__name__}")
    external = module.__dict__.setdefault("_strata_external_params", [])
    if all(p is not parameter for p in external):
        external.append(parameter)


def external_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return module.__dict__.get("_strata_external_params", [])


# Calls that read a tensor's metadata, never its values: attribute getters and setters
# (p.requires_grad, p.shape, p.grad, ...) and these methods.
_METADATA = frozenset({"__get__", "__set__", "numel", "nelement", "size", "dim", "ndimension", "stride",
                       "storage_offset", "is_contiguous", "element_size", "data_ptr", "storage", "untyped_storage",
                       "_storage", "requires_grad_", "is_floating_point", "is_complex", "get_device", "__hash__",
                       "__len__", "type", "_is_view"})


# Attribute getters that make a view of the values: unlike the other getters, each builds a
# tensor over the released storage (ATen's opaque "setStorage ... out of bounds" error).
_VIEW_ATTRIBUTES = frozenset({"T", "mT", "H", "mH", "real", "imag"})


class _Guard(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        # id(param) -> (the parameter, weakly; its name; its owning unit). An engine that is
        # dropped without close() leaves its entries; the weak reference tells a new
        # parameter that reuses a freed one's id from the freed one.
        self.owners: dict[int, tuple[weakref.ref, str, str]] = {}
        # _storage_key -> the watched parameters over that storage (a chunk's), weakly.
        self.storages: dict[int, list[weakref.ref]] = {}
        self.engines = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _METADATA and (name != "__get__" or getattr(func.__self__, "__name__", "") not in _VIEW_ATTRIBUTES):
            return func(*args, **kwargs)
        for a in args:
            self._check(a)
            if isinstance(a, (list, tuple)):
                for b in a:
                    self._check(b)
        for a in kwargs.values():
            self._check(a)
        return func(*args, **kwargs)

    def _check(self, a) -> None:
        # Released: the storage's base pointer is null. The parameter's own data_ptr is that
        # plus its offset into the chunk, so only the first parameter of a chunk reads 0.
        # A plain tensor over such storage (p.data, what copy.deepcopy(model) clones) is
        # refused too: no tensor ATen made has a null base pointer with elements (meta
        # and sparse ones excepted, and subclasses that have no storage to ask).
        if not isinstance(a, torch.Tensor):
            return
        try:
            if (a.is_meta or a.layout != torch.strided or a.numel() == 0
                    or a.data_ptr() != a.storage_offset() * a.element_size()):
                return
        except RuntimeError:
            return
        if not isinstance(a, torch.nn.Parameter):
            p = self._parameter_under(a)
            if p is not None and (engine := _owners.owner_of(p)) is not None and engine.engine.adopt_param(p):
                return  # a view of a parameter, used inside a forward: adopted as the parameter is
            raise UsageError(
                "failed_precondition: a tensor over the storage of a stage-3 parameter, used outside the forward "
                "of the model, where it holds no values (p.data of a sharded parameter, or a view of one kept from "
                "a forward; copy.deepcopy(model) clones it): read parameters between steps inside "
                "strata.GatheredParameters([...]) on every rank (as deepspeed.zero.GatheredParameters), or take "
                "engine.consolidated_state_dict() (for an EMA model: copy the model before strata.initialize, and "
                "load that into the copy)")
        owner = self.owners.get(id(a))
        if owner is None or owner[0]() is not a:
            return  # not a parameter of a strata engine
        engine = _owners.owner_of(a)
        if engine is not None and engine.engine.adopt_param(a):
            return  # used inside a forward: the unit running now gathers it (Note [adopted parameters])
        _, name, unit = owner
        raise UsageError(
            f"failed_precondition: parameter '{name}' was used outside the forward of the model at stage 3 (its "
            f"module is '{unit}'), where it holds no values (they live in shards); inside a forward it is gathered "
            "where it is used. To read or edit it between steps (an EMA, weight clipping), do so inside "
            "strata.GatheredParameters([...]) on every rank (as deepspeed.zero.GatheredParameters); to save the "
            "trained values (model.state_dict()), use engine.consolidated_state_dict() on every rank (fully_shard: "
            "strata.get_model_state_dict(model)) or save_checkpoint")

    def _parameter_under(self, a: torch.Tensor):
        """The watched parameter whose elements the released tensor `a` starts in (a view
        of it, or of its .data), or None. The parameters of a chunk share its storage."""
        offset = a.storage_offset()
        for ref in self.storages.get(_storage_key(a), ()):
            p = ref()
            if p is not None and p.storage_offset() <= offset < p.storage_offset() + p.numel():
                return p
        return None


def _storage_key(t: torch.Tensor) -> int:
    """The identity of t's storage (its StorageImpl), which release and gather keep."""
    return t.untyped_storage()._cdata if hasattr(t, "untyped_storage") else t.storage()._cdata


_GUARD = _Guard()


# LibTorch 1.13 indexes a tensor with an int or a slice without asking the torch-function
# mode (only tuples and tensors reach it), so `self.wpe.weight[:t]` would pass the guard.
# While the guard is on, Parameter's own __getitem__ checks first (parameters only: plain
# tensors index as before).
def _checked_getitem(self, index):
    _GUARD._check(self)
    return torch.Tensor.__getitem__(self, index)


def _enter() -> None:
    _GUARD.__enter__()
    torch.nn.Parameter.__getitem__ = _checked_getitem


def _exit() -> None:
    del torch.nn.Parameter.__getitem__
    _GUARD.__exit__(None, None, None)


def watch(units) -> list[tuple[int, int]]:
    """Starts checking the parameters of `units` (engine order); returns the keys for
    unwatch(). The mode is entered with the first watched engine."""
    keys = []
    for u in units:
        for p, n in zip(u.params, u.param_names):
            known = _GUARD.owners.get(id(p))
            if known is None or known[0]() is not p:
                _GUARD.owners[id(p)] = (weakref.ref(p), n, u.name)
                storage = _storage_key(p)
                _GUARD.storages.setdefault(storage, []).append(weakref.ref(p))
                keys.append((id(p), storage))
    if _GUARD.engines == 0:
        _enter()
    _GUARD.engines += 1
    return keys


def unwatch(keys: list[tuple[int, int]]) -> None:
    for k, storage in keys:
        _GUARD.owners.pop(k, None)
        _GUARD.storages.pop(storage, None)
    _GUARD.engines -= 1
    if _GUARD.engines == 0:
        _exit()
