"""Modules that return their own parameter: as it is (a learned token or scale getter, a
leaf) or a view of it (a learned position table sliced to the sequence). At stage 3 the
caller's forward must hold the parameter gathered: registered with the caller
(strata.register_external_parameter, as DeepSpeed's) it is from the first step. Before, a returned leaf kept the
engine's backward hook of every forward (hooks on a leaf outlive the graph): the second
step failed with "a second backward through one forward" although there was one
(Note [leaf outputs], src/engine/access_driver.cpp). Unregistered, the caller's unit
adopts them where it uses them (Note [adopted parameters], src/engine/access_driver.h).
One rank, in this process, against plain PyTorch."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from test_grads import config
from test_initialize import LR, ROWS, WD, rel

STEPS, VOCAB, SEQ = 4, 32, 6


@pytest.fixture
def strata():
    import strata as s
    return s


class Table(nn.Module):
    def __init__(self, rows, dim, sliced):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, dim) * 0.1)
        self.sliced = sliced

    def forward(self, n):
        return self.weight[:n] if self.sliced else self.weight  # a view, or the leaf itself


class Gain(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self):
        return self.g.view(1, 1, -1)


class ReturnsParams(nn.Module):
    def __init__(self, sliced):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.pos = Table(SEQ if not sliced else 2 * SEQ, 16, sliced)
        self.gain = Gain(16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, x):
        h = (self.emb(x) + self.pos(x.shape[1])) * self.gain()
        return self.head(torch.tanh(h))


def batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, VOCAB, (ROWS, SEQ), generator=g), torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)


def loss_of(out, y):
    return F.cross_entropy(out.flatten(0, 1), y.flatten())


def pair(strata, sliced, register=True):
    torch.manual_seed(0)
    ref = ReturnsParams(sliced)
    model = ReturnsParams(sliced)
    model.load_state_dict(ref.state_dict())
    if register:
        strata.register_external_parameter(model, model.pos.weight)
        strata.register_external_parameter(model, model.gain.g)
    return model, ref


def torch_loop(model, opt):
    """The plain PyTorch loop (fully_shard's too); the losses."""
    losses = []
    for step in range(STEPS):
        x, y = batch(step)
        loss = loss_of(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def train_plain(ref):
    return torch_loop(ref, torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD))


@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("stage,device", [(3, "nvme"), (3, "cpu"), (3, "none"), (2, "cpu")])
def test_a_returned_parameter_trains_as_plain_pytorch(strata, tmp_path, sliced, stage, device):
    model, ref = pair(strata, sliced)
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path))
    engine_matches_plain(engine, ref)


def engine_matches_plain(engine, ref):
    """Trains through `engine` and `ref` in plain PyTorch: the losses and the consolidated
    parameters agree within 1e-5. Closes the engine."""
    losses = []
    for step in range(STEPS):
        x, y = batch(step)
        loss = loss_of(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    want = train_plain(ref)
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(losses, want)), (losses, want)
    got = engine.consolidated_state_dict()
    for k, v in ref.named_parameters():
        assert rel(got[k], v.detach()) <= 1e-5, k
    engine.close()


def test_a_returned_parameter_under_fully_shard(strata):
    model, ref = pair(strata, sliced=False)
    strata.fully_shard(model.pos)
    strata.fully_shard(model.gain)
    strata.fully_shard(model)
    losses = torch_loop(model, strata.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD))
    want = train_plain(ref)
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(losses, want)), (losses, want)
    got = strata.get_model_state_dict(model)
    for k, v in ref.named_parameters():
        assert rel(got[k].view_as(v), v.detach()) <= 1e-5, k


# Note [adopted parameters]: unregistered, the leaf and the views (pos.weight[:n],
# gain.g.view(...)) are gathered where the caller's forward uses them, and training
# matches plain PyTorch (losses and consolidated parameters). Before, the views were refused with a UsageError naming
# register_external_parameter.
@pytest.mark.parametrize("sliced", [False, True])
def test_an_unregistered_returned_parameter_is_adopted_by_its_caller(strata, tmp_path, sliced):
    model, ref = pair(strata, sliced, register=False)
    engine, *_ = strata.initialize(model=model, config=config(3, "nvme", tmp_path))
    engine_matches_plain(engine, ref)
