"""strata.ShardedOptimizer: FairScale OSS's entry point (ZeRO-1/2 around any torch.optim
optimizer) on strata's C++ engine.

    opt = strata.ShardedOptimizer(model.parameters(), optim=torch.optim.AdamW, lr=1e-3)
    loss_fn(model(x), y).backward()
    opt.step()

The engine, at stage 1 (optimizer state sharded) or 2 (gradients too), reduces the
gradients as backward produces them and all-gathers the updated parameters after the
step; in between, `optim` steps this rank's slices of the fp32 master weights, built
over them with the caller's parameter groups and settings (py_optimizer.h). Elementwise
optimizers step exactly as unsharded ones.
"""
from __future__ import annotations

import json
import pickle

import torch

from . import _comm, _owners, _strata, _units
from .errors import ConfigError, UsageError


class ShardedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, optim=torch.optim.AdamW, *, stage: int = 1, process_group=None, **defaults):
        if stage not in (1, 2):
            raise ConfigError(f"invalid_argument: ShardedOptimizer stage must be 1 or 2, got {stage!r} "
                              "(stage 3 shards the parameters: use strata.fully_shard or strata.initialize)")
        if not (isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer)):
            raise ConfigError(f"invalid_argument: optim must be a torch.optim.Optimizer class, got {optim!r}")
        super().__init__(params, defaults)
        self._optim = optim
        params = list(dict.fromkeys(p for g in self.param_groups for p in g["params"]))
        if not params:
            raise ConfigError("invalid_argument: ShardedOptimizer got no parameters")
        _units.check_materialized(params=params)
        _units.admit_params(params)
        group_by_id = {id(p): g for g, grp in enumerate(self.param_groups) for p in grp["params"]}
        group_of = [group_by_id[id(p)] if p.requires_grad else -1 for p in params]
        self._comm = _comm.communicator(process_group)
        _units.sync_from_rank0(self._comm, params)  # as OSS under DDP
        cfg = {"zero_optimization": {"stage": stage}, "optimizer": {"type": "SGD", "params": {"lr": 0.0}}}
        cfg = _units.with_model_dtype(cfg, ((f"param{i}", p) for i, p in enumerate(params)))
        self._slices: list[list[tuple[int, int, int]]] = []
        self._params = params
        self.engine = _strata.Engine([("params", params, [f"param{i}" for i in range(len(params))], False)], self._comm,
                                     json.dumps(cfg), (group_of, len(self.param_groups), self._make))
        self.local = self.engine.wrapped_optimizer
        _owners.register(self.engine, self._comm, params)

    def _make(self, groups, slices):
        """Called by the engine: the local optimizer over this rank's slices."""
        self._slices = [list(s) for s in slices]
        local = []
        for g, views in enumerate(groups):
            settings = {k: v for k, v in self.param_groups[g].items() if k != "params"}
            local.append({**settings, "params": list(views)})
        nonempty = [g for g in local if g["params"]]
        if not nonempty:  # this rank owns no slice: an optimizer with nothing to step
            nonempty = [{**{k: v for k, v in self.param_groups[0].items() if k != "params"},
                         "params": [torch.zeros(0, requires_grad=True)]}]
        self._local_map = [g for g, grp in enumerate(local) if grp["params"]] or [0]
        return self._optim(nonempty)

    def step(self, closure=None):
        if closure is not None:
            raise UsageError("failed_precondition: ShardedOptimizer.step takes no closure")
        # Settings changed on the caller's groups (a scheduler's lr) reach the local ones.
        for local, g in zip(self.local.param_groups, self._local_map):
            for k, v in self.param_groups[g].items():
                if k != "params":
                    local[k] = v
        return self.engine.step()

    def zero_grad(self, set_to_none: bool = True):
        """Discards the gradients of backwards no step() counted; otherwise nothing: the
        engine clears them at each step (Note [zero_grad], engine.cpp)."""
        self.engine.zero_grad()

    # -- state: the caller's parameter indices, as torch.optim numbers them ------------
    def _my_pieces(self):
        """(param index, offset, numel, state) for every slice this rank steps."""
        pieces = []
        for local, g in zip(self.local.param_groups, self._local_map):
            for view, (p, off, n) in zip(local["params"], self._slices[g]):
                st = self.local.state.get(view, {})
                pieces.append((p, off, n, {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in st.items()}))
        return pieces

    def _gather_to(self, recipient: int):
        mine = pickle.dumps(self._my_pieces())
        out = []
        for r in range(self._comm.world):
            size = torch.tensor([len(mine) if r == self._comm.rank else 0], dtype=torch.int64)
            self._comm.broadcast(size, r)
            buf = torch.zeros(int(size.item()), dtype=torch.uint8)
            if r == self._comm.rank:
                buf.copy_(torch.frombuffer(bytearray(mine), dtype=torch.uint8))
            self._comm.broadcast(buf, r)
            if self._comm.rank == recipient:
                out.extend(pickle.loads(buf.numpy().tobytes()))
        return out

    def consolidate_state_dict(self, recipient_rank: int = 0) -> None:
        """Every rank calls it; the recipient's state_dict() then holds the whole state."""
        pieces = self._gather_to(recipient_rank)
        if self._comm.rank != recipient_rank:
            self._consolidated = None
            return
        state: dict[int, dict] = {}
        for p, off, n, st in pieces:
            full = state.setdefault(p, {})
            numel = self._params[p].numel()
            for k, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0 and v.numel() == n:  # per element: this slice of it
                    full.setdefault(k, torch.zeros(numel, dtype=v.dtype))[off:off + n] = v.reshape(-1)
                elif k not in full:  # per parameter (a step count): any slice's
                    full[k] = v
        for p, st in state.items():
            for k, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0 and v.numel() == self._params[p].numel():
                    st[k] = v.reshape(self._params[p].shape)
        index = {id(p): i for i, p in enumerate(self._params)}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        self._consolidated = {"state": state, "param_groups": groups}

    def state_dict(self):
        """On the recipient of consolidate_state_dict(): the whole optimizer state, keyed
        and grouped as the wrapped torch.optim optimizer's own state_dict()."""
        if getattr(self, "_consolidated", None) is None:
            raise UsageError("failed_precondition: call consolidate_state_dict() on every rank first; state_dict() "
                             "returns the whole state on its recipient rank only")
        return self._consolidated

    def load_state_dict(self, state_dict) -> None:
        """Every rank calls it with the same whole state (a consolidated one, or a plain
        torch.optim optimizer's over the same parameters): each keeps its own slices."""
        for g, saved in zip(self.param_groups, state_dict["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        state = state_dict["state"]
        for local, g in zip(self.local.param_groups, self._local_map):
            local.update({k: v for k, v in self.param_groups[g].items() if k != "params"})
            for view, (p, off, n) in zip(local["params"], self._slices[g]):
                st = state.get(p, state.get(str(p)))
                if st is None:
                    continue
                numel = self._params[p].numel()
                self.local.state[view] = {
                    k: (v.reshape(-1)[off:off + n].clone() if torch.is_tensor(v) and v.dim() > 0 and v.numel() == numel
                        else (v.clone() if torch.is_tensor(v) else v))
                    for k, v in st.items()}
