"""Bad input to the Python API is a clear Python exception of strata's classes, never a
crash or a hang. One rank, in this process."""
import pytest
import torch
import torch.nn.functional as F

import models


def config(**extra):
    cfg = {"train_batch_size": 8, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    cfg.update(extra)
    return cfg


@pytest.fixture
def strata():
    import strata as s
    return s


def one_step(engine, step=0):
    x, y = models.batch("gpt", step, 8)
    return models.loss_fn("gpt", engine(x), y)


def test_config_typo_names_the_key_and_suggests_the_fix(strata):
    with pytest.raises(strata.ConfigError, match=r"zero_optimization\.stag: unknown key; did you mean stage\?"):
        strata.initialize(model=models.make("gpt"), config=config(zero_optimization={"stag": 3}))
    with pytest.raises(ValueError, match="did you mean zero_optimization"):  # also a ValueError
        strata.initialize(model=models.make("gpt"), config={"zero_optimisation": {"stage": 3}})


def cpu_multiplies_fp16():
    try:
        torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, 2, dtype=torch.float16)
        return True
    except RuntimeError:
        return False


# fp16 where LibTorch's CPU kernels cannot multiply it (1.13): refused before anything is
# built, by both front ends, with bf16 as the way out. Before, initialize built the engine
# and the first forward failed with ATen's "addmm_impl_cpu_ not implemented for 'Half'".
@pytest.mark.skipif(cpu_multiplies_fp16(), reason="this LibTorch multiplies fp16 on the CPU")
def test_fp16_on_a_cpu_without_fp16_kernels_is_refused_up_front(strata):
    model = models.make("gpt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(strata.ConfigError, match=r"fp16 compute needs a GPU: .*'Half'.*use bf16"):
        strata.initialize(model=model, config=config(fp16={"enabled": True}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    x, y = models.batch("gpt", 0, 8)
    models.loss_fn("gpt", model(x), y).backward()  # and still a plain model
    with pytest.raises(strata.ConfigError, match="fp16 compute needs a GPU"):
        strata.fully_shard(models.make("gpt"), mp_policy=strata.MixedPrecisionPolicy(param_dtype=torch.float16))
    engine, *_ = strata.initialize(model=model, config=config(bf16={"enabled": True}))  # the way out runs
    engine.backward(models.loss_fn("gpt", engine(x).float(), y))
    engine.step()
    engine.close()


def test_config_file_that_is_missing_or_not_json(strata, tmp_path):
    with pytest.raises(strata.ConfigError, match="cannot read the config"):
        strata.initialize(model=models.make("gpt"), config=tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(strata.ConfigError, match=r"bad\.json:1:"):
        strata.initialize(model=models.make("gpt"), config=bad)


def test_model_without_parameters(strata):
    with pytest.raises(strata.ConfigError, match="no parameters"):
        strata.initialize(model=torch.nn.Sequential(torch.nn.ReLU()), config=config())


def test_step_before_backward_and_twice(strata):
    engine, *_ = strata.initialize(model=models.make("gpt"), config=config())
    with pytest.raises(strata.UsageError, match=r"step\(\) without a backward"):
        engine.step()
    engine.backward(one_step(engine))
    assert engine.step()["applied"]
    with pytest.raises(strata.UsageError, match=r"step\(\) without a backward"):
        engine.step()
    assert engine.global_steps == 1
    engine.close()


def test_plain_backward_works_without_scaling_and_is_refused_with_accumulation(strata):
    engine, *_ = strata.initialize(model=models.make("gpt"), config=config())
    one_step(engine).backward()  # nothing to scale: the same as engine.backward
    assert engine.step()["applied"]
    engine.close()
    engine, *_ = strata.initialize(model=models.make("gpt"),
                                   config=config(train_batch_size=16, gradient_accumulation_steps=2))
    with pytest.raises(RuntimeError, match=r"plain loss\.backward\(\) with gradient accumulation over 2"):
        one_step(engine).backward()
    engine.close()


# Note [zero_grad] (engine.cpp): zero_grad() before every backward of an accumulation
# window changes nothing (torch loops call it there); after a backward that no step()
# counted, inside a window, it is refused: the engine cannot take that backward out of
# the window's sum. (The discarding itself: test_gan.py.)
def test_zero_grad_keeps_the_window_and_refuses_what_it_cannot_take_out(strata):
    def run(zero_grad_first):
        engine, *_ = strata.initialize(model=models.make("gpt"),
                                       config=config(train_batch_size=16, gradient_accumulation_steps=2))
        for step in range(4):
            if zero_grad_first:
                engine.zero_grad()
            engine.backward(one_step(engine, step))
            engine.step()
        params = {k: v.clone() for k, v in engine.consolidated_state_dict().items()}
        return engine, params

    engine, plain = run(False)
    engine.close()
    engine, zeroed = run(True)
    assert engine.global_steps == 2 and all(torch.equal(zeroed[k], v) for k, v in plain.items())
    engine.backward(one_step(engine, 4))
    engine.step()  # the window's first micro-step, counted
    engine.backward(one_step(engine, 5))
    with pytest.raises(strata.UsageError, match=r"zero_grad\(\) after a backward that no step\(\) counted, inside an "
                       r"accumulation window of 2 micro-steps"):
        engine.zero_grad()
    assert engine.step()["applied"]  # the window goes on as if zero_grad() had not been called
    engine.close()


# Note [one backward per forward] (access_driver.cpp): at stage 3 a second backward
# through one forward, or a backward with create_graph=True (a gradient penalty), is
# refused by name; before, ATen failed on the released parameters with "setStorage ...
# out of bounds". Stage 2 runs a gradient penalty as plain PyTorch does.
def test_a_second_backward_through_one_forward_at_stage_3(strata):
    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))

    def penalized(model, x, y):
        x = x.clone().requires_grad_(True)
        out = model(x)
        g, = torch.autograd.grad(out.sum(), x, create_graph=True)
        return torch.nn.functional.mse_loss(out, y) + 0.1 * (g.norm(dim=1) - 1).pow(2).mean()

    x, y = torch.randn(8, 16), torch.randn(8, 4)
    ref = mlp()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
    engine, *_ = strata.initialize(model=mlp(), config=config(zero_optimization={"stage": 2}))
    for _ in range(3):
        penalized(ref, x, y).backward()
        opt.step()
        opt.zero_grad()
        engine.backward(penalized(engine, x, y))
        engine.step()
    got = engine.consolidated_state_dict()
    assert all(torch.allclose(got[k], v, rtol=1e-5, atol=1e-7) for k, v in ref.state_dict().items())
    engine.close()

    engine, *_ = strata.initialize(model=mlp(), config=config())
    with pytest.raises(RuntimeError, match=r"a backward with create_graph=True through unit '2' at stage 3"):
        penalized(engine, x, y)
    out = engine(x)
    torch.nn.functional.mse_loss(out, y).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"a second backward through one forward of unit '2' at stage 3"):
        out.pow(2).mean().backward()
    out = engine(x)
    torch.autograd.grad(out.sum(), list(engine.parameters())[0], retain_graph=True, allow_unused=True)
    with pytest.raises(strata.UsageError, match=r"backward\(\) after a backward already went through the model"):
        engine.backward(torch.nn.functional.mse_loss(out, y))
    engine.close()


def test_a_parameter_off_the_cpu(strata):
    # This build's torch has no CUDA: model.cuda() fails in torch itself. A model moved to
    # the meta device has no values: refused by name, pointing at strata.Init.
    with pytest.raises((AssertionError, RuntimeError)):
        models.make("gpt").cuda()
    with pytest.raises(strata.ConfigError, match="on the meta device and has no values; build the model under strata.Init"):
        strata.initialize(model=models.make("gpt").to("meta"), config=config())


def test_optimizer_arguments(strata):
    model = models.make("gpt")
    with pytest.raises(strata.ConfigError, match="give one of the two"):
        strata.initialize(model=model, config=config(), optimizer=torch.optim.AdamW(model.parameters()))
    cfg = config()
    del cfg["optimizer"]
    with pytest.raises(strata.NotImplementedByStrata, match="RMSprop is not one"):
        strata.initialize(model=model, config=cfg, optimizer=torch.optim.RMSprop(model.parameters()))
    with pytest.raises(strata.ConfigError, match="leaves out trainable parameters"):
        strata.initialize(model=model, config=config(), model_parameters=list(model.parameters())[:2])


# Note [parameter groups]: groups may differ in lr and weight_decay only; what else a
# group sets, a parameter in two groups, or a bad value is named.
def test_parameter_groups_that_the_engine_cannot_run(strata):
    model = models.make("gpt")
    cfg = config()
    del cfg["optimizer"]
    ln = [p for n, p in model.named_parameters() if "ln" in n]
    rest = [p for n, p in model.named_parameters() if "ln" not in n]
    betas = torch.optim.AdamW([{"params": ln, "betas": (0.9, 0.95)}, {"params": rest}])
    with pytest.raises(strata.NotImplementedByStrata, match=r"group 1 sets betas=\(0.9, 0.999\), group 0's is \(0.9, 0.95\).*only in lr and weight_decay"):
        strata.initialize(model=model, config=cfg, optimizer=betas)
    with pytest.raises(strata.NotImplementedByStrata, match="maximize"):
        strata.initialize(model=model, config=cfg, optimizer=torch.optim.AdamW(model.parameters(), maximize=True))
    with pytest.raises(strata.NotImplementedByStrata, match=r"group 1 sets eps=1e-06"):
        strata.initialize(model=model, config=config(), model_parameters=[{"params": ln}, {"params": rest, "eps": 1e-6}])
    with pytest.raises(strata.ConfigError, match="group 1: weight_decay must be a number >= 0"):
        strata.initialize(model=model, config=config(), model_parameters=[{"params": ln}, {"params": rest, "weight_decay": -1}])
    with pytest.raises(strata.ConfigError, match=r"parameter 'blocks.0.ln1.weight' is in parameter groups 0 and 1"):
        strata.initialize(model=model, config=config(), model_parameters=[{"params": ln}, {"params": ln + rest}])
    with pytest.raises(strata.ConfigError, match="leaves out trainable parameters"):
        strata.initialize(model=model, config=config(), model_parameters=[{"params": rest}])
    with pytest.raises(strata.NotImplementedByStrata, match="group 1 sets betas"):
        strata.optim.AdamW([{"params": ln}, {"params": rest, "betas": (0.8, 0.9)}])
    # A group added after the engine took the groups would never be stepped; before, the
    # next step failed on a count of lrs.
    _, optimizer, _, _ = strata.initialize(model=models.make("gpt"), config=config())
    with pytest.raises(strata.NotImplementedByStrata, match="add_param_group on a strata optimizer after it was built"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    sharded = models.make("gpt")
    strata.fully_shard(sharded)
    optimizer = strata.optim.AdamW(sharded.parameters())
    with pytest.raises(strata.NotImplementedByStrata, match="add_param_group on a strata optimizer after it was built"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})


# FSDP2's state-dict functions called on a model strata.initialize wrapped name what that
# engine offers instead (before: only "takes the root module fully_shard was applied to").
def test_fully_shard_state_dict_functions_on_an_initialize_model_name_the_engines_own(strata):
    model = models.make("gpt")
    engine, *_ = strata.initialize(model=model, config=config())
    for call in (lambda: strata.get_model_state_dict(model), lambda: strata.set_model_state_dict(model, {})):
        with pytest.raises(strata.ConfigError, match=r"fully_shard was applied to; a model wrapped by "
                                                     r"strata.initialize: engine.consolidated_state_dict\(\)"):
            call()
    engine.close()


def test_checkpoint_tag_and_missing_checkpoint(strata, tmp_path):
    engine, *_ = strata.initialize(model=models.make("gpt"), config=config())
    with pytest.raises(strata.ConfigError, match="names checkpoints by step"):
        engine.save_checkpoint(tmp_path, tag="best")
    with pytest.raises(strata.NotFoundError, match="no such checkpoint directory"):
        engine.load_checkpoint(tmp_path / "nothing")
    engine.close()


def offloaded(**extra):  # stage 3 with the parameters on the host: released between uses
    cfg = config(**extra)
    cfg["zero_optimization"]["offload_param"] = {"device": "cpu"}
    return cfg


def step_both(engine, reference, opt, step):
    """One training step of the engine and of plain PyTorch on the same batch of the
    awkward kind; their losses agree within 1e-5."""
    x, y = models.batch("awkward", step, 8)
    opt.zero_grad()
    want = models.loss_fn("awkward", reference(x), y)
    want.backward()
    opt.step()
    got = models.loss_fn("awkward", engine(x), y)
    engine.backward(got)
    engine.step()
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item()), (step, got.item(), want.item())


# A module whose forward reads a child's parameters without calling the child: its unit
# gathers them where the forward first uses them (Note [adopted parameters],
# src/engine/access_driver.h; before, refused by name), and marked with
# strata.set_leaf_modules (as DeepSpeed's set_z3_leaf_modules) its unit holds its whole
# subtree from the start; either way training matches plain PyTorch.
def test_set_leaf_modules_gathers_what_a_forward_reads_of_its_children(strata):
    for marked in (False, True):
        reference = models.make("reads_child_weight")
        opt = torch.optim.AdamW(reference.parameters(), lr=1e-3)
        model = models.make("reads_child_weight")
        if marked:
            assert strata.set_leaf_modules(model, [models.ReadsChildWeight]) == [model]
        engine, *_ = strata.initialize(model=model, config=offloaded())
        for step in range(3):
            step_both(engine, reference, opt, step)
        engine.close()

    with pytest.raises(strata.ConfigError, match="has no module of type LSTM"):
        strata.set_leaf_modules(model, [torch.nn.LSTM])
    with pytest.raises(strata.ConfigError, match="takes torch.nn.Module subclasses"):
        strata.set_leaf_modules(model, ["Linear"])


class LateReader(models.ReadsChildWeight):
    """Calls its child; from when `reads` is set it also reads the child's weight itself."""

    reads = False

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        m = self.mix(h)
        if self.reads:
            m = m + 0.5 * F.linear(h, self.mix.weight)
        return self.out(torch.tanh(m))


# Note [adopted parameters]: a forward that first reads another module's parameter after
# the trace froze (step 3 begins on the schedule; the modules run as before, so nothing
# mismatches) gathers it there; the schedule planned without it is dropped for the rest
# of that step, the next step records again (not scheduled: without the adoption it
# would be), and the one after follows the new schedule. No warning, and losses match
# plain PyTorch throughout. (1024-element chunks: mix.weight has one of its own, which a
# reuse distance of 0 releases once mix returns.)
def test_a_parameter_adopted_after_the_trace_froze(strata):
    torch.manual_seed(0)
    reference = LateReader()
    model = LateReader()
    model.load_state_dict(reference.state_dict())
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    cfg = offloaded(strata={"chunk_size": 1024})
    cfg["zero_optimization"]["stage3_max_reuse_distance"] = 0  # released after each use
    engine, *_ = strata.initialize(model=model, config=cfg)
    scheduled = []
    for step in range(6):
        model.reads = reference.reads = step >= 3
        step_both(engine, reference, opt, step)
        scheduled.append(engine.last_metrics()["scheduled"])
    assert scheduled == [False, True, True, True, False, True], scheduled
    assert engine.last_metrics()["trace_invalidations"] == 0
    engine.close()


# The guard's other ways in: an attribute that makes a view (.T), and an engine dropped
# without close() whose freed parameter's id a new parameter reuses (simulated: an entry
# for another parameter under the new one's id). The error names the new parameter.
def test_released_parameter_is_named_through_views_and_reused_ids(strata):
    import weakref

    from strata import _guard

    model = models.make("reads_child_weight")
    stale = torch.nn.Parameter(torch.ones(1))
    _guard._GUARD.owners[id(model.mix.weight)] = (weakref.ref(stale), "gone.weight", "gone")
    engine, *_ = strata.initialize(model=model, config=offloaded())
    with pytest.raises(strata.UsageError, match=r"parameter 'mix\.weight' was used outside"):
        model.mix.weight.T
    with pytest.raises(strata.UsageError, match=r"parameter 'mix\.weight' was used outside"):
        model.mix.weight[0]
    # What users do first to keep their weights: named, with the way to read them.
    with pytest.raises(strata.UsageError, match=r"\(model\.state_dict\(\)\), use engine\.consolidated_state_dict\(\)"):
        model.state_dict()
    engine.close()


class Quantized(torch.nn.Module):
    """A frozen integer parameter (quantized codes) next to trained floating ones."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = torch.nn.Linear(16, 32)
        self.codes = torch.nn.Parameter(torch.randint(-8, 8, (32,), dtype=torch.int8), requires_grad=False)
        self.out = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.out(self.inp(x) * self.codes.float())


# A parameter that is not floating point stays the module's own tensor, whole and in its
# dtype (it was cast to float32 before, and integer code reading it broke), and
# checkpoints save it with the buffers; a float64 model is refused by name (it trained in
# float32 before and failed on float64 inputs with ATen's dtype error).
def test_integer_parameters_stay_whole_and_float64_is_refused(strata, tmp_path):
    model = Quantized(0)
    codes = model.codes.detach().clone()
    engine, *_ = strata.initialize(model=model, config=offloaded())
    for step in range(2):
        x, y = models.batch("awkward", step, 8)
        engine.backward(models.loss_fn("awkward", engine(x), y))
        engine.step()
    assert model.codes.dtype == torch.int8 and torch.equal(model.codes, codes)
    engine.save_checkpoint(tmp_path)
    engine.close()
    other = Quantized(1)
    assert not torch.equal(other.codes, codes)
    engine, *_ = strata.initialize(model=other, config=offloaded())
    engine.load_checkpoint(tmp_path)
    assert other.codes.dtype == torch.int8 and torch.equal(other.codes, codes)
    engine.close()

    with pytest.raises(strata.ConfigError, match=r"parameter 'inp.weight' is Double: the engine shards float32"):
        strata.initialize(model=models.make("reads_child_weight").double(), config=offloaded())


def lazy_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.LazyLinear(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


# A lazy module's parameters have no shape before its first forward. Every front end
# names the parameter and the way out before changing anything; the model then
# materializes and trains. Before, torch's "Attempted to use an uninitialized parameter"
# came from deep inside, and a failed fully_shard left the module marked as sharded
# ("fully_shard was already applied") so that it could not be sharded again.
@pytest.mark.filterwarnings("ignore:Lazy modules are a new feature")
def test_a_lazy_modules_parameters_are_named_and_the_model_left_as_given(strata):
    x = torch.randn(2, 8)
    fix = r"parameter 0\.weight of a LazyLinear has no shape yet .*run the model once on a batch"
    for stage in (0, 3):
        model = lazy_mlp()
        with pytest.raises(strata.ConfigError, match=fix):
            strata.initialize(model=model, config=config(zero_optimization={"stage": stage}))
        model(x)
        engine, *_ = strata.initialize(model=model, config=config(zero_optimization={"stage": stage}))
        engine.backward(engine(x).square().mean())
        engine.step()
        engine.close()

    model = lazy_mlp()
    with pytest.raises(strata.ConfigError, match=r"parameter weight of a LazyLinear has no shape yet"):
        strata.fully_shard(model[0])
    with pytest.raises(strata.ConfigError, match=fix):
        strata.fully_shard(model)
    assert not any(hasattr(m, "_strata_group") for m in model.modules())
    with torch.no_grad():
        expected = model(x)  # a plain model still: this materializes it
    for m in (model[0], model[2], model):  # and then the same modules shard
        strata.fully_shard(m)
    opt = strata.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(x)
    torch.testing.assert_close(out, expected)
    out.square().mean().backward()
    assert opt.step()["applied"]
    opt.engine.close()

    with pytest.raises(strata.ConfigError, match=r"the optimizer's parameter #2, of a lazy module, has no shape yet"):
        strata.ShardedOptimizer(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LazyLinear(4)).parameters())


# A fully_shard refused for settings that differ from a submodule's changes nothing: the
# submodule stays its own unit and the parent shards once given matching settings.
def test_a_refused_fully_shard_leaves_the_submodules_units_as_they_were(strata):
    model = models.make("gpt")
    bf16_grads = strata.OffloadPolicy(gradient_shard_dtype=torch.bfloat16)
    strata.fully_shard(model.blocks[0], offload=bf16_grads)
    strata.fully_shard(model.blocks[1])
    groups = [b._strata_group for b in model.blocks[:2]]
    with pytest.raises(strata.ConfigError, match="settings differ from a submodule's"):
        strata.fully_shard(model, offload=bf16_grads)
    assert [b._strata_group for b in model.blocks[:2]] == groups
    assert all(len(g.units) == 1 and g.units[0].group is g for g in groups)
    assert getattr(model, "_strata_group", None) is None


class Refuse(torch.autograd.Function):
    """Doubles; its backward raises while `armed` (a custom Function refusing a batch)."""
    armed = False

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        if Refuse.armed:
            raise ValueError("this batch is refused by the model's backward")
        return g * 2


class Refusing(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.b(Refuse.apply(torch.tanh(self.a(x))))


# Note [the model's exceptions] (engine.cpp): what the model's own backward raises reaches
# the caller as plain PyTorch raises it, type and message (it was strata's "internal:
# backward failed"), through engine.backward(loss) and through a plain loss.backward();
# the gradients made before it (b's) go with zero_grad(), as autograd's do, so a loop that
# skips the batch ends bit for bit where one that never saw it does. Before, zero_grad()
# kept them and the next step summed them in (8e-3 off plain PyTorch), and after a plain
# backward it refused to run "during a backward". Stage 3 with everything on nvme.
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("plain", [False, True])
def test_the_models_backward_exception_is_the_callers_and_its_batch_can_be_skipped(strata, tmp_path, stage, plain):
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0,
            "offload_optimizer": {"device": "nvme", "nvme_path": str(tmp_path)}}
    if stage == 3:
        zero["offload_param"] = {"device": "nvme", "nvme_path": str(tmp_path)}

    def run(batches, refused=None):
        torch.manual_seed(0)
        engine, *_ = strata.initialize(model=Refusing(), config=config(zero_optimization=zero,
                                                                        strata={"chunk_size": 1024}))
        losses = []
        for step in batches:
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
            Refuse.armed = step == refused
            try:
                loss = torch.nn.functional.mse_loss(engine(x), y)
                loss.backward() if plain else engine.backward(loss)
            except ValueError as e:
                assert step == refused and str(e) == "this batch is refused by the model's backward"
                engine.zero_grad()
                continue
            finally:
                Refuse.armed = False
            engine.step()
            losses.append(loss.item())
        state = engine.consolidated_state_dict()
        engine.close()
        return losses, state

    skipped_losses, skipped = run([0, 1, 2, 3], refused=1)
    never_losses, never = run([0, 2, 3])
    assert skipped_losses == never_losses
    for k, v in never.items():
        assert torch.equal(skipped[k], v), k
    # An error of the caller's graph is torch's, as plain PyTorch raises it.
    engine, *_ = strata.initialize(model=Refusing(), config=config(zero_optimization=zero))
    out = engine(torch.randn(8, 16))
    with pytest.raises(RuntimeError, match="^Found dtype Float but expected BFloat16") as raised:
        engine.backward(torch.nn.functional.mse_loss(out.bfloat16(), torch.randn(8, 4)))
    assert not isinstance(raised.value, strata.StrataError)
    engine.zero_grad()
    engine.backward(torch.nn.functional.mse_loss(engine(torch.randn(8, 16)), torch.randn(8, 4)))
    assert engine.step()["applied"]
    engine.close()


# strata.comm_timeout_s bounds every collective of an initialize engine: a rank whose peer
# does not come fails with an error that names the op and the likely causes, instead of
# waiting. Before, the Python API made its communicator with the default 300 s and
# ignored the key: here rank 0 waited out rank 1's 20 s pause and trained on.
STALL_SCRIPT = r"""
import os, sys, time
import torch
import strata
rank = int(os.environ["RANK"])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
cfg = {"train_batch_size": 4, "zero_optimization": {"stage": 2},
       "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "strata": {"comm_timeout_s": 2}}
engine, *_ = strata.initialize(model=model, config=cfg)
loss = engine(torch.randn(2, 8)).square().mean()
if rank == 1:
    time.sleep(20)  # rank 0 reaches the gradient reduction alone
t0 = time.monotonic()
try:
    engine.backward(loss)
    engine.step()
    print("stepped", flush=True)
except strata.StrataError as e:
    print(f"failed after {time.monotonic() - t0:.1f} s: {type(e).__name__}: {e}", flush=True)
    os._exit(3)  # the peer is gone or stuck: nothing to tear down cleanly
"""


def test_comm_timeout_s_bounds_a_collective_whose_peer_does_not_come(tmp_path):
    from conftest import run_ranks

    script = tmp_path / "stall.py"
    script.write_text(STALL_SCRIPT)
    (rc0, out0), _ = run_ranks(2, [script], timeout=120)
    assert rc0 == 3, out0
    assert "PeerError: timeout: " in out0 and "timed out after 2000 ms" in out0, out0
    assert "STRATA_COMM_CHECK=1" in out0, out0  # the message names the way to find a divergence
    waited = float(out0.split("failed after ")[1].split(" s")[0])
    assert waited < 15, out0
