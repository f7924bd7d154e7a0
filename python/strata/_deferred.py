"""strata.Init: build a model larger than host memory.

    with strata.Init():
        model = GPT(cfg)              # every parameter: a shape, no bytes
    engine, optimizer, _, _ = strata.initialize(model=model, config=cfg)   # values made chunk by chunk

Note [deferred parameters]
While Init is active, every parameter a module registers becomes a DeferredParameter: a
meta tensor (shape, dtype, requires_grad; no bytes) with a record of how its values are
made. The record holds the tensor the parameter was built from (kept only until an
in-place operation overwrites all of it) and every in-place operation applied to the
parameter, or to a view of it, since: reset_parameters()'s kaiming_uniform_, a custom
_init_weights applied over the model, nn.Embedding's zeroed padding row, a
load_state_dict(). A random operation also records the generator state it starts from,
and runs once on a scratch tensor laid out as its target, so that the generator moves on
exactly as eager construction moves it. Replaying a record therefore gives the values
eager construction would have given, bit for bit (tests/python/test_deferred.py).

The engine replays a parameter's record when setup fills its chunk (the ParamInit of
include/strata/engine/deferred_init.h, Note [streaming setup] in src/engine/engine.cpp):
host memory holds one chunk's values at a time, never the model. Before that,
_stand_ins.prepare() gives each module a plain parameter of the same shape that holds no
bytes (what the C++ engine calls deferred), as torch's own meta-to-CPU conversion does; a
parameter tied between modules stays one parameter. At more than one rank every rank replays rank 0's
records (their generator states and kept tensors are broadcast), as every rank starts
from rank 0's values of an eager model.

A tensor made from a deferred parameter's shape alone (weight.new_empty(h), zeros_like(p):
spectral_norm's u and v, the scratch matrix orthogonal_ draws and factors) is real, as it
is in eager construction: its draws move the generator, and a parameter copied from it
keeps it until the engine takes the values, as one built from values does.

Note [meta-device models]: FSDP2's way to build a model larger than memory also works:
build it on the meta device (torch 2's `with torch.device("meta")`, or device="meta"
factory arguments), apply strata.fully_shard, then model.to_empty(device=...) and an
initialization (reset_parameters, a custom init_weights). fully_shard makes each plain
meta parameter a DeferredParameter with no values yet (defer_meta, one per parameter
however many modules hold it); to_empty gives a deferred parameter no values again
(torch.empty_like of one is marked blank, and p.data = blank records that, instead of
keeping the blank tensor: the model is never held); the initialization that follows is
recorded as under Init. A parameter that nothing initialized after that is refused by
name when the engine is built: eagerly it would train from uninitialized memory. The
meta buffers to_empty makes real as eagerly, and the initialization must set them
again: fully_shard makes each a _MetaBuffer, whose to_empty result is marked blank until
something writes it, so a buffer the initialization forgot is refused by name too.

What cannot be replayed is refused by name when it happens: an in-place operation whose
values come from another deferred parameter or from a meta tensor, a forward (or any
computation mixing real tensors with a deferred parameter) before the engine is built, a
number asked of a deferred parameter's values, a move to another device. A tensor
computed from a deferred parameter's values is a _Derived meta tensor, so that its uses
reach these checks too (a plain meta tensor's would fail in ATen with a
NotImplementedError, which torch code may catch and skip on).
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .errors import ConfigError, UsageError

# In-place operations that draw from a random generator: their record keeps its state.
_RANDOM = frozenset({"normal_", "uniform_", "bernoulli_", "random_", "exponential_", "cauchy_", "log_normal_",
                     "geometric_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                     "trunc_normal_", "orthogonal_", "sparse_"})
# In-place operations that set every element of their target whatever it held before.
_OVERWRITE = _RANDOM | {"zero_", "fill_", "copy_", "zeros_", "ones_", "constant_", "eye_", "dirac_"}
# In-place by name, but they change no values.
_METADATA = frozenset({"requires_grad_", "retain_grad", "share_memory_", "detach_", "_fix_weakref"})
_INPLACE_DUNDER = re.compile(r"__i(add|sub|mul|truediv|floordiv|mod|pow|and|or|xor|lshift|rshift|matmul)__|__setitem__")
# Factories read only their source's shape, dtype and layout, never its values.
_FACTORIES = frozenset({"new", "new_empty", "new_empty_strided", "new_full", "new_ones", "new_tensor", "new_zeros",
                        "empty_like", "full_like", "ones_like", "rand_like", "randint_like", "randn_like",
                        "zeros_like"})
# p.view_as(other) and kin read only the other tensor's shape: they are p.view(shape).
_AS_SHAPE_OF = {"view_as": torch.Tensor.view, "expand_as": torch.Tensor.expand, "reshape_as": torch.Tensor.reshape}
# Conversions: the result is the parameter's values in another dtype.
_CONVERSIONS = {"to": None, "float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16,
                "double": torch.float64, "cpu": None}


class _Self:
    """Where the operation's target goes in a recorded call."""


_SELF = _Self()


@dataclasses.dataclass
class _GeneratorState:
    state: torch.Tensor


@dataclasses.dataclass
class _Step:
    """A view (or a conversion) of a deferred tensor: func(target, *args, **kwargs)[index]."""
    func: object
    args: tuple
    kwargs: dict
    index: int | None = None


@dataclasses.dataclass
class _Op:
    chain: tuple  # the steps from the parameter to the operation's target
    func: object  # None: the chain's result replaces the values (a dtype conversion)
    args: tuple
    kwargs: dict
    rng: torch.Tensor | None = None


@dataclasses.dataclass
class _Record:
    shape: tuple
    dtype: torch.dtype
    base: torch.Tensor | None  # the values built from, until an operation overwrites them all
    ops: list
    where: str  # "Linear.weight": for messages
    defined: bool = True  # False: built on the meta device (or emptied by to_empty), nothing has set it since
    start_dtype: torch.dtype | None = None  # the dtype when ops[0] ran (a conversion may follow)

    def __post_init__(self):
        self.start_dtype = self.dtype


def _name(func) -> str:
    n = getattr(func, "__name__", "")
    if n in ("__get__", "__set__"):
        return f"{getattr(getattr(func, '__self__', None), '__name__', '?')}.{n}"
    return n


def _is_deferred(x) -> bool:
    return isinstance(x, (DeferredParameter, _DeferredView))


def _has_no_values(x) -> bool:
    return isinstance(x, (DeferredParameter, _DeferredView, _Derived))


def _apply(step: _Step, t: torch.Tensor) -> torch.Tensor:
    with torch._C.DisableTorchFunction():
        r = step.func(t, *step.args, **step.kwargs)
    return r if step.index is None else r[step.index]


def _along(chain, t: torch.Tensor) -> torch.Tensor:
    for step in chain:
        t = _apply(step, t)
    return t


def _fill(tree, target):
    """The recorded call's arguments with its target in place, generators set to their
    recorded states."""
    def one(x):
        if x is _SELF:
            return target
        if isinstance(x, _GeneratorState):
            g = torch.Generator()
            g.set_state(x.state)
            return g
        return x
    return tree_map(one, tree)


def replay(rec: _Record) -> torch.Tensor:
    """The parameter's values, made as eager construction made them."""
    if not rec.defined:
        raise UsageError(undefined_message(rec))
    t = rec.base.detach().clone() if rec.base is not None else torch.empty(rec.shape, dtype=rec.start_dtype)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for op in rec.ops:
            if op.func is None:
                t = _along(op.chain, t).contiguous()
                continue
            target = _along(op.chain, t)
            if op.rng is not None:
                torch.set_rng_state(op.rng)
            with torch._C.DisableTorchFunction():
                op.func(*_fill(op.args, target), **_fill(op.kwargs, target))
    return t


def undefined_message(rec: _Record, name: str | None = None) -> str:
    where = f"{name} ({rec.where})" if name else rec.where
    return (f"failed_precondition: parameter {where} has no values: it was built on the meta device (or emptied "
            "by to_empty) and nothing set its values since; initialize it (reset_parameters, torch.nn.init) before "
            "the engine is built")


def _refuse_reading(rec: _Record, what: str):
    raise UsageError(f"failed_precondition: parameter {rec.where} was built under strata.Init and holds no values "
                     f"until strata.initialize (or strata.fully_shard's optimizer) builds the engine; {what}")


def _record_op(target, func, name: str, args: tuple, kwargs: dict):
    rec: _Record = target._strata_record
    chain = target._strata_chain

    def keep(x):
        if x is target:
            return _SELF
        if _is_deferred(x):
            _refuse_reading(rec, f"{name} reads another deferred parameter's values ({x._strata_record.where}), "
                                 "which strata.Init cannot replay; set them after the engine is built "
                                 "(strata.GatheredParameters) or build this module outside strata.Init")
        if isinstance(x, torch.Tensor):
            if x.is_meta:
                _refuse_reading(rec, f"{name} takes a meta tensor's values, which do not exist (an initialization "
                                     "computed from a parameter's values: build this module outside strata.Init, or "
                                     "set its values inside strata.GatheredParameters after the engine is built)")
            return x.detach()  # a real value (a copy's source, a mask): kept for the replay
        if isinstance(x, torch.Generator):
            return _GeneratorState(x.get_state())
        return x

    op = _Op(chain, func, tree_map(keep, args), tree_map(keep, kwargs))
    if name in _RANDOM:
        # The state this draw starts from, then the same draw on a scratch tensor laid
        # out as the target: the generator moves on as eager construction moves it.
        op.rng = torch.get_rng_state()
        scratch = _along(chain, torch.empty(rec.shape, dtype=rec.dtype))
        real = lambda x: scratch if x is target else x  # noqa: E731 - the caller's generator, advanced
        with torch.no_grad(), torch._C.DisableTorchFunction():
            func(*tree_map(real, args), **tree_map(real, kwargs))
    if name in _OVERWRITE and target.numel() == math.prod(rec.shape):
        rec.ops, rec.base, rec.defined, rec.start_dtype = [op], None, True, rec.dtype
    else:
        rec.ops.append(op)
    return target


def _set_data(target, value):
    """p.data = value: new values (and maybe a new shape or dtype), or a conversion of
    p's own (nn.Module._apply: model.bfloat16())."""
    rec: _Record = target._strata_record
    if target._strata_chain:
        _refuse_reading(rec, "setting .data of a view of it is not supported")
    if _is_deferred(value):
        if value._strata_record is not rec or not value._strata_converted:
            _refuse_reading(rec, f"its .data was set to another deferred tensor ({value._strata_record.where})")
        rec.ops.append(_Op(value._strata_chain, None, (), {}))
        rec.dtype = value.dtype
    elif isinstance(value, torch.Tensor) and is_blank(value):
        # model.to_empty(): its values are gone, as eagerly (Note [meta-device models]).
        rec.base, rec.ops, rec.defined = None, [], False
        rec.shape, rec.dtype, rec.start_dtype = tuple(value.shape), value.dtype, value.dtype
    elif isinstance(value, torch.Tensor) and not value.is_meta:
        rec.base, rec.ops, rec.defined = value.detach(), [], True
        rec.shape, rec.dtype, rec.start_dtype = tuple(value.shape), value.dtype, value.dtype
    else:
        _refuse_reading(rec, "its .data was set to a meta tensor, which has no values")
    with torch._C.DisableTorchFunction():
        torch.Tensor.data.__set__(target, torch.empty(rec.shape, dtype=rec.dtype, device="meta"))


def _alias(source, steps: list[_Step], results):
    """Wraps the meta results that view `source` as deferred views."""
    def wrap(r, step):
        v = torch.Tensor._make_subclass(_DeferredView, r, False)
        v._strata_record = source._strata_record
        v._strata_chain = source._strata_chain + (step,)
        v._strata_converted = False
        return v
    if isinstance(results, (tuple, list)):
        return type(results)(wrap(r, s) for r, s in zip(results, steps))
    return wrap(results, steps[0])


def _convert(target, name: str, func, args, kwargs):
    """model.bfloat16(), p.to(torch.float16), p.cpu(): the values converted (and laid
    out: the engine makes them contiguous again). A move off the CPU is refused."""
    rec: _Record = target._strata_record
    dtype = _CONVERSIONS[name]
    if name == "to":
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "cpu":
            _refuse_reading(rec, f"moving it to {device} is not supported: strata's engine places the values "
                                 "(the compute tier) when it is built")
    out = _alias(target, [_Step(func, args, kwargs)],
                 torch.empty(target.shape, dtype=dtype or target.dtype, device="meta"))
    out._strata_converted = True
    return out


def _torch_function(cls, func, types, args=(), kwargs=None):
    # Everything below sees deferred tensors as the meta tensors they are.
    with torch._C.DisableTorchFunction():
        return _dispatch(func, args, kwargs or {})


def _dispatch(func, args: tuple, kwargs: dict):
    name = _name(func)
    if name == "data.__set__":
        _set_data(args[0], args[1])
        return None
    # (Attribute getters and setters are named "attr.__get__": never in place here.)
    inplace = (name.endswith("_") and not name.startswith("__") and "." not in name and name not in _METADATA) or \
        _INPLACE_DUNDER.fullmatch(name) is not None
    if inplace:
        target = args[0] if args else kwargs.get("tensor")
        if _is_deferred(target):
            if "out" in kwargs:
                _refuse_reading(target._strata_record, f"{name} with out= is not supported")
            return _record_op(target, func, name, args, kwargs)
    if name == "_has_compatible_shallow_copy_type" and args and isinstance(args[0], DeferredParameter):
        # nn.Module._apply asks before p.data = fn(p) (to_empty, float()): yes, so that the
        # parameter stays this one and _set_data records the change; a meta tensor and a
        # CPU one would otherwise make it a new, real parameter.
        return True
    if name in _AS_SHAPE_OF and len(args) == 2 and _is_deferred(args[0]) and isinstance(args[1], torch.Tensor):
        func, args = _AS_SHAPE_OF[name], (args[0], tuple(args[1].shape))  # (orthogonal_: p.view_as(q).copy_(q))
    flat, _ = tree_flatten((args, kwargs))
    sources = [x for x in flat if _has_no_values(x)]  # deferred parameters, their views, _Derived
    if "out" in kwargs and _is_deferred(kwargs["out"]):
        _refuse_reading(kwargs["out"]._strata_record, f"{name} with out= is not supported")
    if name in _CONVERSIONS and args and _is_deferred(args[0]):
        return _convert(args[0], name, func, args[1:], kwargs)
    if name in _FACTORIES and args and _has_no_values(args[0]):
        # A new tensor, not the parameter: eager construction makes real values here
        # (spectral_norm's u and v: weight.new_empty(h).normal_()), and so does Init, so
        # that they exist and a draw from them moves the generator on as eagerly.
        src = args[0]
        with torch._C.DisableTorchFunction():
            out = func(no_bytes(src.shape, src.dtype, src.stride()), *args[1:], **kwargs)
        if name == "empty_like" and isinstance(src, DeferredParameter):
            # Module.to_empty's: set as the parameter's .data while nothing has written it,
            # it is a record of no values, not values to keep (Note [meta-device models]).
            out._strata_blank = out._version
        return out
    # Anything else runs on the meta tensors: shapes and dtypes are right, values do not
    # exist. A computation that mixes in real values is a read of the parameter's.
    if sources and any(isinstance(x, torch.Tensor) and not x.is_meta and x.numel() > 0 for x in flat):
        _refuse_reading(sources[0]._strata_record, f"{name} reads its values (a forward, or a computation from "
                                                   "its values while building: build this module outside "
                                                   "strata.Init, or compute it after the engine is built)")
    try:
        with torch._C.DisableTorchFunction():
            out = func(*args, **kwargs)
    except NotImplementedError as e:  # no meta kernel (weight_norm's), or a value asked for (.item())
        if not sources:
            raise
        if "_local_scalar_dense" in str(e):
            _refuse_reading(sources[0]._strata_record, f"{name} asks for a number computed from its values while "
                                                       "building; build this module outside strata.Init, or compute "
                                                       "it after the engine is built")
        _refuse_reading(sources[0]._strata_record, f"{name} has no meta-device implementation in this torch "
                                                   f"({str(e).splitlines()[0][:120]}); build this module outside "
                                                   "strata.Init")
    if name in ("data.__get__", "detach") and _is_deferred(args[0]):
        return _alias(args[0], [_Step(func, args[1:], kwargs)], out)
    # Views of a deferred tensor (p[0], p.t(), p.split(...)) are deferred views: an
    # in-place operation on one is recorded against the parameter.
    source = sources[0] if sources else None
    if source is not None and args and args[0] is source and _is_deferred(source):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if outs and all(isinstance(r, torch.Tensor) and r._is_view() and r._base is source for r in outs):
            steps = [_Step(func, args[1:], kwargs, i if isinstance(out, (tuple, list)) else None)
                     for i in range(len(outs))]
            return _alias(source, steps, out)
    # Anything else computed from them has no values either: a _Derived tensor, so that
    # what needs its values (torch.allclose(q.mH @ q, eye), a real tensor mixed in) is
    # refused here by name instead of failing in ATen's meta kernels, whose
    # NotImplementedError torch code may catch and take for "not supported, skip"
    # (torch.nn.utils.parametrize does: parametrizations.orthogonal would then start
    # from other values than eagerly).
    if source is None:
        return out

    def derive(r):
        if not isinstance(r, torch.Tensor) or not r.is_meta or _has_no_values(r):
            return r
        d = torch.Tensor._make_subclass(_Derived, r, r.requires_grad)
        d._strata_record = source._strata_record
        return d
    return tree_map(derive, out)


def no_bytes(shape, dtype, stride=None) -> torch.Tensor:
    """A CPU tensor with a shape (and strides) and no storage: the layout a factory reads,
    and what the C++ engine calls a deferred parameter (_stand_ins)."""
    t = torch.empty(shape, dtype=dtype) if stride is None else torch.empty_strided(shape, stride, dtype=dtype)
    getattr(t, "untyped_storage", t.storage)().resize_(0)  # untyped_storage: torch 2
    return t


class DeferredParameter(torch.nn.Parameter):
    """A parameter built under strata.Init (Note [deferred parameters]): no bytes until
    the engine makes its values."""
    __torch_function__ = classmethod(_torch_function)

    def __repr__(self):
        return f"DeferredParameter({self._strata_record.where}, shape={tuple(self.shape)}, dtype={self.dtype})"

    def __deepcopy__(self, memo):
        # copy.deepcopy(model) before the engine is built (an EMA copy): a deferred copy
        # with its own record (the kept tensors are shared: a replay never writes them).
        if id(self) not in memo:
            rec = self._strata_record
            copy = _make_deferred(rec.shape, rec.dtype, self.requires_grad,
                                  dataclasses.replace(rec, ops=list(rec.ops)))
            memo[id(self)] = copy
        return memo[id(self)]

    def __reduce_ex__(self, proto):
        raise UsageError(f"failed_precondition: parameter {self._strata_record.where} was built under strata.Init "
                         "and holds no values to pickle until the engine is built (strata.materialize gives them)")


class _DeferredView(torch.Tensor):
    """A view (or conversion) of a DeferredParameter; in-place operations on it are the
    parameter's."""
    __torch_function__ = classmethod(_torch_function)


class _Derived(torch.Tensor):
    """A meta tensor computed from a deferred parameter's values (p.abs(), q.mH @ q): it
    has none, and an operation that needs them is refused naming the parameter."""
    __torch_function__ = classmethod(_torch_function)


def _make_deferred(shape, dtype, requires_grad: bool, rec: _Record) -> DeferredParameter:
    d = torch.Tensor._make_subclass(DeferredParameter, torch.empty(shape, dtype=dtype, device="meta"), requires_grad)
    d._strata_record = rec
    d._strata_chain = ()
    d._strata_converted = False
    return d


def _defer(module: torch.nn.Module, name: str, param: torch.nn.Parameter) -> DeferredParameter:
    defined = not param.is_meta
    return _make_deferred(param.shape, param.dtype, param.requires_grad,
                          _Record(tuple(param.shape), param.dtype, param.detach() if defined else None, [],
                                  f"{type(module).__name__}.{name}", defined))


class _MetaBuffer(torch.Tensor):
    """A meta buffer of a model sharded FSDP2's way: torch.empty_like of it (to_empty's)
    is real and marked blank, until written (Note [meta-device models])."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunction():
            out = func(*args, **(kwargs or {}))
        if _name(func) == "empty_like":
            out._strata_blank = out._version
        return out


def is_blank(t: torch.Tensor) -> bool:
    """Made by to_empty from a _MetaBuffer, and not written since."""
    return t.__dict__.get("_strata_blank") == t._version


def defer_meta(module: torch.nn.Module) -> None:
    """Makes every plain meta floating-point parameter under `module` a DeferredParameter
    with no values yet, and every meta buffer a _MetaBuffer, in place; a parameter or
    buffer several modules hold stays one (Note [meta-device models])."""
    for _, mod in module.named_modules(remove_duplicate=False):
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_meta and not isinstance(b, _MetaBuffer):
                if "_strata_meta_buffer" not in b.__dict__:
                    b._strata_meta_buffer = torch.Tensor._make_subclass(_MetaBuffer, b)
                mod._buffers[name] = b._strata_meta_buffer
        for name, p in list(mod._parameters.items()):
            if p is None or not p.is_meta or isinstance(p, DeferredParameter) or not p.is_floating_point():
                continue
            d = p.__dict__.get("_strata_deferred")
            if d is None:
                d = _defer(mod, name, p)
                p._strata_deferred = d
            mod._parameters[name] = d


_depth = 0
_register_parameter = torch.nn.Module.register_parameter


def _deferring_register_parameter(self, name, param):
    # Lazy modules' uninitialized parameters keep their own mechanism; integer ones are
    # no engine's (they stay the module's own, Note [unit ownership] in _units.py).
    if isinstance(param, torch.nn.Parameter) and not isinstance(param, DeferredParameter) and \
            not isinstance(param, torch.nn.parameter.UninitializedTensorMixin) and param.is_floating_point():
        param = _defer(self, name, param)
        for block in _open:
            block._built.append(param)
    return _register_parameter(self, name, param)


class Init:
    """While active, the parameters modules create hold no bytes (Note [deferred
    parameters]); strata.initialize or strata.fully_shard's optimizer makes their values
    chunk by chunk, as eager construction would have made them. As deepspeed.zero.Init:
    `enabled=False` builds the model as usual; `dtype` converts the floating-point
    parameters built inside to it when the block ends (as model.to(dtype) would). The
    placement and the ranks come from strata.initialize's config and process_group:
    DeepSpeed's config_dict_or_path, config, remote_device, pin_memory and
    data_parallel_group are accepted so that its scripts run, and change nothing."""

    def __init__(self, module=None, data_parallel_group=None, remote_device=None, pin_memory=False,
                 config_dict_or_path=None, config=None, enabled: bool = True, dtype=None):
        if module is not None:
            raise ConfigError("invalid_argument: strata.Init(module=...) (partitioning a model already built) is not "
                              "supported: build the model inside `with strata.Init():`, or pass the built model to "
                              "strata.initialize as it is")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"invalid_argument: strata.Init dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.enabled = bool(enabled)
        self.dtype = dtype
        self._built: list[DeferredParameter] = []

    def __enter__(self):
        global _depth
        if self.enabled:
            if _depth == 0:
                torch.nn.Module.register_parameter = _deferring_register_parameter
            _depth += 1
            _open.append(self)
        return self

    def __exit__(self, *exc):
        global _depth
        if self.enabled:
            _open.remove(self)
            _depth -= 1
            if _depth == 0:
                torch.nn.Module.register_parameter = _register_parameter
            if self.dtype is not None:
                for d in dict.fromkeys(self._built):  # (a tied one once)
                    if d.dtype != self.dtype:
                        _set_data(d, d.to(self.dtype))
            self._built = []
        return False


_open: list[Init] = []  # the active Init blocks, innermost last
