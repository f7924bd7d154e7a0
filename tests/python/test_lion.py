"""Lion (the config's "type": "Lion", strata.optim.Lion), which torch lacks and DeepSpeed
offers for its offloaded optimizer: strata's fused kernel against Lion written in plain
PyTorch from the paper (models.Lion), at every placement and at two ranks, and its state
dicts: the reference's, loaded both ways."""
import pytest

import models
from conftest import train
from test_initialize import ROWS, STEPS, check_against_reference, check_checkpoint_resumes, config
from test_optim_state import check_state_dicts_both_ways

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


# The state dict is the plain Lion's (per parameter "step" and "exp_avg"; the groups'
# lr, betas and weight decay) and loads both ways (check_state_dicts_both_ways).
def test_lion_state_dicts_are_plain_pytorchs_and_load_both_ways(tmp_path):
    import strata

    hyper = {"lr": LION[1]["lr"], "betas": tuple(LION[1]["betas"]), "weight_decay": LION[1]["weight_decay"]}
    check_state_dicts_both_ways(tmp_path, strata.optim.Lion, models.Lion, hyper, {"step", "exp_avg"})


def test_lion_hyperparameters_out_of_range_are_refused(tmp_path):
    import strata

    cfg = config(2, "cpu", tmp_path, optimizer=("Lion", {"lr": 1e-4, "betas": [0.9, 1.5]}))
    with pytest.raises(strata.ConfigError, match="betas"):
        strata.initialize(model=models.make("gpt"), config=cfg)
    model = models.make("gpt")
    strata.fully_shard(model)
    with pytest.raises(strata.ConfigError, match="weight_decay"):
        strata.optim.Lion(model.parameters(), weight_decay=-1.0)


# A checkpoint resumes in fresh processes at two and at one rank; AdamW's is refused
# (test_initialize.check_checkpoint_resumes).
def test_a_lion_checkpoint_resumes_in_a_fresh_process(tmp_path):
    check_checkpoint_resumes(tmp_path, LION)
