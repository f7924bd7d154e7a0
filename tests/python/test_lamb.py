"""Lamb (the config's "type": "Lamb", strata.optim.Lamb), which torch lacks and DeepSpeed
configs name (its FusedLamb): strata's two-pass step against Lamb written in plain
PyTorch (models.Lamb), at every placement and at two ranks, where one parameter's
elements lie in several chunks' shards on several ranks and its trust ratio must still
be the whole parameter's."""
import pytest

import models
from conftest import train
from test_initialize import ROWS, STEPS, check_against_reference, check_checkpoint_resumes, config, rel
from test_optim_state import check_state_dicts_both_ways

LAMB = ("Lamb", {"lr": 2e-3, "betas": [0.9, 0.999], "weight_decay": 0.01, "max_coeff": 10.0, "min_coeff": 0.01})


# Stage 0 on the compute tier; ZeRO-Offload's host and nvme state; stage 3 with the
# parameters on compute, host and nvme. The awkward model: frozen parameters, one that
# never gets a gradient, a module called twice, tuple outputs, a skip branch. chunk_size
# 4096 elements: most parameters span several chunks and both ranks' shards.
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("name", ["gpt", "awkward"])
@pytest.mark.parametrize("stage,device", [(0, "none"), (1, "cpu"), (2, "nvme"), (3, "none"), (3, "cpu"), (3, "nvme")])
def test_lamb_matches_plain_pytorch(tmp_path, world, name, stage, device):
    cfg = config(stage, device, tmp_path, optimizer=LAMB)
    if stage == 3 and device != "none":
        cfg["zero_optimization"]["offload_param"] = {"device": device, "nvme_path": str(tmp_path)}
    ranks = train(tmp_path, world, {"model": name, "config": cfg, "steps": STEPS, "rows": ROWS})
    check_against_reference(ranks, name, optimizer=LAMB)


# DeepSpeed's BERT configs turn bias correction off and clamp the ratio hard (max_coeff
# 0.3): both change the step, and both are taken. nvme sub-groups smaller than a shard:
# a parameter's pieces also span sub-groups.
def test_lamb_without_bias_correction_and_a_tight_clamp(tmp_path):
    lamb = ("Lamb", {**LAMB[1], "lr": 1e-2, "bias_correction": False, "max_coeff": 0.3})
    cfg = config(2, "nvme", tmp_path, optimizer=lamb)
    cfg["zero_optimization"]["sub_group_size"] = 2048
    check_against_reference(train(tmp_path, 2, {"model": "gpt", "config": cfg, "steps": STEPS, "rows": ROWS}),
                            "gpt", optimizer=lamb)


# The first pass reads gradients where the step would: shards kept on compute (copied to
# a host buffer chunk by chunk), and state split between host and nvme chunk by chunk.
@pytest.mark.parametrize("device,strata_opts", [("cpu", {"gradient_shards_on_compute": True}),
                                                ("nvme", {"optimizer_max_in_cpu": 20000})])
def test_lamb_where_the_gradients_and_state_are_split(tmp_path, device, strata_opts):
    cfg = config(3, device, tmp_path, optimizer=LAMB, **strata_opts)
    check_against_reference(train(tmp_path, 2, {"model": "awkward", "config": cfg, "steps": STEPS, "rows": ROWS}),
                            "awkward", optimizer=LAMB)


# The ratio is what makes Lamb Lamb: plain Adam's step (ratio 1) and a ratio taken per
# piece would both be far from the reference, so the parity above is not Adam's.
def test_the_trust_ratio_changes_the_run():
    adam_like = ("Lamb", {**LAMB[1], "min_coeff": 1.0, "max_coeff": 1.0})
    key = lambda o: (o[0], tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(o[1].items())))  # noqa: E731
    from test_initialize import reference
    _, lamb = reference("gpt", optimizer=key(LAMB))
    _, unit = reference("gpt", optimizer=key(adam_like))
    assert max(rel(lamb[k], unit[k]) for k in lamb) > 1e-2


# At a real size: experts of 8.4M parameters in 64 MiB chunks, parameters and state on
# nvme, two ranks that route their rows to different experts (each Routed layer a leaf).
def test_lamb_at_a_real_size(tmp_path):
    cfg = config(3, "nvme", tmp_path, optimizer=LAMB, chunk_size=16 << 20)
    cfg["zero_optimization"]["offload_param"] = {"device": "nvme", "nvme_path": str(tmp_path)}
    spec = {"model": "moe_big", "config": cfg, "steps": 3, "rows": ROWS, "leaf_modules": ["Routed"]}
    check_against_reference(train(tmp_path, 2, spec), "moe_big", steps=3, optimizer=LAMB)


# The state dict is the plain Lamb's (per parameter "step", "exp_avg", "exp_avg_sq") and
# loads both ways (check_state_dicts_both_ways).
def test_lamb_state_dicts_are_plain_pytorchs_and_load_both_ways(tmp_path):
    import strata

    hyper = {**LAMB[1], "betas": tuple(LAMB[1]["betas"])}
    check_state_dicts_both_ways(tmp_path, strata.optim.Lamb, models.Lamb, hyper, {"step", "exp_avg", "exp_avg_sq"})


@pytest.mark.parametrize("params,match", [
    ({"eps": 0.0}, "eps"),
    ({"min_coeff": 2.0, "max_coeff": 1.0}, "min_coeff"),
    ({"eps_inside_sqrt": True}, "eps_inside_sqrt"),
])
def test_lamb_settings_it_cannot_honour_are_refused(tmp_path, params, match):
    import strata

    cfg = config(2, "cpu", tmp_path, optimizer=("Lamb", {**LAMB[1], **params}))
    with pytest.raises(strata.ConfigError, match=match):
        strata.initialize(model=models.make("gpt"), config=cfg)


# bias_correction false is Lamb's (DeepSpeed's FusedAdam takes it too, strata's Adam
# does not): refused, not a warning beside a run that corrects anyway.
def test_bias_correction_off_is_refused_for_adam(tmp_path):
    import strata

    cfg = config(2, "cpu", tmp_path, optimizer=("AdamW", {"lr": 1e-3, "bias_correction": False}))
    with pytest.raises(strata.ConfigError, match="bias_correction"):
        strata.initialize(model=models.make("gpt"), config=cfg)


# A checkpoint resumes in fresh processes at two and at one rank; AdamW's is refused
# (test_initialize.check_checkpoint_resumes).
def test_a_lamb_checkpoint_resumes_in_a_fresh_process(tmp_path):
    check_checkpoint_resumes(tmp_path, LAMB)
