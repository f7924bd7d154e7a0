"""The plain parameters that stand in for strata.Init's deferred ones once a model is
handed to an engine (Note [deferred parameters] in _deferred.py): a shape and no
storage, which the C++ engine fills chunk by chunk through initializer(); and
materialize(), which gives a deferred model its values in host memory instead."""
from __future__ import annotations

import zlib

import torch
from torch.utils._pytree import tree_flatten

from ._deferred import DeferredParameter, _GeneratorState, _Record, is_blank, no_bytes, replay, undefined_message
from .errors import ConfigError, UsageError

# Plain parameters that stand in for deferred ones (no bytes), by id: the parameter (which
# keeps the id alive) and its record.
_pending: dict[int, tuple[torch.nn.Parameter, _Record]] = {}


class Swapped(dict):
    """{id(deferred): what replaced it}; undo() puts the deferred parameters back."""

    def __init__(self):
        super().__init__()
        self.places: list[tuple[torch.nn.Module, str, DeferredParameter]] = []
        self.external: list[tuple[list, int, DeferredParameter]] = []  # register_external_parameter's lists

    def undo(self) -> None:
        for mod, name, old in self.places:
            new = mod._parameters[name]
            _pending.pop(id(new), None)
            old.__dict__.pop("_strata_replaced", None)
            mod._parameters[name] = old
            _refresh_caches(mod)
        for lst, i, old in self.external:
            lst[i] = old


def _refresh_caches(mod: torch.nn.Module) -> None:
    """Modules that keep their own list of their parameters (torch's RNNs: _flat_weights)
    are told, as nn.Module._apply tells them after it replaces parameters."""
    init_flat = getattr(mod, "_init_flat_weights", None)  # torch 2
    if callable(init_flat):
        init_flat()
    elif hasattr(mod, "_flat_weights_names"):  # torch 1.13's RNNBase._apply does this inline
        mod._flat_weights = [getattr(mod, n) if hasattr(mod, n) else None for n in mod._flat_weights_names]


def refuse_meta(module: torch.nn.Module) -> None:
    """Refuses a plain meta parameter or buffer under `module` (strata.Init's parameters
    are deferred ones; its buffers hold values, unless computed from a parameter's)."""
    for mod_name, mod in module.named_modules():
        for name, p in mod._parameters.items():
            if p is not None and p.is_meta and not isinstance(p, DeferredParameter):
                where = f"{mod_name}.{name}" if mod_name else name
                raise ConfigError(f"invalid_argument: parameter {where} is on the meta device and has no values; "
                                  "build the model under strata.Init() (the engine makes its values when it is "
                                  "built), apply strata.fully_shard before to_empty and the init (FSDP2's way), "
                                  "or give it values first (model.to_empty(device='cpu') and an init)")
        for name, b in mod._buffers.items():
            if b is not None and b.is_meta:
                where = f"{mod_name}.{name}" if mod_name else name
                raise ConfigError(f"invalid_argument: buffer {where} is on the meta device and has no values: it was "
                                  "computed from a parameter built under strata.Init (which holds no values until "
                                  "the engine is built) or built on the meta device; compute it in forward, set it "
                                  "after the engine is built (inside strata.GatheredParameters for a parameter's "
                                  "values), or build this module outside strata.Init; built on the meta device "
                                  "for fully_shard (FSDP2's way): model.to_empty(device='cpu') before the "
                                  "optimizer, and set it in the init")
            if b is not None and is_blank(b):
                where = f"{mod_name}.{name}" if mod_name else name
                raise ConfigError(f"invalid_argument: buffer {where} has no values: model.to_empty() emptied it and "
                                  "nothing set it since; set it in the initialization after to_empty (as the "
                                  "parameters), or it would be uninitialized memory")


def _replace(module: torch.nn.Module, make) -> Swapped:
    """Swaps every deferred parameter under `module` for make(deferred), one per deferred
    parameter however many modules hold it. Refuses a plain meta parameter or buffer."""
    refuse_meta(module)
    swapped = Swapped()
    for _, mod in module.named_modules(remove_duplicate=False):
        for name, p in list(mod._parameters.items()):
            if isinstance(p, DeferredParameter):
                new = p.__dict__.get("_strata_replaced")
                if new is None:
                    new = make(p)
                    p._strata_replaced = new
                mod._parameters[name] = new
                swapped[id(p)] = new
                swapped.places.append((mod, name, p))
        _refresh_caches(mod)
    # strata.register_external_parameter(module, p) before the swap names the deferred p.
    for mod in module.modules():
        lst = mod.__dict__.get("_strata_external_params", [])
        for i, p in enumerate(lst):
            new = p.__dict__.get("_strata_replaced") if isinstance(p, DeferredParameter) else None
            if new is not None:
                lst[i] = new
                swapped.external.append((lst, i, p))
    return swapped


def prepare(module: torch.nn.Module) -> Swapped:
    """Gives `module`'s modules plain parameters without bytes for their deferred ones
    (values made by initializer(), below). Returns {id(deferred): its stand-in}: lists
    the caller holds (an optimizer's groups) are mapped with it; undo() after a failed
    build gives the model its deferred parameters back (a stand-in has no storage: any
    operation on it outside the engine would read freed memory). A parameter with no
    values to make (Note [meta-device models]) is refused before anything is swapped."""
    for name, p in module.named_parameters():
        if isinstance(p, DeferredParameter) and not p._strata_record.defined:
            raise UsageError(undefined_message(p._strata_record, name))
    def stand_in(d: DeferredParameter) -> torch.nn.Parameter:
        rec = d._strata_record
        p = torch.nn.Parameter(no_bytes(rec.shape, rec.dtype), requires_grad=d.requires_grad)
        _pending[id(p)] = (p, rec)
        return p
    return _replace(module, stand_in)


def materialize(module: torch.nn.Module) -> torch.nn.Module:
    """Gives every deferred parameter of `module` its values now, in host memory (a model
    that fits, or one to check against); a tied parameter stays tied. Returns module."""
    def real(d: DeferredParameter) -> torch.nn.Parameter:
        return torch.nn.Parameter(replay(d._strata_record), requires_grad=d.requires_grad)
    _replace(module, real)
    return module


def remap(params, swapped: dict[int, torch.nn.Parameter]):
    return [swapped.get(id(p), p) for p in params]


def is_pending(p: torch.Tensor) -> bool:
    entry = _pending.get(id(p))
    return entry is not None and entry[0] is p


def initializer(params):
    """The engine's init(param, out) for the stand-ins among `params`, or None."""
    if not any(is_pending(p) for p in params):
        return None

    def init(param, out):
        entry = _pending.get(id(param))
        if entry is None or entry[0] is not param:
            raise UsageError("failed_precondition: the engine asked for the values of a parameter that holds none "
                             "and was not built under strata.Init")
        out.copy_(replay(entry[1]))
    return init


def forget(params) -> None:
    """The engine holds the values of `params` now: their records go."""
    for p in params:
        if is_pending(p):
            del _pending[id(p)]


def sync(comm, params) -> None:
    """Every rank replays rank 0's records: the same model code at every rank records
    the same operations, and rank 0's kept tensors and generator states are broadcast
    (ranks that did not seed alike still start from rank 0's values, as with an eager
    model). Ranks whose records differ in shape are refused, on every rank."""
    if comm.world == 1:
        return
    records = list({id(r): r for r in (_pending[id(p)][1] for p in params if is_pending(p))}.values())
    layout = repr([(r.shape, str(r.dtype), r.base is None, r.defined,
                    [(len(o.chain), getattr(o.func, "__name__", None), o.rng is None,
                      [tuple(x.shape) for x in tree_flatten((o.args, o.kwargs))[0] if isinstance(x, torch.Tensor)])
                     for o in r.ops]) for r in records])
    mine = torch.tensor([zlib.crc32(layout.encode())], dtype=torch.int64)
    for root in range(comm.world):
        theirs = mine.clone()
        comm.broadcast(theirs, root)
        if theirs.item() != mine.item():
            raise UsageError(f"failed_precondition: ranks {root} and {comm.rank} built different models under "
                             "strata.Init (the parameters or their initialization differ); build the same model "
                             "at every rank")
    with torch.no_grad():
        for r in records:
            tensors = ([r.base] if r.base is not None else []) + [o.rng for o in r.ops if o.rng is not None]
            tensors += [x for o in r.ops for x in tree_flatten((o.args, o.kwargs))[0] if isinstance(x, torch.Tensor)]
            tensors += [x.state for o in r.ops for x in tree_flatten((o.args, o.kwargs))[0]
                        if isinstance(x, _GeneratorState)]
            for t in tensors:
                if t.is_contiguous():
                    comm.broadcast(t, 0)
                else:
                    flat = t.contiguous()
                    comm.broadcast(flat, 0)
                    t.copy_(flat)
