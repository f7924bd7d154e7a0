"""strata.initialize: DeepSpeed's entry point on strata's C++ engine.

    engine, optimizer, _, scheduler = strata.initialize(model=model, config="ds_config.json")
    for x, y in batches:
        loss = loss_fn(engine(x), y)
        engine.backward(loss)
        engine.step()

The model is not edited: every module that owns parameters becomes an engine unit with
forward hooks (_units.py). Stage, offload, precision, accumulation and clipping come from
the config.
"""
from __future__ import annotations

import contextlib
import json
import os
import re

import torch

from . import _autocast, _comm, _ds_args, _groups, _guard, _optim_state, _owners, _stand_ins, _state, _strata, _units
from . import config as _config
from ._config_schedule import ConfigScheduler
from .errors import ConfigError, NotImplementedByStrata, UsageError


class EngineOptimizer(_groups.FixedGroups, torch.optim.Optimizer):
    """What initialize() returns as the optimizer: the engine's parameter groups (one, or
    the caller's: _groups.py) with the config's settings, whose "lr", "weight_decay" and
    "betas" or "momentum" reach the engine before each step (_groups.GroupSync), so
    torch.optim.lr_scheduler schedulers can drive them. Its step() steps the engine
    (without advancing initialize's scheduler: engine.step() does both); the state lives
    in the engine's shards."""

    def __init__(self, engine: "Engine", groups: list[dict]):
        # The config's settings in every group, as torch's optimizers hold them (torch's
        # OneCycleLR looks for betas or momentum there).
        super().__init__(groups, _config.torch_hyper(engine._config))
        self._sync = _groups.GroupSync(engine._eng, self.param_groups)
        self._engine = engine

    def step(self, closure=None):  # noqa: D102 - the engine's step
        if closure is not None:
            raise UsageError("failed_precondition: strata's optimizer step takes no closure")
        return self._engine._step_engine()

    def zero_grad(self, set_to_none: bool = True):
        """Discards the gradients of backwards no step() counted (Note [zero_grad],
        engine.cpp); otherwise nothing: the engine clears them at each step."""
        self._engine._eng.zero_grad()

    def state_dict(self) -> dict:
        """torch.optim's state_dict() of the whole model, on every rank (every rank calls
        it): Note [optimizer state dicts] (_optim_state.py). engine.save_checkpoint is the
        sharded way."""
        return _optim_state.state_dict(self._engine._eng, self.param_groups)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch.optim's load_state_dict(), on every rank with the same state dict (one
        of plain torch.optim's for the same parameters loads too)."""
        _optim_state.load_state_dict(self._engine._eng, self.param_groups, self._sync, state_dict)


class Engine:
    """The model, sharded. Call it as the model; backward(loss); step()."""

    def __init__(self, module: torch.nn.Module, cfg: dict, comm, lr_scheduler=None, groups: list[dict] | None = None):
        self.module = module
        self._config = cfg
        self._last_boundary: dict | None = None  # the last step() at an accumulation boundary
        self._boundary: bool | None = None  # set_gradient_accumulation_boundary's, None: counted
        self._no_sync = False  # inside no_sync()
        self.skipped_steps = 0  # boundaries whose step was skipped (fp16 overflow), as DeepSpeed counts
        swapped = _stand_ins.prepare(module)  # strata.Init's parameters: Note [deferred parameters]
        try:
            self._build(module, cfg, comm, _groups_remapped(groups, swapped))
        except BaseException:
            if getattr(self, "_eng", None) is None:  # not built: the model is as it was given
                swapped.undo()
            raise
        self.lr_scheduler = lr_scheduler(self.optimizer) if callable(lr_scheduler) and not hasattr(
            lr_scheduler, "step") else lr_scheduler
        if self.lr_scheduler is None and isinstance(self._config.get("scheduler"), dict):
            self.lr_scheduler = ConfigScheduler(self, self._config["scheduler"].get("type", ""))

    def _build(self, module, cfg: dict, comm, groups) -> None:
        _units.check_compute_dtype(_units.compute_dtype(cfg))
        _units.check_materialized(module)
        self._units = _units.units_of(module)
        if not any(u.params for u in self._units):
            raise ConfigError("invalid_argument: the model has no parameters: nothing to train or shard")
        cfg = self._config = _units.with_model_dtype(cfg, _units.named_params(self._units))
        params = [p for u in self._units for p in u.params]
        _units.admit_params(params)
        _units.sync_from_rank0(comm, _units.model_tensors(module))
        _stand_ins.sync(comm, params)
        engine_groups = _groups.engine_groups(groups) if groups else []
        self._eng = _strata.Engine(_units.engine_units(self._units), comm, json.dumps(cfg),
                                   param_groups=engine_groups, init=_stand_ins.initializer(params))
        _stand_ins.forget(params)
        self._eng.set_buffer_source(_units.buffer_source(module))
        self._owner = _owners.register(self._eng, comm, (p for u in self._units for p in u.params))
        _units.attach(self._eng, self._units, module)
        self._watched = _guard.watch(self._units) if self._eng.stage == 3 else None
        _units.cast_buffers(module, _units.compute_dtype(cfg))
        self._autocast = _autocast.forward_context(cfg, self.device.type, self._eng.stage)
        if engine_groups:
            decay = _config.torch_hyper(cfg)["weight_decay"]
            torch_groups = [{"params": list(g[0]), "weight_decay": decay if g[2] is None else g[2]}
                            for g in engine_groups]
        else:
            torch_groups = [{"params": [p for p in dict.fromkeys(p for u in self._units for p in u.params)
                                        if p.requires_grad]}]
        self.optimizer = EngineOptimizer(self, torch_groups)

    # -- training ---------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        try:
            with self._autocast():  # config torch_autocast
                return self.module(*args, **kwargs)
        except BaseException:
            self._eng.abort_forward()  # Note [a forward that raised] (access_driver.cpp)
            raise

    forward = __call__

    def backward(self, loss: torch.Tensor, retain_graph: bool = False, scale_wrt_gas: bool = True) -> None:
        """loss.backward(), scaled for fp16 loss scaling and gradient accumulation, as
        DeepSpeed's: retain_graph keeps the graph for another backward (stages 0-2: at
        stage 3 a forward takes one backward); scale_wrt_gas=False leaves the division
        by gradient_accumulation_steps to the caller."""
        self._eng.backward(loss, retain_graph, scale_wrt_gas)

    def step(self) -> dict:
        """At the accumulation boundary: reduce, clip, step the optimizer, advance the
        scheduler. Inside the window it only counts. Returns the step's result."""
        if self._no_sync:
            raise UsageError("failed_precondition: step() inside no_sync(): the backwards there accumulate into a "
                             "window the first backward after it ends; call step() after that one (as DeepSpeed "
                             "refuses step() inside its no_sync())")
        # Through the optimizer's step(), which a torch scheduler wraps to count calls.
        r = self.optimizer.step()
        if r["boundary"] and r["applied"] and self._torch_scheduler() is not None:
            self.lr_scheduler.step()
            self.optimizer._sync.pull()
        return r

    def _torch_scheduler(self):
        """The caller's scheduler, which step() advances and checkpoints hold; None when
        there is none or it is the config's schedule (the engine steps that one)."""
        return None if isinstance(self.lr_scheduler, ConfigScheduler) else self.lr_scheduler

    def _step_engine(self) -> dict:
        # A torch scheduler (or the user) may have set the groups; the config's scheduler
        # sets the next step's lr in the engine.
        r = self.optimizer._sync.around_step(self._eng.step)
        if r["boundary"]:
            self._last_boundary = r
            self.skipped_steps += not r["applied"]
        return r

    def clip_grad_norm(self, max_norm: float, norm_type: float = 2.0) -> float:
        return self._eng.clip_grad_norm(max_norm, norm_type)

    # -- DeepSpeed's engine methods that training loops call ----------------------------
    def train(self, mode: bool = True) -> "Engine":
        self.module.train(mode)
        return self

    def eval(self) -> "Engine":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Discards the gradients of backwards no step() counted (a GAN's generator
        backward through this engine's discriminator); otherwise nothing: the engine
        clears them at each step (Note [zero_grad], engine.cpp)."""
        self._eng.zero_grad()

    def parameters(self, recurse: bool = True):
        return self.module.parameters(recurse)

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        return self.module.named_parameters(prefix, recurse)

    def is_gradient_accumulation_boundary(self) -> bool:
        """Whether the next backward ends an accumulation window (its step() steps)."""
        return self._eng.at_boundary

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        """DeepSpeed's: from now on the caller says whether the next backward and step()
        end the accumulation window (a step() where it is True steps, however many
        micro-steps came before), instead of the engine counting
        gradient_accumulation_steps of them; None goes back to counting. Each backward's
        loss is still divided by gradient_accumulation_steps (Note [accumulation
        boundary], engine.cpp)."""
        if is_boundary is not None and not isinstance(is_boundary, bool):
            raise ConfigError(f"invalid_argument: set_gradient_accumulation_boundary takes True, False or None, "
                              f"not {is_boundary!r}")
        if self._no_sync:
            raise UsageError("failed_precondition: set_gradient_accumulation_boundary inside no_sync(), which "
                             "holds the boundary off until it exits")
        self._eng.set_boundary(is_boundary)
        self._boundary = is_boundary

    @contextlib.contextmanager
    def no_sync(self):
        """DeepSpeed's (and DDP's): the backwards inside accumulate on this rank and reduce
        nothing; the first backward after it ends their window, its step() steps them all
        (summed, as torch's .grad sums). step() inside is refused, as DeepSpeed's is.
        DeepSpeed allows it at stages 0-1 only; strata accumulates on the rank before the
        boundary at every stage, so here it works at stages 2-3 too (the boundary is held
        off inside: Note [accumulation boundary], engine.cpp)."""
        if self._no_sync:
            raise UsageError("failed_precondition: no_sync() inside no_sync()")
        self._eng.set_boundary(False)
        self._no_sync = True
        try:
            yield
        finally:
            self._no_sync = False
            self._eng.set_boundary(self._boundary)

    # The batch keys as DeepSpeed resolves them at this world size: train_batch_size =
    # micro * accumulation * world, the one left out (or "auto") derived.
    def gradient_accumulation_steps(self) -> int:
        return self._eng.batch["gradient_accumulation_steps"]

    def train_batch_size(self) -> int:
        return self._eng.batch["train_batch_size"]

    def train_micro_batch_size_per_gpu(self) -> int:
        return self._eng.batch["train_micro_batch_size_per_gpu"]

    def get_global_grad_norm(self) -> float | None:
        """The global gradient norm (before clipping) of the last step at an accumulation
        boundary; None before the first."""
        return None if self._last_boundary is None else self._last_boundary["grad_norm"]

    def was_step_applied(self) -> bool:
        """Whether the last step at an accumulation boundary updated the parameters (False
        when fp16 loss scaling found an overflow and skipped it)."""
        return self._last_boundary is not None and self._last_boundary["applied"]

    @property
    def global_rank(self) -> int:
        return self._eng.rank

    @property
    def world_size(self) -> int:
        return self._eng.world

    dp_world_size = world_size

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    @property
    def device(self) -> torch.device:
        """Where the model computes, for its inputs (`x.to(engine.device)`): the CPU in
        this build."""
        return torch.device("cpu")

    def deepspeed_io(self, dataset, batch_size: int | None = None, route=None, pin_memory: bool = True,
                     data_sampler=None, collate_fn=None, num_local_io_workers: int | None = None):
        """DeepSpeed's: a DataLoader of this rank's micro-batches of `dataset`
        (train_micro_batch_size_per_gpu rows unless batch_size says), through a
        DistributedSampler over the ranks unless data_sampler is given; the config's
        dataloader_drop_last drops a last partial batch. route is DeepSpeed's label for
        the loader's use; pin_memory changes nothing here (pinning needs CUDA)."""
        del route, pin_memory
        return _ds_args.data_loader(dataset, batch_size or self.train_micro_batch_size_per_gpu(), self.world_size,
                                    self.global_rank, self._config.get("dataloader_drop_last") is True, collate_fn,
                                    data_sampler, num_local_io_workers)

    def zero_optimization_stage(self) -> int:
        return self._eng.stage

    def bfloat16_enabled(self) -> bool:
        """Whether the model computes in bf16: the config's bf16.enabled, or a bf16 model's
        own dtype (Note [the model's dtype], _units.py)."""
        return _units.compute_dtype(self._config) == torch.bfloat16

    def fp16_enabled(self) -> bool:
        return _units.compute_dtype(self._config) == torch.float16

    def __getattr__(self, name: str):
        # As DeepSpeed's engine: what the engine does not have, the model may
        # (engine.config, engine.generate(...), engine.gradient_checkpointing_enable()).
        # Only called when the normal lookup failed; dunders are not passed (copy, pickle).
        module = self.__dict__.get("module")
        if module is None or name.startswith("__"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        try:
            return getattr(module, name)
        except AttributeError:
            raise AttributeError(f"'{type(self).__name__}' object and its module ({type(module).__name__}) have no "
                                 f"attribute '{name}'") from None

    # -- state ------------------------------------------------------------------------
    @property
    def global_steps(self) -> int:
        return self._eng.steps

    def get_lr(self) -> list[float]:
        """Each parameter group's learning rate."""
        return self._eng.group_lrs

    def memory_by_tier(self) -> dict:
        """Bytes this rank holds per tier (compute, host, nvme) and kind (params, grads,
        optimizer, buffers)."""
        return self._eng.memory_by_kind()

    def last_metrics(self) -> dict:
        """The last optimizer step's figures: bytes moved per link, peaks, times."""
        return self._eng.last_metrics()

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 values of every parameter, by name, on every rank."""
        values = self._eng.consolidated_params()
        return dict(zip(self._eng.param_names, values))

    def save_16bit_model(self, save_dir, save_filename: str = "pytorch_model.bin") -> bool:
        """Every rank calls it (the values are gathered). Rank 0 writes
        save_dir/save_filename with torch.save: the model's whole state_dict (every
        parameter under each of its names, persistent buffers), parameters in the compute
        dtype (bf16/fp16 when enabled, else fp32), loadable with model.load_state_dict.
        As DeepSpeed's; True on the rank that wrote it."""
        values = dict(zip(self._eng.param_names, self._eng.consolidated_params()))
        if self._eng.rank != 0:
            return False
        state = _state.full_state_dict(self.module, values, _units.compute_dtype(self._config))
        os.makedirs(save_dir, exist_ok=True)
        torch.save(state, os.path.join(os.fspath(save_dir), save_filename))
        return True

    # -- checkpoints (docs/checkpoints.md) --------------------------------------------
    @staticmethod
    def _step_of(tag, default: int) -> int:
        if tag is None:
            return default
        if isinstance(tag, int):
            return tag
        m = re.fullmatch(r"(?:step-|global_step)(\d+)", str(tag))
        if not m:
            raise ConfigError(f"invalid_argument: checkpoint tag {tag!r}: strata names checkpoints by step; give an "
                              "int, 'step-N' or 'global_stepN'")
        return int(m.group(1))

    # DeepSpeed's signatures, so that its training scripts' calls run unchanged (keep:
    # strata's own, keyword only).
    def save_checkpoint(self, save_dir, tag=None, client_state: dict | None = None, save_latest: bool = True,
                        exclude_frozen_parameters: bool = False, *, keep: int = 0) -> str:
        """Every rank calls it. Writes save_dir/step-N (N: tag, else global_steps) and
        points save_dir/latest at it (not with save_latest=False); keep > 0 keeps only the
        newest `keep`."""
        if exclude_frozen_parameters:
            raise NotImplementedByStrata("unimplemented: save_checkpoint(exclude_frozen_parameters=True): a strata "
                                         "checkpoint holds every parameter (frozen ones included), so that it loads "
                                         "at any world size, stage or chunk size")
        step = self._step_of(tag, self.global_steps)
        client = {"client_state": client_state or {}}
        if self._torch_scheduler() is not None and hasattr(self.lr_scheduler, "state_dict"):
            client["lr_scheduler"] = _jsonable(self.lr_scheduler.state_dict())
        path = self._eng.save_checkpoint(os.fspath(save_dir), step, json.dumps(client), json.dumps(self._config), keep,
                                         bool(save_latest))
        return os.fspath(path)

    def load_checkpoint(self, load_dir, tag=None, load_module_strict: bool = True, load_optimizer_states: bool = True,
                        load_lr_scheduler_states: bool = True, load_module_only: bool = False, custom_load_fn=None):
        """Every rank calls it. Loads save_dir/step-N (tag), else the latest, saved at any
        world size, stage or chunk size. load_module_only: the parameters and buffers only
        (to fine-tune from a checkpoint): the optimizer state, the learning rates, the
        scheduler and the step count stay this engine's. Returns (path, client_state)."""
        if not load_module_strict:
            raise NotImplementedByStrata("unimplemented: load_checkpoint(load_module_strict=False): a checkpoint's "
                                         "parameters must be the model's, by name and shape (a partial state dict "
                                         "loads with model.load_state_dict(sd, strict=False) before strata.initialize)")
        if custom_load_fn is not None:
            raise NotImplementedByStrata("unimplemented: load_checkpoint(custom_load_fn=...): strata reads its own "
                                         "sharded format (docs/checkpoints.md)")
        path = os.fspath(load_dir)
        if tag is not None:
            path = os.path.join(path, f"step-{self._step_of(tag, 0)}")
        loaded, _, client_json = self._eng.load_checkpoint(path, load_optimizer_states and not load_module_only,
                                                           bool(load_module_only))
        client = json.loads(client_json) if client_json not in ("", "null") else {}
        if load_module_only:
            return os.fspath(loaded), client.get("client_state", {})
        if load_lr_scheduler_states and self._torch_scheduler() is not None and "lr_scheduler" in client:
            self.lr_scheduler.load_state_dict(client["lr_scheduler"])
        self.optimizer._sync.publish()  # the checkpoint's lrs, weight decays, betas or momentum
        return os.fspath(loaded), client.get("client_state", {})

    def close(self) -> None:
        """Removes the hooks and releases the engine (its swap files go)."""
        _units.detach(self._units)
        _owners.unregister(self._owner)
        self._owner = None
        if self._watched is not None:
            _guard.unwatch(self._watched)
            self._watched = None
        self._eng.close()


def _groups_remapped(groups: list[dict] | None, swapped) -> list[dict] | None:
    """The caller's groups over the parameters that replaced strata.Init's."""
    if not groups or not swapped:
        return groups
    return [{**g, "params": _stand_ins.remap(g["params"], swapped)} for g in groups]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    raise ConfigError(f"invalid_argument: the lr scheduler's state holds a {type(x).__name__}, which a checkpoint "
                      "cannot store as JSON")


def initialize(model: torch.nn.Module = None, config=None, optimizer=None, model_parameters=None, lr_scheduler=None,
               process_group=None, *, args=None, training_data=None, collate_fn=None, config_params=None,
               mpu=None, mesh_param=None, dist_init_required=None, distributed_port=None):
    """DeepSpeed-style: returns (engine, optimizer, data loader or None, lr_scheduler).

    config: a path or a dict in the DeepSpeed vocabulary (`strata config keys`); or
        config_params (DeepSpeed's older name), or args.deepspeed_config (args: parsed by a
        parser strata.add_config_arguments extended). One of them, not two.
    optimizer: None (the config's "optimizer" block: its "type" may also be "Lion" or "Lamb"), or a
        torch.optim AdamW, Adam, SGD or Adagrad whose type, hyperparameters and parameter
        groups the fused engine takes over (groups may differ in lr and weight_decay).
    model_parameters: the parameters to train, or parameter groups as torch.optim takes
        them (dicts with "params", and "lr" and "weight_decay" of their own: _groups.py);
        None means every parameter that requires a gradient. Any other trainable
        parameter must be frozen (requires_grad=False).
    lr_scheduler: a torch.optim.lr_scheduler built on the returned optimizer, or a
        callable taking that optimizer and returning one. With the config's "scheduler"
        block instead, the fourth value is a view of that schedule (_config_schedule.py).
    process_group: a torch.distributed group to run on; default: strata's own Gloo group
        from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (one rank when they are unset).
    training_data: a torch Dataset: the third value is then a DataLoader of this rank's
        micro-batches (engine.deepspeed_io), with collate_fn.
    mpu, mesh_param: DeepSpeed's model parallelism, refused (strata is data-parallel).
    dist_init_required, distributed_port: how DeepSpeed starts torch.distributed; strata
        starts its own communicator from the launcher's variables, so they change nothing.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"invalid_argument: model must be a torch.nn.Module, got {type(model).__name__}")
    _ds_args.refuse_model_parallel(mpu, mesh_param)
    cfg = _config.load(_ds_args.resolve_config(config, config_params, args))
    groups = None
    if model_parameters is not None:
        groups = _groups.normalize(model_parameters)
        _groups.check_shared(groups, _config.torch_hyper(cfg))
    if optimizer is not None:
        if "optimizer" in cfg:
            raise ConfigError("invalid_argument: an optimizer was passed and the config has an \"optimizer\" block; "
                              "give one of the two")
        cfg["optimizer"], groups = _config.optimizer_block(optimizer)
    if groups is not None:
        wanted = {id(p) for g in groups for p in g["params"]}
        extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in wanted]
        if extra:
            raise ConfigError("invalid_argument: model_parameters leaves out trainable parameters "
                              f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; freeze them "
                              "(requires_grad=False) or pass them")
    if lr_scheduler is not None and isinstance(cfg.get("scheduler"), dict):
        raise ConfigError("invalid_argument: an lr_scheduler was passed and the config has a \"scheduler\" block; "
                          "give one of the two")
    timeout_s = float(cfg.get("strata", {}).get("comm_timeout_s", 300.0))
    engine = Engine(model, cfg, _comm.communicator(process_group, timeout_s), lr_scheduler, groups)
    loader = None if training_data is None else engine.deepspeed_io(training_data, collate_fn=collate_fn)
    return engine, engine.optimizer, loader, engine.lr_scheduler

