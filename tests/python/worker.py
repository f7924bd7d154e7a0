"""One rank of a Python API test, started by the tests with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT set (as torchrun does).

    worker.py train SPEC_JSON OUT_JSON

SPEC: {"model", "config", "steps", "rows" (global batch), "seed", "save": dir?,
"load": dir?, "start": first step, "torch_group": init torch.distributed and pass its group
(True) or not ("default"),
"external_head": register the root as a user of wte.weight,
"groups": "optimizer" | "model_parameters" (see initialize()),
"two_forwards": each rank's rows go through the model in two forwards, then one backward,
"eval_every": k: after every k-th step an evaluation forward under no_grad on the whole batch ("evals"),
"save_16bit": dir: engine.save_16bit_model(dir) after training,
"clip": max_norm: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) between
backward and step, its norms written as "norms",
"zero_grad": "none" | "zero": model.zero_grad(set_to_none=...) before every forward,
"deferred": build the model under strata.Init (its values made when the engine is built),
"meta" (with "api": "fsdp"): FSDP2's flow: build the model on the meta device, fully_shard,
model.to_empty(device="cpu"), model.init_weights() (else models.reset_all) from the rank's
seed, then the optimizer,
"set_state" (with "api": "fsdp"): strata.set_model_state_dict(models.make(model, 0)'s state
dict) once the optimizer is built,
"save_states": PATH: after training, each rank torch.saves the model's and the optimizer's
state dicts to PATH.<rank>, "load_states": PATH: loads such a file before training,
"api": "fsdp" with "fsdp": {stage, optimizer, params, nvme_path, bf16, lr, weight_decay, also: [submodule],
groups: models.two_groups() and models.inverse_schedule(), bf16_state: bf16 optimizer state and
gradient shards}
for fully_shard + strata.optim instead of strata.initialize}. WORKER_VERBOSE=1 prints
each step's loss to stderr.
Each rank writes OUT_JSON.<rank>: its own losses and the optimizer steps taken, and
OUT_JSON.<rank>.pt: the consolidated parameters' values and the model's buffers, by name.
"""
import functools
import json
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import models  # noqa: E402
import strata  # noqa: E402


class OptimizerLoop:
    """The loop a user of a strata optimizer writes (model(x), loss.backward(),
    opt.step(), opt.zero_grad()), behind worker's engine interface; self.model and
    self.opt are set by the subclass."""

    def __call__(self, x):
        return self.model(x)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.opt.step()
        self.opt.zero_grad()

    @property
    def global_steps(self):
        return self.opt.engine.steps

    def last_metrics(self):
        return self.opt.engine.last_metrics()

    def memory_by_tier(self):
        return self.opt.engine.memory_by_kind()


class FsdpEngine(OptimizerLoop):
    """fully_shard on each block (or each child), then the root; strata.optim.AdamW; the
    loop a FSDP2 user writes (loss.backward(), opt.step()), behind worker's interface."""

    def __init__(self, model, o, group, init=None):
        state = torch.bfloat16 if o.get("bf16_state") else torch.float32  # and the gradient shards
        offload = strata.OffloadPolicy(optimizer=o.get("optimizer", "none"), params=o.get("params", "none"),
                                       nvme_path=o.get("nvme_path"), optimizer_state_dtype=state,
                                       gradient_shard_dtype=state)
        mp = strata.MixedPrecisionPolicy(param_dtype=torch.bfloat16) if o.get("bf16") else None
        kw = dict(stage=o.get("stage", 3), offload=offload, mp_policy=mp, process_group=group)
        for child in (model.blocks if hasattr(model, "blocks") else model.children()) if o.get("children", True) else ():
            strata.fully_shard(child, **kw)
        for name in o.get("also", []):  # more submodules as units of their own
            strata.fully_shard(model.get_submodule(name), **kw)
        self.model = strata.fully_shard(model, **kw)
        if init is not None:  # FSDP2's meta-device flow: values after sharding
            init(model)
        params = models.two_groups(model) if o.get("groups") else model.parameters()
        self.opt = strata.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
        self.sched = models.inverse_schedule(self.opt) if o.get("groups") else None

    def step(self):
        super().step()
        if self.sched is not None:
            self.sched.step()

    def consolidated_state_dict(self):
        # Through strata.get_model_state_dict (every name, buffers too): the parameters by
        # their first names, as the other engines give them.
        full = strata.get_model_state_dict(self.model)
        assert list(full) == list(self.model.state_dict(keep_vars=True)), "not the model's state_dict keys"
        return {n: full[n] for n, _ in self.model.named_parameters()}


def initialize(model, spec, group):
    """strata.initialize as spec says: "groups": "optimizer" (a torch.optim.AdamW over
    models.two_groups(), the config without an optimizer block) or "model_parameters"
    (models.two_groups() with the config's optimizer), both with inverse_schedule()."""
    cfg, given = spec["config"], spec.get("groups")
    if given == "optimizer":
        o = cfg.pop("optimizer")["params"]
        opt = torch.optim.AdamW(models.two_groups(model), lr=o["lr"], weight_decay=o["weight_decay"])
        return strata.initialize(model=model, config=cfg, optimizer=opt, lr_scheduler=models.inverse_schedule,
                                 process_group=group)[0]
    if given == "model_parameters":
        return strata.initialize(model=model, config=cfg, model_parameters=models.two_groups(model),
                                 lr_scheduler=models.inverse_schedule, process_group=group)[0]
    return strata.initialize(model=model, config=cfg, process_group=group)[0]


class OssEngine(OptimizerLoop):
    """strata.ShardedOptimizer around a torch.optim class, two parameter groups; the loop
    an OSS user writes. "load_state": a whole torch.optim state_dict (saved with
    torch.save) to load before training; "save_state": consolidate and save it."""

    def __init__(self, model, o, group):
        self.model, self.o = model, o
        optim = getattr(torch.optim, o["optim"])
        self.opt = strata.ShardedOptimizer(models.two_groups(model), optim=optim, stage=o.get("stage", 1),
                                           process_group=group, **o["defaults"])
        if o.get("load_state"):
            self.opt.load_state_dict(torch.load(o["load_state"]))

    def consolidated_state_dict(self):
        if self.o.get("save_state"):
            self.opt.consolidate_state_dict(0)
            if int(os.environ.get("RANK", 0)) == 0:
                torch.save(self.opt.state_dict(), self.o["save_state"])
        return dict(self.model.named_parameters())


def state_dicts(engine, model) -> dict:
    """What a plain PyTorch checkpoint holds: model.state_dict() (fully_shard's way; the
    module's own for initialize at stages 1-2) and optimizer.state_dict()."""
    if isinstance(engine, FsdpEngine):
        return {"model": strata.get_model_state_dict(model), "optim": engine.opt.state_dict()}
    return {"model": model.state_dict(), "optim": engine.optimizer.state_dict()}


def load_state_dicts(engine, model, states: dict) -> None:
    if isinstance(engine, FsdpEngine):
        strata.set_model_state_dict(model, states["model"])
        engine.opt.load_state_dict(states["optim"])
    else:
        model.load_state_dict(states["model"])
        engine.optimizer.load_state_dict(states["optim"])


def init_meta(model, seed):
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    model.init_weights() if hasattr(model, "init_weights") else models.reset_all(model)


def main():
    mode, spec, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    assert mode == "train", mode
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # "seed_per_rank": every rank initializes differently; strata starts all from rank 0's.
    seed = spec.get("seed", 0) + (rank if spec.get("seed_per_rank") else 0)
    with strata.Init(enabled=bool(spec.get("deferred"))), models.meta_device() if spec.get("meta") else nullcontext():
        model = models.make(spec["model"], seed)
    if spec.get("load_model"):  # a plain state_dict saved with torch.save
        model.load_state_dict(torch.load(spec["load_model"]))
    if spec.get("leaf_modules"):  # class names in models: strata.set_leaf_modules
        strata.set_leaf_modules(model, [getattr(models, c) for c in spec["leaf_modules"]])
    if spec.get("external_head"):  # the root's forward uses wte.weight (gpt_functional_head)
        strata.register_external_parameter(model, model.wte.weight)
    group = None
    if spec.get("torch_group"):  # True: passed as process_group; "default": not passed, strata finds it
        dist.init_process_group("gloo")
        group = dist.group.WORLD if spec["torch_group"] is True else None
    if spec.get("api") == "fsdp":
        init = functools.partial(init_meta, seed=seed) if spec.get("meta") else None
        engine = FsdpEngine(model, spec["fsdp"], group, init)
        if spec.get("set_state"):  # the values of models.make(model, 0), set after the optimizer is built
            strata.set_model_state_dict(model, models.make(spec["model"], 0).state_dict())
    elif spec.get("api") == "oss":
        engine = OssEngine(model, spec["oss"], group)
    else:
        engine = initialize(model, spec, group)
    start = spec.get("start", 0)
    if spec.get("load"):
        engine.load_checkpoint(spec["load"])
    if spec.get("load_states"):
        load_state_dicts(engine, model, torch.load(spec["load_states"]))
    per = spec["rows"] // world
    losses, evals, norms = [], [], []
    freeze = spec.get("freeze")  # {"param": name, "from": step, "to": step}: frozen in [from, to)
    for step in range(start, start + spec["steps"]):
        if str(step) in spec.get("trace_steps", {}):  # {step: path} (JSON keys): that step's trace.json
            engine._eng.trace_next_step(f"{spec['trace_steps'][str(step)]}.{rank}")
        if freeze:
            dict(model.named_parameters())[freeze["param"]].requires_grad_(not freeze["from"] <= step < freeze["to"])
        if spec.get("zero_grad"):
            model.zero_grad(set_to_none=spec["zero_grad"] == "none")
        x, y = models.batch(spec["model"], step, spec["rows"])
        mine = x[rank * per:(rank + 1) * per]
        if spec.get("two_forwards"):  # two forwards before one backward (row-wise models: the same loss)
            pred = torch.cat([engine(mine[:per // 2]), engine(mine[per // 2:])])
        else:
            pred = engine(mine)
        loss = models.loss_fn(spec["model"], pred, y[rank * per:(rank + 1) * per])
        losses.append(loss.item())
        if spec.get("no_sync") and (step + 1) % spec["no_sync"]:  # a window's backwards but its last
            with engine.no_sync():
                engine.backward(loss)
            continue
        engine.backward(loss)
        if spec.get("clip"):
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])))
        engine.step()
        if spec.get("eval_every") and (step + 1) % spec["eval_every"] == 0:
            engine.eval()  # an evaluation between training steps, as DeepSpeed loops run one
            with torch.no_grad():
                x, y = models.batch(spec["model"], 10_000 + step, spec["rows"])
                evals.append(models.loss_fn(spec["model"], engine(x), y).item())
            engine.train()
        if os.environ.get("WORKER_VERBOSE"):
            print(f"rank {rank} step {step} loss {losses[-1]}", file=sys.stderr, flush=True)
    if spec.get("save"):
        engine.save_checkpoint(spec["save"])
    if spec.get("save_states"):  # every rank its own file: each holds the whole state
        torch.save(state_dicts(engine, model), f"{spec['save_states']}.{rank}")
    if spec.get("save_16bit"):
        wrote = engine.save_16bit_model(spec["save_16bit"])
        assert wrote == (rank == 0), wrote
    # The parameters as a torch file, not JSON: ResNet-18's 11.7M floats took seconds to
    # write and read back as JSON text, in every rank and every test.
    torch.save({"params": {k: v.detach().reshape(-1).clone() for k, v in engine.consolidated_state_dict().items()},
                "buffers": {k: v.clone() for k, v in model.named_buffers()}}, f"{out}.{rank}.pt")
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"losses": losses, "evals": evals, "norms": norms, "steps": engine.global_steps, "metrics": engine.last_metrics(),
                   "memory": engine.memory_by_tier()}, f)


if __name__ == "__main__":
    main()
