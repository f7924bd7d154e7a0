"""A sharded model's whole state_dict, as model.state_dict() of the unsharded model
would be: every parameter under each of its names (a tied weight twice), persistent
buffers, in state_dict order. At stage 3 the parameters' own tensors hold no values
between forwards (Note [released parameters], _guard.py), so their values come from the
engine's consolidated fp32 masters."""
from __future__ import annotations

import torch


def full_state_dict(module: torch.nn.Module, values: dict[str, torch.Tensor], dtype=None) -> dict:
    """values: the engine's consolidated parameters by name (flat fp32); dtype: what the
    parameters become (None: fp32). A parameter the engine does not hold (not floating
    point: in no unit) is the module's own."""
    by_id = {}
    for n, p in module.named_parameters():
        if n in values:
            # p.shape is metadata: reading it is fine while p is released.
            v = values[n].view(p.shape)
            by_id[id(p)] = v.to(dtype) if dtype is not None else v.clone()
    state = {}
    for prefix, mod in module.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for n, p in mod._parameters.items():
            if p is not None:
                v = by_id.get(id(p))
                state[dot + n] = p.detach().clone() if v is None else v
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                state[dot + n] = b.detach().clone()
    return state
