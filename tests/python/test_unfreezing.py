"""Unfreezing a parameter after the engine was built (progressive unfreezing). The engine
keeps optimizer state only for the parameters that were trainable when it was built, so
step() refuses a parameter unfrozen later, before anything steps (Note [unfreezing],
src/engine/engine.cpp): it used to train on without it, apart from plain PyTorch without
a word. The two ways the error names train as plain PyTorch does. One rank, in this
process."""
import pytest
import torch

import models
from test_initialize import LR, ROWS, WD, rel

LATE = "blocks.0.fc.weight"  # frozen at first, trained from step UNFREEZE on
UNFREEZE, STEPS = 2, 4
PLACES = [(2, "cpu"), (3, "nvme")]


@pytest.fixture
def strata():
    import strata as s
    return s


def config(stage, device, tmp):
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0,
            "offload_optimizer": {"device": device, "nvme_path": str(tmp)}}
    if stage == 3:
        zero["offload_param"] = {"device": device, "nvme_path": str(tmp)}
    return {"train_batch_size": ROWS, "zero_optimization": zero, "strata": {"chunk_size": 1024},
            "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}}


def late(model):
    return dict(model.named_parameters())[LATE]


def train(engine, steps):
    losses = []
    for step in steps:
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def plain():
    """torch.optim.AdamW over every parameter, LATE frozen until step UNFREEZE: torch
    makes no state for a parameter without a gradient and does not step it."""
    model = models.make("gpt")
    late(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    losses = []
    for step in range(STEPS):
        late(model).requires_grad_(step >= UNFREEZE)
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach() for k, v in model.named_parameters()}


def check(losses, engine, want):
    want_losses, want_params = want
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(losses, want_losses)), (losses, want_losses)
    got = engine.consolidated_state_dict()
    for k, v in want_params.items():
        assert rel(got[k].reshape(-1), v.reshape(-1)) <= 1e-5, f"{k}: relative error {rel(got[k].reshape(-1), v.reshape(-1))}"


@pytest.mark.parametrize("stage,device", PLACES)
def test_unfreezing_after_initialize_is_refused_before_anything_steps(strata, tmp_path, stage, device):
    model = models.make("gpt")
    late(model).requires_grad_(False)
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path))
    train(engine, range(UNFREEZE))
    before = {k: v.clone() for k, v in engine.consolidated_state_dict().items()}
    late(model).requires_grad_(True)
    x, y = models.batch("gpt", UNFREEZE, ROWS)
    engine.backward(models.loss_fn("gpt", engine(x), y))
    with pytest.raises(strata.NotImplementedByStrata, match=rf"parameter '{LATE}' was frozen \(requires_grad=False\) "
                       "when the engine was built and requires grad now"):
        engine.step()
    assert engine.global_steps == UNFREEZE
    after = engine.consolidated_state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    engine.close()
    if stage == 3:  # the closed engine took the values with it
        with pytest.raises(strata.ConfigError, match=r"parameter '[^']+' holds no values .* stage-3 engine was closed"):
            strata.initialize(model=model, config=config(stage, device, tmp_path))


@pytest.mark.parametrize("stage,device", PLACES)
def test_trainable_when_built_and_frozen_right_after_matches_plain_pytorch(strata, tmp_path, stage, device):
    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path))
    losses = []
    for step in range(STEPS):
        late(model).requires_grad_(step >= UNFREEZE)
        losses += train(engine, [step])
    check(losses, engine, plain())
    engine.close()


@pytest.mark.parametrize("stage,device", PLACES)
def test_a_new_engine_from_a_checkpoint_trains_the_unfrozen_parameter_as_plain_pytorch(strata, tmp_path, stage, device):
    model = models.make("gpt")
    late(model).requires_grad_(False)
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path))
    losses = train(engine, range(UNFREEZE))
    engine.save_checkpoint(tmp_path / "ckpt")
    engine.close()
    fresh = models.make("gpt", seed=1)  # the checkpoint brings the values
    engine, *_ = strata.initialize(model=fresh, config=config(stage, device, tmp_path))
    engine.load_checkpoint(tmp_path / "ckpt")
    losses += train(engine, range(UNFREEZE, STEPS))
    check(losses, engine, plain())
    engine.close()
