"""A model whose parameters are bf16 (built so, or .bfloat16()'d: Hugging Face's
torch_dtype=torch.bfloat16) with a config that enables neither bf16 nor fp16: strata
computes in the model's dtype over fp32 masters, as DeepSpeed (which casts only when a
precision section says so), FSDP2 with no param_dtype and a plain loop keep it. Before,
the engine made the parameters fp32 without a word: the model trained in another dtype
than it was built in, and a forward that fed them bf16 failed in ATen. A model whose
parameters have several dtypes is refused by name, the model left as it was given.
Note [the model's dtype] (python/strata/_units.py). One rank, in this process."""
import copy

import pytest
import torch
import torch.nn as nn

import models
from test_grads import config
from test_initialize import LR, ROWS, WD, rel

STEPS = 4


@pytest.fixture
def strata():
    import strata as s
    return s


def rounded_gpt():
    """The GPT in fp32 holding bf16-representable values: what .bfloat16() keeps of it."""
    model = models.make("gpt")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16())
    return model


def plain_bf16_training():
    """Plain PyTorch: fp32 masters stepped by torch AdamW, the forward and backward in a bf16
    copy of them. The losses and the final masters."""
    master = rounded_gpt()
    compute = copy.deepcopy(master).bfloat16()
    opt = torch.optim.AdamW(master.parameters(), lr=LR, weight_decay=WD)
    losses = []
    for step in range(STEPS):
        with torch.no_grad():
            for c, m in zip(compute.parameters(), master.parameters()):
                c.copy_(m)
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", compute(x), y)
        loss.backward()
        for c, m in zip(compute.parameters(), master.parameters()):
            m.grad, c.grad = c.grad.float(), None
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, dict(master.named_parameters())


def train(engine, model):
    losses = []
    for step in range(STEPS):
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    return losses, engine.consolidated_state_dict()


@pytest.mark.parametrize("stage,device", [(1, "none"), (2, "cpu"), (3, "nvme"), (3, "cpu")])
def test_a_bf16_model_trains_in_bf16_without_a_precision_section(strata, tmp_path, stage, device):
    want_losses, want = plain_bf16_training()
    model = rounded_gpt().bfloat16()
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path / "a"))
    assert engine._config["bf16"] == {"enabled": True}  # what save_checkpoint records
    losses, got = train(engine, model)
    engine.close()
    for s, (g, w) in enumerate(zip(losses, want_losses)):
        assert abs(g - w) <= 1e-2 * abs(w), f"step {s}: loss {g} vs plain bf16 training {w}"
    for k, v in want.items():
        assert rel(got[k].float(), v.detach().reshape(got[k].shape)) <= 1e-2, k
    # Exactly what the fp32 model with bf16 enabled trains to, from the same values.
    fp32_model = rounded_gpt()
    ref, *_ = strata.initialize(model=fp32_model, config=config(stage, device, tmp_path / "b",
                                                                 bf16={"enabled": True}))
    ref_losses, ref_got = train(ref, fp32_model)
    ref.close()
    assert losses == ref_losses
    assert all(torch.equal(got[k], ref_got[k]) for k in ref_got)


def test_fully_shard_and_the_sharded_optimizer_keep_a_bf16_models_dtype(strata, tmp_path):
    # FSDP2 with no mp_policy computes in the parameters' own dtype; so does FairScale OSS.
    want_losses, want = plain_bf16_training()
    model = rounded_gpt().bfloat16()
    for block in model.blocks:
        strata.fully_shard(block)
    strata.fully_shard(model)
    opt = strata.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    for step in range(STEPS):
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert abs(loss.item() - want_losses[step]) <= 1e-2 * abs(want_losses[step]), step
    got = strata.get_model_state_dict(model)
    for k, v in want.items():
        assert rel(got[k].float(), v.detach().reshape(got[k].shape)) <= 1e-2, k

    # An explicit param_dtype is FSDP2's cast: float32 trains the bf16 model in fp32.
    model = rounded_gpt().bfloat16()
    strata.fully_shard(model, mp_policy=strata.MixedPrecisionPolicy(param_dtype=torch.float32))
    strata.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    model = rounded_gpt().bfloat16()
    opt = strata.ShardedOptimizer(model.parameters(), torch.optim.AdamW, lr=LR, weight_decay=WD)
    for step in range(STEPS):
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", model(x), y)
        loss.backward()
        opt.step()
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        assert abs(loss.item() - want_losses[step]) <= 1e-2 * abs(want_losses[step]), step
    for k, p in model.named_parameters():
        assert rel(p.float(), want[k].detach()) <= 1e-2, k


class MixedDtypes(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4).bfloat16()

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)).bfloat16()).float()


def test_parameters_of_several_dtypes_are_refused_by_name(strata, tmp_path):
    named = r"'inp.weight' is float32, 'out.weight' is bfloat16"
    model = MixedDtypes()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(strata.ConfigError, match=named + r".*model.float\(\)"):
        strata.initialize(model=model, config=config(3, "nvme", tmp_path))
    with pytest.raises(strata.ConfigError, match=r"'param0' is float32, 'param2' is bfloat16"):
        strata.ShardedOptimizer(model.parameters(), torch.optim.AdamW, lr=LR)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    model(torch.randn(2, 8))  # still the caller's model, forward and all
    assert not any(tmp_path.iterdir()), "the refused build left swap files"
    # A precision section decides: every parameter is cast to bf16 (DeepSpeed's module.bfloat16()).
    engine, *_ = strata.initialize(model=model, config=config(1, "none", tmp_path, bf16={"enabled": True}))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    engine.close()

    model = MixedDtypes()
    strata.fully_shard(model)
    with pytest.raises(strata.ConfigError, match=named):
        strata.optim.AdamW(model.parameters(), lr=LR)


def test_an_fp16_model_on_the_cpu_is_refused_as_fp16_compute(strata, tmp_path):
    with pytest.raises(strata.ConfigError, match=r"fp16 compute needs a GPU.*model's parameters are float16"):
        strata.initialize(model=models.make("gpt").half(), config=config(2, "cpu", tmp_path))
