"""optimizer.state_dict() and load_state_dict() of strata's engine optimizers (strata.optim's
and strata.initialize's): Note [optimizer state dicts] in src/python/optimizer_state.h.

Before, both were torch.optim.Optimizer's own: state_dict() returned an empty state and
load_state_dict() loaded nothing, so a run resumed from the checkpoint code users write
for plain PyTorch restarted Adam's moments without a word. Here the state dict is plain
torch.optim's for the unsharded model, checked against torch.optim.AdamW's own: in
process at world 1 at each placement, and in fresh processes at world 2."""
import pytest
import torch

import models
from conftest import train
from test_fully_shard import spec
from test_initialize import LR, ROWS, STEPS, WD, config, reference, rel

EXTRA_TORCH_KEYS = {"foreach", "maximize", "capturable", "differentiable", "fused"}


def build(front, name, stage, optimizer, params, tmp_path, seed=0, groups=False):
    """(model, call, backward_and_step, optimizer) for `name` on strata."""
    import strata

    model = models.make(name, seed)
    ps = models.two_groups(model) if groups else model.parameters()
    if front == "initialize":
        given = {"model_parameters": ps} if groups else {}  # else its trainable parameters, as DeepSpeed's
        engine, opt, _, _ = strata.initialize(model=model, config=config(stage, optimizer, tmp_path), **given)
        return model, engine, lambda loss: (engine.backward(loss), engine.step()), opt
    offload = strata.OffloadPolicy(optimizer=optimizer, params=params, nvme_path=str(tmp_path))
    for block in getattr(model, "blocks", []):
        strata.fully_shard(block, stage=stage, offload=offload)
    strata.fully_shard(model, stage=stage, offload=offload)
    opt = strata.optim.AdamW(ps, lr=LR, weight_decay=WD)
    return model, model, lambda loss: (loss.backward(), opt.step(), opt.zero_grad()), opt


def model_state(front, model, call) -> dict:
    """The trained model's whole state dict: fully_shard's way; initialize's at stages 1-2,
    where the parameters hold the values."""
    import strata

    return strata.get_model_state_dict(model) if front == "fully_shard" else model.state_dict()


def load_model(front, model, state: dict) -> None:
    import strata

    strata.set_model_state_dict(model, state) if front == "fully_shard" else model.load_state_dict(state)


def plain(name, seed=0, groups=False, trainable=False):
    """The plain PyTorch model and torch.optim.AdamW over what strata's optimizer holds:
    the two groups, the model's parameters (strata.optim), or its trainable ones
    (initialize without model_parameters)."""
    model = models.make(name, seed)
    ps = models.two_groups(model) if groups else [p for p in model.parameters() if p.requires_grad or not trainable]
    return model, torch.optim.AdamW(ps, lr=LR, weight_decay=WD)


def plain_step(model, opt, name, step):
    x, y = models.batch(name, step, ROWS)
    loss = models.loss_fn(name, model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def strata_step(call, backward_and_step, name, step):
    x, y = models.batch(name, step, ROWS)
    loss = models.loss_fn(name, call(x), y)
    backward_and_step(loss)
    return loss.item()


def check_same_state(got, want, tol=1e-5):
    assert sorted(got["state"]) == sorted(want["state"])  # a frozen or unused parameter has none, as torch's
    for i, w in want["state"].items():
        assert got["state"][i].keys() == w.keys(), (i, got["state"][i].keys(), w.keys())
        for k, v in w.items():
            if k == "step":
                assert float(got["state"][i][k]) == float(v), (i, got["state"][i][k], v)
            else:
                assert got["state"][i][k].shape == v.shape and rel(got["state"][i][k], v) <= tol, (i, k)
    assert len(got["param_groups"]) == len(want["param_groups"])
    for g, w in zip(got["param_groups"], want["param_groups"]):
        assert {k: v for k, v in g.items() if k not in EXTRA_TORCH_KEYS} == \
            {k: v for k, v in w.items() if k not in EXTRA_TORCH_KEYS}, (g, w)


def check_state_dicts_both_ways(tmp_path, strata_cls, plain_cls, hyper, keys):
    """For an optimizer torch lacks (strata_cls, e.g. strata.optim.Lion, against
    plain_cls, its plain-PyTorch twin in models.py, both with `hyper`): over the GPT
    sharded per block at stage 3, its state and parameters on nvme, two parameter
    groups, the state dict is the plain one's (per parameter exactly `keys`; the groups'
    hyperparameters), a run resumes from the plain one's state dicts as plain PyTorch
    does, and plain PyTorch resumes from strata's."""
    import strata

    def sharded(path, seed=0):
        model = models.make("gpt", seed)
        offload = strata.OffloadPolicy(optimizer="nvme", params="nvme", nvme_path=str(path))
        for block in model.blocks:
            strata.fully_shard(block, offload=offload)
        strata.fully_shard(model, offload=offload)
        return model, strata_cls(models.two_groups(model), **hyper)

    def unsharded(seed=0):
        model = models.make("gpt", seed)
        return model, plain_cls(models.two_groups(model), **hyper)

    def fsdp_step(opt):
        return lambda loss: (loss.backward(), opt.step(), opt.zero_grad())

    model, opt = sharded(tmp_path / "a")
    ref, ref_opt = unsharded()
    for step in range(3):
        got = strata_step(model, fsdp_step(opt), "gpt", step)
        want = plain_step(ref, ref_opt, "gpt", step)
        assert abs(got - want) <= 1e-5 * abs(want), (step, got, want)
    saved = opt.state_dict()
    assert all(set(st) == set(keys) for st in saved["state"].values())
    check_same_state(saved, ref_opt.state_dict())

    resumed, resumed_opt = sharded(tmp_path / "b", seed=5)
    strata.set_model_state_dict(resumed, ref.state_dict())
    resumed_opt.load_state_dict(ref_opt.state_dict())
    back, back_opt = unsharded(seed=9)
    back.load_state_dict(strata.get_model_state_dict(model))
    back_opt.load_state_dict(saved)
    for step in range(3, 6):
        want = plain_step(ref, ref_opt, "gpt", step)
        assert abs(strata_step(resumed, fsdp_step(resumed_opt), "gpt", step) - want) <= 1e-5 * abs(want)
        assert abs(plain_step(back, back_opt, "gpt", step) - want) <= 1e-5 * abs(want)
    check_same_state(resumed_opt.state_dict(), ref_opt.state_dict())
    got = strata.get_model_state_dict(resumed)
    assert all(rel(got[k], v) <= 1e-5 for k, v in ref.state_dict().items())


# The awkward model: frozen parameters, one that gets no gradient, a module called twice,
# tuple outputs, a skip branch. gpt with two parameter groups: numbered across groups.
@pytest.mark.parametrize("front,stage,optimizer,params", [("fully_shard", 3, "nvme", "nvme"),
                                                          ("fully_shard", 3, "cpu", "cpu"),
                                                          ("fully_shard", 2, "cpu", "none"),
                                                          ("initialize", 3, "none", "none"),
                                                          ("initialize", 1, "cpu", "none")])
@pytest.mark.parametrize("name,groups", [("gpt", True), ("awkward", False)])
def test_the_state_dict_is_plain_pytorchs(tmp_path, front, stage, optimizer, params, name, groups):
    model, call, backward_and_step, opt = build(front, name, stage, optimizer, params, tmp_path, groups=groups)
    ref, ref_opt = plain(name, groups=groups, trainable=front == "initialize")
    for step in range(3):
        got = strata_step(call, backward_and_step, name, step)
        want = plain_step(ref, ref_opt, name, step)
        assert abs(got - want) <= 1e-5 * abs(want), (step, got, want)
    check_same_state(opt.state_dict(), ref_opt.state_dict())


# A run resumes from a plain PyTorch checkpoint (model and optimizer state dicts) as plain
# PyTorch does, and plain PyTorch resumes from strata's state dicts as strata does. The
# strata side is built from other values (seed 5): everything comes from the state dicts.
@pytest.mark.parametrize("front,stage,optimizer,params", [("fully_shard", 3, "nvme", "nvme"),
                                                          ("initialize", 2, "cpu", "none")])
def test_state_dicts_load_both_ways(tmp_path, front, stage, optimizer, params):
    ref, ref_opt = plain("gpt", groups=True)
    for step in range(3):
        plain_step(ref, ref_opt, "gpt", step)
    model, call, backward_and_step, opt = build(front, "gpt", stage, optimizer, params, tmp_path, seed=5, groups=True)
    load_model(front, model, ref.state_dict())
    opt.load_state_dict(ref_opt.state_dict())
    for step in range(3, 6):
        got = strata_step(call, backward_and_step, "gpt", step)
        want = plain_step(ref, ref_opt, "gpt", step)
        assert abs(got - want) <= 1e-5 * abs(want), (step, got, want)
    check_same_state(opt.state_dict(), ref_opt.state_dict())
    # Back: a fresh plain PyTorch model and optimizer take strata's and go on alike.
    back, back_opt = plain("gpt", seed=9, groups=True)
    back.load_state_dict(model_state(front, model, call))
    back_opt.load_state_dict(opt.state_dict())
    for step in range(6, 8):
        got = strata_step(call, backward_and_step, "gpt", step)
        want = plain_step(back, back_opt, "gpt", step)
        assert abs(got - want) <= 1e-5 * abs(want), (step, got, want)


# FSDP2's full optimizer state dict, keyed by the parameters' names: torch.optim.AdamW's
# state under the same names; loaded by name (the groups' lists reversed) into strata
# built from other values, training continues as plain PyTorch's.
def test_fsdp2_optimizer_state_dicts_by_name(tmp_path):
    import strata

    model, call, backward_and_step, opt = build("fully_shard", "gpt", 3, "nvme", "nvme", tmp_path, groups=True)
    ref, ref_opt = plain("gpt", groups=True)
    for step in range(3):
        strata_step(call, backward_and_step, "gpt", step)
        plain_step(ref, ref_opt, "gpt", step)
    osd = strata.get_optimizer_state_dict(model, opt)
    names = {id(p): n for n, p in ref.named_parameters()}
    ref_params = [p for g in ref_opt.param_groups for p in g["params"]]
    want = {names[id(ref_params[i])]: s for i, s in ref_opt.state_dict()["state"].items()}
    assert sorted(osd["state"]) == sorted(want) and "wte.weight" in want
    for n, w in want.items():
        assert all(rel(osd["state"][n][k], w[k]) <= 1e-5 for k in ("exp_avg", "exp_avg_sq")), n
    assert [g["params"] for g in osd["param_groups"]] == [[names[id(p)] for p in g["params"]] for g in ref_opt.param_groups]
    model2, call2, backward_and_step2, opt2 = build("fully_shard", "gpt", 3, "nvme", "nvme", tmp_path, seed=5,
                                                   groups=True)
    strata.set_model_state_dict(model2, strata.get_model_state_dict(model))
    shuffled = {**osd, "param_groups": [{**g, "params": g["params"][::-1]} for g in osd["param_groups"]]}
    strata.set_optimizer_state_dict(model2, opt2, shuffled)
    for step in range(3, 6):
        got = strata_step(call2, backward_and_step2, "gpt", step)
        want_loss = plain_step(ref, ref_opt, "gpt", step)
        assert abs(got - want_loss) <= 1e-5 * abs(want_loss), (step, got, want_loss)
    with pytest.raises(strata.ConfigError, match="nope.weight is not a parameter"):
        strata.set_optimizer_state_dict(model2, opt2, {**osd, "state": {**osd["state"], "nope.weight": {}}})
    swapped = {**osd, "param_groups": osd["param_groups"][::-1]}
    with pytest.raises(strata.ConfigError, match="group 0 holds other parameters"):
        strata.set_optimizer_state_dict(model2, opt2, swapped)


# What does not match is refused by the parameter's name, and leaves the state as it was;
# a state dict too large for the machine is refused, pointing at the sharded checkpoints.
def test_a_state_dict_that_does_not_match_or_fit_is_refused(tmp_path, monkeypatch):
    import strata
    from strata import _optim_state

    model, call, backward_and_step, opt = build("fully_shard", "gpt", 3, "cpu", "cpu", tmp_path)
    strata_step(call, backward_and_step, "gpt", 0)
    sd = opt.state_dict()
    ref, ref_opt = plain("gpt")
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    plain_step(ref, sgd, "gpt", 0)
    with pytest.raises(strata.ConfigError, match=r"blocks.0.ln1.weight's state has no step \(it has momentum_buffer\)"):
        opt.load_state_dict(sgd.state_dict())  # another optimizer's state
    bad = {"state": dict(sd["state"]), "param_groups": sd["param_groups"]}
    bad["state"][0] = {**sd["state"][0], "exp_avg": torch.zeros(3)}
    with pytest.raises(strata.ConfigError, match=r"wte.weight's exp_avg is \(3,\) in the state dict"):
        opt.load_state_dict(bad)
    with pytest.raises(strata.ConfigError, match="has 2 parameter group"):
        opt.load_state_dict({"state": {}, "param_groups": sd["param_groups"] * 2})
    with pytest.raises(strata.NotImplementedByStrata, match="eps=0.1 in the state dict"):
        opt.load_state_dict({"state": sd["state"], "param_groups": [{**sd["param_groups"][0], "eps": 0.1}]})
    monkeypatch.setattr(_optim_state, "_available_bytes", lambda: 1 << 10)
    with pytest.raises(strata.CannotFitError, match=r"save_checkpoint\(dir\)"):
        opt.state_dict()
    monkeypatch.undo()
    opt.load_state_dict(sd)  # nothing was changed by the refusals
    check_same_state(opt.state_dict(), sd, tol=0)


# At two ranks in fresh processes: 3 steps, every rank saves model.state_dict() and
# optimizer.state_dict() with torch.save (each holds the whole state: the ranks' files
# are equal); new processes built from other values (seeds 7, 8) load rank 0's and train
# 3 more steps: the uninterrupted plain PyTorch run's losses and parameters within 1e-5.
@pytest.mark.parametrize("api,stage,optimizer", [("fsdp", 3, "nvme"), ("initialize", 2, "cpu")])
def test_a_run_resumes_from_torch_saved_state_dicts_at_two_ranks(tmp_path, api, stage, optimizer):
    saved = tmp_path / "states.pt"
    if api == "fsdp":
        first = spec("gpt", tmp_path, stage=stage, optimizer=optimizer, params="nvme" if stage == 3 else "none")
    else:
        first = {"model": "gpt", "steps": STEPS, "rows": ROWS, "config": config(stage, optimizer, tmp_path)}
    first.update(steps=3, save_states=str(saved))
    train(tmp_path, 2, first, name="first")
    a, b = (torch.load(f"{saved}.{r}") for r in range(2))
    check_same_state(a["optim"], b["optim"], tol=0)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    second = {**first, "steps": 3, "start": 3, "seed": 7, "seed_per_rank": True, "load_states": f"{saved}.0"}
    del second["save_states"]
    ranks = train(tmp_path, 2, second, name="second")
    want_losses, want_params = reference("gpt", world=2)
    got = [sum(r["losses"][s] for r in ranks) / 2 for s in range(3)]
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got, want_losses[3:])), (got, want_losses[3:])
    for k, v in ranks[0]["params"].items():
        assert rel(v, want_params[k]) <= 1e-5, k


REFUSE_SCRIPT = """
import os, sys, strata
from strata import _optim_state
sys.path.insert(0, sys.argv[1])
import models
model = models.make("gpt")
strata.fully_shard(model)
opt = strata.optim.AdamW(model.parameters(), lr=1e-3)
if os.environ["RANK"] == "1":
    _optim_state._available_bytes = lambda: 1 << 10  # this rank's machine is short of memory
try:
    opt.state_dict()
except strata.CannotFitError as e:
    print("refused:", e)
x, y = models.batch("gpt", 0, 4)  # the ranks go on together
models.loss_fn("gpt", model(x), y).backward()
opt.step()
print("stepped")
"""


# One rank short of memory: every rank refuses (the other would wait in the gathers), and
# training goes on.
def test_a_state_dict_one_rank_cannot_hold_is_refused_on_every_rank(tmp_path):
    from conftest import HERE, run_ranks

    script = tmp_path / "refuse.py"
    script.write_text(REFUSE_SCRIPT)
    (rc0, out0), (rc1, out1) = run_ranks(2, [script, HERE], timeout=120)
    assert rc0 == 0 and rc1 == 0, out0 + out1
    assert "refused: resource_exhausted: state_dict(): another rank's machine" in out0 and "stepped" in out0, out0
    assert "refused: resource_exhausted: state_dict() holds the whole optimizer state" in out1 and "stepped" in out1, out1
