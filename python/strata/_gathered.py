"""strata.GatheredParameters: DeepSpeed's deepspeed.zero.GatheredParameters.

    with strata.GatheredParameters(list(model.parameters()), modifier_rank=0):
        for p in model.parameters():
            p.clamp_(-0.01, 0.01)          # a WGAN critic's weight clipping at stage 3

At stage 3 a parameter holds no values outside its module's forward (Note [released
parameters], _guard.py), so code that reads or edits parameters between steps (an EMA
of the weights, weight clipping, re-initializing a layer, logging a norm) runs inside
this context. Every rank enters it with the same parameters: entering all-gathers the
chunks that hold them (Note [gathered parameters], src/engine/state_dict.cpp) and lends
each parameter its full value (the master, in the parameter's dtype); leaving takes
what changed back into the engine, as an in-place edit at stages 0-2 is taken (Note
[edited parameters]), and gives the parameters back their own storage. With
modifier_rank=r, rank r's values are broadcast first, so only rank r needs to make the
edit; with None every rank's own edit is kept for its shard, so the ranks should make
the same one (DeepSpeed's None drops edits instead). At stages 0-2 the parameters hold
their values already: the context only broadcasts modifier_rank's values, and the next
step takes the edit. No forward or optimizer step may run inside at stage 3 (refused by
name). Parameters that no strata engine holds are left alone.
"""
from __future__ import annotations

import sys

import torch

from . import _owners
from .errors import UsageError


class GatheredParameters:
    def __init__(self, params, modifier_rank: int | None = None, fwd_module=None, enabled: bool = True):
        # fwd_module: DeepSpeed's, for forward hooks of modules built inside the context;
        # strata's engines need none (accepted so DeepSpeed code runs unchanged).
        del fwd_module
        self._params = [params] if isinstance(params, torch.Tensor) else list(params or [])
        self._modifier = modifier_rank
        self._enabled = enabled
        self._lent: list[list] = []  # [owner, params, their own data, versions once lent]
        self._stage012: list[tuple[_owners.Owner, list]] = []

    def __enter__(self):
        if not self._enabled:
            return self
        try:
            self._lend()
        except BaseException:
            self.__exit__(*sys.exc_info())  # what was lent already goes back
            raise
        return self

    def _lend(self):
        _, owners, _ = _owners.split(self._params)
        for owner in owners.values():
            if self._modifier is not None and not 0 <= self._modifier < owner.comm.world:
                raise UsageError(f"invalid_argument: modifier_rank {self._modifier} is not a rank (world size "
                                 f"{owner.comm.world})")
            mine = [p for p in dict.fromkeys(self._params) if _owners.owner_of(p) is owner]
            if owner.engine.stage != 3:
                self._stage012.append((owner, mine))
                continue
            values = owner.engine.gather_params(mine)
            lent = [owner, mine, [p.data for p in mine], None]  # released by __exit__ from here on
            self._lent.append(lent)
            with torch.no_grad():
                for p, v in zip(mine, values):
                    p.data = v.to(p.dtype).view(p.shape)
            lent[3] = [p._version for p in mine]

    def __exit__(self, exc_type, exc, tb):
        if not self._enabled:
            return False
        failed = exc_type is not None  # no collective then: the other ranks may not be here
        first = None  # every engine gets its parameters back; the first error is raised after
        for owner, mine in self._stage012:
            if self._modifier is not None and not failed and owner.comm.world > 1:
                with torch.no_grad():
                    for p in mine:
                        self._broadcast(owner, p)
        for owner, mine, own, versions in self._lent:
            released = False  # the engine ends the loan on release_params, even one that fails
            try:
                if self._modifier is not None and not failed and owner.comm.world > 1:
                    with torch.no_grad():
                        for p in mine:
                            self._broadcast(owner, p)
                changed = not failed and versions is not None and (
                    self._modifier is not None or any(p._version != v for p, v in zip(mine, versions)))
                released = True
                owner.engine.release_params(mine, [p.data for p in mine] if changed else [])
            except Exception as e:  # noqa: BLE001 - raised below, once every engine has its parameters back
                first = first or e
                if not released:
                    owner.engine.release_params(mine, [])
            finally:
                for p, data in zip(mine, own):
                    p.data = data
        self._lent, self._stage012 = [], []
        if first is not None:
            raise first
        return False

    def _broadcast(self, owner, p):
        if p.data.is_contiguous():
            owner.comm.broadcast(p.data, self._modifier)
        else:
            flat = p.data.contiguous()
            owner.comm.broadcast(flat, self._modifier)
            p.data.copy_(flat)
