"""Lion (the config's "type": "Lion", strata.optim.Lion), which torch lacks and DeepSpeed
offers for its offloaded optimizer: strata's fused kernel against Lion written in plain
PyTorch from the paper (models.Lion), at every placement and at two ranks, and its state
dicts: the reference's, loaded both ways."""
import pytest
import torch

import models
from conftest import train
from test_initialize import ROWS, STEPS, check_against_reference, config, rel
from test_optim_state import check_same_state, plain_step, strata_step

LION = ("Lion", {"lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1})


# Stage 0 with the fused step on the compute tier; ZeRO-Offload's host and nvme state;
# stage 3 with the parameters on compute, host and nvme. The awkward model: frozen parameters, one
# that never gets a gradient (Lion's state is made at the first gradient, as the
# reference's), a module called twice, tuple outputs, a skip branch.
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("name", ["gpt", "awkward"])
@pytest.mark.parametrize("stage,device", [(0, "none"), (1, "cpu"), (2, "nvme"), (3, "none"), (3, "cpu"), (3, "nvme")])
def test_lion_matches_plain_pytorch(tmp_path, world, name, stage, device):
    cfg = config(stage, device, tmp_path, optimizer=LION)
    if stage == 3 and device != "none":
        cfg["zero_optimization"]["offload_param"] = {"device": device, "nvme_path": str(tmp_path)}
    ranks = train(tmp_path, world, {"model": name, "config": cfg, "steps": STEPS, "rows": ROWS})
    check_against_reference(ranks, name, optimizer=LION)


# At a real size: experts of 8.4M parameters, 64 MiB chunks, parameters and Lion's
# state on nvme, two ranks that route their rows to different experts (each Routed
# layer a leaf). lr 1e-4: an element whose b1*m + (1-b1)*g lies within rounding of zero
# may take the other sign than plain PyTorch's (the ranks' gradient sums round
# otherwise), a step of 2*lr in that element; at 1e-4 that stays far below 1e-5 of any
# weight's norm.
def test_lion_at_a_real_size(tmp_path):
    lion = ("Lion", {**LION[1], "lr": 1e-4})
    cfg = config(3, "nvme", tmp_path, optimizer=lion, chunk_size=16 << 20)
    cfg["zero_optimization"]["offload_param"] = {"device": "nvme", "nvme_path": str(tmp_path)}
    spec = {"model": "moe_big", "config": cfg, "steps": 3, "rows": ROWS, "leaf_modules": ["Routed"]}
    check_against_reference(train(tmp_path, 2, spec), "moe_big", steps=3, optimizer=lion)


def lion_fully_shard(tmp_path, seed=0):
    """The GPT sharded per block at stage 3 with its state and parameters on nvme, and
    strata.optim.Lion over two parameter groups."""
    import strata

    model = models.make("gpt", seed)
    offload = strata.OffloadPolicy(optimizer="nvme", params="nvme", nvme_path=str(tmp_path))
    for block in model.blocks:
        strata.fully_shard(block, offload=offload)
    strata.fully_shard(model, offload=offload)
    hyper = dict(lr=LION[1]["lr"], betas=tuple(LION[1]["betas"]), weight_decay=LION[1]["weight_decay"])
    return model, strata.optim.Lion(models.two_groups(model), **hyper)


def plain_lion(seed=0):
    model = models.make("gpt", seed)
    return model, models.Lion(models.two_groups(model), lr=LION[1]["lr"], betas=LION[1]["betas"],
                              weight_decay=LION[1]["weight_decay"])


def fsdp_step(model, opt):
    return lambda loss: (loss.backward(), opt.step(), opt.zero_grad())


# The state dict is the plain Lion's (per parameter "step" and "exp_avg"; the groups'
# lr, betas and weight decay), a run resumes from the plain one's state dicts as plain
# PyTorch does, and plain PyTorch resumes from strata's.
def test_lion_state_dicts_are_plain_pytorchs_and_load_both_ways(tmp_path):
    import strata

    model, opt = lion_fully_shard(tmp_path / "a")
    ref, ref_opt = plain_lion()
    for step in range(3):
        got = strata_step(model, fsdp_step(model, opt), "gpt", step)
        want = plain_step(ref, ref_opt, "gpt", step)
        assert abs(got - want) <= 1e-5 * abs(want), (step, got, want)
    saved = opt.state_dict()
    assert all(set(s) == {"step", "exp_avg"} for s in saved["state"].values())
    check_same_state(saved, ref_opt.state_dict())

    resumed, resumed_opt = lion_fully_shard(tmp_path / "b", seed=5)
    strata.set_model_state_dict(resumed, ref.state_dict())
    resumed_opt.load_state_dict(ref_opt.state_dict())
    back, back_opt = plain_lion(seed=9)
    back.load_state_dict(strata.get_model_state_dict(model))
    back_opt.load_state_dict(saved)
    for step in range(3, 6):
        want = plain_step(ref, ref_opt, "gpt", step)
        assert abs(strata_step(resumed, fsdp_step(resumed, resumed_opt), "gpt", step) - want) <= 1e-5 * abs(want)
        assert abs(plain_step(back, back_opt, "gpt", step) - want) <= 1e-5 * abs(want)
    check_same_state(resumed_opt.state_dict(), ref_opt.state_dict())
    got = strata.get_model_state_dict(resumed)
    assert all(rel(got[k], v) <= 1e-5 for k, v in ref.state_dict().items())


def test_lion_hyperparameters_out_of_range_are_refused(tmp_path):
    import strata

    cfg = config(2, "cpu", tmp_path, optimizer=("Lion", {"lr": 1e-4, "betas": [0.9, 1.5]}))
    with pytest.raises(strata.ConfigError, match="betas"):
        strata.initialize(model=models.make("gpt"), config=cfg)
    model = models.make("gpt")
    strata.fully_shard(model)
    with pytest.raises(strata.ConfigError, match="weight_decay"):
        strata.optim.Lion(model.parameters(), weight_decay=-1.0)


# engine.save_checkpoint at step 3 at two ranks, loaded in fresh processes at two and at
# one: the next steps' losses are the uninterrupted run's (bit for bit at the same world
# size). A checkpoint of AdamW's state is refused by a Lion engine, naming both.
def test_a_lion_checkpoint_resumes_in_a_fresh_process(tmp_path):
    cfg = config(3, "nvme", tmp_path, optimizer=LION)
    base = {"model": "gpt", "config": cfg, "rows": ROWS}
    whole = train(tmp_path, 2, {**base, "steps": STEPS}, "whole")
    ckpt = tmp_path / "ckpt"
    train(tmp_path, 2, {**base, "steps": 3, "save": str(ckpt)}, "first")
    want = [sum(r["losses"][s] for r in whole) / 2 for s in range(3, STEPS)]
    for world in (2, 1):
        rest = train(tmp_path, world, {**base, "steps": STEPS - 3, "start": 3, "load": str(ckpt), "seed": 7},
                     f"rest{world}")
        got = [sum(r["losses"][s] for r in rest) / world for s in range(STEPS - 3)]
        assert got == want if world == 2 else all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got, want)), (got, want)

    adamw = tmp_path / "adamw"
    train(tmp_path, 1, {**base, "config": config(3, "nvme", tmp_path), "steps": 1, "save": str(adamw)}, "adamw")
    with pytest.raises(AssertionError, match=r"AdamW optimizer state.*runs Lion"):
        train(tmp_path, 1, {**base, "steps": 1, "start": 1, "load": str(adamw)}, "refused")
