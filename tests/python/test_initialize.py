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
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD)
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
    # Persistence threshold 0: DeepSpeed's default keeps parameters under 1e5 elements
    # gathered for good, which would be all of these small models.
    cfg = {"train_batch_size": ROWS, "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
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
    # A tied or shared parameter is one parameter, under its first name (as named_parameters()).
    assert set(params) == set(want_params), sorted(params)
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


# Frozen and never-used parameters, a module called twice, tuple and dict outputs, a
# shared parameter and a data-dependent branch (the trace is invalidated and steps fall
# back to fetching on demand); at stage 3 also with a compute budget of 3/4 of the
# model's gathered bytes, so chunks are evicted and gathered again within a step.
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("stage,device,budget", [(1, "cpu", 0), (2, "nvme", 0), (3, "cpu", 0), (3, "nvme", 0),
                                                 (3, "cpu", 24 << 10)])
def test_awkward_model_matches_plain_pytorch(tmp_path, world, stage, device, budget):
    cfg = config(stage, device, tmp_path, chunk_size=1024, **({"compute_budget": budget} if budget else {}))
    if stage == 3 and device != "none":
        cfg["zero_optimization"]["offload_param"] = {"device": device, "nvme_path": str(tmp_path)}
    spec = {"model": "awkward", "config": cfg, "steps": STEPS, "rows": ROWS}
    ranks = train(tmp_path, world, spec)
    check_against_reference(ranks, "awkward")
    if budget:
        model_bytes = 4 * sum(p.numel() for p in models.make("awkward").parameters())
        for r in ranks:
            m = r["metrics"]
            # Never the whole model in compute at once, yet every unit ran each step.
            assert m["peak"]["compute"] <= budget < model_bytes, m


# Saved with engine.save_checkpoint at step 3, loaded in fresh processes: at the same
# world size the next steps' losses are those of the uninterrupted run, bit for bit; at
# the other world size within 1e-5 (the order of sums differs).
@pytest.mark.parametrize("stage,device", [(2, "cpu"), (3, "nvme")])
def test_checkpoint_resumes_in_a_fresh_process(tmp_path, stage, device):
    cfg = config(stage, device, tmp_path)
    whole = train(tmp_path, 2, {"model": "gpt", "config": cfg, "steps": STEPS, "rows": ROWS}, "whole")
    ckpt = tmp_path / "ckpt"
    train(tmp_path, 2, {"model": "gpt", "config": cfg, "steps": 3, "rows": ROWS, "save": str(ckpt)}, "first")
    assert (ckpt / "latest").read_text().strip() == "step-3"
    for world in (2, 1):
        rest = train(tmp_path, world, {"model": "gpt", "config": cfg, "steps": STEPS - 3, "rows": ROWS, "start": 3,
                                       "load": str(ckpt), "seed": 7}, f"rest{world}")
        assert all(r["steps"] == STEPS for r in rest)
        got = [sum(r["losses"][s] for r in rest) / world for s in range(STEPS - 3)]
        want = [sum(r["losses"][s] for r in whole) / 2 for s in range(3, STEPS)]
        if world == 2:
            assert got == want
        else:
            assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got, want)), (got, want)


# bf16 compute with fp32 master weights: the losses track the fp32 reference within 2%.
@pytest.mark.parametrize("world", [1, 2])
def test_bf16_tracks_fp32(tmp_path, world):
    cfg = config(3, "cpu", tmp_path)
    cfg["bf16"] = {"enabled": True}
    ranks = train(tmp_path, world, {"model": "gpt", "config": cfg, "steps": STEPS, "rows": ROWS})
    want, _ = reference("gpt")
    got = [sum(r["losses"][s] for r in ranks) / world for s in range(STEPS)]
    for s, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= 0.02 * abs(w), f"step {s}: bf16 loss {g} vs fp32 {w}"
