"""One rank of a Python API test, started by the tests with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT set (as torchrun does).

    worker.py train SPEC_JSON OUT_JSON

SPEC: {"model", "config", "steps", "rows" (global batch), "seed", "save": dir?,
"load": dir?, "start": first step, "torch_group": pass torch.distributed's group}.
Each rank writes OUT_JSON.<rank>: its own losses, the consolidated parameters' values
by name, and the optimizer steps taken.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import models  # noqa: E402
import strata  # noqa: E402


def main():
    mode, spec, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    assert mode == "train", mode
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    model = models.make(spec["model"], spec.get("seed", 0))
    group = None
    if spec.get("torch_group"):
        dist.init_process_group("gloo")
        group = dist.group.WORLD
    engine, _, _, _ = strata.initialize(model=model, config=spec["config"], process_group=group)
    start = spec.get("start", 0)
    if spec.get("load"):
        engine.load_checkpoint(spec["load"])
    per = spec["rows"] // world
    losses = []
    for step in range(start, start + spec["steps"]):
        x, y = models.batch(spec["model"], step, spec["rows"])
        loss = models.loss_fn(spec["model"], engine(x[rank * per:(rank + 1) * per]), y[rank * per:(rank + 1) * per])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    if spec.get("save"):
        engine.save_checkpoint(spec["save"])
    params = {k: v.reshape(-1).tolist() for k, v in engine.consolidated_state_dict().items()}
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"losses": losses, "params": params, "steps": engine.global_steps, "metrics": engine.last_metrics(),
                   "memory": engine.memory_by_tier()}, f)


if __name__ == "__main__":
    main()
