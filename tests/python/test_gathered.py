"""strata.GatheredParameters (DeepSpeed's GatheredParameters): reading and editing
parameters between steps at stage 3, where they hold no values outside their module's
forward (Note [gathered parameters], src/engine/state_dict.cpp). Before it, an EMA of the
weights, weight clipping or re-initializing a layer at stage 3 had no way in: the guard
refused the parameter (test_param_edits.py). One rank, in this process; test_gan.py
clips a WGAN critic through it at two ranks and every stage."""
import pytest
import torch

import models
from test_initialize import LR, ROWS, WD, rel

STEPS, CLIP = 4, 0.05


@pytest.fixture
def strata():
    import strata as s
    return s


def config(stage, device, tmp):
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0}
    if device != "none":
        zero["offload_optimizer"] = {"device": device, "nvme_path": str(tmp)}
        if stage == 3:
            zero["offload_param"] = {"device": device, "nvme_path": str(tmp)}
    cfg = {"train_batch_size": ROWS, "zero_optimization": zero, "strata": {"chunk_size": 1024},
           "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}}
    return cfg


def frozen(model):
    return model.blocks[1].fc.bias  # frozen before initialize: at stage 3 the engine holds it too


def between_steps(model, step, gathered):
    """Weight clipping after even steps, re-initializing a row and moving a frozen bias
    after odd ones; an EMA of the weights read every step."""
    params = list(model.parameters())
    with gathered(params), torch.no_grad():
        if step % 2 == 0:
            for p in params:
                p.clamp_(-CLIP, CLIP)
        else:
            torch.manual_seed(step)
            model.wte.weight[step].normal_()
            frozen(model).add_(0.5)
        ema = [p.detach().clone() for p in params]
    return ema


def train(model, step_fn, gathered):
    frozen(model).requires_grad_(False)
    losses, emas = [], []
    for step in range(STEPS):
        x, y = models.batch("gpt", step, ROWS)
        losses.append(step_fn(x, y))
        emas.append(between_steps(model, step, gathered))
    return losses, emas


@pytest.mark.parametrize("stage,device", [(3, "nvme"), (3, "cpu"), (3, "none"), (2, "cpu")])
def test_edits_and_reads_between_steps_match_plain_pytorch(strata, tmp_path, stage, device):
    want_model = models.make("gpt")
    frozen(want_model).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in want_model.parameters() if p.requires_grad], lr=LR, weight_decay=WD)

    def plain_step(x, y):
        loss = models.loss_fn("gpt", want_model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    import contextlib
    want_losses, want_emas = train(want_model, plain_step, lambda ps: contextlib.nullcontext())

    model = models.make("gpt")
    frozen(model).requires_grad_(False)
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path))

    def strata_step(x, y):
        loss = models.loss_fn("gpt", engine(x), y)
        engine.backward(loss)
        engine.step()
        return loss.item()

    losses, emas = train(model, strata_step, strata.GatheredParameters)
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(losses, want_losses)), (losses, want_losses)
    for s, (got, want) in enumerate(zip(emas, want_emas)):
        for g, w in zip(got, want):
            assert rel(g, w) <= 1e-5, f"step {s}: a read parameter is {rel(g, w)} off"
    got = engine.consolidated_state_dict()
    for k, v in want_model.named_parameters():
        assert rel(got[k], v.detach()) <= 1e-5, f"{k}: relative error {rel(got[k], v.detach())}"
    engine.close()


def test_what_cannot_run_inside_is_refused(strata, tmp_path):
    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config(3, "cpu", tmp_path))
    x, y = models.batch("gpt", 0, ROWS)
    with strata.GatheredParameters(model.parameters()):
        with pytest.raises(strata.UsageError, match=r"a forward while parameters are gathered"):
            engine(x)
    engine.backward(models.loss_fn("gpt", engine(x), y))
    with strata.GatheredParameters(model.parameters()):
        with pytest.raises(strata.UsageError, match=r"step\(\) while parameters are gathered"):
            engine.step()
    engine.step()  # the backward is still there to step
    with pytest.raises(strata.UsageError, match="modifier_rank 1 is not a rank"):
        with strata.GatheredParameters(model.parameters(), modifier_rank=1):
            pass
    # An exception inside: the parameters get their storage back, the edit is dropped.
    before = engine.consolidated_state_dict()
    with pytest.raises(ValueError):
        with strata.GatheredParameters(model.parameters()), torch.no_grad():
            model.wte.weight.zero_()
            raise ValueError
    assert all(torch.equal(v, before[k]) for k, v in engine.consolidated_state_dict().items())
    engine.backward(models.loss_fn("gpt", engine(x), y))
    engine.step()
    engine.close()


# fully_shard + strata.optim (the FSDP2 loop) at stage 3, parameters and optimizer on host.
def test_weight_clipping_under_fully_shard(strata):
    import contextlib

    from test_param_edits import optimizer_loop

    def run(sharded):
        model = models.make("gpt")
        if sharded:
            offload = strata.OffloadPolicy(optimizer="cpu", params="cpu")
            for block in model.blocks:
                strata.fully_shard(block, offload=offload)
            strata.fully_shard(model, offload=offload)
            opt = strata.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)

        def clip(model, step):
            params = list(model.parameters())
            context = strata.GatheredParameters(params, modifier_rank=0) if sharded else contextlib.nullcontext()
            with context, torch.no_grad():
                for p in params:
                    p.clamp_(-CLIP, CLIP)

        return optimizer_loop(model, opt, clip, read_params=False)[0]

    got, want = run(True), run(False)
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got, want)), (got, want)


# A plain tensor over a released parameter's storage (p.data; copy.deepcopy(model), which
# clones p.data) is refused by the guard too: it killed the process before (SIGSEGV).
def test_a_copy_of_released_values_is_refused_not_a_crash(strata, tmp_path):
    import copy

    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config(3, "cpu", tmp_path))
    x, y = models.batch("gpt", 0, ROWS)
    engine.backward(models.loss_fn("gpt", engine(x), y))
    engine.step()
    released = r"a tensor over the storage of a stage-3 parameter"
    with pytest.raises(strata.UsageError, match=released):
        copy.deepcopy(model)
    with pytest.raises(strata.UsageError, match=released):
        model.blocks[0].qkv.weight.data.norm()
    with strata.GatheredParameters([model.blocks[0].qkv.weight]):
        norm = model.blocks[0].qkv.weight.data.norm()
    assert norm.item() == pytest.approx(engine.consolidated_state_dict()["blocks.0.qkv.weight"].norm().item())
    engine.close()
