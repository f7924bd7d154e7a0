"""strata.fully_shard: FSDP2's entry point on strata's C++ engine.

    for block in model.blocks:
        strata.fully_shard(block)            # one unit per call
    strata.fully_shard(model)                # the root: the embedding, head, ...
    opt = strata.optim.AdamW(model.parameters(), lr=3e-4)

Each call makes `module` one engine unit holding the parameters under it that no
earlier call took (as FSDP2). Building a strata.optim optimizer over the parameters
builds the engine; until then the module runs nothing (its forward is refused: a plain
torch.optim optimizer cannot step parameters the engine shards).

FSDP2's own arguments and FSDPModule methods: Note [FSDP2 arguments] in _fsdp2.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from . import _comm, _deferred, _fsdp2, _groups, _guard, _owners, _stand_ins, _state, _strata, _units
from ._gathered import GatheredParameters
from .errors import ConfigError, NotImplementedByStrata, UsageError

_DEVICES = ("none", "cpu", "nvme")


@dataclass(frozen=True)
class MixedPrecisionPolicy:
    """FSDP2's. param_dtype: the compute dtype (torch.bfloat16, torch.float16, or None for
    fp32); master weights and optimizer state stay fp32. float16 uses dynamic loss
    scaling, so the backward must go through the engine: `optimizer.engine.backward(loss)`.
    cast_forward_inputs: the module's floating-point inputs are cast to param_dtype.
    output_dtype: its floating-point outputs are cast to it. reduce_dtype: the gradient
    buffers are in param_dtype whatever it says (a warning when it differs)."""

    param_dtype: torch.dtype | None = None
    reduce_dtype: torch.dtype | None = None
    output_dtype: torch.dtype | None = None
    cast_forward_inputs: bool = True


@dataclass(frozen=True)
class OffloadPolicy:
    """Where the optimizer state and the parameter shards live: "none" (compute memory),
    "cpu" (host RAM) or "nvme" (files under nvme_path, written with O_DIRECT).
    optimizer_state_dtype: torch.bfloat16 stores the optimizer's state tensors (Adam's m
    and v, SGD's momentum, Adagrad's sum, Lion's m) in bf16, rounded to nearest even after
    each step; the fp32 master and the step's arithmetic stay fp32 (strata.optimizer_state_dtype).
    gradient_shard_dtype: torch.bfloat16 keeps each rank's reduced gradient shard in bf16
    (strata.gradient_shard_dtype). Together: 12 bytes a parameter offloaded, not 18 (AdamW
    with bf16 compute), wherever they live."""

    optimizer: str = "cpu"
    params: str = "none"
    nvme_path: str | None = None
    optimizer_state_dtype: torch.dtype = torch.float32
    gradient_shard_dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class CPUOffloadPolicy:
    """FSDP2's: parameter shards, gradients and the optimizer step on the host. strata
    steps host state with its fused CPU kernels; pin_memory is the engine's choice
    (pinned host memory wherever a GPU copies from it)."""

    pin_memory: bool = True


def _policy_settings(stage, mp_policy, offload) -> dict:
    if stage not in (1, 2, 3):
        raise ConfigError(f"invalid_argument: fully_shard stage must be 1, 2 or 3, got {stage!r}")
    dtype = getattr(mp_policy, "param_dtype", None) if mp_policy is not None else None
    if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"invalid_argument: mp_policy.param_dtype {dtype}: strata computes in float32, bfloat16 "
                          "or float16")
    _units.check_compute_dtype(dtype)
    state_dtype = grad_dtype = torch.float32
    if offload is None:
        opt_dev, par_dev, path = "none", "none", None
    elif isinstance(offload, OffloadPolicy):
        opt_dev, par_dev, path = offload.optimizer, offload.params, offload.nvme_path
        state_dtype, grad_dtype = offload.optimizer_state_dtype, offload.gradient_shard_dtype
    elif hasattr(offload, "offload_params"):  # torch.distributed.fsdp.CPUOffload
        opt_dev, par_dev, path = ("cpu", "cpu" if offload.offload_params else "none", None)
    elif type(offload).__name__ == "CPUOffloadPolicy":  # strata's, or torch's (FSDP2)
        opt_dev, par_dev, path = "cpu", "cpu", None
    elif type(offload).__name__ == "OffloadPolicy" and type(offload).__module__.startswith("torch."):
        opt_dev, par_dev, path = "none", "none", None  # FSDP2's default: no offload
    else:
        raise ConfigError(f"invalid_argument: offload must be a strata.OffloadPolicy or CPUOffloadPolicy, got "
                          f"{type(offload).__name__}")
    for what, dev in (("optimizer", opt_dev), ("params", par_dev)):
        if dev not in _DEVICES:
            raise ConfigError(f"invalid_argument: offload {what} device {dev!r}; expected one of {', '.join(_DEVICES)}")
    if par_dev != "none" and stage != 3:
        raise ConfigError("invalid_argument: offloading the parameters needs stage 3")
    if "nvme" in (opt_dev, par_dev) and not path:
        raise ConfigError("invalid_argument: offload to nvme needs OffloadPolicy(nvme_path=...)")
    for what, d in (("optimizer_state_dtype", state_dtype), ("gradient_shard_dtype", grad_dtype)):
        if d not in (torch.float32, torch.bfloat16):
            raise ConfigError(f"invalid_argument: OffloadPolicy.{what} {d}: expected torch.float32 or torch.bfloat16")
    return {"stage": stage, "dtype": dtype, "optimizer": opt_dev, "params": par_dev, "nvme_path": path,
            "optimizer_state_dtype": state_dtype, "gradient_shard_dtype": grad_dtype}


class _Group:
    """Modules fully_shard made units of, that one engine will drive."""

    def __init__(self, settings: dict, process_group):
        self.settings = settings
        self.process_group = process_group
        self.units: list[_units.Unit] = []  # call order: inner modules first
        self.root: torch.nn.Module | None = None
        self.engine = None

    def config(self, optimizer_block: dict) -> dict:
        s = self.settings
        # As FSDP2, every parameter is sharded: no small ones kept gathered (DeepSpeed's
        # stage3_param_persistence_threshold, 1e5 elements by default).
        zero = {"stage": s["stage"], "stage3_param_persistence_threshold": 0}
        path = {"nvme_path": s["nvme_path"]} if s["nvme_path"] else {}
        for key, device in (("offload_optimizer", s["optimizer"]), ("offload_param", s["params"])):
            if device != "none":
                zero[key] = {"device": device, **path}
        cfg = {"zero_optimization": zero, "optimizer": optimizer_block}
        if s["dtype"] == torch.bfloat16:
            cfg["bf16"] = {"enabled": True}
        elif s["dtype"] == torch.float16:
            cfg["fp16"] = {"enabled": True}
        if bf16 := {k: "bf16" for k in ("optimizer_state_dtype", "gradient_shard_dtype") if s[k] == torch.bfloat16}:
            cfg["strata"] = bf16
        return cfg


def fully_shard(module: torch.nn.Module, *, stage: int = 3, mp_policy=None, offload=None, process_group=None,
                mesh=None, reshard_after_forward=None, offload_policy=None, ignored_params=None,
                shard_placement_fn=None):
    """Makes `module` one unit of the engine its strata.optim optimizer will build.
    Apply it to submodules first, then to the root. Returns the module. mesh,
    reshard_after_forward, offload_policy, ignored_params and shard_placement_fn are
    FSDP2's (Note [FSDP2 arguments] in _fsdp2.py)."""
    offload, process_group = _fsdp2.arguments(offload, offload_policy, process_group, mesh, reshard_after_forward,
                                              ignored_params, shard_placement_fn, mp_policy)
    if isinstance(module, (list, tuple)):
        raise NotImplementedByStrata("unimplemented: fully_shard over a list of modules (FSDP2's grouping of "
                                     "several modules into one unit): apply it to each module, or to their parent")
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"invalid_argument: fully_shard takes a torch.nn.Module, got {type(module).__name__}")
    if getattr(module, "_strata_group", None) is not None:
        raise UsageError(f"failed_precondition: fully_shard was already applied to this {type(module).__name__}; "
                         "apply it once per module")
    if type(module).forward is torch.nn.Module.forward:
        # A unit's parameters are gathered by its forward hooks, and a container's forward
        # never runs: its children are called by whoever holds it (FSDP2 refuses it too).
        raise ConfigError(f"invalid_argument: fully_shard on a {type(module).__name__}, which has no forward of its "
                          "own: its parameters would never be gathered. Apply fully_shard to each module in it (or "
                          "to the module whose forward calls them)")
    settings = _policy_settings(stage, mp_policy, offload)
    _units.check_materialized(module)
    # Every check comes before the first change: a fully_shard that fails leaves the
    # module as it was given, to be fixed and sharded again.
    inners = {}
    for sub in module.modules():
        inner = getattr(sub, "_strata_group", None)
        if sub is module or inner is None:
            continue
        if inner.engine is not None:
            raise UsageError("failed_precondition: fully_shard on a module whose submodule's optimizer was already "
                             "built: apply fully_shard to every module before building the optimizer")
        if inner.settings != settings:
            diff = {k: (inner.settings[k], settings[k]) for k in settings if inner.settings[k] != settings[k]}
            raise ConfigError(f"invalid_argument: fully_shard settings differ from a submodule's ({diff}); one "
                              "engine runs them all with one stage, precision and offload")
        inners[id(inner)] = inner
    taken = {id(p) for inner in inners.values() for u in inner.units for p in u.params}
    # Not floating point: in no unit (Note [unit ownership], _units.py).
    own = [(n, p) for n, p in module.named_parameters() if id(p) not in taken and p.is_floating_point()]
    _units.admit_params([p for _, p in own if not isinstance(p, _deferred.DeferredParameter) and not p.is_meta])
    # strata.Init's parameters stay deferred until the optimizer builds the engine: until
    # then an op on one runs on its meta tensor or is refused by name (Note [deferred
    # parameters]), and an initialization applied after fully_shard is recorded. A meta
    # parameter becomes a deferred one for to_empty and the init to follow (Note
    # [meta-device models]); a meta buffer is refused when the engine is built.
    _deferred.defer_meta(module)
    own = [(n, p) for n, p in module.named_parameters() if id(p) not in taken and p.is_floating_point()]
    group = _Group(settings, process_group)
    for inner in inners.values():
        for u in inner.units:
            u.group = group
            u.module._strata_group = group
            group.units.append(u)
            for p in u.params:
                p._strata_group = group
    unit = _units.Unit(name=type(module).__name__, module=module, params=[p for _, p in own],
                       param_names=[n for n, _ in own])
    unit.group = group
    for p in unit.params:
        p._strata_group = group
    group.units.append(unit)
    group.root = module
    module._strata_group = group
    _hook(unit)
    _fsdp2.cast_hooks(unit, mp_policy)
    _fsdp2.add_methods(module)
    return module


def _hook(unit: _units.Unit) -> None:
    def pre(module, args):
        engine = unit.group.engine
        if engine is None:
            raise UsageError("failed_precondition: this module was sharded with strata.fully_shard, but no strata "
                             "optimizer was built over its parameters: build strata.optim.AdamW(model.parameters(), "
                             "...) (or Adam, SGD, Adagrad, Lion, Lamb) after the last fully_shard call. A torch.optim optimizer "
                             "cannot step parameters the engine shards")
        if module is unit.group.root:  # Note [a forward that raised] (access_driver.cpp)
            engine.abort_forward()
        engine.pre_forward(unit.index)

    def post(module, args, out):
        unit.group.engine.post_forward(unit.index, _units.output_tensors(out))

    unit.handles = _units.hook_module(unit.module, pre, post)


def build_engine(param_groups: list[dict], optimizer_block: dict):
    """The engine over the fully_shard group holding the parameters of `param_groups` (a
    strata.optim optimizer's, which strata.Init's stand-ins replace in place)."""
    params = [p for g in param_groups for p in g["params"]]
    groups = {id(g): g for p in params if (g := _group_of(p)) is not None}
    loose = [p for p in params if _group_of(p) is None]
    if loose or not groups:
        raise ConfigError("invalid_argument: strata.optim optimizers take parameters of modules sharded with "
                          "strata.fully_shard; apply it to the model (the root last) first"
                          + (f" ({len(loose)} parameter(s) are in no sharded module)" if loose else ""))
    if len(groups) > 1:
        raise ConfigError("invalid_argument: the parameters belong to separately sharded models; call fully_shard "
                          "on their common root so one engine runs them")
    group = next(iter(groups.values()))
    if group.engine is not None:
        raise UsageError("failed_precondition: a strata optimizer was already built over these modules")
    given = {id(p) for p in params}
    names = {id(p): n for n, p in group.root.named_parameters()}
    missing = [names[id(p)] for u in group.units for p in u.params if p.requires_grad and id(p) not in given]
    if missing:
        raise ConfigError(f"invalid_argument: the optimizer leaves out trainable parameters of the sharded model "
                          f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); pass model.parameters()")
    module_names = {id(m): n for n, m in group.root.named_modules()}
    for i, u in enumerate(group.units):
        u.index = i
        u.name = module_names.get(id(u.module)) or type(u.module).__name__
        u.param_names = [names.get(id(p), n) for p, n in zip(u.params, u.param_names)]
    # strata.Init's parameters get their stand-ins now (Note [deferred parameters]), in
    # the model, the units and the optimizer's groups; a failed build puts them back.
    swapped = _stand_ins.prepare(group.root)
    old_units = [(u, u.params, list(u.param_names)) for u in group.units]  # add_external appends to both
    old_groups = [g["params"] for g in param_groups]
    try:
        for u in group.units:
            u.params = _stand_ins.remap(u.params, swapped)
            for p in u.params:
                p._strata_group = group
        for g in param_groups:
            g["params"] = _stand_ins.remap(g["params"], swapped)
        _build(group, param_groups, optimizer_block)
    except BaseException:
        if group.engine is None:
            swapped.undo()
            for u, params, names in old_units:
                u.params, u.param_names = params, names
            for g, params in zip(param_groups, old_groups):
                g["params"] = params
        raise
    return group.engine


def _build(group: _Group, param_groups: list[dict], optimizer_block: dict) -> None:
    for u in group.units:
        _units.add_external(u, group.root)
    comm = _comm.communicator(group.process_group)
    _units.sync_from_rank0(comm, _units.model_tensors(group.root))
    unit_params = [p for u in group.units for p in u.params]
    _stand_ins.sync(comm, unit_params)
    config = group.config(optimizer_block)
    if group.settings["dtype"] is None:  # no mp_policy.param_dtype: the model's own (Note [the model's dtype])
        config = _units.with_model_dtype(config, _units.named_params(group.units))
    group.engine = _strata.Engine(_units.engine_units(group.units), comm, json.dumps(config),
                                  param_groups=_groups.engine_groups(param_groups),
                                  init=_stand_ins.initializer(unit_params))
    _stand_ins.forget(unit_params)
    group.engine.set_buffer_source(_units.buffer_source(group.root))
    # Never closed, as below; released when the process exits (_owners.py).
    _owners.register(group.engine, comm, (p for u in group.units for p in u.params))
    _units.cast_buffers(group.root, _units.compute_dtype(config))
    if group.engine.stage == 3:
        _guard.watch(group.units)  # for the process's life: fully_shard engines are never closed


# What a model wrapped by strata.initialize offers instead (FSDP2 habits meet it first).
_NOT_FULLY_SHARD = ("; a model wrapped by strata.initialize: engine.consolidated_state_dict() (every parameter's fp32 "
                    "values, every rank), engine.save_16bit_model(dir) (the whole state_dict, written by rank 0), or "
                    "engine.save_checkpoint(dir) and engine.load_checkpoint(dir)")


def get_model_state_dict(model: torch.nn.Module) -> dict:
    """The whole state_dict of a model sharded with fully_shard (its root), on every rank
    (every rank must call it: the values are gathered): each parameter's fp32 master
    under each of its names, and the persistent buffers. As FSDP2's
    get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))."""
    group = getattr(model, "_strata_group", None)
    if group is None or group.root is not model:
        raise ConfigError("invalid_argument: get_model_state_dict takes the root module fully_shard was applied to"
                          + _NOT_FULLY_SHARD)
    if group.engine is None:
        raise UsageError("failed_precondition: build the strata.optim optimizer first: the engine holds the values")
    values = dict(zip(group.engine.param_names, group.engine.consolidated_params()))
    return _state.full_state_dict(model, values)


def set_model_state_dict(model: torch.nn.Module, state_dict: dict, *, strict: bool = True):
    """Loads a whole state_dict (the unsharded model's: each parameter under any of its
    names, the persistent buffers) into a model sharded with fully_shard (its root) whose
    strata.optim optimizer was built, as FSDP2's set_model_state_dict with a full state
    dict. Every rank calls it with the same values. A unit at a time: its parameters are
    gathered, set and taken into the engine's masters (GatheredParameters), so the model
    is never whole in memory beyond `state_dict` itself; the optimizer state is kept.
    strict: missing or unexpected keys are refused, as load_state_dict. Returns
    (missing_keys, unexpected_keys)."""
    group = getattr(model, "_strata_group", None)
    if group is None or group.root is not model:
        raise ConfigError("invalid_argument: set_model_state_dict takes the root module fully_shard was applied to"
                          + _NOT_FULLY_SHARD)
    if group.engine is None:
        raise UsageError("failed_precondition: build the strata.optim optimizer first (or, before it, load with "
                         "model.load_state_dict: the engine starts from those values)")
    names: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    buffers: dict[str, torch.Tensor] = {}
    for prefix, mod in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for n, p in mod._parameters.items():
            if p is not None:
                names.setdefault(id(p), []).append(dot + n)
                params[id(p)] = p
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                buffers[dot + n] = b
    expected = {n for ns in names.values() for n in ns} | set(buffers)
    # A tied parameter is loaded from any one of its names; the others are not missing.
    missing = sorted(n for i, ns in names.items() if not any(k in state_dict for k in ns) for n in ns)
    missing += sorted(n for n in buffers if n not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    if strict and (missing or unexpected):
        raise ConfigError(f"invalid_argument: set_model_state_dict: missing keys {missing[:5]}, unexpected keys "
                          f"{unexpected[:5]} (strict=False loads what matches)")
    source = {i: state_dict[next(k for k in ns if k in state_dict)] for i, ns in names.items()
              if any(k in state_dict for k in ns)}
    for i, value in source.items():
        if tuple(value.shape) != tuple(params[i].shape):
            raise ConfigError(f"invalid_argument: set_model_state_dict: {names[i][0]} has shape "
                              f"{tuple(value.shape)} in the state dict, {tuple(params[i].shape)} in the model")
    with torch.no_grad():
        for n, b in buffers.items():
            if n in state_dict:
                b.copy_(state_dict[n])
        held = {id(p) for u in group.units for p in u.params}
        for i in source.keys() - held:  # not floating point: the module's own
            params[i].copy_(source[i])
        for u in group.units:
            mine = [p for p in u.params if id(p) in source]
            with GatheredParameters(mine, modifier_rank=None):
                for p in mine:
                    p.copy_(source[id(p)])
    return missing, unexpected


def get_optimizer_state_dict(model: torch.nn.Module, optimizer) -> dict:
    """optimizer.state_dict() keyed by the parameters' names in `model` (a tied one by its
    first), as FSDP2's get_optimizer_state_dict(model, optim, options=StateDictOptions(
    full_state_dict=True)). Every rank calls it (Note [optimizer state dicts])."""
    names = _names_in(model, optimizer)
    sd = optimizer.state_dict()
    return {"state": {names[i]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]}


def set_optimizer_state_dict(model: torch.nn.Module, optimizer, optim_state_dict: dict) -> None:
    """Loads get_optimizer_state_dict's form (FSDP2's full optimizer state dict) into
    `optimizer`; every rank calls it with the same dict."""
    names = _names_in(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    saved = optim_state_dict["param_groups"]
    unknown = sorted(({n for g in saved for n in g["params"]} | set(optim_state_dict["state"])) - index.keys())
    if unknown:
        raise ConfigError(f"invalid_argument: set_optimizer_state_dict: {', '.join(unknown[:5])} "
                          f"{'are' if len(unknown) > 1 else 'is'} not a parameter of the optimizer's in this model")
    # By name: each saved group must hold the same parameters as the optimizer's, in any
    # order; the state goes to the parameter of that name.
    groups, start = [], 0
    for i, g in enumerate(optimizer.param_groups):
        mine = list(range(start, start + len(g["params"])))
        start += len(mine)
        if i < len(saved) and set(saved[i]["params"]) != {names[k] for k in mine}:
            raise ConfigError(f"invalid_argument: set_optimizer_state_dict: parameter group {i} holds other "
                              "parameters in the state dict than in the optimizer")
        groups.append(mine)
    optimizer.load_state_dict({
        "state": {index[n]: s for n, s in optim_state_dict["state"].items()},
        "param_groups": [{**g, "params": mine} for g, mine in zip(saved, groups)] + saved[len(groups):]})


def _names_in(model: torch.nn.Module, optimizer) -> list[str]:
    """The name in `model` of each of the optimizer's parameters, in its numbering."""
    names = {}
    for n, p in model.named_parameters():
        names.setdefault(id(p), n)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ConfigError(f"invalid_argument: {len(missing)} of the optimizer's parameters are not in this model; "
                          "pass the model the optimizer trains")
    return [names[id(p)] for p in params]


def _group_of(p):
    return getattr(p, "_strata_group", None)
