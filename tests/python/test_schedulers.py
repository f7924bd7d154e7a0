"""Learning-rate schedules through strata.initialize: a torch.optim.lr_scheduler driving the
optimizer it returns, and the config's DeepSpeed "scheduler" block, each against plain PyTorch."""
import contextlib

import pytest
import torch

import models


def step_both(engine, ref, ropt, rsched, step):
    """One training step of the strata engine and of the plain-PyTorch reference (its
    optimizer, then its scheduler) on the same batch; returns both losses."""
    x, y = models.batch("gpt", step, 8)
    loss = models.loss_fn("gpt", engine(x), y)
    engine.backward(loss)
    engine.step()
    ropt.zero_grad()
    rloss = models.loss_fn("gpt", ref(x), y)
    rloss.backward()
    ropt.step()
    rsched.step()
    return loss.item(), rloss.item()


def test_lambda_lr_through_initialize_matches_plain_pytorch():
    import strata

    torch.set_num_threads(1)
    decay = lambda step: 0.5 ** step  # noqa: E731
    cfg = {"train_batch_size": 8, "zero_optimization": {"stage": 2},
           "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}}}
    engine, opt, _, sched = strata.initialize(model=models.make("gpt"), config=cfg,
                                              lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, decay))
    ref = models.make("gpt")
    ropt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.01)
    rsched = torch.optim.lr_scheduler.LambdaLR(ropt, decay)
    for step in range(4):
        loss, rloss = step_both(engine, ref, ropt, rsched, step)
        assert abs(loss - rloss) <= 1e-5 * abs(rloss), step
        assert engine.get_lr() == [rsched.get_last_lr()[0]] == [opt.param_groups[0]["lr"]]
    assert sched.last_epoch == 4
    engine.close()


# The config's "scheduler" block (DeepSpeed's names and defaults): every optimizer step
# runs with the lr (and, for OneCycle, the Adam betas) DeepSpeed would use, checked step
# by step against ds_schedules.py (DeepSpeed's formulas and stepping: the lr set when the
# scheduler is built, then one scheduler step after each optimizer step) driving plain
# torch.optim.AdamW, which also gives the reference losses. 12 steps cross every phase.
SCHEDULES = {
    "WarmupLR": {"warmup_min_lr": 1e-4, "warmup_max_lr": 3e-3, "warmup_num_steps": 5},
    "WarmupLR_linear": {"warmup_min_lr": 0.0, "warmup_max_lr": 3e-3, "warmup_num_steps": 4, "warmup_type": "linear"},
    "WarmupDecayLR": {"total_num_steps": 10, "warmup_min_lr": 1e-4, "warmup_max_lr": 3e-3, "warmup_num_steps": 4},
    "WarmupCosineLR": {"total_num_steps": 11, "warmup_min_ratio": 0.1, "warmup_num_steps": 4, "cos_min_ratio": 0.05,
                       "warmup_type": "linear"},
    "OneCycle": {"cycle_min_lr": 1e-4, "cycle_max_lr": 3e-3, "cycle_first_step_size": 3, "cycle_second_step_size": 4,
                 "decay_step_size": 2, "decay_lr_rate": 0.5, "cycle_min_mom": 0.85, "cycle_max_mom": 0.95,
                 "decay_mom_rate": 0.01},
    "LRRangeTest": {"lr_range_test_min_lr": 1e-4, "lr_range_test_step_size": 3, "lr_range_test_step_rate": 2.0,
                    "lr_range_test_staircase": True},
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_config_scheduler_matches_deepspeeds_curve(name):
    import strata
    import ds_schedules

    torch.set_num_threads(1)
    kind = name.split("_")[0]
    params = SCHEDULES[name]
    cfg = {"train_batch_size": 8, "zero_optimization": {"stage": 2},
           "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.01}},
           "scheduler": {"type": kind, "params": params}}
    engine, opt, _, sched = strata.initialize(model=models.make("gpt"), config=cfg)
    assert sched is engine.lr_scheduler and sched.kind == kind  # DeepSpeed returns its scheduler there
    ref = models.make("gpt")
    ropt = torch.optim.AdamW(ref.parameters(), lr=2e-3, weight_decay=0.01)
    rsched = getattr(ds_schedules, kind)(ropt, **params)
    for step in range(12):
        want = ropt.param_groups[0]["lr"]
        assert engine.get_lr()[0] == pytest.approx(want, rel=1e-12, abs=1e-15), (step, engine.get_lr(), want)
        assert sched.get_last_lr() == engine.get_lr() and sched.last_batch_iteration == step - 1
        loss, rloss = step_both(engine, ref, ropt, rsched, step)
        assert abs(loss - rloss) <= 1e-5 * abs(rloss), (step, loss, rloss)
    assert sched.state_dict() == {"last_batch_iteration": 11}
    engine.close()


# The schedule returned for a config's "scheduler" block is the engine's: a script written
# for DeepSpeed that also calls lr_scheduler.step() gets a warning, not a schedule running
# twice as fast; checkpoints restore it through the step count.
def test_config_scheduler_step_is_the_engines(tmp_path):
    import strata

    torch.set_num_threads(1)
    cfg = {"train_batch_size": 8, "zero_optimization": {"stage": 1},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
           "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 20, "warmup_num_steps": 5}}}
    engine, _, _, sched = strata.initialize(model=models.make("gpt"), config=cfg)
    twin, _, _, twin_sched = strata.initialize(model=models.make("gpt"), config=cfg)
    for step in range(4):
        for e in (engine, twin):
            x, y = models.batch("gpt", step, 8)
            e.backward(models.loss_fn("gpt", e(x), y))
            e.step()
        with pytest.warns(UserWarning, match="does nothing") if step == 0 else contextlib.nullcontext():
            sched.step()
        assert sched.get_last_lr() == twin_sched.get_last_lr() and sched.last_batch_iteration == step
    engine.save_checkpoint(tmp_path)
    with pytest.raises(strata.UsageError, match="cannot be moved to 1"):
        sched.load_state_dict({"last_batch_iteration": 1})
    engine.close()
    again, _, _, again_sched = strata.initialize(model=models.make("gpt"), config=cfg)
    assert again_sched.last_batch_iteration == -1
    again.load_checkpoint(tmp_path)
    assert again_sched.last_batch_iteration == 3 and again_sched.get_last_lr() == twin_sched.get_last_lr()
    again.close()
    twin.close()


def test_scheduler_block_errors():
    import strata

    base = {"train_batch_size": 8, "zero_optimization": {"stage": 2},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    cases = [({"type": "OneCycle", "params": {"cycle_max_lr": 1e-3}}, "cycle_min_lr: required by OneCycle"),
             ({"type": "WarmupDecayLR", "params": {}}, "total_num_steps: required by WarmupDecayLR"),
             ({"type": "WarmupLR", "params": {"warmup_type": "cubic"}}, "warmup_type: \"cubic\" is not one of"),
             ({"type": "WarmupLRR"}, "scheduler.type: \"WarmupLRR\" is not one of"),
             ({"type": "WarmupLR", "params": {"warmup_max": 1}}, "did you mean warmup_max_lr")]
    for block, message in cases:
        with pytest.raises(strata.ConfigError, match=message.replace("(", r"\(")):
            strata.initialize(model=models.make("gpt"), config=dict(base, scheduler=block))
    with pytest.raises(strata.ConfigError, match="give one of the two"):
        strata.initialize(model=models.make("gpt"), config=dict(base, scheduler={"type": "WarmupLR"}),
                          lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0))


# torch's OneCycleLR cycles Adam's beta1 or SGD's momentum with the lr (cycle_momentum),
# and a weight-decay schedule raises one group's decay mid-run: all reach the engine's
# steps, through both front ends, against torch.optim with the same two groups and
# schedules. Then a change to a setting the engine does not take is refused at the next
# step, not ignored.
CYCLED = {"AdamW": ({"weight_decay": 0.1}, "betas", ("eps", 1e-08, 1e-06)),
          "SGD": ({"weight_decay": 0.1, "momentum": 0.9}, "momentum", ("dampening", 0.0, 0.1))}


@pytest.mark.parametrize("kind", sorted(CYCLED))
@pytest.mark.parametrize("front", ["initialize", "fully_shard"])
def test_one_cycle_momentum_and_a_weight_decay_schedule_match_plain_pytorch(front, kind):
    import strata

    torch.set_num_threads(1)
    model, ref = models.make("gpt"), models.make("gpt")
    hyper, cycled, (fixed, was, now) = CYCLED[kind]
    hyper = {"lr": 1e-3, **hyper}
    if front == "initialize":
        cfg = {"train_batch_size": 8, "zero_optimization": {"stage": 2}}
        engine, opt, _, _ = strata.initialize(model=model, config=cfg,
                                              optimizer=getattr(torch.optim, kind)(models.two_groups(model), **hyper))

        def step():
            engine.backward(loss)
            engine.step()

        weights = lambda: {k: v.detach().clone() for k, v in model.named_parameters()}  # noqa: E731
    else:
        for block in model.blocks:
            strata.fully_shard(block)
        strata.fully_shard(model)
        opt = getattr(strata.optim, kind)(models.two_groups(model), **hyper)

        def step():
            loss.backward()
            opt.step()

        weights = lambda: strata.get_model_state_dict(model)  # noqa: E731
    ropt = getattr(torch.optim, kind)(models.two_groups(ref), **hyper)
    sched, rsched = (torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[3e-3, 2e-3], total_steps=10) for o in (opt, ropt))
    for s in range(8):
        if s == 4:
            for o in (opt, ropt):
                o.param_groups[0]["weight_decay"] = 0.5
        x, y = models.batch("gpt", s, 8)
        loss = models.loss_fn("gpt", model(x), y)
        step()
        ropt.zero_grad()
        rloss = models.loss_fn("gpt", ref(x), y)
        rloss.backward()
        ropt.step()
        sched.step()
        rsched.step()
        assert abs(loss.item() - rloss.item()) <= 1e-5 * abs(rloss.item()), (s, loss.item(), rloss.item())
    got = weights()
    for k, v in ref.named_parameters():
        assert ((got[k] - v.detach()).norm() / v.detach().norm()).item() <= 1e-5, k
    assert opt.param_groups[1][cycled] == ropt.param_groups[1][cycled] != hyper.get(cycled, (0.9, 0.999))
    opt.param_groups[1][fixed] = now
    loss = models.loss_fn("gpt", model(x), y)
    with pytest.raises(strata.NotImplementedByStrata, match=f"parameter group 1's {fixed} changed from {was} to {now}"):
        step()
    if front == "initialize":
        engine.close()
