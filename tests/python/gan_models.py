"""The GAN of test_gan.py, and the training loop its workers and its plain-PyTorch
reference share."""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

ROWS, LR, WD, STEPS = 8, 3e-3, 0.01, 5


def make(seed=0):
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
    d = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    return g, d


def batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(ROWS, 8, generator=gen), torch.randn(ROWS, 16, generator=gen) + 1.0


def train(g, d, g_backward, g_step, d_backward, d_step, d_zero_grad, rows=slice(None), clip=0.0,
          gathered=lambda params: contextlib.nullcontext()):
    """The non-saturating GAN loop: the discriminator's step on real and detached fake
    rows, then the generator's through the discriminator, then the discriminator's
    zero_grad to drop what the generator's backward left it. With `clip`, the
    discriminator's weights are clipped to [-clip, clip] in place after its step, as a
    WGAN critic's, inside gathered(its parameters) (strata.GatheredParameters at stage
    3). Per step: (d loss, g loss)."""
    losses = []
    for step in range(STEPS):
        z, real = batch(step)
        fake = g(z[rows])
        d_loss = F.softplus(-d(real[rows])).mean() + F.softplus(d(fake.detach())).mean()
        d_backward(d_loss)
        d_step()
        if clip:
            with gathered(list(d.parameters())), torch.no_grad():
                for p in d.parameters():
                    p.clamp_(-clip, clip)
        g_loss = F.softplus(-d(fake)).mean()
        g_backward(g_loss)
        g_step()
        d_zero_grad()
        losses.append((d_loss.item(), g_loss.item()))
    return losses
