"""strata.fully_shard (FSDP2-style) on plain-PyTorch models: fully_shard per block, then
the root; strata.optim.AdamW; loss.backward() and opt.step(), at world sizes 1 and 2,
against plain PyTorch in this process (test_initialize.reference)."""
import pytest
import torch

import models
from conftest import train
from test_initialize import (LR, ROWS, STEPS, WD, assert_ranks_route_differently, check_against_reference,
                             check_groups_against_reference, reference, rel)


def spec(name, tmp_path, **fsdp):
    return {"model": name, "api": "fsdp", "steps": STEPS, "rows": ROWS,
            "fsdp": {"lr": LR, "weight_decay": WD, "nvme_path": str(tmp_path), **fsdp}}


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("stage,optimizer,params", [(2, "cpu", "none"), (3, "none", "none"), (3, "cpu", "cpu"),
                                                    (3, "nvme", "nvme")])
def test_gpt_matches_plain_pytorch(tmp_path, world, stage, optimizer, params):
    check_against_reference(train(tmp_path, world, spec("gpt", tmp_path, stage=stage, optimizer=optimizer,
                                                         params=params)))


@pytest.mark.parametrize("world", [1, 2])
def test_awkward_model_matches_plain_pytorch(tmp_path, world):
    check_against_reference(train(tmp_path, world, spec("awkward", tmp_path, optimizer="cpu", params="cpu")), "awkward")


# channels_last convolution weights (not contiguous): fully_shard makes them contiguous.
def test_channels_last_model_matches_plain_pytorch(tmp_path):
    ranks = train(tmp_path, 2, spec("cnn_channels_last", tmp_path, stage=3, optimizer="nvme", params="nvme"))
    check_against_reference(ranks, "cnn_channels_last")


# Activation checkpointing with a plain loss.backward(): the end of backward is found by
# the autograd engine's callback, which a reentrant checkpoint's nested backward must not
# trigger early.
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("name", ["gpt_checkpointed", "gpt_checkpointed_reentrant"])
def test_activation_checkpointing_matches_plain_pytorch(tmp_path, world, name):
    ranks = train(tmp_path, world, spec(name, tmp_path, stage=3, optimizer="nvme", params="nvme"))
    check_against_reference(ranks, name)
    assert all(r["metrics"]["scheduled"] and r["metrics"]["trace_invalidations"] == 0 for r in ranks), ranks[0]["metrics"]


# A mixture of experts whose two ranks route their rows to different experts, each
# Routed layer a fully_shard unit holding its whole subtree: the gathers are the same on
# every rank, the gradients are not (an expert no row chose gets none), and stage 3
# reduces each chunk when its unit's backward ends (Note [reductions at access ends],
# src/engine/grad_reducer.h), as FSDP2 does. Before, the ranks reduced chunks as they
# became ready and hung in the first backward (STRATA_COMM_CHECK=1: "collective order
# diverged at #88: rank 0 issued all_gather ... but rank 1 issued reduce_scatter").
def test_rank_dependent_routing_matches_plain_pytorch(tmp_path):
    assert_ranks_route_differently("moe")
    check_against_reference(train(tmp_path, 2, spec("moe", tmp_path, stage=3, optimizer="nvme", params="nvme")), "moe")


# strata.optim.AdamW over two parameter groups (no decay on norms and biases, another lr
# for the rest), a torch scheduler moving each group's lr.
@pytest.mark.parametrize("world", [1, 2])
def test_parameter_groups_match_torch_optim(tmp_path, world):
    ranks = train(tmp_path, world, spec("gpt", tmp_path, stage=3, optimizer="nvme", params="nvme", groups=True))
    check_groups_against_reference(ranks, world)


@pytest.mark.parametrize("world,name", [(1, "reparametrized_spectral"), (2, "reparametrized")])
def test_reparametrized_layers_match_plain_pytorch(tmp_path, world, name):
    check_against_reference(train(tmp_path, world, spec(name, tmp_path, stage=3, optimizer="cpu", params="cpu")), name)


# The token embedding sharded as a unit of its own, its weight used by the root's forward
# (the LM head): adopted by the root's unit where the head uses it (Note [adopted
# parameters]; before, a UsageError), or registered ahead as an external parameter of
# the root.
@pytest.mark.parametrize("registered", [False, True])
def test_parameter_used_outside_its_module(tmp_path, registered):
    s = spec("gpt_functional_head", tmp_path, optimizer="cpu", params="cpu", also=["wte"])
    s["external_head"] = registered
    check_against_reference(train(tmp_path, 2, s), "gpt_functional_head")


@pytest.mark.parametrize("world", [1, 2])
def test_bf16_tracks_fp32(tmp_path, world):
    ranks = train(tmp_path, world, spec("gpt", tmp_path, optimizer="cpu", bf16=True))
    want, _ = reference("gpt")
    got = [sum(r["losses"][s] for r in ranks) / world for s in range(STEPS)]
    assert all(abs(g - w) <= 0.02 * abs(w) for g, w in zip(got, want)), (got, want)


# OffloadPolicy(optimizer_state_dtype=bf16, gradient_shard_dtype=bf16): the engine's bf16
# state (strata.optimizer_state_dtype, strata.gradient_shard_dtype) from fully_shard, as a
# 5.9B model needs to fit the disk. Against plain PyTorch with each gradient and state
# tensor rounded to bf16: the two round fp32 values that can differ by an fp32 rounding, so
# now and then an element lands one bf16 step apart (1.1% of the elements at world 1, each
# about lr * 2^-8): within 1e-5 over the whole model (measured 4.2e-6 at worlds 1 and 2),
# 2e-4 in any element (5.2e-5), where bf16 state is 4.4e-5 from fp32 state. Optimizer state and gradient shards take 2/3 and 1/2 of
# their fp32 bytes wherever they live.
@pytest.mark.parametrize("world,stage,optimizer,params", [(1, 3, "nvme", "nvme"), (2, 3, "nvme", "nvme"),
                                                          (2, 3, "cpu", "cpu"), (1, 3, "none", "none"),
                                                          (1, 2, "cpu", "none")])
def test_bf16_optimizer_state_and_gradient_shards(tmp_path, world, stage, optimizer, params):
    s = spec("gpt", tmp_path, stage=stage, optimizer=optimizer, params=params, bf16_state=True)
    ranks = train(tmp_path, world, s, name="bf16")
    fp32 = train(tmp_path, world, spec("gpt", tmp_path, stage=stage, optimizer=optimizer, params=params), name="fp32")
    want_losses, want = reference("gpt", world=world, bf16_state=True)
    _, plain = reference("gpt", world=world)
    got_losses = [sum(r["losses"][i] for r in ranks) / world for i in range(STEPS)]
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got_losses, want_losses)), (got_losses, want_losses)
    got = torch.cat([ranks[0]["params"][k] for k in want])
    assert rel(got, torch.cat(list(want.values()))) <= 1e-5
    assert (got - torch.cat(list(want.values()))).abs().max().item() <= 2e-4
    assert rel(got, torch.cat(list(plain.values()))) >= 1e-5  # the state was bf16
    tier = "compute" if optimizer == "none" else optimizer.replace("cpu", "host")
    for r, f in zip(ranks, fp32):
        assert 3 * r["memory"][tier]["optimizer"] == 2 * f["memory"][tier]["optimizer"] > 0, (r["memory"], f["memory"])
        assert 2 * r["memory"][tier]["grads"] == f["memory"][tier]["grads"] > 0, (r["memory"], f["memory"])


def test_misuse_is_a_clear_error():
    import strata

    model = models.make("gpt")
    strata.fully_shard(model.blocks[0])
    with pytest.raises(strata.UsageError, match="already applied"):
        strata.fully_shard(model.blocks[0])
    strata.fully_shard(model)
    # A plain torch.optim optimizer: the forward is refused, naming strata.optim.
    torch.optim.AdamW(model.parameters())
    x, y = models.batch("gpt", 0, 4)
    with pytest.raises(strata.UsageError, match=r"strata\.optim\.AdamW"):
        model(x)
    with pytest.raises(strata.ConfigError, match="leaves out trainable parameters"):
        strata.optim.AdamW(list(model.parameters())[:3])
    with pytest.raises(strata.ConfigError, match="in no sharded module"):
        strata.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    # A container's forward never runs (its children are called by its parent): refused
    # when sharded, not at the first forward that needs its parameters.
    with pytest.raises(strata.ConfigError, match="ModuleList, which has no forward"):
        strata.fully_shard(models.make("gpt").blocks)
    with pytest.raises(strata.ConfigError, match="needs stage 3"):
        strata.fully_shard(models.make("gpt"), stage=2, offload=strata.OffloadPolicy(params="cpu"))
    with pytest.raises(strata.ConfigError, match=r"optimizer_state_dtype torch.float16: expected torch.float32 or "):
        strata.fully_shard(models.make("gpt"), offload=strata.OffloadPolicy(optimizer_state_dtype=torch.float16))
    bf16_grads = strata.OffloadPolicy(gradient_shard_dtype=torch.bfloat16)
    inner = models.make("gpt")
    strata.fully_shard(inner.blocks[0], offload=bf16_grads)
    with pytest.raises(strata.ConfigError, match=r"settings differ from a submodule's \({'gradient_shard_dtype'"):
        strata.fully_shard(inner, offload=strata.OffloadPolicy())
    opt = strata.optim.AdamW(model.parameters(), lr=1e-3)
    models.loss_fn("gpt", model(x), y).backward()
    assert opt.step()["applied"]
    with pytest.raises(strata.UsageError, match="already built"):
        strata.optim.AdamW(model.parameters())


def test_every_rank_starts_from_rank_0s_parameters(tmp_path):
    s = spec("gpt", tmp_path, optimizer="cpu")
    s["seed_per_rank"] = True  # ranks initialize differently; strata starts all from rank 0's
    check_against_reference(train(tmp_path, 2, s))


class _Mesh:
    """A DeviceMesh as fully_shard reads one (torch 1.13 has none)."""

    def __init__(self, ndim):
        self.ndim = ndim

    def get_group(self):
        return None  # strata's own group


def test_fsdp2_arguments_are_taken():
    import strata

    # FSDP2's spelling: offload_policy=CPUOffloadPolicy(), a 1-D mesh, reshard_after_forward,
    # and a MixedPrecisionPolicy with output_dtype whose cast_forward_inputs (default True)
    # casts the fp32 inputs of every unit to bf16. Before, the model's fp32 input met bf16
    # weights: "expected scalar type BFloat16".
    torch.manual_seed(0)
    model = models.make("awkward")
    mp = strata.MixedPrecisionPolicy(param_dtype=torch.bfloat16, output_dtype=torch.float32)
    kw = dict(mp_policy=mp, offload_policy=strata.CPUOffloadPolicy(), mesh=_Mesh(1))
    for child in model.children():
        strata.fully_shard(child, reshard_after_forward=False, **kw)
    strata.fully_shard(model, reshard_after_forward=True, **kw)
    opt = strata.optim.AdamW(model.parameters(), lr=1e-3)
    want = models.make("awkward")
    x, y = models.batch("awkward", 0, 8)
    out = model(x)
    assert out.dtype == torch.float32
    # bf16 compute against plain fp32 PyTorch on the same values: within bf16's rounding.
    assert torch.allclose(out, want(x), rtol=0.05, atol=0.02), (out - want(x)).abs().max()
    models.loss_fn("awkward", out, y).backward()
    assert opt.step()["applied"]
    mem = opt.engine.memory_by_kind()
    assert mem["host"]["optimizer"] > 0 and mem["host"]["params"] > 0, mem  # CPUOffloadPolicy
    assert mem["compute"]["optimizer"] == 0, mem
    # Without the cast the fp32 input reaches the bf16 weights, as under FSDP2.
    plain = models.make("gpt")  # (long inputs: nothing to cast)
    lin = torch.nn.Linear(4, 4)
    strata.fully_shard(lin, mp_policy=strata.MixedPrecisionPolicy(torch.bfloat16, cast_forward_inputs=False))
    strata.optim.AdamW(lin.parameters())
    with pytest.raises(RuntimeError, match="BFloat16|dtype"):
        lin(torch.ones(2, 4))
    # What strata does not do is refused, or warned about where the numbers hold.
    with pytest.raises(strata.NotImplementedByStrata, match="2-D DeviceMesh"):
        strata.fully_shard(plain, mesh=_Mesh(2))
    with pytest.raises(strata.NotImplementedByStrata, match="reshard_after_forward=2"):
        strata.fully_shard(plain, reshard_after_forward=2)
    with pytest.raises(strata.NotImplementedByStrata, match="list of modules"):
        strata.fully_shard([plain.blocks[0], plain.blocks[1]])
    with pytest.raises(strata.NotImplementedByStrata, match="ignored_params"):
        strata.fully_shard(plain, ignored_params={plain.ln_f.weight})
    with pytest.raises(strata.ConfigError, match="not both"):
        strata.fully_shard(plain, offload=strata.OffloadPolicy(), offload_policy=strata.CPUOffloadPolicy())
    with pytest.raises(strata.ConfigError, match="not both"):
        strata.fully_shard(plain, mesh=_Mesh(1), process_group=object())
    with pytest.warns(UserWarning, match="reduce_dtype torch.float32 is not applied"):
        strata.fully_shard(plain.blocks[0], mp_policy=strata.MixedPrecisionPolicy(torch.bfloat16, torch.float32))
    with pytest.warns(UserWarning, match="shard_placement_fn has no effect"):
        strata.fully_shard(plain.blocks[1], shard_placement_fn=lambda p: None)


def test_fsdp2_module_methods_run_and_change_nothing():
    import strata

    # A FSDP2 loop's calls (explicit prefetching, unshard before the forward, no gradient
    # sync outside the last micro-step): accepted, and the training is plain PyTorch's.
    torch.manual_seed(0)
    model, ref = models.make("gpt"), models.make("gpt")
    for block in model.blocks:
        strata.fully_shard(block)
    strata.fully_shard(model)
    for a, b in zip(model.blocks[:-1], model.blocks[1:]):
        a.set_modules_to_forward_prefetch([b])
        b.set_modules_to_backward_prefetch([a])
    opt = strata.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(3):
        for micro in range(2):
            last = micro == 1
            model.set_requires_gradient_sync(last)
            model.set_is_last_backward(last)
            model.unshard()
            model.unshard(async_op=True).wait()
            x, y = models.batch("gpt", 2 * step + micro, 4)
            (models.loss_fn("gpt", model(x), y) / 2).backward()
            (models.loss_fn("gpt", ref(x), y) / 2).backward()
            model.reshard()
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()
    got = strata.get_model_state_dict(model)
    for k, v in ref.state_dict().items():
        assert ((got[k].view(v.shape) - v).norm() / v.norm()).item() <= 1e-5, k


# FSDP2's set_model_state_dict with a full state dict (a pretrained checkpoint loaded
# after the optimizer is built): unit by unit, then training goes on from those values
# as plain PyTorch's from the same ones. Before, there was no way but GatheredParameters
# by hand.
@pytest.mark.parametrize("stage,optimizer,params", [(3, "nvme", "nvme"), (2, "cpu", "none")])
def test_a_full_state_dict_set_after_the_optimizer_is_the_start(tmp_path, stage, optimizer, params):
    import strata

    model = models.make("gpt", seed=0)
    offload = strata.OffloadPolicy(optimizer=optimizer, params=params, nvme_path=str(tmp_path))
    for block in model.blocks:
        strata.fully_shard(block, stage=stage, offload=offload)
    strata.fully_shard(model, stage=stage, offload=offload)
    opt = strata.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    ref = models.make("gpt", seed=5)  # other values: the checkpoint
    assert strata.set_model_state_dict(model, ref.state_dict()) == ([], [])
    got = strata.get_model_state_dict(model)
    assert all(torch.equal(got[k].view(v.shape), v) for k, v in ref.state_dict().items())
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    for step in range(3):
        x, y = models.batch("gpt", step, 4)
        loss = models.loss_fn("gpt", model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        want = models.loss_fn("gpt", ref(x), y)
        want.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        assert abs(loss.item() - want.item()) <= 1e-5 * abs(want.item()), step
    got = strata.get_model_state_dict(model)
    for k, v in ref.state_dict().items():
        assert ((got[k].view(v.shape) - v).norm() / v.norm()).item() <= 1e-5, k
    partial = ref.state_dict()
    del partial["ln_f.weight"]
    with pytest.raises(strata.ConfigError, match=r"missing keys \['ln_f.weight'\]"):
        strata.set_model_state_dict(model, partial)
    assert strata.set_model_state_dict(model, partial, strict=False) == (["ln_f.weight"], [])
    partial["ln_f.weight"] = torch.zeros(3)
    with pytest.raises(strata.ConfigError, match=r"ln_f.weight has shape \(3,\)"):
        strata.set_model_state_dict(model, partial)


# At two ranks: the ranks built other values (seeds 7 and 8), and every rank's shards take
# the state dict's (seed 0's), so training is plain PyTorch's from seed 0.
def test_a_full_state_dict_set_at_two_ranks_is_the_start(tmp_path):
    s = spec("gpt", tmp_path, stage=3, optimizer="nvme", params="nvme")
    s.update(seed=7, seed_per_rank=True, set_state=True)
    check_against_reference(train(tmp_path, 2, s))


EXIT_SCRIPT = """
import sys, torch, strata
sys.path.insert(0, sys.argv[3])
import models
model = models.make(sys.argv[4])
nvme = strata.OffloadPolicy(optimizer="nvme", params="nvme", nvme_path=sys.argv[1])
cfg = {"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
       "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": sys.argv[1]},
                             "offload_optimizer": {"device": "nvme", "nvme_path": sys.argv[1]}}}
if sys.argv[2] == "fully_shard":
    for block in model.blocks:
        strata.fully_shard(block, offload=nvme)
    strata.fully_shard(model, offload=nvme)
    opt = strata.optim.AdamW(model.parameters(), lr=1e-3)
    engine = model
else:
    engine, opt, *_ = strata.initialize(model=model, config=cfg)
x, y = models.batch("gpt", 0, 4)
loss = models.loss_fn("gpt", engine(x), y)
if sys.argv[2] == "initialize":
    engine.backward(loss)
    engine.step()
else:
    loss.backward()
    opt.step()
assert any(p.name.startswith("strata-") for p in __import__("pathlib").Path(sys.argv[1]).iterdir())
"""


# A script that ends without closing anything leaves no swap files behind. Before, every
# fully_shard run left its model state's nvme directory (strata-<job>/rank0/*.swp), and
# so did an initialize run of a model with reentrant activation checkpointing.
@pytest.mark.parametrize("front,name", [("fully_shard", "gpt"), ("initialize", "gpt"),
                                        ("initialize", "gpt_checkpointed_reentrant")])
def test_the_swap_files_go_when_the_process_exits(tmp_path, front, name):
    import subprocess
    import sys

    from conftest import HERE, PYTHONPATH

    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    r = subprocess.run([sys.executable, str(script), str(nvme), front, str(HERE), name], capture_output=True, text=True,
                       env={"PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(nvme.iterdir()), sorted(str(p) for p in nvme.rglob("*"))
