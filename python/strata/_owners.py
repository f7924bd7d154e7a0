"""Which strata engine holds a parameter: for the functions that take plain parameters
(torch.nn.utils.clip_grad_norm_, Note [torch's gradient clipping] in _clip.py; and
strata.GatheredParameters, _gathered.py). Each front end registers its engine's
parameters when it builds the engine, and initialize's engine unregisters them when it
closes; entries hold their parameter weakly, so a freed parameter whose id is reused by
another tensor is not taken for it.

The registry also releases every engine still in it when the process exits, so that
their nvme swap files go: it holds them, and Python does not promise to destroy such
objects at exit (fully_shard's engines are never closed, and an initialize engine whose
model was still referenced was not destroyed either: each such run left its swap
directory behind)."""
from __future__ import annotations

import atexit
import weakref


class Owner:
    """An engine (the _strata.Engine binding), its communicator, and its parameters: all
    of them (ids) and those trainable when it was built (trained)."""

    def __init__(self, engine, comm, params):
        self.engine = engine
        self.comm = comm
        self.ids = frozenset(id(p) for p in params)
        self.trained = frozenset(id(p) for p in params if p.requires_grad)


_OWNERS: dict[int, tuple[weakref.ref, Owner]] = {}  # id(param) -> (param, its engine)


@atexit.register
def _release_at_exit() -> None:
    for owner in {id(o): o for _, o in _OWNERS.values()}.values():
        owner.engine.close()  # (a second close of an engine does nothing)


def register(engine, comm, params) -> Owner:
    params = list(dict.fromkeys(params))
    owner = Owner(engine, comm, params)
    for p in params:
        _OWNERS[id(p)] = (weakref.ref(p), owner)
    return owner


def unregister(owner: Owner | None) -> None:
    if owner is None:
        return
    for i in owner.ids:
        if i in _OWNERS and _OWNERS[i][1] is owner:
            del _OWNERS[i]


def owner_of(p) -> Owner | None:
    entry = _OWNERS.get(id(p))
    return entry[1] if entry is not None and entry[0]() is p else None


def split(parameters):
    """(the given tensors as a list, {id(owner): owner} of the engines holding some, the
    tensors no engine holds)."""
    import torch

    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    owners, others = {}, []
    for p in params:
        owner = owner_of(p)
        if owner is None:
            others.append(p)
        else:
            owners[id(owner)] = owner
    return params, owners, others
