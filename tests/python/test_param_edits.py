"""In-place edits of trained parameters after strata.initialize: loading other weights
into the wrapped model mid-training, weight clipping, re-initializing a row. Plain
PyTorch steps from the edited values with the optimizer state it has; so does strata
now (Note [edited parameters], src/engine/param_edits.cpp). Before, the engine's fp32
master overwrote the edit at the next step without a word (the loaded weights were gone
after one step: 1.5 relative off), and then refused it by name. One rank, in this
process; test_gan.py clips a WGAN critic at two ranks."""
import contextlib

import pytest
import torch

import models
from test_initialize import LR, ROWS, WD, rel

STEPS = 5
CLIP = 0.05


@pytest.fixture
def strata():
    import strata as s
    return s


def config(stage, device, tmp, bf16=False, offload_param=False):
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0}
    if device != "none":
        zero["offload_optimizer"] = {"device": device, "nvme_path": str(tmp)}
    if offload_param:
        zero["offload_param"] = {"device": device, "nvme_path": str(tmp)}
    cfg = {"train_batch_size": ROWS, "zero_optimization": zero, "strata": {"chunk_size": 1024},
           "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}}
    if bf16:
        cfg["bf16"] = {"enabled": True}
    return cfg


def frozen(model):
    return model.blocks[0].fc.bias  # frozen before initialize: the caller's own at stages 0-2


def edit(model, step):
    """What the training scripts do between steps, after step `step`."""
    with torch.no_grad():
        if step == 0:
            model.load_state_dict(models.make("gpt", seed=1).state_dict())  # the optimizer state stays
        elif step == 1:
            for p in model.parameters():
                p.clamp_(-CLIP, CLIP)  # WGAN-style weight clipping, frozen ones too
        elif step == 2:
            model.wte.weight[3].normal_()  # re-initialize one row (seeded by the make above)
            frozen(model).add_(1.0)


def optimizer_loop(model, opt, after_step, read_params=True):
    """The torch loop with an optimizer, after_step(model, step) after each step: losses,
    final parameters (None without read_params: stage 3's are released)."""
    losses = []
    for step in range(STEPS):
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        after_step(model, step)
    return losses, {k: v.detach().clone() for k, v in model.named_parameters()} if read_params else None


def plain():
    model = models.make("gpt")
    frozen(model).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WD)
    return optimizer_loop(model, opt, edit)


# Stage 3 at one rank with the parameters on the compute tier keeps each chunk whole
# there (aliased), so its parameters hold their values between steps as at stages 0-2.
@pytest.mark.parametrize("stage,device", [(0, "none"), (1, "cpu"), (2, "nvme"), (3, "nvme")])
def test_edits_between_steps_train_as_plain_pytorch(strata, tmp_path, stage, device):
    model = models.make("gpt")
    frozen(model).requires_grad_(False)
    engine, *_ = strata.initialize(model=model, config=config(stage, device, tmp_path))
    losses = []
    for step in range(STEPS):
        x, y = models.batch("gpt", step, ROWS)
        loss = models.loss_fn("gpt", engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        edit(model, step)
    want_losses, want = plain()
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(losses, want_losses)), (losses, want_losses)
    # The last step's edits are in what consolidation and a checkpoint give.
    with torch.no_grad():
        model.blocks[1].fc.weight.mul_(0.5)
        want["blocks.1.fc.weight"].mul_(0.5)
    got = engine.consolidated_state_dict()
    for k, v in want.items():
        assert rel(got[k], v) <= 1e-5, f"{k}: relative error {rel(got[k], v)}"
    engine.save_checkpoint(tmp_path / "ckpt")
    engine.close()
    again = models.make("gpt", seed=2)
    frozen(again).requires_grad_(False)
    loaded, *_ = strata.initialize(model=again, config=config(stage, device, tmp_path))
    loaded.load_checkpoint(tmp_path / "ckpt")
    got = loaded.consolidated_state_dict()
    for k, v in want.items():
        if k != "blocks.0.fc.bias":  # frozen: not the engine's, the new model's own
            assert rel(got[k], v) <= 1e-5, f"loaded {k}: relative error {rel(got[k], v)}"
    loaded.close()


# bf16 compute: an element whose bf16 value is no longer its master's rounding takes the
# new value; every other element keeps its fp32 master (clipping a few elements does not
# round the rest to bf16). At stage 3 inside strata.GatheredParameters, which lends the
# parameter in bf16 (test_gathered.py); a read there changes nothing.
@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_edits_replace_only_the_changed_elements(strata, tmp_path, stage):
    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config(stage, "cpu", tmp_path, bf16=True,
                                                              offload_param=stage == 3))
    for step in range(2):
        x, y = models.batch("gpt", step, ROWS)
        engine.backward(models.loss_fn("gpt", engine(x), y))
        engine.step()
    before = engine.consolidated_state_dict()
    name = "blocks.0.qkv.weight"
    param = dict(model.named_parameters())[name]
    assert param.dtype == torch.bfloat16
    gathered = (lambda **kw: strata.GatheredParameters([param], **kw)) if stage == 3 else \
        (lambda **kw: contextlib.nullcontext())
    with gathered():
        assert torch.equal(param, before[name].to(torch.bfloat16))
    assert all(torch.equal(v, before[k]) for k, v in engine.consolidated_state_dict().items())
    bound = before[name].abs().max().item() * 0.9  # clips only the largest elements
    with gathered(modifier_rank=0), torch.no_grad():
        param.clamp_(-bound, bound)
    after = engine.consolidated_state_dict()
    rounded = before[name].to(torch.bfloat16)
    changed = rounded.clamp(-bound, bound) != rounded
    assert 0 < changed.sum() < changed.numel() // 4
    want = torch.where(changed, rounded.clamp(-bound, bound).float(), before[name])
    assert torch.equal(after[name], want)
    for k, v in before.items():
        if k != name:
            assert torch.equal(after[k], v), k
    engine.close()


# ShardedOptimizer's torch.optim optimizer steps views of the engine's masters.
def test_weight_clipping_with_the_sharded_optimizer(strata):
    def clip(model, step):
        with torch.no_grad():
            for p in model.parameters():
                p.clamp_(-CLIP, CLIP)

    def run(make_optimizer):
        model = models.make("gpt")
        return optimizer_loop(model, make_optimizer(model.parameters()), clip)

    got_losses, got = run(lambda ps: strata.ShardedOptimizer(ps, optim=torch.optim.AdamW, lr=LR, weight_decay=WD))
    want_losses, want = run(lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD))
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got_losses, want_losses)), (got_losses, want_losses)
    for k, v in want.items():
        assert rel(got[k], v) <= 1e-5, f"{k}: relative error {rel(got[k], v)}"


def test_an_edit_of_a_released_parameter_at_stage_3_is_refused_by_name(strata, tmp_path):
    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config(3, "cpu", tmp_path, offload_param=True))
    x, y = models.batch("gpt", 0, ROWS)
    engine.backward(models.loss_fn("gpt", engine(x), y))
    engine.step()
    with pytest.raises(strata.UsageError, match=r"parameter 'wte.weight' was used outside the forward"):
        with torch.no_grad():
            model.wte.weight.clamp_(-CLIP, CLIP)
    engine.close()


class RenormingEmbeddings(torch.nn.Module):
    """Embeddings with max_norm renormalize the rows a forward looks up, in place: a
    trained table and a frozen one."""

    def __init__(self, rows=64, dim=16):
        super().__init__()
        self.emb = torch.nn.Embedding(rows, dim, max_norm=1.0)
        self.fixed = torch.nn.Embedding(rows, dim, max_norm=2.0)
        self.fixed.weight.requires_grad_(False)
        self.head = torch.nn.Linear(2 * dim, 4)

    def forward(self, idx):
        return self.head(torch.cat([self.emb(idx), self.fixed(idx)], -1).mean(1))


def renorming_loop(run, backward, step, steps):
    """Steps of two micro-batches over rows 0-47 (step(micro) after each), each step
    followed by an evaluation forward over rows 48-63 (which renormalizes them too): the
    losses."""
    losses = []
    for s in range(steps):
        for micro in range(2):
            g = torch.Generator().manual_seed(10 * s + micro)
            idx, y = torch.randint(0, 48, (ROWS, 6), generator=g), torch.randn(ROWS, 4, generator=g)
            loss = torch.nn.functional.mse_loss(run(idx).float(), y)
            backward(loss)
            step(micro)
            losses.append(loss.item())
        with torch.no_grad():
            run(torch.arange(48, 64).view(2, 8))
    return losses


# nn.Embedding(max_norm=...) renormalizes the rows it looks up in place, inside the
# forward: at stage 3 that is while the chunk is gathered. The change now goes into the
# master and the shard when the chunk is released (Note [edits while gathered]), as plain
# PyTorch keeps it; before, stage 3 with the parameters off the compute tier refused the
# step ("changed in place since the engine last wrote it"). Shards on nvme (read ahead by
# the schedule's loads), in host memory, in bf16, and persistent chunks (gathered until
# the step); stage 2 as the baseline. "big": 64 MiB tables, each a 64 MiB nvme record
# rewritten whole for the rows an access renormalized.
@pytest.mark.parametrize("stage,device,bf16,persistent,big", [
    (2, "nvme", False, False, False), (3, "nvme", False, False, False), (3, "cpu", False, False, False),
    (3, "cpu", True, False, False), (3, "cpu", False, True, False), (3, "nvme", False, False, True)])
def test_edits_inside_the_forward_are_kept_at_every_placement(strata, tmp_path, stage, device, bf16, persistent, big):
    sizes = {"rows": 65536, "dim": 256} if big else {}
    torch.manual_seed(0)
    ref = RenormingEmbeddings(**sizes)
    model = RenormingEmbeddings(**sizes)
    model.load_state_dict(ref.state_dict())
    if bf16:  # the reference starts from and trains in what bf16 compute sees: the rounded weights
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.bfloat16())
    cfg = config(stage, device, tmp_path, bf16=bf16, offload_param=stage == 3)
    cfg["train_batch_size"] = 2 * ROWS
    cfg["train_micro_batch_size_per_gpu"] = ROWS
    if big:
        cfg["strata"]["chunk_size"] = 65536 * 256
    if persistent:
        del cfg["zero_optimization"]["stage3_param_persistence_threshold"]  # DeepSpeed's 1e5: all persistent
    engine, *_ = strata.initialize(model=model, config=cfg)
    steps = 2 if big else STEPS
    got_losses = renorming_loop(engine, engine.backward, lambda micro: engine.step(), steps)
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=LR, weight_decay=WD)

    def ref_step(micro):
        if micro == 1:
            opt.step()
            opt.zero_grad()

    want_losses = renorming_loop(ref, lambda loss: (loss / 2).backward(), ref_step, steps)
    tol = 2e-2 if bf16 else 1e-5
    assert all(abs(g - w) <= tol * abs(w) for g, w in zip(got_losses, want_losses)), (got_losses, want_losses)
    got = engine.consolidated_state_dict()
    for k, v in ref.named_parameters():
        assert rel(got[k], v.detach()) <= tol, f"{k}: relative error {rel(got[k], v.detach())}"
    # Every row of 0-63 was looked up: all of them renormalized, in both tables.
    assert got["fixed.weight"].view(-1, ref.fixed.embedding_dim)[:64].norm(dim=1).max() <= 2.0 + 1e-2
    # (the steps after the last lookup move them a little)
    assert got["emb.weight"].view(-1, ref.emb.embedding_dim)[:64].norm(dim=1).max() <= 1.0 + 0.1
    engine.close()
