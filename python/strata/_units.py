"""Modules as engine units: the Python front end of Note [front ends] (engine.h).

A unit is a module plus the parameters it computes with. A forward pre-hook calls the
engine's pre_forward (stage 3 gathers the unit's chunks), a forward hook hands every
tensor the module returned (a tensor, or any nesting of tuples, lists, dicts and other
objects: output_tensors) to post_forward, which hooks them so that backward gathers the
chunks again.
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field

import torch

from . import _autocast, _deferred, _guard, _stand_ins
from .errors import ConfigError


@dataclass
class Unit:
    name: str
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    param_names: list[str]
    handles: list = field(default_factory=list)
    index: int = -1      # the engine's unit id, once the engine exists
    group: object = None  # fully_shard: the group whose engine runs it


def named_params(units: list[Unit]):
    """(name, parameter) of every unit's parameters, in unit order."""
    return ((name, p) for u in units for name, p in zip(u.param_names, u.params))


def output_tensors(out) -> list[torch.Tensor]:
    """Every tensor in a module's output, in order: in tuples, lists and dicts, and in the
    attributes of any other object (a dataclass, a custom output class), at any depth.
    One that were missed would have no hook: at stage 3 its backward would then read the
    unit's released parameters (SIGSEGV). Modules and classes are not looked into."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(x):
        if isinstance(x, torch.Tensor):
            found.append(x)
            return
        if x is None or isinstance(x, (str, bytes, int, float, bool, type, torch.nn.Module)) or id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, (tuple, list, set, frozenset)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)
        elif dataclasses.is_dataclass(x):  # also one with __slots__
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name, None))
        elif hasattr(x, "__dict__"):
            for y in vars(x).values():
                walk(y)

    walk(out)
    return found


# Note [unit ownership]: a unit gathers the parameters its module's forward computes with.
# Usually those are the module's own (recurse=False), but two kinds of module break that:
# - containers that are never called: a ParameterList or ParameterDict holds parameters
#   its parent's forward indexes and uses; they belong to the nearest ancestor that is
#   not such a container;
# - leaf modules, whose forward reads their children's parameters without calling the
#   children: nn.MultiheadAttention passes out_proj.weight to F.multi_head_attention_forward,
#   and the transformer layers' inference fast path passes every sublayer's weights to one
#   fused op. A leaf's unit holds its whole subtree (as DeepSpeed's z3 leaf modules);
#   strata.set_leaf_modules marks a user's own.
# The children stay units of their own too: a parameter may belong to several units.
# A parameter that is not floating point (a quantized model's integer codes, which
# cannot have a gradient) is in no unit: the module keeps it whole on every rank, like a
# buffer, and checkpoints save it with the buffers (buffer_source).
_CONTAINERS = (torch.nn.ParameterList, torch.nn.ParameterDict)
LEAF_CLASSES = (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)


def set_leaf_modules(model: torch.nn.Module, classes) -> list[torch.nn.Module]:
    """Marks every submodule of `model` (the root included) that is an instance of one of
    `classes` as a leaf: its forward gathers the parameters of its whole subtree (as
    deepspeed.utils.set_z3_leaf_modules). For modules whose forward reads a child's
    parameters without calling the child, and for blocks whose inside takes other paths
    on other ranks at stage 3 (a mixture of experts calling only the experts its rank's
    tokens chose): the modules called inside a leaf are gathered with it, not on their
    own. Call it before strata.initialize; returns the modules marked."""
    classes = tuple(classes) if isinstance(classes, (list, tuple)) else (classes,)
    if not classes or not all(isinstance(c, type) and issubclass(c, torch.nn.Module) for c in classes):
        raise ConfigError("invalid_argument: set_leaf_modules(model, classes) takes torch.nn.Module subclasses, got "
                          f"{classes!r}")
    marked = [m for m in model.modules() if isinstance(m, classes)]
    if not marked:
        raise ConfigError(f"invalid_argument: set_leaf_modules: the model has no module of type "
                          f"{', '.join(c.__name__ for c in classes)}")
    for m in marked:
        m.__dict__["_strata_leaf"] = True
    return marked


def is_leaf(module: torch.nn.Module) -> bool:
    return isinstance(module, LEAF_CLASSES) or module.__dict__.get("_strata_leaf", False)


def engine_units(units: list[Unit]) -> list[tuple]:
    """What the engine takes for each unit: its name, parameters, their names, and whether
    it is a leaf (its calls of the units inside it are gathered with it: Note [covered
    units], src/engine/access_driver.h)."""
    return [(u.name, u.params, u.param_names, is_leaf(u.module)) for u in units]


def units_of(model: torch.nn.Module) -> list[Unit]:
    """Every module whose forward computes with parameters (Note [unit ownership]) or
    that was given external ones, and the root, with or without parameters, in
    named_modules() order; a parameter two modules own (a tied weight) is in both."""
    modules = dict(model.named_modules())
    uses: dict[str, list[torch.nn.Parameter]] = {name: [] for name in modules}
    for name, module in modules.items():
        if is_leaf(module):
            uses[name] += list(module.parameters())
            continue
        owner = name
        while owner and isinstance(modules[owner], _CONTAINERS):
            owner = owner.rpartition(".")[0]
        uses[owner] += list(module.parameters(recurse=False))
    names = {id(p): n for n, p in model.named_parameters()}  # a tied parameter: its first owner's name
    units = []
    for name, module in modules.items():
        if isinstance(module, _CONTAINERS) and name:
            continue
        params = list({id(p): p for p in uses[name] if p.is_floating_point()}.values())
        unit = Unit(name=name or type(model).__name__, module=module, params=params,
                    param_names=[names[id(p)] for p in params])
        add_external(unit, model)
        # The root is a unit even when it owns no parameters: the forward open around the
        # whole model's, to adopt what the root's own code computes with (a tied head as
        # F.linear(x, self.wte.weight); Note [adopted parameters], src/engine/access_driver.h).
        if unit.params or module is model:
            units.append(unit)
    return units


def add_external(unit: Unit, model: torch.nn.Module) -> None:
    """Adds the parameters registered with register_external_parameter on the unit's
    module (Note [released parameters], _guard.py)."""
    external = _guard.external_parameters(unit.module)
    if not external:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    for p in external:
        if id(p) not in names:
            raise ConfigError(f"invalid_argument: a parameter registered with register_external_parameter on "
                              f"'{unit.name}' is not a parameter of the model")
        if all(q is not p for q in unit.params):
            unit.params.append(p)
            unit.param_names.append(names[id(p)])


def check_materialized(module: torch.nn.Module | None = None, params=()) -> None:
    """A lazy module's parameters (torch.nn.LazyLinear's, LazyConv2d's) have no shape until
    its first forward, and any op on one fails deep inside with torch's message. Checked
    before anything is changed, so the model is left as it was given. `module`'s
    parameters are named with their module's class; `params` (an optimizer's) by index."""
    lazy = torch.nn.parameter.UninitializedParameter
    found = [f"parameter {prefix}.{n} of a {type(m).__name__}".replace(" .", " ") for prefix, m in
             (module.named_modules() if module is not None else ()) for n, p in m._parameters.items()
             if isinstance(p, lazy)]
    found += [f"the optimizer's parameter #{i}, of a lazy module," for i, p in enumerate(params) if isinstance(p, lazy)]
    if found:
        raise ConfigError(f"invalid_argument: {found[0]} has no shape yet (a lazy module makes its parameters in its "
                          "first forward): run the model once on a batch (under torch.no_grad()), "
                          "then shard it")


def admit_params(params) -> None:
    """What the engine needs of every parameter it shards: on the CPU (this build), and
    contiguous. A parameter laid out otherwise (a channels_last convolution's weight, a
    transposed tensor) gets a contiguous copy of its values as its data, as DeepSpeed's
    and FSDP's flat parameters make them: the chunks hold each parameter's elements in
    order. The Parameter object stays the one optimizers and hooks hold."""
    for p in params:
        if isinstance(p, _deferred.DeferredParameter):
            raise ConfigError(f"invalid_argument: parameter {p._strata_record.where} was built under strata.Init and "
                              "holds no values: strata.initialize and strata.fully_shard make them; elsewhere "
                              "(ShardedOptimizer, a plain torch loop) call strata.materialize(model) first")
        if p.is_meta:
            raise ConfigError("invalid_argument: a parameter is on the meta device and has no values; build the "
                              "model under strata.Init() (the engine makes its values when it is built)")
        if p.device.type != "cpu":
            raise ConfigError(f"invalid_argument: a parameter is on {p.device}; this strata build runs on CPU "
                              "LibTorch only (move the model to the CPU, or use a CUDA build of strata)")
        if not p.is_contiguous():
            with torch.no_grad():
                p.data = p.data.contiguous()


def hook_module(module: torch.nn.Module, pre, post) -> list:
    """Registers the engine's forward pre-hook and forward hook on a unit's module; returns
    their handles. The pre-hook goes first among the module's pre-hooks: hooks registered
    before sharding may read the parameters (torch.nn.utils.weight_norm and
    spectral_norm compute the weight from them, torch.nn.utils.prune applies its mask),
    and at stage 3 they hold values only once the engine has gathered them. The forward
    hook is the last one when registered (LibTorch 1.13 has no prepend flag; the hook
    dicts are ordered)."""
    first = module.register_forward_pre_hook(pre)
    module._forward_pre_hooks.move_to_end(first.id, last=False)
    return [first, module.register_forward_hook(post)]


def attach(engine, units: list[Unit], root: torch.nn.Module) -> None:
    """Hooks each unit's module to the engine; detach() removes the hooks. The root's
    unit (when the root owns parameters) first ends what a forward that raised left open
    (Note [a forward that raised], access_driver.cpp)."""
    for index, unit in enumerate(units):
        def pre(module, args, _u=index, _root=unit.module is root):
            if _root:
                engine.abort_forward()
            engine.pre_forward(_u)

        def post(module, args, out, _u=index):
            engine.post_forward(_u, output_tensors(out))

        unit.handles = hook_module(unit.module, pre, post)


def detach(units: list[Unit]) -> None:
    for unit in units:
        for h in unit.handles:
            h.remove()
        unit.handles = []


def compute_dtype(cfg: dict):
    """The engine's compute dtype for a config: what the parameters become."""
    def enabled(block):
        b = cfg.get(block)
        return isinstance(b, dict) and b.get("enabled") is True
    return torch.bfloat16 if enabled("bf16") else torch.float16 if enabled("fp16") else torch.float32


def with_model_dtype(cfg: dict, named_params) -> dict:
    """The config with the compute dtype the model's parameters set where it sets none.

    Note [the model's dtype]: with bf16 or fp16 enabled every parameter is cast to it,
    as DeepSpeed's module.bfloat16()/half(). Otherwise the model keeps its own dtype, as
    under DeepSpeed (which casts only when a precision section says so), FSDP2 with no
    param_dtype, and a plain torch loop: a model built in bf16 computes in bf16 over fp32
    masters. Before, the engine made such a model's parameters fp32 without a word, and a
    forward that fed them bf16 failed in ATen ("mat1 and mat2 must have the same dtype").
    The chunks hold one compute dtype, so a model whose parameters have several dtypes is
    refused by name unless a precision section decides."""
    if compute_dtype(cfg) != torch.float32:
        return cfg
    first: dict = {}  # dtype -> the first parameter of it
    for name, p in named_params:
        first.setdefault(p.dtype, name)
    if len(first) > 1:
        seen = ", ".join(f"'{name}' is {str(t).removeprefix('torch.')}" for t, name in first.items())
        raise ConfigError(f"invalid_argument: the model's parameters have more than one dtype ({seen}) and the "
                          "config enables neither bf16 nor fp16 to choose the one the engine computes in (every "
                          "parameter is held in one): convert the model to one dtype (model.float() or "
                          "model.bfloat16()), or enable bf16 to compute every parameter in bfloat16")
    dtype = next(iter(first), torch.float32)
    key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if key is None:
        return cfg  # float32; other dtypes are refused by the engine, by name
    if _autocast.enabled(cfg):  # as DeepSpeed asserts; else the engine's refusal named a bf16 the user never set
        raise ConfigError(f"invalid_argument: torch_autocast computes in bf16 over float32 parameters, and the "
                          f"model's are {str(dtype).removeprefix('torch.')} ('{first[dtype]}'): convert the model "
                          f"with model.float(), or enable {key} instead of torch_autocast")
    block = cfg.get(key)
    cfg = {**cfg, key: {**(block if isinstance(block, dict) else {}), "enabled": True}}
    try:
        check_compute_dtype(dtype)
    except ConfigError as e:
        raise ConfigError(f"{e} (the model's parameters are float16, so it computes in float16: convert it with "
                          "model.bfloat16() or model.float())") from None
    return cfg


def check_compute_dtype(dtype) -> None:
    """fp16 compute needs fp16 matrix multiplies on the compute device. The Python front
    end computes on the CPU, whose kernels in LibTorch 1.13 have none: without this check
    the first forward failed with ATen's "addmm_impl_cpu_ not implemented for 'Half'",
    after the engine had written every chunk's state (minutes for a model larger than
    RAM). Refused up front instead, as `strata train --fp16` is on a CPU. A LibTorch whose
    CPU kernels do multiply fp16 passes (probed, not decided by version)."""
    if dtype != torch.float16:
        return
    try:
        torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, 2, dtype=torch.float16)
    except RuntimeError as e:
        raise ConfigError("invalid_argument: fp16 compute needs a GPU: this LibTorch has no fp16 matrix multiply "
                          f"on the CPU ({str(e).splitlines()[0]}); use bf16 (config bf16.enabled, or "
                          "MixedPrecisionPolicy(param_dtype=torch.bfloat16)) or fp32") from None


def cast_buffers(model: torch.nn.Module, dtype) -> None:
    """Floating-point buffers (batch norm's running statistics) in the compute dtype, as
    DeepSpeed's engine casts the whole module: LibTorch's CPU batch norm refuses bf16
    weights with fp32 statistics."""
    if dtype == torch.float32:
        return
    for module in model.modules():
        for name, b in module._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                module._buffers[name] = b.to(dtype)


def buffer_source(model: torch.nn.Module):
    """What a checkpoint saves and loads of the model besides the engine's parameters: its
    persistent buffers by state_dict name (batch norm's running statistics) and the
    parameters in no unit (not floating point; Note [unit ownership]), asked anew at
    each save and load (a module may replace a buffer's tensor). The model is held weakly:
    the engine must not keep it alive (its hooks hold the engine)."""
    ref = weakref.ref(model)

    def source() -> list[tuple[str, torch.Tensor]]:
        m = ref()
        if m is None:
            return []
        out = [(n, p) for n, p in m.named_parameters() if not p.is_floating_point()]  # in no unit
        for prefix, module in m.named_modules():
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers_set:
                    out.append((f"{prefix}.{name}" if prefix else name, b))
        return out

    return source


def model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """A model's parameters and buffers: what every rank must start from alike."""
    return list(model.parameters()) + [b for b in model.buffers() if b is not None]


def sync_from_rank0(comm, tensors) -> None:
    """Every rank starts from rank 0's values of `tensors`, as DeepSpeed and DDP do: the
    engine shards each rank's own values, so a script that did not seed its ranks alike
    would otherwise train a mix of initializations (at stages 0-2, replicated parameters
    that differ across ranks until the first step) without a word."""
    if comm.world == 1:
        return
    seen = set()
    with torch.no_grad():
        for t in tensors:
            if id(t) in seen or _stand_ins.is_pending(t):  # no values yet: _stand_ins.sync
                continue
            seen.add(id(t))
            if t.is_contiguous():
                comm.broadcast(t.data, 0)
            else:
                flat = t.data.contiguous()
                comm.broadcast(flat, 0)
                t.data.copy_(flat)
