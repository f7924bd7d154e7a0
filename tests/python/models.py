"""Plain-PyTorch models for the Python API tests, and their data: nothing here knows
strata. Each rank takes its rows of the step's global batch."""
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

VOCAB, SEQ = 64, 16
# The "_big" GPTs: a tied embedding of 16.8M elements, whose fp32 records are 64 MiB.
BIG_VOCAB, BIG_DIM = 16384, 1024


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        # No bias: the key part of a qkv bias has an exactly-zero gradient (softmax
        # ignores a constant per query), and AdamW turns the rounding noise that stands
        # in for it into lr-sized steps of either sign: no reference could match that.
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """GPT with the output head tied to the token embedding."""

    def __init__(self, dim=32, layers=2, heads=2, tied=True, vocab=VOCAB):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(SEQ, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class MetaInitGPT(TinyGPT):
    """Written for FSDP2's meta-device flow, as torchtitan writes its models: built on the
    meta device (nothing it draws is kept), sharded, model.to_empty(device=...), then
    init_weights() sets every parameter (the tied head's truncated normal last) and the
    non-persistent buffer the forward reads."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pos_scale", torch.empty(SEQ, 1), persistent=False)

    def init_weights(self):
        with torch.no_grad():
            self.pos_scale.copy_(torch.linspace(1.0, 0.5, SEQ).unsqueeze(1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t)) * self.pos_scale[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class _MetaFactories(TorchFunctionMode):
    """torch 2's `with torch.device("meta")` for torch 1.13: tensor factories called
    without a device make meta tensors."""
    FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                 torch.arange, torch.linspace, torch.eye, torch.tensor, torch.empty_strided}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def reset_all(model):
    """The init of a model with no init_weights of its own: every module's
    reset_parameters(), in model.modules() order (a shared weight is drawn again by each
    module holding it)."""
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def meta_device():
    """A context in which modules are built on the meta device."""
    return torch.device("meta") if hasattr(torch.device, "__enter__") else _MetaFactories()


class FunctionalHeadGPT(TinyGPT):
    """The LM head written as a function of the token embedding's weight in the root's
    forward (nanoGPT-style code without a head module): the weight is used outside the
    forward of the module that owns it."""

    def __init__(self):
        super().__init__(tied=False)
        del self.head

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


class PositionTableGPT(TinyGPT):
    """TinyGPT whose root indexes the position table's weight (self.wpe.weight[:t],
    nanoGPT-style) instead of calling wpe: a parameter used outside the forward of the
    module that owns it, and one that lies at a nonzero offset into its chunk (after the
    token embedding's weight)."""

    def forward(self, idx):
        x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class CheckpointedGPT(TinyGPT):
    """TinyGPT with activation checkpointing of every block (torch.utils.checkpoint): the
    blocks' forwards run again inside backward. Non-reentrant: the recomputation runs
    inside the backward of a block's last module, which stays open around it; reentrant:
    the first forward runs under no_grad and the recomputation starts a nested backward.
    With head_inside, the last checkpoint also holds the final norm and the (tied) head,
    so backward's first hook fires inside a nested backward. functional_head: the head is
    F.linear(h, self.wte.weight) there (no head module; unregistered, Note [adopted
    parameters])."""

    def __init__(self, reentrant, head_inside=False, functional_head=False, **sizes):
        super().__init__(**({"tied": False} if functional_head else {}), **sizes)
        if functional_head:
            del self.head
            self.head = lambda h: F.linear(h, self.wte.weight)
        self.reentrant = reentrant
        self.head_inside = head_inside

    def forward(self, idx):
        from torch.utils.checkpoint import checkpoint

        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if self.head_inside and i == last:
                return checkpoint(lambda h: self.head(self.ln_f(block(h))), x, use_reentrant=self.reentrant)
            x = checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(self.ln_f(x))


class RMSNorm(nn.Module):
    """A custom layer with no reset_parameters: its weight's values are what it was built from."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class CustomInitGPT(nn.Module):
    """Initialization the way nanoGPT and Hugging Face models write it: a module-level
    _init_weights applied over the model after it is built, a per-name std for the output
    projections, a padding row, a tied head, RMSNorm weights built from torch.ones, a
    gain built from torch.randn, and edits through views (a column of .data, a bias
    shifted in place, a truncated normal)."""

    def __init__(self, dim=32, layers=2):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.wpe = nn.Embedding(SEQ, dim)
        self.h = nn.ModuleList(nn.ModuleDict({"ln": RMSNorm(dim), "c_fc": nn.Linear(dim, 4 * dim),
                                              "c_proj": nn.Linear(4 * dim, dim)}) for _ in range(layers))
        self.ln_f = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        self.wte.weight = self.lm_head.weight
        self.gain = nn.Parameter(1 + 0.1 * torch.randn(dim))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))
        with torch.no_grad():
            self.h[0].c_fc.weight.data[:, 0].fill_(0.5)
            self.h[-1].c_fc.bias += 0.1
            nn.init.trunc_normal_(self.h[-1].c_proj.bias, std=0.02)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx):
        x = (self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))) * self.gain
        for b in self.h:
            x = x + b["c_proj"](F.gelu(b["c_fc"](b["ln"](x))))
        return self.lm_head(self.ln_f(x))


class Recurrent(nn.Module):
    """torch's LSTM keeps its own list of its weights (_flat_weights), which its forward
    passes to the kernel: a front end that replaces the parameters must refresh it."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


class OrthogonalGRU(nn.Module):
    """Recurrent weights initialized orthogonal (nn.init.orthogonal_ draws a scratch
    matrix and factors it), a sparse_ output layer: initializations computed from
    tensors of their own, not one in-place op on the parameter."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
        self.out = nn.Linear(16, 4)
        nn.init.sparse_(self.out.weight, 0.5)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


class Reparametrized(nn.Module):
    """Layers whose weight a forward pre-hook computes from their parameters before each
    forward, registered before the model is sharded: weight_norm (weight_g, weight_v),
    spectral_norm (weight_orig, with power-iteration buffers it updates each training
    forward: one rank's forward over its rows is one iteration, where the reference's
    forward per rank's rows makes two a step; so world 1 only), or a second weight_norm
    over the whole tensor; and pruning (weight_orig times a mask buffer)."""

    def __init__(self, spectral):
        super().__init__()
        import torch.nn.utils.prune as prune

        self.a = nn.utils.weight_norm(nn.Linear(16, 32))
        self.b = nn.utils.spectral_norm(nn.Linear(32, 32)) if spectral else nn.utils.weight_norm(nn.Linear(32, 32), dim=None)
        self.c = prune.l1_unstructured(nn.Linear(32, 32), "weight", amount=0.3)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(torch.tanh(self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))))


class SpectralMLP(nn.Module):
    """spectral_norm on the first layer: it draws its power-iteration vectors u and v
    (buffers) from the generator while the model is built, from weight.new_empty(...), and
    the layers after it draw their initialization after that."""

    def __init__(self):
        super().__init__()
        self.a = nn.utils.spectral_norm(nn.Linear(16, 32))
        self.b = nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


class NormedMLP(nn.Module):
    """Buffers that training changes: batch norm's running statistics and its batch
    count, and a registered step counter; and a non-persistent buffer (not in the
    state_dict, so not in a checkpoint either)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.out = nn.Linear(32, 4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("scratch", torch.zeros(4), persistent=False)

    def forward(self, x):
        if self.training:
            self.calls += 1
        return self.out(torch.tanh(self.bn(self.inp(x))))


class ChannelsLastCNN(nn.Module):
    """Convolutions whose weights are in channels_last layout, as GPU scripts convert their
    CNNs (model.to(memory_format=torch.channels_last)): parameters that are not
    contiguous. Batch norm after each convolution, whose bias it would make a parameter
    with an exactly zero gradient, so the convolutions have none."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


@dataclasses.dataclass
class LayerOutput:
    hidden: torch.Tensor
    aux: dict


@dataclasses.dataclass(slots=True)
class SlotsOutput:
    hidden: torch.Tensor


class Holder:
    def __init__(self, t):
        self.t = t


class Returns(nn.Module):
    """A layer whose output is `wrap(tensor)`: a dataclass, one with __slots__, a plain object."""

    def __init__(self, wrap):
        super().__init__()
        self.l = nn.Linear(32, 32)
        self.gain = nn.Parameter(1 + 0.1 * torch.randn(32))  # its own: this module is a unit
        self.wrap = wrap

    def forward(self, x):
        y = torch.tanh(self.l(x)) * self.gain
        return LayerOutput(y, {"scale": y.mean()}) if self.wrap is LayerOutput else self.wrap(y)


class ObjectOutputs(nn.Module):
    """Units whose outputs are objects, not tensors or tuples of them: at stage 3 their
    backward must still gather their parameters."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.d = Returns(LayerOutput)
        self.s = Returns(SlotsOutput)
        self.h = Returns(Holder)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        a = self.d(torch.tanh(self.inp(x)))
        h = self.s(a.hidden + 0.01 * a.aux["scale"]).hidden
        return self.out(self.h(h).t)


class ReadsChildWeight(nn.Module):
    """A user's module whose forward reads its child's weight and bias without calling the
    child (F.linear on them), as a fused or hand-written layer does."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.mix = nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(F.linear(h, self.mix.weight, self.mix.bias)))


class TorchLayersGPT(nn.Module):
    """A GPT from torch's own layers, whose forwards read parameters of modules they do
    not call: nn.TransformerEncoderLayer and nn.MultiheadAttention (out_proj's weight goes
    straight to F.multi_head_attention_forward), and the per-position gains of a
    ParameterList and a ParameterDict's bias, which the root indexes."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim)
        self.gains = nn.ParameterList(nn.Parameter(1 + 0.1 * torch.randn(dim)) for _ in range(SEQ))
        self.extra = nn.ParameterDict({"bias": nn.Parameter(0.1 * torch.randn(dim))})
        self.layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        # Frozen: the key part of a qkv bias has an exactly-zero gradient (see Block).
        self.layer.self_attn.in_proj_bias.requires_grad_(False)
        self.attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) * torch.stack(list(self.gains)[:t]) + self.extra["bias"]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        x = self.layer(x, src_mask=mask)
        a, _ = self.attn(x, x, x, attn_mask=mask, need_weights=False)
        return self.head(self.ln_f(x + a))


class Awkward(nn.Module):
    """What trips a front end: a frozen parameter, a parameter that never gets a
    gradient, a module called twice, a module returning a tuple and one returning a
    dict, a parameter shared by two modules, and a data-dependent branch."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.frozen = nn.Linear(32, 32)
        self.frozen.weight.requires_grad_(False)
        self.unused = nn.Linear(32, 32)  # never called: never a gradient
        self.gate = nn.Linear(32, 32)  # called only on some steps
        self.twice = nn.Linear(32, 32)
        self.pair = Pair()
        self.named = Named()
        self.a = nn.Linear(32, 32, bias=False)
        self.b = nn.Linear(32, 32, bias=False)
        self.b.weight = self.a.weight  # shared by a and b
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + self.frozen(h)
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        p, q = self.pair(h)
        d = self.named(p)
        h = d["main"] + 0.5 * d["side"] + q
        h = self.a(h) + self.b(torch.tanh(h))
        if x[0, 0] > 0:  # data-dependent: the same on every row of a step (batch())
            h = h + self.gate(h)
        return self.out(h)


class Expert(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Routed(nn.Module):
    """Top-1 mixture of experts: each row goes to the expert its gate scores highest, and
    an expert no row chose is not called (every_expert: called on no rows). Which experts
    run, and so which parameters get a gradient and in what order, depends on each
    rank's own rows."""

    def __init__(self, dim=16, experts=4, every_expert=False):
        super().__init__()
        self.every_expert = every_expert
        self.gate = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(Expert(dim) for _ in range(experts))

    def forward(self, x):
        weights = self.gate(x).softmax(-1)
        choice = weights.argmax(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = choice == e
            if rows.any() or self.every_expert:
                out[rows] = expert(x[rows]) * weights[rows][:, e:e + 1]
        return x + out


class MixtureOfExperts(nn.Module):
    """Two Routed layers. checkpointed: each under activation checkpointing
    (torch.utils.checkpoint; "reentrant" or "non_reentrant"), its forward run again in
    backward."""

    def __init__(self, dim=16, every_expert=False, checkpointed=None):
        super().__init__()
        self.checkpointed = checkpointed
        self.inp = nn.Linear(8, dim)
        self.moe1 = Routed(dim, every_expert=every_expert)
        self.moe2 = Routed(dim, every_expert=every_expert)
        self.out = nn.Linear(dim, 4)

    def forward(self, x):
        h = self.inp(x)
        for layer in (self.moe1, self.moe2):
            if self.checkpointed:
                from torch.utils.checkpoint import checkpoint
                h = checkpoint(layer, h, use_reentrant=self.checkpointed == "reentrant")
            else:
                h = layer(h)
        return self.out(h)


def experts_used(model, x):
    """Per Routed layer, the experts x's rows go to (the model's values as they are)."""
    used, h = [], model.inp(x)
    for layer in (model.moe1, model.moe2):
        used.append(sorted(set(layer.gate(h).argmax(-1).tolist())))
        h = layer(h)
    return used


class ReversedChain(nn.Module):
    """Layers registered in the reverse of the order the forward runs them, the input
    layer last: the chunks (registration order) become ready in backward first to last,
    the opposite of a model written in order, and the last chunk last of all. The root's
    own parameter, in chunk 0, is used at the end of the forward, though the root's
    forward starts first."""

    def __init__(self, dim=64, depth=8):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.inp = nn.Linear(16, dim)

    def forward(self, x):
        h = self.inp(x)
        for layer in reversed(self.layers):
            h = torch.tanh(layer(h))
        return h[:, :4] * self.scale


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(32, 32)

    def forward(self, x):
        y = self.l(x)
        return torch.tanh(y), torch.sigmoid(y)


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(32, 32)

    def forward(self, x):
        y = self.l(x)
        return {"main": torch.tanh(y), "side": y * 0.1}


def make(name, seed=0):
    torch.manual_seed(seed)
    if name == "gpt":
        return TinyGPT()
    if name == "gpt_untied":
        return TinyGPT(tied=False)
    if name == "gpt_functional_head":
        return FunctionalHeadGPT()
    if name == "gpt_position_table":
        return PositionTableGPT()
    if name == "gpt_torch_layers":
        return TorchLayersGPT()
    if name == "gpt_custom_init":
        return CustomInitGPT()
    if name == "gpt_meta_init":  # eagerly: built, then init_weights from the same seed
        model = MetaInitGPT()
        torch.manual_seed(seed)
        model.init_weights()
        return model
    if name == "lstm":
        return Recurrent()
    if name == "gru_orthogonal":
        return OrthogonalGRU()
    if name == "gpt_checkpointed":
        return CheckpointedGPT(reentrant=False)
    if name == "gpt_checkpointed_reentrant":
        return CheckpointedGPT(reentrant=True)
    if name == "gpt_checkpointed_reentrant_head":
        return CheckpointedGPT(reentrant=True, head_inside=True)
    if name == "gpt_checkpointed_reentrant_functional_head":
        return CheckpointedGPT(reentrant=True, head_inside=True, functional_head=True)
    if name == "gpt_checkpointed_reentrant_functional_head_big":
        return CheckpointedGPT(reentrant=True, head_inside=True, functional_head=True, dim=BIG_DIM, layers=1, heads=8,
                               vocab=BIG_VOCAB)
    if name == "gpt_checkpointed_reentrant_head_big":
        return CheckpointedGPT(reentrant=True, head_inside=True, dim=BIG_DIM, layers=1, heads=8, vocab=BIG_VOCAB)
    if name == "awkward":
        return Awkward()
    if name == "awkward_meta_init":  # eagerly: built, then reset_all from the same seed
        model = Awkward()
        torch.manual_seed(seed)
        reset_all(model)
        return model
    if name == "reparametrized":
        return Reparametrized(spectral=False)
    if name == "reparametrized_spectral":
        return Reparametrized(spectral=True)
    if name == "spectral":
        return SpectralMLP()
    if name == "normed_mlp":
        return NormedMLP()
    if name == "normed_mlp_extra":  # one more persistent buffer
        model = NormedMLP()
        model.register_buffer("ema", torch.zeros(4))
        return model
    if name == "moe":
        return MixtureOfExperts()
    if name == "moe_every_expert":
        return MixtureOfExperts(every_expert=True)
    if name in ("moe_checkpointed_reentrant", "moe_checkpointed_non_reentrant"):
        return MixtureOfExperts(checkpointed=name.removeprefix("moe_checkpointed_"))
    if name == "moe_big":  # experts of 8.4M parameters: 64 MiB records hold about two
        return MixtureOfExperts(dim=BIG_DIM)
    if name == "reversed_chain":
        return ReversedChain()
    if name == "reads_child_weight":
        return ReadsChildWeight()
    if name == "object_outputs":
        return ObjectOutputs()
    if name == "cnn_channels_last":
        model = ChannelsLastCNN().to(memory_format=torch.channels_last)
        assert not model.conv1.weight.is_contiguous()
        return model
    if name.startswith("resnet18"):
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        # resnet18_eval: batch norm normalizes with its running statistics (a fixed affine
        # map), so the loss does not hang on how the batch is split across ranks.
        return model.eval() if name == "resnet18_eval" else model
    if name == "swin_t_eval":  # eval: no stochastic depth
        import torchvision

        return torchvision.models.swin_t(num_classes=10).eval()
    raise ValueError(name)


def batch(name, step, rows):
    g = torch.Generator().manual_seed(1000 + step)
    if name.startswith("gpt"):
        tokens = torch.randint(0, BIG_VOCAB if name.endswith("_big") else VOCAB, (rows, SEQ + 1), generator=g)
        return tokens[:, :-1], tokens[:, 1:]
    if name.startswith("normed_mlp"):
        return torch.randn(rows, 16, generator=g) + 2.0, torch.randn(rows, 4, generator=g)
    if name in ("object_outputs", "reparametrized", "reparametrized_spectral", "spectral", "reversed_chain"):
        return torch.randn(rows, 16, generator=g), torch.randn(rows, 4, generator=g)
    if name == "lstm":
        return torch.randn(rows, 5, 8, generator=g), torch.randn(rows, 4, generator=g)
    if name.startswith("moe"):  # each row scaled differently: the ranks' rows route differently
        scale = torch.linspace(0.5, 4.0, rows).unsqueeze(1)
        return torch.randn(rows, 8, generator=g) * scale, torch.randn(rows, 4, generator=g)
    if name.startswith("awkward"):
        x = torch.randn(rows, 16, generator=g)
        x[:, 0] = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0  # the branch, per step
        return x, torch.randn(rows, 4, generator=g)
    if name.startswith("resnet18"):
        return torch.randn(rows, 3, 32, 32, generator=g), torch.randint(0, 10, (rows,), generator=g)
    if name.startswith("swin"):
        return torch.randn(rows, 3, 64, 64, generator=g), torch.randint(0, 10, (rows,), generator=g)
    if name == "cnn_channels_last":
        x = torch.randn(rows, 3, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
        return x, torch.randint(0, 10, (rows,), generator=g)
    raise ValueError(name)


def loss_fn(name, out, y):
    if name.startswith("gpt"):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if name in ("object_outputs", "reparametrized", "reparametrized_spectral", "spectral", "lstm", "reversed_chain") or \
            name.startswith(("normed_mlp", "awkward", "moe")):
        # In fp32: a bf16 output (autocast's) against fp32 targets fails in mse_loss's
        # backward in torch 1.13 ("Found dtype Float but expected BFloat16").
        return F.mse_loss(out.float(), y)
    if name.startswith(("resnet18", "swin")) or name == "cnn_channels_last":
        return F.cross_entropy(out, y)
    raise ValueError(name)


def two_groups(model):
    """Norm weights and biases without weight decay, the rest at a lower lr: two groups."""
    flat = [p for n, p in model.named_parameters() if "ln" in n or n.endswith("bias")]
    ids = {id(p) for p in flat}
    return [{"params": flat, "weight_decay": 0.0}, {"params": [p for p in model.parameters() if id(p) not in ids],
                                                     "lr": 2e-3}]


def inverse_schedule(opt):
    """A torch scheduler that moves group k's lr to lr / (1 + (k + 1) * step): the groups'
    lrs move apart, not in proportion."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s, k=k: 1.0 / (1 + (k + 1) * s) for k in range(len(opt.param_groups))])


class Lamb(torch.optim.Optimizer):
    """Lamb in plain PyTorch, as DeepSpeed's FusedLamb steps a parameter tensor (its CUDA
    kernel's three parts, eps outside the square root): the reference strata's Lamb is
    held against (torch has none). The trust ratio is the whole parameter's."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_coeff=10.0,
                 min_coeff=0.01, bias_correction=True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      max_coeff=max_coeff, min_coeff=min_coeff, bias_correction=bias_correction))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (beta1, beta2), wd = group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"]) + wd * p
                w_norm, u_norm = p.double().norm().item(), update.double().norm().item()
                ratio = 1.0 if w_norm == 0 or u_norm == 0 else \
                    min(max(w_norm / u_norm, group["min_coeff"]), group["max_coeff"])
                step_size = group["lr"]
                if group["bias_correction"]:
                    step_size *= (1 - beta2 ** t) ** 0.5 / (1 - beta1 ** t)
                p.add_(update, alpha=-step_size * ratio)


class Lion(torch.optim.Optimizer):
    """Lion in plain PyTorch, written from the paper (Chen et al. 2023, "Symbolic Discovery
    of Optimization Algorithms", Algorithm 2): the reference strata's Lion is held
    against (torch has none). Its state is DeepSpeed's: "step" and "exp_avg"."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["exp_avg"] = 0, torch.zeros_like(p)
                state["step"] += 1
                m = state["exp_avg"]
                p.mul_(1 - lr * wd)  # decoupled weight decay
                p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-lr)  # interpolate, then sign
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
