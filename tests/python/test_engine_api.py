"""What DeepSpeed training scripts call on the engine beyond forward, backward and step:
the model's own attributes through the engine (DeepSpeed's engine passes what it lacks to
its module: engine.config, engine.generate(...)), and the accessors integrations read
(zero_optimization_stage, bfloat16_enabled, device, dp_world_size, local_rank); and
initialize's script-side arguments (args with --deepspeed_config, training_data and the
data loader it returns). Each was an AttributeError or a TypeError before. One rank, in
this process."""
import argparse
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from test_initialize import LR, ROWS, WD, rel


@pytest.fixture
def strata():
    import strata as s
    return s


class WithExtras(nn.Module):
    """A model with what Hugging Face models carry: a config object and a method of its
    own that runs the forward (generate)."""

    def __init__(self):
        super().__init__()
        self.config = {"hidden": 16}
        self.inp = nn.Linear(8, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)))

    def generate(self, x, steps):
        for _ in range(steps):
            x = self(x)
        return x


def config(stage, tmp):
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0}
    if stage == 3:
        zero["offload_param"] = {"device": "nvme", "nvme_path": str(tmp)}
        zero["offload_optimizer"] = {"device": "nvme", "nvme_path": str(tmp)}
    return {"train_batch_size": ROWS, "zero_optimization": zero, "strata": {"chunk_size": 1024},
            "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}}


@pytest.mark.parametrize("stage", [1, 3])
def test_the_models_attributes_through_the_engine(strata, tmp_path, stage):
    torch.manual_seed(0)
    ref = WithExtras()
    model = WithExtras()
    model.load_state_dict(ref.state_dict())
    engine, *_ = strata.initialize(model=model, config=config(stage, tmp_path))
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    assert engine.config is model.config
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(ROWS, 8, generator=g), torch.randn(ROWS, 8, generator=g)
        engine.backward(F.mse_loss(engine(x), y))
        engine.step()
        F.mse_loss(ref(x), y).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # the model's own method, its forwards gathered at stage 3
            got, want = engine.generate(x, steps=2), ref.generate(x, steps=2)
        assert rel(got, want) <= 1e-5, f"step {step}: generate {rel(got, want)} off"
    with pytest.raises(AttributeError, match=r"'Engine' object and its module \(WithExtras\) have no attribute "
                                             r"'nothing_here'"):
        engine.nothing_here
    assert not hasattr(engine, "__nothing__")
    engine.close()


def test_deepspeeds_accessors(strata, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    engine, *_ = strata.initialize(model=models.make("gpt"), config=config(3, tmp_path))
    assert engine.zero_optimization_stage() == 3
    assert engine.dp_world_size == engine.world_size == 1 and engine.local_rank == 0
    assert engine.device == torch.device("cpu") and not engine.bfloat16_enabled() and not engine.fp16_enabled()
    engine.close()
    # A bf16 model with no precision section computes in bf16 (test_model_dtype.py): so it says.
    engine, *_ = strata.initialize(model=models.make("gpt").bfloat16(), config=config(1, tmp_path))
    assert engine.bfloat16_enabled() and engine.zero_optimization_stage() == 1
    engine.close()


# DeepSpeed's CIFAR-10 tutorial's start: the config from --deepspeed_config, the data
# loader from training_data (this rank's micro-batches through a DistributedSampler),
# trained against plain PyTorch over the same batches in the sampler's order.
def test_initialize_from_command_line_arguments_with_a_data_loader(strata, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config(3, tmp_path)))
    args = strata.add_config_arguments(argparse.ArgumentParser()).parse_args(
        ["--deepspeed", "--deepspeed_config", str(path)])
    assert args.deepspeed
    rows = 3 * ROWS + 3  # a last partial batch
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(rows, 8, generator=g), torch.randn(rows, 8, generator=g))
    torch.manual_seed(0)
    ref = WithExtras()
    model = WithExtras()
    model.load_state_dict(ref.state_dict())
    engine, _, loader, _ = strata.initialize(args=args, model=model, model_parameters=model.parameters(),
                                             training_data=data, dist_init_required=True)
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) and len(loader) == 4
    order = list(loader.sampler)
    assert sorted(order) == list(range(rows)) and order != list(range(rows))  # shuffled, every row once
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    sizes = []
    for (x, y), start in zip(loader, range(0, rows, ROWS)):
        sizes.append(len(x))
        engine.backward(F.mse_loss(engine(x), y))
        engine.step()
        x, y = data[order[start:start + ROWS]]
        F.mse_loss(ref(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert sizes == [ROWS, ROWS, ROWS, 3]
    got = engine.consolidated_state_dict()
    for k, v in ref.named_parameters():
        assert rel(got[k], v.detach()) <= 1e-5, k
    engine.close()
    # The config's dataloader_drop_last drops the partial batch; engine.deepspeed_io makes
    # another loader.
    engine, _, loader, _ = strata.initialize(model=WithExtras(), config={**config(1, tmp_path),
                                                                        "dataloader_drop_last": True},
                                             training_data=data)
    assert len(loader) == 3 and len(engine.deepspeed_io(data, batch_size=2)) == rows // 2
    engine.close()


def test_initializes_arguments_that_conflict_or_strata_lacks_are_refused(strata, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config(1, tmp_path)))
    args = strata.add_config_arguments(argparse.ArgumentParser()).parse_args(["--deepspeed_config", str(path)])
    with pytest.raises(strata.ConfigError, match="both in the call and in args.deepspeed_config"):
        strata.initialize(args=args, model=WithExtras(), config=config(1, tmp_path))
    with pytest.raises(strata.ConfigError, match="needs a config"):
        strata.initialize(model=WithExtras())
    with pytest.raises(strata.ConfigError, match="both config and config_params"):
        strata.initialize(model=WithExtras(), config=config(1, tmp_path), config_params=config(1, tmp_path))
    with pytest.raises(strata.ConfigError, match="dataloader_drop_last: expected true or false"):
        strata.initialize(model=WithExtras(), config={**config(1, tmp_path), "dataloader_drop_last": "true"})
    with pytest.raises(strata.NotImplementedByStrata, match="mpu=.*no model"):
        strata.initialize(model=WithExtras(), config_params=config(1, tmp_path), mpu=object())
    engine, _, loader, _ = strata.initialize(model=WithExtras(), config_params=config(1, tmp_path))
    assert loader is None and engine.zero_optimization_stage() == 1
    engine.close()
