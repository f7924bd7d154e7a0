"""strata.initialize on an unmodified plain-PyTorch model, at world sizes 1 and 2, in
real processes, against plain PyTorch training of the same model in this process."""
import pytest
import torch

import models
from conftest import train

STEPS, ROWS, LR, WD = 6, 8, 3e-3, 0.01


def reference(name, steps=STEPS, rows=ROWS):
    """The same model, data and AdamW, in plain PyTorch: losses and final parameters."""
    model = models.make(name)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    losses = []
    for step in range(steps):
        x, y = models.batch(name, step, rows)
        opt.zero_grad()
        loss = models.loss_fn(name, model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().reshape(-1) for k, v in model.named_parameters()}


def config(stage, device="none", tmp=None, **strata):
    cfg = {"train_batch_size": ROWS, "zero_optimization": {"stage": stage},
           "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}},
           "strata": {"chunk_size": 4096, **strata}}
    if device != "none":
        cfg["zero_optimization"]["offload_optimizer"] = {"device": device, "nvme_path": str(tmp)}
    return cfg


def rel(a, b):
    a, b = torch.tensor(a), torch.as_tensor(b)
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check_against_reference(ranks, name="gpt"):
    want_losses, want_params = reference(name)
    world = len(ranks)
    got_losses = [sum(r["losses"][s] for r in ranks) / world for s in range(STEPS)]
    for s, (g, w) in enumerate(zip(got_losses, want_losses)):
        assert abs(g - w) <= 1e-5 * abs(w), f"step {s}: loss {g} vs plain PyTorch {w}"
    params = ranks[0]["params"]
    # The tied head is the embedding: one parameter, under its first name.
    assert set(params) == set(want_params) - {"head.weight"}, sorted(params)
    for k, v in params.items():
        assert rel(v, want_params[k]) <= 1e-5, f"{k}: relative error {rel(v, want_params[k])}"
    for r in ranks[1:]:
        assert r["params"] == params, "ranks disagree on the consolidated parameters"
    assert all(r["steps"] == STEPS for r in ranks)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("stage,device", [(1, "cpu"), (2, "cpu"), (3, "none"), (3, "nvme")])
def test_gpt_matches_plain_pytorch(tmp_path, world, stage, device):
    spec = {"model": "gpt", "config": config(stage, device, tmp_path), "steps": STEPS, "rows": ROWS}
    check_against_reference(train(tmp_path, world, spec))
