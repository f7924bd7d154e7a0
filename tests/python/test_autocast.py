"""The config's torch_autocast block (DeepSpeed's): every forward through the engine
under torch.autocast in bf16, over fp32 parameters, against plain PyTorch training the
same model under torch.autocast (PyTorch's AMP), at every placement and at two ranks."""
import pytest
import torch

import models
from conftest import train
from test_initialize import ROWS, STEPS, check_against_reference, config, reference, rel


def autocast_config(stage, device, tmp_path, **strata):
    cfg = config(stage, device, tmp_path, **strata)
    cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if stage == 3 and device != "none":
        cfg["zero_optimization"]["offload_param"] = {"device": device, "nvme_path": str(tmp_path)}
    return cfg


# The references with and without autocast differ by far more than the tolerances the
# runs are held to (below), so a run that computed in fp32 (torch_autocast ignored, as
# before) fails the comparison: losses by more than 1e-4 at some step, parameters by more
# than 1e-3 (measured: 2e-2 for the GPT, at 1 and 2 ranks).
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("name", ["gpt", "awkward"])
def test_the_autocast_reference_is_not_the_fp32_one(name, world):
    amp_losses, amp_params = reference(name, world=world, autocast="cached")
    fp32_losses, fp32_params = reference(name, world=world)
    assert max(abs(a - b) / abs(b) for a, b in zip(amp_losses, fp32_losses)) > 1e-4
    assert max(rel(amp_params[k], fp32_params[k]) for k in amp_params) > 1e-3


# Stage 0, ZeRO-Offload's host and nvme state, stage 3 with the parameters on compute and
# nvme. The awkward model: frozen parameters, one that never gets a gradient, a module
# called twice, tuple outputs, a skip branch.
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("name,stage,device", [("gpt", 0, "none"), ("gpt", 1, "cpu"), ("gpt", 2, "nvme"),
                                               ("gpt", 3, "none"), ("gpt", 3, "nvme"), ("awkward", 2, "cpu"),
                                               ("awkward", 3, "nvme")])
def test_autocast_matches_plain_pytorch_autocast(tmp_path, world, name, stage, device):
    cfg = autocast_config(stage, device, tmp_path, **({"chunk_size": 1024} if name == "awkward" else {}))
    ranks = train(tmp_path, world, {"model": name, "config": cfg, "steps": STEPS, "rows": ROWS})
    # Note [autocast cache at stage 3]: without the cast cache there (src/engine/autocast.cpp).
    # One rank runs the reference's operations in its order: 1e-5. Two ranks sum their
    # fp32 gradients in another order than autograd does; a last-bit difference in a
    # weight can round its bf16 cast the other way at the next step (2^-8 of it), and Adam
    # carries that into the layer norms' biases: 3.2e-5 measured, held to 1e-4.
    check_against_reference(ranks, name, autocast="uncached" if stage == 3 else "cached",
                            param_tol=1e-5 if world == 1 else 1e-4)


def one_engine(stage, **extra):
    import strata

    cfg = {"train_batch_size": 8, "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "torch_autocast": {"enabled": True}, **extra}
    model = models.make("gpt")
    return model, strata.initialize(model=model, config=cfg)[0]


# Note [autocast cache at stage 3]: the forward runs under autocast, in bf16, with the
# cast cache at stages 0-2 and without it at stage 3 (where it would keep a bf16 copy of
# every parameter of the model until the forward ends); outside the engine's forward
# autocast is off again, and the parameters stay fp32.
@pytest.mark.parametrize("stage", [2, 3])
def test_the_forward_runs_under_autocast_with_the_cache_only_below_stage_3(stage):
    model, engine = one_engine(stage)
    seen = []
    model.blocks[0].qkv.register_forward_hook(
        lambda mod, args, out: seen.append((out.dtype, torch.is_autocast_cpu_enabled(), torch.is_autocast_cache_enabled())))
    x, y = models.batch("gpt", 0, 8)
    engine.backward(models.loss_fn("gpt", engine(x), y))
    engine.step()
    assert seen == [(torch.bfloat16, True, stage != 3)]
    assert not torch.is_autocast_cpu_enabled() and torch.is_autocast_cache_enabled()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    engine.close()


def test_autocast_beside_a_precision_section_or_in_fp16_is_refused():
    import strata

    with pytest.raises(strata.ConfigError, match=r"torch_autocast.enabled and bf16.enabled: choose one"):
        one_engine(2, bf16={"enabled": True})
    with pytest.raises(strata.ConfigError, match=r"torch_autocast.dtype float16: fp16 autocast needs loss scaling"):
        one_engine(2, torch_autocast={"enabled": True, "dtype": "fp16"})
    with pytest.raises(strata.ConfigError, match=r"torch_autocast.dtype float32: the parameters are fp32 already"):
        one_engine(2, torch_autocast={"enabled": True, "dtype": "torch.float32"})


# DeepSpeed asserts that autocast's parameters are fp32; a bf16 model is refused by name
# (before, the engine took the model's dtype as bf16.enabled and refused that, a setting
# the user never made), and left as it was.
def test_a_bf16_model_under_autocast_is_refused_by_name():
    import strata

    model = models.make("gpt").bfloat16()
    with pytest.raises(strata.ConfigError, match=r"torch_autocast computes in bf16 over float32 parameters, and the "
                                                 r"model's are bfloat16 \('wte.weight'\): convert the model with model.float\(\)"):
        strata.initialize(model=model, config={"train_batch_size": 8, "torch_autocast": {"enabled": True},
                                               "zero_optimization": {"stage": 3}})
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
