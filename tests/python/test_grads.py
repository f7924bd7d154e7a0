"""What training loops do with the parameters' gradients under a strata engine, against
plain PyTorch: model.zero_grad() in the loop, and torch.nn.utils.clip_grad_norm_
between backward and step (Note [the engine's gradients], grad_reducer.cpp; Note
[torch's gradient clipping], _clip.py). Before:
- model.zero_grad() with set_to_none=True (torch 2's default) cut the parameters' .grad
  from the engine's buffers: the engine stepped without gradients at every stage (the
  loss rose from 21.9 to 23.4 in 4 steps where plain PyTorch's fell to 20.8), and with
  set_to_none=False it killed the process at stages 2-3 (SIGSEGV: .grad viewed freed memory);
- clip_grad_norm_ at stages 2-3 did the same; at stages 0-1 with two ranks it read each
  rank's own unreduced gradients (norms 7.0 and 6.7 where torch's is 5.9) while their
  all-reduce was in flight, and clipped by them."""
import pytest
import torch

import models
from conftest import train
from test_initialize import LR, ROWS, WD, rel

STEPS, CLIP = 4, 0.05


@pytest.fixture
def strata():
    import strata as s
    return s


def config(stage, device, tmp, **extra):
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0}
    if device != "none":
        zero["offload_optimizer"] = {"device": device, "nvme_path": str(tmp)}
        if stage == 3:
            zero["offload_param"] = {"device": device, "nvme_path": str(tmp)}
    return {"train_batch_size": ROWS, "zero_optimization": zero, "strata": {"chunk_size": 1024},
            "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}, **extra}


def engine_and_plain(strata, tmp_path, stage, window=1, device="nvme"):
    """The GPT under strata with an accumulation window of `window`, and the same GPT with
    torch AdamW: (engine, reference model, its optimizer)."""
    cfg = config(stage, device, tmp_path, gradient_accumulation_steps=window, train_batch_size=window * ROWS)
    engine, *_ = strata.initialize(model=models.make("gpt"), config=cfg)
    ref = models.make("gpt")
    return engine, ref, torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)


def assert_trained_as(engine, ref):
    got = engine.consolidated_state_dict()
    for k, v in ref.named_parameters():
        assert rel(got[k], v.detach()) <= 1e-5, f"{k}: relative error {rel(got[k], v.detach())}"


def plain(world=1, clip=None, groups=False, window=1):
    """torch.optim.AdamW, each rank's rows through the model separately (as under DDP), the
    loss their mean; clip_grad_norm_ between backward and step, a step every `window`
    backwards (their gradients summed). Losses, norms, parameters."""
    torch.set_num_threads(1)
    model = models.make("gpt")
    opt = torch.optim.AdamW(models.two_groups(model) if groups else model.parameters(), lr=LR, weight_decay=WD)
    losses, norms, per = [], [], ROWS // world
    for step in range(STEPS):
        x, y = models.batch("gpt", step, ROWS)
        loss = sum(models.loss_fn("gpt", model(x[r * per:(r + 1) * per]), y[r * per:(r + 1) * per])
                   for r in range(world)) / world
        loss.backward()
        losses.append(loss.item())
        if (step + 1) % window:
            continue
        if clip:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad()
    return losses, norms, {k: v.detach().reshape(-1) for k, v in model.named_parameters()}


def check(ranks, want, world):
    want_losses, want_norms, want_params = want
    losses = [sum(r["losses"][s] for r in ranks) / world for s in range(STEPS)]
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(losses, want_losses)), (losses, want_losses)
    for r in ranks:
        assert all(abs(g - w) <= 1e-5 * w for g, w in zip(r["norms"], want_norms)), (r["norms"], want_norms)
        assert len(r["norms"]) == len(want_norms)
    for k, v in want_params.items():
        assert rel(ranks[0]["params"][k], v) <= 1e-5, f"{k}: relative error {rel(ranks[0]['params'][k], v)}"


@pytest.mark.parametrize("stage,device", [(1, "cpu"), (2, "cpu"), (3, "nvme")])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_model_zero_grad_in_the_loop(strata, tmp_path, stage, device, set_to_none):
    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path))
    assert stage < 2 or all(p.grad is None for p in model.parameters())
    losses = []
    for step in range(STEPS):
        model.zero_grad(set_to_none=set_to_none)
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", engine(x), y)
        engine.backward(loss)
        # Stages 2-3: the gradients are in the shards; .grad is None, never freed memory.
        assert stage < 2 or all(p.grad is None for p in model.parameters())
        engine.step()
        losses.append(loss.item())
    want_losses, _, want_params = plain()
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(losses, want_losses)), (losses, want_losses)
    got = engine.consolidated_state_dict()
    for k, v in want_params.items():
        assert rel(got[k].reshape(-1), v) <= 1e-5, k
    engine.close()


# At two ranks, through each front end: strata.initialize at every stage, fully_shard +
# strata.optim (the FSDP2 loop), ShardedOptimizer (the OSS loop); stage 3 also at one rank.
@pytest.mark.parametrize("world,api,stage,device", [
    (2, "initialize", 0, "none"), (2, "initialize", 1, "cpu"), (2, "initialize", 2, "nvme"),
    (2, "initialize", 3, "nvme"), (1, "initialize", 3, "cpu"), (2, "fsdp", 3, "cpu"), (2, "oss", 2, "none")])
def test_torch_clip_grad_norm_matches_plain_pytorch(tmp_path, world, api, stage, device):
    spec = {"model": "gpt", "steps": STEPS, "rows": ROWS, "clip": CLIP, "zero_grad": "none"}
    if api == "initialize":
        spec["config"] = config(stage, device, tmp_path)
    elif api == "fsdp":
        spec.update(api="fsdp", fsdp={"stage": stage, "optimizer": device, "nvme_path": str(tmp_path), "lr": LR,
                                      "weight_decay": WD})
    else:
        spec.update(api="oss", oss={"optim": "AdamW", "stage": stage, "defaults": {"lr": LR, "weight_decay": WD}})
    want = plain(world, CLIP, groups=api == "oss")  # OSS: models.two_groups, as worker.py's
    check(train(tmp_path, world, spec), want, world)


def test_what_the_engine_cannot_clip_is_refused(strata, tmp_path):
    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config(2, "cpu", tmp_path, gradient_accumulation_steps=2,
                                                              train_batch_size=2 * ROWS))
    x, y = models.batch("gpt", 0, ROWS)
    engine.backward(models.loss_fn("gpt", engine(x), y))
    with pytest.raises(strata.UsageError, match=r"clip_grad_norm\(\) in micro-step 1 of an accumulation window of 2"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    engine.step()
    engine.backward(models.loss_fn("gpt", engine(x), y))
    with pytest.raises(strata.NotImplementedByStrata, match=r"over 2 of the 26 parameters the strata engine trains"):
        torch.nn.utils.clip_grad_norm_(list(model.parameters())[:2], CLIP)
    with pytest.raises(strata.NotImplementedByStrata, match=r"clip_grad_value_ over a strata engine's parameters"):
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)  # the window's last micro-step
    assert norm > CLIP
    engine.step()
    engine.close()
    # Other tensors: torch's own functions.
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.full((3,), 2.0)
    assert torch.nn.utils.clip_grad_norm_([w], 1.0).item() == pytest.approx(12 ** 0.5)
    assert torch.allclose(w.grad, torch.full((3,), 1 / 3 ** 0.5), atol=1e-5)
    torch.nn.utils.clip_grad_value_(w, 0.1)
    assert torch.equal(w.grad, torch.full((3,), 0.1))


# Inside an accumulation window (engine.step() every micro-step, DeepSpeed's loop) with
# model.zero_grad() before every micro-step: at stages 0-1 .grad holds this rank's sum so
# far, so dropping or zeroing it drops the earlier micro-steps' gradients, as in torch
# (and DeepSpeed's ZeRO-1); at stages 2-3 the earlier micro-steps' gradients are already
# in the shards and .grad is None, so the window keeps them (as DeepSpeed's ZeRO-2/3).
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_model_zero_grad_inside_an_accumulation_window(strata, tmp_path, stage, set_to_none):
    window = 2
    model = models.make("gpt")
    cfg = config(stage, "cpu", tmp_path, gradient_accumulation_steps=window, train_batch_size=window * ROWS)
    engine, *_ = strata.initialize(model=model, config=cfg)
    ref = models.make("gpt")
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    for step in range(STEPS * window):
        x, y = models.batch("gpt", step, ROWS)
        model.zero_grad(set_to_none=set_to_none)
        engine.backward(models.loss_fn("gpt", engine(x), y))
        engine.step()
        if stage < 2:
            ref.zero_grad(set_to_none=set_to_none)
        (models.loss_fn("gpt", ref(x), y) / window).backward()
        if (step + 1) % window == 0:
            opt.step()
            opt.zero_grad()
    assert_trained_as(engine, ref)
    engine.close()


# The awkward models (a data-dependent branch, a module called twice, tuple outputs,
# unused and frozen parameters; a reentrant checkpoint with the tied head inside) at
# every placement: model.zero_grad() and torch's clip_grad_norm_ in the loop give the
# bits the config's gradient_clipping gives without them (itself checked against torch
# in test_initialize.py and the C++ clip tests).
@pytest.mark.parametrize("name", ["awkward", "gpt_checkpointed_reentrant_head"])
@pytest.mark.parametrize("stage,device", [(1, "cpu"), (2, "nvme"), (3, "nvme"), (3, "none")])
def test_awkward_models_with_zero_grad_and_torch_clip(strata, tmp_path, name, stage, device):
    def run(in_loop):
        model = models.make(name)
        cfg = config(stage, device, tmp_path)
        if not in_loop:
            cfg["gradient_clipping"] = CLIP
        engine, *_ = strata.initialize(model=model, config=cfg)
        losses = []
        for step in range(3):
            if in_loop:
                model.zero_grad(set_to_none=True)
            x, y = models.batch(name, step, ROWS)
            loss = models.loss_fn(name, engine(x), y)
            engine.backward(loss)
            if in_loop:
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            engine.step()
            losses.append(loss.item())
        params = engine.consolidated_state_dict()
        engine.close()
        return losses, params

    (want_losses, want), (got_losses, got) = run(False), run(True)
    assert got_losses == want_losses
    assert all(torch.equal(got[k], v) for k, v in want.items())


# The batch keys as DeepSpeed resolves them: train_batch_size with the micro batch and no
# accumulation count is an accumulation window of train / (micro * world) micro-steps.
# Before, the engine read gradient_accumulation_steps alone and stepped after every
# backward (4 times as often, each step on a quarter of the batch), and an inconsistent
# triple trained silently. The engine's window matches plain PyTorch accumulating 4
# micro-batches, and DeepSpeed's engine methods report the resolved sizes and the norm.
@pytest.mark.parametrize("stage", [2, 3])
def test_train_batch_size_over_the_micro_batch_is_the_accumulation_window(strata, tmp_path, stage):
    window = 4
    model = models.make("gpt")
    cfg = config(stage, "none", tmp_path, train_batch_size=window * ROWS, train_micro_batch_size_per_gpu=ROWS)
    engine, *_ = strata.initialize(model=model, config=cfg)
    assert (engine.train_batch_size(), engine.train_micro_batch_size_per_gpu(),
            engine.gradient_accumulation_steps()) == (window * ROWS, ROWS, window)
    assert engine.get_global_grad_norm() is None and not engine.was_step_applied()
    ref = models.make("gpt")
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    applied = []
    for step in range(2 * window):
        x, y = models.batch("gpt", step, ROWS)
        engine.backward(models.loss_fn("gpt", engine(x), y))
        applied.append(engine.step()["applied"])
        (models.loss_fn("gpt", ref(x), y) / window).backward()
        if (step + 1) % window == 0:
            norm = torch.stack([p.grad.norm() for p in ref.parameters() if p.grad is not None]).norm().item()
            assert engine.get_global_grad_norm() == pytest.approx(norm, rel=1e-5)
            assert engine.was_step_applied() and engine.skipped_steps == 0
            opt.step()
            opt.zero_grad()
    assert applied == [False, False, False, True] * 2
    assert_trained_as(engine, ref)
    engine.close()

    auto = config(stage, "none", tmp_path, train_batch_size="auto", train_micro_batch_size_per_gpu=ROWS,
                  gradient_accumulation_steps="auto")
    engine, *_ = strata.initialize(model=models.make("gpt"), config=auto)
    assert (engine.train_batch_size(), engine.gradient_accumulation_steps()) == (ROWS, 1)
    engine.close()
    bad = config(stage, "none", tmp_path, train_batch_size=16, train_micro_batch_size_per_gpu=4,
                 gradient_accumulation_steps=2)
    with pytest.raises(strata.ConfigError, match=r"train_batch_size 16 is not train_micro_batch_size_per_gpu 4 \* "
                                                 r"gradient_accumulation_steps 2 \* world size 1"):
        strata.initialize(model=models.make("gpt"), config=bad)


# DeepSpeed's engine.backward(loss, retain_graph=False, scale_wrt_gas=True) and
# set_gradient_accumulation_boundary (a TypeError and an AttributeError before), against
# plain PyTorch: windows the caller ends after 3 and then 2 micro-batches, each loss
# divided by the configured 4 (as DeepSpeed divides it), the second window's losses
# divided by the caller (scale_wrt_gas=False) and each backward through a graph kept for
# a second loss (retain_graph, stages 1-2: at stage 3 a forward takes one backward); then
# the caller hands the boundary back (None) and the engine counts a window of 4 from the
# last boundary. zero_grad() knows the window's start either way. Note [accumulation
# boundary] (engine.cpp).
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeeds_backward_arguments_and_the_callers_accumulation_boundary(strata, tmp_path, stage):
    window = 4
    engine, ref, opt = engine_and_plain(strata, tmp_path, stage, window)
    retain = stage < 3
    with pytest.raises(strata.ConfigError, match="True, False or None"):
        engine.set_gradient_accumulation_boundary(1)
    applied, step = [], 0
    for n, ended_by in ((3, "engine-scaled"), (2, "caller-scaled"), (window, None)):
        if ended_by is None:
            engine.set_gradient_accumulation_boundary(None)
        for micro in range(n):
            x, y = models.batch("gpt", step, ROWS)
            step += 1
            boundary = micro == n - 1
            if ended_by is not None:
                engine.set_gradient_accumulation_boundary(boundary)
            assert engine.is_gradient_accumulation_boundary() == boundary
            out = engine(x)
            loss = models.loss_fn("gpt", out, y)
            extra = out.square().mean() * 1e-3  # a second loss through the same graph
            if ended_by == "caller-scaled":
                engine.backward(loss / window, retain_graph=retain, scale_wrt_gas=False)
                if retain:
                    engine.backward(extra / window, scale_wrt_gas=False)
            else:
                engine.backward(loss, retain_graph=retain)
                if retain:
                    engine.backward(extra)
            if micro == 1:  # a step() of this window came before: the engine cannot take this backward out
                with pytest.raises(strata.UsageError, match="inside an accumulation window"):
                    engine.zero_grad()
            applied.append(engine.step()["applied"])
            out = ref(x)
            ((models.loss_fn("gpt", out, y) + (out.square().mean() * 1e-3 if retain else 0)) / window).backward()
        opt.step()
        opt.zero_grad()
    assert applied == [False, False, True, False, True, False, False, False, True] and engine.global_steps == 3
    assert_trained_as(engine, ref)
    engine.close()


# Accelerate's DeepSpeed wrapper (DeepSpeedEngineWrapper.backward): every micro-batch
# set_gradient_accumulation_boundary(is_boundary=sync_gradients) and backward(loss), and
# step() only where sync_gradients is True. The backwards of a window sum into its one
# step, as torch's accumulated .grad does.
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_accelerates_loop_steps_once_per_window_at_the_callers_boundary(strata, tmp_path, stage):
    window = 4
    engine, ref, opt = engine_and_plain(strata, tmp_path, stage, window)
    step = 0
    for _ in range(3):
        for micro in range(window):
            x, y = models.batch("gpt", step, ROWS)
            step += 1
            sync = micro == window - 1
            engine.set_gradient_accumulation_boundary(is_boundary=sync)
            engine.backward(models.loss_fn("gpt", engine(x), y))
            if sync:
                assert engine.step()["applied"]
            (models.loss_fn("gpt", ref(x), y) / window).backward()
        opt.step()
        opt.zero_grad()
    assert engine.global_steps == 3
    assert_trained_as(engine, ref)
    engine.close()


# no_sync() at two ranks (worker.py's "no_sync": each window's backwards but the last
# inside it, step() after the last): the backwards inside reduce nothing, the last one
# reduces the window's sum, at every stage (DeepSpeed's allows stages 0-1 only).
@pytest.mark.parametrize("stage,device", [(1, "cpu"), (2, "cpu"), (3, "nvme")])
def test_no_sync_at_two_ranks_matches_plain_pytorch(tmp_path, stage, device):
    spec = {"model": "gpt", "steps": STEPS, "rows": ROWS, "no_sync": 2, "config": config(stage, device, tmp_path)}
    ranks = train(tmp_path, 2, spec)
    assert all(r["steps"] == STEPS // 2 for r in ranks)
    check(ranks, plain(2, window=2), 2)


# DeepSpeed's (and DDP's) engine.no_sync(): the backwards inside accumulate on the rank,
# the first backward after it ends their window and its step() steps them all. DeepSpeed
# allows it at stages 0-1; strata at every stage. step() and a boundary set inside are
# refused, as is nesting; zero_grad() after backwards inside drops them all, as a plain
# loop's optimizer.zero_grad() does.
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_no_sync_accumulates_until_the_backward_after_it(strata, tmp_path, stage):
    engine, ref, opt = engine_and_plain(strata, tmp_path, stage)
    step = 0
    for n in (3, 2):
        with engine.no_sync():
            assert not engine.is_gradient_accumulation_boundary()
            for _ in range(n - 1):
                x, y = models.batch("gpt", step, ROWS)
                step += 1
                engine.backward(models.loss_fn("gpt", engine(x), y))
                models.loss_fn("gpt", ref(x), y).backward()
            with pytest.raises(strata.UsageError, match="step\\(\\) inside no_sync"):
                engine.step()
            with pytest.raises(strata.UsageError, match="inside no_sync"):
                engine.set_gradient_accumulation_boundary(True)
            with pytest.raises(strata.UsageError, match="no_sync\\(\\) inside no_sync"):
                with engine.no_sync():
                    pass
        assert engine.is_gradient_accumulation_boundary()
        x, y = models.batch("gpt", step, ROWS)
        step += 1
        engine.backward(models.loss_fn("gpt", engine(x), y))
        assert engine.step()["applied"]
        models.loss_fn("gpt", ref(x), y).backward()
        opt.step()
        opt.zero_grad()
    # Backwards inside, then zero_grad(): nothing of them reaches the next step.
    with engine.no_sync():
        x, y = models.batch("gpt", 99, ROWS)
        engine.backward(models.loss_fn("gpt", engine(x), y))
    engine.zero_grad()
    x, y = models.batch("gpt", step, ROWS)
    engine.backward(models.loss_fn("gpt", engine(x), y))
    engine.step()
    models.loss_fn("gpt", ref(x), y).backward()
    opt.step()
    assert engine.global_steps == 3
    assert_trained_as(engine, ref)
    engine.close()
